"""Attacks on issue 17 (local Hub Xet storage, client Xet, rate limits, validation, the faster secret scan).

Each test states the behaviour a safe Hub/client has; each was a problem an attack found (fixed since; its
docstring says how it broke). Hostile clients of the local Hub speak raw HTTP (httpx2) and write into the
`local://` storage folder they are handed, as hf_xet's local storage lets any client do.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx2
import pytest
from hostile_proxy import ProxyHandler, serve
from huggingface_hub import HfApi

from hubsync.core import errors
from hubsync.hub.client import HubClient
from hubsync.hub.download import Transfers
from hubsync.localhub import RunningHub
from hubsync.localhub.xet_storage import SHARD_TAG, WITH_METADATA_EXT, shard_files

# -- helpers -------------------------------------------------------------------------------------------------------


def _raw_hash(hex_text: str) -> bytes:
    """The 32 bytes whose Xet hex (each little-endian 64-bit word printed as a number) is `hex_text`."""
    return b"".join(struct.pack("<Q", int(hex_text[i : i + 16], 16)) for i in range(0, 64, 16))


def forged_shard(sha256: str, size: int, xet_hash: str = "11" * 32) -> bytes:
    """A shard of hubsync's parser's layout that claims one file: `xet_hash`, `size` bytes, `sha256`; no xorb."""
    footer_size = 48
    parts = [min(size - i, 2**32 - 1) for i in range(0, size, 2**32 - 1)] or [0]  # a segment's size is a u32
    file_header = _raw_hash(xet_hash) + struct.pack("<II", WITH_METADATA_EXT, len(parts)) + b"\0" * 8
    entry = b"".join(b"\0" * 36 + struct.pack("<I", part) + b"\0" * 8 for part in parts)
    metadata = _raw_hash(sha256) + b"\0" * 16
    bookend = b"\xff" * 32 + b"\0" * 16
    body = file_header + entry + metadata + bookend
    footer_at = 48 + len(body)
    footer = struct.pack("<QQQ", 1, 48, footer_at).ljust(footer_size, b"\0")
    return SHARD_TAG + struct.pack("<QQ", 2, footer_size) + body + footer


def test_the_forged_shard_reads_as_hubsync_reads_a_shard() -> None:
    (file,) = shard_files(forged_shard("ab" * 32, 1234, "cd" * 32))
    assert (file.sha256, file.size, file.xet_hash) == ("ab" * 32, 1234, "cd" * 32)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def storage_of(hub: RunningHub, token: str, repo: str) -> Path:
    """The local:// folder the Hub hands a writer of `repo` (as any Xet client gets it)."""
    answer = httpx2.get(f"{hub.endpoint}/api/models/{repo}/xet-write-token/main", headers=auth(token))
    assert answer.status_code == 200, answer.text
    cas = answer.json()["casUrl"]
    assert cas.startswith("local://")
    return Path(cas[len("local://") :])


def commit_lfs(hub: RunningHub, token: str, repo: str, path: str, sha256: str, size: int) -> httpx2.Response:
    body = (
        json.dumps({"key": "header", "value": {"summary": "add"}})
        + "\n"
        + json.dumps({"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": sha256, "size": size}})
        + "\n"
    )
    return httpx2.post(
        f"{hub.endpoint}/api/models/{repo}/commit/main",
        content=body.encode(),
        headers={**auth(token), "Content-Type": "application/x-ndjson"},
        timeout=60,
    )


def eve(hub: RunningHub) -> str:
    token = hub.server.store.ensure_user("eve")
    HfApi(endpoint=hub.endpoint, token=token).create_repo("eve/mine")
    return token


# -- 1. the local Hub's Xet storage: forged shards -----------------------------------------------------------------


@pytest.mark.parametrize("victim_upload", ["lfs", "xet-then-plain-download"])
def test_a_forged_shard_does_not_get_another_users_private_file(
    hub: RunningHub, api: HfApi, tmp_path: Path, victim_upload: str
) -> None:
    """Found by attack: Eve knows the sha256 and size of a file in someone else's private repository (no more than the
    existing test_a_user_cannot_write_to_or_read_from_anothers_xet_storage assumes). She writes a shard into her own
    storage folder claiming that sha256: the commit is accepted (apply_commit trusts the shard), and a plain
    download of her file is served from the shared, content-addressed blob store (ensure_blob: has_blob) with the
    victim's bytes."""
    api.create_repo("me/secret", private=True)
    secret = os.urandom(1_200_000)
    if victim_upload == "lfs":
        import io

        api.upload_file(path_or_fileobj=io.BytesIO(secret), path_in_repo="s.bin", repo_id="me/secret")
    else:  # through Xet; the owner's own plain download rebuilds the blob into the shared store
        (tmp_path / "s.bin").write_bytes(secret)
        api.upload_file(path_or_fileobj=str(tmp_path / "s.bin"), path_in_repo="s.bin", repo_id="me/secret")
        own = httpx2.get(f"{hub.endpoint}/me/secret/resolve/main/s.bin", headers=auth(hub.token), timeout=60)
        assert own.content == secret
    sha = hashlib.sha256(secret).hexdigest()

    token = eve(hub)
    shards = storage_of(hub, token, "eve/mine") / "xet" / "xorbs" / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    (shards / ("ab" * 32 + ".mdb")).write_bytes(forged_shard(sha, len(secret)))

    committed = commit_lfs(hub, token, "eve/mine", "stolen.bin", sha, len(secret))
    got = httpx2.get(
        f"{hub.endpoint}/eve/mine/resolve/main/stolen.bin",
        headers={**auth(token), "Accept-Encoding": "identity"},
        timeout=60,
    )
    leaked = got.content == secret
    assert not leaked, f"commit answered {committed.status_code}; eve downloaded the private file"


def test_a_commit_cannot_name_a_file_whose_bytes_were_never_uploaded(hub: RunningHub) -> None:
    """Found by attack (integrity): A shard alone, with no xorb behind it, makes the Hub accept a commit of a file that
    exists nowhere, and of a size past the Hub's 50 GB limit (apply_commit applies no file_size_error to a file
    found in a shard): the tree then lists it (sha256, size, xetHash) and every download fails (502, or hf_xet's
    error). huggingface.co's CAS checks a shard against the xorbs it holds before it takes it."""
    token = eve(hub)
    shards = storage_of(hub, token, "eve/mine") / "xet" / "xorbs" / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    claimed = hashlib.sha256(b"never uploaded").hexdigest()
    (shards / ("cd" * 32 + ".mdb")).write_bytes(forged_shard(claimed, 60_000_000_000))

    committed = commit_lfs(hub, token, "eve/mine", "ghost.bin", claimed, 60_000_000_000)
    got = httpx2.get(f"{hub.endpoint}/eve/mine/resolve/main/ghost.bin", headers=auth(token), timeout=60)
    assert committed.status_code == 400, f"commit {committed.status_code}, then a plain download {got.status_code}"


def test_a_fifo_in_ones_own_storage_does_not_hang_the_hub(hub: RunningHub, api: HfApi) -> None:
    """Found by attack: XetStorage._shard stats then reads every `*.mdb` of the
    committer's storage folder, inside apply_commit's store-wide lock. A FIFO there (size 0 passes the size check)
    blocks read_bytes() until some writer opens it: eve's commit hangs, and with it every commit to any repository
    of the Hub. (A symlink to /dev/zero there would instead read without end into memory: not run here.)"""
    api.create_repo("me/other")
    token = eve(hub)
    shards = storage_of(hub, token, "eve/mine") / "xet" / "xorbs" / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    fifo = shards / "trap.mdb"
    os.mkfifo(fifo)
    results: dict[str, object] = {}

    def eves_commit() -> None:
        try:
            results["eve"] = commit_lfs(hub, token, "eve/mine", "x.bin", "ee" * 32, 10).status_code
        except Exception as exc:  # a timeout
            results["eve"] = type(exc).__name__

    def owners_commit() -> None:
        try:
            api.upload_file(path_or_fileobj=b"hello\n", path_in_repo="a.txt", repo_id="me/other")
            results["owner"] = "done"
        except Exception as exc:
            results["owner"] = type(exc).__name__

    first = threading.Thread(target=eves_commit, daemon=True)
    first.start()
    time.sleep(1.0)
    second = threading.Thread(target=owners_commit, daemon=True)
    started = time.monotonic()
    second.start()
    second.join(10)
    owner_blocked = second.is_alive()
    took = time.monotonic() - started
    # Release the Hub, should it read the FIFO: a writer that opens and closes it ends the read (EOF). ENXIO: no
    # reader has it open (the Hub never opened it for reading).
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    first.join(30)
    second.join(30)
    assert not owner_blocked, f"another user's commit waited {took:.0f} s on eve's FIFO (results: {results})"


def test_a_deleted_and_recreated_repository_does_not_inherit_old_shards(
    hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    """HELD. Deleting a repository takes its storage folder: the re-created one (same folder name, a hash of type
    and id) cannot commit the old file by its sha256."""
    api.create_repo("me/model")
    data = os.urandom(1_100_000)
    (tmp_path / "w.bin").write_bytes(data)
    api.upload_file(path_or_fileobj=str(tmp_path / "w.bin"), path_in_repo="w.bin", repo_id="me/model")
    api.delete_repo("me/model")
    api.create_repo("me/model")
    sha = hashlib.sha256(data).hexdigest()
    again = commit_lfs(hub, hub.token, "me/model", "w.bin", sha, len(data))
    assert again.status_code == 400 and "never uploaded" in again.json()["error"]


# -- 2. the local Hub's validation ----------------------------------------------------------------------------------


def _commit_lines(hub: RunningHub, repo: str, lines: list[dict[str, object]]) -> httpx2.Response:
    body = "".join(json.dumps(line) + "\n" for line in [{"key": "header", "value": {"summary": "s"}}, *lines])
    return httpx2.post(
        f"{hub.endpoint}/api/models/{repo}/commit/main",
        content=body.encode(),
        headers={**auth(hub.token), "Content-Type": "application/x-ndjson"},
        timeout=300,
    )


BAD_CARD = base64.b64encode(b"---\nlicense: not-a-license\npipeline_tag: nope\n---\n# card\n").decode()


def test_a_readme_with_refused_metadata_cannot_land_behind_a_deleted_folder_line(hub: RunningHub, api: HfApi) -> None:
    """Found by attack: _check_readme looks only at the *last* operation on the path README.md; a `deletedFolder` line
    named README.md after the file makes it skip the check, and apply_commit's folder delete removes only paths
    under README.md/, so the refused card lands (and model_info serves its cardData)."""
    api.create_repo("me/model")
    add = {"key": "file", "value": {"path": "README.md", "content": BAD_CARD, "encoding": "base64"}}
    plain = _commit_lines(hub, "me/model", [add])
    assert plain.status_code == 400  # the check itself works
    tricked = _commit_lines(hub, "me/model", [add, {"key": "deletedFolder", "value": {"path": "README.md"}}])
    landed = "README.md" in api.list_repo_files("me/model")
    assert tricked.status_code == 400 and not landed, (tricked.status_code, landed)


def test_a_non_member_cannot_create_in_an_organization_by_changing_case(hub: RunningHub) -> None:
    """HELD: `ACME` is not `acme`; a non-member's create in either is refused."""
    hub.server.store.create_org("acme", ["me"])
    token = hub.server.store.ensure_user("eve")
    for org in ("acme", "ACME", "Acme"):
        answer = httpx2.post(
            f"{hub.endpoint}/api/repos/create",
            json={"name": "x", "organization": org},
            headers=auth(token),
        )
        assert answer.status_code in (403, 400, 404), (org, answer.status_code)


# -- 3. the client's rate limits and Retry-After ------------------------------------------------------------------


def test_a_retry_after_on_preupload_is_held_to_max_wait(hub: RunningHub, api: HfApi, tmp_path: Path) -> None:
    """Found by attack: huggingface_hub's http_backoff (preupload, LFS batch/verify, paged reads) sleeps whatever
    `Retry-After` a 429/5xx names (+1 s), five times, without bound. hubsync's response hook only ends its retries
    for a 429 whose RateLimit says r=0; a `503 Retry-After: 30` (or a 429 with only Retry-After, or r>0) is waited
    out in full although the client was given max_pause=1 and max_wait=1."""
    api.create_repo("me/model")
    fault = hub.server.inject_fault("POST", r"/preupload/", 503, times=1, retry_after=30)
    client = HubClient(hub.endpoint, hub.token, retry_delays=(0.1,), max_pause=1.0, max_wait=1.0)
    (tmp_path / "a.txt").write_text("hello\n")
    outcome: dict[str, object] = {}

    def commit() -> None:
        try:
            outcome["result"] = client.commit_files("me/model", "main", [(tmp_path / "a.txt", "a.txt")], "m")
        except Exception as exc:
            outcome["result"] = exc

    worker = threading.Thread(target=commit, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(12)
    took = time.monotonic() - started
    stuck = worker.is_alive()
    worker.join(40)
    assert fault.times == 0
    assert not stuck, f"the commit was still waiting after {took:.0f} s (max_pause 1 s, max_wait 1 s)"


# -- 4. the client against a hostile Hub's Xet answers -----------------------------------------------------------


class XetAnswers(ProxyHandler):
    """The local Hub, with its xet-read-token's `exp` replaced, or one tree entry's xetHash swapped for another's."""

    exp: ClassVar[object] = None
    swap: ClassVar[tuple[str, str] | None] = None  # (listed path, path whose xetHash it gets)

    def do_GET(self) -> None:
        status, headers, body = self.ask_upstream(b"")
        if status == 200 and "/xet-read-token/" in self.path and self.exp is not None:
            answer = json.loads(body)
            answer["exp"] = self.exp
            body = json.dumps(answer).encode()
        if status == 200 and "/tree/" in self.path and self.swap is not None:
            entries = json.loads(body)
            by_path = {e["path"]: e for e in entries}
            by_path[self.swap[0]]["xetHash"] = by_path[self.swap[1]]["xetHash"]
            body = json.dumps(entries).encode()
        self.answer(status, headers, body)

    def do_POST(self) -> None:
        self.answer(*self.ask_upstream(self.request_body()))

    do_HEAD = do_GET


@pytest.fixture
def two_xet_files(hub: RunningHub, api: HfApi, tmp_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    api.create_repo("me/model")
    files = {"small.bin": os.urandom(200_000), "big.bin": os.urandom(3_000_000)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    api.upload_folder(folder_path=str(tmp_path), repo_id="me/model", allow_patterns=["*.bin"])
    yield api.model_info("me/model").sha or "", files


@pytest.mark.parametrize("exp", [2**64, -1, 10**30])
def test_an_out_of_range_xet_expiry_is_a_hub_error(
    hub: RunningHub, two_xet_files: tuple[str, dict[str, bytes]], tmp_path: Path, exp: int
) -> None:
    """Found by attack: xet_read_access took any int as `exp`; hf_xet takes a u64, so 2**64 or -1 raised
    OverflowError out of HubClient.download (no HubsyncError: the CLI showed a traceback, not one line)."""
    commit, _ = two_xet_files
    handler = type("Exp", (XetAnswers,), {"exp": exp, "swap": None})
    with serve(handler, hub.endpoint) as endpoint:
        client = HubClient(endpoint, hub.token, retry_delays=())
        remote = next(f for f in client.tree("me/model", commit) if f.path == "small.bin")
        assert remote.xet_hash is not None
        try:
            client.download("me/model", commit, remote, tmp_path / "out.bin", Transfers())
        except errors.HubsyncError:
            pass  # what a hostile answer should give
        except Exception as exc:
            pytest.fail(f"{type(exc).__name__}: {exc}")


def test_a_xet_download_writes_no_more_than_the_tree_lists(
    hub: RunningHub, two_xet_files: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    """HELD. A Hub that lists a small file with the xetHash of a large one: hf_xet writes the listed size only (the
    large file's start), and pull's own sha256 check refuses it."""
    commit, files = two_xet_files
    handler = type("Swap", (XetAnswers,), {"exp": None, "swap": ("small.bin", "big.bin")})
    dest = tmp_path / "out.bin"
    with serve(handler, hub.endpoint) as endpoint:
        client = HubClient(endpoint, hub.token, retry_delays=())
        remote = next(f for f in client.tree("me/model", commit) if f.path == "small.bin")
        with contextlib.suppress(errors.HubsyncError):  # it returns: the caller checks the sha256
            client.download("me/model", commit, remote, dest, Transfers())
    written = dest.stat().st_size if dest.exists() else 0
    assert written <= len(files["small.bin"]), f"{written} bytes written for a file listed at {remote.size}"


# -- 5. the faster secret scan -------------------------------------------------------------------------------------


class TricklingProbe(ProxyHandler):
    """A Hub whose xet-write-token answer is a body that never ends: a few bytes every half second (each read well
    inside any per-read timeout)."""

    stop: ClassVar[threading.Event]

    def do_GET(self) -> None:
        if "/xet-write-token/" not in self.path:
            return self.answer(*self.ask_upstream(b""))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self.wfile.write(b"1\r\n{\r\n")
            while not self.stop.wait(0.5):
                self.wfile.write(b"2\r\n  \r\n")
                self.wfile.flush()
        except OSError:
            pass

    def do_POST(self) -> None:
        self.answer(*self.ask_upstream(self.request_body()))


def test_a_xet_probe_whose_answer_never_ends_is_given_up_on(
    hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by attack: _xet_info's probe reads the token route's whole answer with get_session().get() (no size or time
    bound but the per-read timeout), unlike xet_read_access (_get_bounded, 64 KiB, ANSWER_DEADLINE): a Hub that
    trickles its answer holds every push forever (and one that sends gigabytes fills memory)."""
    api.create_repo("me/model")
    monkeypatch.setattr("hubsync.hub.client.ANSWER_DEADLINE", 3.0)  # the bound, made short for the test
    stop = threading.Event()
    handler = type("Trickle", (TricklingProbe,), {"stop": stop})
    outcome: dict[str, object] = {}
    with serve(handler, hub.endpoint) as endpoint:
        client = HubClient(endpoint, hub.token, retry_delays=())

        def probe() -> None:
            try:
                outcome["result"] = client.offers_xet("me/model", "main")
            except Exception as exc:
                outcome["result"] = type(exc).__name__

        worker = threading.Thread(target=probe, daemon=True)
        started = time.monotonic()
        worker.start()
        worker.join(3.0 + 15)  # the bound hubsync keeps to for every other answer it reads whole
        took = time.monotonic() - started
        stuck = worker.is_alive()
        stop.set()
        worker.join(15)
    assert not stuck, f"the probe was still reading after {took:.0f} s"


def test_a_reader_of_a_public_repository_cannot_change_what_its_files_serve(
    hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    """Found by attack (integrity, any reader): the read token route hands every reader the repository's own storage
    folder (the one writers upload to), and local:// storage takes writes from anyone handed it. Eve, who may only
    read me/model, uploads her own bytes there with hf_xet and adds a shard that claims the sha256 of a file of the
    repository, named to sort first. The next commit of that file (here: the same weights at a new path) is matched
    by XetStorage.files (setdefault, first shard wins) to Eve's Xet hash: huggingface_hub's Xet download of the
    owner's file then gives Eve's bytes (it checks the size only)."""
    import hf_xet
    from huggingface_hub import hf_hub_download

    api.create_repo("me/model")
    original = os.urandom(1_100_000)
    (tmp_path / "w.bin").write_bytes(original)
    api.upload_file(path_or_fileobj=str(tmp_path / "w.bin"), path_in_repo="w.bin", repo_id="me/model")
    sha = hashlib.sha256(original).hexdigest()

    token = hub.server.store.ensure_user("eve")
    answer = httpx2.get(f"{hub.endpoint}/api/models/me/model/xet-read-token/main", headers=auth(token))
    assert answer.status_code == 200
    cas = answer.json()["casUrl"]
    folder = Path(cas[len("local://") :])
    (tmp_path / "evil.bin").write_bytes(evil := os.urandom(len(original)))
    with hf_xet.XetSession().new_upload_commit(
        endpoint=cas, token="t", token_expiry_unix_secs=int(time.time()) + 600
    ) as commit:
        handle = commit.start_upload_file(str(tmp_path / "evil.bin"))
    evil_hash = handle.result().xet_info.hash
    (folder / "xet" / "xorbs" / "shards" / ("00" * 32 + ".mdb")).write_bytes(
        forged_shard(sha, len(original), evil_hash)
    )

    api.upload_file(path_or_fileobj=str(tmp_path / "w.bin"), path_in_repo="copy.bin", repo_id="me/model")
    got = Path(
        hf_hub_download("me/model", "copy.bin", endpoint=hub.endpoint, token=hub.token, cache_dir=tmp_path / "c")
    ).read_bytes()
    swapped = got == evil
    assert not swapped, "the owner's file serves the bytes a reader put in the storage folder"
    assert got == original


def test_a_folder_of_10001_entries_is_refused_across_two_commits(hub: RunningHub, api: HfApi) -> None:
    """HELD: the folder limit is judged on the whole tree a commit leaves, not on the commit's own files."""
    api.create_repo("me/model")
    content = base64.b64encode(b"x\n").decode()

    def files(start: int, stop: int) -> list[dict[str, object]]:
        return [
            {"key": "file", "value": {"path": f"d/{i}.txt", "content": content, "encoding": "base64"}}
            for i in range(start, stop)
        ]

    assert _commit_lines(hub, "me/model", files(0, 5_000)).status_code == 200
    second = _commit_lines(hub, "me/model", files(5_000, 10_001))
    assert second.status_code == 400 and "Too many files" in second.text


def test_a_six_digit_commit_prefix_names_no_commit(hub: RunningHub, api: HfApi) -> None:
    """HELD: a prefix resolves from 7 hex digits (an ambiguous one names none: read in _commit_of_prefix; a
    7-digit collision cannot be made cheaply here)."""
    api.create_repo("me/model")
    sha = api.upload_file(path_or_fileobj=b"1\n", path_in_repo="a.txt", repo_id="me/model").oid
    for prefix, found in ((sha[:7], 200), (sha[:6], 404)):
        answer = httpx2.get(f"{hub.endpoint}/api/models/me/model/revision/{prefix}", headers=auth(hub.token))
        assert answer.status_code == found, prefix


def test_a_symlink_in_ones_storage_does_not_reach_another_repositorys_storage(
    hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    """Found by attack: storage folders are named by a public rule (sha256 of "model:<repo>", first 32 hex
    digits) beside the one a client is handed, and the Hub followed links in them. Eve links her folder's `xet`
    to that of a private repository: knowing the sha256 of a file there (never downloaded over plain HTTP, so no blob is
    shared), her commit finds it through the victim's shard, and the Hub rebuilds it for her from the victim's
    xorbs (rebuild's local:// endpoint is her folder)."""
    api.create_repo("me/secret", private=True)
    secret = os.urandom(1_200_000)
    (tmp_path / "s.bin").write_bytes(secret)
    api.upload_file(path_or_fileobj=str(tmp_path / "s.bin"), path_in_repo="s.bin", repo_id="me/secret")
    sha = hashlib.sha256(secret).hexdigest()
    # (The Hub checked it at commit, rebuilt into the blob store: only repositories granted it may use that.)

    token = eve(hub)
    mine = storage_of(hub, token, "eve/mine")
    theirs = mine.parent / hashlib.sha256(b"model:me/secret").hexdigest()[:32]
    assert theirs.is_dir()
    if (mine / "xet").exists():
        (mine / "xet").rmdir()
    (mine / "xet").symlink_to(theirs / "xet")

    committed = commit_lfs(hub, token, "eve/mine", "stolen.bin", sha, len(secret))
    got = httpx2.get(
        f"{hub.endpoint}/eve/mine/resolve/main/stolen.bin",
        headers={**auth(token), "Accept-Encoding": "identity"},
        timeout=60,
    )
    leaked = got.content == secret
    assert not leaked, f"commit answered {committed.status_code}; eve downloaded the private file"
