"""The local Hub's HTTP plumbing, apart from what it answers (the way CPython's http.server keeps
BaseHTTPRequestHandler apart from the application): parsing a request, bounding and reading its body, routing it,
the injected faults, and sending the answer. What a request means is the application's (`app.py`).

Standard library only: `hubsync localhub` must start without torch, transformers or peft.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import parse_qs, urlsplit

from .connections import CHUNK, Connection, Reader, Writer
from .store import StoreError, bad_request

if TYPE_CHECKING:
    from .server import LocalHubServer

# Bodies are bounded per route, and refused with 413 from their Content-Length before any of it is read.
MAX_JSON_BODY = 64 * 1024  # repository, branch, tag, settings, token and verify requests: a few fields
MAX_LIST_BODY = 4 * 1024 * 1024  # preupload and LFS batch (the client sends at most 256 files a request), paths-info


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


def error_response(status: int, code: str | None, message: str) -> Response:
    # Messages may quote what the client sent: no control character may reach a header line.
    safe = re.sub(r"[\x00-\x1f\x7f]", " ", message).encode("ascii", "replace").decode()[:500]
    headers = {"X-Error-Message": safe}
    if code:
        headers["X-Error-Code"] = code
    return Response(status, {"error": message}, headers)


@dataclass
class Fault:
    """What the server does instead of serving a request normally: for tests of what clients do when the Hub fails.

    One kind a fault:
    - `status`: answer with that HTTP status (and `Retry-After` when `retry_after` is set), without serving;
    - `rate_limit`: answer 429 as huggingface.co does when a client exhausts its window (hub-docs
      docs/hub/rate-limits.md): `RateLimit: "api";r=0;t=<rate_limit>` (seconds until the window resets) and
      `RateLimit-Policy: "fixed window";"api";q=500;w=300`, and no `Retry-After` (unless `retry_after` is set);
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
    rate_limit: int | None = None
    cut_request: int | None = None
    cut_response: int | None = None
    arrived: threading.Event = field(default_factory=threading.Event)


RATE_LIMIT_POLICY = '"fixed window";"api";q=500;w=300'  # huggingface.co's: 500 API calls a 5-minute window


def fault_response(fault: Fault) -> Response:
    """The answer of a `status` or `rate_limit` fault."""
    headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
    if fault.rate_limit is not None:
        headers |= {"RateLimit": f'"api";r=0;t={fault.rate_limit}', "RateLimit-Policy": RATE_LIMIT_POLICY}
        message = "You have exceeded our hourly quotas for action: api. We invite you to retry later."
        return error_response(429, None, message) | headers
    return error_response(fault.status or 500, None, f"Injected fault {fault.status}") | headers


def printable(text: str) -> str:
    """`text` with every character a terminal could act on (C0 and C1 controls, ESC, bidirectional and other
    format characters) written as a Python escape, and backslashes doubled so that an escape cannot be forged."""
    return "".join(
        c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        for c in text.replace("\\", "\\\\")
    )


class RequestBody:
    """A request's body, read as it is asked for: `left` is what its Content-Length says is still to come (None for
    a chunked body, -1 for an invalid Content-Length). `broken` once it turned out malformed or cut short: the
    connection cannot be reused."""

    def __init__(self, rfile: Reader, headers: Message) -> None:
        self.rfile = rfile
        self.left: int | None = None
        self.chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self.broken = False
        if not self.chunked:
            try:
                self.left = int(headers.get("Content-Length") or 0)
            except ValueError:
                self.left = -1

    @property
    def unread(self) -> bool:
        return self.chunked or bool(self.left)

    def chunks(self) -> Iterator[bytes]:
        if self.chunked:
            self.chunked = False  # consumed below, whatever happens
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    self.broken = True
                    raise bad_request("Malformed chunked body") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    data = self.rfile.read(min(left, CHUNK))
                    if not data:
                        self.broken = True
                        raise bad_request("Truncated body")
                    left -= len(data)
                    yield data
                self.rfile.readline(16)
        else:
            while self.left:
                data = self.rfile.read(min(self.left, CHUNK))
                if not data:
                    self.broken = True
                    raise bad_request("Truncated body")
                self.left -= len(data)
                yield data

    def read(self, limit: int = MAX_JSON_BODY) -> bytes:
        if self.left is not None and self.left > limit:
            raise StoreError(413, None, f"Request body larger than {limit} bytes")
        parts: list[bytes] = []
        size = 0
        for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise StoreError(413, None, f"Request body larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def json(self, limit: int = MAX_JSON_BODY) -> Any:
        try:
            return json.loads(self.read(limit) or b"{}")
        except (ValueError, RecursionError) as exc:  # ValueError: also numbers of too many digits
            raise bad_request(f"Malformed JSON body: {str(exc)[:200]}") from None

    def json_object(self, limit: int = MAX_JSON_BODY) -> dict[str, Any]:
        data = self.json(limit)
        if not isinstance(data, dict):
            raise bad_request("Expected a JSON object")
        return data


@dataclass
class Request:
    """What the application gets of a request: its method, path (without the query), query, headers and body."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: RequestBody


H = TypeVar("H")


@dataclass(frozen=True)
class Route(Generic[H]):
    method: str
    pattern: re.Pattern[str]
    name: str
    handler: H


class Router(Generic[H]):
    """Which handler answers a method and path: the first route whose pattern matches; 405 when only routes of
    other methods match, 404 when none does."""

    def __init__(self, routes: list[tuple[str, str, str, H]]) -> None:
        self.routes = [Route(method, re.compile(pattern), name, handler) for method, pattern, name, handler in routes]

    def find(self, method: str, path: str) -> tuple[Route[H], re.Match[str]]:
        allowed = False
        for route in self.routes:
            match = route.pattern.match(path)
            if match:
                if route.method == method:
                    return route, match
                allowed = True
        if allowed:
            raise StoreError(405, None, f"Method {method} not allowed on {path}")
        raise StoreError(404, None, f"Not found: {path}")


class HubRequestHandler(BaseHTTPRequestHandler):
    """One request of a connection the waiting room handed over: its faults applied, its answer asked of the
    server's application (`LocalHubServer.answer`) and sent. A StoreError is the answer it names; any other
    exception is answered 500 and, unless the connection failed, recorded as a bug of the local Hub."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes; don't wait for ACKs between
    server: LocalHubServer
    server_version = "hubsync-localhub"
    timeout = 30  # seconds a connection may stall while its body is read or its answer written

    def setup(self) -> None:
        conn: Connection = self.request
        conn.broken = None
        self.connection = conn.sock
        try:
            self.connection.settimeout(self.timeout)
            if self.disable_nagle_algorithm:
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        except OSError as exc:
            conn.broken = exc
            raise
        self.reader = Reader(conn)
        self.rfile = self.reader  # type: ignore[assignment]
        self.wfile = Writer(conn)  # type: ignore[assignment]

    def handle(self) -> None:
        """One request; a connection kept alive goes back to the waiting room for its next one."""
        self.close_connection = True
        self.handle_one_request()
        conn: Connection = self.request
        conn.keep = not self.close_connection
        conn.buffer = self.reader.buffer

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
        url = urlsplit(self.path)
        self.request.asked = (method, url.path)
        query = parse_qs(url.query, keep_blank_values=True)
        self.body = RequestBody(self.reader, self.headers)
        fault = self.server.take_fault(method, url.path)
        if fault is not None:
            fault.arrived.set()
            time.sleep(fault.delay)
            if fault.cut_request is not None:
                self._drop_request(fault.cut_request)
                return
            if fault.status is not None or fault.rate_limit is not None:
                self._send(method, fault_response(fault))
                return
        try:
            if self.body.left is not None and self.body.left < 0:
                raise bad_request("Invalid Content-Length")
            response = self.server.answer(Request(method, url.path, query, self.headers, self.body))
        except StoreError as err:
            response = error_response(err.status, err.code, err.message)
        except Exception as err:  # a bug, unless the connection failed: answer 500 rather than drop the connection
            if self.request.io_failed(err):
                self.log_error("connection failed: %r", err)
            else:
                self.server.record_handler_error(method, url.path, err)
            response = error_response(500, None, "Internal server error")
        if self.body.broken:
            self.close_connection = True
        self._send(method, response, cut=fault.cut_response if fault is not None else None)

    def _drop_request(self, read: int) -> None:
        """Read `read` bytes of the request body (or all of a shorter one), then close without answering."""
        if self.body.chunked:  # rare: read whole chunks until `read` bytes are in
            try:
                for chunk in self.body.chunks():
                    read -= len(chunk)
                    if read <= 0:
                        break
            except StoreError:
                pass
        else:
            left = min(read, self.body.left or 0)
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
        unread = self.body.unread
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
