"""The local Hub against a hostile client or a hostile neighbour (issue 15, items 5, 2 and 8): its files are the
owner's alone, signed links check access again when used, bodies are bounded before they are read, half-sent
requests cannot starve anyone, links never follow a forged Host header, no commit places `.git` anywhere, and the
--verbose log never passes control bytes to the terminal.

The real huggingface_hub client where it can send the request; raw HTTP and sockets where it would not.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import stat
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import huggingface_hub
import pytest
from click.testing import CliRunner
from conftest import local_hub, reporting_bugs
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import BadRequestError, EntryNotFoundError, RepositoryNotFoundError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsync.cli import cli
from hubsync.localhub import LocalHubServer, RunningHub, Store, connections, protocol
from hubsync.localhub.store import check_path_in_repo

WEIGHTS = b"\0weights " * 100  # an LFS file: a NUL among its first bytes


def client(hub: RunningHub, token: str | None = None, **headers: str) -> httpx2.Client:
    if token:
        headers["authorization"] = f"Bearer {token}"
    return httpx2.Client(base_url=hub.endpoint, headers=headers, timeout=30)


def ndjson(*items: dict[str, Any]) -> bytes:
    return b"\n".join(json.dumps(i).encode() for i in items)


def header(summary: str = "raw commit") -> dict[str, Any]:
    return {"key": "header", "value": {"summary": summary, "description": ""}}


def file_line(path: str, content: bytes) -> dict[str, Any]:
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(content).decode(), "encoding": "base64"}}


def post_commit(c: httpx2.Client, repo: str, body: bytes) -> httpx2.Response:
    return c.post(f"/api/models/{repo}/commit/main", content=body, headers={"Content-Type": "application/x-ndjson"})


def raw_answer(hub: RunningHub, request: bytes, timeout: float = 30) -> bytes:
    """Send `request` as it is (a head alone, maybe, with a Content-Length it never sends); the answer's head."""
    host, port = hub.server.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
def lfs_via_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # the local Hub has no Xet


# -- files on disk ---------------------------------------------------------------------------------------------------


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_everything_the_store_writes_is_the_owners_alone(
    umask: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lfs_via_client: None
) -> None:
    """tokens.json, blobs, commit records, refs: 0600; folders 0700, whatever the umask (0644/0755 before)."""
    old = os.umask(umask)
    try:
        with local_hub(tmp_path / "root") as hub:
            api = HfApi(endpoint=hub.endpoint, token=hub.token)
            api.create_repo("me/m", private=True)
            api.upload_file(path_or_fileobj=WEIGHTS, path_in_repo="w.bin", repo_id="me/m")
            api.upload_file(path_or_fileobj=b"text\n", path_in_repo="sub/a.txt", repo_id="me/m")
            api.create_branch("me/m", branch="dev")
            api.create_repo("me/gone")
            api.delete_repo("me/gone")
    finally:
        os.umask(old)
    found = modes(tmp_path / "root")
    assert len(found) > 10
    wrong = {
        path: oct(mode)
        for path, mode in found.items()
        if mode != (0o700 if (tmp_path / "root" / path).is_dir() or path == "." else 0o600)
    }
    assert wrong == {}


def test_a_store_left_readable_by_others_is_tightened_when_opened(tmp_path: Path) -> None:
    """A store that an older version wrote 0644/0755 is made 0600/0700 on start; what else lies in the folder is
    left alone."""
    root = tmp_path / "root"
    Store(root).ensure_user("me", "hf_me_token_0001")
    (root / "repos" / "models" / "me").mkdir(parents=True)
    (root / "notes.txt").write_text("mine")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    store = Store(root)
    assert store.tightened == 6  # root, tokens.json, blobs, repos, repos/models, repos/models/me; not the notes
    found = modes(root)
    assert found.pop("notes.txt") == 0o644
    assert found.pop("tokens.json") == 0o600
    assert set(found.values()) == {0o700}


# -- signed links check access when used -----------------------------------------------------------------------------


def download_link(hub: RunningHub, repo: str, token: str | None) -> str:
    body = {"operation": "download", "objects": [{"oid": hashlib.sha256(WEIGHTS).hexdigest(), "size": len(WEIGHTS)}]}
    with client(hub, token) as c:
        r = c.post(f"/{repo}.git/info/lfs/objects/batch", json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["objects"][0]["actions"]["download"]["href"])


@pytest.fixture
def weights_repo(hub: RunningHub, api: HfApi, lfs_via_client: None) -> str:
    api.create_repo("me/w")
    api.upload_file(path_or_fileobj=WEIGHTS, path_in_repo="w.bin", repo_id="me/w")
    return "me/w"


@pytest.mark.parametrize(
    ("holder", "change"),
    [("anonymous", "made_private"), ("anonymous", "deleted"), ("owner", "deleted"), ("owner", "recreated")],
)
def test_an_old_download_link_answers_like_the_repository_now(
    holder: str, change: str, hub: RunningHub, api: HfApi, weights_repo: str
) -> None:
    """An LFS download link keeps working only while its holder may still read the repository: after the
    repository became private (for anyone else) or was deleted, the link answers 401/404 as the Hub would."""
    link = download_link(hub, weights_repo, hub.token if holder == "owner" else None)
    with httpx2.Client(timeout=30) as plain:
        assert plain.get(link).content == WEIGHTS
        if change == "made_private":
            api.update_repo_settings(weights_repo, private=True)
        else:
            api.delete_repo(weights_repo)
            if change == "recreated":  # same name, no such file: the old link names nothing there
                api.create_repo(weights_repo)
        r = plain.get(link)
    assert r.status_code in (401, 404), (r.status_code, r.text)
    assert WEIGHTS not in r.content
    # The real client agrees: the file is gone for this caller.
    token = hub.token if holder == "owner" else False
    with pytest.raises((RepositoryNotFoundError, EntryNotFoundError)):
        hf_hub_download(weights_repo, "w.bin", endpoint=hub.endpoint, token=token)


def test_a_link_stops_working_when_its_token_is_revoked(hub: RunningHub, api: HfApi, weights_repo: str) -> None:
    """A private repository's link is bound to the token that asked for it: revoke the token, the link dies."""
    api.update_repo_settings(weights_repo, private=True)
    tokens_path = Path(hub.server.store.root) / "tokens.json"
    hub.server.store.ensure_user("me", "hf_second_token_of_me")
    link = download_link(hub, weights_repo, "hf_second_token_of_me")
    with httpx2.Client(timeout=30) as plain:
        assert plain.get(link).content == WEIGHTS
        tokens = json.loads(tokens_path.read_text())
        del tokens["hf_second_token_of_me"]
        tokens_path.write_text(json.dumps(tokens))
        assert plain.get(link).status_code == 401


def test_an_upload_link_for_a_deleted_repository_reads_nothing(hub: RunningHub, api: HfApi) -> None:
    api.create_repo("me/u")
    body = {"operation": "upload", "objects": [{"oid": hashlib.sha256(WEIGHTS).hexdigest(), "size": len(WEIGHTS)}]}
    with client(hub, hub.token) as c:
        href = c.post("/me/u.git/info/lfs/objects/batch", json=body).json()["objects"][0]["actions"]["upload"]["href"]
    api.delete_repo("me/u")
    with httpx2.Client(timeout=30) as plain:
        assert plain.put(href, content=WEIGHTS).status_code == 404
    assert not hub.server.store.has_blob(hashlib.sha256(WEIGHTS).hexdigest())


# -- bodies ----------------------------------------------------------------------------------------------------------


def test_a_big_validate_yaml_body_is_refused_before_it_is_read(hub: RunningHub) -> None:
    """4 MiB took 46 s of CPU and 1.4 GB: now 413 from the Content-Length alone (the body is never sent)."""
    answer = raw_answer(
        hub, b"POST /api/validate-yaml HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n", timeout=5
    )
    assert status_of(answer) == 413


YAML_BOMBS = {
    "billion_laughs": "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(8)),
    "open_brackets": "a: " + "[" * 60_000,
    "deep_blocks": "".join(" " * i + "a:\n" for i in range(200)),
    "self_alias": "a: &a [*a, 1]\n",
    "huge_integer": "license: " + "9" * 60_000,
    "many_values": "a: [" + ",".join(["1"] * 30_000) + "]",
    "too_long": "a: '" + "x" * 70_000 + "'",
}


@pytest.mark.parametrize("case", sorted(YAML_BOMBS))
def test_yaml_that_costs_too_much_gets_a_400_in_bounded_time(case: str, hub: RunningHub, api: HfApi) -> None:
    """The front matter is parsed by a safe loader with bounds on size, depth, values and aliases expanded."""
    content = f"---\n{YAML_BOMBS[case]}\n---\n# card\n"
    started = time.process_time()
    with client(hub) as c:
        r = c.post("/api/validate-yaml", json={"content": content, "repoType": "model"})
    assert time.process_time() - started < 3.0
    assert r.status_code == 400, r.text
    assert r.json()["errors"]
    # A card of the usual size still passes.
    ok = "---\nlicense: mit\ntags: [a, b]\nbase_model: x/y\n---\n# card\n"
    with client(hub) as c:
        assert c.post("/api/validate-yaml", json={"content": ok}).json() == {"errors": [], "warnings": []}


def test_a_commit_body_is_streamed_not_held(hub: RunningHub, api: HfApi) -> None:
    """A 300 MiB commit body took 1.8 GB; one of 96 MiB (24 files of 3 MiB, base64) now peaks at a few of its
    lines. Every file lands, checked through the client."""
    api.create_repo("me/big")
    content = [bytes([ord("A") + i]) * (3 * 1024 * 1024) for i in range(24)]  # text: binary ones must be LFS

    def body() -> Iterator[bytes]:
        yield json.dumps(header("big")).encode() + b"\n"
        for i, data in enumerate(content):
            yield json.dumps(file_line(f"part{i}.txt", data)).encode() + b"\n"

    tracemalloc.start()
    try:
        with client(hub, hub.token) as c:
            r = c.post(
                "/api/models/me/big/commit/main", content=body(), headers={"Content-Type": "application/x-ndjson"}
            )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.status_code == 200, r.text
    assert peak < 48 * 1024 * 1024, peak
    files = {f.path: f.size for f in api.list_repo_tree("me/big", recursive=True)}
    assert {f"part{i}.txt" for i in range(24)} <= set(files)
    assert hf_hub_download("me/big", "part7.txt", endpoint=hub.endpoint, token=hub.token) is not None


@pytest.mark.parametrize(
    ("case", "lines"),
    [
        ("line_too_long", [header(), file_line("a.txt", b"x" * (13 * 1024 * 1024))]),
        ("too_many_operations", [header(), *({"key": "deletedFolder", "value": {"path": "x"}} for _ in range(25_001))]),
    ],
)
def test_commit_bodies_past_the_bounds_get_413_and_land_nowhere(
    case: str, lines: list[dict[str, Any]], hub: RunningHub, api: HfApi
) -> None:
    api.create_repo("me/c")
    before = api.list_repo_commits("me/c")
    with client(hub, hub.token) as c:
        r = post_commit(c, "me/c", ndjson(*lines))
    assert r.status_code == 413, r.text
    assert api.list_repo_commits("me/c") == before
    assert list((Path(hub.server.store.root) / "blobs").glob(".commit-*")) == []


# -- time and connections --------------------------------------------------------------------------------------------


def test_a_thousand_half_sent_requests_do_not_starve_a_real_client(hub: RunningHub, api: HfApi) -> None:
    """1024 connections that send half a request head and stall: the real client is still answered at once, and
    the server holds no thread for them."""
    host, port = hub.server.server_address[:2]
    stalled = []
    try:
        for _ in range(1024):
            s = socket.create_connection((host, port), timeout=10)
            s.sendall(b"GET /api/whoami-v2 HTTP/1.1\r\nHost: x\r\n")
            stalled.append(s)
        started = time.monotonic()
        assert api.whoami()["name"] == "me"
        assert time.monotonic() - started < 5
        assert threading.active_count() < 64
    finally:
        for s in stalled:
            s.close()


def test_a_stalled_request_head_is_dropped_after_the_header_timeout(
    hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connections, "HEADER_TIMEOUT", 0.5)
    host, port = hub.server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET /api/whoami-v2 HTTP/1.1\r\n")
        started = time.monotonic()
        assert s.recv(100) == b""  # closed by the server
        assert time.monotonic() - started < 5


def test_a_stalled_body_frees_its_thread(hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body that stops arriving holds its thread for HubRequestHandler.timeout (30 s, none before), shortened
    here."""
    assert 0 < protocol.HubRequestHandler.timeout <= 60
    monkeypatch.setattr(protocol.HubRequestHandler, "timeout", 0.5)
    host, port = hub.server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"POST /api/validate-yaml HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        started = time.monotonic()
        while s.recv(4096):
            pass
        assert time.monotonic() - started < 5


# -- links -----------------------------------------------------------------------------------------------------------


def test_links_never_follow_a_forged_host_header(hub: RunningHub, api: HfApi) -> None:
    """Upload, verify and download hrefs, commit and repository urls name the server, whatever Host says."""
    forged = "evil.example:666"
    with client(hub, hub.token, host=forged) as c:
        created = c.post("/api/repos/create", json={"name": "h"}).json()
        objects = [{"oid": hashlib.sha256(WEIGHTS).hexdigest(), "size": len(WEIGHTS)}]
        up = c.post("/me/h.git/info/lfs/objects/batch", json={"operation": "upload", "objects": objects}).json()
        commit = post_commit(c, "me/h", ndjson(header(), file_line("a.txt", b"a"))).json()
        conflict = c.post("/api/repos/create", json={"name": "h"}).json()
    actions = up["objects"][0]["actions"]
    urls = [created["url"], conflict["url"], commit["commitUrl"], actions["upload"]["href"], actions["verify"]["href"]]
    assert all(u.startswith(hub.endpoint + "/") for u in urls), urls
    assert not any("evil" in u for u in urls)


def test_a_configured_public_url_is_what_links_name(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    token = store.ensure_user("me", "hf_me_token_0001")
    server = LocalHubServer(store, public_url="https://hub.example/").start_background()
    try:
        with reporting_bugs(server):
            host, port = server.server_address[:2]
            with httpx2.Client(base_url=f"http://{host}:{port}", headers={"authorization": f"Bearer {token}"}) as c:
                assert c.post("/api/repos/create", json={"name": "p"}).json()["url"] == "https://hub.example/me/p"
    finally:
        server.stop()


# -- paths a commit may hold -----------------------------------------------------------------------------------------

GIT_NAMES = [
    ".git",
    ".GIT",
    ".Git",
    ".git.",
    ".git ",
    ".git. .",
    ".git::$INDEX_ALLOCATION",
    "GIT~1",
    "git~2",
    ".g\u200cit",
    ".gi\ufefft",
    ".gitmodules",
    ".GITMODULES",
    ".cache",
]
BAD_PARTS = ["", ".", "..", "a\\b", "a\x00b", "a\x1b[31m", "a\x7f", "a\x85", "\ud800", "x" * 256]
benign_part = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,11}", fullmatch=True).filter(
    lambda p: p.rstrip(". ").casefold() not in (".git", ".cache", ".gitmodules")
)


@pytest.fixture(scope="module")
def path_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    with local_hub(tmp_path_factory.mktemp("paths") / "root") as running:
        HfApi(endpoint=running.endpoint, token=running.token).create_repo("me/paths")
        yield running


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.lists(benign_part, max_size=3),
    bad=st.sampled_from(GIT_NAMES + BAD_PARTS),
    after=st.lists(benign_part, min_size=1, max_size=3),
)
def test_a_commit_cannot_place_git_names_or_bad_parts_at_any_depth(
    before: list[str], bad: str, after: list[str], path_hub: RunningHub
) -> None:
    path = "/".join([*before, bad, *after])
    api = HfApi(endpoint=path_hub.endpoint, token=path_hub.token)
    head = api.list_repo_commits("me/paths")[0].commit_id
    with client(path_hub, path_hub.token) as c:
        r = post_commit(c, "me/paths", ndjson(header(), file_line(path, b"[core]\n\tfsmonitor = touch pwned\n")))
    assert r.status_code == 400, (path, r.text)
    assert api.list_repo_commits("me/paths")[0].commit_id == head


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=st.lists(
        st.one_of(benign_part, st.sampled_from([".gitattributes", ".gitignore", ".hubsync"])), min_size=1, max_size=4
    )
)
def test_ordinary_names_still_commit(parts: list[str], path_hub: RunningHub) -> None:
    """.gitattributes (huggingface.co keeps one in every repository), .gitignore, .hubsync: ordinary files."""
    if parts[-1] == ".hubsync":
        parts.append("index.json")
    path = "/".join(parts)
    with client(path_hub, path_hub.token) as c:
        r = post_commit(c, "me/paths", ndjson(header(), file_line(path, b"x\n")))
    if r.status_code == 400 and "already exists" in r.text:  # a file where an earlier example made a folder
        return
    assert r.status_code == 200, (path, r.text)
    assert check_path_in_repo(path) == path


def test_the_real_client_cannot_commit_a_nested_git_folder(hub: RunningHub, api: HfApi) -> None:
    """The client itself refuses `.git` at any depth, but not `.GIT` (one folder on macOS and Windows) nor
    `.gitmodules`: the local Hub refuses them."""
    api.create_repo("me/g")
    before = api.list_repo_files("me/g")
    for path in ("sub/.GIT/config", "sub/.git./config", ".gitmodules"):
        with pytest.raises(BadRequestError):
            api.create_commit(
                "me/g", [CommitOperationAdd(path, b"[core]\n\tfsmonitor = touch pwned\n")], commit_message="x"
            )
    assert api.list_repo_files("me/g") == before


# -- the --verbose log -----------------------------------------------------------------------------------------------


def test_the_verbose_log_prints_what_a_client_sent_escaped(hub: RunningHub, capfd: pytest.CaptureFixture[str]) -> None:
    hub.server.verbose = True
    try:
        raw_answer(hub, b"GET /\x1b]0;pwned\x07\x1b[2J\x9b\xe2\x80\xae HTTP/1.1\r\nHost: x\r\n\r\n")
        raw_answer(hub, b"GET /x HTTP/1.1\x1b[31m\r\nHost: x\r\n\r\n")  # refused by http.server itself
        time.sleep(0.2)
    finally:
        hub.server.verbose = False
    err = capfd.readouterr().err
    assert "localhub:" in err
    assert not any(c in err for c in "\x1b\x07\x9b\u202e"), repr(err)
    assert "\\x1b]0;pwned" in err


def test_a_public_url_that_is_not_one_is_a_usage_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hubsync.cli import cli

    result = CliRunner().invoke(cli, ["localhub", "--root", str(tmp_path / "hub"), "--public-url", "evil\r\nX: y"])
    assert result.exit_code == 2
    assert "--public-url" in result.stderr


def test_a_root_in_a_folder_anyone_may_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could rename the store away and put another in its place
    result = CliRunner().invoke(cli, ["localhub", "--root", str(shared / "hub"), "--port", "0"])
    assert result.exit_code == 2 and "lies in a folder anyone may write to" in result.stderr, result.output
    assert not (shared / "hub").exists()


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="making another account's folder needs root")
@pytest.mark.parametrize("whose", ["root", "repos"])
def test_a_root_holding_another_accounts_entries_is_refused(tmp_path: Path, whose: str) -> None:
    root = tmp_path / "hub"
    (root / "repos").mkdir(parents=True)
    os.chown(root if whose == "root" else root / "repos", 65534, 65534)
    result = CliRunner().invoke(cli, ["localhub", "--root", str(root), "--port", "0"])
    assert result.exit_code == 2 and "another account" in result.stderr, result.output
    assert not (root / "tokens.json").exists()
