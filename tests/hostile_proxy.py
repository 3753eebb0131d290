"""A proxy in front of the local Hub, for tests that play a hostile Hub. Each test module's handler decides what it
changes; asking the local Hub, answering and serving are written here once."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import SplitResult, urlsplit

# Headers the proxy writes itself: the body it sends may differ from the one the local Hub sent.
_OWN_HEADERS = ("content-length", "transfer-encoding", "connection", "content-encoding")


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each answer waits out a delayed ACK (40 ms)
    upstream: SplitResult  # the local Hub, set by serve()

    def log_message(self, *args: object) -> None:
        pass

    def request_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def ask_upstream(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """The local Hub's answer to this request: status, headers, the whole body (uncompressed)."""
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "accept-encoding")}
        connection.request(self.command, self.path, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.getheaders(), answer.read()

    def answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        """Send `data` whole (for a HEAD, only the length the local Hub announced)."""
        self.send_response(status)
        announced = str(len(data))
        for key, value in headers:
            if key.lower() == "content-length" and self.command == "HEAD":
                announced = value
            elif key.lower() not in _OWN_HEADERS:
                self.send_header(key, value)
        self.send_header("Content-Length", announced)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


@contextmanager
def serve(handler: type[ProxyHandler], upstream: str) -> Iterator[str]:
    """Run `handler` in front of the Hub at `upstream`; yields the proxy's endpoint."""
    handler.upstream = urlsplit(upstream)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
