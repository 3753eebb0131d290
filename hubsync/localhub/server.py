"""A Hub-compatible HTTP server over a `Store`, speaking the protocol of the huggingface_hub client.

Standard library only: `hubsync localhub` must start without torch, transformers or peft.
See ../shared/hub-protocol.md for the requests and answers it reproduces.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from hubsync.core.metadata import HUB_LICENSES, license_problem

from .store import (
    AddLfs,
    AddRegular,
    Commit,
    CommitOp,
    Delete,
    FileEntry,
    RepoMeta,
    Store,
    StoreError,
    bad_request,
    check_repo_name,
    git_blob_sha1,
    is_lfs,
    not_found_repo,
)

MAX_JSON_BODY = 16 * 1024 * 1024
MAX_COMMIT_BODY = 1024 * 1024 * 1024
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


def _url_prefix(repo_type: str) -> str:
    return "" if repo_type == "model" else f"{repo_type}s/"


class HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes; don't wait for ACKs between
    server: LocalHubServer
    server_version = "hubsync-localhub"
    _scope: str | None = None  # the one repository an exchanged (Trusted Publishing) token may write to

    # -- plumbing ----------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write("localhub: %s\n" % (format % args))

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
        self._body_left: int | None = None
        self._chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if not self._chunked:
            try:
                self._body_left = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self._body_left = -1
        url = urlsplit(self.path)
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
        except Exception as err:  # a bug: answer 500 rather than drop the connection
            self.log_error("internal error: %r", err)
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

    def _json(self) -> Any:
        try:
            return json.loads(self._body() or b"{}")
        except (ValueError, RecursionError) as exc:  # ValueError: also numbers of too many digits
            raise bad_request(f"Malformed JSON body: {str(exc)[:200]}") from None

    def _json_object(self) -> dict[str, Any]:
        data = self._json()
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
            return None
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
        return f"http://{self.headers.get('Host') or self.server.url_host}"

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
        data = self._json_object()
        content = data.get("content")
        if not isinstance(content, str):
            raise bad_request("Expected 'content'")
        errors = []
        if content.startswith("---"):
            end = content.find("\n---", 3)
            if end < 0:
                errors.append({"message": "Unterminated YAML front matter"})
            else:
                import yaml  # a dependency of huggingface_hub; only needed here

                try:
                    meta = yaml.safe_load(content[3:end])
                    if meta is not None and not isinstance(meta, dict):
                        errors.append({"message": "YAML front matter must be a mapping"})
                    elif meta and "license" in meta and license_problem(meta["license"]) is not None:
                        # huggingface.co's words (huggingface_hub issue #4218): a name from its list, or a list
                        errors.append({"message": f'"license" must be one of [{", ".join(HUB_LICENSES)}, array]'})
                except yaml.YAMLError as exc:
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
        body = self._body()
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
        data = self._json_object()
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

    def _ticket(self, operation: str, oid: str, size: int, repo: str) -> str:
        """Upload, verify and download links carry no token (the client drops it on upload), so they are signed
        instead, for one object of one repository: an upload for repository A does not let A use, nor anyone
        see, what repository B holds."""
        message = f"{operation}:{repo}:{oid}:{size}".encode()
        return hmac.new(self.server.secret, message, hashlib.sha256).hexdigest()

    def _link(self, operation: str, oid: str, size: int, repo_type: str, repo_id: str) -> str:
        repo = f"{repo_type}:{repo_id}"
        query = f"size={size}&repo={quote(repo, safe='')}&ticket={self._ticket(operation, oid, size, repo)}"
        return f"{self.base_url}/_lfs/{oid}{'/verify' if operation == 'verify' else ''}?{query}"

    def _ticket_checked(self, oid: str, operation: str) -> tuple[int, str, str]:
        """The size and repository a signed link names; 403 when its ticket does not match."""
        try:
            size = int(self.query.get("size", [""])[0])
        except ValueError:
            raise bad_request("Missing size") from None
        repo = self.query.get("repo", [""])[0]
        ticket = self.query.get("ticket", [""])[0]
        if not hmac.compare_digest(ticket, self._ticket(operation, oid, size, repo)):
            raise StoreError(403, None, "Invalid or missing ticket")
        repo_type, _, repo_id = repo.partition(":")
        return size, repo_type, repo_id

    def h_lfs_batch(self, match: re.Match[str]) -> Response:
        repo_type = (match["t"] or "models")[:-1]
        repo_id = f"{unquote(match['ns'])}/{unquote(match['name'])}"
        check_repo_name(repo_id)
        data = self._json_object()
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
        size, repo_type, repo_id = self._ticket_checked(oid, "upload")
        if self._body_left is not None and self._body_left != size:
            raise bad_request(f"Content-Length {self._body_left} does not match the object size {size}")
        # Stored again even when the store has it: the content is checked against the sha256 before the
        # repository may use the object, so knowing a hash is not enough to get another repository's file.
        self.store.put_blob_stream(oid, size, self.server.count_upload(self._body_chunks()))
        self.store.grant_lfs(repo_type, repo_id, oid)
        return Response(body={})

    def h_lfs_verify(self, match: re.Match[str]) -> Response:
        if self._user() is None:
            raise StoreError(401, None, "You must be authenticated to verify an upload")
        size, repo_type, repo_id = self._ticket_checked(match["oid"], "verify")
        data = self._json_object()
        if data.get("oid") != match["oid"] or data.get("size") != size:
            raise bad_request("Expected the object's 'oid' and 'size'")
        if not self.store.has_blob(match["oid"], size) or match["oid"] not in self.store.lfs_objects(
            repo_type, repo_id
        ):
            raise StoreError(404, None, f"Object {match['oid']} of {size} bytes was not uploaded")
        return Response(body={})

    def h_commit(self, match: re.Match[str]) -> Response:
        repo_type, repo_id = self._repo_write(match)
        if self.query.get("create_pr"):
            raise bad_request("Pull requests are not supported by the local Hub")
        branch = unquote(match["rev"])
        user = self._user()
        assert user is not None
        body = self._body(MAX_COMMIT_BODY)
        self.server.add_uploaded(len(body))
        header, ops = self._parse_commit(body)
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

    @staticmethod
    def _parse_commit(body: bytes) -> tuple[dict[str, Any], list[CommitOp]]:
        header: dict[str, Any] | None = None
        ops: list[CommitOp] = []
        for number, line in enumerate(body.splitlines(), 1):
            if not line.strip():
                continue
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
                    content = base64.b64decode(value["content"], validate=True)
                    ops.append(AddRegular(str(value["path"]), content))
                elif key == "lfsFile":
                    if value.get("algo", "sha256") != "sha256":
                        raise TypeError
                    ops.append(AddLfs(str(value["path"]), str(value["oid"]), value.get("size")))
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

    def __init__(self, store: Store, host: str = "127.0.0.1", port: int = 0, verbose: bool = False) -> None:
        super().__init__((host, port), HubRequestHandler)
        self.store = store
        self.verbose = verbose
        self.secret = secrets.token_bytes(32)
        self._thread: threading.Thread | None = None
        self._faults: list[Fault] = []
        self._faults_lock = threading.Lock()
        self.uploaded_bytes = 0  # bytes received in LFS uploads and commit bodies, for benchmarks and tests
        self._publishers: dict[str, str] = {}  # OIDC id token -> the repository it may publish to
        self._scoped: dict[str, tuple[str, str]] = {}  # exchanged token -> (user, repository); in memory only

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
        return f"http://{self.url_host}"

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
