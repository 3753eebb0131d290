"""A repository's storage on the local Hub, through the real client: `HfApi.list_lfs_files` (paged),
`HfApi.permanently_delete_lfs_files` (with and without history rewrite) and `model_info(expand=["usedStorage"])`,
over git-LFS and over Xet storage."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
from conftest import local_hub
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsync.files import git_blob_id
from hubsync.localhub import RunningHub
from hubsync.localhub.store import AddLfs, Store, lfs_pointer


@pytest.fixture(autouse=True)
def client_transfer(hub_transfer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a Hub with git-LFS only, the client does as its users do there: HF_HUB_DISABLE_XET."""
    if hub_transfer == "lfs":
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)


def add(api: HfApi, repo: str, files: dict[str, bytes], revision: str | None = None) -> str:
    """Commit `files` to `repo`; the new commit's id."""
    ops = [CommitOperationAdd(path, data) for path, data in files.items()]
    return api.create_commit(repo, ops, commit_message="add", revision=revision).oid


def listed(api: HfApi, repo: str, **kwargs: object) -> dict[str, tuple[int, str, str]]:
    """The repository's LFS files as the client lists them: sha256 -> (size, fileOid, filename); each once."""
    items = list(api.list_lfs_files(repo, **kwargs))  # type: ignore[arg-type]
    assert len({i.oid for i in items}) == len(items), "an LFS object listed twice"
    return {i.oid: (i.size, i.file_oid, i.filename) for i in items}


def lfs_expected(files: dict[str, bytes]) -> dict[str, tuple[int, str]]:
    return {
        hashlib.sha256(data).hexdigest(): (
            len(data),
            git_blob_id(lfs_pointer(hashlib.sha256(data).hexdigest(), len(data))),
        )
        for path, data in files.items()
        if path.endswith((".safetensors", ".bin"))
    }


def status_of(call: Callable[[], object]) -> int:
    """The HTTP status of the error `call` raises."""
    with pytest.raises(HfHubHTTPError) as info:
        call()
    assert info.value.response is not None
    return info.value.response.status_code


_LFS_NAMES = ["a.safetensors", "w/b.bin", "c.safetensors", "f/g.bin"]
_files = st.dictionaries(
    st.sampled_from([*_LFS_NAMES, "d.txt", "e.json"]), st.binary(min_size=1, max_size=64), min_size=1, max_size=4
).map(lambda files: {p: d if p in _LFS_NAMES else d.hex().encode() for p, d in files.items()})  # text: a git file
_counter = itertools.count()


@given(
    commits=st.lists(_files, min_size=1, max_size=3),
    on_side=st.booleans(),
)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_listing_holds_every_lfs_object_of_every_commit_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, commits: list[dict[str, bytes]], on_side: bool
) -> None:
    """Every LFS object of any commit, a deleted branch's included, once, in pages of 2 the client follows."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    with local_hub(tmp_path / f"hub{next(_counter)}", xet=False, lfs_page_size=2) as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo("me/model")
        committed: dict[str, bytes] = {}
        for i, files in enumerate(commits):
            if on_side and i == len(commits) - 1:  # the last commit on a branch that is then deleted
                api.create_branch("me/model", branch="side")
                add(api, "me/model", files, revision="side")
                api.delete_branch("me/model", branch="side")
            else:
                add(api, "me/model", files)
            committed.update({f"{i}/{p}": d for p, d in files.items()})
        got = listed(api, "me/model")
        assert {sha: (size, oid) for sha, (size, oid, _) in got.items()} == lfs_expected(committed)
        for sha, (_size, _oid, filename) in got.items():
            assert any(
                hashlib.sha256(d).hexdigest() == sha and p.endswith("/" + filename) for p, d in committed.items()
            )


def test_pages_follow_the_link_header_and_hold_every_item_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    with local_hub(tmp_path / "hub", xet=False, lfs_page_size=3) as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo("me/model")
        files = {f"w{i}.safetensors": os.urandom(100 + i) for i in range(10)}
        add(api, "me/model", files)
        headers = {"Authorization": f"Bearer {hub.token}"}
        first = httpx2.get(f"{hub.endpoint}/api/models/me/model/lfs-files", headers=headers)
        assert first.status_code == 200 and len(first.json()) == 3
        assert first.links["next"]["url"].startswith(hub.endpoint)
        assert listed(api, "me/model").keys() == lfs_expected(files).keys()
        assert httpx2.get(f"{hub.endpoint}/api/models/me/model/lfs-files?cursor=x", headers=headers).status_code == 400


@pytest.mark.xet_and_lfs
def test_permanent_deletion_frees_the_objects_and_keeps_the_others(
    hub: RunningHub, api: HfApi, tmp_path: Path, hub_transfer: str
) -> None:
    shared, kept, alone = os.urandom(300_000), os.urandom(200_000), os.urandom(400_000)
    api.create_repo("me/model")
    api.create_repo("me/other")
    first = add(api, "me/model", {"shared.safetensors": shared, "kept.bin": kept, "config.json": b"{}\n"})
    second = add(api, "me/model", {"alone.safetensors": alone})
    add(api, "me/other", {"copy.safetensors": shared})
    sha = {
        name: hashlib.sha256(data).hexdigest() for name, data in [("shared", shared), ("kept", kept), ("alone", alone)]
    }
    before = listed(api, "me/model")
    assert set(before) == set(sha.values())
    storage = api.model_info("me/model", expand=["usedStorage"]).used_storage
    assert storage is not None and storage >= len(shared) + len(kept) + len(alone)
    xet = hub.server.xet
    xet_before = xet.stored_bytes("model", "me/model") if xet is not None else 0
    doomed = [i for i in api.list_lfs_files("me/model") if i.oid in (sha["shared"], sha["alone"])]

    api.permanently_delete_lfs_files("me/model", doomed, rewrite_history=False)

    assert set(listed(api, "me/model")) == {sha["kept"]}
    assert api.model_info("me/model", expand=["usedStorage"]).used_storage == storage - len(shared) - len(alone)
    assert api.list_repo_commits("me/model")[0].commit_id == second  # no rewrite: the same commits
    for revision in ("main", first):
        with pytest.raises(HfHubHTTPError) as info:
            hf_hub_download(
                "me/model",
                "shared.safetensors",
                revision=revision,
                cache_dir=tmp_path / "c1",
                endpoint=hub.endpoint,
                token=hub.token,
            )
        assert info.value.response is not None and info.value.response.status_code == 404
    with pytest.raises(HfHubHTTPError) as info:
        hf_hub_download(
            "me/model", "alone.safetensors", cache_dir=tmp_path / "c1", endpoint=hub.endpoint, token=hub.token
        )
    assert info.value.response is not None and info.value.response.status_code == 404
    kept_file = hf_hub_download(
        "me/model", "kept.bin", cache_dir=tmp_path / "c2", endpoint=hub.endpoint, token=hub.token
    )
    assert Path(kept_file).read_bytes() == kept
    copy = hf_hub_download(
        "me/other", "copy.safetensors", cache_dir=tmp_path / "c3", endpoint=hub.endpoint, token=hub.token
    )
    assert Path(copy).read_bytes() == shared  # the other repository's bytes stay

    root = hub.server.store.root
    assert not (root / "blobs" / sha["alone"][:2] / sha["alone"]).exists()  # really gone from disk
    if xet is not None:
        assert xet.stored_bytes("model", "me/model") < xet_before  # chunk data gone from the Xet storage
    else:
        assert (root / "blobs" / sha["shared"][:2] / sha["shared"]).exists()  # me/other still holds it
        # git-LFS no longer hands it out, nor lets a commit name it without a new upload
        answer = httpx2.post(
            f"{hub.endpoint}/me/model.git/info/lfs/objects/batch",
            headers={"Authorization": f"Bearer {hub.token}"},
            json={"operation": "download", "objects": [{"oid": sha["alone"], "size": len(alone)}]},
        )
        assert answer.json()["objects"][0]["error"]["code"] == 404
    # a new upload of the same content brings it back
    add(api, "me/model", {"again.safetensors": alone})
    again = hf_hub_download(
        "me/model", "again.safetensors", cache_dir=tmp_path / "c4", endpoint=hub.endpoint, token=hub.token
    )
    assert Path(again).read_bytes() == alone


@pytest.mark.xet_and_lfs
def test_rewrite_history_moves_the_refs_to_commits_without_the_files(hub: RunningHub, api: HfApi) -> None:
    api.create_repo("me/model")
    add(api, "me/model", {"big.safetensors": os.urandom(50_000), "small.bin": os.urandom(1000)})
    add(api, "me/model", {"config.json": b"{}\n"})
    api.create_tag("me/model", tag="v1")
    api.create_branch("me/model", branch="dev")
    add(api, "me/model", {"dev.bin": os.urandom(2000)}, revision="dev")
    old = {
        r.name: r.target_commit
        for r in (*api.list_repo_refs("me/model").branches, *api.list_repo_refs("me/model").tags)
    }
    old_history = [c.commit_id for c in api.list_repo_commits("me/model")]
    big = [i for i in api.list_lfs_files("me/model") if i.filename == "big.safetensors"]

    api.permanently_delete_lfs_files("me/model", big)  # rewrite_history=True, the client's default

    refs = api.list_repo_refs("me/model")
    new = {r.name: r.target_commit for r in (*refs.branches, *refs.tags)}
    assert new.keys() == old.keys() and all(new[n] != old[n] for n in old)
    history = [c.commit_id for c in api.list_repo_commits("me/model")]
    assert len(history) == len(old_history) and not set(history) & set(old_history[:-1])
    for revision in ("main", "v1", "dev"):
        files = api.list_repo_files("me/model", revision=revision)
        assert "big.safetensors" not in files and "small.bin" in files
    assert "dev.bin" in api.list_repo_files("me/model", revision="dev")
    assert {i.filename for i in api.list_lfs_files("me/model")} == {"small.bin", "dev.bin"}


def test_refusals_delete_nothing(hub: RunningHub, api: HfApi) -> None:
    api.create_repo("me/model")
    api.create_repo("me/secret", private=True)
    add(api, "me/model", {"w.safetensors": os.urandom(1000), "x.bin": os.urandom(1000)})
    before = listed(api, "me/model")
    head = api.list_repo_commits("me/model")[0].commit_id
    url = f"{hub.endpoint}/api/models/me/model/lfs-files/batch"
    auth = {"Authorization": f"Bearer {hub.token}"}
    good = next(iter(before.values()))[1]
    for body, status in [
        ({"deletions": {"sha": [good, "0" * 40], "rewriteHistory": False}}, 404),  # one unknown: none deleted
        ({"deletions": {"sha": [good.upper()], "rewriteHistory": False}}, 400),
        ({"deletions": {"sha": [good], "rewriteHistory": "no"}}, 400),
        ({"deletions": {"sha": good, "rewriteHistory": False}}, 400),
        ({"deletions": {"sha": [], "rewriteHistory": False}}, 400),
        ({"deletions": {"sha": [good, 1]}}, 400),
        ({"deletions": {"sha": [good], "rewrite": True}}, 400),
        ({"deletions": [good]}, 400),
        ({"sha": [good]}, 400),
        ([good], 400),
    ]:
        answer = httpx2.post(url, headers=auth, json=body)
        assert answer.status_code == status, (body, answer.text)
    assert httpx2.post(url, headers=auth, content=b"{not json").status_code == 400

    other = HfApi(endpoint=hub.endpoint, token=hub.server.store.ensure_user("other"))
    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    items = list(api.list_lfs_files("me/model"))
    assert status_of(lambda: list(other.list_lfs_files("me/model"))) == 403
    assert status_of(lambda: other.permanently_delete_lfs_files("me/model", items)) == 403
    assert status_of(lambda: list(anonymous.list_lfs_files("me/model"))) == 401
    assert status_of(lambda: anonymous.permanently_delete_lfs_files("me/model", items)) == 401
    assert status_of(lambda: list(other.list_lfs_files("me/secret"))) == 404
    assert status_of(lambda: list(api.list_lfs_files("me/nothing"))) == 404
    assert listed(api, "me/model") == before
    assert api.list_repo_commits("me/model")[0].commit_id == head


def test_used_storage_is_asked_for_and_counts_each_content_once(hub: RunningHub, api: HfApi) -> None:
    api.create_repo("me/model")
    weights = os.urandom(5000)
    add(api, "me/model", {"a.safetensors": weights, "b.safetensors": weights, "config.json": b'{"x": 1}\n'})
    add(api, "me/model", {"config.json": b'{"x": 2}\n'})  # a second version of a regular file: stored too
    info = api.model_info("me/model", expand=["usedStorage"])
    regular = {
        hashlib.sha256(d).hexdigest(): len(d)
        for d in (b'{"x": 1}\n', b'{"x": 2}\n', Path(api.hf_hub_download("me/model", ".gitattributes")).read_bytes())
    }
    assert info.used_storage == len(weights) + sum(regular.values())
    assert api.model_info("me/model").used_storage is None  # not in the default answer, as on the Hub
    raw = httpx2.get(
        f"{hub.endpoint}/api/models/me/model",
        params=[("expand", "usedStorage"), ("expand", "sha")],
        headers={"Authorization": f"Bearer {hub.token}"},
    ).json()
    assert set(raw) == {"_id", "id", "usedStorage", "sha"}
    api.create_repo("me/data", repo_type="dataset")
    gitattributes = Path(api.hf_hub_download("me/data", ".gitattributes", repo_type="dataset")).read_bytes()
    assert api.dataset_info("me/data", expand=["usedStorage"]).used_storage == len(gitattributes)


# -- the Store on its own: shared blobs and crash safety -------------------------------------------------------
def lfs_commit(store: Store, repo_id: str, files: dict[str, bytes]) -> None:
    ops = []
    for path, data in files.items():
        store.grant_lfs("model", repo_id, store.put_blob(data))
        ops.append(AddLfs(path, hashlib.sha256(data).hexdigest(), len(data)))
    store.apply_commit("model", repo_id, "main", ops, "t", "", "me", None)  # type: ignore[arg-type]


def test_a_shared_blob_leaves_the_disk_with_its_last_holder(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    data = b"\0weights" * 100
    sha = hashlib.sha256(data).hexdigest()
    for repo in ("me/a", "me/b"):
        store.create_repo("model", repo, "me", private=False)
        lfs_commit(store, repo, {"w.bin": data})
    oid = store.lfs_files("model", "me/a")[0].file_oid
    assert store.purge_lfs("model", "me/a", [oid], rewrite_history=False) == [sha]
    assert store.has_blob(sha) and store.lfs_files("model", "me/a") == []
    assert store.purge_lfs("model", "me/b", [oid], rewrite_history=False) == [sha]
    assert not store.has_blob(sha)  # b's commit still names it, purged there too: nobody holds it


def test_a_rewrite_that_fails_before_its_refs_move_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "root")
    store.create_repo("model", "me/a", "me", private=False)
    lfs_commit(store, "me/a", {"w.bin": b"\0one", "x.bin": b"\0two"})
    refs, listed = store.refs("model", "me/a"), store.lfs_files("model", "me/a")

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store, "_write_refs", crash)
    with pytest.raises(OSError):
        store.purge_lfs("model", "me/a", [listed[0].file_oid], rewrite_history=True)
    assert store.refs("model", "me/a") == refs and store.lfs_files("model", "me/a") == listed
    assert all(store.has_blob(f.sha256) for f in listed)
