#!/usr/bin/env python
"""Benchmark how much `hubsync watch` slows the training it watches.

Run with the project's venv:

    .venv/bin/python bench/watch.py [--repeat N] [--steps N] [--save-steps N]   (or: make bench)

The issue asks that watch never block or slow the training process. This measures it on this machine, where
training and watch share two cores: the wall time of a real tiny training run (`python -m hubsync.tinyrun`:
Trainer + PEFT on CPU, a checkpoint every --save-steps steps), alone and with `hubsync watch --training-state
keep` attached from its start, pushing every checkpoint as it appears. Runs alternate (alone, watched, alone,
...) and the ratio of the medians is reported, with the number of checkpoints the watch pushed while training
ran and how long after the training ended the watch finished.

The local Hub is a separate `hubsync localhub` process at low priority (nice 19): a real Hub is another machine,
and its work should not count against the training. The watch runs at its default priority (`--nice 10`).
Only reports; never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PY, fmt, hubsync_cmd, loadavg, ratio, start_hub


@dataclass
class Run:
    wall: float  # the training process, start to exit
    returncode: int
    pushed_during: int = 0  # checkpoints on the Hub when the training process exited
    watch_after: float | None = None  # seconds the watch ran on after training ended


def train(out: Path, steps: int, save_steps: int) -> list[str]:
    return [PY, "-m", "hubsync.tinyrun", str(out), "--max-steps", str(steps), "--save-steps", str(save_steps)]


def alone(work: Path, steps: int, save_steps: int) -> Run:
    start = time.monotonic()
    done = subprocess.run(train(work / "run", steps, save_steps), capture_output=True, check=False)
    return Run(time.monotonic() - start, done.returncode)


def watched(work: Path, steps: int, save_steps: int, env: dict[str, str], repo: str) -> Run:
    run = work / "run"
    watch = subprocess.Popen(
        [*hubsync_cmd(), "watch", str(run), "--repo", repo, "--training-state", "keep", "--interval", "0.5", "--json"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    start = time.monotonic()
    done = subprocess.run(train(run, steps, save_steps), capture_output=True, check=False)
    ended = time.monotonic()
    state = run / ".hubsync" / "watch.json"
    try:
        records = json.loads(state.read_text())["records"] if state.exists() else []
        pushed_during = sum(len(r["pushed"]) for r in records if r["repo"] == repo)
    except (OSError, ValueError, KeyError, TypeError):
        pushed_during = 0
    try:
        watch.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        watch.kill()
        watch.communicate()
    after = time.monotonic() - ended
    code = done.returncode or watch.returncode
    return Run(ended - start, code, pushed_during, after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--save-steps", type=int, default=30)
    args = parser.parse_args()
    print(f"load average before: {loadavg()}")
    with tempfile.TemporaryDirectory(prefix="hubsync-bench-watch-") as tmp:
        root = Path(tmp)
        hub, env = start_hub(root / "hub")
        runs: dict[str, list[Run]] = {"alone": [], "watched": []}
        try:
            (root / "warm-up").mkdir()
            warm = alone(root / "warm-up", args.save_steps, args.save_steps)  # the page cache, not the training
            print(f"  warm-up (not counted): {warm.wall:.2f} s", flush=True)
            for i in range(args.repeat):
                for case in ("alone", "watched"):
                    work = root / f"{case}-{i}"
                    work.mkdir()
                    if case == "alone":
                        run = alone(work, args.steps, args.save_steps)
                    else:
                        run = watched(work, args.steps, args.save_steps, env, f"me/watched-{i}")
                    runs[case].append(run)
                    extra = (
                        f"; {run.pushed_during} pushed while training ran, watch done {run.watch_after:.1f} s after"
                        if case == "watched" and run.watch_after is not None
                        else ""
                    )
                    print(f"  {case:8} run {i}: {run.wall:6.2f} s (exit {run.returncode}){extra}", flush=True)
        finally:
            hub.terminate()
            hub.wait()
    checkpoints = -(-args.steps // args.save_steps)
    medians = {k: statistics.median(r.wall for r in v if r.returncode == 0) for k, v in runs.items()}
    print()
    print(f"training: {args.steps} steps, a checkpoint every {args.save_steps} ({checkpoints} checkpoints), 2 cores")
    print(f"  alone:   median {fmt(medians['alone'], '6.2f')} s")
    print(f"  watched: median {fmt(medians['watched'], '6.2f')} s (watch pushing each checkpoint, state kept)")
    print(f"  ratio watched/alone: {fmt(ratio(medians['watched'], medians['alone']), '.3f')}x")
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
