"""The local Hub's Xet storage, through the real clients: huggingface_hub with hf_xet (`HfApi`, `hf upload`,
`hf download`), and one with Xet disabled, which must get the same bytes over plain HTTP."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from conftest import local_hub
from huggingface_hub import HfApi, hf_hub_download
from hypothesis import given, settings
from hypothesis import strategies as st

from hubsync.localhub import RunningHub
from hubsync.localhub.xet_storage import ENTRY, SHARD_TAG, ShardError, hash_hex, shard_files

HF = Path(sys.executable).with_name("hf")


def hf(hub: RunningHub, *args: str, home: Path, xet: bool = True) -> subprocess.CompletedProcess[str]:
    """The unmodified `hf` command line against the local Hub."""
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token, "HF_HOME": str(home)}
    env.pop("HF_HUB_DISABLE_XET", None)
    if not xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    return subprocess.run([str(HF), *args], env=env, capture_output=True, text=True, timeout=300)


def random_folder(folder: Path, seed: int) -> dict[str, bytes]:
    files = {
        "adapter_model.safetensors": hashlib.sha256(b"w%d" % seed).digest() * 40_000,  # 1.28 MB, repetitive
        "optimizer.pt": os.urandom(2_000_000),
        "config.json": b'{"a": 1}\n',
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def test_hf_upload_and_download_go_through_xet_and_plain_http_gets_the_same_bytes(
    hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    api.create_repo("me/model")
    files = random_folder(tmp_path / "up", 1)
    uploaded_before = hub.server.uploaded_bytes
    result = hf(hub, "upload", "me/model", str(tmp_path / "up"), ".", home=tmp_path / "home1")
    assert result.returncode == 0, result.stderr

    # The large files went to Xet storage, not through git-LFS: the Hub received only the commit's small lines.
    assert hub.server.xet is not None
    assert hub.server.xet.stored_bytes("model", "me/model") >= len(files["optimizer.pt"])
    assert hub.server.uploaded_bytes - uploaded_before < 100_000
    tree = {e.path: e for e in api.list_repo_tree("me/model", recursive=True)}
    for name in ("adapter_model.safetensors", "optimizer.pt"):
        entry = tree[name]
        assert entry.xet_hash and len(entry.xet_hash) == 64  # type: ignore[union-attr]
        assert entry.lfs is not None and entry.lfs.sha256 == hashlib.sha256(files[name]).hexdigest()  # type: ignore[union-attr]
    assert getattr(tree["config.json"], "xet_hash", None) is None  # a small text file stays a regular file

    for xet in (True, False):
        out = tmp_path / f"down-{xet}"
        result = hf(hub, "download", "me/model", "--local-dir", str(out), home=tmp_path / f"home-{xet}", xet=xet)
        assert result.returncode == 0, result.stderr
        for name, data in files.items():
            assert (out / name).read_bytes() == data, (xet, name)


def test_a_resolve_of_a_xet_file_sends_its_hash_and_where_to_get_a_read_token(
    hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    api.create_repo("me/model")
    data = os.urandom(1_500_000)
    api.upload_file(path_or_fileobj=io.BytesIO(data), path_in_repo="w.bin", repo_id="me/model")
    (tmp_path / "x.bin").write_bytes(data := os.urandom(1_500_000))
    api.upload_file(path_or_fileobj=str(tmp_path / "x.bin"), path_in_repo="x.bin", repo_id="me/model")
    head = httpx2.head(f"{hub.endpoint}/me/model/resolve/main/x.bin", headers={"Authorization": f"Bearer {hub.token}"})
    assert head.status_code == 200
    commit = head.headers["X-Repo-Commit"]
    assert len(head.headers["X-Xet-Hash"]) == 64
    assert head.links["xet-auth"]["url"] == f"{hub.endpoint}/api/models/me/model/xet-read-token/{commit}"
    # A file given as a buffer goes through git-LFS (huggingface_hub does not hand those to hf_xet): no Xet hash.
    assert (
        "X-Xet-Hash"
        not in httpx2.head(
            f"{hub.endpoint}/me/model/resolve/main/w.bin", headers={"Authorization": f"Bearer {hub.token}"}
        ).headers
    )
    path = hf_hub_download("me/model", "x.bin", endpoint=hub.endpoint, token=hub.token, cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == data


def test_the_token_routes_answer_as_the_hub_does(hub: RunningHub, api: HfApi) -> None:
    api.create_repo("me/model")
    auth = {"Authorization": f"Bearer {hub.token}"}
    for kind in ("read", "write"):
        answer = httpx2.get(f"{hub.endpoint}/api/models/me/model/xet-{kind}-token/main", headers=auth)
        assert answer.status_code == 200
        body = answer.json()
        assert set(body) == {"accessToken", "exp", "casUrl"}
        assert answer.headers["X-Xet-Access-Token"] == body["accessToken"]
        assert answer.headers["X-Xet-Cas-Url"] == body["casUrl"] and body["casUrl"].startswith("local://")
        assert int(answer.headers["X-Xet-Token-Expiration"]) == body["exp"]
        assert time.time() < body["exp"] <= time.time() + 3600 + 5
    # A token for one repository and operation: each answer is a new one.
    first = httpx2.get(f"{hub.endpoint}/api/models/me/model/xet-read-token/main", headers=auth).json()
    second = httpx2.get(f"{hub.endpoint}/api/models/me/model/xet-read-token/main", headers=auth).json()
    assert first["accessToken"] != second["accessToken"]
    assert hub.server.xet is not None
    assert hub.server.xet.token_allows(first["accessToken"], "read", "model", "me/model")
    assert not hub.server.xet.token_allows(first["accessToken"], "write", "model", "me/model")
    assert not hub.server.xet.token_allows(first["accessToken"], "read", "model", "me/other")
    # A read token for a revision that is not there, and any token without the right, are refused.
    assert httpx2.get(f"{hub.endpoint}/api/models/me/model/xet-read-token/nope", headers=auth).status_code == 404
    assert httpx2.get(f"{hub.endpoint}/api/models/me/model/xet-write-token/main").status_code == 401


def test_a_user_cannot_write_to_or_read_from_anothers_xet_storage(hub: RunningHub, tmp_path: Path) -> None:
    owner = HfApi(endpoint=hub.endpoint, token=hub.token)
    owner.create_repo("me/secret", private=True)
    (tmp_path / "s.bin").write_bytes(secret := os.urandom(1_200_000))
    owner.upload_file(path_or_fileobj=str(tmp_path / "s.bin"), path_in_repo="s.bin", repo_id="me/secret")
    other_token = hub.server.store.ensure_user("eve")
    eve = {"Authorization": f"Bearer {other_token}"}
    for kind in ("read", "write"):
        answer = httpx2.get(f"{hub.endpoint}/api/models/me/secret/xet-{kind}-token/main", headers=eve)
        assert answer.status_code == 404 and answer.headers["X-Error-Code"] == "RepoNotFound"

    # Eve knows the sha256 of the secret file: a commit of hers naming it is refused, as it would be for LFS.
    HfApi(endpoint=hub.endpoint, token=other_token).create_repo("eve/mine")
    commit = (
        b'{"key":"header","value":{"summary":"steal"}}\n'
        + b'{"key":"lfsFile","value":{"path":"s.bin","algo":"sha256","oid":"%s","size":%d}}\n'
        % (hashlib.sha256(secret).hexdigest().encode(), len(secret))
    )
    answer = httpx2.post(
        f"{hub.endpoint}/api/models/eve/mine/commit/main",
        content=commit,
        headers={**eve, "Content-Type": "application/x-ndjson"},
    )
    assert answer.status_code == 400 and "never uploaded" in answer.json()["error"]


def test_a_hub_without_xet_has_no_token_routes_and_the_client_uploads_through_lfs(tmp_path: Path) -> None:
    with local_hub(tmp_path / "hub", xet=False) as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo("me/model")
        answer = httpx2.get(
            f"{hub.endpoint}/api/models/me/model/xet-write-token/main",
            headers={"Authorization": f"Bearer {hub.token}"},
        )
        assert answer.status_code == 404
        (tmp_path / "w.bin").write_bytes(os.urandom(1_100_000))
        result = hf(hub, "upload", "me/model", str(tmp_path / "w.bin"), "w.bin", home=tmp_path / "home", xet=False)
        assert result.returncode == 0, result.stderr
        assert getattr(next(iter(api.list_repo_tree("me/model", path_in_repo="w.bin"))), "xet_hash", None) is None


def test_a_deleted_repository_takes_its_xet_storage_with_it(hub: RunningHub, api: HfApi, tmp_path: Path) -> None:
    api.create_repo("me/model")
    (tmp_path / "w.bin").write_bytes(os.urandom(1_100_000))
    api.upload_file(path_or_fileobj=str(tmp_path / "w.bin"), path_in_repo="w.bin", repo_id="me/model")
    assert hub.server.xet is not None
    folder = hub.server.xet.folder("model", "me/model")
    assert folder.exists()
    api.delete_repo("me/model")
    assert not folder.exists()


# -- the shard reader -------------------------------------------------------------------------------------------


def a_real_shard(tmp_path: Path, data: bytes) -> bytes:
    import hf_xet

    (tmp_path / "f.bin").write_bytes(data)
    storage = tmp_path / "cas"
    session = hf_xet.XetSession()
    with session.new_upload_commit(
        endpoint=f"local://{storage}", token="t", token_expiry_unix_secs=int(time.time()) + 600
    ) as commit:
        handle = commit.start_upload_file(str(tmp_path / "f.bin"))
    shards = list((storage / "xet" / "xorbs" / "shards").glob("*.mdb"))
    assert len(shards) == 1
    assert shard_files(shards[0].read_bytes())[0].xet_hash == handle.result().xet_info.hash
    return shards[0].read_bytes()


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    data = os.urandom(3_000_000)
    return a_real_shard(tmp_path_factory.mktemp("shard"), data), data


def test_a_real_shard_gives_each_file_its_sha256_and_size(shard: tuple[bytes, bytes]) -> None:
    raw, data = shard
    (file,) = shard_files(raw)
    assert file.sha256 == hashlib.sha256(data).hexdigest()
    assert file.size == len(data)


def test_hash_hex_reverses_each_eight_byte_word() -> None:
    raw = bytes(range(32))
    assert hash_hex(raw) == "".join(raw[i : i + 8][::-1].hex() for i in range(0, 32, 8))
    assert hash_hex(struct.pack("<4Q", 1, 2, 3, 4)) == f"{1:016x}{2:016x}{3:016x}{4:016x}"


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(0, 10_000), flip=st.integers(0, 10_000), value=st.integers(0, 255))
def test_a_damaged_shard_is_refused_or_read_within_its_bounds(
    shard: tuple[bytes, bytes], cut: int, flip: int, value: int
) -> None:
    raw = bytearray(shard[0])
    raw[flip % len(raw)] = value
    damaged = bytes(raw[: len(raw) - cut % len(raw)])
    try:
        files = shard_files(damaged)
    except ShardError:
        return
    assert len(files) <= len(damaged) // ENTRY
    for file in files:
        assert len(file.xet_hash) == 64 and file.size >= 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_after_a_shard_tag_are_refused_or_read_within_bounds(data: bytes) -> None:
    damaged = SHARD_TAG + data
    try:
        files = shard_files(damaged)
    except ShardError:
        return
    assert len(files) <= len(damaged) // ENTRY


def test_a_store_under_a_relative_root_hands_out_an_absolute_storage_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hubsync localhub --root hub` (the demo's `demo-out/hub`): hf_xet must not resolve the storage against
    the client's own working folder."""
    monkeypatch.chdir(tmp_path)
    with local_hub(Path("relative-root")) as hub:
        HfApi(endpoint=hub.endpoint, token=hub.token).create_repo("me/model")
        answer = httpx2.get(
            f"{hub.endpoint}/api/models/me/model/xet-write-token/main",
            headers={"Authorization": f"Bearer {hub.token}"},
        ).json()
        assert answer["casUrl"].startswith(f"local://{tmp_path}/relative-root/")
        monkeypatch.chdir(tmp_path.parent)  # a client elsewhere uploads into the Hub's storage all the same
        (tmp_path / "w.bin").write_bytes(os.urandom(1_100_000))
        HfApi(endpoint=hub.endpoint, token=hub.token).upload_file(
            path_or_fileobj=str(tmp_path / "w.bin"), path_in_repo="w.bin", repo_id="me/model"
        )
        assert hub.server.xet is not None and hub.server.xet.stored_bytes("model", "me/model") > 1_000_000


def test_xet_is_offered_only_to_clients_on_this_machine(tmp_path: Path) -> None:
    from hubsync.localhub import LocalHubServer, Store

    store = Store(tmp_path / "hub")
    for public_url, offered in (("http://localhost:8000", True), ("https://hub.example", False)):
        server = LocalHubServer(store, public_url=public_url)
        try:
            assert (server.xet is not None) is offered
        finally:
            server.server_close()
    with pytest.raises(ValueError, match="folder on this machine"):
        LocalHubServer(store, public_url="https://hub.example", xet=True)
    from click.testing import CliRunner

    from hubsync.cli import cli

    result = CliRunner().invoke(
        cli, ["localhub", "--root", str(tmp_path / "h2"), "--public-url", "https://x.example", "--xet"]
    )
    assert result.exit_code == 2 and "drop --xet, or serve on 127.0.0.1" in result.stderr


def test_files_uploaded_through_xet_are_served_over_http_once_the_hub_runs_without_xet(
    tmp_path: Path,
) -> None:
    """A store served with Xet, then with `--no-xet`: its trees no longer list Xet hashes (whose token routes are
    gone), so every client downloads over HTTP, hubsync pull and `hf download` alike."""
    data = os.urandom(1_300_000)
    (tmp_path / "w.bin").write_bytes(data)
    with local_hub(tmp_path / "hub") as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo("me/model")
        api.upload_file(path_or_fileobj=str(tmp_path / "w.bin"), path_in_repo="w.bin", repo_id="me/model")
        assert next(iter(api.list_repo_tree("me/model", path_in_repo="w.bin"))).xet_hash  # type: ignore[union-attr]
    with local_hub(tmp_path / "hub", xet=False) as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        assert getattr(next(iter(api.list_repo_tree("me/model", path_in_repo="w.bin"))), "xet_hash", None) is None
        result = hf(hub, "download", "me/model", "--local-dir", str(tmp_path / "out"), home=tmp_path / "home")
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "out" / "w.bin").read_bytes() == data
