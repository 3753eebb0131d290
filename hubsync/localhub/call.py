"""A request as the local Hub's application sees it (a `Call`): what was asked, of which Hub, by whom, with what
rights. Every API area's handlers take one, with the route's match."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote

from .protocol import Request, RequestBody, Response
from .store import RepoMeta, Store, StoreError, check_repo_name, not_found_repo

if TYPE_CHECKING:
    from .server import LocalHubServer

RESERVED_NAMESPACES = {"api", "datasets", "spaces", "_lfs", "models"}


class Call:
    """One request to the application: its query, headers and body, the Hub it asks (`hub`, its `store`), and who
    asks: `user()` reads the token, `readable` and `writable` check the caller's rights on a repository (a user
    writes in their own namespace and in those of the organizations they are members of; only those who write in
    a namespace see its private repositories)."""

    def __init__(self, hub: LocalHubServer, request: Request) -> None:
        self.hub = hub
        self.store: Store = hub.store
        self.request = request
        self.query = request.query
        self.headers = request.headers
        self.body: RequestBody = request.body
        self.scope: str | None = None  # the one repository an exchanged (Trusted Publishing) token may write to
        self.holder: str | None = None  # the token a signed LFS link was issued to, for a request without one

    def user(self) -> str | None:
        auth = self.headers.get("Authorization")
        if not auth:
            if self.holder is None:
                return None
            auth = f"Bearer {self.holder}"  # the token a signed link was handed to (still valid?)
        scheme, _, token = auth.partition(" ")
        user = self.store.user_for_token(token.strip()) if scheme.lower() == "bearer" else None
        self.scope = None
        if user is None and scheme.lower() == "bearer" and (scoped := self.hub.scoped_token(token.strip())):
            user, self.scope = scoped
        if user is None:
            raise StoreError(401, None, "Invalid credentials in Authorization header")
        return user

    def readable(self, repo_type: str, repo_id: str) -> RepoMeta:
        user = self.user()
        meta = self.store.repo(repo_type, repo_id)
        if meta is None or (meta.private and not self.store.may_write(user, repo_id.split("/")[0])):
            err = not_found_repo(repo_id)
            if user is None:
                err.status = 401
            raise err
        return meta

    def writable(self, repo_type: str, repo_id: str) -> RepoMeta:
        user = self.user()
        if user is None:
            self.readable(repo_type, repo_id)
            raise StoreError(401, None, "You must be authenticated to write to a repository")
        meta = self.readable(repo_type, repo_id)
        if not self.store.may_write(user, repo_id.split("/")[0]) or self.scope not in (None, repo_id):
            raise StoreError(403, None, f"You don't have the rights to write to {repo_id}")
        return meta

    def repo_read(self, match: re.Match[str]) -> tuple[str, str]:
        repo_type, repo_id = repo_type_of(match), repo_id_of(match)
        self.readable(repo_type, repo_id)
        return repo_type, repo_id

    def repo_write(self, match: re.Match[str]) -> tuple[str, str]:
        repo_type, repo_id = repo_type_of(match), repo_id_of(match)
        self.writable(repo_type, repo_id)
        return repo_type, repo_id

    @property
    def base_url(self) -> str:
        """Where links the server hands out point: its own address or configured public URL, never the
        client's Host header (a forged one would send the next upload, or a token, elsewhere)."""
        return self.hub.url

    def token(self) -> str | None:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None


Handler = Callable[[Call, re.Match[str]], Response]  # what answers a route


def repo_type_of(match: re.Match[str]) -> str:
    t = match.groupdict().get("t")
    return (t or "models")[:-1]


def repo_id_of(match: re.Match[str]) -> str:
    repo_id = f"{unquote(match['ns'])}/{unquote(match['name'])}"
    check_repo_name(repo_id)
    if match["ns"] in RESERVED_NAMESPACES:
        raise not_found_repo(repo_id)
    return repo_id


def url_prefix(repo_type: str) -> str:
    return "" if repo_type == "model" else f"{repo_type}s/"
