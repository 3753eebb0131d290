"""Retention as a policy: the keep settings make push, watch and HubsyncCallback prune after each push that lands,
through the real client against the local Hub, on a real run's checkpoints.

The local Hub's routes for the storage part of a prune (the LFS listing and its deletion) come later: every policy
here deletes branches only (keep-storage). The same tests with keep-storage off would cover storage too."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from huggingface_hub import HfApi

import hubsync
from hubsync.api import Pruned
from hubsync.cli import cli
from hubsync.core.errors import RetentionError, SettingError
from hubsync.core.prune import PruneCandidate, RetentionPolicy, plan_prune
from hubsync.core.watch import PushedCheckpoint, WatchState, check_against_hub
from hubsync.localhub import RunningHub
from hubsync.tinyrun import train_tiny_lora

REPO = "me/tiny"


@pytest.fixture
def run(best_run: Path, tmp_path: Path) -> Path:
    """A private copy of the run, in a project folder (a hubsync.toml may go beside it)."""
    return Path(shutil.copytree(best_run, tmp_path / "project" / "out" / "four"))


def hubsync_cli(hub: RunningHub, *args: str, env: dict[str, str] | None = None) -> Result:
    environ = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token, **(env or {})}
    return CliRunner().invoke(cli, list(args), env=environ, catch_exceptions=False)


def branches(api: HfApi, repo: str = REPO) -> set[str]:
    return {b.name for b in api.list_repo_refs(repo).branches}


def index_revisions(api: HfApi, repo: str = REPO) -> list[str]:
    raw = Path(api.hf_hub_download(repo, ".hubsync/index.json")).read_text()
    return sorted(e["revision"] for e in json.loads(raw)["revisions"])


# The plan (pure).


def test_the_branch_just_pushed_is_spared_whatever_its_step() -> None:
    revisions = [PruneCandidate(f"checkpoint-{s}", s, f"{s:040x}") for s in (10, 20, 30, 40)]
    plan = plan_prune(REPO, revisions, keep=1, spare=("checkpoint-10",))
    assert [d.revision for d in plan.keep] == ["checkpoint-40", "checkpoint-10"]
    assert plan.keep[1].reasons == ("just pushed",)
    assert [d.revision for d in plan.delete] == ["checkpoint-30", "checkpoint-20"]
    # Among the newest: both reasons, one revision.
    assert plan_prune(REPO, revisions, keep=2, spare=("checkpoint-40",)).keep[0].reasons == ("newest 2", "just pushed")


def test_a_policy_keeps_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetentionPolicy(0)
    assert RetentionPolicy(2, keep_best=True, keep_storage=True).describe() == (
        "keep the 2 newest checkpoint branches, and the best; storage kept (branches only)"
    )


def test_a_restarted_watch_does_not_push_again_what_the_policy_pruned() -> None:
    pushed = {s: PushedCheckpoint(s, f"checkpoint-{s}", f"{s:040x}") for s in (10, 20, 30)}
    state = WatchState(REPO, pushed=pushed)
    hub_branches = {"main": "f" * 40, "checkpoint-30": f"{30:040x}"}
    check = check_against_hub(state, hub_branches, present={10, 20, 30}, keep=1)
    assert sorted(check.state.pushed) == [10, 20, 30] and check.push_again == ()
    assert check.pruned == (10, 20)
    # Without a policy, a gone branch whose folder is there is pushed again, as before.
    assert check_against_hub(state, hub_branches, present={10, 20, 30}).push_again == (10, 20)
    # The newest recorded one gone is not the policy's doing: pushed again.
    assert check_against_hub(state, {"main": "f" * 40}, present={30}, keep=1).push_again == (30,)


# push, end to end.


def test_push_with_keep_2_of_4_checkpoints_leaves_2_branches(run: Path, hub: RunningHub, api: HfApi) -> None:
    result = hubsync_cli(hub, "push", str(run), "--select", "all", "--repo", REPO, "--keep", "2", "--keep-storage")
    assert result.exit_code == 0, result.stderr
    assert branches(api) == {"main", "checkpoint-30", "checkpoint-40"}
    assert index_revisions(api) == ["checkpoint-30", "checkpoint-40"]
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("Retention:"))
    assert lines[at] == (
        "Retention: keep the 2 newest checkpoint branches; storage kept (branches only): deleted checkpoint-20, "
        f"checkpoint-10 of {REPO}; kept checkpoint-40, checkpoint-30."
    )
    assert lines[at + 1].startswith("  main:   the index no longer lists them (commit ")
    assert all(not line.startswith("Pushed") for line in lines[at:])  # after every push, once
    assert result.stderr == ""


def test_the_policy_frees_the_storage_of_what_it_deletes(run: Path, hub: RunningHub, api: HfApi) -> None:
    """keep-storage off (the default): after the push, the Hub's LFS listing holds exactly what the remaining
    branches' commits hold, as HfApi walks them."""
    result = hubsync_cli(hub, "push", str(run), "--select", "all", "--repo", REPO, "--keep", "1")
    assert result.exit_code == 0, result.stderr
    assert branches(api) == {"main", "checkpoint-40"}
    assert "  storage: freed " in result.stdout and "permanently deleted" in result.stdout
    refs = api.list_repo_refs(REPO)
    commits = {
        c.commit_id
        for ref in [*refs.branches, *refs.tags]
        for c in api.list_repo_commits(REPO, revision=ref.target_commit)
    }
    held = {
        f.lfs.sha256
        for commit in commits
        for f in api.list_repo_tree(REPO, revision=commit, recursive=True)
        if getattr(f, "lfs", None) is not None
    }
    assert held and {f.oid for f in api.list_lfs_files(REPO)} == held


def test_push_dry_run_says_what_the_policy_would_delete_and_deletes_nothing(
    run: Path, hub: RunningHub, api: HfApi
) -> None:
    assert hubsync_cli(hub, "push", str(run), "--select", "all", "--repo", REPO).exit_code == 0
    before = {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}
    result = hubsync_cli(hub, "push", str(run / "checkpoint-40"), "--repo", REPO, "--keep", "1", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert (
        "Retention (dry run): after the push, keep the 1 newest checkpoint branch; then free the storage of what it "
        "deletes: would delete checkpoint-30, checkpoint-20, checkpoint-10; keep checkpoint-40." in result.stdout
    )
    assert "Nothing is deleted (dry run)." in result.stdout
    assert {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches} == before
    # --json: the would-be plan, as prune's.
    shown = json.loads(hubsync_cli(hub, "push", str(run), "--repo", REPO, "--keep", "3", "--dry-run", "--json").stdout)
    assert [d["revision"] for d in shown["retention"]["plan"]["delete"]] == ["checkpoint-10"]
    assert "result" not in shown["retention"]


def test_a_dry_run_to_a_missing_repository_plans_with_the_pushed_revisions(run: Path, hub: RunningHub) -> None:
    result = hubsync_cli(hub, "push", str(run), "--select", "all", "--repo", REPO, "--keep", "3", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "would delete checkpoint-10; keep checkpoint-40, checkpoint-30, checkpoint-20." in result.stdout


def test_the_branch_just_pushed_stays_when_older_ones_are_newer(run: Path, hub: RunningHub, api: HfApi) -> None:
    assert hubsync_cli(hub, "push", str(run), "--select", "all", "--repo", REPO).exit_code == 0
    result = hubsync_cli(hub, "push", str(run / "checkpoint-10"), "--repo", REPO, "--keep", "1", "--keep-storage")
    assert result.exit_code == 0, result.stderr
    assert branches(api) == {"main", "checkpoint-10", "checkpoint-40"}


def test_the_policy_from_the_configuration_file_after_each_push(run: Path, hub: RunningHub, api: HfApi) -> None:
    (run / "hubsync.toml").write_text(f'repo = "{REPO}"\nkeep = 2\nkeep-best = true\nkeep-storage = true\n')
    for step in (10, 20, 30, 40):
        result = hubsync_cli(hub, "push", str(run / f"checkpoint-{step}"))
        assert result.exit_code == 0, result.stderr
        assert len(branches(api) - {"main"}) <= 3  # the 2 newest and the best
    # checkpoint-10 is the best (the run's record says so): kept besides the 2 newest.
    assert branches(api) == {"main", "checkpoint-10", "checkpoint-30", "checkpoint-40"}
    # --no-keep clears the file's policy: nothing is pruned.
    result = hubsync_cli(hub, "push", str(run / "checkpoint-20"), "--no-keep")
    assert result.exit_code == 0 and "Retention" not in result.stdout
    assert "checkpoint-20" in branches(api)


def test_the_policy_from_variables(run: Path, hub: RunningHub, api: HfApi) -> None:
    env = {"HUBSYNC_KEEP": "1", "HUBSYNC_KEEP_STORAGE": "true"}
    result = hubsync_cli(hub, "push", str(run), "--select", "all", "--repo", REPO, "--json", env=env)
    assert result.exit_code == 0, result.stderr
    assert branches(api) == {"main", "checkpoint-40"}
    shown = json.loads(result.stdout)
    assert shown["retention"]["keep"] == 1
    assert sorted(shown["retention"]["result"]["deleted"]) == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]
    # A flag over the variable: keep 3 from now on.
    env["HUBSYNC_KEEP"] = "3"
    result = hubsync_cli(hub, "push", str(run), "--select", "all", "--repo", REPO, "--keep", "2", env=env)
    assert result.exit_code == 0, result.stderr
    assert branches(api) == {"main", "checkpoint-30", "checkpoint-40"}


def test_a_failed_policy_prune_after_the_push_says_the_push_is_done_and_exits_1(
    run: Path, hub: RunningHub, api: HfApi
) -> None:
    assert hubsync_cli(hub, "push", str(run), "--select", "all", "--repo", REPO).exit_code == 0
    hub.server.inject_fault("DELETE", r"/branch/", 403, times=10**6)
    result = hubsync_cli(hub, "push", str(run / "checkpoint-40"), "--repo", REPO, "--keep", "1", "--keep-storage")
    assert result.exit_code == 1
    assert result.stdout.startswith("Already up to date: ")  # the push's own lines first
    assert result.stderr.startswith(f"Error: Pushed checkpoint-40 to {REPO}, but then the retention policy")
    assert f"The push stays done; prune later with `hubsync prune {REPO} --keep 1`" in result.stderr
    assert "Traceback" not in result.stderr
    hub.server.clear_faults()
    assert "checkpoint-10" in branches(api)


def test_the_library_reports_the_policy_and_refuses_keep_0(run: Path, hub: RunningHub, api: HfApi) -> None:
    events: list[object] = []
    hubsync.push(
        run,
        REPO,
        select="all",
        keep=2,
        keep_storage=True,
        endpoint=hub.endpoint,
        token=hub.token,
        report=events.append,
    )
    (pruned,) = [e for e in events if isinstance(e, Pruned)]
    assert pruned.retained.result is not None
    assert sorted(pruned.retained.result.deleted) == ["checkpoint-10", "checkpoint-20"]
    with pytest.raises(SettingError, match=r"^keep= must be a whole number from 1 to 1,000,000"):
        hubsync.push(run, REPO, keep=0, endpoint=hub.endpoint, token=hub.token)
    with pytest.raises(SettingError, match="keep= must be"):
        hubsync.plan_push(run, REPO, keep=True)
    assert issubclass(RetentionError, hubsync.errors.HubsyncError)


# watch and the callback.


def test_watch_with_the_policy_stays_within_n_and_a_restart_pushes_nothing_again(
    run: Path, hub: RunningHub, api: HfApi
) -> None:
    args = ["watch", str(run), "--repo", REPO, "--keep", "2", "--keep-storage", "--idle-timeout", "5"]
    result = hubsync_cli(hub, *args, "--interval", "0.05", "--nice", "0")
    assert result.exit_code == 0, result.stderr
    assert branches(api) == {"main", "checkpoint-30", "checkpoint-40"}
    retention = [line for line in result.stdout.splitlines() if line.startswith("Retention:")]
    assert len(retention) == 4  # after each push
    assert retention[-1].endswith(f"deleted checkpoint-20 of {REPO}; kept checkpoint-40, checkpoint-30.")
    assert result.stdout.splitlines()[-1] == (
        f"Done: the run finished; 2 checkpoints on {REPO}; pruned by the retention policy: checkpoint-10, "
        "checkpoint-20."
    )
    commits = {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}

    again = hubsync_cli(hub, *args, "--interval", "0.05", "--nice", "0")
    assert again.exit_code == 0, again.stderr
    assert "Pushed" not in again.stdout and "Not on the Hub" not in again.stderr
    assert again.stdout.splitlines()[-1] == result.stdout.splitlines()[-1]
    assert {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches} == commits


def test_watch_reports_a_failed_policy_prune_and_goes_on(run: Path, hub: RunningHub, api: HfApi) -> None:
    hub.server.inject_fault("DELETE", r"/branch/", 403, times=10**6)
    args = ["watch", str(run), "--repo", REPO, "--keep", "1", "--keep-storage", "--idle-timeout", "5"]
    result = hubsync_cli(hub, *args, "--interval", "0.05", "--nice", "0")
    assert result.exit_code == 0, result.stderr
    assert branches(api) == {"main", "checkpoint-10", "checkpoint-20", "checkpoint-30", "checkpoint-40"}
    failed = [line for line in result.stderr.splitlines() if line.startswith("Retention: the prune after")]
    assert len(failed) == 3  # after 20, 30 and 40 (after 10 there was nothing to delete)
    assert "the push stays done, and the policy runs again after the next push." in failed[-1]
    hub.server.clear_faults()


def test_the_callback_with_the_policy_keeps_one_revision(
    hub: RunningHub, api: HfApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    caplog.set_level(logging.INFO, logger="hubsync")
    with pytest.raises(SettingError, match="keep= must be a whole number from 1"):
        hubsync.HubsyncCallback("me/trained", keep=0)
    callback = hubsync.HubsyncCallback("me/trained", keep=1, keep_storage=True, worker="thread")
    train_tiny_lora(tmp_path / "out" / "run", max_steps=30, save_steps=10, callbacks=[callback])
    assert callback.pending == []
    assert branches(api, "me/trained") == {"main", "checkpoint-30"}
    assert index_revisions(api, "me/trained") == ["checkpoint-30"]
    said = [m for m in caplog.messages if m.startswith("hubsync: retention (keep 1)")]
    assert said[-1] == "hubsync: retention (keep 1): deleted checkpoint-20; 1 checkpoint branches kept"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
