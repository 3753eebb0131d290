"""A Hub-compatible HTTP server over a `Store`, speaking the protocol of the huggingface_hub client.

Standard library only: `hubsync localhub` must start without torch, transformers or peft.
See ../shared/hub-protocol.md for the requests and answers it reproduces.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import json
import re
import secrets
import selectors
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from hubsync.core.metadata import HUB_LICENSES, license_problem

from .store import (
    AddLfs,
    AddStaged,
    Commit,
    CommitOp,
    Delete,
    FileEntry,
    RepoMeta,
    Store,
    StoreError,
    bad_request,
    check_path_in_repo,
    check_repo_name,
    git_blob_sha1,
    is_lfs,
    not_found_repo,
)

# Bodies are bounded per route, and refused with 413 from their Content-Length before any of it is read.
MAX_JSON_BODY = 64 * 1024  # repository, branch, tag, settings, token and verify requests: a few fields
MAX_LIST_BODY = 4 * 1024 * 1024  # preupload and LFS batch (the client sends at most 256 files a request), paths-info
MAX_YAML_BODY = 1024 * 1024  # a README sent for validation
MAX_FRONT_MATTER = 64 * 1024  # the YAML that is parsed of it (PyYAML in pure Python: about 10 us a byte)
MAX_YAML_NODES = 10_000  # values the front matter may hold, aliases expanded
MAX_YAML_DEPTH = 64
MAX_COMMIT_BODY = 1024 * 1024 * 1024  # streamed to disk a line at a time: bounds disk use, not memory
MAX_COMMIT_LINE = 16 * 1024 * 1024  # a regular file is under 10 MB (larger ones are LFS), base64 adds a third
MAX_COMMIT_OPS = 25_000
LINK_LIFETIME = 24 * 3600  # seconds an LFS upload, verify or download link is valid

# Connections wait for a whole request head in one thread (the waiting room) and get a thread of their own only
# then: a thousand half-sent requests cost a thousand buffers, not a thousand threads, and expire.
HEADER_TIMEOUT = 10.0  # seconds from a request's first byte to the end of its head
IDLE_TIMEOUT = 60.0  # seconds a kept-alive connection may wait for its next request
MAX_HEADER_BLOCK = 256 * 1024  # a longer request head is answered 431 (http.server allows 64 KiB a line)
MAX_WAITING = 512  # connections waiting for a request head; the one waiting longest is closed past it
MAX_ACTIVE = 64  # requests served at once; past it, 503 with Retry-After
MAX_HANDLER_ERRORS = 100  # handler bugs kept for check_handler_errors; past it they are only counted
_RESERVED_NAMESPACES = {"api", "datasets", "spaces", "_lfs", "models"}
_CHUNK = 1024 * 1024

_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
_API_REPO = r"^/api/(?P<t>models|datasets|spaces)/" + _REPO
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile(p), h)
    for m, p, h in [
        ("GET", r"^/api/whoami-v2$", "whoami"),
        ("GET", r"^/api/(?P<t>models|datasets|spaces)$", "list_repos"),
        ("POST", r"^/api/repos/create$", "create_repo"),
        ("DELETE", r"^/api/repos/delete$", "delete_repo"),
        ("POST", r"^/api/validate-yaml$", "validate_yaml"),
        ("POST", r"^/oauth/token$", "oauth_token"),
        ("GET", _API_REPO + r"(?:/revision/(?P<rev>[^/]+))?$", "repo_info"),
        ("PUT", _API_REPO + r"/settings$", "settings"),
        ("POST", _API_REPO + r"/preupload/(?P<rev>[^/]+)$", "preupload"),
        ("POST", _API_REPO + r"/commit/(?P<rev>[^/]+)$", "commit"),
        ("POST", _API_REPO + r"/branch/(?P<branch>[^/]+)$", "create_branch"),
        ("DELETE", _API_REPO + r"/branch/(?P<branch>[^/]+)$", "delete_branch"),
        ("POST", _API_REPO + r"/tag/(?P<rev>[^/]+)$", "create_tag"),
        ("DELETE", _API_REPO + r"/tag/(?P<tag>[^/]+)$", "delete_tag"),
        ("GET", _API_REPO + r"/refs$", "refs"),
        ("GET", _API_REPO + r"/commits/(?P<rev>[^/]+)$", "commits"),
        ("GET", _API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "tree"),
        ("POST", _API_REPO + r"/paths-info/(?P<rev>[^/]+)$", "paths_info"),
        (
            "POST",
            r"^/(?:(?P<t>datasets|spaces)/)?" + r"(?P<ns>[^/]+)/(?P<name>[^/]+)\.git/info/lfs/objects/batch$",
            "lfs_batch",
        ),
        ("PUT", r"^/_lfs/(?P<oid>[0-9a-f]{64})$", "lfs_upload"),
        ("GET", r"^/_lfs/(?P<oid>[0-9a-f]{64})$", "lfs_download"),
        ("POST", r"^/_lfs/(?P<oid>[0-9a-f]{64})/verify$", "lfs_verify"),
        ("GET", r"^/(?:(?P<t>datasets|spaces)/)?" + _REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
        ("HEAD", r"^/(?:(?P<t>datasets|spaces)/)?" + _REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
    ]
]


@dataclass
class Response:
    status: int = 200
    body: Any = None  # JSON-able, bytes, or an iterator of bytes (with `length`)
    headers: dict[str, str] | None = None
    content_type: str = "application/json"
    length: int | None = None

    def __or__(self, headers: dict[str, str]) -> Response:
        self.headers = {**(self.headers or {}), **headers}
        return self


@dataclass
class Fault:
    """What the server does instead of serving a request normally: for tests of what clients do when the Hub fails.

    One kind a fault:
    - `status`: answer with that HTTP status (and `Retry-After` when `retry_after` is set), without serving;
    - `cut_request`: read that many bytes of the request body (all of a shorter one), then close the connection
      without an answer: an upload that breaks off; nothing of it is kept;
    - `cut_response`: serve the request (a commit lands, an upload is kept) but send only the headers and that many
      bytes of the body, then close: a download or an answer that breaks off (a HEAD gets nothing at all);
    - `delay` alone: wait that many seconds, then serve. With another kind, the wait comes first.
    `arrived` is set when a request takes the fault, so that a test can act while the request is held up.
    """

    method: str
    path: re.Pattern[str]
    status: int | None = None
    times: int = 1
    retry_after: float | None = None
    delay: float = 0.0
    cut_request: int | None = None
    cut_response: int | None = None
    arrived: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class HandlerError:
    """An exception the local Hub did not expect while it served a request: a bug of its own (answered 500).

    Neither a deliberate error answer (404, 401, 413, ...: a `StoreError`), nor an injected `Fault`, nor a
    connection that the client reset or let stall."""

    method: str
    path: str  # the request's path, without its query
    exception_type: str
    message: str
    traceback: str
    where: str  # the innermost line of hubsync that raised it, as `hubsync/...py:LINE in FUNCTION`

    @classmethod
    def of(cls, method: str, path: str, exc: BaseException) -> HandlerError:
        frames = traceback.extract_tb(exc.__traceback__)
        package = Path(__file__).resolve().parents[1]  # hubsync/
        where = "?"
        for frame in reversed(frames):
            file = Path(frame.filename)
            if file.is_relative_to(package):
                where = f"{file.relative_to(package.parent).as_posix()}:{frame.lineno} in {frame.name}"
                break
        else:
            if frames:
                where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}"
        return cls(
            method,
            path,
            type(exc).__qualname__,
            str(exc),
            "".join(traceback.format_exception(exc)),
            where,
        )

    @property
    def summary(self) -> str:
        """One line that names no token, path or value the request carried: what raised, and where."""
        return f"{self.exception_type} at {self.where} (a {self.method} request, answered 500)"


class HandlerErrors(AssertionError):
    """What `LocalHubServer.check_handler_errors` raises: the local Hub's own bugs, each with its traceback."""

    def __init__(self, errors: list[HandlerError], more: int = 0) -> None:
        self.errors = errors
        count = len(errors) + more
        lines = [f"the local Hub raised an unexpected exception serving {count} request(s) (answered 500):"]
        for error in errors:
            lines += ["", f"{error.method} {error.path}: {error.exception_type}: {error.message}", error.traceback]
        if more:
            lines.append(f"... and {more} more")
        super().__init__("\n".join(lines).rstrip())


def _type_of(match: re.Match[str]) -> str:
    t = match.groupdict().get("t")
    return (t or "models")[:-1]


def _repo_id(match: re.Match[str]) -> str:
    repo_id = f"{unquote(match['ns'])}/{unquote(match['name'])}"
    check_repo_name(repo_id)
    if match["ns"] in _RESERVED_NAMESPACES:
        raise not_found_repo(repo_id)
    return repo_id


def _private_of(data: dict[str, Any], default: bool) -> bool:
    """Clients send `"visibility": "private" | "public"`; older ones `"private": bool`."""
    visibility = data.get("visibility")
    if visibility in ("private", "public"):
        return bool(visibility == "private")
    if visibility is not None:
        raise bad_request(f"Invalid visibility: {visibility!r}")
    private = data.get("private", default)
    if not isinstance(private, bool):
        raise bad_request("'private' must be true or false")
    return private


def printable(text: str) -> str:
    """`text` with every character a terminal could act on (C0 and C1 controls, ESC, bidirectional and other
    format characters) written as a Python escape, and backslashes doubled so that an escape cannot be forged."""
    return "".join(
        c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        for c in text.replace("\\", "\\\\")
    )


class FrontMatterError(Exception):
    """YAML front matter that does not parse, or costs more to parse than any model card does."""


@functools.cache
def _bounded_loader() -> Any:
    import yaml  # a dependency of huggingface_hub; only needed for validate-yaml

    class BoundedLoader(yaml.SafeLoader):  # type: ignore[misc]
        """The safe loader (no Python objects), refusing nesting deeper than MAX_YAML_DEPTH and more than
        MAX_YAML_NODES values as it builds them."""

        depth = 0
        nodes = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.depth += 1
            self.nodes += 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    raise FrontMatterError(f"nested deeper than {MAX_YAML_DEPTH} levels")
                if self.nodes > MAX_YAML_NODES:
                    raise FrontMatterError(f"more than {MAX_YAML_NODES} values")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return BoundedLoader


def _expanded_size(node: Any) -> int:
    """How many nodes `node` holds once aliases are expanded (a billion laughs is a few bytes that expand to
    10**9); refused past MAX_YAML_NODES, and an alias that holds itself is refused."""
    import yaml

    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n: Any) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in active:
            raise FrontMatterError("an alias refers to itself")
        active.add(id(n))
        if isinstance(n, yaml.MappingNode):
            children = [child for pair in n.value for child in pair]
        elif isinstance(n, yaml.SequenceNode):
            children = list(n.value)
        else:
            children = []
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_YAML_NODES:
                raise FrontMatterError(f"more than {MAX_YAML_NODES} values once aliases are expanded")
        active.discard(id(n))
        sizes[id(n)] = total
        return total

    return size(node)


def load_front_matter(text: str) -> Any:
    """Parse a README's YAML front matter with bounded cost: safe tags only, bounded depth and expanded size."""
    import yaml

    # PyYAML's scanner looks ahead through a whole run of open brackets at a cost quadratic in its length
    # (8 KB of "[" took a second) before the depth check above can see it: count them first.
    depth = 0
    for bracket in re.finditer(r"[\[\]{}]", text):
        depth = depth + 1 if bracket[0] in "[{" else max(depth - 1, 0)
        if depth > MAX_YAML_DEPTH:
            raise FrontMatterError(f"brackets nested deeper than {MAX_YAML_DEPTH} levels")
    loader = _bounded_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: an integer of too many digits
        raise FrontMatterError(str(exc)[:300]) from None
    finally:
        loader.dispose()


def _token_digest(token: str) -> str:
    """What a signed link records of the token that asked for it: enough to find it again, not the token."""
    return hashlib.sha256(b"localhub-link:" + token.encode()).hexdigest()[:32]


def _url_prefix(repo_type: str) -> str:
    return "" if repo_type == "model" else f"{repo_type}s/"


class _Connection:
    """An accepted connection and the bytes of its next request read so far."""

    __slots__ = ("address", "asked", "broken", "buffer", "deadline", "keep", "sock")

    def __init__(self, sock: socket.socket, address: Any, buffer: bytes = b"") -> None:
        self.sock = sock
        self.address = address
        self.buffer = bytearray(buffer)
        self.deadline = 0.0
        self.keep = False
        self.broken: OSError | None = None  # what the socket raised while a request was read or answered
        self.asked = ("-", "")  # the method and path of the request being served

    def io_failed(self, exc: BaseException) -> bool:
        """Whether `exc` is (or was raised while handling) the socket's failure: the client's doing (a reset, a
        stall past the timeout), not a bug of the local Hub."""
        seen: BaseException | None = exc
        for _ in range(16):
            if seen is None:
                return False
            if seen is self.broken:
                return True
            seen = seen.__cause__ or seen.__context__
        return False

    def head_complete(self) -> bool:
        return b"\r\n\r\n" in self.buffer or b"\n\n" in self.buffer


class _Reader:
    """A request's bytes for http.server: what the waiting room read, then the socket (with its timeout)."""

    closed = False

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.buffer = conn.buffer
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.conn.sock.recv(_CHUNK)
        except OSError as exc:
            self.conn.broken = exc
            raise
        self.eof = not data
        self.buffer += data
        return bool(data)

    def _take(self, n: int) -> bytes:
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def readline(self, limit: int = -1) -> bytes:
        scanned = 0
        while True:
            end = self.buffer.find(b"\n", scanned)
            if end >= 0 and (limit < 0 or end < limit):
                return self._take(end + 1)
            if 0 <= limit <= len(self.buffer):
                return self._take(limit)
            scanned = len(self.buffer)
            if not self._fill():
                return self._take(len(self.buffer))

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self.buffer) < n) and self._fill():
            pass
        return self._take(len(self.buffer) if n < 0 else min(n, len(self.buffer)))

    def read1(self, n: int = -1) -> bytes:
        if not self.buffer:
            self._fill()
        return self._take(len(self.buffer) if n < 0 else min(n, len(self.buffer)))

    def close(self) -> None:
        pass


class _Writer:
    closed = False

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    def write(self, data: bytes) -> int:
        try:
            self.conn.sock.sendall(data)
        except OSError as exc:
            self.conn.broken = exc
            raise
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _WaitingRoom:
    """One thread that reads request heads of every connection that has not sent a whole one yet, and hands a
    connection to a thread of its own once it has. Bounded in count (MAX_WAITING) and in time (HEADER_TIMEOUT,
    IDLE_TIMEOUT)."""

    def __init__(self, ready: Callable[[_Connection], None], failed: Callable[[BaseException], None]) -> None:
        self._ready = ready
        self._failed = failed
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._incoming: list[_Connection] = []
        self._lock = threading.Lock()
        self._waiting: OrderedDict[_Connection, None] = OrderedDict()  # oldest first
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="localhub-waiting-room", daemon=True)
        self._thread.start()

    def add(self, conn: _Connection) -> None:
        with self._lock:
            if self._closed:
                _close(conn.sock)
                return
            self._incoming.append(conn)
        with contextlib.suppress(OSError):  # BlockingIOError: a wake-up is pending already
            self._wake_w.send(b"\0")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            incoming, self._incoming = self._incoming, []
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        self._thread.join()
        for conn in [*incoming, *self._waiting]:
            _close(conn.sock)
        self._waiting.clear()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _drop(self, conn: _Connection) -> None:
        self._waiting.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        _close(conn.sock)

    def _hand_over(self, conn: _Connection) -> None:
        self._waiting.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.setblocking(True)
        self._ready(conn)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a bug: no connection would be served any more; say so
            self._failed(exc)

    def _loop(self) -> None:
        next_sweep = 0.0
        while not self._closed:
            events = self._selector.select(timeout=0.5)
            now = time.monotonic()
            with self._lock:
                incoming, self._incoming = self._incoming, []
            for conn in incoming:
                conn.deadline = now + (HEADER_TIMEOUT if conn.buffer else IDLE_TIMEOUT)
                if conn.head_complete():
                    self._ready(conn)
                    continue
                conn.sock.setblocking(False)
                self._selector.register(conn.sock, selectors.EVENT_READ, conn)
                self._waiting[conn] = None
                while len(self._waiting) > MAX_WAITING:
                    self._drop(next(iter(self._waiting)))
            for key, _ in events:
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                    continue
                conn = key.data
                try:
                    data = conn.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._drop(conn)
                    continue
                if not conn.buffer:
                    conn.deadline = min(conn.deadline, now + HEADER_TIMEOUT)
                conn.buffer += data
                if conn.head_complete():
                    self._hand_over(conn)
                elif len(conn.buffer) > MAX_HEADER_BLOCK:
                    _answer_and_close(conn.sock, 431, "Request Header Fields Too Large")
                    self._drop(conn)
            if now >= next_sweep:
                next_sweep = now + 0.5
                for conn in [c for c in self._waiting if c.deadline < now]:
                    self._drop(conn)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _answer_and_close(sock: socket.socket, status: int, reason: str, headers: str = "") -> None:
    """A short answer sent from outside any handler (a request refused before it is served), then close."""
    body = json.dumps({"error": reason}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"X-Error-Message: {reason}\r\n{headers}Connection: close\r\n\r\n"
    )
    try:
        sock.settimeout(1.0)
        sock.sendall(head.encode() + body)
    except OSError:
        pass
    _close(sock)


class HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes; don't wait for ACKs between
    server: LocalHubServer
    server_version = "hubsync-localhub"
    _scope: str | None = None  # the one repository an exchanged (Trusted Publishing) token may write to
    _holder: str | None = None  # the token a signed LFS link was issued to, for a request without one
    timeout = 30  # seconds a connection may stall while its body is read or its answer written

    # -- plumbing ----------------------------------------------------------------------
    def setup(self) -> None:
        conn: _Connection = self.request
        conn.broken = None
        self.connection = conn.sock
        try:
            self.connection.settimeout(self.timeout)
            if self.disable_nagle_algorithm:
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        except OSError as exc:
            conn.broken = exc
            raise
        self.rfile = _Reader(conn)  # type: ignore[assignment]
        self.wfile = _Writer(conn)  # type: ignore[assignment]

    def handle(self) -> None:
        """One request; a connection kept alive goes back to the waiting room for its next one."""
        self.close_connection = True
        self.handle_one_request()
        conn: _Connection = self.request
        conn.keep = not self.close_connection
        conn.buffer = self.rfile.buffer  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        # The request line, paths and error text come from the client: never raw to the terminal.
        if self.server.verbose:
            sys.stderr.write(f"localhub: {printable(format % args)}\n")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        self._holder = None
        self._body_left: int | None = None
        self._chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if not self._chunked:
            try:
                self._body_left = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self._body_left = -1
        url = urlsplit(self.path)
        self.request.asked = (method, url.path)
        self.query = parse_qs(url.query, keep_blank_values=True)
        fault = self.server.take_fault(method, url.path)
        if fault is not None:
            fault.arrived.set()
            time.sleep(fault.delay)
            if fault.cut_request is not None:
                self._drop_request(fault.cut_request)
                return
            if fault.status is not None:
                headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
                self._send(method, self._error(fault.status, None, f"Injected fault {fault.status}") | headers)
                return
        try:
            if self._body_left is not None and self._body_left < 0:
                raise bad_request("Invalid Content-Length")
            handler, match = self._route(method, url.path)
            response = handler(match)
        except StoreError as err:
            response = self._error(err.status, err.code, err.message)
        except Exception as err:  # a bug, unless the connection failed: answer 500 rather than drop the connection
            if self.request.io_failed(err):
                self.log_error("connection failed: %r", err)
            else:
                self.server.record_handler_error(method, url.path, err)
            response = self._error(500, None, "Internal server error")
        self._send(method, response, cut=fault.cut_response if fault is not None else None)

    def _drop_request(self, read: int) -> None:
        """Read `read` bytes of the request body (or all of a shorter one), then close without answering."""
        if self._chunked:  # rare: read whole chunks until `read` bytes are in
            try:
                for chunk in self._body_chunks():
                    read -= len(chunk)
                    if read <= 0:
                        break
            except StoreError:
                pass
        else:
            left = min(read, self._body_left or 0)
            while left > 0 and (data := self.rfile.read1(left)):
                left -= len(data)
        self._close_now()

    def _close_now(self) -> None:
        """Close the connection at once: unread request bytes make the client see a reset, as on a real network."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _route(self, method: str, path: str) -> tuple[Callable[[re.Match[str]], Response], re.Match[str]]:
        allowed = False
        for route_method, pattern, name in _ROUTES:
            match = pattern.match(path)
            if match:
                if route_method == method:
                    return getattr(self, f"h_{name}"), match
                allowed = True
        if allowed:
            raise StoreError(405, None, f"Method {method} not allowed on {path}")
        raise StoreError(404, None, f"Not found: {path}")

    def _error(self, status: int, code: str | None, message: str) -> Response:
        # Messages may quote what the client sent: no control character may reach a header line.
        safe = re.sub(r"[\x00-\x1f\x7f]", " ", message).encode("ascii", "replace").decode()[:500]
        headers = {"X-Error-Message": safe}
        if code:
            headers["X-Error-Code"] = code
        return Response(status, {"error": message}, headers)

    def _send(self, method: str, response: Response, cut: int | None = None) -> None:
        """Send `response`; with `cut`, only its headers and the first `cut` bytes of its body, then close."""
        if cut is not None and method == "HEAD":
            self._close_now()
            return
        body = response.body
        payload: bytes | None
        if isinstance(body, (bytes, bytearray)):
            payload = bytes(body)
            length = len(payload)
        elif body is None:
            payload, length = b"", 0
        elif isinstance(body, Iterator):
            payload, length = None, response.length or 0
        else:
            payload = json.dumps(body).encode()
            length = len(payload)
        unread = self._chunked or bool(self._body_left)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(length))
        for key, value in (response.headers or {}).items():
            self.send_header(key, value)
        if unread:  # the request body was not read: the connection cannot be reused
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if method == "HEAD":
            return
        chunks = [payload] if payload is not None else body
        assert isinstance(chunks, (list, Iterator))
        try:
            for chunk in chunks:
                if cut is not None:
                    chunk, cut = chunk[:cut], cut - len(chunk[:cut])
                self.wfile.write(chunk)
                if cut == 0:
                    break
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        if cut is not None:
            self._close_now()

    # -- request bodies ----------------------------------------------------------------
    def _body_chunks(self) -> Iterator[bytes]:
        if self._chunked:
            self._chunked = False  # consumed below, whatever happens
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    self.close_connection = True
                    raise bad_request("Malformed chunked body") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    data = self.rfile.read(min(left, _CHUNK))
                    if not data:
                        self.close_connection = True
                        raise bad_request("Truncated body")
                    left -= len(data)
                    yield data
                self.rfile.readline(16)
        else:
            while self._body_left:
                data = self.rfile.read(min(self._body_left, _CHUNK))
                if not data:
                    self.close_connection = True
                    raise bad_request("Truncated body")
                self._body_left -= len(data)
                yield data

    def _body(self, limit: int = MAX_JSON_BODY) -> bytes:
        if self._body_left is not None and self._body_left > limit:
            raise StoreError(413, None, f"Request body larger than {limit} bytes")
        parts: list[bytes] = []
        size = 0
        for chunk in self._body_chunks():
            size += len(chunk)
            if size > limit:
                raise StoreError(413, None, f"Request body larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def _json(self, limit: int = MAX_JSON_BODY) -> Any:
        try:
            return json.loads(self._body(limit) or b"{}")
        except (ValueError, RecursionError) as exc:  # ValueError: also numbers of too many digits
            raise bad_request(f"Malformed JSON body: {str(exc)[:200]}") from None

    def _json_object(self, limit: int = MAX_JSON_BODY) -> dict[str, Any]:
        data = self._json(limit)
        if not isinstance(data, dict):
            raise bad_request("Expected a JSON object")
        return data

    # -- auth --------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        return self.server.store

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization")
        if not auth:
            if self._holder is None:
                return None
            auth = f"Bearer {self._holder}"  # the token a signed link was handed to (still valid?)
        scheme, _, token = auth.partition(" ")
        user = self.store.user_for_token(token.strip()) if scheme.lower() == "bearer" else None
        self._scope = None
        if user is None and scheme.lower() == "bearer" and (scoped := self.server.scoped_token(token.strip())):
            user, self._scope = scoped
        if user is None:
            raise StoreError(401, None, "Invalid credentials in Authorization header")
        return user

    def _readable(self, repo_type: str, repo_id: str) -> RepoMeta:
        user = self._user()
        meta = self.store.repo(repo_type, repo_id)
        if meta is None or (meta.private and meta.owner != user):
            err = not_found_repo(repo_id)
            if user is None:
                err.status = 401
            raise err
        return meta

    def _writable(self, repo_type: str, repo_id: str) -> RepoMeta:
        user = self._user()
        if user is None:
            self._readable(repo_type, repo_id)
            raise StoreError(401, None, "You must be authenticated to write to a repository")
        meta = self._readable(repo_type, repo_id)
        if meta.owner != user or self._scope not in (None, repo_id):
            raise StoreError(403, None, f"You don't have the rights to write to {repo_id}")
        return meta

    def _repo_read(self, match: re.Match[str]) -> tuple[str, str]:
        repo_type, repo_id = _type_of(match), _repo_id(match)
        self._readable(repo_type, repo_id)
        return repo_type, repo_id

    def _repo_write(self, match: re.Match[str]) -> tuple[str, str]:
        repo_type, repo_id = _type_of(match), _repo_id(match)
        self._writable(repo_type, repo_id)
        return repo_type, repo_id

    @property
    def base_url(self) -> str:
        """Where links the server hands out point: its own address or configured public URL, never the
        client's Host header (a forged one would send the next upload, or a token, elsewhere)."""
        return self.server.url

    # -- account and repositories ------------------------------------------------------
    def h_whoami(self, match: re.Match[str]) -> Response:
        user = self._user()
        if user is None:
            raise StoreError(401, None, "Invalid username or password.")
        return Response(
            body={
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user,
                "orgs": [],
                "isPro": False,
                "canPay": False,
                "auth": {"type": "access_token", "accessToken": {"displayName": "localhub", "role": "write"}},
            }
        )

    def h_oauth_token(self, match: re.Match[str]) -> Response:
        """Trusted Publishing: an OIDC id token that `LocalHubServer.trust_publisher` registered is exchanged
        (RFC 8693) for a short-lived token that may write to one repository. Others get 401, as on the Hub."""
        data = self._json_object()
        if (
            data.get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange"
            or data.get("subject_token_type") != "urn:ietf:params:oauth:token-type:id_token"
            or not isinstance(data.get("subject_token"), str)
            or not isinstance(data.get("resource"), str)
        ):
            raise bad_request("Expected an RFC 8693 token exchange of an OIDC id token for a resource")
        token = self.server.exchange_id_token(data["subject_token"], data["resource"])
        if token is None:
            raise StoreError(401, None, f"No trusted publisher of {data['resource']} matches this id token")
        return Response(
            body={
                "access_token": token,
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "token_type": "bearer",
                "expires_in": 3600,
            }
        )

    def h_create_repo(self, match: re.Match[str]) -> Response:
        user = self._user()
        if user is None:
            raise StoreError(401, None, "You must be authenticated to create a repository")
        data = self._json_object()
        name, org = data.get("name"), data.get("organization")
        repo_type = data.get("type") or "model"
        if (
            not isinstance(name, str)
            or not isinstance(org, (str, type(None)))
            or repo_type not in ("model", "dataset", "space")
        ):
            raise bad_request("Expected 'name' and optional 'organization' and 'type'")
        namespace = org or user
        if namespace != user:
            raise StoreError(403, None, f"You cannot create a repository in the namespace {namespace!r}")
        if namespace in _RESERVED_NAMESPACES:
            raise bad_request(f"Reserved namespace: {namespace!r}")
        repo_id = f"{namespace}/{name}"
        if self._scope not in (None, repo_id):
            raise StoreError(403, None, f"This token may only write to {self._scope}")
        url = f"{self.base_url}/{_url_prefix(repo_type)}{repo_id}"
        try:
            self.store.create_repo(repo_type, repo_id, user, _private_of(data, default=False))
        except StoreError as err:
            if err.status != 409:
                raise
            # Like the Hub, name the existing repository: huggingface_hub's exist_ok path reads its url.
            response = self._error(409, None, err.message)
            response.body = {"error": err.message, "url": url}
            return response
        return Response(body={"url": url, "name": repo_id})

    def h_delete_repo(self, match: re.Match[str]) -> Response:
        data = self._json_object()
        repo_type = data.get("type") or "model"
        user = self._user()
        if not isinstance(data.get("name"), str):
            raise bad_request("Expected 'name'")
        repo_id = f"{data.get('organization') or user}/{data['name']}"
        self._writable(repo_type, repo_id)
        self.store.delete_repo(repo_type, repo_id)
        return Response(body={})

    def h_settings(self, match: re.Match[str]) -> Response:
        repo_type, repo_id = self._repo_write(match)
        data = self._json_object()
        if "private" in data or "visibility" in data:
            self.store.set_private(repo_type, repo_id, _private_of(data, default=False))
        return Response(body={})

    def h_validate_yaml(self, match: re.Match[str]) -> Response:
        data = self._json_object(MAX_YAML_BODY)
        content = data.get("content")
        if not isinstance(content, str):
            raise bad_request("Expected 'content'")
        errors = []
        if content.startswith("---"):
            end = content.find("\n---", 3)
            if end < 0:
                errors.append({"message": "Unterminated YAML front matter"})
            elif end - 3 > MAX_FRONT_MATTER:
                errors.append({"message": f"The YAML front matter is larger than {MAX_FRONT_MATTER} bytes"})
            else:
                try:
                    meta = load_front_matter(content[3:end])
                    if meta is not None and not isinstance(meta, dict):
                        errors.append({"message": "YAML front matter must be a mapping"})
                    elif meta and "license" in meta and license_problem(meta["license"]) is not None:
                        # huggingface.co's words (huggingface_hub issue #4218): a name from its list, or a list
                        errors.append({"message": f'"license" must be one of [{", ".join(HUB_LICENSES)}, array]'})
                except FrontMatterError as exc:
                    errors.append({"message": f"Invalid YAML front matter: {exc}"})
        status = 400 if errors else 200
        return Response(status, {"errors": errors, "warnings": []})

    def h_list_repos(self, match: re.Match[str]) -> Response:
        """`HfApi.list_models` (and datasets, spaces): the repositories this caller can see, `?author=` and
        `?search=` filtered, newest first as the Hub sorts by default; private ones only to their owner."""
        user = self._user()
        repo_type = match["t"][:-1]
        author = self.query.get("author", [None])[0]
        search = (self.query.get("search", [""])[0] or "").lower()
        found = [
            meta
            for meta in self.store.list_repos()
            if meta.repo_type == repo_type
            and (not meta.private or meta.owner == user)
            and (author is None or meta.repo_id.split("/")[0] == author)
            and search in meta.repo_id.lower()
        ]
        found.sort(key=lambda m: m.created_at, reverse=True)
        return Response(
            body=[
                {
                    "_id": hashlib.sha1(m.repo_id.encode()).hexdigest()[:24],
                    "id": m.repo_id,
                    "private": m.private,
                    "createdAt": m.created_at,
                    "downloads": 0,
                    "likes": 0,
                    "tags": [],
                }
                for m in found
            ]
        )

    def h_repo_info(self, match: re.Match[str]) -> Response:
        repo_type, repo_id = self._repo_read(match)
        meta = self.store.repo(repo_type, repo_id)
        assert meta is not None
        rev = unquote(match["rev"]) if match["rev"] else "main"
        commit = self.store.commit(repo_type, repo_id, self.store.resolve(repo_type, repo_id, rev))
        blobs = self.query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for entry in sorted(commit.files.values(), key=lambda e: e.path):
            sibling: dict[str, Any] = {"rfilename": entry.path}
            if blobs:
                sibling.update({"size": entry.size, "blobId": entry.oid})
                if entry.lfs:
                    sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
            siblings.append(sibling)
        return Response(
            body={
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.id,
                "private": meta.private,
                "disabled": False,
                "gated": False,
                "lastModified": commit.date,
                "createdAt": meta.created_at,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            }
        )

    # -- refs and history --------------------------------------------------------------
    def h_create_branch(self, match: re.Match[str]) -> Response:
        repo_type, repo_id = self._repo_write(match)
        data = self._json_object()
        start = data.get("startingPoint")
        if start is not None and not isinstance(start, str):
            raise bad_request("'startingPoint' must be a string")
        self.store.create_branch(repo_type, repo_id, unquote(match["branch"]), start)
        return Response(body={})

    def h_delete_branch(self, match: re.Match[str]) -> Response:
        repo_type, repo_id = self._repo_write(match)
        self.store.delete_branch(repo_type, repo_id, unquote(match["branch"]))
        return Response(body={})

    def h_create_tag(self, match: re.Match[str]) -> Response:
        repo_type, repo_id = self._repo_write(match)
        data = self._json_object()
        if not isinstance(data.get("tag"), str):
            raise bad_request("Expected 'tag'")
        self.store.create_tag(repo_type, repo_id, data["tag"], unquote(match["rev"]))
        return Response(body={})

    def h_delete_tag(self, match: re.Match[str]) -> Response:
        repo_type, repo_id = self._repo_write(match)
        self.store.delete_tag(repo_type, repo_id, unquote(match["tag"]))
        return Response(body={})

    def h_refs(self, match: re.Match[str]) -> Response:
        repo_type, repo_id = self._repo_read(match)
        refs = self.store.refs(repo_type, repo_id)

        def listing(kind: str, prefix: str) -> list[dict[str, str]]:
            return [
                {"name": name, "ref": f"refs/{prefix}/{name}", "targetCommit": sha}
                for name, sha in sorted(refs[kind].items())
            ]

        return Response(
            body={
                "branches": listing("branches", "heads"),
                "converts": [],
                "tags": listing("tags", "tags"),
                "pullRequests": [],
            }
        )

    def h_commits(self, match: re.Match[str]) -> Response:
        repo_type, repo_id = self._repo_read(match)
        sha = self.store.resolve(repo_type, repo_id, unquote(match["rev"]))
        return Response(
            body=[
                {"id": c.id, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": c.author}]}
                for c in self.store.history(repo_type, repo_id, sha)
            ]
        )

    # -- trees -------------------------------------------------------------------------
    def _commit_at(self, match: re.Match[str]) -> tuple[str, str, Commit]:
        repo_type, repo_id = self._repo_read(match)
        sha = self.store.resolve(repo_type, repo_id, unquote(match["rev"]))
        return repo_type, repo_id, self.store.commit(repo_type, repo_id, sha)

    def _last_commits(self, repo_type: str, repo_id: str, commit: Commit) -> dict[str, Commit]:
        """For each path of `commit`, the newest commit that changed it."""
        history = self.store.history(repo_type, repo_id, commit.id)
        last: dict[str, Commit] = {}
        for path, entry in commit.files.items():
            newest = history[0]
            for older in history[1:]:
                if older.files.get(path) != entry:
                    break
                newest = older
            last[path] = newest
        return last

    def _file_json(self, entry: FileEntry, last: Commit | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "oid": entry.oid, "size": entry.size, "path": entry.path}
        if entry.lfs:
            out["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        if last is not None:
            out["lastCommit"] = {"id": last.id, "title": last.title, "date": last.date}
        return out

    @staticmethod
    def _dir_json(commit: Commit, path: str) -> dict[str, Any]:
        inside = sorted(e.oid + p for p, e in commit.files.items() if p.startswith(path + "/"))
        return {"type": "directory", "oid": git_blob_sha1("\n".join(inside).encode()), "size": 0, "path": path}

    def _entries(self, commit: Commit, paths: list[str], expand: bool, repo: tuple[str, str]) -> list[dict[str, Any]]:
        last = self._last_commits(*repo, commit) if expand else {}
        out = []
        for path in paths:
            entry = commit.files.get(path)
            out.append(self._file_json(entry, last.get(path)) if entry else self._dir_json(commit, path))
        return out

    def h_tree(self, match: re.Match[str]) -> Response:
        repo_type, repo_id, commit = self._commit_at(match)
        base = unquote(match["path"] or "").strip("/")
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = self.query.get("expand", ["false"])[0].lower() in ("1", "true")
        prefix = base + "/" if base else ""
        if base and base in commit.files:
            paths = [base]
        else:
            found: set[str] = set()
            for path in commit.files:
                if not path.startswith(prefix):
                    continue
                parts = path[len(prefix) :].split("/")
                depth = len(parts) if recursive else 1
                for i in range(1, depth + 1):
                    found.add(prefix + "/".join(parts[:i]))
            if base and not found:
                raise StoreError(404, "EntryNotFound", f"{base} does not exist on {unquote(match['rev'])}")
            paths = sorted(found)
        return Response(body=self._entries(commit, paths, expand, (repo_type, repo_id)))

    def h_paths_info(self, match: re.Match[str]) -> Response:
        repo_type, repo_id, commit = self._commit_at(match)
        body = self._body(MAX_LIST_BODY)
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            try:
                form = json.loads(body or b"{}")
            except (ValueError, RecursionError):
                raise bad_request("Malformed JSON body") from None
            if not isinstance(form, dict):
                raise bad_request("Expected a JSON object")
            paths, expand = form.get("paths", []), bool(form.get("expand", False))
        else:
            parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            paths = parsed.get("paths", [])
            expand = parsed.get("expand", ["false"])[0].lower() in ("1", "true")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise bad_request("'paths' must be a list of strings")
        existing = []
        for path in dict.fromkeys(p.strip("/") for p in paths):
            if path in commit.files or any(p.startswith(path + "/") for p in commit.files):
                existing.append(path)
        return Response(body=self._entries(commit, existing, expand, (repo_type, repo_id)))

    # -- uploads -----------------------------------------------------------------------
    def h_preupload(self, match: re.Match[str]) -> Response:
        repo_type, repo_id = self._repo_write(match)
        if self.query.get("create_pr"):
            raise bad_request("Pull requests are not supported by the local Hub")
        commit = self.store.commit(repo_type, repo_id, self.store.resolve(repo_type, repo_id, unquote(match["rev"])))
        data = self._json_object(MAX_LIST_BODY)
        files = data.get("files")
        if not isinstance(files, list):
            raise bad_request("Expected 'files'")
        out = []
        for item in files:
            if not isinstance(item, dict) or not isinstance(item.get("path"), str):
                raise bad_request("Each file needs a 'path'")
            try:
                sample = base64.b64decode(item.get("sample") or "", validate=True)
                size = int(item.get("size") or 0)
            except (binascii.Error, ValueError, TypeError):
                raise bad_request(f"Malformed sample or size for {item['path']!r}") from None
            lfs = is_lfs(item["path"], size, sample)
            existing = commit.files.get(item["path"])
            oid = None
            if existing is not None:
                oid = existing.sha256 if lfs else existing.oid
            out.append(
                {"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return Response(body={"files": out, "commitOid": commit.id})

    def _ticket(self, operation: str, oid: str, size: int, repo: str, holder: str, expires: int) -> str:
        """Upload, verify and download links carry no token (the client drops it on upload), so they are signed
        instead, for one object of one repository, for the token that asked (by its digest) and until a time:
        an upload for repository A does not let A use, nor anyone see, what repository B holds."""
        message = f"{operation}:{repo}:{oid}:{size}:{holder}:{expires}".encode()
        return hmac.new(self.server.secret, message, hashlib.sha256).hexdigest()

    def _token(self) -> str | None:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def _link(self, operation: str, oid: str, size: int, repo_type: str, repo_id: str) -> str:
        repo = f"{repo_type}:{repo_id}"
        token = self._token()
        holder = _token_digest(token) if token else ""
        expires = int(time.time()) + LINK_LIFETIME
        ticket = self._ticket(operation, oid, size, repo, holder, expires)
        query = f"size={size}&repo={quote(repo, safe='')}&holder={holder}&expires={expires}&ticket={ticket}"
        return f"{self.base_url}/_lfs/{oid}{'/verify' if operation == 'verify' else ''}?{query}"

    def _ticket_checked(self, oid: str, operation: str) -> tuple[int, str, str]:
        """The size and repository a signed link names; 403 when its ticket does not match or has expired.

        Access is checked again now, as on every request: the link's holder (the token that asked for it, or
        the one this request carries) must still read the repository (download) or write to it (upload,
        verify). A link to a repository that was deleted, or made private, answers like the repository."""
        try:
            size = int(self.query.get("size", [""])[0])
        except ValueError:
            raise bad_request("Missing size") from None
        try:
            expires = int(self.query.get("expires", [""])[0])
        except ValueError:
            raise StoreError(403, None, "Invalid or missing ticket") from None
        repo = self.query.get("repo", [""])[0]
        holder = self.query.get("holder", [""])[0]
        ticket = self.query.get("ticket", [""])[0]
        if not hmac.compare_digest(ticket, self._ticket(operation, oid, size, repo, holder, expires)):
            raise StoreError(403, None, "Invalid or missing ticket")
        if expires < time.time():
            raise StoreError(403, None, "This link has expired: ask for a new one")
        repo_type, _, repo_id = repo.partition(":")
        if self._token() is None and holder:
            self._holder = self.server.token_of_digest(holder)
        if operation == "download":
            self._readable(repo_type, repo_id)
        else:
            self._writable(repo_type, repo_id)
        if operation != "upload" and oid not in self.store.lfs_objects(repo_type, repo_id):
            raise StoreError(404, None, f"Object {oid} does not exist")
        return size, repo_type, repo_id

    def h_lfs_batch(self, match: re.Match[str]) -> Response:
        repo_type = (match["t"] or "models")[:-1]
        repo_id = f"{unquote(match['ns'])}/{unquote(match['name'])}"
        check_repo_name(repo_id)
        data = self._json_object(MAX_LIST_BODY)
        operation = data.get("operation")
        if operation == "upload":
            self._writable(repo_type, repo_id)
        elif operation == "download":
            self._readable(repo_type, repo_id)
        else:
            raise bad_request("'operation' must be 'upload' or 'download'")
        objects = data.get("objects")
        if not isinstance(objects, list):
            raise bad_request("Expected 'objects'")
        known = self.store.lfs_objects(repo_type, repo_id)
        out = []
        for obj in objects:
            oid, size = (obj.get("oid"), obj.get("size")) if isinstance(obj, dict) else (None, None)
            if (
                not isinstance(oid, str)
                or not re.fullmatch(r"[0-9a-f]{64}", oid)
                or not isinstance(size, int)
                or isinstance(size, bool)
                or size < 0
            ):
                out.append({"oid": str(oid), "size": size, "error": {"code": 422, "message": "Invalid object"}})
                continue
            item: dict[str, Any] = {"oid": oid, "size": size}
            held = oid in known and self.store.has_blob(oid, size)
            if operation == "upload" and not held:  # even when stored for another repository: send it
                item["actions"] = {
                    "upload": {"href": self._link("upload", oid, size, repo_type, repo_id)},
                    "verify": {"href": self._link("verify", oid, size, repo_type, repo_id)},
                }
            elif operation == "download":
                if not held:
                    item["error"] = {"code": 404, "message": "Object does not exist"}
                else:
                    item["actions"] = {"download": {"href": self._link("download", oid, size, repo_type, repo_id)}}
            out.append(item)
        return Response(
            body={"transfer": "basic", "objects": out, "hash_algo": "sha256"},
            content_type="application/vnd.git-lfs+json",
        )

    def h_lfs_download(self, match: re.Match[str]) -> Response:
        oid = match["oid"]
        size, _, _ = self._ticket_checked(oid, "download")
        if not self.store.has_blob(oid, size):
            raise StoreError(404, None, f"Object {oid} does not exist")
        return Response(200, self._stream(oid, 0, size), content_type="application/octet-stream", length=size)

    def h_lfs_upload(self, match: re.Match[str]) -> Response:
        oid = match["oid"]
        size, repo_type, repo_id = self._ticket_checked(oid, "upload")  # before a byte of the body is read
        if self._body_left is not None and self._body_left != size:
            raise bad_request(f"Content-Length {self._body_left} does not match the object size {size}")
        # Stored again even when the store has it: the content is checked against the sha256 before the
        # repository may use the object, so knowing a hash is not enough to get another repository's file.
        # Streamed to disk; more bytes than the link names are refused as they arrive.
        self.store.put_blob_stream(oid, size, self.server.count_upload(self._body_chunks()))
        self.store.grant_lfs(repo_type, repo_id, oid)
        return Response(body={})

    def h_lfs_verify(self, match: re.Match[str]) -> Response:
        if self._user() is None:
            raise StoreError(401, None, "You must be authenticated to verify an upload")
        size, _, _ = self._ticket_checked(match["oid"], "verify")
        data = self._json_object()
        if data.get("oid") != match["oid"] or data.get("size") != size:
            raise bad_request("Expected the object's 'oid' and 'size'")
        if not self.store.has_blob(match["oid"], size):
            raise StoreError(404, None, f"Object {match['oid']} of {size} bytes was not uploaded")
        return Response(body={})

    def h_commit(self, match: re.Match[str]) -> Response:
        repo_type, repo_id = self._repo_write(match)
        if self.query.get("create_pr"):
            raise bad_request("Pull requests are not supported by the local Hub")
        branch = unquote(match["rev"])
        user = self._user()
        assert user is not None
        with self.store.staging() as stage:  # files go to disk as their lines arrive; what is not kept goes
            header, ops = self._parse_commit(self._body_lines(), stage)
            if not isinstance(header.get("description") or "", str) or not isinstance(
                header.get("parentCommit") or "", str
            ):
                raise bad_request("The commit header's description and parentCommit must be strings")
            commit = self.store.apply_commit(
                repo_type,
                repo_id,
                branch,
                ops,
                title=header["summary"],
                message=header.get("description") or "",
                author=user,
                parent_commit=header.get("parentCommit"),
            )
        url = f"{self.base_url}/{_url_prefix(repo_type)}{repo_id}/commit/{commit.id}"
        return Response(body={"commitUrl": url, "commitOid": commit.id, "pullRequestUrl": None})

    def _body_lines(self) -> Iterator[bytes]:
        """The request body a line at a time, never more than MAX_COMMIT_LINE of it in memory: a longer line,
        or a body over MAX_COMMIT_BODY, is refused with 413 (from the Content-Length, before any is read)."""
        if self._body_left is not None and self._body_left > MAX_COMMIT_BODY:
            raise StoreError(413, None, f"Request body larger than {MAX_COMMIT_BODY} bytes")
        pending = bytearray()
        total = 0
        for chunk in self._body_chunks():
            total += len(chunk)
            if total > MAX_COMMIT_BODY:
                raise StoreError(413, None, f"Request body larger than {MAX_COMMIT_BODY} bytes")
            self.server.add_uploaded(len(chunk))
            scanned = len(pending)
            pending += chunk
            start = 0
            while (end := pending.find(b"\n", max(start, scanned))) >= 0:
                yield bytes(pending[start:end])
                start = end + 1
            del pending[:start]
            if len(pending) > MAX_COMMIT_LINE:
                raise StoreError(413, None, f"A commit line is longer than {MAX_COMMIT_LINE} bytes")
        if pending:
            yield bytes(pending)

    @staticmethod
    def _parse_commit(
        lines: Iterable[bytes], stage: Callable[[str, bytes], AddStaged]
    ) -> tuple[dict[str, Any], list[CommitOp]]:
        header: dict[str, Any] | None = None
        ops: list[CommitOp] = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if len(ops) >= MAX_COMMIT_OPS:
                raise StoreError(413, None, f"A commit holds at most {MAX_COMMIT_OPS} operations")
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if not isinstance(value, dict):
                    raise TypeError
                if key == "header":
                    if header is not None or not isinstance(value.get("summary"), str):
                        raise TypeError
                    header = value
                elif header is None:
                    raise bad_request("The commit must start with its header line")
                elif key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise TypeError
                    path = check_path_in_repo(str(value["path"]))
                    ops.append(stage(path, base64.b64decode(value["content"], validate=True)))
                elif key == "lfsFile":
                    if value.get("algo", "sha256") != "sha256":
                        raise TypeError
                    path = check_path_in_repo(str(value["path"]))
                    ops.append(AddLfs(path, str(value["oid"]), value.get("size")))
                elif key in ("deletedFile", "deletedFolder"):
                    ops.append(Delete(str(value["path"]), key == "deletedFolder"))
                else:
                    raise TypeError
            except StoreError:
                raise
            except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
                raise bad_request(f"Malformed commit line {number}") from None
        if header is None:
            raise bad_request("The commit has no header line")
        return header, ops

    # -- downloads ---------------------------------------------------------------------
    def h_resolve(self, match: re.Match[str]) -> Response:
        repo_type, repo_id = self._repo_read(match)
        sha = self.store.resolve(repo_type, repo_id, unquote(match["rev"]))
        path = unquote(match["path"])
        entry = self.store.commit(repo_type, repo_id, sha).files.get(path)
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if entry is None:
            return Response(
                404,
                {"error": "Entry not found"},
                {**headers, "X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"},
            )
        headers["ETag"] = f'"{entry.sha256 if entry.lfs else entry.oid}"'
        if entry.lfs:
            headers["X-Linked-Etag"] = headers["ETag"]
            headers["X-Linked-Size"] = str(entry.size)
        start, end = 0, entry.size - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            m = re.fullmatch(r"bytes=([0-9]*)-([0-9]*)", range_header.strip())
            if not m or (not m[1] and not m[2]):
                raise StoreError(416, None, f"Unsupported range: {range_header}")
            if m[1]:
                start = int(m[1])
                end = min(int(m[2]), entry.size - 1) if m[2] else entry.size - 1
            else:  # suffix range: the last N bytes
                start = max(entry.size - int(m[2]), 0)
            if start >= entry.size or start > end:
                return Response(
                    416, {"error": "Range not satisfiable"}, {**headers, "Content-Range": f"bytes */{entry.size}"}
                )
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        length = max(end - start + 1, 0)
        return Response(
            status,
            self._stream(entry.sha256, start, length),
            headers,
            content_type="application/octet-stream",
            length=length,
        )

    def _stream(self, sha256: str, start: int, length: int) -> Iterator[bytes]:
        with self.store.open_blob(sha256) as f:
            f.seek(start)
            while length > 0:
                data = f.read(min(length, _CHUNK))
                if not data:
                    return
                length -= len(data)
                yield data


class LocalHubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the listen backlog: accepting is quick, a burst of connections need not wait

    def __init__(
        self,
        store: Store,
        host: str = "127.0.0.1",
        port: int = 0,
        verbose: bool = False,
        public_url: str | None = None,
        on_handler_error: Callable[[HandlerError], None] | None = None,
    ) -> None:
        """`on_handler_error` hears of each kind of handler bug (its type and place) the first time it happens,
        from the thread that met it; all of them are kept for `check_handler_errors`."""
        super().__init__((host, port), HubRequestHandler)
        self.store = store
        self.verbose = verbose
        self.public_url = public_url.rstrip("/") if public_url else None
        self.secret = secrets.token_bytes(32)
        self._thread: threading.Thread | None = None
        self._faults: list[Fault] = []
        self._faults_lock = threading.Lock()
        self.uploaded_bytes = 0  # bytes received in LFS uploads and commit bodies, for benchmarks and tests
        self._publishers: dict[str, str] = {}  # OIDC id token -> the repository it may publish to
        self._scoped: dict[str, tuple[str, str]] = {}  # exchanged token -> (user, repository); in memory only
        self._active = threading.BoundedSemaphore(MAX_ACTIVE)
        self._on_handler_error = on_handler_error
        self._handler_errors: list[HandlerError] = []
        self._handler_errors_more = 0
        self._handler_error_kinds: set[tuple[str, str]] = set()
        self._handler_errors_lock = threading.Lock()
        self._room = _WaitingRoom(self._start_request, lambda exc: self.record_handler_error("-", "", exc))

    # -- connections: accepted into the waiting room, a thread each once a request head is in ------------
    def process_request(self, request: Any, client_address: Any) -> None:
        self._room.add(_Connection(request, client_address))

    def _start_request(self, conn: _Connection) -> None:
        if not self._active.acquire(blocking=False):
            _answer_and_close(conn.sock, 503, "Too many requests at once", "Retry-After: 1\r\n")
            return
        threading.Thread(target=self._serve, args=(conn,), name="localhub-request", daemon=True).start()

    def _serve(self, conn: _Connection) -> None:
        try:
            self.finish_request(conn, conn.address)  # type: ignore[arg-type]
        except Exception as exc:  # raised while an answer was sent (a body streamed), or by the plumbing
            if not conn.io_failed(exc):
                self.record_handler_error(*conn.asked, exc)
            self.handle_error(conn, conn.address)
            conn.keep = False
        finally:
            self._active.release()
        if conn.keep:
            conn.keep = False
            self._room.add(conn)
        else:
            self.shutdown_request(conn)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request.sock if isinstance(request, _Connection) else request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One escaped line (with --verbose), not a traceback that quotes what the client sent."""
        if self.verbose:
            error = sys.exc_info()[1]
            sys.stderr.write(f"localhub: error serving {client_address[0]}: {printable(repr(error))[:500]}\n")

    # -- the local Hub's own bugs ---------------------------------------------------------------------
    def record_handler_error(self, method: str, path: str, exc: BaseException) -> None:
        """Keep `exc`, an exception no handler expected, for `check_handler_errors` (the request is answered 500,
        which clients retry: without this, a bug of the local Hub would pass unnoticed)."""
        error = HandlerError.of(method, path, exc)
        with self._handler_errors_lock:
            if len(self._handler_errors) < MAX_HANDLER_ERRORS:
                self._handler_errors.append(error)
            else:
                self._handler_errors_more += 1
            kind = (error.exception_type, error.where)
            first = kind not in self._handler_error_kinds
            self._handler_error_kinds.add(kind)
        if first and self._on_handler_error is not None:
            with contextlib.suppress(Exception):  # a report that cannot be made must not become a bug of its own
                self._on_handler_error(error)

    @property
    def handler_errors(self) -> list[HandlerError]:
        """The handler bugs met since the last `check_handler_errors`, oldest first."""
        with self._handler_errors_lock:
            return list(self._handler_errors)

    def check_handler_errors(self) -> None:
        """Raise `HandlerErrors` (an AssertionError) listing every handler bug met since the last check, and
        forget them, so that each is reported once. Tests call it when they are done with the server."""
        with self._handler_errors_lock:
            errors, self._handler_errors = self._handler_errors, []
            more, self._handler_errors_more = self._handler_errors_more, 0
        if errors or more:
            raise HandlerErrors(errors, more)

    def server_close(self) -> None:
        super().server_close()
        room = getattr(self, "_room", None)  # absent when binding failed, inside __init__
        if room is not None:
            room.close()

    def trust_publisher(self, id_token: str, repo_id: str) -> None:
        """Let a CI job holding `id_token` publish to `repo_id` (the Hub checks a signed JWT's claims instead)."""
        self._publishers[id_token] = repo_id

    def exchange_id_token(self, id_token: str, resource: str) -> str | None:
        if self._publishers.get(id_token) != resource or "/" not in resource:
            return None
        token = f"hf_oidc_{secrets.token_hex(16)}"
        self._scoped[token] = (resource.split("/", 1)[0], resource)
        return token

    def scoped_token(self, token: str) -> tuple[str, str] | None:
        return self._scoped.get(token)

    def token_of_digest(self, digest: str) -> str | None:
        """The token, stored or exchanged, that a signed link's holder digest names; None once it is gone."""
        for token in [*self.store.tokens(), *self._scoped]:
            if hmac.compare_digest(_token_digest(token), digest):
                return token
        return None

    def inject_fault(
        self,
        method: str,
        path: str,
        status: int | None = None,
        times: int = 1,
        retry_after: float | None = None,
        *,
        delay: float = 0.0,
        cut_request: int | None = None,
        cut_response: int | None = None,
    ) -> Fault:
        """Make the next `times` requests of `method` whose path matches the regex `path` fail: see `Fault` for
        the kinds (`status`, `cut_request`, `cut_response`, or only `delay`). Returns the fault, to watch."""
        kinds = [k for k in (status, cut_request, cut_response) if k is not None]
        if len(kinds) > 1 or (not kinds and delay <= 0):
            raise ValueError("a fault is one of status, cut_request or cut_response, or a delay alone")
        fault = Fault(method, re.compile(path), status, times, retry_after, delay, cut_request, cut_response)
        with self._faults_lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Serve every request again (the injected outage is over)."""
        with self._faults_lock:
            self._faults.clear()

    def add_uploaded(self, size: int) -> None:
        with self._faults_lock:
            self.uploaded_bytes += size

    def count_upload(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Pass `chunks` through, adding their size to `uploaded_bytes`."""
        for chunk in chunks:
            self.add_uploaded(len(chunk))
            yield chunk

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._faults_lock:
            for fault in self._faults:
                if fault.times > 0 and fault.method == method and fault.path.search(path):
                    fault.times -= 1
                    return fault
        return None

    @property
    def url_host(self) -> str:
        host, port = self.server_address[:2]
        host = str(host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def url(self) -> str:
        """The endpoint clients use, and the base of every link the server hands out."""
        return self.public_url or f"http://{self.url_host}"

    def start_background(self) -> LocalHubServer:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="localhub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join()
