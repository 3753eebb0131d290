"""`hubsync prune`: the plan (pure), and the command end to end against the local Hub on a real run's pushes."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError
from hypothesis import given, settings
from hypothesis import strategies as st

from hubsync.cli import cli
from hubsync.core.prune import PruneCandidate, StoredFile, plan_prune, plan_storage
from hubsync.localhub import RunningHub

pytestmark = pytest.mark.xet_and_lfs  # each test runs against a Hub with Xet and one with git-LFS only


def candidates(*steps: int | None) -> list[PruneCandidate]:
    return [
        PruneCandidate(f"checkpoint-{s}" if s is not None else "by-hand", s, f"{i:040x}") for i, s in enumerate(steps)
    ]


def names(decisions: tuple[object, ...]) -> list[str]:
    return [d.revision for d in decisions]  # type: ignore[attr-defined]


def test_plan_keeps_the_newest_n_by_step_not_by_name_or_order() -> None:
    plan = plan_prune("me/m", candidates(100, 20, 300, 1000), keep=2)
    assert names(plan.keep) == ["checkpoint-1000", "checkpoint-300"]
    assert names(plan.delete) == ["checkpoint-100", "checkpoint-20"]
    assert plan.keep[0].reasons == ("newest 2",)
    assert plan.delete[0].reasons == ()


def test_plan_never_touches_main_and_keeps_what_it_cannot_order() -> None:
    revisions = [*candidates(10, 20, None), PruneCandidate("main", None, "f" * 40)]
    plan = plan_prune("me/m", revisions, keep=0)
    assert names(plan.delete) == ["checkpoint-20", "checkpoint-10"]
    assert names(plan.keep) == ["by-hand"]
    assert plan.keep[0].reasons == ("no step number",)
    assert "main" not in names(plan.keep) + names(plan.delete)


def test_plan_keeps_the_best_checkpoint_only_when_asked() -> None:
    revisions = candidates(10, 20, 30, 40)
    assert names(plan_prune("me/m", revisions, keep=1, best_step=20).delete) == [
        "checkpoint-30",
        "checkpoint-20",
        "checkpoint-10",
    ]
    plan = plan_prune("me/m", revisions, keep=1, keep_best=True, best_step=20)
    assert names(plan.keep) == ["checkpoint-40", "checkpoint-20"]
    assert plan.keep[1].reasons == ("best checkpoint",)
    assert plan.best_step == 20
    # The best is also among the newest: one revision, both reasons.
    both = plan_prune("me/m", revisions, keep=1, keep_best=True, best_step=40)
    assert both.keep[0].reasons == ("newest 1", "best checkpoint") and len(both.keep) == 1
    # No record of a best checkpoint: --keep-best keeps nothing more.
    assert names(plan_prune("me/m", revisions, keep=1, keep_best=True, best_step=None).keep) == ["checkpoint-40"]


def test_plan_keeps_branches_whose_head_is_tagged_only_when_asked() -> None:
    revisions = candidates(10, 20, 30)
    tags = {"v1": revisions[0].commit, "paper": revisions[0].commit, "old": "e" * 40}
    assert names(plan_prune("me/m", revisions, keep=1, tags=tags).delete) == ["checkpoint-20", "checkpoint-10"]
    plan = plan_prune("me/m", revisions, keep=1, keep_tagged=True, tags=tags)
    assert names(plan.delete) == ["checkpoint-20"]
    assert plan.keep[-1].reasons == ("tagged paper, v1",)


def test_plan_json_shape() -> None:
    plan = plan_prune("me/m", candidates(10, 20), keep=1, keep_best=True, best_step=10)
    assert plan.to_json() == {
        "repo": "me/m",
        "keep_newest": 1,
        "best_step": 10,
        "keep": [
            {"revision": "checkpoint-20", "step": 20, "commit": f"{1:040x}", "reasons": ["newest 1"]},
            {"revision": "checkpoint-10", "step": 10, "commit": f"{0:040x}", "reasons": ["best checkpoint"]},
        ],
        "delete": [],
        "storage": None,
    }


sha256s = st.text("0123456789abcdef", min_size=64, max_size=64)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(sha256s, st.integers(0, 10**12), st.booleans()), max_size=30),
    st.lists(sha256s, max_size=10),
)
def test_the_storage_plan_deletes_exactly_the_listed_files_no_commit_holds(
    files: list[tuple[str, int, bool]], others: list[str]
) -> None:
    """Whatever the listing (a sha256 listed twice, referenced files the listing lacks), nothing referenced is
    deleted, everything else listed is, and each file's bytes count once."""
    sizes = {sha: size for sha, size, _ in files}  # one size a sha256, as content has
    listed = [StoredFile(f"{i:040x}", sha, sizes[sha], f"f{i}") for i, (sha, _, _) in enumerate(files)]
    referenced = {sha for sha, _, held in files if held} | set(others)
    plan = plan_storage(listed, referenced)
    assert {f.sha256 for f in plan.delete} == {f.sha256 for f in listed} - referenced
    assert not {f.sha256 for f in plan.delete} & referenced
    assert plan.freed_bytes == sum(sizes[sha] for sha in {f.sha256 for f in plan.delete})
    assert plan.kept_files == len({f.sha256 for f in listed} & referenced)
    assert plan.kept_bytes + plan.freed_bytes == sum(sizes.values())


def test_a_listed_file_whose_pointer_a_commit_holds_is_kept_whatever_sha256_the_listing_gives() -> None:
    """A listing that names a held file under another sha256 would have it deleted by its id: the id decides too."""
    held_oid, other = "a" * 40, "b" * 40
    listed = [StoredFile(held_oid, "c" * 64, 10, "weights"), StoredFile(other, "d" * 64, 5, "gone")]
    plan = plan_storage(listed, {"e" * 64, held_oid})
    assert [f.file_oid for f in plan.delete] == [other] and plan.kept_files == 1


# End to end. The run's best checkpoint is checkpoint-10: the Trainer was told that a greater eval_loss is better,
# so that the best is not also the newest.


def hubsync(hub: RunningHub, *args: str):  # type: ignore[no-untyped-def]
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def pushed(best_run: Path, hub: RunningHub, api: HfApi) -> dict[str, str]:
    """The four checkpoints pushed to me/tiny; checkpoint-20's commit tagged v1. Branch -> commit."""
    result = hubsync(hub, "push", str(best_run), "--select", "all", "--repo", "me/tiny")
    assert result.exit_code == 0, result.stderr
    heads = refs(api)[0]
    api.create_tag("me/tiny", tag="v1", revision=heads["checkpoint-20"])
    return heads


def refs(api: HfApi) -> tuple[dict[str, str], dict[str, str]]:
    found = api.list_repo_refs("me/tiny")
    return {b.name: b.target_commit for b in found.branches}, {t.name: t.target_commit for t in found.tags}


def index_revisions(api: HfApi) -> list[str]:
    raw = Path(api.hf_hub_download("me/tiny", ".hubsync/index.json")).read_text()
    return [e["revision"] for e in json.loads(raw)["revisions"]]


def main_commits(api: HfApi) -> int:
    return len(api.list_repo_commits("me/tiny", revision="main"))


def test_prune_deletes_beyond_the_newest_n_and_main_stops_listing_them(
    pushed: dict[str, str], hub: RunningHub, api: HfApi
) -> None:
    before = main_commits(api)
    result = hubsync(hub, "prune", "me/tiny", "--keep", "2")

    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Plan: me/tiny: keep 2, delete 2"
    assert [line.split()[:2] for line in lines[1:5]] == [
        ["keep", "checkpoint-40"],
        ["keep", "checkpoint-30"],
        ["delete", "checkpoint-20"],
        ["delete", "checkpoint-10"],
    ]
    assert "Deleted 2 branches of me/tiny." in result.stdout
    branches, tags = refs(api)
    assert set(branches) == {"main", "checkpoint-30", "checkpoint-40"}
    assert branches["checkpoint-40"] == pushed["checkpoint-40"]  # kept branches are left as they were
    assert tags == {"v1": pushed["checkpoint-20"]}  # tags are never deleted
    assert index_revisions(api) == ["checkpoint-30", "checkpoint-40"]
    card = Path(api.hf_hub_download("me/tiny", "README.md")).read_text()
    assert "[checkpoint-40]" in card and "[checkpoint-10]" not in card and "[checkpoint-20]" not in card
    assert ModelCard(card).data.base_model == "hubsync/tiny-random-llama"  # the metadata survives
    assert main_commits(api) == before + 1  # index and README in one commit

    again = hubsync(hub, "prune", "me/tiny", "--keep", "2")
    assert again.exit_code == 0 and "Deleted 0 branches" in again.stdout
    assert main_commits(api) == before + 1


def test_keep_best_and_keep_tagged(pushed: dict[str, str], hub: RunningHub, api: HfApi) -> None:
    result = hubsync(hub, "prune", "me/tiny", "--keep", "1", "--keep-best")
    assert result.exit_code == 0, result.stderr
    assert "checkpoint-10  step 10  (best checkpoint)" in result.stdout
    assert set(refs(api)[0]) == {"main", "checkpoint-40", "checkpoint-10"}

    result = hubsync(hub, "prune", "me/tiny", "--keep", "0", "--keep-tagged")
    assert result.exit_code == 0, result.stderr
    assert "checkpoint-20" not in result.stdout  # already gone: not a candidate
    assert set(refs(api)[0]) == {"main"}
    assert index_revisions(api) == []


def test_keep_tagged_keeps_the_branch_a_tag_points_to(pushed: dict[str, str], hub: RunningHub, api: HfApi) -> None:
    result = hubsync(hub, "prune", "me/tiny", "--keep", "1", "--keep-tagged")
    assert result.exit_code == 0, result.stderr
    assert "checkpoint-20  step 20  (tagged v1)" in result.stdout
    assert set(refs(api)[0]) == {"main", "checkpoint-40", "checkpoint-20"}
    assert index_revisions(api) == ["checkpoint-20", "checkpoint-40"]


def test_dry_run_prints_the_plan_and_changes_nothing(pushed: dict[str, str], hub: RunningHub, api: HfApi) -> None:
    before = refs(api)
    result = hubsync(hub, "prune", "me/tiny", "--keep", "1", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Plan (dry run): me/tiny: keep 1, delete 3\n")
    assert result.stdout.endswith("Nothing was deleted (dry run).\n")
    assert refs(api) == before

    as_json = hubsync(hub, "prune", "me/tiny", "--keep", "1", "--dry-run", "--json")
    assert as_json.exit_code == 0
    assert list(json.loads(as_json.stdout)) == ["plan"]
    assert refs(api) == before


def test_json_prints_the_plan_and_the_result(pushed: dict[str, str], hub: RunningHub, api: HfApi) -> None:
    result = hubsync(hub, "prune", "me/tiny", "--keep", "3", "--keep-best", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["plan"]["repo"] == "me/tiny" and out["plan"]["best_step"] == 10
    kept = [d["revision"] for d in out["plan"]["keep"]]
    assert kept == ["checkpoint-40", "checkpoint-30", "checkpoint-20", "checkpoint-10"]
    assert out["plan"]["delete"] == []
    assert out["plan"]["storage"] == {"delete": [], "freed_bytes": 0, "kept_files": 4, "kept_bytes": stored_bytes(api)}
    assert out["result"]["deleted"] == [] and out["result"]["index_commit"] is None
    assert out["result"]["storage"]["deleted_files"] == 0 and out["result"]["storage"]["freed_bytes"] == 0

    result = hubsync(hub, "prune", "me/tiny", "--keep", "3", "--json")
    out = json.loads(result.stdout)
    assert out["plan"]["delete"] == [
        {"revision": "checkpoint-10", "step": 10, "commit": pushed["checkpoint-10"], "reasons": []}
    ]
    assert out["result"]["deleted"] == ["checkpoint-10"]
    assert out["result"]["index_commit"] == refs(api)[0]["main"]


def test_a_missing_repository_and_a_bad_keep(hub: RunningHub) -> None:
    result = hubsync(hub, "prune", "me/nothing", "--keep", "1")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: repository me/nothing not found")
    bad = hubsync(hub, "prune", "me/tiny", "--keep", "-1")
    assert bad.exit_code == 2
    assert "--keep" in bad.stderr


def test_prune_without_a_token_says_so(hub: RunningHub) -> None:
    result = CliRunner(env={"HF_TOKEN": None}).invoke(
        cli, ["prune", "me/tiny", "--keep", "1", "--endpoint", hub.endpoint]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: no Hugging Face token for") and result.stderr.count("\n") == 1


def test_damaged_trainer_state_on_the_hub_is_no_traceback(hub: RunningHub, api: HfApi) -> None:
    api.create_repo("me/damaged")
    api.create_branch("me/damaged", branch="checkpoint-5")
    deep = b"[" * 100_000 + b"]" * 100_000
    api.upload_file(
        path_or_fileobj=deep, path_in_repo="trainer_state.json", repo_id="me/damaged", revision="checkpoint-5"
    )
    result = hubsync(hub, "prune", "me/damaged", "--keep", "1", "--keep-best", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "checkpoint-5" in result.stdout


def test_a_branch_that_moved_after_the_plan_is_not_deleted(pushed: dict[str, str], hub: RunningHub, api: HfApi) -> None:
    from hubsync.hub.client import HubClient
    from hubsync.hub.prune import execute_prune, prune_inputs

    client = HubClient(hub.endpoint, hub.token)
    found = prune_inputs(client, "me/tiny")
    plan = plan_prune(
        "me/tiny", found.revisions, keep=1, keep_best=False, keep_tagged=False, tags=found.tags, best_step=None
    )
    moved = plan.delete[0].revision
    api.upload_file(path_or_fileobj=b"new", path_in_repo="notes.txt", repo_id="me/tiny", revision=moved)
    result = execute_prune(plan, client)
    assert moved not in result.deleted and set(result.deleted) == {d.revision for d in plan.delete} - {moved}
    assert moved in {b.name for b in api.list_repo_refs("me/tiny").branches}


# Storage: what the Hub's own listings say, not hubsync's output.


def stored(api: HfApi, repo: str = "me/tiny") -> dict[str, int]:
    """sha256 -> size of every file of the repository's storage, as HfApi.list_lfs_files lists them."""
    return {f.oid: f.size for f in api.list_lfs_files(repo)}


def stored_bytes(api: HfApi, repo: str = "me/tiny") -> int:
    return sum(stored(api, repo).values())


def held(api: HfApi, repo: str = "me/tiny") -> set[str]:
    """The sha256 of every LFS file of every commit of every branch and tag, walked with the real client."""
    found = api.list_repo_refs(repo)
    commits = {
        c.commit_id
        for ref in [*found.branches, *found.tags]
        for c in api.list_repo_commits(repo, revision=ref.target_commit)
    }
    return {
        f.lfs.sha256
        for commit in commits
        for f in api.list_repo_tree(repo, revision=commit, recursive=True)
        if getattr(f, "lfs", None) is not None
    }


def used(api: HfApi, repo: str = "me/tiny") -> int:
    return int(api.model_info(repo, expand=["usedStorage"]).used_storage)  # type: ignore[list-item]


def test_prune_frees_the_storage_of_deleted_branches_and_keeps_every_file_still_held(
    pushed: dict[str, str], hub: RunningHub, api: HfApi
) -> None:
    before, used_before = stored(api), used(api)
    adapter = {
        b: api.get_paths_info("me/tiny", ["adapter_model.safetensors"], revision=c)[0].lfs.sha256
        for b, c in pushed.items()
        if b != "main"
    }  # type: ignore[union-attr]
    assert set(adapter.values()) <= set(before) and len(set(adapter.values())) == 4

    result = hubsync(hub, "prune", "me/tiny", "--keep", "2", "--json")

    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    after = stored(api)
    assert set(after) == held(api)  # exactly the files still referenced
    assert adapter["checkpoint-20"] in after  # tag v1 still points to checkpoint-20's commit
    assert adapter["checkpoint-10"] not in after and adapter["checkpoint-40"] in after
    freed = sum(size for sha, size in before.items() if sha not in after)
    assert out["result"]["storage"]["freed_bytes"] == freed > 0
    assert used(api) < used_before  # less a little: main's new index commit is stored too (exact: the next test)
    assert out["result"]["storage"]["used_storage"] == used(api)
    with pytest.raises(HfHubHTTPError):  # the deleted branch's commit can no longer be downloaded by its id
        api.hf_hub_download("me/tiny", "adapter_model.safetensors", revision=pushed["checkpoint-10"])
    for revision in ("checkpoint-40", "v1"):  # what stays is whole
        path = api.hf_hub_download("me/tiny", "adapter_model.safetensors", revision=revision)
        branch = "checkpoint-20" if revision == "v1" else revision
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == adapter[branch]

    again = hubsync(hub, "prune", "me/tiny", "--keep", "2")
    assert again.exit_code == 0 and "storage: delete 0 files (0 B)" in again.stdout
    assert stored(api) == after


def test_the_plan_shows_the_files_and_bytes_first_and_keep_storage_deletes_branches_only(
    pushed: dict[str, str], hub: RunningHub, api: HfApi
) -> None:
    before = stored(api)
    dry = hubsync(hub, "prune", "me/tiny", "--keep", "1", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert "  storage: delete " in dry.stdout and "    delete  adapter_model.safetensors  " in dry.stdout
    assert stored(api) == before

    kept = hubsync(hub, "prune", "me/tiny", "--keep", "1", "--keep-storage")
    assert kept.exit_code == 0, kept.stderr
    assert "storage: kept (--keep-storage)" in kept.stdout and "freed" not in kept.stdout
    assert set(refs(api)[0]) == {"main", "checkpoint-40"} and stored(api) == before  # branches only

    used_before = used(api)
    later = hubsync(hub, "prune", "me/tiny", "--keep", "1")  # a later prune frees what the earlier one left
    assert later.exit_code == 0, later.stderr
    freed = sum(size for sha, size in before.items() if sha not in stored(api))
    assert used_before - used(api) == freed > 0  # no branch deleted, no index commit: exactly the files' bytes
    assert set(stored(api)) == held(api) and len(stored(api)) < len(before)
    assert "storage: freed " in later.stdout and "permanently deleted" in later.stdout


def test_a_file_that_a_commit_made_after_the_plan_holds_is_spared(
    pushed: dict[str, str], hub: RunningHub, api: HfApi
) -> None:
    from hubsync.api import plan_prune as plan_with_storage
    from hubsync.api import prune

    plan = plan_with_storage("me/tiny", 3, endpoint=hub.endpoint, token=hub.token)
    assert plan.storage is not None and plan.storage.delete
    doomed = plan.storage.delete[0]
    # Meanwhile another push lands the same bytes on a new branch: the Hub keeps one copy, now held again.
    content = Path(api.hf_hub_download("me/tiny", doomed.filename or "", revision=pushed["checkpoint-10"])).read_bytes()
    api.create_branch("me/tiny", branch="copy")
    upload = io.BytesIO(content)  # a buffer: through git-LFS also where huggingface_hub would take Xet
    api.upload_file(path_or_fileobj=upload, path_in_repo="again.safetensors", repo_id="me/tiny", revision="copy")

    outcome = prune(plan, endpoint=hub.endpoint, token=hub.token)

    assert outcome.result is not None and outcome.result.storage is not None
    assert outcome.result.storage.spared == 1 and doomed.sha256 in stored(api)
    assert set(stored(api)) == held(api)
    again = api.hf_hub_download("me/tiny", "again.safetensors", revision="copy", force_download=True)
    assert Path(again).read_bytes() == content


def test_the_files_of_a_pull_request_are_kept(best_run: Path, hub: RunningHub, api: HfApi) -> None:
    """huggingface.co lists refs/pr/N only when asked (include_prs=1): a conversion bot's safetensors PR holds a
    file no branch holds, which a prune must not delete. The local Hub has no pull requests, so a proxy answers
    as huggingface.co would, the branch "pr-1" standing for refs/pr/1."""
    from hostile_proxy import ProxyHandler, serve

    class PullRequests(ProxyHandler):
        def do_GET(self) -> None:
            status, headers, data = self.ask_upstream(b"")
            if self.path.split("?")[0].endswith("/refs") and status == 200:
                body = json.loads(data)
                pr = [b for b in body["branches"] if b["name"] == "pr-1"]
                body["branches"] = [b for b in body["branches"] if b["name"] != "pr-1"]
                asked = "include_prs=1" in self.path
                body["pullRequests"] = [dict(pr[0], name="refs/pr/1", ref="refs/pr/1")] if pr and asked else []
                data = json.dumps(body).encode()
            self.answer(status, headers, data)

        def do_POST(self) -> None:
            self.answer(*self.ask_upstream(self.request_body()))

        do_DELETE = do_POST

    assert hubsync(hub, "push", str(best_run), "--select", "all", "--repo", "me/tiny").exit_code == 0
    api.create_branch("me/tiny", branch="pr-1", revision="main")
    converted = b"\x01" * 5000
    api.upload_file(
        path_or_fileobj=io.BytesIO(converted), path_in_repo="model.safetensors", repo_id="me/tiny", revision="pr-1"
    )
    with serve(PullRequests, hub.endpoint) as endpoint:
        env = {"HF_ENDPOINT": endpoint, "HF_TOKEN": hub.token}
        result = CliRunner().invoke(cli, ["prune", "me/tiny", "--keep", "1"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "storage: freed " in result.stdout  # the deleted branches' files went
    assert hashlib.sha256(converted).hexdigest() in stored(api)  # the pull request's did not
    assert "model.safetensors" in {f.path for f in api.list_repo_tree("me/tiny", revision="pr-1")}  # not rewritten
