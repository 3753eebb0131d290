"""`hubsync watch`: its decisions (pure), and the real thing: a tiny Trainer run in one process, `hubsync watch`
in another, the local Hub over loopback in the test process. Every checkpoint must reach the Hub exactly once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from click.testing import CliRunner
from conftest import SummaryLines, each_on_the_hub_exactly_once, local_hub
from huggingface_hub import HfApi

from hubsync.cli import cli
from hubsync.core.errors import WatchStateError
from hubsync.core.watch import (
    PushedCheckpoint,
    SkippedCheckpoint,
    WatchState,
    check_against_hub,
    dump_state,
    has_pending,
    next_step,
    observe_run,
    parse_state,
    run_folder_problem,
)
from hubsync.localhub import RunningHub

pytestmark = pytest.mark.xet_and_lfs  # each test runs against a Hub with Xet and one with git-LFS only

REPO = "me/watched"
STEPS = [10, 20, 30]

# The pure decisions.

A = (("adapter_model.safetensors", 100, 1), ("trainer_state.json", 10, 2))


def test_a_checkpoint_is_complete_when_trainer_state_is_there_and_two_looks_agree() -> None:
    state = WatchState(REPO)
    first = next_step(None, {10: A}, state)
    assert first.push == () and first.state.seen == {10}
    assert next_step({10: A}, {10: A}, state).push == (10,)
    grown = (("adapter_model.safetensors", 200, 3), ("trainer_state.json", 10, 2))
    assert next_step({10: A}, {10: grown}, state).push == ()  # still being written
    no_state = (("adapter_model.safetensors", 100, 1),)
    assert next_step({10: no_state}, {10: no_state}, state).push == ()  # the Trainer writes trainer_state last
    pushed = WatchState(REPO, {10: PushedCheckpoint(10, "checkpoint-10", "c" * 40)})
    assert next_step({10: A}, {10: A, 20: A}, pushed).push == ()  # 20 seen once only; 10 pushed already


def test_a_checkpoint_seen_and_gone_before_it_was_pushed_is_lost_once() -> None:
    state = WatchState(REPO, {20: PushedCheckpoint(20, "checkpoint-20", "c" * 40)}, seen=frozenset({10, 20}))
    step = next_step({10: A, 20: None}, {30: A}, state)
    assert step.lost == (10,)  # 20 is gone too, but it was pushed
    assert step.state.lost == (10,) and step.state.seen == {10, 20, 30}
    assert next_step({30: A}, {30: A}, step.state).lost == ()
    vanished = next_step({10: A}, {10: ()}, WatchState(REPO, seen=frozenset({10})))  # deleted while looked at
    assert vanished.lost == (10,) and vanished.push == ()


def test_a_skipped_checkpoint_is_tried_again_only_when_its_files_change() -> None:
    state = WatchState(REPO).with_skipped(SkippedCheckpoint(20, "cannot read it", files=A))
    step = next_step({20: A}, {20: A}, state)
    assert step.push == () and not has_pending({20: A}, state)  # skipped as it is: nothing waits for it
    fixed = (("adapter_model.safetensors", 100, 1), ("trainer_state.json", 12, 5))
    assert next_step({20: A}, {20: fixed}, state).push == () and has_pending({20: fixed}, state)
    assert next_step({20: fixed}, {20: fixed}, state).push == (20,)  # changed, then two looks agree
    restarted = WatchState(REPO).with_skipped(SkippedCheckpoint(20, "cannot read it"))  # files unknown: once more
    assert next_step({20: A}, {20: A}, restarted).push == (20,)
    gone = next_step({20: A}, {}, replace(state, seen=frozenset({20})))
    assert gone.lost == (20,) and gone.state.skipped == {}
    pushed = state.with_pushed(PushedCheckpoint(20, "checkpoint-20", "c" * 40), final=False)
    assert pushed.skipped == {}


def test_the_record_is_checked_against_the_hub_branches() -> None:
    recorded = {
        s: PushedCheckpoint(s, f"checkpoint-{s}", c * 40) for s, c in ((10, "a"), (20, "b"), (30, "c"), (40, "d"))
    }
    state = WatchState(REPO, recorded, frozenset({10, 20, 30, 40}), final_step=40)
    branches = {"main": "m" * 40, "checkpoint-10": "a" * 40, "checkpoint-20": "f" * 40, "checkpoint-40": "d" * 40}
    check = check_against_hub(state, branches, present={20, 40})
    assert set(check.state.pushed) == {10, 40}  # 20 moved on, 30 is gone (pruned, or another Hub)
    assert check.push_again == (20,)
    assert check.forgotten == (30,)  # gone from the run folder too: nothing to push, and not "lost"
    assert check.state.seen == {10, 20, 40} and check.state.final_step == 40
    assert next_step(None, {20: A, 40: None}, check.state).lost == ()
    assert check_against_hub(state, {}, present=set()).state.pushed == {}  # no such repository


def test_a_checkpoint_folder_is_not_a_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoint-10").mkdir(parents=True)
    (run / "checkpoint-10" / "trainer_state.json").write_text("{}")
    assert run_folder_problem(run) is None
    assert run_folder_problem(tmp_path / "not-yet") is None
    assert run_folder_problem(run / "checkpoint-10") == "its name is that of a checkpoint"
    assert run_folder_problem(run / "checkpoint-20") == "its name is that of a checkpoint"  # not there yet
    (run / "trainer_state.json").write_text("{}")  # trainer.save_state() at the end: still a run folder
    assert run_folder_problem(run) is None
    final = tmp_path / "final-model"
    final.mkdir()
    (final / "trainer_state.json").write_text("{}")
    assert run_folder_problem(final) == "it holds trainer_state.json and no checkpoint-N folders"


def test_the_run_is_finished_when_its_final_checkpoint_is_pushed() -> None:
    record = PushedCheckpoint(40, "checkpoint-40", "c" * 40)
    assert not next_step({40: A}, {40: A}, WatchState(REPO)).finished
    state = WatchState(REPO).with_pushed(record, final=True)
    assert state.final_step == 40 and next_step({40: None}, {40: None}, state).finished
    assert not next_step(None, {40: None}, WatchState(REPO).with_pushed(record, final=False)).finished
    assert not next_step(None, {40: None, 50: A}, state).finished  # resumed with more steps: not done yet
    # Restarted after 30 was pruned on the Hub: it is ready only at the second look, and must be pushed first.
    assert not next_step(None, {30: A, 40: None}, state).finished
    assert next_step({30: A, 40: None}, {30: A, 40: None}, state).push == (30,)
    no_state = (("adapter_model.safetensors", 100, 1),)
    assert next_step(None, {30: no_state, 40: None}, state).finished  # never complete: it does not hold the end


HUB = "http://hub.example"


def test_the_state_file_round_trips_and_keeps_other_repositories() -> None:
    other = dump_state(WatchState("me/other", seen=frozenset({5}), endpoint=HUB), None)
    skipped = {20: SkippedCheckpoint(20, "cannot read checkpoint-20/trainer_state.json: no")}
    pushed = {10: PushedCheckpoint(10, "checkpoint-10", "a" * 40)}
    state = WatchState(REPO, pushed, frozenset({10, 20, 30}), (30,), 10, skipped, HUB)
    raw = dump_state(state, other)
    assert parse_state(raw, HUB, REPO, "w.json") == state
    assert parse_state(raw, HUB, "me/other", "w.json").seen == {5}
    assert parse_state(raw, HUB, "me/new", "w.json") == WatchState("me/new", endpoint=HUB)


def test_the_record_of_one_hub_is_not_taken_for_another() -> None:
    state = WatchState(REPO, {10: PushedCheckpoint(10, "checkpoint-10", "a" * 40)}, frozenset({10}), endpoint=HUB)
    raw = dump_state(state, None)
    assert parse_state(raw, "http://127.0.0.1:9", REPO, "w.json") == WatchState(REPO, endpoint="http://127.0.0.1:9")
    both = dump_state(WatchState(REPO, seen=frozenset({7}), endpoint="http://127.0.0.1:9"), raw)
    assert parse_state(both, HUB, REPO, "w.json") == state
    assert parse_state(both, "http://127.0.0.1:9", REPO, "w.json").seen == {7}


def test_a_record_of_version_1_names_no_hub_and_is_taken_to_be_checked() -> None:
    v1 = {
        "version": 1,
        "repos": {
            REPO: {"pushed": [{"step": 10, "revision": "checkpoint-10", "commit": "a" * 40}], "seen": [10], "lost": []},
            "me/other": {"pushed": [], "seen": [5], "lost": [], "final_step": None},
        },
    }
    raw = json.dumps(v1).encode()
    state = parse_state(raw, HUB, REPO, "w.json")
    assert state.pushed == {10: PushedCheckpoint(10, "checkpoint-10", "a" * 40)} and state.endpoint == HUB
    rewritten = dump_state(state, raw)  # now named by its Hub; the other repository's record is kept, Hub unknown
    records = json.loads(rewritten)["records"]
    assert [(r["endpoint"], r["repo"]) for r in records] == [(None, "me/other"), (HUB, REPO)]
    assert parse_state(rewritten, "http://elsewhere", "me/other", "w.json").seen == {5}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "it is not valid JSON (Expecting property name"),
        (b"[]", "it is not a JSON object"),
        (b'{"version": 3, "records": []}', "unsupported version 3"),
        (b'{"repos": {}}', "it has no version"),
        (b'{"version": 2}', "it has no 'records' list"),
        (b'{"version": 1}', "it has no 'repos' table"),
        (
            b'{"version": 1, "repos": {"me/watched": {"pushed": [], "seen": []}}}',
            "the record of me/watched has no 'lost' list of step numbers",
        ),
        (
            b'{"version": 1, "repos": {"me/watched": {"pushed": [{"step": "x"}], "seen": [], "lost": []}}}',
            "the record of me/watched lists a pushed checkpoint without its step, revision and commit",
        ),
        (
            b'{"version": 2, "records": [{"endpoint": null, "repo": "me/watched", "pushed": [], "seen": [], '
            b'"lost": [], "final_step": "30"}]}',
            "the record of me/watched has a 'final_step' that is not a step number",
        ),
    ],
)
def test_a_damaged_state_file_is_explained_in_words(content: bytes, reason: str) -> None:
    with pytest.raises(WatchStateError) as caught:
        parse_state(content, HUB, REPO, "w.json")
    assert caught.value.reason.startswith(reason), caught.value.reason
    assert "Error" not in caught.value.reason


def test_a_look_ignores_staging_folders_and_never_writes(tmp_path: Path) -> None:
    for name in ("checkpoint-10", "tmp-checkpoint-20", "checkpoint-x", "runs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-30").write_text("a file, not a folder")
    before = sorted(p.as_posix() for p in tmp_path.rglob("*"))
    seen = observe_run(tmp_path, skip={10})
    assert seen == {10: None}
    assert observe_run(tmp_path, skip=set())[10] == (
        ("trainer_state.json", 2, os.stat(tmp_path / "checkpoint-10" / "trainer_state.json").st_mtime_ns),
    )
    assert sorted(p.as_posix() for p in tmp_path.rglob("*")) == before
    assert observe_run(tmp_path / "not-yet", skip=set()) == {}


def test_a_damaged_state_file_and_a_missing_token_are_one_line_errors(tmp_path: Path, hub: RunningHub) -> None:
    run = tmp_path / "run"
    (run / ".hubsync").mkdir(parents=True)
    (run / ".hubsync" / "watch.json").write_text("{not json")
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    result = CliRunner().invoke(cli, ["watch", str(run), "--repo", REPO, "--nice", "0"], env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot read the watch state ")
    assert (
        "watch.json (it is not valid JSON (Expecting property name" in result.stderr
        and "Move it aside" in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1
    no_token = CliRunner().invoke(
        cli, ["watch", str(run), "--repo", REPO, "--nice", "0"], env={"HF_ENDPOINT": hub.endpoint}
    )
    assert no_token.exit_code == 1
    assert no_token.stderr.startswith("Error: no Hugging Face token")


def test_a_branch_holds_exactly_a_push_only_with_the_same_paths_and_contents_and_an_index_entry() -> None:
    from hubsync.core.pull import RemoteFile
    from hubsync.core.watch import LocalHashes, holds_exactly

    remote = [
        RemoteFile(".gitattributes", 5, None, "g" * 40),
        RemoteFile("adapter_model.safetensors", 100, "s" * 64, "p" * 40),
        RemoteFile("trainer_state.json", 10, None, "t" * 40),
        RemoteFile("README.md", 7, None, "r" * 40),
    ]
    paths = ["README.md", "adapter_model.safetensors", "trainer_state.json"]
    local = {
        "adapter_model.safetensors": LocalHashes(100, "s" * 64, "x" * 40),  # LFS: compared by sha256
        "trainer_state.json": LocalHashes(10, "y" * 64, "t" * 40),  # regular: by git blob id
    }
    assert holds_exactly(remote, paths, local, indexed=True)
    assert not holds_exactly(remote, paths, local, indexed=False)
    assert not holds_exactly(remote, [*paths, "training_loss.svg"], local, indexed=True)
    assert not holds_exactly(remote[:3], paths, local, indexed=True)
    changed = {**local, "trainer_state.json": LocalHashes(10, "y" * 64, "u" * 40)}
    assert not holds_exactly(remote, paths, changed, indexed=True)
    resized = {**local, "adapter_model.safetensors": LocalHashes(101, "s" * 64, "x" * 40)}
    assert not holds_exactly(remote, paths, resized, indexed=True)


def test_a_watch_of_an_unfinished_run_pushes_what_is_there_and_stops_when_idle(
    tiny_run: Path, tmp_path: Path, hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    run = tmp_path / "run"
    for step in (10, 20):  # the run stopped before its final step (30): only the idle timeout ends the watch
        shutil.copytree(tiny_run / f"checkpoint-{step}", run / f"checkpoint-{step}")
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    args = ["watch", "run", "--repo", REPO, "--interval", "0.05", "--idle-timeout", "0.5", "--nice", "0"]
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, [*args, "--tag", "early"], env=env)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("Pushed checkpoint-") == 2
    assert result.stdout.endswith("Stopped after 0.5 s without change; 2 checkpoints on me/watched.\n")
    assert_each_on_the_hub_exactly_once(api, [10, 20])
    assert api.list_repo_refs(REPO).tags == []  # --tag waits for the run's final checkpoint, and says so
    advice = "hubsync push run/checkpoint-20 --repo me/watched --tag early"
    assert result.stderr == (
        "Not tagged: --tag early is for the run's final checkpoint (global_step = max_steps), and the watch stopped "
        f"before that was pushed. To tag checkpoint-20 instead: {advice} (with the watch's other options; nothing "
        "new is committed to its branch).\n"
    )
    # The advice holds: the tag goes to checkpoint-20's commit, and its branch gets no new commit.
    before = {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}
    tagged = CliRunner().invoke(cli, advice.split()[1:], env=env)
    assert tagged.exit_code == 0, tagged.stderr
    refs = api.list_repo_refs(REPO)
    assert {t.name: t.target_commit for t in refs.tags} == {"early": before["checkpoint-20"]}
    assert {b.name: b.target_commit for b in refs.branches if b.name != "main"} == {
        name: commit for name, commit in before.items() if name != "main"
    }

    shutil.copytree(tiny_run / "checkpoint-30", run / "checkpoint-30")
    result = CliRunner().invoke(cli, [*args, "--tag", "final"], env=env)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        result.stdout.splitlines()[0],
        "Done: the run finished; 3 checkpoints on me/watched.",
    ]
    assert result.stdout.startswith("Pushed checkpoint-30 -> me/watched @ checkpoint-30 (")
    assert_each_on_the_hub_exactly_once(api, [10, 20, 30], other_main_commits=1)  # the index names the early tag
    last = {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}["checkpoint-30"]
    assert {t.name: t.target_commit for t in api.list_repo_refs(REPO).tags} == {"early": ANY, "final": last}
    assert result.stderr == ""

    # The run is finished and recorded; a tag asked for now is added to its final checkpoint.
    result = CliRunner().invoke(cli, [*args, "--tag", "late"], env=env)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "Done: the run finished; 3 checkpoints on me/watched.\n" and result.stderr == ""
    assert {t.name: t.target_commit for t in api.list_repo_refs(REPO).tags} == {
        "early": ANY,
        "final": last,
        "late": last,
    }


def copy_run(tiny_run: Path, run: Path, steps: list[int]) -> None:
    import shutil

    for step in steps:
        shutil.copytree(tiny_run / f"checkpoint-{step}", run / f"checkpoint-{step}")


def test_recorded_pushes_that_the_hub_does_not_hold_are_pushed_again(
    tiny_run: Path, tmp_path: Path, hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    copy_run(tiny_run, run, [10, 20])
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    args = ["watch", "run", "--repo", REPO, "--interval", "0.05", "--idle-timeout", "0.5", "--nice", "0"]
    assert CliRunner().invoke(cli, args, env=env).exit_code == 0
    assert_each_on_the_hub_exactly_once(api, [10, 20])

    api.delete_repo(REPO)  # the record still lists both
    again = CliRunner().invoke(cli, [*args, "--json"], env=env)
    assert again.exit_code == 0, again.stderr
    assert again.stderr == "Not on the Hub at the recorded commit: checkpoint-10, checkpoint-20; pushing again.\n"
    summary = json.loads(again.stdout)
    assert [(p["step"], p["created"]) for p in summary["pushed"]] == [(10, True), (20, True)]
    assert [p["step"] for p in summary["on_hub"]] == [10, 20] and summary["on_hub_checked"] is True
    assert_each_on_the_hub_exactly_once(api, [10, 20])

    # Another Hub, where the repository does not exist: the first Hub's record does not count there.
    with local_hub(tmp_path / "hub2") as other:
        there = CliRunner().invoke(cli, args, env={"HF_ENDPOINT": other.endpoint, "HF_TOKEN": other.token})
        assert there.exit_code == 0, there.stderr
        assert there.stdout.count("Pushed checkpoint-") == 2 and there.stderr == ""
        assert_each_on_the_hub_exactly_once(HfApi(endpoint=other.endpoint, token=other.token), [10, 20])
        assert [p["step"] for p in record(run, other.endpoint)["pushed"]] == [10, 20]
    # Back on the first Hub: its record holds, nothing is pushed.
    back = CliRunner().invoke(cli, args, env=env)
    assert back.stdout == "Stopped after 0.5 s without change; 2 checkpoints on me/watched.\n", back.stderr
    assert back.stderr == ""

    # Pruned on the Hub and deleted from the run folder: dropped from the record (not "lost"), and not counted.
    api.delete_branch(REPO, branch="checkpoint-10")
    shutil.rmtree(run / "checkpoint-10")
    pruned = CliRunner().invoke(cli, args, env=env)
    assert pruned.exit_code == 0, pruned.stderr
    assert pruned.stdout == "Stopped after 0.5 s without change; 1 checkpoint on me/watched.\n"
    assert pruned.stderr == (
        "Not on the Hub at the recorded commit, and gone from the run folder: checkpoint-10; dropped from the record.\n"
    )
    assert [p["step"] for p in record(run, hub.endpoint)["pushed"]] == [20]
    assert record(run, hub.endpoint)["lost"] == []


def test_a_checkpoint_folder_is_refused_and_never_written_into(
    tiny_run: Path, tmp_path: Path, hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    copy_run(tiny_run, tmp_path / "run", [10])
    before = sorted(p.as_posix() for p in tmp_path.rglob("*"))
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    for folder in ("run/checkpoint-10", "run/checkpoint-20"):  # there, or not yet
        args = ["watch", folder, "--repo", REPO, "--interval", "0.05", "--idle-timeout", "0.3", "--nice", "0"]
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 1
        assert result.stderr == (
            f"Error: {folder} is a checkpoint folder, not a run folder (its name is that of a checkpoint). hubsync "
            "watch follows a whole run: pass the folder that holds its checkpoint-N folders, such as run.\n"
        )
    assert sorted(p.as_posix() for p in tmp_path.rglob("*")) == before


def test_an_unreadable_checkpoint_is_skipped_once_and_the_others_are_pushed(
    tiny_run: Path, tmp_path: Path, hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    copy_run(tiny_run, run, [10, 20])
    state = run / "checkpoint-20" / "trainer_state.json"
    good = state.read_bytes()
    state.write_bytes(good[: len(good) // 2])  # cut short
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    args = ["watch", "run", "--repo", REPO, "--interval", "0.05", "--idle-timeout", "0.5", "--nice", "0"]
    first = CliRunner().invoke(cli, args, env=env)  # some ten looks: checkpoint-20 is tried once
    assert first.exit_code == 0, first.stderr
    skipped_line = re.compile(
        r"Skipped checkpoint-20: cannot read run/checkpoint-20/trainer_state\.json: .+\. The watch goes on with the "
        r"others, and tries it again if its files change\.\n"
    )
    assert skipped_line.fullmatch(first.stderr), first.stderr
    assert first.stdout.startswith("Pushed checkpoint-10 -> ")
    assert first.stdout.endswith(
        "Stopped after 0.5 s without change; 1 checkpoint on me/watched; skipped (unreadable): checkpoint-20.\n"
    )

    copy_run(tiny_run, run, [30])  # the final checkpoint comes; checkpoint-20 is still unreadable
    second = CliRunner().invoke(cli, [*args, "--json"], env=env)
    assert second.exit_code == 0, second.stderr
    assert skipped_line.fullmatch(second.stderr), second.stderr  # a new watch tries it once more
    summary = json.loads(second.stdout)
    assert [p["step"] for p in summary["pushed"]] == [30] and summary["finished"] is True
    assert [(k["step"], k["reason"].split(":")[0]) for k in summary["skipped"]] == [
        (20, "cannot read run/checkpoint-20/trainer_state.json")
    ]
    assert [k["step"] for k in record(run)["skipped"]] == [20]

    state.write_bytes(good)  # mended: pushed, even though the run was finished
    third = CliRunner().invoke(cli, args, env=env)
    assert third.exit_code == 0, third.stderr
    assert third.stdout.startswith("Pushed checkpoint-20 -> ")
    assert third.stdout.endswith("Done: the run finished; 3 checkpoints on me/watched.\n") and third.stderr == ""
    assert record(run)["skipped"] == []
    branches = {b.name for b in api.list_repo_refs(REPO).branches}
    assert branches == {"main", "checkpoint-10", "checkpoint-20", "checkpoint-30"}


# The real thing.


class Proc:
    """A subprocess whose output goes to files (a pipe nobody reads could block it)."""

    def __init__(self, name: str, args: list[str], tmp_path: Path, env: dict[str, str]) -> None:
        self.out = tmp_path / f"{name}.out"
        self.err = tmp_path / f"{name}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.popen = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=out, stderr=err)

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()


@pytest.fixture
def procs(tmp_path: Path, hub: RunningHub) -> Iterator[Callable[..., Proc]]:
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    started: list[Proc] = []

    def start(name: str, *args: str) -> Proc:
        started.append(Proc(name, [sys.executable, "-m", *args], tmp_path, env))
        return started[-1]

    yield start
    for proc in started:  # whatever a failed test left running
        if proc.running():
            proc.popen.kill()
            proc.popen.wait()


def train(procs: Callable[..., Proc], *extra: str) -> Proc:
    """A real tiny LoRA run writing run/checkpoint-10, -20, -30, slowed down so that each save can be watched."""
    return procs("train", "hubsync.tinyrun", "run", "--max-steps", "30", "--save-steps", "10", *extra)


def watch(procs: Callable[..., Proc], name: str, *extra: str) -> Proc:
    return procs(name, "hubsync", "watch", "run", "--repo", REPO, "--interval", "0.1", "--retry-max", "0.5", *extra)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def record(run: Path, endpoint: str | None = None) -> dict[str, Any]:
    """The watch's record of REPO (on `endpoint`, or on the only Hub), {} when there is none yet."""
    try:
        data = json.loads((run / ".hubsync" / "watch.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    mine = [r for r in data["records"] if r["repo"] == REPO and endpoint in (None, r["endpoint"])]
    assert len(mine) <= 1
    return mine[0] if mine else {}


def pushed_steps(tmp_path: Path) -> list[int]:
    return [p["step"] for p in record(tmp_path / "run").get("pushed", [])]


def assert_each_on_the_hub_exactly_once(api: HfApi, steps: list[int], other_main_commits: int = 0) -> None:
    each_on_the_hub_exactly_once(api, REPO, steps, other_main_commits)


@pytest.mark.slow
def test_every_checkpoint_of_a_live_run_reaches_the_hub_exactly_once(
    procs: Callable[..., Proc], tmp_path: Path, api: HfApi
) -> None:
    watcher = watch(procs, "watch")  # started first: it waits for the run folder to appear
    trainer = train(procs, "--step-sleep", "0.2")
    wait_for(lambda: bool(pushed_steps(tmp_path)) or not trainer.running(), 180, "the first push")
    pushed_while_training = trainer.running()
    assert trainer.wait(180) == 0, trainer.stderr
    assert watcher.wait(180) == 0, watcher.stderr

    assert pushed_while_training  # pushed live, not after the fact
    assert_each_on_the_hub_exactly_once(api, STEPS)
    pushes = [line.split(" (")[0] for line in watcher.stdout.splitlines()[: len(STEPS)]]
    assert pushes == [f"Pushed checkpoint-{s} -> me/watched @ checkpoint-{s}" for s in STEPS]
    assert watcher.stdout.count("Pushed checkpoint-") == len(STEPS)
    assert watcher.stdout.splitlines()[-1] == "Done: the run finished; 3 checkpoints on me/watched."
    assert watcher.stderr == "Waiting for run to appear.\n"
    heads = {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}
    mine = record(tmp_path / "run")
    assert {p["revision"]: p["commit"] for p in mine["pushed"]} == {
        f"checkpoint-{s}": heads[f"checkpoint-{s}"] for s in STEPS
    }
    assert mine["final_step"] == 30 and mine["lost"] == [] and mine["skipped"] == []
    # The watch wrote nothing into the run folder but its own record.
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".hubsync", *(f"checkpoint-{s}" for s in STEPS)]
    assert [p.name for p in (tmp_path / "run" / ".hubsync").iterdir()] == ["watch.json"]


@pytest.mark.slow
def test_a_watch_restarted_in_the_middle_of_the_run_pushes_nothing_twice(
    procs: Callable[..., Proc], tmp_path: Path, api: HfApi
) -> None:
    first = watch(procs, "watch1")
    trainer = train(procs, "--step-sleep", "0.2")
    wait_for(lambda: bool(pushed_steps(tmp_path)) or not trainer.running(), 180, "the first push")
    assert trainer.running()
    trainer.popen.send_signal(signal.SIGSTOP)  # training holds still while the watch restarts: mid-run for sure
    first.popen.send_signal(signal.SIGTERM)
    assert first.wait(30) == 130, first.stderr
    assert "Stopped; " in first.stdout
    before = pushed_steps(tmp_path)
    assert before and before[-1] < 30

    second = watch(procs, "watch2")
    trainer.popen.send_signal(signal.SIGCONT)
    assert trainer.wait(180) == 0, trainer.stderr
    assert second.wait(180) == 0, second.stderr
    assert_each_on_the_hub_exactly_once(api, STEPS)
    assert not any(f"checkpoint-{s} " in second.stdout for s in before)  # the record says they are pushed
    assert second.stdout.count("Pushed checkpoint-") == len(STEPS) - len(before)

    # Without its record, a watch finds each checkpoint already on the Hub and commits nothing.
    (tmp_path / "run" / ".hubsync" / "watch.json").unlink()
    third = watch(procs, "watch3", "--json")
    assert third.wait(180) == 0, third.stderr
    summary = json.loads(third.stdout)
    assert [(p["step"], p["created"]) for p in summary["pushed"]] == [(s, False) for s in STEPS]
    assert summary["finished"] is True
    assert_each_on_the_hub_exactly_once(api, STEPS)


@pytest.mark.slow
def test_a_finished_run_pruned_on_the_hub_is_pushed_again_by_a_restarted_watch(
    procs: Callable[..., Proc], tmp_path: Path, api: HfApi
) -> None:
    watcher = watch(procs, "watch1", "--training-state", "keep")
    trainer = procs(
        "train", "hubsync.tinyrun", "run", "--max-steps", "20", "--save-steps", "10", "--step-sleep", "0.05"
    )
    assert trainer.wait(180) == 0, trainer.stderr
    assert watcher.wait(180) == 0, watcher.stderr
    assert_each_on_the_hub_exactly_once(api, [10, 20])
    pruned = procs("prune", "hubsync", "prune", REPO, "--keep", "1")
    assert pruned.wait(30) == 0, pruned.stderr
    heads = {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}
    assert set(heads) == {"main", "checkpoint-20"}

    # The run's final checkpoint is recorded and still on the Hub; checkpoint-10 is not, but is in the run folder.
    again = watch(procs, "watch2", "--training-state", "keep")
    assert again.wait(180) == 0, again.stderr
    assert again.stderr == "Not on the Hub at the recorded commit: checkpoint-10; pushing again.\n"
    assert again.stdout.startswith("Pushed checkpoint-10 -> me/watched @ checkpoint-10 (")
    assert again.stdout.splitlines()[-1] == "Done: the run finished; 2 checkpoints on me/watched."
    after = {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}
    assert set(after) == {"main", "checkpoint-10", "checkpoint-20"}
    assert after["checkpoint-20"] == heads["checkpoint-20"]  # untouched
    root = api.list_repo_commits(REPO, revision="main")[-1].commit_id
    history = [c.commit_id for c in api.list_repo_commits(REPO, revision="checkpoint-10")]
    assert len(history) == 2 and history[-1] == root
    assert {"trainer_state.json", "optimizer.safetensors", "scheduler.safetensors"} <= set(
        api.list_repo_files(REPO, revision="checkpoint-10")
    )  # with its training state, as the first watch pushed it
    assert {p["revision"]: p["commit"] for p in record(tmp_path / "run")["pushed"]} == {
        name: commit for name, commit in after.items() if name != "main"
    }
    index = json.loads(Path(api.hf_hub_download(REPO, ".hubsync/index.json")).read_text())
    assert sorted(e["revision"] for e in index["revisions"]) == ["checkpoint-10", "checkpoint-20"]


@pytest.mark.slow
def test_a_hub_outage_is_survived_and_checkpoints_deleted_meanwhile_are_reported(
    procs: Callable[..., Proc], tmp_path: Path, hub: RunningHub, api: HfApi
) -> None:
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE"):
        hub.server.inject_fault(method, r".", 503, times=10**6, retry_after=0)
    watcher = watch(procs, "watch", "--json")
    trainer = train(procs, "--step-sleep", "0.2", "--save-total-limit", "1")
    assert trainer.wait(180) == 0, trainer.stderr
    assert watcher.running()  # the Hub is down: nothing could be pushed, and the watch goes on
    failures = [line for line in watcher.stderr.splitlines() if line.startswith("Hub unavailable (")]
    assert failures and all(
        re.fullmatch(
            r"Hub unavailable \(http://127\.0\.0\.1:\d+: 503: Injected fault 503\): checkpoint-\d+ not "
            r"pushed yet; trying again in 0\.5 s\.",
            line,
        )
        for line in failures
    ), failures
    hub.server.clear_faults()  # the outage is over
    assert watcher.wait(180) == 0, watcher.stderr

    summary = json.loads(watcher.stdout)
    assert [p["step"] for p in summary["pushed"]] == [30]
    assert [lost["step"] for lost in summary["lost"]] == [10, 20]
    lost_lines = [line for line in watcher.stderr.splitlines() if line.startswith("Lost: ")]
    assert len(lost_lines) == 2 and "checkpoint-10 deleted from the run folder before it was pushed" in lost_lines[0]
    assert_each_on_the_hub_exactly_once(api, [30])


@pytest.mark.slow
def test_sigterm_during_a_push_finishes_it_saves_the_record_and_exits_130(
    procs: Callable[..., Proc], tiny_run: Path, tmp_path: Path, hub: RunningHub, api: HfApi
) -> None:
    import shutil

    shutil.copytree(tiny_run / "checkpoint-10", tmp_path / "run" / "checkpoint-10")
    # The commit is answered "busy, come back in 2 s" once: the push is in progress for at least that long.
    hub.server.inject_fault("POST", r"/commit/checkpoint-10$", 503, times=1, retry_after=2)
    watcher = watch(procs, "watch")

    def heads() -> dict[str, str]:
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            return {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}
        except RepositoryNotFoundError:  # not created yet
            return {}

    wait_for(lambda: "checkpoint-10" in heads() or not watcher.running(), 30, "the push to start")
    root = api.list_repo_commits(REPO, revision="main")[-1].commit_id
    assert heads()["checkpoint-10"] == root  # the branch is there, its commit is not: the push is in progress
    watcher.popen.send_signal(signal.SIGTERM)
    assert watcher.wait(30) == 130, watcher.stderr
    assert "Stopping once the push of checkpoint-10 is done (Ctrl-C again abandons it" in watcher.stderr
    assert watcher.stdout.startswith("Pushed checkpoint-10 -> me/watched @ checkpoint-10 (")
    assert_each_on_the_hub_exactly_once(api, [10])
    assert pushed_steps(tmp_path) == [10]


def test_a_run_folder_that_never_appears_ends_with_the_idle_timeout_and_ctrl_c_says_no_push_was_running(
    procs: Callable[..., Proc], tmp_path: Path
) -> None:
    idle = watch(procs, "idle", "--idle-timeout", "0.5")
    assert idle.wait(30) == 0, idle.stderr
    assert idle.stdout == "Stopped after 0.5 s: run never appeared; nothing pushed.\n"
    assert idle.stderr == "Waiting for run to appear.\n"
    assert not (tmp_path / "run").exists()

    waiting = watch(procs, "waiting")
    wait_for(lambda: "Waiting for run" in waiting.stderr, 30, "the watch to start")
    waiting.popen.send_signal(signal.SIGINT)
    assert waiting.wait(10) == 130
    assert waiting.stderr == "Waiting for run to appear.\nStopping (no push in progress).\n"
    assert waiting.stdout == "Stopped: run has not appeared; nothing pushed. Run it again to go on.\n"


def test_ctrl_c_while_the_hub_is_down_exits_promptly(
    procs: Callable[..., Proc], tiny_run: Path, tmp_path: Path, summary_lines: SummaryLines
) -> None:
    import socket

    copy_run(tiny_run, tmp_path / "run", [10])
    with socket.socket() as sock:  # a port where nothing listens: every connection is refused
        sock.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{sock.getsockname()[1]}"
    watcher = watch(procs, "watch", "--endpoint", down)
    wait_for(lambda: "Hub unavailable (" in watcher.stderr, 30, "the first failed push")
    time.sleep(1.3)  # the next push is under way, inside the client's retries of a refused connection
    start = time.monotonic()
    watcher.popen.send_signal(signal.SIGINT)
    code = watcher.wait(30)
    took = time.monotonic() - start
    with summary_lines("watch", "Ctrl-C with the Hub down: no exit") as add:
        add(f"Ctrl-C with the Hub down: exited after {took:.2f} s")
    assert code == 130
    assert took < 2.5, watcher.stderr
    stopping = [line for line in watcher.stderr.splitlines() if line.startswith("Stopping")]
    assert stopping in (
        ["Stopping once the push of checkpoint-10 is done (Ctrl-C again abandons it; nothing is half-written)."],
        ["Stopping (no push in progress)."],
    )
    assert watcher.stdout == "Stopped; 0 checkpoints on me/watched. Run it again to go on.\n"


def test_a_bad_tag_is_refused_before_the_watch_starts(hub: Any, tmp_path: Path) -> None:
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    result = CliRunner(env=env).invoke(cli, ["watch", str(tmp_path / "run"), "--repo", "me/m", "--tag", "main"])
    assert result.exit_code == 2
    assert "Invalid value for '--tag': tag \"main\" is not valid: a branch has" in result.stderr
    assert not (tmp_path / "run").exists()

    # From the configuration file too, before the watch starts, naming the file.
    (tmp_path / "hubsync.toml").write_text('tags = ["main"]\n')
    result = CliRunner(env=env).invoke(cli, ["watch", str(tmp_path / "run"), "--repo", "me/m"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert 'hubsync.toml: tag "main" is not valid: a branch has' in result.stderr
    assert not (tmp_path / "run").exists()


def test_only_failures_that_may_pass_are_retried() -> None:
    from hubsync.core.errors import CommitConflictError, HubError, HubUnreachableError, PermissionDeniedError
    from hubsync.core.transient import transient_failure as retryable

    assert retryable(HubUnreachableError("e", "ConnectError")) and retryable(CommitConflictError("e", "moved"))
    assert all(retryable(HubError("e", "busy", status=s)) for s in (408, 429, 500, 503))
    assert not any(retryable(HubError("e", "refused", status=s)) for s in (400, 409, 422))
    assert not retryable(HubError("e", "refused by huggingface_hub's own checks"))
    assert not retryable(PermissionDeniedError("e", "no", status=403))


def test_a_deeply_nested_record_is_one_clear_error() -> None:
    with pytest.raises(WatchStateError, match="nested too deeply"):
        parse_state(b"[" * 100_000 + b"]" * 100_000, "http://hub", "me/m", "run/.hubsync/watch.json")


def test_a_checkpoint_without_weights_is_skipped_with_the_reason(
    tiny_run: Path, tmp_path: Path, hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    copy_run(tiny_run, run, [10, 20])
    (run / "checkpoint-20" / "adapter_model.safetensors").unlink()
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    args = ["watch", "run", "--repo", REPO, "--interval", "0.05", "--idle-timeout", "0.5", "--nice", "0"]

    result = CliRunner().invoke(cli, args, env=env)

    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith(
        "Skipped checkpoint-20: run/checkpoint-20 is not a complete checkpoint: it has no model weights."
    )
    assert {b.name for b in api.list_repo_refs(REPO).branches} == {"main", "checkpoint-10"}


def test_a_checkpoint_holding_a_name_pull_would_refuse_is_skipped_and_the_watch_goes_on(
    tiny_run: Path, tmp_path: Path, hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    copy_run(tiny_run, run, [10, 20, 30])
    (run / "checkpoint-20" / "con.txt").write_text("a device name on Windows\n")
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    args = ["watch", "run", "--repo", REPO, "--interval", "0.05", "--idle-timeout", "0.5", "--nice", "0"]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith("Skipped checkpoint-20: run/checkpoint-20/con.txt: "), result.stderr
    branches = {b.name for b in api.list_repo_refs(REPO).branches}
    assert {"checkpoint-10", "checkpoint-30"} <= branches and "checkpoint-20" not in branches


def test_a_watch_that_leaves_out_what_the_branch_held_says_so(
    tiny_run: Path, tmp_path: Path, hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A branch pushed with its training state, watched again without it, stops being resumable: the watch says
    how many files it deleted, as push does."""
    import shutil

    from conftest import push

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "checkpoint-30", run / "checkpoint-30")
    assert push(hub, str(run / "checkpoint-30"), "--repo", REPO, "--training-state", "keep").exit_code == 0
    monkeypatch.chdir(tmp_path)
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    args = ["watch", "run", "--repo", REPO, "--interval", "0.05", "--idle-timeout", "0.5", "--nice", "0"]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.stderr
    files = api.list_repo_files(REPO, revision="checkpoint-30")
    gone = [line for line in result.stdout.splitlines() if line.startswith("  deleted: ")]
    assert "optimizer.safetensors" not in files and gone and int(gone[0].split()[1]) >= 1
