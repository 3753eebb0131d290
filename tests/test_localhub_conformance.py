"""Conformance of the local Hub with the unmodified huggingface_hub client, over real HTTP.

Every test drives `hubsync.localhub` with the installed client (or, for requests the client
cannot make, with raw HTTP) and checks the answers the client depends on. Uploads go through
the plain git-LFS path: the local Hub has no Xet, so `HF_HUB_DISABLE_XET` is switched on for
every test but the one that documents what happens without it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

from hubsync.localhub import RunningHub, running_hub

REPO = "me/conf"
BIG_SIZE = 10 * 1024 * 1024 + 123  # over the 10 MB threshold: LFS by size, whatever its name
README = b"---\nlicense: apache-2.0\ntags:\n- hubsync\n- test\n---\n\n# A model card\n\nHello.\n"
SAFETENSORS = b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1} " + bytes(range(256)) * 40  # has NUL bytes


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def no_xet(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a user of a Hub without Xet does (HF_HUB_DISABLE_XET=1); the client reads it at call time."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def small_files() -> dict[str, bytes]:
    return {
        "config.json": b'{"hidden_size": 8}\n',
        "notes.txt": b"plain text\n",
        "nested/data.txt": b"nested data\n",
        "nested/deeper/info.txt": b"deeper info\n",
        "model.safetensors": SAFETENSORS,
        "README.md": README,
    }


LFS_PATHS = {"model.safetensors", "big.dat"}


@pytest.fixture
def raw(hub: RunningHub) -> Iterator[httpx2.Client]:
    """A plain HTTP client for `me`, for requests huggingface_hub has no call for."""
    with httpx2.Client(base_url=hub.endpoint, headers={"authorization": f"Bearer {hub.token}"}, timeout=30) as c:
        yield c


@pytest.fixture
def repo(api: HfApi, tmp_path: Path) -> dict[str, bytes]:
    """`me/conf` (public) with the small files pushed in one commit on main; returns path -> bytes."""
    files = small_files()
    api.create_repo(REPO)
    api.upload_folder(repo_id=REPO, folder_path=write_files(tmp_path / "src", files), commit_message="add files")
    return files


def head_sha(api: HfApi, repo_id: str = REPO, revision: str = "main") -> str:
    sha = api.repo_info(repo_id, revision=revision).sha
    assert sha is not None
    return sha


def tree(api: HfApi, repo_id: str = REPO, revision: str = "main") -> dict[str, int | None]:
    return {
        e.path: (e.size if isinstance(e, RepoFile) else None)
        for e in api.list_repo_tree(repo_id, revision=revision, recursive=True)
    }


# -- Xet ---------------------------------------------------------------------------------


def test_upload_folder_without_disabling_xet_fails(
    api: HfApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reason hubsync handles Xet itself: the client's default upload path needs a Xet server."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", False)
    api.create_repo("me/xet")
    before = head_sha(api, "me/xet")
    folder = write_files(tmp_path / "src", {"a.txt": b"a\n", "w.safetensors": SAFETENSORS})
    with pytest.raises(Exception) as info:
        api.upload_folder(repo_id="me/xet", folder_path=folder)
    err = info.value
    status = getattr(getattr(err, "response", None), "status_code", None)
    assert "xet-write-token" in str(err) or (isinstance(err, HfHubHTTPError) and status == 404), repr(err)
    assert head_sha(api, "me/xet") == before


# -- account and repositories ----------------------------------------------------------


def test_whoami_names_the_user(api: HfApi) -> None:
    info = api.whoami()
    assert info["name"] == "me"
    assert info["type"] == "user"


def test_whoami_with_wrong_token_is_401(hub: RunningHub) -> None:
    with pytest.raises(HfHubHTTPError) as info:
        HfApi(endpoint=hub.endpoint, token="hf_not_a_real_token").whoami()
    assert info.value.response.status_code == 401


def test_create_repo_private_and_public(api: HfApi) -> None:
    private_url = api.create_repo("me/secret", private=True)
    public_url = api.create_repo("me/open")
    assert private_url.repo_id == "me/secret"
    assert public_url.repo_id == "me/open"
    assert str(public_url).endswith("/me/open")
    assert api.model_info("me/secret").private is True
    assert api.model_info("me/open").private is False
    # A new repository has a main branch with a commit.
    assert [b.name for b in api.list_repo_refs("me/open").branches] == ["main"]


def test_create_repo_exist_ok_returns_url(api: HfApi) -> None:
    first = api.create_repo("me/again")
    sha = head_sha(api, "me/again")
    second = api.create_repo("me/again", exist_ok=True)
    assert second.repo_id == first.repo_id == "me/again"
    assert str(second).endswith("/me/again")
    assert head_sha(api, "me/again") == sha  # the existing repository is left alone


def test_create_repo_existing_without_exist_ok_is_409(api: HfApi) -> None:
    api.create_repo("me/dup")
    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo("me/dup")
    assert info.value.response.status_code == 409


# -- uploads -----------------------------------------------------------------------------


def test_upload_folder_tree_has_sizes_lfs_info_and_blob_ids(api: HfApi, tmp_path: Path) -> None:
    files = {**small_files(), "big.dat": os.urandom(BIG_SIZE)}
    api.create_repo(REPO)
    info = api.upload_folder(repo_id=REPO, folder_path=write_files(tmp_path / "src", files), commit_message="push")
    assert info.oid == head_sha(api)
    assert "/commit/" in info.commit_url

    entries = {e.path: e for e in api.list_repo_tree(REPO, recursive=True)}
    assert {p for p, e in entries.items() if isinstance(e, RepoFolder)} == {"nested", "nested/deeper"}
    assert {p for p, e in entries.items() if isinstance(e, RepoFile)} == set(files) | {".gitattributes"}
    for path, data in files.items():
        entry = entries[path]
        assert isinstance(entry, RepoFile)
        assert entry.size == len(data), path
        if path in LFS_PATHS:
            assert entry.lfs is not None, f"{path} should be stored through LFS"
            assert entry.lfs.sha256 == sha256(data)
            assert entry.lfs.size == len(data)
            pointer = (
                f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256(data)}\nsize {len(data)}\n"
            ).encode()
            assert entry.lfs.pointer_size == len(pointer)
            assert entry.blob_id == git_blob_sha1(pointer)  # git's id of the pointer file
        else:
            assert entry.lfs is None, f"{path} should be a regular file"
            assert entry.blob_id == git_blob_sha1(data)
    # The README with YAML front matter went through /api/validate-yaml and is stored as is.
    assert hf_hub_download(REPO, "README.md", endpoint=api.endpoint, token=api.token,
                           cache_dir=tmp_path / "cache") is not None
    assert Path(hf_hub_download(REPO, "big.dat", endpoint=api.endpoint, token=api.token,
                                cache_dir=tmp_path / "cache")).read_bytes() == files["big.dat"]


def test_upload_same_folder_again_makes_no_commit(api: HfApi, tmp_path: Path) -> None:
    folder = write_files(tmp_path / "src", small_files())
    api.create_repo(REPO)
    first = api.upload_folder(repo_id=REPO, folder_path=folder)
    commits_before = len(api.list_repo_commits(REPO))
    second = api.upload_folder(repo_id=REPO, folder_path=folder)
    assert second.oid == first.oid == head_sha(api)
    assert len(api.list_repo_commits(REPO)) == commits_before


def test_create_commit_with_stale_parent_is_412_and_changes_nothing(api: HfApi, repo: dict[str, bytes]) -> None:
    stale = head_sha(api)
    api.upload_file(path_or_fileobj=b"moved on\n", path_in_repo="moved.txt", repo_id=REPO)
    head = head_sha(api)
    before = tree(api)
    assert head != stale
    with pytest.raises(HfHubHTTPError) as info:
        api.create_commit(
            REPO, operations=[CommitOperationAdd("late.txt", b"too late\n")], commit_message="late",
            parent_commit=stale,
        )
    assert info.value.response.status_code == 412
    assert head_sha(api) == head
    assert tree(api) == before


def test_create_commit_with_current_parent_succeeds(api: HfApi, repo: dict[str, bytes]) -> None:
    head = head_sha(api)
    info = api.create_commit(
        REPO, operations=[CommitOperationAdd("fresh.txt", b"fresh\n")], commit_message="fresh", parent_commit=head,
    )
    assert head_sha(api) == info.oid != head
    assert api.list_repo_commits(REPO)[1].commit_id == head


# -- branches and tags ----------------------------------------------------------------------


def test_create_branch_from_main_and_from_revision(api: HfApi, repo: dict[str, bytes]) -> None:
    old = head_sha(api)
    api.upload_file(path_or_fileobj=b"v2\n", path_in_repo="v2.txt", repo_id=REPO)
    new = head_sha(api)
    api.create_branch(REPO, branch="from-main")
    api.create_branch(REPO, branch="from-old", revision=old)
    assert head_sha(api, revision="from-main") == new
    assert head_sha(api, revision="from-old") == old
    assert "v2.txt" not in tree(api, revision="from-old")
    # A commit on a branch moves that branch only.
    api.upload_file(path_or_fileobj=b"b\n", path_in_repo="only-on-branch.txt", repo_id=REPO, revision="from-old")
    assert "only-on-branch.txt" in tree(api, revision="from-old")
    assert "only-on-branch.txt" not in tree(api)
    assert head_sha(api) == new


def test_create_existing_branch_is_409_unless_exist_ok(api: HfApi, repo: dict[str, bytes]) -> None:
    api.create_branch(REPO, branch="dev")
    dev = head_sha(api, revision="dev")
    api.upload_file(path_or_fileobj=b"x\n", path_in_repo="x.txt", repo_id=REPO)
    with pytest.raises(HfHubHTTPError) as info:
        api.create_branch(REPO, branch="dev")
    assert info.value.response.status_code == 409
    api.create_branch(REPO, branch="dev", exist_ok=True)
    assert head_sha(api, revision="dev") == dev  # exist_ok does not move it


def test_delete_branch(api: HfApi, repo: dict[str, bytes]) -> None:
    api.create_branch(REPO, branch="tmp")
    api.delete_branch(REPO, branch="tmp")
    assert [b.name for b in api.list_repo_refs(REPO).branches] == ["main"]
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(REPO, revision="tmp")


def test_delete_main_branch_is_refused(api: HfApi, repo: dict[str, bytes]) -> None:
    head = head_sha(api)
    with pytest.raises(HfHubHTTPError) as info:
        api.delete_branch(REPO, branch="main")
    assert 400 <= info.value.response.status_code < 500
    assert head_sha(api) == head


def test_create_tag_on_branch_and_on_commit(api: HfApi, repo: dict[str, bytes]) -> None:
    first = head_sha(api)
    api.upload_file(path_or_fileobj=b"2\n", path_in_repo="two.txt", repo_id=REPO)
    second = head_sha(api)
    api.create_tag(REPO, tag="v-branch", revision="main", tag_message="on main")
    api.create_tag(REPO, tag="v-sha", revision=first)
    tags = {t.name: t.target_commit for t in api.list_repo_refs(REPO).tags}
    assert tags == {"v-branch": second, "v-sha": first}
    # A tag does not move when its branch does.
    api.upload_file(path_or_fileobj=b"3\n", path_in_repo="three.txt", repo_id=REPO)
    assert head_sha(api, revision="v-branch") == second


def test_create_duplicate_tag_is_409(api: HfApi, repo: dict[str, bytes]) -> None:
    api.create_tag(REPO, tag="v1")
    with pytest.raises(HfHubHTTPError) as info:
        api.create_tag(REPO, tag="v1")
    assert info.value.response.status_code == 409


def test_create_tag_on_missing_revision(api: HfApi, repo: dict[str, bytes]) -> None:
    with pytest.raises(RevisionNotFoundError):
        api.create_tag(REPO, tag="v1", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.create_tag(REPO, tag="v2", revision="0" * 40)
    assert api.list_repo_refs(REPO).tags == []


def test_delete_tag(api: HfApi, repo: dict[str, bytes]) -> None:
    api.create_tag(REPO, tag="gone")
    api.delete_tag(REPO, tag="gone")
    assert api.list_repo_refs(REPO).tags == []
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(REPO, revision="gone")


# -- listings ----------------------------------------------------------------------------


def test_list_repo_refs_branches_and_tags(api: HfApi, repo: dict[str, bytes]) -> None:
    first = head_sha(api)
    api.create_branch(REPO, branch="dev")
    api.upload_file(path_or_fileobj=b"n\n", path_in_repo="n.txt", repo_id=REPO)
    second = head_sha(api)
    api.create_tag(REPO, tag="v1", revision=first)
    refs = api.list_repo_refs(REPO)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": second, "dev": first}
    assert {b.name: b.ref for b in refs.branches} == {"main": "refs/heads/main", "dev": "refs/heads/dev"}
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1", "refs/tags/v1", first)]
    assert refs.converts == []
    assert api.list_repo_refs(REPO, include_pull_requests=True).pull_requests == []


def test_list_repo_commits_newest_first(api: HfApi, repo: dict[str, bytes]) -> None:
    api.create_commit(
        REPO, operations=[CommitOperationAdd("c.txt", b"c\n")], commit_message="third title",
        commit_description="third body\nwith two lines",
    )
    commits = api.list_repo_commits(REPO)
    assert [c.title for c in commits] == ["third title", "add files", "initial commit"]
    assert commits[0].message == "third body\nwith two lines"
    assert commits[0].commit_id == head_sha(api)
    assert commits[0].authors == ["me"]
    assert [c.created_at for c in commits] == sorted((c.created_at for c in commits), reverse=True)
    # History of an older revision starts there.
    assert [c.title for c in api.list_repo_commits(REPO, revision=commits[1].commit_id)] == [
        "add files", "initial commit"]


def test_list_repo_tree_of_a_folder_is_not_recursive(api: HfApi, repo: dict[str, bytes]) -> None:
    entries = list(api.list_repo_tree(REPO, path_in_repo="nested"))
    assert {(e.path, type(e).__name__) for e in entries} == {
        ("nested/data.txt", "RepoFile"), ("nested/deeper", "RepoFolder")}
    root = {e.path for e in api.list_repo_tree(REPO)}
    assert root == {".gitattributes", "README.md", "config.json", "notes.txt", "model.safetensors", "nested"}
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(REPO, path_in_repo="no-such-folder"))


def test_get_paths_info_files_and_folders_missing_omitted(api: HfApi, repo: dict[str, bytes]) -> None:
    infos = api.get_paths_info(REPO, ["config.json", "nested", "model.safetensors", "missing.txt", "nested/nope"])
    by_path = {i.path: i for i in infos}
    assert set(by_path) == {"config.json", "nested", "model.safetensors"}
    config = by_path["config.json"]
    assert isinstance(config, RepoFile)
    assert config.size == len(repo["config.json"])
    assert config.blob_id == git_blob_sha1(repo["config.json"])
    assert isinstance(by_path["nested"], RepoFolder)
    weights = by_path["model.safetensors"]
    assert isinstance(weights, RepoFile)
    assert weights.lfs is not None
    assert weights.lfs.sha256 == sha256(SAFETENSORS)


def test_model_info_files_metadata_siblings(api: HfApi, repo: dict[str, bytes]) -> None:
    info = api.model_info(REPO, files_metadata=True)
    assert info.sha == head_sha(api)
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == set(repo) | {".gitattributes"}
    for path, data in repo.items():
        assert siblings[path].size == len(data)
        if path in LFS_PATHS:
            assert siblings[path].lfs is not None
            assert siblings[path].lfs.sha256 == sha256(data)
            assert siblings[path].lfs.size == len(data)
        else:
            assert siblings[path].lfs is None
            assert siblings[path].blob_id == git_blob_sha1(data)


def test_model_info_at_a_tag(api: HfApi, repo: dict[str, bytes]) -> None:
    tagged = head_sha(api)
    api.create_tag(REPO, tag="v1")
    api.upload_file(path_or_fileobj=b"later\n", path_in_repo="later.txt", repo_id=REPO)
    info = api.model_info(REPO, revision="v1")
    assert info.sha == tagged
    assert "later.txt" not in {s.rfilename for s in info.siblings or []}
    assert "later.txt" in {s.rfilename for s in api.model_info(REPO).siblings or []}


# -- downloads ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["branch", "tag", "sha"])
def test_hf_hub_download_regular_and_lfs_at_a_revision(
    api: HfApi, repo: dict[str, bytes], tmp_path: Path, kind: str
) -> None:
    sha = head_sha(api)
    api.create_branch(REPO, branch="dev")
    api.create_tag(REPO, tag="v1")
    # main moves on, with different content under the same names: the revision must be honoured.
    api.create_commit(REPO, commit_message="change", operations=[
        CommitOperationAdd("config.json", b'{"changed": true}\n'),
        CommitOperationAdd("model.safetensors", SAFETENSORS + b"changed"),
    ])
    revision = {"branch": "dev", "tag": "v1", "sha": sha}[kind]
    for name in ("config.json", "model.safetensors"):
        path = hf_hub_download(
            REPO, name, revision=revision, endpoint=api.endpoint, token=api.token, cache_dir=tmp_path / "cache"
        )
        assert Path(path).read_bytes() == repo[name]
        assert f"/snapshots/{sha}/" in Path(path).as_posix()


def test_hf_hub_download_missing_file(api: HfApi, repo: dict[str, bytes], tmp_path: Path) -> None:
    with pytest.raises(RemoteEntryNotFoundError) as info:
        hf_hub_download(REPO, "missing.txt", endpoint=api.endpoint, token=api.token, cache_dir=tmp_path / "c")
    assert isinstance(info.value, EntryNotFoundError)


def test_hf_hub_download_missing_repo(api: HfApi, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("me/nothing", "a.txt", endpoint=api.endpoint, token=api.token, cache_dir=tmp_path / "c")


def test_hf_hub_download_missing_revision(api: HfApi, repo: dict[str, bytes], tmp_path: Path) -> None:
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="nope", endpoint=api.endpoint, token=api.token,
                        cache_dir=tmp_path / "c")


def test_snapshot_download_and_verify_checksums(api: HfApi, repo: dict[str, bytes], tmp_path: Path) -> None:
    sha = head_sha(api)
    api.create_tag(REPO, tag="snap")
    api.upload_file(path_or_fileobj=b"after\n", path_in_repo="after.txt", repo_id=REPO)
    cache = tmp_path / "cache"
    folder = Path(snapshot_download(REPO, revision="snap", endpoint=api.endpoint, token=api.token, cache_dir=cache))
    assert folder.name == sha
    got = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert {k: v for k, v in got.items() if k != ".gitattributes"} == repo

    result = api.verify_repo_checksums(REPO, revision=sha, cache_dir=cache)
    assert result.revision == sha
    assert result.mismatches == []
    assert result.missing_paths == []
    assert result.extra_paths == []
    assert result.checked_count == len(repo) + 1

    # Corrupt one regular and one LFS file in the blob store: verification must notice both.
    for name in ("notes.txt", "model.safetensors"):
        blob = (folder / name).resolve()
        assert blob.parent.name == "blobs"
        blob.chmod(0o644)
        blob.write_bytes(b"corrupted " + blob.read_bytes())
    result = api.verify_repo_checksums(REPO, revision=sha, cache_dir=cache)
    assert {(m["path"], m["algorithm"]) for m in result.mismatches} == {
        ("notes.txt", "git-sha1"), ("model.safetensors", "sha256")}


def test_range_open_ended_is_206(raw: httpx2.Client, repo: dict[str, bytes]) -> None:
    data = repo["model.safetensors"]
    r = raw.get(f"/{REPO}/resolve/main/model.safetensors", headers={"Range": "bytes=5-"})
    assert r.status_code == 206
    assert r.content == data[5:]
    assert r.headers["Content-Range"] == f"bytes 5-{len(data) - 1}/{len(data)}"
    assert int(r.headers["Content-Length"]) == len(data) - 5


def test_range_closed_is_206(raw: httpx2.Client, repo: dict[str, bytes]) -> None:
    data = repo["config.json"]
    r = raw.get(f"/{REPO}/resolve/main/config.json", headers={"Range": "bytes=0-3"})
    assert r.status_code == 206
    assert r.content == data[:4]
    assert r.headers["Content-Range"] == f"bytes 0-3/{len(data)}"


def test_range_unsatisfiable_is_416(raw: httpx2.Client, repo: dict[str, bytes]) -> None:
    size = len(repo["config.json"])
    r = raw.get(f"/{REPO}/resolve/main/config.json", headers={"Range": f"bytes={size}-"})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{size}"
    full = raw.get(f"/{REPO}/resolve/main/config.json")
    assert full.status_code == 200
    assert full.content == repo["config.json"]


def test_head_resolve_regular_file(api: HfApi, raw: httpx2.Client, repo: dict[str, bytes]) -> None:
    r = raw.head(f"/{REPO}/resolve/main/config.json")
    assert r.status_code == 200
    assert r.headers["X-Repo-Commit"] == head_sha(api)
    assert r.headers["ETag"] == f'"{git_blob_sha1(repo["config.json"])}"'
    assert int(r.headers["Content-Length"]) == len(repo["config.json"])
    assert "X-Linked-Etag" not in r.headers
    assert r.content == b""


def test_head_resolve_lfs_file(api: HfApi, raw: httpx2.Client, repo: dict[str, bytes]) -> None:
    r = raw.head(f"/{REPO}/resolve/main/model.safetensors")
    assert r.status_code == 200
    assert r.headers["X-Repo-Commit"] == head_sha(api)
    assert r.headers["ETag"] == f'"{sha256(SAFETENSORS)}"'
    assert r.headers["X-Linked-Etag"] == f'"{sha256(SAFETENSORS)}"'
    assert int(r.headers["X-Linked-Size"]) == len(SAFETENSORS)


def test_head_resolve_missing_file_names_the_error(api: HfApi, raw: httpx2.Client, repo: dict[str, bytes]) -> None:
    r = raw.head(f"/{REPO}/resolve/main/missing.txt")
    assert r.status_code == 404
    assert r.headers["X-Error-Code"] == "EntryNotFound"
    assert r.headers["X-Repo-Commit"] == head_sha(api)


# -- auth ---------------------------------------------------------------------------------


@pytest.fixture
def private_repo(api: HfApi, tmp_path: Path) -> str:
    api.create_repo("me/private", private=True)
    api.upload_file(path_or_fileobj=b"secret\n", path_in_repo="secret.txt", repo_id="me/private")
    return "me/private"


@pytest.fixture
def other(hub: RunningHub) -> HfApi:
    token = hub.server.store.ensure_user("other")
    assert token != hub.token
    return HfApi(endpoint=hub.endpoint, token=token)


def test_anonymous_cannot_see_private_repo(hub: RunningHub, private_repo: str, tmp_path: Path) -> None:
    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info(private_repo)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(private_repo, "secret.txt", endpoint=hub.endpoint, token=False, cache_dir=tmp_path / "c")
    with pytest.raises(RepositoryNotFoundError):
        list(anonymous.list_repo_tree(private_repo))


def test_other_user_cannot_see_private_repo(other: HfApi, private_repo: str, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        other.model_info(private_repo)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(private_repo, "secret.txt", endpoint=other.endpoint, token=other.token,
                        cache_dir=tmp_path / "c")
    with pytest.raises(RepositoryNotFoundError):
        other.list_repo_refs(private_repo)


def test_owner_sees_private_repo(api: HfApi, private_repo: str, tmp_path: Path) -> None:
    assert api.model_info(private_repo).private is True
    path = hf_hub_download(private_repo, "secret.txt", endpoint=api.endpoint, token=api.token,
                           cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == b"secret\n"


def test_anonymous_can_read_public_repo(hub: RunningHub, repo: dict[str, bytes], tmp_path: Path) -> None:
    path = hf_hub_download(REPO, "config.json", endpoint=hub.endpoint, token=False, cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == repo["config.json"]


def test_other_user_cannot_write_to_public_repo(api: HfApi, other: HfApi, repo: dict[str, bytes]) -> None:
    head = head_sha(api)
    # The public repository is readable by the other user ...
    assert other.model_info(REPO).sha == head
    # ... but not writable.
    with pytest.raises(HfHubHTTPError) as info:
        other.create_commit(REPO, operations=[CommitOperationAdd("evil.txt", b"evil\n")], commit_message="evil")
    assert info.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as info:
        other.create_branch(REPO, branch="evil")
    assert info.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as info:
        other.create_tag(REPO, tag="evil")
    assert info.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as info:
        other.delete_repo(REPO)
    assert info.value.response.status_code == 403
    refs = api.list_repo_refs(REPO)
    assert [b.name for b in refs.branches] == ["main"]
    assert refs.tags == []
    assert head_sha(api) == head


def test_other_user_cannot_create_repo_in_my_namespace(api: HfApi, other: HfApi) -> None:
    with pytest.raises(HfHubHTTPError) as info:
        other.create_repo("me/squat")
    assert info.value.response.status_code == 403
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("me/squat")
    # Its own namespace is fine.
    assert other.create_repo("other/mine").repo_id == "other/mine"


def test_writes_without_token_are_refused(hub: RunningHub, api: HfApi, repo: dict[str, bytes]) -> None:
    head = head_sha(api)
    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    with pytest.raises(HfHubHTTPError) as info:
        anonymous.create_commit(REPO, operations=[CommitOperationAdd("a.txt", b"a\n")], commit_message="anon")
    assert info.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as info:
        anonymous.create_branch(REPO, branch="anon")
    assert info.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as info:
        anonymous.create_repo("me/anon")
    assert info.value.response.status_code == 401
    assert head_sha(api) == head
    assert [b.name for b in api.list_repo_refs(REPO).branches] == ["main"]


# -- persistence ---------------------------------------------------------------------------


def test_everything_survives_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "persistent-hub"
    files = small_files()
    with running_hub(root) as first:
        api = HfApi(endpoint=first.endpoint, token=first.token)
        api.create_repo("me/kept", private=True)
        api.upload_folder(repo_id="me/kept", folder_path=write_files(tmp_path / "src", files))
        api.create_branch("me/kept", branch="dev")
        api.create_tag("me/kept", tag="v1")
        token = first.token
        refs = api.list_repo_refs("me/kept")
        entries = [(e.path, getattr(e, "blob_id", None)) for e in api.list_repo_tree("me/kept", recursive=True)]
        commits = [c.commit_id for c in api.list_repo_commits("me/kept")]
    with running_hub(root) as second:
        assert second.token == token
        assert second.endpoint != first.endpoint or True  # a new server, maybe on another port
        api = HfApi(endpoint=second.endpoint, token=token)
        assert api.whoami()["name"] == "me"
        assert api.model_info("me/kept").private is True
        again = api.list_repo_refs("me/kept")
        assert {(b.name, b.target_commit) for b in again.branches} == {(b.name, b.target_commit) for b in refs.branches}
        assert {(t.name, t.target_commit) for t in again.tags} == {(t.name, t.target_commit) for t in refs.tags}
        assert [(e.path, getattr(e, "blob_id", None)) for e in api.list_repo_tree("me/kept", recursive=True)] == entries
        assert [c.commit_id for c in api.list_repo_commits("me/kept")] == commits
        for name in ("config.json", "model.safetensors", "nested/deeper/info.txt"):
            path = hf_hub_download("me/kept", name, revision="v1", endpoint=second.endpoint, token=token,
                                   cache_dir=tmp_path / "cache")
            assert Path(path).read_bytes() == files[name]
        # And it still takes commits.
        api.upload_file(path_or_fileobj=b"new\n", path_in_repo="new.txt", repo_id="me/kept")
        assert api.list_repo_commits("me/kept")[1].commit_id == commits[0]


# -- the hf command line ---------------------------------------------------------------------


def test_hf_cli_upload_and_download(hub: RunningHub, tmp_path: Path) -> None:
    hf = Path(sys.executable).parent / "hf"
    assert hf.exists()
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": hub.token,
        "HF_HOME": str(tmp_path / "cli-home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "NO_COLOR": "1",
    }
    files = small_files()
    folder = write_files(tmp_path / "cli-src", files)
    up = subprocess.run([str(hf), "upload", "me/cli", str(folder)], env=env, capture_output=True, text=True,
                        timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    target = tmp_path / "cli-dl"
    down = subprocess.run([str(hf), "download", "me/cli", "--local-dir", str(target)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    for name, data in files.items():
        assert (target / name).read_bytes() == data, name
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    assert set(files) <= set(tree(api, "me/cli"))


# -- malformed requests -----------------------------------------------------------------------


def ndjson(*items: dict[str, object]) -> bytes:
    return b"\n".join(json.dumps(i).encode() for i in items)


def header(summary: str = "raw commit") -> dict[str, object]:
    return {"key": "header", "value": {"summary": summary, "description": ""}}


def file_line(path: str, content: bytes) -> dict[str, object]:
    return {"key": "file", "value": {"path": path, "encoding": "base64", "content": base64.b64encode(content).decode()}}


def post_commit(raw: httpx2.Client, body: bytes, repo_id: str = REPO, revision: str = "main") -> httpx2.Response:
    return raw.post(f"/api/models/{repo_id}/commit/{revision}", content=body,
                    headers={"Content-Type": "application/x-ndjson"})


def test_raw_commit_is_accepted(api: HfApi, raw: httpx2.Client, repo: dict[str, bytes]) -> None:
    """The baseline of the malformed-request tests: the same request, well formed, lands."""
    r = post_commit(raw, ndjson(header(), file_line("raw.txt", b"raw\n")))
    assert r.status_code == 200, r.text
    assert r.json()["commitOid"] == head_sha(api)
    assert "/commit/" in r.json()["commitUrl"]
    assert "raw.txt" in tree(api)


def test_create_repo_with_bad_json_is_400(api: HfApi, raw: httpx2.Client) -> None:
    r = raw.post("/api/repos/create", content=b'{"name": "broken",', headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("me/broken")


def test_commit_with_malformed_line_is_400(api: HfApi, raw: httpx2.Client, repo: dict[str, bytes]) -> None:
    head, before = head_sha(api), tree(api)
    body = ndjson(header(), file_line("ok.txt", b"ok\n")) + b"\n{this is not json\n"
    r = post_commit(raw, body)
    assert r.status_code == 400
    assert head_sha(api) == head
    assert tree(api) == before


@pytest.mark.parametrize("path", ["../escape.txt", "/absolute.txt", "nested/../../escape.txt", "a/./b.txt", ""])
def test_commit_with_escaping_path_is_400(
    api: HfApi, raw: httpx2.Client, repo: dict[str, bytes], hub: RunningHub, path: str
) -> None:
    head, before = head_sha(api), tree(api)
    r = post_commit(raw, ndjson(header(), file_line("fine.txt", b"fine\n"), file_line(path, b"escape\n")))
    assert r.status_code == 400
    assert head_sha(api) == head
    assert tree(api) == before
    root = Path(hub.server.store.root)
    assert not (root.parent / "escape.txt").exists()
    assert not list(root.parent.rglob("escape.txt"))


def test_commit_with_lfs_file_never_uploaded_is_400(api: HfApi, raw: httpx2.Client, repo: dict[str, bytes]) -> None:
    head, before = head_sha(api), tree(api)
    ghost = sha256(b"never uploaded")
    line = {"key": "lfsFile", "value": {"path": "ghost.bin", "algo": "sha256", "oid": ghost, "size": 14}}
    r = post_commit(raw, ndjson(header(), file_line("fine.txt", b"fine\n"), line))
    assert r.status_code == 400
    assert head_sha(api) == head
    assert tree(api) == before


def lfs_batch(raw: httpx2.Client, oid: str, size: int, repo_id: str = REPO) -> dict[str, object]:
    r = raw.post(
        f"/{repo_id}.git/info/lfs/objects/batch",
        content=json.dumps({"operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
                            "objects": [{"oid": oid, "size": size}]}),
        headers={"Content-Type": "application/vnd.git-lfs+json", "Accept": "application/vnd.git-lfs+json"},
    )
    assert r.status_code == 200, r.text
    (obj,) = r.json()["objects"]
    assert obj["oid"] == oid
    return obj  # type: ignore[no-any-return]


def test_lfs_upload_with_wrong_ticket_is_403(raw: httpx2.Client, repo: dict[str, bytes]) -> None:
    data = b"lfs payload " * 100
    obj = lfs_batch(raw, sha256(data), len(data))
    href = obj["actions"]["upload"]["href"]  # type: ignore[index]
    assert "ticket=" in href
    forged = href.split("ticket=")[0] + "ticket=" + "0" * 64
    with httpx2.Client(timeout=30) as anon:  # the client PUTs without authorization
        assert anon.put(forged, content=data).status_code == 403
        assert anon.put(href.split("&ticket=")[0], content=data).status_code == 403  # no ticket at all
    verify = raw.post(obj["actions"]["verify"]["href"], json={"oid": sha256(data), "size": len(data)})  # type: ignore[index]
    assert verify.status_code == 404
    # Not stored: a new batch still asks for the upload.
    assert "actions" in lfs_batch(raw, sha256(data), len(data))


def test_lfs_upload_with_wrong_content_is_refused(raw: httpx2.Client, repo: dict[str, bytes], hub: RunningHub) -> None:
    announced = b"A" * 1000
    sent = b"B" * 1000
    oid = sha256(announced)
    obj = lfs_batch(raw, oid, len(announced))
    with httpx2.Client(timeout=30) as anon:
        r = anon.put(obj["actions"]["upload"]["href"], content=sent)  # type: ignore[index]
    assert 400 <= r.status_code < 500
    assert not hub.server.store.has_blob(oid)
    assert not hub.server.store.has_blob(sha256(sent))
    verify = raw.post(obj["actions"]["verify"]["href"], json={"oid": oid, "size": len(announced)})  # type: ignore[index]
    assert verify.status_code == 404
    # The right bytes are accepted afterwards.
    with httpx2.Client(timeout=30) as anon:
        assert anon.put(obj["actions"]["upload"]["href"], content=announced).status_code == 200  # type: ignore[index]
    assert raw.post(obj["actions"]["verify"]["href"], json={"oid": oid, "size": 1000}).status_code == 200  # type: ignore[index]
    assert "actions" not in lfs_batch(raw, oid, len(announced))


# -- repository shape ---------------------------------------------------------------------------


def test_file_under_an_existing_file_path_is_refused(api: HfApi, repo: dict[str, bytes], tmp_path: Path) -> None:
    """A path cannot be a file and a folder at once (git cannot store it; no client could download both)."""
    head, before = head_sha(api), tree(api)
    with pytest.raises(HfHubHTTPError) as info:
        api.create_commit(REPO, operations=[CommitOperationAdd("notes.txt/inner.txt", b"x\n")],
                          commit_message="file under a file")
    assert 400 <= info.value.response.status_code < 500
    assert head_sha(api) == head
    assert tree(api) == before


def test_folder_over_an_existing_file_in_one_commit_is_refused(api: HfApi, repo: dict[str, bytes]) -> None:
    head = head_sha(api)
    with pytest.raises(HfHubHTTPError):
        api.create_commit(REPO, commit_message="clash", operations=[
            CommitOperationAdd("clash", b"file\n"), CommitOperationAdd("clash/inner.txt", b"inner\n")])
    assert head_sha(api) == head
