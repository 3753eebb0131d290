#!/usr/bin/env python
"""Benchmark how much HubsyncCallback slows the training it pushes from.

Run with the project's venv:

    .venv/bin/python bench/callback.py [--repeat N] [--steps N] [--save-steps N]   (or: make bench)

The callback must never block a training step: each save is staged by hard links and pushed by a worker in the
background (a child process at nice 19 by default, or a thread). This measures the wall time of a real tiny
training run (hubsync.tinyrun: Trainer + PEFT on CPU, a checkpoint every --save-steps steps), each in a fresh
process: alone, with HubsyncCallback(training_state="keep") (the process worker), and with worker="thread". Runs
alternate (alone, process, thread, alone, ...), and the ratios of the medians are reported. "training" ends when
the Trainer calls on_train_end (before the callback waits for the pushes left); "total" is until train() returns,
that wait included. The local Hub is a separate `hubsync localhub` process at nice 19, standing in for a remote
Hub. Only reports; never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PY, fmt, loadavg, ratio, start_hub

CASES = ("alone", "process", "thread")

# One training run, in its own process; prints {"training": s, "total": s, "left_at_end": n} as its last line.
DRIVER = """
import json, sys, time
from transformers import TrainerCallback
from hubsync.tinyrun import train_tiny_lora
out, steps, save_steps, worker, repo = sys.argv[1:6]
ended = {}
class EndOfTraining(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        ended["at"] = time.monotonic()
        ended["left"] = len(callbacks[-1].pending) if worker != "none" else 0
callbacks = [EndOfTraining()]
start = time.monotonic()
if worker != "none":
    import hubsync
    callbacks.append(hubsync.HubsyncCallback(repo, training_state="keep", worker=worker))
train_tiny_lora(out, max_steps=int(steps), save_steps=int(save_steps), callbacks=callbacks)
total = time.monotonic() - start
print(json.dumps({"training": ended["at"] - start, "total": total, "left_at_end": ended["left"]}))
"""


@dataclass
class Run:
    training: float
    total: float
    left_at_end: int
    returncode: int


def one_run(work: Path, case: str, steps: int, save_steps: int, env: dict[str, str], repo: str) -> Run:
    worker = "none" if case == "alone" else case
    argv = [PY, "-c", DRIVER, str(work / "run"), str(steps), str(save_steps), worker, repo]
    done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, check=False)
    try:
        got = json.loads(done.stdout.strip().splitlines()[-1])
        return Run(got["training"], got["total"], got["left_at_end"], done.returncode)
    except (IndexError, ValueError, KeyError):
        print(done.stderr[-2000:], file=sys.stderr)
        return Run(0.0, 0.0, 0, done.returncode or 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--save-steps", type=int, default=30)
    args = parser.parse_args()
    print(f"load average before: {loadavg()}")
    runs: dict[str, list[Run]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory(prefix="hubsync-bench-callback-") as tmp:
        root = Path(tmp)
        hub, env = start_hub(root / "hub")
        try:
            (root / "warm-up").mkdir()
            warm = one_run(root / "warm-up", "process", args.save_steps, args.save_steps, env, "me/warm-up")
            print(f"  warm-up (not counted): {warm.total:.2f} s", flush=True)
            for i in range(args.repeat):
                for case in CASES:
                    work = root / f"{case}-{i}"
                    work.mkdir()
                    run = one_run(work, case, args.steps, args.save_steps, env, f"me/{case}-{i}")
                    runs[case].append(run)
                    print(
                        f"  {case:8} run {i}: training {run.training:6.2f} s, total {run.total:6.2f} s, "
                        f"{run.left_at_end} checkpoint(s) left to push when training ended (exit {run.returncode})",
                        flush=True,
                    )
        finally:
            hub.terminate()
            hub.wait()
    checkpoints = -(-args.steps // args.save_steps)

    def median(case: str, what: str) -> float | None:
        values = [getattr(r, what) for r in runs[case] if r.returncode == 0]
        return statistics.median(values) if values else None

    print()
    print(f"training: {args.steps} steps, a checkpoint every {args.save_steps} ({checkpoints} checkpoints)")
    for case in CASES:
        print(
            f"  {case:8} training median {fmt(median(case, 'training'), '6.2f')} s, "
            f"total median {fmt(median(case, 'total'), '6.2f')} s"
        )
    for case in CASES[1:]:
        training = ratio(median(case, "training"), median("alone", "training"))
        total = ratio(median(case, "total"), median("alone", "total"))
        print(f"  ratio {case}/alone: training {fmt(training, '.3f')}x, total {fmt(total, '.3f')}x")
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
