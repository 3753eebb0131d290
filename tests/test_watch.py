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
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import HfApi

from hubsync.cli import cli
from hubsync.core.errors import WatchStateError
from hubsync.core.watch import PushedCheckpoint, WatchState, dump_state, next_step, observe_run, parse_state
from hubsync.localhub import RunningHub

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


def test_the_run_is_finished_when_its_final_checkpoint_is_pushed() -> None:
    record = PushedCheckpoint(40, "checkpoint-40", "c" * 40)
    assert not next_step({40: A}, {40: A}, WatchState(REPO)).finished
    state = WatchState(REPO).with_pushed(record, final=True)
    assert state.final_step == 40 and next_step({40: None}, {40: None}, state).finished
    assert not next_step(None, {40: None}, WatchState(REPO).with_pushed(record, final=False)).finished
    assert not next_step(None, {40: None, 50: A}, state).finished  # resumed with more steps: not done yet


def test_the_state_file_round_trips_and_keeps_other_repositories() -> None:
    other = dump_state(WatchState("me/other", seen=frozenset({5})), None)
    state = WatchState(REPO, {10: PushedCheckpoint(10, "checkpoint-10", "a" * 40)}, frozenset({10, 20}), (20,), 10)
    raw = dump_state(state, other)
    assert parse_state(raw, REPO, "w.json") == state
    assert parse_state(raw, "me/other", "w.json").seen == {5}
    assert parse_state(raw, "me/new", "w.json") == WatchState("me/new")
    with pytest.raises(WatchStateError):
        parse_state(b'{"repos": {"me/watched": {"pushed": [{"step": "x"}]}}}', REPO, "w.json")


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
    assert "watch.json (JSONDecodeError: " in result.stderr and "Move it aside" in result.stderr
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
    tiny_run: Path, tmp_path: Path, hub: RunningHub, api: HfApi
) -> None:
    import shutil

    run = tmp_path / "run"
    for step in (10, 20):  # the run stopped before its final step (30): only the idle timeout ends the watch
        shutil.copytree(tiny_run / f"checkpoint-{step}", run / f"checkpoint-{step}")
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    args = ["watch", str(run), "--repo", REPO, "--interval", "0.05", "--idle-timeout", "0.5", "--nice", "0"]
    result = CliRunner().invoke(cli, [*args, "--tag", "final"], env=env)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("Pushed checkpoint-") == 2
    assert result.stdout.endswith("Stopped after 0.5 s without change; 2 checkpoints on me/watched.\n")
    assert_each_on_the_hub_exactly_once(api, [10, 20])
    assert api.list_repo_refs(REPO).tags == []  # --tag waits for the run's final checkpoint

    shutil.copytree(tiny_run / "checkpoint-30", run / "checkpoint-30")
    result = CliRunner().invoke(cli, [*args, "--tag", "final"], env=env)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        result.stdout.splitlines()[0],
        "Done: the run finished; 3 checkpoints on me/watched.",
    ]
    assert result.stdout.startswith("Pushed checkpoint-30 -> me/watched @ checkpoint-30 (")
    assert_each_on_the_hub_exactly_once(api, [10, 20, 30])
    tags = {t.name: t.target_commit for t in api.list_repo_refs(REPO).tags}
    assert tags == {"final": {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}["checkpoint-30"]}


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


def pushed_steps(tmp_path: Path) -> list[int]:
    try:
        data = json.loads((tmp_path / "run" / ".hubsync" / "watch.json").read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [p["step"] for p in data["repos"].get(REPO, {}).get("pushed", [])]


def assert_each_on_the_hub_exactly_once(api: HfApi, steps: list[int]) -> None:
    """One commit on each checkpoint branch beyond the root it starts from, one index entry each, and one index
    commit on main for each (beyond main's first commit)."""
    branches = {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}
    assert set(branches) == {"main", *(f"checkpoint-{s}" for s in steps)}
    root = api.list_repo_commits(REPO, revision="main")[-1].commit_id
    for step in steps:
        history = [c.commit_id for c in api.list_repo_commits(REPO, revision=f"checkpoint-{step}")]
        assert len(history) == 2 and history[-1] == root, (step, history)
    index = json.loads(Path(api.hf_hub_download(REPO, ".hubsync/index.json")).read_text())
    assert [e["revision"] for e in index["revisions"]] == [f"checkpoint-{s}" for s in steps]
    assert [e["commit"] for e in index["revisions"]] == [branches[f"checkpoint-{s}"] for s in steps]
    assert len(api.list_repo_commits(REPO, revision="main")) == 1 + len(steps)


@pytest.mark.slow
def test_every_checkpoint_of_a_live_run_reaches_the_hub_exactly_once(
    procs: Callable[..., Proc], tmp_path: Path, api: HfApi
) -> None:
    watcher = watch(procs, "watch")  # started first: it waits for the run folder to appear
    trainer = train(procs, "--step-sleep", "0.2")
    wait_for(lambda: bool(pushed_steps(tmp_path)) or not trainer.running(), 60, "the first push")
    pushed_while_training = trainer.running()
    assert trainer.wait(60) == 0, trainer.stderr
    assert watcher.wait(60) == 0, watcher.stderr

    assert pushed_while_training  # pushed live, not after the fact
    assert_each_on_the_hub_exactly_once(api, STEPS)
    pushes = [line.split(" (")[0] for line in watcher.stdout.splitlines()[: len(STEPS)]]
    assert pushes == [f"Pushed checkpoint-{s} -> me/watched @ checkpoint-{s}" for s in STEPS]
    assert watcher.stdout.count("Pushed checkpoint-") == len(STEPS)
    assert watcher.stdout.splitlines()[-1] == "Done: the run finished; 3 checkpoints on me/watched."
    assert watcher.stderr == "Waiting for run to appear.\n"
    heads = {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}
    record = json.loads((tmp_path / "run" / ".hubsync" / "watch.json").read_text())["repos"][REPO]
    assert {p["revision"]: p["commit"] for p in record["pushed"]} == {
        f"checkpoint-{s}": heads[f"checkpoint-{s}"] for s in STEPS
    }
    assert record["final_step"] == 30 and record["lost"] == []
    # The watch wrote nothing into the run folder but its own record.
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".hubsync", *(f"checkpoint-{s}" for s in STEPS)]
    assert [p.name for p in (tmp_path / "run" / ".hubsync").iterdir()] == ["watch.json"]


@pytest.mark.slow
def test_a_watch_restarted_in_the_middle_of_the_run_pushes_nothing_twice(
    procs: Callable[..., Proc], tmp_path: Path, api: HfApi
) -> None:
    first = watch(procs, "watch1")
    trainer = train(procs, "--step-sleep", "0.2")
    wait_for(lambda: bool(pushed_steps(tmp_path)) or not trainer.running(), 60, "the first push")
    assert trainer.running()
    trainer.popen.send_signal(signal.SIGSTOP)  # training holds still while the watch restarts: mid-run for sure
    first.popen.send_signal(signal.SIGTERM)
    assert first.wait(30) == 130, first.stderr
    assert "Stopped; " in first.stdout
    before = pushed_steps(tmp_path)
    assert before and before[-1] < 30

    second = watch(procs, "watch2")
    trainer.popen.send_signal(signal.SIGCONT)
    assert trainer.wait(60) == 0, trainer.stderr
    assert second.wait(60) == 0, second.stderr
    assert_each_on_the_hub_exactly_once(api, STEPS)
    assert not any(f"checkpoint-{s} " in second.stdout for s in before)  # the record says they are pushed
    assert second.stdout.count("Pushed checkpoint-") == len(STEPS) - len(before)

    # Without its record, a watch finds each checkpoint already on the Hub and commits nothing.
    (tmp_path / "run" / ".hubsync" / "watch.json").unlink()
    third = watch(procs, "watch3", "--json")
    assert third.wait(60) == 0, third.stderr
    summary = json.loads(third.stdout)
    assert [(p["step"], p["created"]) for p in summary["pushed"]] == [(s, False) for s in STEPS]
    assert summary["finished"] is True
    assert_each_on_the_hub_exactly_once(api, STEPS)


@pytest.mark.slow
def test_a_hub_outage_is_survived_and_checkpoints_deleted_meanwhile_are_reported(
    procs: Callable[..., Proc], tmp_path: Path, hub: RunningHub, api: HfApi
) -> None:
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE"):
        hub.server.inject_fault(method, r".", 503, times=10**6, retry_after=0)
    watcher = watch(procs, "watch", "--json")
    trainer = train(procs, "--step-sleep", "0.2", "--save-total-limit", "1")
    assert trainer.wait(60) == 0, trainer.stderr
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
    assert watcher.wait(60) == 0, watcher.stderr

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
    assert "Stopping after the push in progress" in watcher.stderr
    assert watcher.stdout.startswith("Pushed checkpoint-10 -> me/watched @ checkpoint-10 (")
    assert_each_on_the_hub_exactly_once(api, [10])
    assert pushed_steps(tmp_path) == [10]
