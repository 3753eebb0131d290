"""A small Hub-compatible server for tests, the demo and offline use: `hubsync localhub`."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .server import HandlerError, HandlerErrors, LocalHubServer
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
    xet: bool | None = None,
    orgs: Iterable[str] = (),
    lfs_page_size: int = 1000,
) -> Iterator[RunningHub]:
    """Serve a local Hub in a background thread for the duration of the block; `user` is a member of each of
    `orgs`, organizations created when missing.

    With `xet` (the default on loopback) it offers Xet storage as huggingface.co does; with xet=False, only
    git-LFS, as most self-hosted Hubs. `lfs_page_size`: the most LFS files a page of `list_lfs_files` holds.
    The local Hub's own bugs met meanwhile (see `LocalHubServer.check_handler_errors`) are raised as
    `HandlerErrors` when the block ends, or added as a note to the exception that ends it."""
    store = Store(root)
    token = store.ensure_user(user, token)
    for org in orgs:
        store.create_org(org, [user])
    server = LocalHubServer(store, host, port, xet=xet, lfs_page_size=lfs_page_size).start_background()
    try:
        yield RunningHub(server.url, token, user, server)
    except BaseException as exc:
        try:
            server.check_handler_errors()
        except HandlerErrors as bugs:
            exc.add_note(str(bugs))
        raise
    finally:
        server.stop()
    server.check_handler_errors()


__all__ = ["DEFAULT_USER", "HandlerError", "HandlerErrors", "LocalHubServer", "RunningHub", "Store", "running_hub"]
