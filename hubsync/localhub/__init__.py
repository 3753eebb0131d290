"""A small Hub-compatible server for tests, the demo and offline use: `hubsync localhub`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .server import LocalHubServer
from .store import Store

DEFAULT_USER = "me"


@dataclass(frozen=True)
class RunningHub:
    endpoint: str
    token: str
    user: str
    server: LocalHubServer


@contextmanager
def running_hub(
    root: str | os.PathLike[str],
    *,
    user: str = DEFAULT_USER,
    token: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Iterator[RunningHub]:
    """Serve a local Hub in a background thread for the duration of the block."""
    store = Store(root)
    token = store.ensure_user(user, token)
    server = LocalHubServer(store, host, port).start_background()
    try:
        yield RunningHub(server.url, token, user, server)
    finally:
        server.stop()


__all__ = ["DEFAULT_USER", "LocalHubServer", "RunningHub", "Store", "running_hub"]
