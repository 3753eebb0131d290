"""Conformance of the local Hub with the unmodified huggingface_hub client, over real HTTP.

Every test drives `hubsync.localhub` with the installed client (or, for requests the client
cannot make, with raw HTTP) and checks the answers the client depends on. Uploads go through
the plain git-LFS path: the local Hub has no Xet, so `HF_HUB_DISABLE_XET` is switched on for
every test but the one that documents what happens without it.

One server serves the whole module (stopping a server takes up to half a second) and every
test works in repositories of its own, named after it; the persistence test runs its own servers.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import huggingface_hub.constants
import pytest
from conftest import local_hub
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

from hubsync.localhub import RunningHub

BIG_SIZE = 10 * 1024 * 1024 + 123  # over the 10 MB threshold: LFS by size, whatever its name
README = b"---\nlicense: apache-2.0\ntags:\n- hubsync\n- test\n---\n\n# A model card\n\nHello.\n"
SAFETENSORS = b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":1} ' + bytes(range(256)) * 40  # has NUL bytes
LFS_PATHS = {"model.safetensors", "big.dat"}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256(data)}\nsize {len(data)}\n".encode()


def small_files() -> dict[str, bytes]:
    return {
        "config.json": b'{"hidden_size": 8}\n',
        "notes.txt": b"plain text\n",
        "empty.txt": b"",
        "nested/data.txt": b"nested data\n",
        "nested/deeper/info.txt": b"deeper info\n",
        "model.safetensors": SAFETENSORS,
        "README.md": README,
    }


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """Overrides conftest's `hub`: one local Hub, user `me`, for the whole module."""
    with local_hub(tmp_path_factory.mktemp("conformance") / "hub-root") as running:
        yield running


@pytest.fixture(autouse=True)
def no_xet(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a user of a Hub without Xet does (HF_HUB_DISABLE_XET=1); the client reads it at call time."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)


_serial = itertools.count()


@pytest.fixture
def rid(request: pytest.FixtureRequest) -> str:
    """A repository id of `me` that no other test uses."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name.removeprefix("test_")).strip("-")[:60]
    return f"me/{slug}-{next(_serial)}"


@pytest.fixture
def repo(api: HfApi, rid: str, tmp_path: Path) -> dict[str, bytes]:
    """`rid` (public) with `small_files()` pushed in one commit on main; returns path -> bytes."""
    files = small_files()
    api.create_repo(rid)
    api.upload_folder(repo_id=rid, folder_path=write_files(tmp_path / "src", files), commit_message="add files")
    return files


@pytest.fixture(scope="module")
def shared(hub: RunningHub, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A public repository with `small_files()` on main, for tests that only read."""
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
        api.create_repo("me/shared")
        api.upload_folder(
            repo_id="me/shared", folder_path=write_files(tmp_path_factory.mktemp("shared"), small_files())
        )
    return "me/shared"


@pytest.fixture
def raw(hub: RunningHub) -> Iterator[httpx2.Client]:
    """A plain HTTP client for `me`, for requests huggingface_hub has no call for."""
    with httpx2.Client(base_url=hub.endpoint, headers={"authorization": f"Bearer {hub.token}"}, timeout=30) as c:
        yield c


@pytest.fixture
def other(hub: RunningHub) -> HfApi:
    """A second user, `other`."""
    token = hub.server.store.ensure_user("other")
    assert token != hub.token
    return HfApi(endpoint=hub.endpoint, token=token)


@pytest.fixture
def anonymous(hub: RunningHub) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=False)


def head_sha(api: HfApi, repo_id: str, revision: str = "main") -> str:
    sha = api.repo_info(repo_id, revision=revision).sha
    assert sha is not None
    return sha


def tree(api: HfApi, repo_id: str, revision: str = "main") -> dict[str, int | None]:
    """path -> size (None for folders) of the whole tree."""
    return {
        e.path: (e.size if isinstance(e, RepoFile) else None)
        for e in api.list_repo_tree(repo_id, revision=revision, recursive=True)
    }


def download(api: HfApi, repo_id: str, filename: str, cache: Path, **kwargs: Any) -> bytes:
    path = hf_hub_download(repo_id, filename, endpoint=api.endpoint, token=api.token, cache_dir=cache, **kwargs)
    return Path(path).read_bytes()


# -- Xet ---------------------------------------------------------------------------------------


def test_upload_folder_without_disabling_xet_fails_on_a_hub_without_xet(
    rid: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why hubsync asks a Hub whether it offers Xet: the client's default upload path needs a Hub with Xet (this
    local Hub offers it unless started with xet=False, as most self-hosted Hubs: tests/test_localhub_xet.py)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", False)
    with local_hub(tmp_path / "no-xet", xet=False) as hub:
        _upload_without_xet_fails(HfApi(endpoint=hub.endpoint, token=hub.token), rid, tmp_path)


def _upload_without_xet_fails(api: HfApi, rid: str, tmp_path: Path) -> None:
    api.create_repo(rid)
    before = head_sha(api, rid)
    folder = write_files(tmp_path / "src", {"a.txt": b"a\n", "w.safetensors": SAFETENSORS})
    # hf_xet reports the 404 of GET /api/models/{repo}/xet-write-token/main as a ConnectionError.
    with pytest.raises((ConnectionError, HfHubHTTPError)) as info:
        api.upload_folder(repo_id=rid, folder_path=folder)
    err = info.value
    status = getattr(getattr(err, "response", None), "status_code", None)
    assert "xet-write-token" in str(err) or (isinstance(err, HfHubHTTPError) and status == 404), repr(err)
    assert head_sha(api, rid) == before


# -- account and repositories ------------------------------------------------------------------


def test_whoami_names_the_user(api: HfApi) -> None:
    info = api.whoami()
    assert info["name"] == "me"
    assert info["type"] == "user"


def test_whoami_with_wrong_token_is_401(hub: RunningHub) -> None:
    with pytest.raises(HfHubHTTPError) as info:
        HfApi(endpoint=hub.endpoint, token="hf_not_a_real_token").whoami()
    assert info.value.response.status_code == 401


def test_create_repo_private_and_public(api: HfApi, rid: str) -> None:
    private_url = api.create_repo(f"{rid}-private", private=True)
    public_url = api.create_repo(f"{rid}-public")
    assert private_url.repo_id == f"{rid}-private"
    assert public_url.repo_id == f"{rid}-public"
    assert str(public_url).endswith(f"/{rid}-public")
    assert api.model_info(f"{rid}-private").private is True
    assert api.model_info(f"{rid}-public").private is False
    # A new repository has a main branch with one commit.
    assert [b.name for b in api.list_repo_refs(f"{rid}-public").branches] == ["main"]
    assert len(api.list_repo_commits(f"{rid}-public")) == 1


def test_list_models_shows_what_the_caller_may_see(api: HfApi, other: HfApi, anonymous: HfApi, rid: str) -> None:
    api.create_repo(f"{rid}-private", private=True)
    api.create_repo(f"{rid}-public")
    api.create_repo(f"{rid}-data", repo_type="dataset")
    mine = {m.id for m in api.list_models(author="me")}
    assert {f"{rid}-private", f"{rid}-public"} <= mine and f"{rid}-data" not in mine
    assert {m.id for m in api.list_models(search=rid)} == {f"{rid}-private", f"{rid}-public"}
    assert {m.id for m in other.list_models(search=rid)} == {f"{rid}-public"}
    assert {m.id for m in anonymous.list_models(search=rid)} == {f"{rid}-public"}
    assert [d.id for d in api.list_datasets(search=rid)] == [f"{rid}-data"]
    assert list(api.list_models(author="nobody")) == []


def test_create_repo_exist_ok_returns_url(api: HfApi, rid: str) -> None:
    first = api.create_repo(rid)
    sha = head_sha(api, rid)
    second = api.create_repo(rid, exist_ok=True)
    assert second.repo_id == first.repo_id == rid
    assert str(second).endswith(f"/{rid}")
    assert head_sha(api, rid) == sha  # the existing repository is left alone


def test_create_repo_existing_without_exist_ok_is_409(api: HfApi, rid: str) -> None:
    api.create_repo(rid)
    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo(rid)
    assert info.value.response.status_code == 409


def test_update_repo_settings_changes_visibility(api: HfApi, anonymous: HfApi, rid: str) -> None:
    api.create_repo(rid)
    assert anonymous.model_info(rid).id == rid
    api.update_repo_settings(rid, private=True)
    assert api.model_info(rid).private is True
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info(rid)


def test_delete_repo(api: HfApi, rid: str) -> None:
    api.create_repo(rid)
    api.delete_repo(rid)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(rid)
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo(rid)
    api.delete_repo(rid, missing_ok=True)
    # The name is free again, for a fresh repository.
    api.create_repo(rid)
    assert len(api.list_repo_commits(rid)) == 1


def test_dataset_repo_round_trip(api: HfApi, rid: str, tmp_path: Path) -> None:
    """Datasets live under /datasets/ and /api/datasets/, their LFS batch under /datasets/{repo}.git/."""
    url = api.create_repo(rid, repo_type="dataset")
    assert "/datasets/" in str(url)
    api.upload_file(path_or_fileobj=SAFETENSORS, path_in_repo="data.bin", repo_id=rid, repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a,b\n", path_in_repo="data.csv", repo_id=rid, repo_type="dataset")
    assert download(api, rid, "data.bin", tmp_path / "c", repo_type="dataset") == SAFETENSORS
    assert api.dataset_info(rid).id == rid
    with pytest.raises(RepositoryNotFoundError):  # not a model
        api.model_info(rid)


# -- uploads -------------------------------------------------------------------------------------


def test_upload_folder_tree_has_sizes_lfs_info_and_blob_ids(api: HfApi, rid: str, tmp_path: Path) -> None:
    files = {**small_files(), "big.dat": os.urandom(BIG_SIZE)}
    api.create_repo(rid)
    info = api.upload_folder(repo_id=rid, folder_path=write_files(tmp_path / "src", files), commit_message="push")
    assert info.oid == head_sha(api, rid)
    assert "/commit/" in info.commit_url

    entries = {e.path: e for e in api.list_repo_tree(rid, recursive=True)}
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
            assert entry.lfs.pointer_size == len(lfs_pointer(data))
            assert entry.blob_id == git_blob_sha1(lfs_pointer(data))  # git's id of the pointer file
        else:
            assert entry.lfs is None, f"{path} should be a regular file"
            assert entry.blob_id == git_blob_sha1(data)
    # The README with YAML front matter passed /api/validate-yaml and is stored as is; the big file comes back.
    assert download(api, rid, "README.md", tmp_path / "cache") == README
    assert download(api, rid, "big.dat", tmp_path / "cache") == files["big.dat"]


def test_upload_same_folder_again_makes_no_commit(api: HfApi, rid: str, tmp_path: Path) -> None:
    folder = write_files(tmp_path / "src", small_files())
    api.create_repo(rid)
    first = api.upload_folder(repo_id=rid, folder_path=folder)
    second = api.upload_folder(repo_id=rid, folder_path=folder)
    assert second.oid == first.oid == head_sha(api, rid)
    assert len(api.list_repo_commits(rid)) == 2  # the initial commit and the first upload


def test_upload_with_invalid_readme_yaml_is_refused(api: HfApi, rid: str) -> None:
    api.create_repo(rid)
    head = head_sha(api, rid)
    with pytest.raises(ValueError, match="YAML"):
        api.upload_file(
            path_or_fileobj=b"---\nlicense: [unclosed\n---\n# card\n", path_in_repo="README.md", repo_id=rid
        )
    assert head_sha(api, rid) == head


@pytest.mark.parametrize("license", ["Apache-2.0", "gpl-2.0-or-later", "[mit, not-a-license]", "3"])
def test_upload_with_a_license_the_hub_does_not_list_is_refused(api: HfApi, rid: str, license: str) -> None:
    # huggingface.co validates `license` against its list (huggingface_hub issue #4218): a 400 with `errors`.
    api.create_repo(rid)
    head = head_sha(api, rid)
    with pytest.raises(ValueError, match=r'Invalid metadata in README.md.\n- "license" must be one of \[apache-2.0, '):
        api.upload_file(
            path_or_fileobj=f"---\nlicense: {license}\n---\n# card\n".encode(), path_in_repo="README.md", repo_id=rid
        )
    assert head_sha(api, rid) == head
    answer = httpx2.post(f"{api.endpoint}/api/validate-yaml", json={"content": f"---\nlicense: {license}\n---\n"})
    assert answer.status_code == 400 and answer.json()["errors"][0]["message"].endswith(", other, array]")


@pytest.mark.parametrize("license", ["apache-2.0", "other", "llama3.1", "[mit, apache-2.0]"])
def test_upload_with_a_listed_license_is_taken(api: HfApi, rid: str, license: str) -> None:
    api.create_repo(rid)
    api.upload_file(
        path_or_fileobj=f"---\nlicense: {license}\n---\n# card\n".encode(), path_in_repo="README.md", repo_id=rid
    )
    assert "README.md" in tree(api, rid)


def test_delete_file_and_folder(api: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    api.delete_file("notes.txt", rid)
    api.delete_folder("nested", rid)
    assert set(tree(api, rid)) == {".gitattributes", "config.json", "empty.txt", "model.safetensors", "README.md"}
    with pytest.raises(EntryNotFoundError):
        api.delete_file("notes.txt", rid)


def test_create_commit_with_stale_parent_is_412_and_changes_nothing(
    api: HfApi, rid: str, repo: dict[str, bytes]
) -> None:
    stale = head_sha(api, rid)
    api.upload_file(path_or_fileobj=b"moved on\n", path_in_repo="moved.txt", repo_id=rid)
    head = head_sha(api, rid)
    before = tree(api, rid)
    assert head != stale
    with pytest.raises(HfHubHTTPError) as info:
        api.create_commit(
            rid,
            operations=[CommitOperationAdd("late.txt", b"too late\n")],
            commit_message="late",
            parent_commit=stale,
        )
    assert info.value.response.status_code == 412
    assert head_sha(api, rid) == head
    assert tree(api, rid) == before


def test_create_commit_with_current_parent_succeeds(api: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    head = head_sha(api, rid)
    info = api.create_commit(
        rid,
        operations=[CommitOperationAdd("fresh.txt", b"fresh\n")],
        commit_message="fresh",
        parent_commit=head,
    )
    assert head_sha(api, rid) == info.oid != head
    assert api.list_repo_commits(rid)[1].commit_id == head


def test_file_under_an_existing_file_is_refused(api: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    """A path cannot be a file and a folder at once: git cannot store it and no client could download both."""
    head, before = head_sha(api, rid), tree(api, rid)
    with pytest.raises(HfHubHTTPError) as info:
        api.create_commit(
            rid, operations=[CommitOperationAdd("notes.txt/inner.txt", b"x\n")], commit_message="file under a file"
        )
    assert 400 <= info.value.response.status_code < 500
    assert head_sha(api, rid) == head
    assert tree(api, rid) == before


def test_file_over_an_existing_folder_is_refused(api: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    head = head_sha(api, rid)
    with pytest.raises(HfHubHTTPError) as info:
        api.create_commit(rid, operations=[CommitOperationAdd("nested", b"x\n")], commit_message="file over folder")
    assert 400 <= info.value.response.status_code < 500
    assert head_sha(api, rid) == head


# -- branches and tags ---------------------------------------------------------------------------


def test_create_branch_from_main_and_from_revision(api: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    old = head_sha(api, rid)
    api.upload_file(path_or_fileobj=b"v2\n", path_in_repo="v2.txt", repo_id=rid)
    new = head_sha(api, rid)
    api.create_branch(rid, branch="from-main")
    api.create_branch(rid, branch="from-old", revision=old)
    assert head_sha(api, rid, "from-main") == new
    assert head_sha(api, rid, "from-old") == old
    assert "v2.txt" not in tree(api, rid, "from-old")
    # A commit on a branch moves that branch only.
    api.upload_file(path_or_fileobj=b"b\n", path_in_repo="only-on-branch.txt", repo_id=rid, revision="from-old")
    assert "only-on-branch.txt" in tree(api, rid, "from-old")
    assert "only-on-branch.txt" not in tree(api, rid)
    assert head_sha(api, rid) == new


def test_create_existing_branch_is_409_unless_exist_ok(api: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    api.create_branch(rid, branch="dev")
    dev = head_sha(api, rid, "dev")
    api.upload_file(path_or_fileobj=b"x\n", path_in_repo="x.txt", repo_id=rid)
    with pytest.raises(HfHubHTTPError) as info:
        api.create_branch(rid, branch="dev")
    assert info.value.response.status_code == 409
    api.create_branch(rid, branch="dev", exist_ok=True)
    assert head_sha(api, rid, "dev") == dev  # exist_ok does not move it


def test_delete_branch(api: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    api.create_branch(rid, branch="tmp")
    api.delete_branch(rid, branch="tmp")
    assert [b.name for b in api.list_repo_refs(rid).branches] == ["main"]
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(rid, revision="tmp")
    with pytest.raises(HfHubHTTPError) as info:
        api.delete_branch(rid, branch="tmp")
    assert info.value.response.status_code == 404


def test_delete_main_branch_is_refused(api: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    head = head_sha(api, rid)
    with pytest.raises(HfHubHTTPError) as info:
        api.delete_branch(rid, branch="main")
    assert 400 <= info.value.response.status_code < 500
    assert head_sha(api, rid) == head


def test_branch_with_a_slash_and_unusual_file_names(
    api: HfApi, rid: str, repo: dict[str, bytes], tmp_path: Path
) -> None:
    """Revisions arrive percent-encoded (`feature%2Fx`), paths quoted: both must be decoded exactly once."""
    api.create_branch(rid, branch="feature/x")
    name = "dir with space/ü+#?%20.txt"
    api.upload_file(path_or_fileobj=b"unusual\n", path_in_repo=name, repo_id=rid, revision="feature/x")
    assert name in tree(api, rid, "feature/x")
    assert name not in tree(api, rid)
    assert [e.path for e in api.list_repo_tree(rid, path_in_repo="dir with space", revision="feature/x")] == [name]
    assert [e.path for e in api.get_paths_info(rid, [name], revision="feature/x")] == [name]
    assert download(api, rid, name, tmp_path / "c", revision="feature/x") == b"unusual\n"
    assert {b.name for b in api.list_repo_refs(rid).branches} == {"main", "feature/x"}


def test_create_tag_on_branch_and_on_commit(api: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    first = head_sha(api, rid)
    api.upload_file(path_or_fileobj=b"2\n", path_in_repo="two.txt", repo_id=rid)
    second = head_sha(api, rid)
    api.create_tag(rid, tag="v-branch", revision="main", tag_message="on main")
    api.create_tag(rid, tag="v-sha", revision=first)
    tags = {t.name: t.target_commit for t in api.list_repo_refs(rid).tags}
    assert tags == {"v-branch": second, "v-sha": first}
    # A tag does not move when its branch does.
    api.upload_file(path_or_fileobj=b"3\n", path_in_repo="three.txt", repo_id=rid)
    assert head_sha(api, rid, "v-branch") == second


def test_create_duplicate_tag_is_409(api: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    api.create_tag(rid, tag="v1")
    with pytest.raises(HfHubHTTPError) as info:
        api.create_tag(rid, tag="v1")
    assert info.value.response.status_code == 409


def test_create_tag_on_missing_revision(api: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    with pytest.raises(RevisionNotFoundError):
        api.create_tag(rid, tag="v1", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.create_tag(rid, tag="v2", revision="0" * 40)
    assert api.list_repo_refs(rid).tags == []


def test_delete_tag(api: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    api.create_tag(rid, tag="gone")
    api.delete_tag(rid, tag="gone")
    assert api.list_repo_refs(rid).tags == []
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(rid, revision="gone")


# -- listings --------------------------------------------------------------------------------------


def test_list_repo_refs_branches_and_tags(api: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    first = head_sha(api, rid)
    api.create_branch(rid, branch="dev")
    api.upload_file(path_or_fileobj=b"n\n", path_in_repo="n.txt", repo_id=rid)
    second = head_sha(api, rid)
    api.create_tag(rid, tag="v1", revision=first)
    refs = api.list_repo_refs(rid)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": second, "dev": first}
    assert {b.name: b.ref for b in refs.branches} == {"main": "refs/heads/main", "dev": "refs/heads/dev"}
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1", "refs/tags/v1", first)]
    assert refs.converts == []
    assert api.list_repo_refs(rid, include_pull_requests=True).pull_requests == []


def test_list_repo_commits_newest_first(api: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    api.create_commit(
        rid,
        operations=[CommitOperationAdd("c.txt", b"c\n")],
        commit_message="third title",
        commit_description="third body\nwith two lines",
    )
    commits = api.list_repo_commits(rid)
    assert [c.title for c in commits] == ["third title", "add files", "initial commit"]
    assert commits[0].message == "third body\nwith two lines"
    assert commits[0].commit_id == head_sha(api, rid)
    assert commits[0].authors == ["me"]
    assert [c.created_at for c in commits] == sorted((c.created_at for c in commits), reverse=True)
    # The history of an older revision starts there.
    assert [c.title for c in api.list_repo_commits(rid, revision=commits[1].commit_id)] == [
        "add files",
        "initial commit",
    ]


def test_list_repo_tree_of_a_folder_is_not_recursive(api: HfApi, shared: str) -> None:
    entries = list(api.list_repo_tree(shared, path_in_repo="nested"))
    assert {(e.path, type(e).__name__) for e in entries} == {
        ("nested/data.txt", "RepoFile"),
        ("nested/deeper", "RepoFolder"),
    }
    root = {e.path for e in api.list_repo_tree(shared)}
    assert root == {
        ".gitattributes",
        "README.md",
        "config.json",
        "notes.txt",
        "empty.txt",
        "model.safetensors",
        "nested",
    }
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(shared, path_in_repo="no-such-folder"))


def test_list_repo_tree_expand_names_last_commits(api: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    first = head_sha(api, rid)
    api.upload_file(path_or_fileobj=b"changed\n", path_in_repo="notes.txt", repo_id=rid, commit_message="edit")
    second = head_sha(api, rid)
    last = {e.path: e.last_commit for e in api.list_repo_tree(rid, expand=True) if isinstance(e, RepoFile)}
    assert last["notes.txt"] is not None
    assert last["notes.txt"].oid == second
    assert last["notes.txt"].title == "edit"
    assert last["config.json"] is not None
    assert last["config.json"].oid == first


def test_get_paths_info_files_and_folders_missing_omitted(api: HfApi, shared: str) -> None:
    files = small_files()
    infos = api.get_paths_info(shared, ["config.json", "nested", "model.safetensors", "missing.txt", "nested/nope"])
    by_path = {i.path: i for i in infos}
    assert set(by_path) == {"config.json", "nested", "model.safetensors"}
    config = by_path["config.json"]
    assert isinstance(config, RepoFile)
    assert config.size == len(files["config.json"])
    assert config.blob_id == git_blob_sha1(files["config.json"])
    assert config.lfs is None
    assert isinstance(by_path["nested"], RepoFolder)
    weights = by_path["model.safetensors"]
    assert isinstance(weights, RepoFile)
    assert weights.lfs is not None
    assert weights.lfs.sha256 == sha256(SAFETENSORS)


def test_model_info_files_metadata_siblings(api: HfApi, shared: str) -> None:
    files = small_files()
    info = api.model_info(shared, files_metadata=True)
    assert info.sha == head_sha(api, shared)
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == set(files) | {".gitattributes"}
    for path, data in files.items():
        sibling = siblings[path]
        assert sibling.size == len(data)
        if path in LFS_PATHS:
            assert sibling.lfs is not None
            assert sibling.lfs.sha256 == sha256(data)
            assert sibling.lfs.size == len(data)
            assert sibling.blob_id == git_blob_sha1(lfs_pointer(data))
        else:
            assert sibling.lfs is None
            assert sibling.blob_id == git_blob_sha1(data)


def test_model_info_at_a_tag(api: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    tagged = head_sha(api, rid)
    api.create_tag(rid, tag="v1")
    api.upload_file(path_or_fileobj=b"later\n", path_in_repo="later.txt", repo_id=rid)
    info = api.model_info(rid, revision="v1")
    assert info.sha == tagged
    assert "later.txt" not in {s.rfilename for s in info.siblings or []}
    assert "later.txt" in {s.rfilename for s in api.model_info(rid).siblings or []}


# -- downloads -------------------------------------------------------------------------------------


def test_hf_hub_download_at_branch_tag_and_sha(api: HfApi, rid: str, repo: dict[str, bytes], tmp_path: Path) -> None:
    sha = head_sha(api, rid)
    api.create_branch(rid, branch="dev")
    api.create_tag(rid, tag="v1")
    # main moves on, with other content under the same names: the revision must be honoured.
    api.create_commit(
        rid,
        commit_message="change",
        operations=[
            CommitOperationAdd("config.json", b'{"changed": true}\n'),
            CommitOperationAdd("model.safetensors", SAFETENSORS + b"changed"),
        ],
    )
    for revision in ("dev", "v1", sha):
        cache = tmp_path / f"cache-{revision}"
        for name in ("config.json", "model.safetensors", "empty.txt"):
            path = hf_hub_download(
                rid, name, revision=revision, endpoint=api.endpoint, token=api.token, cache_dir=cache
            )
            assert Path(path).read_bytes() == repo[name], (revision, name)
            assert f"/snapshots/{sha}/" in Path(path).as_posix()
    assert download(api, rid, "config.json", tmp_path / "main") == b'{"changed": true}\n'
    assert download(api, rid, "model.safetensors", tmp_path / "main") == SAFETENSORS + b"changed"


def test_hf_hub_download_missing_file(api: HfApi, shared: str, tmp_path: Path) -> None:
    with pytest.raises(RemoteEntryNotFoundError) as info:
        download(api, shared, "missing.txt", tmp_path / "c")
    assert isinstance(info.value, EntryNotFoundError)


def test_hf_hub_download_missing_repo(api: HfApi, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        download(api, "me/no-such-repo", "a.txt", tmp_path / "c")


def test_hf_hub_download_missing_revision(api: HfApi, shared: str, tmp_path: Path) -> None:
    with pytest.raises(RevisionNotFoundError):
        download(api, shared, "config.json", tmp_path / "c", revision="no-such-revision")


def test_commit_id_prefixes_resolve_like_the_hub(
    api: HfApi, hub: RunningHub, rid: str, repo: dict[str, bytes], tmp_path: Path
) -> None:
    """The local Hub resolves a unique prefix of 7 or more hex digits of a commit id, as the Hub does."""
    sha = head_sha(api, rid)
    for prefix in (sha[:7], sha[:12], sha[:39]):
        assert api.repo_info(rid, revision=prefix).sha == sha, prefix
    path = hf_hub_download(
        rid, "config.json", revision=sha[:12], endpoint=api.endpoint, token=api.token, cache_dir=tmp_path / "c"
    )
    assert Path(path).read_bytes() == repo["config.json"]
    assert {f.path for f in api.list_repo_tree(rid, revision=sha[:12])} >= {"config.json", "README.md"}
    for bad in (sha[:6], sha[:12].upper() + "x", "0" * 7 if not sha.startswith("0" * 7) else "f" * 7):
        with pytest.raises(RevisionNotFoundError):
            api.repo_info(rid, revision=bad)
    # Two commits that share a prefix: it names neither (a second commit record, given an id sharing 8 digits).
    commits = hub.server.store.root / "repos" / "models" / rid / "commits"
    twin = sha[:8] + ("0" if sha[8] != "0" else "1") + sha[9:]
    (commits / f"{twin}.json").write_bytes((commits / f"{sha}.json").read_bytes())
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(rid, revision=sha[:8])
    assert api.repo_info(rid, revision=sha[:9]).sha == sha


def test_snapshot_download_and_verify_checksums(api: HfApi, rid: str, repo: dict[str, bytes], tmp_path: Path) -> None:
    sha = head_sha(api, rid)
    api.create_tag(rid, tag="snap")
    api.upload_file(path_or_fileobj=b"after\n", path_in_repo="after.txt", repo_id=rid)
    cache = tmp_path / "cache"
    folder = Path(snapshot_download(rid, revision="snap", endpoint=api.endpoint, token=api.token, cache_dir=cache))
    assert folder.name == sha
    got = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert {k: v for k, v in got.items() if k != ".gitattributes"} == repo

    result = api.verify_repo_checksums(rid, revision=sha, cache_dir=cache)
    assert result.revision == sha
    assert result.mismatches == []
    assert result.missing_paths == []
    assert result.extra_paths == []
    assert result.checked_count == len(repo) + 1  # and .gitattributes

    # Corrupt one regular and one LFS file in the blob store: verification must notice both.
    for name in ("notes.txt", "model.safetensors"):
        blob = (folder / name).resolve()
        assert blob.parent.name == "blobs"
        blob.write_bytes(b"corrupted " + blob.read_bytes())
    result = api.verify_repo_checksums(rid, revision=sha, cache_dir=cache)
    assert {(m["path"], m["algorithm"]) for m in result.mismatches} == {
        ("notes.txt", "git-sha1"),
        ("model.safetensors", "sha256"),
    }


def test_range_open_ended_is_206(raw: httpx2.Client, shared: str) -> None:
    r = raw.get(f"/{shared}/resolve/main/model.safetensors", headers={"Range": "bytes=5-"})
    assert r.status_code == 206
    assert r.content == SAFETENSORS[5:]
    assert r.headers["Content-Range"] == f"bytes 5-{len(SAFETENSORS) - 1}/{len(SAFETENSORS)}"
    assert int(r.headers["Content-Length"]) == len(SAFETENSORS) - 5


def test_range_closed_is_206(raw: httpx2.Client, shared: str) -> None:
    data = small_files()["config.json"]
    r = raw.get(f"/{shared}/resolve/main/config.json", headers={"Range": "bytes=0-3"})
    assert r.status_code == 206
    assert r.content == data[:4]
    assert r.headers["Content-Range"] == f"bytes 0-3/{len(data)}"


def test_range_unsatisfiable_is_416(raw: httpx2.Client, shared: str) -> None:
    data = small_files()["config.json"]
    r = raw.get(f"/{shared}/resolve/main/config.json", headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{len(data)}"
    full = raw.get(f"/{shared}/resolve/main/config.json")
    assert full.status_code == 200
    assert full.content == data


def test_head_resolve_regular_file(api: HfApi, raw: httpx2.Client, shared: str) -> None:
    data = small_files()["config.json"]
    r = raw.head(f"/{shared}/resolve/main/config.json")
    assert r.status_code == 200
    assert r.headers["X-Repo-Commit"] == head_sha(api, shared)
    assert r.headers["ETag"] == f'"{git_blob_sha1(data)}"'
    assert int(r.headers["Content-Length"]) == len(data)
    assert "X-Linked-Etag" not in r.headers
    assert r.content == b""


def test_head_resolve_lfs_file(api: HfApi, raw: httpx2.Client, shared: str) -> None:
    r = raw.head(f"/{shared}/resolve/main/model.safetensors")
    assert r.status_code == 200
    assert r.headers["X-Repo-Commit"] == head_sha(api, shared)
    assert r.headers["ETag"] == f'"{sha256(SAFETENSORS)}"'
    assert r.headers["X-Linked-Etag"] == f'"{sha256(SAFETENSORS)}"'
    assert int(r.headers["X-Linked-Size"]) == len(SAFETENSORS)


def test_head_resolve_missing_file_names_the_error(api: HfApi, raw: httpx2.Client, shared: str) -> None:
    r = raw.head(f"/{shared}/resolve/main/missing.txt")
    assert r.status_code == 404
    assert r.headers["X-Error-Code"] == "EntryNotFound"
    assert r.headers["X-Repo-Commit"] == head_sha(api, shared)


# -- auth -------------------------------------------------------------------------------------------


@pytest.fixture
def private_repo(api: HfApi, rid: str) -> str:
    api.create_repo(rid, private=True)
    api.upload_file(path_or_fileobj=b"secret\n", path_in_repo="secret.txt", repo_id=rid)
    return rid


def test_anonymous_cannot_see_private_repo(anonymous: HfApi, private_repo: str, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info(private_repo)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(private_repo, "secret.txt", endpoint=anonymous.endpoint, token=False, cache_dir=tmp_path / "c")
    with pytest.raises(RepositoryNotFoundError):
        list(anonymous.list_repo_tree(private_repo))


def test_other_user_cannot_see_private_repo(other: HfApi, private_repo: str, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        other.model_info(private_repo)
    with pytest.raises(RepositoryNotFoundError):
        download(other, private_repo, "secret.txt", tmp_path / "c")
    with pytest.raises(RepositoryNotFoundError):
        other.list_repo_refs(private_repo)


def test_owner_sees_private_repo(api: HfApi, private_repo: str, tmp_path: Path) -> None:
    assert api.model_info(private_repo).private is True
    assert download(api, private_repo, "secret.txt", tmp_path / "c") == b"secret\n"


def test_anonymous_can_read_public_repo(anonymous: HfApi, shared: str, tmp_path: Path) -> None:
    path = hf_hub_download(shared, "config.json", endpoint=anonymous.endpoint, token=False, cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == small_files()["config.json"]
    assert anonymous.model_info(shared).private is False


def test_other_user_cannot_write_to_public_repo(api: HfApi, other: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    head = head_sha(api, rid)
    assert other.model_info(rid).sha == head  # readable ...
    with pytest.raises(HfHubHTTPError) as info:  # ... but not writable
        other.create_commit(rid, operations=[CommitOperationAdd("evil.txt", b"evil\n")], commit_message="evil")
    assert info.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as info:
        other.create_branch(rid, branch="evil")
    assert info.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as info:
        other.create_tag(rid, tag="evil")
    assert info.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as info:
        other.delete_repo(rid)
    assert info.value.response.status_code == 403
    refs = api.list_repo_refs(rid)
    assert [b.name for b in refs.branches] == ["main"]
    assert refs.tags == []
    assert head_sha(api, rid) == head


def test_other_user_cannot_create_repo_in_my_namespace(api: HfApi, other: HfApi, rid: str) -> None:
    with pytest.raises(HfHubHTTPError) as info:
        other.create_repo(rid)
    assert info.value.response.status_code == 403
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(rid)
    # Its own namespace is fine.
    mine = "other/" + rid.split("/")[1]
    assert other.create_repo(mine).repo_id == mine


def test_writes_without_token_are_refused(api: HfApi, anonymous: HfApi, rid: str, repo: dict[str, bytes]) -> None:
    head = head_sha(api, rid)
    with pytest.raises(HfHubHTTPError) as info:
        anonymous.create_commit(rid, operations=[CommitOperationAdd("a.txt", b"a\n")], commit_message="anon")
    assert info.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as info:
        anonymous.create_branch(rid, branch="anon")
    assert info.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as info:
        anonymous.create_repo(f"{rid}-anon")
    assert info.value.response.status_code == 401
    assert head_sha(api, rid) == head
    assert [b.name for b in api.list_repo_refs(rid).branches] == ["main"]
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(f"{rid}-anon")


# -- persistence ------------------------------------------------------------------------------------


def test_everything_survives_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "persistent-hub"
    files = small_files()
    with local_hub(root) as first:
        api = HfApi(endpoint=first.endpoint, token=first.token)
        api.create_repo("me/kept", private=True)
        api.upload_folder(repo_id="me/kept", folder_path=write_files(tmp_path / "src", files))
        api.create_branch("me/kept", branch="dev")
        api.create_tag("me/kept", tag="v1")
        token = first.token
        refs = api.list_repo_refs("me/kept")
        entries = [(e.path, getattr(e, "blob_id", None)) for e in api.list_repo_tree("me/kept", recursive=True)]
        commits = [c.commit_id for c in api.list_repo_commits("me/kept")]
    with local_hub(root) as second:
        assert second.token == token
        api = HfApi(endpoint=second.endpoint, token=token)
        assert api.whoami()["name"] == "me"
        assert api.model_info("me/kept").private is True
        again = api.list_repo_refs("me/kept")
        assert {(b.name, b.target_commit) for b in again.branches} == {(b.name, b.target_commit) for b in refs.branches}
        assert {(t.name, t.target_commit) for t in again.tags} == {(t.name, t.target_commit) for t in refs.tags}
        assert [(e.path, getattr(e, "blob_id", None)) for e in api.list_repo_tree("me/kept", recursive=True)] == entries
        assert [c.commit_id for c in api.list_repo_commits("me/kept")] == commits
        for name in ("config.json", "model.safetensors", "nested/deeper/info.txt"):
            assert download(api, "me/kept", name, tmp_path / "cache", revision="v1") == files[name]
        # It still takes commits, on top of the old history.
        api.upload_file(path_or_fileobj=b"new\n", path_in_repo="new.txt", repo_id="me/kept")
        assert api.list_repo_commits("me/kept")[1].commit_id == commits[0]


# -- the hf command line ----------------------------------------------------------------------------


def test_hf_cli_upload_and_download(hub: RunningHub, api: HfApi, rid: str, tmp_path: Path) -> None:
    hf = Path(sys.executable).parent / "hf"
    assert hf.exists()
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": hub.token,
        "HF_HOME": str(tmp_path / "cli-home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_COLOR": "1",
    }
    files = small_files()
    folder = write_files(tmp_path / "cli-src", files)
    up = subprocess.run([str(hf), "upload", rid, str(folder)], env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    assert set(files) <= set(tree(api, rid))
    target = tmp_path / "cli-dl"
    down = subprocess.run(
        [str(hf), "download", rid, "--local-dir", str(target)], env=env, capture_output=True, text=True, timeout=120
    )
    assert down.returncode == 0, down.stdout + down.stderr
    for name, data in files.items():
        assert (target / name).read_bytes() == data, name


# -- malformed requests -----------------------------------------------------------------------------


def ndjson(*items: dict[str, Any]) -> bytes:
    return b"\n".join(json.dumps(i).encode() for i in items)


def header_line(summary: str = "raw commit") -> dict[str, Any]:
    return {"key": "header", "value": {"summary": summary, "description": ""}}


def file_line(path: str, content: bytes) -> dict[str, Any]:
    return {"key": "file", "value": {"path": path, "encoding": "base64", "content": base64.b64encode(content).decode()}}


def post_commit(raw: httpx2.Client, repo_id: str, body: bytes, revision: str = "main") -> httpx2.Response:
    return raw.post(
        f"/api/models/{repo_id}/commit/{revision}", content=body, headers={"Content-Type": "application/x-ndjson"}
    )


def test_raw_commit_is_accepted(api: HfApi, raw: httpx2.Client, rid: str, repo: dict[str, bytes]) -> None:
    """The baseline of the malformed-request tests: the same request, well formed, lands."""
    r = post_commit(raw, rid, ndjson(header_line(), file_line("raw.txt", b"raw\n")))
    assert r.status_code == 200, r.text
    assert r.json()["commitOid"] == head_sha(api, rid)
    assert "/commit/" in r.json()["commitUrl"]
    assert "raw.txt" in tree(api, rid)


def test_create_repo_with_bad_json_is_400(api: HfApi, raw: httpx2.Client, rid: str) -> None:
    name = rid.split("/")[1]
    r = raw.post(
        "/api/repos/create", content=b'{"name": "%s",' % name.encode(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(rid)
    # The connection and the server are fine afterwards.
    assert raw.get("/api/whoami-v2").json()["name"] == "me"


def test_commit_with_malformed_line_is_400(api: HfApi, raw: httpx2.Client, rid: str, repo: dict[str, bytes]) -> None:
    head, before = head_sha(api, rid), tree(api, rid)
    body = ndjson(header_line(), file_line("ok.txt", b"ok\n")) + b"\n{this is not json\n"
    r = post_commit(raw, rid, body)
    assert r.status_code == 400
    assert head_sha(api, rid) == head
    assert tree(api, rid) == before


@pytest.mark.parametrize("path", ["../escape.txt", "/absolute.txt", "nested/../../escape.txt", "a/./b.txt", "a//b", ""])
def test_commit_with_escaping_path_is_400(
    api: HfApi, raw: httpx2.Client, rid: str, repo: dict[str, bytes], hub: RunningHub, path: str
) -> None:
    head, before = head_sha(api, rid), tree(api, rid)
    r = post_commit(raw, rid, ndjson(header_line(), file_line("fine.txt", b"fine\n"), file_line(path, b"escape\n")))
    assert r.status_code == 400
    assert head_sha(api, rid) == head
    assert tree(api, rid) == before
    assert not list(Path(hub.server.store.root).parent.rglob("escape.txt"))


def test_commit_with_lfs_file_never_uploaded_is_400(
    api: HfApi, raw: httpx2.Client, rid: str, repo: dict[str, bytes]
) -> None:
    head, before = head_sha(api, rid), tree(api, rid)
    ghost = b"never uploaded"
    line = {
        "key": "lfsFile",
        "value": {"path": "ghost.bin", "algo": "sha256", "oid": sha256(ghost), "size": len(ghost)},
    }
    r = post_commit(raw, rid, ndjson(header_line(), file_line("fine.txt", b"fine\n"), line))
    assert r.status_code == 400
    assert head_sha(api, rid) == head
    assert tree(api, rid) == before


def lfs_batch(raw: httpx2.Client, repo_id: str, oid: str, size: int, operation: str = "upload") -> dict[str, Any]:
    r = raw.post(
        f"/{repo_id}.git/info/lfs/objects/batch",
        content=json.dumps(
            {
                "operation": operation,
                "transfers": ["basic"],
                "hash_algo": "sha256",
                "objects": [{"oid": oid, "size": size}],
            }
        ),
        headers={"Content-Type": "application/vnd.git-lfs+json", "Accept": "application/vnd.git-lfs+json"},
    )
    assert r.status_code == 200, r.text
    (obj,) = r.json()["objects"]
    assert obj["oid"] == oid
    return obj  # type: ignore[no-any-return]


def test_lfs_upload_with_wrong_ticket_is_403(raw: httpx2.Client, rid: str, repo: dict[str, bytes]) -> None:
    data = b"lfs payload for the ticket test " * 40
    obj = lfs_batch(raw, rid, sha256(data), len(data))
    href = obj["actions"]["upload"]["href"]
    assert "ticket=" in href
    forged = href.split("ticket=")[0] + "ticket=" + "0" * 64
    with httpx2.Client(timeout=30) as plain:  # the client PUTs without authorization
        assert plain.put(forged, content=data).status_code == 403
        assert plain.put(href.split("&ticket=")[0], content=data).status_code == 403  # no ticket at all
    verify = raw.post(obj["actions"]["verify"]["href"], json={"oid": sha256(data), "size": len(data)})
    assert verify.status_code == 404
    assert "actions" in lfs_batch(raw, rid, sha256(data), len(data))  # still not stored: still asked for


def test_lfs_upload_with_wrong_content_is_refused(
    raw: httpx2.Client, rid: str, repo: dict[str, bytes], hub: RunningHub
) -> None:
    announced = b"A" * 1000 + rid.encode()
    sent = b"B" * 1000 + rid.encode()
    oid = sha256(announced)
    obj = lfs_batch(raw, rid, oid, len(announced))
    upload, verify = obj["actions"]["upload"]["href"], obj["actions"]["verify"]["href"]
    with httpx2.Client(timeout=30) as plain:
        r = plain.put(upload, content=sent)
        assert 400 <= r.status_code < 500
        assert not hub.server.store.has_blob(oid)
        assert not hub.server.store.has_blob(sha256(sent))
        assert raw.post(verify, json={"oid": oid, "size": len(announced)}).status_code == 404
        # The right bytes are accepted afterwards.
        assert plain.put(upload, content=announced).status_code == 200
    assert raw.post(verify, json={"oid": oid, "size": len(announced)}).status_code == 200
    assert "actions" not in lfs_batch(raw, rid, oid, len(announced))


def test_lfs_batch_download_href_serves_the_object(raw: httpx2.Client, shared: str) -> None:
    """The server answers batch `download` requests: the href it hands out must serve the object."""
    obj = lfs_batch(raw, shared, sha256(SAFETENSORS), len(SAFETENSORS), operation="download")
    href = obj["actions"]["download"]["href"]
    r = raw.get(href, headers=obj["actions"]["download"].get("header") or {})
    assert r.status_code == 200
    assert r.content == SAFETENSORS


# -- latency ------------------------------------------------------------------------------------------


def test_small_answers_are_not_delayed(raw: httpx2.Client, shared: str) -> None:
    """A JSON answer on loopback takes about a millisecond; 40 ms means Nagle + delayed ACK (headers and
    body sent in two writes without TCP_NODELAY), which makes every client call and test slow."""
    timings = []
    for _ in range(7):
        start = time.perf_counter()
        assert raw.get(f"/api/models/{shared}/refs").status_code == 200
        timings.append(time.perf_counter() - start)
    assert statistics.median(timings) < 0.02, [round(t * 1000, 1) for t in timings]


def test_paths_info_with_non_object_json_is_400(raw: httpx2.Client, shared: str) -> None:
    r = raw.post(
        f"/api/models/{shared}/paths-info/main",
        content=b'["config.json"]',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400


def test_commit_with_nul_in_path_is_400(api: HfApi, raw: httpx2.Client, rid: str, repo: dict[str, bytes]) -> None:
    """No file system (and no git tree) can hold a NUL in a name: snapshot_download could never write it."""
    head = head_sha(api, rid)
    r = post_commit(raw, rid, ndjson(header_line(), file_line("nul\x00byte.txt", b"x\n")))
    assert r.status_code == 400
    assert head_sha(api, rid) == head


def test_error_messages_cannot_inject_headers(api: HfApi, raw: httpx2.Client, shared: str) -> None:
    """Error texts echo the (percent-decoded) revision into X-Error-Message: CR/LF must not reach the headers."""
    r = raw.get(f"/api/models/{shared}/revision/bad%0D%0AX-Injected:%20yes")
    assert r.status_code == 404
    assert r.headers["X-Error-Code"] == "RevisionNotFound"
    assert "X-Injected" not in r.headers
    # A bare LF breaks the answer altogether: the client gets a protocol error instead of RevisionNotFoundError.
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(shared, revision="no\nsuch-revision")
    with pytest.raises(RevisionNotFoundError):
        api.delete_branch(shared, branch="no\nsuch-branch")
