"""kill -9 at random points of `hubsync convert`, `push` and `pull`, run as real processes against a local Hub in
this process: afterwards every file at a final name is whole, the user's checkpoint is unchanged, a branch is at
its old commit or the complete new one, and a re-run completes.

Kill points come from seeded random delays (a calibration run measures how long a command takes) and from the
local Hub holding a request (`inject_fault(..., delay=...)`) so that the kill lands while an upload, a commit or a
download is in flight. `HUBSYNC_KILL_SEED=<seed>` replays a run; `HUBSYNC_KILL_RUNS=<n>` kills more often.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import SummaryLines

from hubsync.files import is_temp, system_temp_dir
from hubsync.localhub import RunningHub

RUNS = int(os.environ.get("HUBSYNC_KILL_RUNS", "10"))  # random kills per command, besides the hooked ones
SEED = int(os.environ.get("HUBSYNC_KILL_SEED") or random.SystemRandom().randrange(2**32))
REPO = "me/killed"
HELD = 0.4  # how long the Hub holds a hooked request: the kill lands meanwhile


@dataclass
class Tally:
    runs: int = 0
    killed: int = 0
    finished_first: int = 0  # the command finished before its kill came
    old_state: int = 0  # after the kill: nothing new (no output, the branch at its old commit)
    new_state: int = 0  # after the kill: the complete new output or commit
    data_lost: int = 0
    reruns_completed: int = 0
    system_temp_left: int = 0  # killed runs that left a folder in the system temp folder (TMPDIR)
    seen_in_system_temp: set[str] = field(default_factory=set)

    def line(self, what: str, seconds: float) -> str:
        return (
            f"{what}: {self.runs} runs, {self.killed} killed (-9), {self.finished_first} finished before the kill; "
            f"after the kill {self.old_state} left nothing new, {self.new_state} the complete result, "
            f"{self.data_lost} data lost; {self.reruns_completed} re-runs completed; {self.system_temp_left} left a "
            f"folder in TMPDIR, each removed by the next run (seed {SEED}, {seconds:.1f} s)"
        )

    def count_system_temp(self, system_temp: Path) -> None:
        left = {p.name for p in system_temp.iterdir()}
        self.system_temp_left += bool(left - self.seen_in_system_temp)
        self.seen_in_system_temp |= left


@pytest.fixture
def report(summary_lines: SummaryLines) -> Iterator[Callable[[str], None]]:
    with summary_lines("kill runs", f"unfinished: HUBSYNC_KILL_SEED={SEED} replays these runs") as add:
        yield add


@pytest.fixture
def env(hub: RunningHub, system_temp: Path) -> dict[str, str]:
    return {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token, "TMPDIR": str(system_temp)}


@pytest.fixture
def system_temp(tmp_path: Path) -> Path:
    """The commands' system temp folder, watched for what a killed run leaves there."""
    path = tmp_path / "system-temp"
    path.mkdir()
    return path


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "hubsync", *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def run(args: list[str], env: dict[str, str], cwd: Path) -> float:
    """Run to the end; it must succeed. How long it took."""
    started = time.monotonic()
    proc = start(args, env, cwd)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    return time.monotonic() - started


def kill_after(proc: subprocess.Popen[bytes], wait: Callable[[], bool]) -> bool:
    """SIGKILL `proc` once `wait()` returns True; False when it exited first (then it must have succeeded)."""
    if not wait() and proc.poll() is not None:
        _, err = proc.communicate()
        assert proc.returncode == 0, err.decode()
        return False
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    if proc.returncode != -signal.SIGKILL:
        assert proc.returncode == 0
        return False
    return True


def kill_at_random(proc: subprocess.Popen[bytes], delay: float) -> bool:
    def wait() -> bool:
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            return True
        return False

    return kill_after(proc, wait)


def kill_when_held(proc: subprocess.Popen[bytes], hub: RunningHub, method: str, path: str) -> bool:
    """Kill while the local Hub holds the first request of `method` to `path`, then let the Hub finish it."""
    fault = hub.server.inject_fault(method, path, delay=HELD)

    def wait() -> bool:
        while not fault.arrived.wait(0.05):
            if proc.poll() is not None:
                return False
        return True

    killed = kill_after(proc, wait)
    hub.server.clear_faults()
    time.sleep(HELD + 0.3)  # the held request goes on at the Hub; judge what it leaves once it is done
    return killed


def kill_when_staged(proc: subprocess.Popen[bytes], folder: Path, with_files: bool) -> bool:
    """Kill as soon as a staging folder appears in `folder` (with a file in it, when `with_files`)."""

    def staged() -> bool:
        temps = [p for p in folder.iterdir() if is_temp(p)] if folder.exists() else []
        return any(not with_files or any(t.iterdir()) for t in temps if t.is_dir())

    def wait() -> bool:
        while proc.poll() is None:
            if staged():
                return True
            time.sleep(0.001)
        return False

    return kill_after(proc, wait)


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def not_temp(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not is_temp(p))


def test_kill_convert(
    bin_run: Path, tmp_path: Path, env: dict[str, str], system_temp: Path, report: Callable[[str], None]
) -> None:
    rng = random.Random(SEED)
    run_dir = tmp_path / "run"
    checkpoint = Path(shutil.copytree(bin_run / "checkpoint-10", run_dir / "checkpoint-10"))
    output = run_dir / "safetensors-checkpoint-10"
    original = digests(checkpoint)
    took = []
    for _ in range(2):  # the first run may be slow (a cold start): time the second as well, and take the faster
        took.append(run(["convert", str(checkpoint)], env, tmp_path))
        reference = digests(output)
        shutil.rmtree(output)
    assert "adapter_model.safetensors" in reference
    tally, started = Tally(), time.monotonic()
    for i in range(RUNS + 2):
        where = f"convert run {i}, HUBSYNC_KILL_SEED={SEED}"
        tally.runs += 1
        proc = start(["convert", str(checkpoint)], env, tmp_path)
        if i < 2:  # as soon as the staging folder is made, and once a file is in it
            killed = kill_when_staged(proc, run_dir, with_files=i == 1)
        else:
            killed = kill_at_random(proc, rng.uniform(0.05, 1.0) * min(took))
        tally.killed += killed
        tally.finished_first += not killed
        tally.count_system_temp(system_temp)
        assert digests(checkpoint) == original, f"{where}: the checkpoint changed"
        left = not_temp(run_dir)
        if left == ["checkpoint-10"]:
            tally.old_state += 1
            run(["convert", str(checkpoint)], env, tmp_path)
            tally.reruns_completed += 1
            assert not_temp(run_dir) == sorted(p.name for p in run_dir.iterdir()), f"{where}: temp files left"
        elif left == ["checkpoint-10", "safetensors-checkpoint-10"] and digests(output) == reference:
            tally.new_state += 1
        else:
            tally.data_lost += 1
            pytest.fail(f"{where}: left {left}, the output {digests(output) if output.exists() else None}")
        assert digests(output) == reference, where
        shutil.rmtree(output)
    report(tally.line("convert", time.monotonic() - started))
    assert tally.data_lost == 0 and tally.killed > 0


def branch_files(hub: RunningHub, branch: str) -> tuple[str, dict[str, str]]:
    head = hub.server.store.refs("model", REPO)["branches"][branch]
    files = hub.server.store.commit("model", REPO, head).files
    return head, {path: entry.sha256 for path, entry in files.items() if path != ".gitattributes"}


def check_against(checkpoint: Path, files: dict[str, str]) -> None:
    """The branch holds the checkpoint's weights and configs as they are (the card is hubsync's own)."""
    local = digests(checkpoint)
    assert "adapter_model.safetensors" in files
    for path, sha in files.items():
        if path not in ("README.md", "training_loss.svg"):
            assert local.get(path) == sha, path


def test_kill_push(
    tiny_run: Path,
    hub: RunningHub,
    tmp_path: Path,
    env: dict[str, str],
    system_temp: Path,
    report: Callable[[str], None],
) -> None:
    rng = random.Random(SEED + 1)
    checkpoints = [tiny_run / "checkpoint-10", tiny_run / "checkpoint-20"]
    originals = [digests(c) for c in checkpoints]

    def push(i: int) -> list[str]:
        return ["push", str(checkpoints[i]), "--repo", REPO, "--revision", "ckpt"]

    took = [run(push(1), env, tmp_path), run(push(0), env, tmp_path)]
    references = [branch_files(hub, "ckpt")[1]]
    run(push(1), env, tmp_path)
    references.append(branch_files(hub, "ckpt")[1])
    run(push(0), env, tmp_path)
    for checkpoint, files in zip(checkpoints, references, strict=True):
        check_against(checkpoint, files)
    hooks = [("PUT", r"^/_lfs/"), ("POST", r"/preupload/ckpt$"), ("POST", r"/commit/ckpt$"), ("POST", r"/commit/main$")]
    current, tally, started = 0, Tally(), time.monotonic()
    for i in range(RUNS + len(hooks)):
        where = f"push run {i}, HUBSYNC_KILL_SEED={SEED}"
        chosen = 1 - current
        old, _ = branch_files(hub, "ckpt")
        tally.runs += 1
        proc = start(push(chosen), env, tmp_path)
        if i < len(hooks):
            killed = kill_when_held(proc, hub, *hooks[i])
        else:
            killed = kill_at_random(proc, rng.uniform(0.05, 1.0) * max(took))
        tally.killed += killed
        tally.finished_first += not killed
        tally.count_system_temp(system_temp)
        assert [digests(c) for c in checkpoints] == originals, f"{where}: a checkpoint changed"
        head, files = branch_files(hub, "ckpt")
        if head == old:
            tally.old_state += 1
        elif files == references[chosen]:
            tally.new_state += 1
        else:
            tally.data_lost += 1
            pytest.fail(f"{where}: the branch moved to a partial commit {sorted(files)}")
        run(push(chosen), env, tmp_path)
        tally.reruns_completed += 1
        assert list(system_temp.iterdir()) == [], f"{where}: the re-run left what the killed run left in TMPDIR"
        after, files = branch_files(hub, "ckpt")
        assert files == references[chosen], where
        assert head == old or after == head, f"{where}: the re-run found the killed push's commit incomplete"
        current = chosen
    report(tally.line("push", time.monotonic() - started))
    assert tally.data_lost == 0 and tally.killed > 0


def test_kill_pull(
    tiny_run: Path,
    hub: RunningHub,
    tmp_path: Path,
    env: dict[str, str],
    system_temp: Path,
    report: Callable[[str], None],
) -> None:
    rng = random.Random(SEED + 2)
    run(["push", str(tiny_run / "checkpoint-30"), "--repo", REPO, "--revision", "pullme"], env, tmp_path)
    _, remote = branch_files(hub, "pullme")
    check_against(tiny_run / "checkpoint-30", remote)
    parent = tmp_path / "pulled"
    target = parent / "checkpoint-30"
    pull = ["pull", REPO, "--revision", "pullme", "--to", str(parent)]
    took = run(pull, env, tmp_path)
    assert digests(target) == remote
    shutil.rmtree(parent)
    hooks = [("GET", r"/resolve/[0-9a-f]{40}/adapter_model\.safetensors$"), ("GET", r"/tree/"), "staged"]
    tally, started = Tally(), time.monotonic()
    for i in range(RUNS + len(hooks)):
        where = f"pull run {i}, HUBSYNC_KILL_SEED={SEED}"
        tally.runs += 1
        proc = start(pull, env, tmp_path)
        hook = hooks[i] if i < len(hooks) else None
        if isinstance(hook, tuple):
            killed = kill_when_held(proc, hub, *hook)
        elif hook == "staged":
            killed = kill_when_staged(proc, parent, with_files=True)
        else:
            killed = kill_at_random(proc, rng.uniform(0.05, 1.0) * took)
        tally.killed += killed
        tally.finished_first += not killed
        tally.count_system_temp(system_temp)
        left = not_temp(parent) if parent.exists() else []
        if left == []:
            tally.old_state += 1
            run(pull, env, tmp_path)
            tally.reruns_completed += 1
            assert list(system_temp.iterdir()) == [], f"{where}: the re-run left what the killed run left in TMPDIR"
            assert [p.name for p in parent.iterdir()] == ["checkpoint-30"], f"{where}: temp files left"
        elif left == ["checkpoint-30"] and digests(target) == remote:
            tally.new_state += 1
        else:
            tally.data_lost += 1
            pytest.fail(f"{where}: left {left}, the target {digests(target) if target.exists() else None}")
        assert digests(target) == remote, where
        shutil.rmtree(parent)
    report(tally.line("pull", time.monotonic() - started))
    assert tally.data_lost == 0 and tally.killed > 0


def test_system_temp_folders_of_killed_runs_are_removed_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a killed push staged in the system temp folder (converted weights, perhaps) does not stay there."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the standard library's own setting for it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    stale = tmp_path / f".hubsync-tmp-push-p{int(dead.stdout)}-abc123"
    (stale / "sub").mkdir(parents=True)
    live = tmp_path / f".hubsync-tmp-push-p{os.getppid()}-abc123"  # a process still running
    live.mkdir()
    other = tmp_path / "someone-elses"
    other.mkdir()

    with system_temp_dir("push") as staging:
        assert staging.parent == tmp_path and is_temp(staging)
        assert staging.stat().st_mode & 0o077 == 0  # private: it may hold training state
        assert not stale.exists() and live.exists() and other.exists()

    assert not staging.exists()
