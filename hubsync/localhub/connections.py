"""The local Hub's connections: one thread (the waiting room) reads the request heads of every connection that has
not sent a whole one yet; a connection gets a thread of its own only then. A thousand half-sent requests cost a
thousand buffers, not a thousand threads, and expire."""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

HEADER_TIMEOUT = 10.0  # seconds from a request's first byte to the end of its head
IDLE_TIMEOUT = 60.0  # seconds a kept-alive connection may wait for its next request
MAX_HEADER_BLOCK = 256 * 1024  # a longer request head is answered 431 (http.server allows 64 KiB a line)
MAX_WAITING = 512  # connections waiting for a request head; the one waiting longest is closed past it
CHUNK = 1024 * 1024


class Connection:
    """An accepted connection and the bytes of its next request read so far."""

    __slots__ = ("address", "asked", "broken", "buffer", "deadline", "keep", "sock")

    def __init__(self, sock: socket.socket, address: Any, buffer: bytes = b"") -> None:
        self.sock = sock
        self.address = address
        self.buffer = bytearray(buffer)
        self.deadline = 0.0
        self.keep = False
        self.broken: OSError | None = None  # what the socket raised while a request was read or answered
        self.asked = ("", "")  # the method and path of the request being served, once its head is parsed

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


class Reader:
    """A request's bytes for http.server: what the waiting room read, then the socket (with its timeout)."""

    closed = False

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.buffer = conn.buffer
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.conn.sock.recv(CHUNK)
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


class Writer:
    closed = False

    def __init__(self, conn: Connection) -> None:
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


class WaitingRoom:
    """One thread that reads request heads of every connection that has not sent a whole one yet, and hands a
    connection to a thread of its own once it has. Bounded in count (MAX_WAITING) and in time (HEADER_TIMEOUT,
    IDLE_TIMEOUT)."""

    def __init__(self, ready: Callable[[Connection], None], failed: Callable[[BaseException], None]) -> None:
        self._ready = ready
        self._failed = failed
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._incoming: list[Connection] = []
        self._lock = threading.Lock()
        self._waiting: OrderedDict[Connection, None] = OrderedDict()  # oldest first
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="localhub-waiting-room", daemon=True)
        self._thread.start()

    def add(self, conn: Connection) -> None:
        with self._lock:
            if self._closed:
                close_socket(conn.sock)
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
            close_socket(conn.sock)
        self._waiting.clear()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _drop(self, conn: Connection) -> None:
        self._waiting.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        close_socket(conn.sock)

    def _hand_over(self, conn: Connection) -> None:
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
                    answer_and_close(conn.sock, 431, "Request Header Fields Too Large")
                    self._drop(conn)
            if now >= next_sweep:
                next_sweep = now + 0.5
                for conn in [c for c in self._waiting if c.deadline < now]:
                    self._drop(conn)


def close_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def answer_and_close(sock: socket.socket, status: int, reason: str, headers: str = "") -> None:
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
    close_socket(sock)
