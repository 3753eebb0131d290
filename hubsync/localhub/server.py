"""The local Hub's server: a Hub-compatible HTTP server over a `Store`, answering the Hub's HTTP API as
huggingface_hub's client speaks it. It puts together the connections' waiting room (`connections.py`), the HTTP
plumbing (`protocol.py`) and the application (`app.py`), and keeps what tests of clients use: injected faults, and
the exceptions its handlers did not expect (its own bugs), for `check_handler_errors`.

Standard library only: `hubsync localhub` must start without torch, transformers or peft.
"""

from __future__ import annotations

import contextlib
import hmac
import re
import secrets
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hubsync.core.config import is_loopback_url

from . import app
from .connections import Connection, WaitingRoom, answer_and_close
from .lfs import token_digest
from .protocol import Fault, HubRequestHandler, Request, Response, printable
from .store import Store

MAX_ACTIVE = 64  # requests served at once; past it, 503 with Retry-After
MAX_HANDLER_ERRORS = 100  # handler bugs kept for check_handler_errors; past it they are only counted


@dataclass(frozen=True)
class HandlerError:
    """An exception the local Hub did not expect while it served a request: a bug of its own (answered 500).

    Neither a deliberate error answer (404, 401, 413, ...: a `StoreError`), nor an injected `Fault`, nor a
    connection that the client reset or let stall."""

    method: str  # empty for one met outside any request (the waiting room's)
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
        during = f"a {self.method} request, answered 500" if self.method else "outside any request"
        return f"{self.exception_type} at {self.where} ({during})"


class HandlerErrors(AssertionError):
    """What `LocalHubServer.check_handler_errors` raises: the local Hub's own bugs, each with its traceback."""

    def __init__(self, errors: list[HandlerError], more: int = 0) -> None:
        self.errors = errors
        count = len(errors) + more
        lines = [f"the local Hub raised an unexpected exception serving {count} request(s) (answered 500):"]
        for error in errors:
            request = f"{error.method} {error.path}" if error.method else "outside any request"
            lines += ["", f"{request}: {error.exception_type}: {error.message}", error.traceback]
        if more:
            lines.append(f"... and {more} more")
        super().__init__("\n".join(lines).rstrip())


class LocalHubServer(ThreadingHTTPServer):
    """The local Hub: `start_background()` serves it in a thread (tests, the demo), `serve_forever()` in this one
    (`hubsync localhub`)."""

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
        xet: bool | None = None,
        lfs_page_size: int = 1000,
    ) -> None:
        """`lfs_page_size`: the most LFS files one page of `list_lfs_files` holds (the Hub's 1000; tests set it
        small). `on_handler_error` hears of each kind of handler bug (its type and place) the first time it happens,
        from the thread that met it; all of them are kept for `check_handler_errors`."""
        # The Xet storage is hf_xet's local:// folder on this machine: offered (by default) only when clients reach
        # the Hub on this machine; refused (before the port is taken) when asked for another address.
        reached_at = public_url or (f"http://[{host}]" if ":" in host else f"http://{host}")
        if xet is None:
            xet = is_loopback_url(reached_at)
        elif xet and not is_loopback_url(reached_at):
            raise ValueError(f"Xet storage is a folder on this machine, which clients of {reached_at} cannot reach")
        super().__init__((host, port), HubRequestHandler)
        self.store = store
        if lfs_page_size < 1:
            raise ValueError("lfs_page_size is 1 or more")
        self.lfs_page_size = lfs_page_size
        self.xet_cas_url: str | None = None  # for tests of clients: the Xet storage address handed out instead
        self.verbose = verbose
        self.public_url = public_url.rstrip("/") if public_url else None
        self.xet = store.xet if xet else None  # None: a Hub without Xet, whose clients upload through git-LFS
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
        self._room = WaitingRoom(self._start_request, lambda exc: self.record_handler_error("", "", exc))

    def answer(self, request: Request) -> Response:
        """The application's answer to `request` (its handlers raise a StoreError for a request refused)."""
        return app.answer(self, request)

    # -- connections: accepted into the waiting room, a thread each once a request head is in ------------
    def process_request(self, request: Any, client_address: Any) -> None:
        self._room.add(Connection(request, client_address))

    def _start_request(self, conn: Connection) -> None:
        if not self._active.acquire(blocking=False):
            answer_and_close(conn.sock, 503, "Too many requests at once", "Retry-After: 1\r\n")
            return
        threading.Thread(target=self._serve, args=(conn,), name="localhub-request", daemon=True).start()

    def _serve(self, conn: Connection) -> None:
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
        super().shutdown_request(request.sock if isinstance(request, Connection) else request)

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

    # -- Trusted Publishing: OIDC id tokens a test registers, and the scoped tokens they are exchanged for --------
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
            if hmac.compare_digest(token_digest(token), digest):
                return token
        return None

    # -- what tests of clients use: injected faults, bytes received -------------------------------------------
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
        rate_limit: int | None = None,
    ) -> Fault:
        """Make the next `times` requests of `method` whose path matches the regex `path` fail: see `Fault` for
        the kinds (`status`, `rate_limit`, `cut_request`, `cut_response`, or only `delay`). Returns the fault, to
        watch."""
        kinds = [k for k in (status, rate_limit, cut_request, cut_response) if k is not None]
        if len(kinds) > 1 or (not kinds and delay <= 0):
            raise ValueError("a fault is one of status, rate_limit, cut_request or cut_response, or a delay alone")
        if rate_limit is not None and (
            isinstance(rate_limit, bool) or not isinstance(rate_limit, int) or rate_limit < 0
        ):
            raise ValueError("rate_limit is the whole seconds until the window resets, 0 or more")
        fault = Fault(
            method,
            re.compile(path),
            status,
            times,
            retry_after,
            delay,
            cut_request=cut_request,
            cut_response=cut_response,
            rate_limit=rate_limit,
        )
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
