"""The local Hub lets nobody in: writes need the owner's token, private repositories are invisible to everyone
else, and malformed or hostile requests get a 4xx. After every refused request the store on disk is byte for
byte what it was before.

Raw HTTP (httpx2 and plain sockets) throughout: these are requests the huggingface_hub client would not send.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import local_hub

from hubsync.localhub import RunningHub

OTHER_TOKEN = "hf_other_user_token_0001"
WRONG_TOKEN = "hf_not_a_token_of_anyone"
SECRET = b"\0secret weights of me/private " * 20  # an LFS file (NUL in its first bytes)
SECRET_SHA = hashlib.sha256(SECRET).hexdigest()
PUBLIC_FILE = b"public weights " * 10


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """One Hub for the module: `me` owns me/public and me/private (both with files), `other` owns other/own."""
    with local_hub(tmp_path_factory.mktemp("security") / "root") as running:
        running.server.store.ensure_user("other", OTHER_TOKEN)
        me = client(running, running.token)
        for name, private in (("public", False), ("private", True)):
            assert me.post("/api/repos/create", json={"name": name, "private": private}).status_code == 200
            upload_lfs(me, f"me/{name}", SECRET if private else PUBLIC_FILE)
            commit = ndjson(
                header(),
                {
                    "key": "file",
                    "value": {"path": "secret.txt", "content": b64(b"secret text\n"), "encoding": "base64"},
                },
                lfs_line("weights.bin", SECRET if private else PUBLIC_FILE),
            )
            assert post_commit(me, f"me/{name}", commit).status_code == 200
            assert me.post(f"/api/models/me/{name}/branch/dev", json={}).status_code == 200
            assert me.post(f"/api/models/me/{name}/tag/main", json={"tag": "v1"}).status_code == 200
        other = client(running, OTHER_TOKEN)
        assert other.post("/api/repos/create", json={"name": "own"}).status_code == 200
        yield running


def client(hub: RunningHub, token: str | None) -> httpx2.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx2.Client(base_url=hub.endpoint, headers=headers, timeout=30)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ndjson(*items: dict[str, Any]) -> bytes:
    return b"\n".join(json.dumps(i).encode() for i in items)


def header(summary: str = "raw commit") -> dict[str, Any]:
    return {"key": "header", "value": {"summary": summary, "description": ""}}


def lfs_line(path: str, data: bytes) -> dict[str, Any]:
    return {"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": sha(data), "size": len(data)}}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def post_commit(c: httpx2.Client, repo: str, body: bytes, rev: str = "main") -> httpx2.Response:
    return c.post(f"/api/models/{repo}/commit/{rev}", content=body, headers={"Content-Type": "application/x-ndjson"})


def batch(c: httpx2.Client, repo: str, data: bytes, operation: str = "upload") -> httpx2.Response:
    body = {"operation": operation, "transfers": ["basic"], "objects": [{"oid": sha(data), "size": len(data)}]}
    return c.post(f"/{repo}.git/info/lfs/objects/batch", json=body)


def upload_lfs(c: httpx2.Client, repo: str, data: bytes) -> dict[str, Any]:
    """The client's LFS upload: batch, PUT (without authorization), verify. Returns the batch's object."""
    r = batch(c, repo, data)
    assert r.status_code == 200, r.text
    (obj,) = r.json()["objects"]
    if "actions" in obj:
        with httpx2.Client(timeout=30) as plain:
            assert plain.put(obj["actions"]["upload"]["href"], content=data).status_code == 200
        assert c.post(obj["actions"]["verify"]["href"], json={"oid": sha(data), "size": len(data)}).status_code == 200
    return obj  # type: ignore[no-any-return]


def snapshot(hub: RunningHub) -> dict[str, str]:
    """Every file of the store, by content."""
    root = Path(hub.server.store.root)
    return {str(p.relative_to(root)): sha(p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def unchanged(hub: RunningHub) -> Iterator[None]:
    """The test's requests must leave the store exactly as it was, and the server answering."""
    before = snapshot(hub)
    yield
    assert snapshot(hub) == before
    with client(hub, hub.token) as c:
        assert c.get("/api/whoami-v2").json()["name"] == "me"


# -- writes ------------------------------------------------------------------------------------------------------------

WRITES: dict[str, tuple[str, str, Any]] = {
    "commit": ("POST", "/api/models/{repo}/commit/main", ndjson(header("evil"), lfs_line("w.bin", PUBLIC_FILE))),
    "commit_delete": (
        "POST",
        "/api/models/{repo}/commit/main",
        ndjson(header(), {"key": "deletedFile", "value": {"path": "secret.txt"}}),
    ),
    "preupload": ("POST", "/api/models/{repo}/preupload/main", {"files": [{"path": "a.bin", "sample": "", "size": 1}]}),
    "lfs_batch_upload": (
        "POST",
        "/{repo}.git/info/lfs/objects/batch",
        {"operation": "upload", "objects": [{"oid": "a" * 64, "size": 1}]},
    ),
    "create_branch": ("POST", "/api/models/{repo}/branch/evil", {}),
    "delete_branch": ("DELETE", "/api/models/{repo}/branch/dev", None),
    "create_tag": ("POST", "/api/models/{repo}/tag/main", {"tag": "evil"}),
    "delete_tag": ("DELETE", "/api/models/{repo}/tag/v1", None),
    "settings": ("PUT", "/api/models/{repo}/settings", {"private": False}),
    "delete_repo": ("DELETE", "/api/repos/delete", "NAME"),
}
WHO = {"anonymous": None, "wrong_token": WRONG_TOKEN, "another_user": OTHER_TOKEN}


def expected_status(who: str, repo: str) -> int:
    if who != "another_user":
        return 401
    return 404 if repo == "me/private" else 403  # a private repository of someone else does not exist


def send(c: httpx2.Client, method: str, path: str, body: Any, repo: str) -> httpx2.Response:
    path = path.format(repo=repo)
    if body == "NAME":
        body = {"name": repo.split("/")[1], "organization": "me"}
    if isinstance(body, bytes):
        return c.request(method, path, content=body, headers={"Content-Type": "application/x-ndjson"})
    return c.request(method, path, json=body) if body is not None else c.request(method, path)


@pytest.mark.parametrize("repo", ["me/public", "me/private"])
@pytest.mark.parametrize("who", list(WHO))
@pytest.mark.parametrize("write", list(WRITES))
def test_writes_by_anyone_but_the_owner_are_refused(
    write: str, who: str, repo: str, hub: RunningHub, unchanged: None
) -> None:
    method, path, body = WRITES[write]
    with client(hub, WHO[who]) as c:
        r = send(c, method, path, body, repo)
    assert r.status_code == expected_status(who, repo), (r.status_code, r.text)
    assert "secret" not in r.text


@pytest.mark.parametrize("who", list(WHO))
def test_nobody_creates_a_repository_in_my_namespace(who: str, hub: RunningHub, unchanged: None) -> None:
    with client(hub, WHO[who]) as c:
        r = c.post("/api/repos/create", json={"name": "planted", "organization": "me"})
    assert r.status_code == (403 if who == "another_user" else 401)


def test_the_owner_passes_the_same_checks(hub: RunningHub) -> None:
    """The baseline: the owner's token gets past what the other tests refuse (here: a branch, made and removed)."""
    with client(hub, hub.token) as c:
        assert c.post("/api/models/me/private/branch/baseline", json={}).status_code == 200
        assert c.delete("/api/models/me/private/branch/baseline").status_code == 200


# -- reads of a private repository -------------------------------------------------------------------------------------

READS: dict[str, tuple[str, str, Any]] = {
    "info": ("GET", "/api/models/{repo}", None),
    "info_at_revision": ("GET", "/api/models/{repo}/revision/main", None),
    "info_with_blobs": ("GET", "/api/models/{repo}?blobs=true", None),
    "tree": ("GET", "/api/models/{repo}/tree/main?recursive=true", None),
    "tree_of_a_folder": ("GET", "/api/models/{repo}/tree/v1/secret.txt", None),
    "refs": ("GET", "/api/models/{repo}/refs", None),
    "commits": ("GET", "/api/models/{repo}/commits/main", None),
    "paths_info": ("POST", "/api/models/{repo}/paths-info/main", {"paths": ["secret.txt"]}),
    "resolve": ("GET", "/{repo}/resolve/main/secret.txt", None),
    "resolve_head": ("HEAD", "/{repo}/resolve/main/weights.bin", None),
    "resolve_by_tag": ("GET", "/{repo}/resolve/v1/secret.txt", None),
    "lfs_batch_download": (
        "POST",
        "/{repo}.git/info/lfs/objects/batch",
        {"operation": "download", "objects": [{"oid": SECRET_SHA, "size": len(SECRET)}]},
    ),
}


@pytest.mark.parametrize("who", list(WHO))
@pytest.mark.parametrize("read", list(READS))
def test_a_private_repository_is_invisible_to_others(read: str, who: str, hub: RunningHub, unchanged: None) -> None:
    """Every read of me/private answers exactly as for a repository that does not exist."""
    method, path, body = READS[read]
    with client(hub, WHO[who]) as c:
        private = send(c, method, path, body, "me/private")
        missing = send(c, method, path, body, "me/no-such-repo")
    assert private.status_code == missing.status_code and private.status_code in (401, 404)
    assert private.headers.get("X-Error-Code") == missing.headers.get("X-Error-Code")
    if who == "another_user":
        assert private.headers["X-Error-Code"] == "RepoNotFound"
    assert b"secret" not in private.content and SECRET_SHA not in private.text
    assert "X-Repo-Commit" not in private.headers


def test_the_owner_reads_it(hub: RunningHub) -> None:
    with client(hub, hub.token) as c:
        assert c.get("/me/private/resolve/main/secret.txt").content == b"secret text\n"
        assert c.get("/me/private/resolve/main/weights.bin").content == SECRET


# -- LFS objects are shared by content, not between repositories -------------------------------------------------------


def test_knowing_a_private_files_hash_gets_nobody_its_content(hub: RunningHub, unchanged: None) -> None:
    """Blobs are stored once by sha256. Someone who learns the sha256 of me/private's weights (from a listing
    before it went private, a log, a guess) can neither commit it into a repository of theirs nor download it
    through one, nor even learn that the store holds it."""
    with client(hub, OTHER_TOKEN) as other:
        # A commit that references the object: refused, as if it had never been uploaded.
        r = post_commit(other, "other/own", ndjson(header("steal"), lfs_line("stolen.bin", SECRET)))
        assert r.status_code == 400 and "never uploaded" in r.text
        # A download through a repository they can read: no such object there.
        (obj,) = batch(other, "other/own", SECRET, "download").json()["objects"]
        assert obj["error"]["code"] == 404 and "actions" not in obj
        (obj,) = batch(other, "me/public", SECRET, "download").json()["objects"]
        assert obj["error"]["code"] == 404 and "actions" not in obj
        # An upload: asked for, like any object the repository does not have (no "already stored" answer).
        (obj,) = batch(other, "other/own", SECRET).json()["objects"]
        assert "upload" in obj["actions"]
        # Verify and download links without a ticket for this object and repository: refused.
        assert (
            other.post(
                f"/_lfs/{SECRET_SHA}/verify?size={len(SECRET)}", json={"oid": SECRET_SHA, "size": len(SECRET)}
            ).status_code
            == 403
        )
        forged = f"/_lfs/{SECRET_SHA}?size={len(SECRET)}&repo=model:other/own&ticket={'0' * 64}"
        assert other.get(forged).status_code == 403


def test_an_upload_for_one_repository_is_usable_there_and_deduplicated(hub: RunningHub) -> None:
    """The owner's side of the same rule: an object uploaded for a repository can be committed to it, and is
    not asked for again; whoever really has the bytes can upload them to their own repository."""
    data = b"\0shared by content " * 30
    with client(hub, OTHER_TOKEN) as other, client(hub, hub.token) as me:
        assert "actions" in upload_lfs(other, "other/own", data)
        assert post_commit(other, "other/own", ndjson(header(), lfs_line("a.bin", data))).status_code == 200
        assert "actions" not in upload_lfs(other, "other/own", data)  # known to this repository now
        assert "actions" in upload_lfs(me, "me/public", data)  # stored, but me/public must send it too
        assert post_commit(me, "me/public", ndjson(header(), lfs_line("a.bin", data))).status_code == 200
        assert me.get("/me/public/resolve/main/a.bin").content == data


# -- malformed and hostile requests ------------------------------------------------------------------------------------


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


MALFORMED: dict[str, tuple[str, str, bytes, str]] = {
    "create_repo_not_json": ("POST", "/api/repos/create", b'{"name": "x",', "application/json"),
    "create_repo_nested_100k": ("POST", "/api/repos/create", deep(100_000), "application/json"),
    "create_repo_long_number": (
        "POST",
        "/api/repos/create",
        b'{"name": "x", "private": ' + b"9" * 5000 + b"}",
        "application/json",
    ),
    "create_repo_not_utf8": ("POST", "/api/repos/create", b'{"name": "\xff\xfe"}', "application/json"),
    "create_repo_bad_name": ("POST", "/api/repos/create", b'{"name": "../../escape"}', "application/json"),
    "create_repo_bad_type": ("POST", "/api/repos/create", b'{"name": "x", "type": "../../models"}', "application/json"),
    "branch_not_json": ("POST", "/api/models/me/public/branch/x", b"[", "application/json"),
    "branch_traversal": ("POST", "/api/models/me/public/branch/..%2F..%2Fescape", b"{}", "application/json"),
    "tag_not_a_string": ("POST", "/api/models/me/public/tag/main", b'{"tag": ["v2"]}', "application/json"),
    "tag_traversal": ("POST", "/api/models/me/public/tag/main", b'{"tag": "../../escape"}', "application/json"),
    "preupload_not_json": ("POST", "/api/models/me/public/preupload/main", b"{files", "application/json"),
    "preupload_nested": (
        "POST",
        "/api/models/me/public/preupload/main",
        b'{"files": ' + deep(50_000) + b"}",
        "application/json",
    ),
    "batch_not_json": ("POST", "/me/public.git/info/lfs/objects/batch", b"\x00\x01", "application/vnd.git-lfs+json"),
    "batch_bad_operation": (
        "POST",
        "/me/public.git/info/lfs/objects/batch",
        b'{"operation": "delete", "objects": []}',
        "application/json",
    ),
    "paths_info_nested": ("POST", "/api/models/me/public/paths-info/main", deep(100_000), "application/json"),
    "settings_bad_visibility": (
        "PUT",
        "/api/models/me/public/settings",
        b'{"visibility": "everyone"}',
        "application/json",
    ),
    "repo_id_traversal": ("GET", "/api/models/%2e%2e/%2e%2e/tree/main", b"", ""),
    "repo_id_encoded_slash": ("GET", "/api/models/me%2F..%2F..%2Fx/public/tree/main", b"", ""),
    "resolve_traversal": ("GET", "/me/public/resolve/main/..%2F..%2F..%2Ftokens.json", b"", ""),
    "resolve_dot_segments": ("GET", "/me/public/resolve/main/%2e%2e/%2e%2e/%2e%2e/tokens.json", b"", ""),
    "resolve_absolute": ("GET", "/me/public/resolve/main/%2Fetc%2Fpasswd", b"", ""),
    "revision_traversal": ("GET", "/api/models/me/public/revision/..%2F..%2Ftokens", b"", ""),
    "tree_traversal": ("GET", "/api/models/me/public/tree/main/%2e%2e/%2e%2e", b"", ""),
    "blob_by_path": ("GET", "/_lfs/..%2F..%2Ftokens.json", b"", ""),
    "lfs_put_without_ticket": ("PUT", f"/_lfs/{'b' * 64}?size=3", b"abc", "application/octet-stream"),
    "unknown_route": ("POST", "/api/admin/shutdown", b"{}", "application/json"),
}

COMMIT_PATHS = [
    "../escape.txt",
    "/absolute.txt",
    "a/../../escape.txt",
    "a\\..\\b.txt",
    "nul\x00.txt",
    "line\nbreak.txt",
    ".git/config",
    ".git/hooks/post-checkout",
    ".git",
    "a//b.txt",
    "a/./b.txt",
    "",
    "trailing/",
]
COMMIT_LINES: dict[str, bytes] = {
    "not_json": ndjson(header()) + b"\n{not json",
    "no_header": ndjson({"key": "file", "value": {"path": "a.txt", "content": b64(b"a")}}),
    "header_not_first": ndjson({"key": "deletedFile", "value": {"path": "x"}}, header()),
    "two_headers": ndjson(header(), header()),
    "value_not_an_object": ndjson(header(), {"key": "file", "value": "a.txt"}),
    "unknown_key": ndjson(header(), {"key": "chmod", "value": {"path": "a.txt"}}),
    "bad_base64": ndjson(header(), {"key": "file", "value": {"path": "a.txt", "content": "***", "encoding": "base64"}}),
    "other_encoding": ndjson(
        header(), {"key": "file", "value": {"path": "a.txt", "content": "a", "encoding": "utf-8"}}
    ),
    "lfs_without_oid": ndjson(header(), {"key": "lfsFile", "value": {"path": "a.bin", "size": 1}}),
    "lfs_bad_oid": ndjson(
        header(), {"key": "lfsFile", "value": {"path": "a.bin", "oid": "../../tokens.json", "size": 1}}
    ),
    "lfs_other_algo": ndjson(header(), {"key": "lfsFile", "value": {"path": "a.bin", "oid": "a" * 64, "algo": "md5"}}),
    "header_summary_not_a_string": ndjson({"key": "header", "value": {"summary": {"$": 1}}}),
    "description_not_a_string": ndjson({"key": "header", "value": {"summary": "s", "description": [1]}}),
    "nested_100k": b'{"key": "header", "value": ' + deep(100_000) + b"}",
    "not_utf8": ndjson(header()) + b'\n{"key": "file", "value": {"path": "\xff", "content": ""}}',
    "delete_missing": ndjson(header(), {"key": "deletedFile", "value": {"path": "no-such-file.txt"}}),
    **{
        f"path_{i}": ndjson(
            header(),
            {"key": "file", "value": {"path": "fine.txt", "content": b64(b"fine")}},
            {"key": "file", "value": {"path": p, "content": b64(b"x")}},
        )
        for i, p in enumerate(COMMIT_PATHS)
    },
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_get_a_4xx(case: str, hub: RunningHub, unchanged: None) -> None:
    method, path, body, ctype = MALFORMED[case]
    with client(hub, hub.token) as c:
        r = c.request(method, path, content=body, headers={"Content-Type": ctype} if ctype else {})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert hub.token not in r.text and b"hf_" not in r.content  # tokens.json is never served


@pytest.mark.parametrize("case", list(COMMIT_LINES))
def test_malformed_commits_get_a_4xx_and_land_nowhere(case: str, hub: RunningHub, unchanged: None) -> None:
    with client(hub, hub.token) as c:
        r = post_commit(c, "me/public", COMMIT_LINES[case])
    assert 400 <= r.status_code < 500, (r.status_code, r.text)


def raw_request(hub: RunningHub, request: bytes) -> bytes:
    """Send bytes as they are; the status line of the answer."""
    host, port = hub.endpoint.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request)
        answer = b""
        while b"\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def auth(hub: RunningHub) -> bytes:
    return f"Authorization: Bearer {hub.token}\r\n".encode()


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("huge_content_length_json", b"413"),
        ("huge_content_length_commit", b"413"),
        ("negative_content_length", b"400"),
        ("content_length_not_a_number", b"400"),
        ("oversized_header", b"431"),
        ("too_many_headers", b"431"),
        ("oversized_request_line", b"414"),
    ],
)
def test_oversized_and_broken_requests(case: str, status: bytes, hub: RunningHub, unchanged: None) -> None:
    """Limits hold before any body is read: a Content-Length of a terabyte is answered at once, not awaited."""
    a = auth(hub)
    requests = {
        "huge_content_length_json": b"POST /api/repos/create HTTP/1.1\r\nHost: x\r\n"
        + a
        + b"Content-Length: 1000000000000\r\n\r\n{",
        "huge_content_length_commit": b"POST /api/models/me/public/commit/main HTTP/1.1\r\nHost: x\r\n"
        + a
        + b"Content-Length: 1000000000000\r\n\r\n{",
        "negative_content_length": b"POST /api/repos/create HTTP/1.1\r\nHost: x\r\n"
        + a
        + b"Content-Length: -5\r\n\r\n",
        "content_length_not_a_number": b"POST /api/repos/create HTTP/1.1\r\nHost: x\r\n"
        + a
        + b"Content-Length: lots\r\n\r\n",
        "oversized_header": b"GET /api/whoami-v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        "too_many_headers": b"GET /api/whoami-v2 HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: 1\r\n" % i for i in range(150))
        + b"\r\n",
        "oversized_request_line": b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    line = raw_request(hub, requests[case])
    assert line.split(b" ")[1] == status, line
