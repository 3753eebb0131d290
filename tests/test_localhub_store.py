"""The local Hub's `Store` on its own (no HTTP): atomic commits, content-addressed blobs, repositories, refs."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from hubsync.localhub.store import AddLfs, AddRegular, Commit, Delete, Store, StoreError

REPO = "me/store"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "root")
    s.create_repo("model", REPO, "me", private=False)
    return s


def commit(
    store: Store,
    ops: list[AddRegular | AddLfs | Delete],
    title: str = "t",
    branch: str = "main",
    parent: str | None = None,
    repo_id: str = REPO,
) -> Commit:
    return store.apply_commit("model", repo_id, branch, ops, title, "", "me", parent)


def files_at(store: Store, revision: str = "main", repo_id: str = REPO) -> dict[str, str]:
    sha = store.resolve("model", repo_id, revision)
    return {p: e.sha256 for p, e in store.commit("model", repo_id, sha).files.items()}


def blob_files(store: Store) -> list[Path]:
    return sorted(p for p in (store.root / "blobs").rglob("*") if p.is_file())


# -- atomic commits ------------------------------------------------------------------------------


def test_commit_that_fails_after_its_record_is_written_changes_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = commit(store, [AddRegular("a.txt", b"a\n")])
    refs_before = store.refs("model", REPO)
    refs_file = store.root / "repos" / "models" / "me" / "store" / "refs.json"
    refs_bytes = refs_file.read_bytes()
    records_before = set((refs_file.parent / "commits").iterdir())

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("simulated crash before the refs are replaced")

    monkeypatch.setattr(Store, "_write_refs", crash)
    with pytest.raises(OSError, match="simulated crash"):
        commit(store, [AddRegular("b.txt", b"b\n"), Delete("a.txt", folder=False)], title="doomed")
    # The crash really happened after the commit record was written ...
    assert len(set((refs_file.parent / "commits").iterdir()) - records_before) == 1
    # ... and yet the repository is as it was.
    assert refs_file.read_bytes() == refs_bytes
    assert store.refs("model", REPO) == refs_before
    assert store.resolve("model", REPO, "main") == base.id
    assert set(files_at(store)) == {".gitattributes", "a.txt"}
    assert [c.title for c in store.history("model", REPO, base.id)] == ["t", "initial commit"]

    # A following commit works and builds on the last good head, not on the lost one.
    monkeypatch.undo()
    after = commit(store, [AddRegular("c.txt", b"c\n")], title="after")
    assert after.parents == (base.id,)
    assert store.resolve("model", REPO, "main") == after.id
    assert set(files_at(store)) == {".gitattributes", "a.txt", "c.txt"}
    # A fresh Store on the same root (a restarted server) sees the same.
    again = Store(store.root)
    assert again.resolve("model", REPO, "main") == after.id
    assert [c.title for c in again.history("model", REPO, after.id)] == ["after", "t", "initial commit"]


def test_commit_that_fails_halfway_through_its_operations_changes_nothing(store: Store) -> None:
    base = commit(store, [AddRegular("a.txt", b"a\n")])
    with pytest.raises(StoreError) as info:
        commit(store, [AddRegular("b.txt", b"b\n"), Delete("a.txt", folder=False), AddRegular("../x", b"x")])
    assert info.value.status == 400
    assert store.resolve("model", REPO, "main") == base.id
    assert set(files_at(store)) == {".gitattributes", "a.txt"}


def test_commit_with_stale_parent_is_412(store: Store) -> None:
    base = commit(store, [AddRegular("a.txt", b"a\n")])
    head = commit(store, [AddRegular("b.txt", b"b\n")], parent=base.id)
    with pytest.raises(StoreError) as info:
        commit(store, [AddRegular("c.txt", b"c\n")], parent=base.id)
    assert info.value.status == 412
    assert store.resolve("model", REPO, "main") == head.id


def test_lfs_addition_needs_the_uploaded_object(store: Store) -> None:
    data = b"\0weights" * 100
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(StoreError) as info:
        commit(store, [AddLfs("w.bin", sha, len(data))])
    assert info.value.status == 400
    assert store.put_blob(data) == sha
    with pytest.raises(StoreError) as info:  # stored, but not uploaded for this repository
        commit(store, [AddLfs("w.bin", sha, len(data))])
    assert info.value.status == 400
    store.grant_lfs("model", REPO, sha)
    with pytest.raises(StoreError) as info:  # a wrong size is refused too
        commit(store, [AddLfs("w.bin", sha, len(data) + 1)])
    assert info.value.status == 400
    entry = commit(store, [AddLfs("w.bin", sha, len(data))]).files["w.bin"]
    assert entry.lfs and entry.size == len(data) and entry.sha256 == sha
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()
    assert entry.oid == git_blob_sha1(pointer)


def test_concurrent_commits_all_land_in_one_line_of_history(store: Store) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(4):
                commit(store, [AddRegular(f"w{n}/{i}.txt", f"{n}-{i}".encode())], title=f"{n}-{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    head = store.resolve("model", REPO, "main")
    assert len(store.history("model", REPO, head)) == 6 * 4 + 1
    assert len(files_at(store)) == 6 * 4 + 1


# -- blobs --------------------------------------------------------------------------------------------


def test_blobs_are_content_addressed_and_deduplicated(store: Store) -> None:
    data = b"same bytes everywhere\n"
    sha = hashlib.sha256(data).hexdigest()
    before = blob_files(store)
    assert store.put_blob(data) == sha
    assert store.put_blob(data) == sha
    assert store.blob_path(sha) == store.root / "blobs" / sha[:2] / sha
    assert store.blob_path(sha).read_bytes() == data
    with store.open_blob(sha) as f:
        assert f.read() == data
    # Two repositories and two paths with the same content share one blob.
    store.create_repo("model", "me/second", "me", private=True)
    commit(store, [AddRegular("x.txt", data), AddRegular("dir/y.txt", data)])
    commit(store, [AddRegular("z.txt", data)], repo_id="me/second")
    assert blob_files(store) == sorted({*before, store.blob_path(sha)})
    assert files_at(store)["x.txt"] == files_at(store)["dir/y.txt"] == files_at(store, repo_id="me/second")["z.txt"]


def test_uploaded_stream_is_checked_before_it_is_kept(store: Store) -> None:
    data = b"streamed object" * 1000
    sha = hashlib.sha256(data).hexdigest()
    before = blob_files(store)
    for wrong in ([b"X" * len(data)], [data[:-1]], [data, b"extra"]):
        with pytest.raises(StoreError) as info:
            store.put_blob_stream(sha, len(data), iter(wrong))
        assert info.value.status == 400
        assert not store.has_blob(sha)
    assert blob_files(store) == before  # no temp file left behind either
    store.put_blob_stream(sha, len(data), iter([data[:100], data[100:]]))
    assert store.has_blob(sha, len(data))
    assert not store.has_blob(sha, len(data) + 1)


def test_blob_path_refuses_non_sha256_names(store: Store) -> None:
    for bad in ("../../tokens.json", "ab", "A" * 64, "g" * 64):
        with pytest.raises(StoreError):
            store.blob_path(bad)


# -- repositories -------------------------------------------------------------------------------------


def test_create_and_delete_repo(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    meta = store.create_repo("model", "me/new", "me", private=True)
    assert meta.private and meta.owner == "me"
    assert store.repo("model", "me/new") == meta
    assert store.repo("dataset", "me/new") is None  # a model, not a dataset
    refs = store.refs("model", "me/new")
    assert set(refs["branches"]) == {"main"} and refs["tags"] == {}
    first = store.commit("model", "me/new", refs["branches"]["main"])
    assert first.parents == () and set(first.files) == {".gitattributes"}
    assert [(m.repo_type, m.repo_id) for m in store.list_repos()] == [("model", "me/new")]

    with pytest.raises(StoreError) as info:
        store.create_repo("model", "me/new", "me", private=False)
    assert info.value.status == 409

    store.delete_repo("model", "me/new")
    assert store.repo("model", "me/new") is None
    with pytest.raises(StoreError) as info:
        store.refs("model", "me/new")
    assert (info.value.status, info.value.code) == (404, "RepoNotFound")
    with pytest.raises(StoreError) as info:
        store.delete_repo("model", "me/new")
    assert info.value.status == 404
    assert list(store.list_repos()) == []
    assert not [p for p in (store.root / "repos").iterdir() if p.name.startswith(".")]  # no leftovers

    # The name can be used again, for a fresh repository.
    store.create_repo("model", "me/new", "me", private=False)
    assert store.resolve("model", "me/new", "main") != first.id
    assert store.repo("model", "me/new").private is False  # type: ignore[union-attr]


@pytest.mark.parametrize("repo_id", ["me", "me/a/b", "../me/x", "me/..", "me/.hidden", "me/" + "x" * 97, "me/a b"])
def test_create_repo_refuses_bad_ids(tmp_path: Path, repo_id: str) -> None:
    store = Store(tmp_path / "root")
    with pytest.raises(StoreError) as info:
        store.create_repo("model", repo_id, "me", private=False)
    assert info.value.status == 400
    assert list(store.list_repos()) == []


def test_users_and_tokens_persist(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    token = store.ensure_user("me")
    assert store.ensure_user("me") == token
    assert store.user_for_token(token) == "me"
    assert Store(tmp_path / "root").user_for_token(token) == "me"
    other = store.ensure_user("other", "hf_chosen")
    assert other == "hf_chosen"
    with pytest.raises(StoreError):
        store.ensure_user("me", "hf_chosen")  # belongs to another user
    assert store.user_for_token("hf_unknown") is None
    assert json.loads((tmp_path / "root" / "tokens.json").read_text()) == {token: "me", "hf_chosen": "other"}


# -- refs ---------------------------------------------------------------------------------------------


def test_resolve_branches_tags_and_shas(store: Store) -> None:
    first = commit(store, [AddRegular("a.txt", b"a\n")])
    store.create_branch("model", REPO, "dev", None)
    second = commit(store, [AddRegular("b.txt", b"b\n")])
    store.create_tag("model", REPO, "v1", first.id)
    store.create_tag("model", REPO, "feature/tag", "main")

    assert store.resolve("model", REPO, "main") == second.id
    assert store.resolve("model", REPO, "dev") == first.id
    assert store.resolve("model", REPO, "v1") == first.id
    assert store.resolve("model", REPO, "feature/tag") == second.id
    assert store.resolve("model", REPO, "refs/heads/main") == second.id
    assert store.resolve("model", REPO, "refs/heads/dev") == first.id
    assert store.resolve("model", REPO, "refs/tags/v1") == first.id
    assert store.resolve("model", REPO, first.id) == first.id
    assert store.resolve("model", REPO, second.id) == second.id
    assert store.resolve("model", REPO, first.id[:7]) == first.id  # a unique prefix, as the Hub resolves it

    for missing in (
        "nope",
        "refs/heads/v1",
        "refs/tags/main",
        "refs/heads/nope",
        "0" * 40,
        first.id[:6],
        first.id.upper(),
    ):
        with pytest.raises(StoreError) as info:
            store.resolve("model", REPO, missing)
        assert (info.value.status, info.value.code) == (404, "RevisionNotFound"), missing

    # A commit of another repository is not a revision of this one.
    store.create_repo("model", "me/elsewhere", "me", private=False)
    foreign = store.resolve("model", "me/elsewhere", "main")
    with pytest.raises(StoreError) as info:
        store.resolve("model", REPO, foreign)
    assert info.value.code == "RevisionNotFound"


def test_branches_and_tags_are_managed(store: Store) -> None:
    store.create_branch("model", REPO, "dev", None)
    with pytest.raises(StoreError) as info:
        store.create_branch("model", REPO, "dev", None)
    assert info.value.status == 409
    with pytest.raises(StoreError) as info:
        store.create_branch("model", REPO, "from-nowhere", "no-such-rev")
    assert info.value.code == "RevisionNotFound"
    for bad in ("", "a..b", "/x", "x/", "a//b", "x.lock", "refs/pr/1", "refs/tags/x", "a b", "0" * 40):
        with pytest.raises(StoreError) as info:
            store.create_branch("model", REPO, bad, None)
        assert info.value.status == 400, bad
    store.create_branch("model", REPO, "refs/heads/full", None)  # a full ref name stands for the branch
    assert "full" in store.refs("model", REPO)["branches"]
    store.delete_branch("model", REPO, "full")
    with pytest.raises(StoreError) as info:
        store.delete_branch("model", REPO, "main")
    assert info.value.status == 400
    store.delete_branch("model", REPO, "dev")
    assert set(store.refs("model", REPO)["branches"]) == {"main"}

    store.create_tag("model", REPO, "v1", "main")
    with pytest.raises(StoreError) as info:
        store.create_tag("model", REPO, "v1", "main")
    assert info.value.status == 409
    store.delete_tag("model", REPO, "v1")
    with pytest.raises(StoreError) as info:
        store.delete_tag("model", REPO, "v1")
    assert info.value.code == "RevisionNotFound"
    assert store.refs("model", REPO)["tags"] == {}


def test_commit_to_a_branch_moves_only_that_branch(store: Store) -> None:
    base = store.resolve("model", REPO, "main")
    store.create_branch("model", REPO, "dev", None)
    on_dev = commit(store, [AddRegular("dev.txt", b"d\n")], branch="dev")
    assert store.resolve("model", REPO, "dev") == on_dev.id
    assert store.resolve("model", REPO, "main") == base
    with pytest.raises(StoreError) as info:
        commit(store, [AddRegular("x.txt", b"x\n")], branch="no-such-branch")
    assert info.value.code == "RevisionNotFound"


def test_delete_folder_and_missing_file(store: Store) -> None:
    commit(store, [AddRegular("d/a.txt", b"a"), AddRegular("d/e/b.txt", b"b"), AddRegular("dx.txt", b"x")])
    commit(store, [Delete("d/", folder=True)])
    assert set(files_at(store)) == {".gitattributes", "dx.txt"}  # `dx.txt` shares a prefix, not a folder
    with pytest.raises(StoreError) as info:
        commit(store, [Delete("nope.txt", folder=False)])
    assert (info.value.status, info.value.code) == (404, "EntryNotFound")
