#!/usr/bin/env python
"""Benchmark hubsync against the `hf` CLI on a local Hub that offers Xet storage and on one that offers only
git-LFS: pushes of a fresh, an unchanged, a copied and a changed checkpoint, and pulls.

Run with the project's venv:

    .venv/bin/python bench/xet.py [--repeat N] [--quick] [--keep] [--state-format safe|pickle]

No targets of the issue's apply here; what it shows (each figure measured side by side in one run):

* that hubsync is no slower than `hf upload` / `hf download` with Xet, as without;
* that an unchanged re-push uploads 0 bytes with Xet as with git-LFS;
* what Xet's chunk deduplication saves on a checkpoint pushed again to a new branch, on the next checkpoint of
  a run (1% of the adapter weights changed, a new optimizer state) and on one where only a tenth of the tensors
  changed (frozen layers), against git-LFS, which sends whole files.

For every repetition, a child process with torch makes two checkpoints shaped like a LoRA checkpoint with its
training state (new random values every repetition, so that no repository and no cache of the Hub has seen them):

* checkpoint-50: adapter_model.safetensors (random fp32, ~40 MB), optimizer.pt (torch.save of AdamW-like
  exp_avg and exp_avg_sq per adapter tensor, ~80 MB), scheduler.pt and rng_state.pth (small), trainer_state.json,
  adapter_config.json;
* checkpoint-60: a copy of checkpoint-50 whose trainer_state.json says global_step 60 (the same weights);
* checkpoint-100: checkpoint-50's adapter with 1% of its values, at random places, changed slightly; a new random
  optimizer state; its own scheduler.pt, rng_state.pth and trainer_state.json;
* checkpoint-110: checkpoint-100 with only the first of its 10 adapter tensors (values and AdamW moments) new,
  as if the other layers were frozen.

Then, on each of the two Hubs (a `running_hub(..., xet=True)` and a `running_hub(..., xet=False)` in threads of
this process), with hubsync pushing to me/bench-R and hf to me/bench-hf-R (new repositories every repetition):

1. push: `hubsync push checkpoint-50 --repo me/bench-R --training-state keep` (with --training-state-format safe,
   hubsync's default: the training state pushed pickle-free; --state-format pickle pushes the files as they are) vs
   `hf upload me/bench-hf-R checkpoint-50 .`;
2. re-push: the same two commands again (hubsync commits nothing; hf makes an empty commit or none);
3. new branch: `hubsync push checkpoint-60 ...` (branch checkpoint-60) vs
   `hf upload me/bench-hf-R checkpoint-60 . --revision checkpoint-60`;
4. next checkpoint: the same for checkpoint-100, then for checkpoint-110;
5. pull: `hubsync pull me/bench-R --revision checkpoint-50 --to FRESH` vs
   `hf download me/bench-R --revision checkpoint-50 --local-dir FRESH`, each with a fresh HF_HOME, twice: the
   first download of the revision from the Hub, and once more. (hf download fetches what hubsync pushed: with the
   safe format, the pickle-free files, which hubsync pull turns back into optimizer.pt & co. with torch.)

Measured: the wall time of each command (a whole CLI process, interpreter start-up included, as a user sees it),
median over the repetitions, and the ratio of medians hubsync / hf on each Hub; and the bytes the Hub received
during each push: with Xet, the growth of the repository's Xet storage (its xorbs: the chunks uploaded, after
hf_xet's deduplication and compression) plus the bytes of commit bodies; without Xet, the bytes of git-LFS uploads
and commit bodies (`hub.server.uploaded_bytes`). The order of the Hubs, and of hubsync and hf within each case,
alternates every repetition, so that a slow spell of the shared machine hits both alike.

Pushes of one side (hubsync or hf) on one Hub share a HF_HOME for a repetition (a user's machine: hf_xet keeps a
cache there); every pull gets a fresh one. --quick (~10 MB checkpoints, one repetition) is a smoke test; the full
run (~120 MB checkpoints, 3 repetitions) takes about 2 minutes on 2 cores (with --state-format pickle, 2.5 minutes
a repetition: see the help). Only reports; never asserts. Exit code 0 unless the benchmark itself cannot run.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from _common import Series as _Series
from _common import fmt, hf_cmd, hubsync_cmd, human_bytes, loadavg, ratio, settle, work_folder

from hubsync.localhub import RunningHub, running_hub

PY = sys.executable
STEP, COPY_STEP, NEXT_STEP, PART_STEP = 50, 60, 100, 110
FIRST, COPY, NEXT, PART = (f"checkpoint-{s}" for s in (STEP, COPY_STEP, NEXT_STEP, PART_STEP))
HUBS = ("xet", "lfs")
SIDES = ("hubsync", "hf")
CASES = {
    "push": f"push {FIRST} to a new repository",
    "repush": f"re-push {FIRST} unchanged",
    "branch": f"push {COPY} (same files, new branch)",
    "next": f"push {NEXT} (1% of weights changed, new optimizer)",
    "part": f"push {PART} (1 of 10 tensors changed, in weights and optimizer)",
    "pull": f"pull {FIRST} (first download)",
    "pull2": f"pull {FIRST} again",
}
PUSHES = {"push": FIRST, "repush": FIRST, "branch": COPY, "next": NEXT, "part": PART}  # case -> checkpoint

# ---------------------------------------------------------------------------------------------------------
# The checkpoints, made by a child process so that this process (which serves the Hubs) never imports torch.
# ---------------------------------------------------------------------------------------------------------

GENERATE = textwrap.dedent(
    r"""
    import json, random, shutil, sys, time
    from pathlib import Path
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    spec = json.loads(sys.argv[1])
    run, scale, seed = Path(spec["dir"]), spec["scale"], spec["seed"]
    t0 = time.perf_counter()
    n = int(1_000_000 * scale)  # 10 tensors of n fp32 values: 40 MB of adapter at scale 1, 80 MB of optimizer
    config = {"peft_type": "LORA", "r": 16, "task_type": "CAUSAL_LM",
              "base_model_name_or_path": "meta-llama/Llama-3.1-8B"}
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)

    def moments():  # AdamW's exp_avg and exp_avg_sq of one adapter tensor
        return torch.randn(n, generator=g) * 1e-4, torch.rand(n, generator=g) * 1e-8

    def trainer_state(dst, step):
        state = {"global_step": step, "epoch": step / 100, "log_history": [{"step": step, "loss": 1.0 / step}]}
        (dst / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")

    def write(name, step, adapter, state):
        dst = run / name
        dst.mkdir(parents=True)
        names = [f"base_model.model.layers.{i}.lora.weight" for i in range(len(adapter))]
        save_file(dict(zip(names, adapter)), str(dst / "adapter_model.safetensors"), metadata={"format": "pt"})
        (dst / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        opt = {i: {"step": torch.tensor(float(step)), "exp_avg": a, "exp_avg_sq": q} for i, (a, q) in enumerate(state)}
        groups = [{"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "params": list(range(10))}]
        torch.save({"state": opt, "param_groups": groups}, dst / "optimizer.pt")
        torch.save({"base_lrs": [2e-4], "last_epoch": step, "_step_count": step + 1}, dst / "scheduler.pt")
        random.seed(seed + step)
        np.random.seed(seed + step)
        torch.manual_seed(seed + step)
        states = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}
        torch.save(states, dst / "rng_state.pth")
        trainer_state(dst, step)
        return dst

    adapter = [rng.standard_normal(n, dtype=np.float32) for _ in range(10)]
    first = write(spec["first"], spec["step"], adapter, [moments() for _ in range(10)])

    # The same files as a checkpoint of another step: only trainer_state.json differs.
    shutil.copytree(first, run / spec["copy"])
    trainer_state(run / spec["copy"], spec["copy_step"])

    # The next checkpoint: 1% of every adapter tensor's values, at random places, moved a little; a new optimizer
    # state (as a run's next checkpoint: every moment changes).
    adapter = [t.copy() for t in adapter]
    for t in adapter:
        at = rng.choice(n, size=n // 100, replace=False)
        t[at] += rng.standard_normal(at.size, dtype=np.float32) * 1e-3
    state = [moments() for _ in range(10)]
    write(spec["next"], spec["next_step"], adapter, state)

    # The one after: as if 9 of the 10 adapter tensors were frozen, only the first one (its values and moments)
    # changes.
    adapter[0] = rng.standard_normal(n, dtype=np.float32)
    state[0] = moments()
    write(spec["part"], spec["part_step"], adapter, state)

    made = sorted(run.iterdir(), key=lambda d: int(d.name.split("-")[1]))
    sizes = {d.name: {p.name: p.stat().st_size for p in d.iterdir()} for d in made}
    print(json.dumps({"seconds": time.perf_counter() - t0, "files": sizes}))
    """
)


@dataclass
class Run:
    wall: float
    returncode: int
    stdout: str
    stderr: str
    received: int = 0  # bytes the Hub received while the command ran (pushes)
    check: str = ""  # pulls: how the pulled files compare with the pushed folder


class Series(_Series):
    @property
    def received(self) -> float | None:
        return statistics.median(r.received for r in self.runs) if self.runs else None


def run_timed(cmd: list[str], env: dict[str, str], scratch: Path) -> Run:
    """Wall time of the whole child process. stdout/stderr go to files (a pipe could fill up and stall it)."""
    settle()
    out_path, err_path = scratch / "child.stdout", scratch / "child.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=scratch)
        wall = time.perf_counter() - t0
    return Run(wall, proc.returncode, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"))


def files_of(folder: Path) -> dict[str, int]:
    """Relative path -> size of the regular files under folder, leaving out hf's .cache metadata."""
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in folder.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(folder).parts
    }


def compare(source: Path, pulled: Path) -> str:
    """How the files of `source` came back: byte-identical, different (the training state pushed pickle-free and
    rebuilt by hubsync pull: same content, other bytes) or not there (hf download of a pickle-free revision gets
    the pickle-free files instead). Files the pull added, such as hubsync's model card, are left out."""
    src, got = files_of(source), files_of(pulled)
    same = [n for n in sorted(src) if n in got and filecmp.cmp(source / n, pulled / n, shallow=False)]
    other = [n for n in sorted(src) if n in got and n not in same]
    missing = [n for n in sorted(src) if n not in got]
    return (
        f"{len(same)}/{len(src)} byte-identical"
        + (f"; other bytes: {', '.join(other)}" if other else "")
        + (f"; not in the revision: {', '.join(missing)}" if missing else "")
    )


# ---------------------------------------------------------------------------------------------------------
# The measurements.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    hubs: dict[str, RunningHub]
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)  # checkpoint -> file -> bytes
    generate_s: list[float] = field(default_factory=list)
    said: dict[str, str] = field(default_factory=dict)  # "case (hub)" -> what hubsync said, first repetition
    checks: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (case, hub, side) -> pull check

    @property
    def scratch(self) -> Path:
        return self.work / "scratch"

    def run_dir(self, rep: int) -> Path:
        return self.work / f"run-{rep}"

    def env(self, hub: str, side: str, home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSYNC_", "HF_", "HUGGINGFACE_"))}
        env.update(
            HF_ENDPOINT=self.hubs[hub].endpoint,
            HF_TOKEN=self.hubs[hub].token,
            HF_HOME=str(home),
            HF_HUB_DISABLE_UPDATE_CHECK="1",  # no PyPI look-up (once a day for a user), no internet here anyway
        )
        if side == "hf" and hub == "lfs":
            # huggingface_hub uploads through Xet whenever hf_xet is installed, and fails on a Hub without it:
            # a user of such a Hub sets this. hubsync asks the Hub instead.
            env["HF_HUB_DISABLE_XET"] = "1"
        return env

    def generate(self, rep: int) -> None:
        spec = {
            "dir": str(self.run_dir(rep)),
            "seed": 1000 * (rep + 1),
            "scale": 0.08 if self.args.quick else 1.0,
            "first": FIRST,
            "copy": COPY,
            "next": NEXT,
            "part": PART,
            "step": STEP,
            "copy_step": COPY_STEP,
            "next_step": NEXT_STEP,
            "part_step": PART_STEP,
        }
        proc = subprocess.run([PY, "-c", GENERATE, json.dumps(spec)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"could not make the checkpoints:\n{proc.stderr}")
        made = json.loads(proc.stdout.strip().splitlines()[-1])
        self.generate_s.append(made["seconds"])
        self.sizes = made["files"]

    def repos(self, rep: int) -> dict[str, str]:
        user = self.hubs["xet"].user
        return {"hubsync": f"{user}/bench-{rep}", "hf": f"{user}/bench-hf-{rep}"}

    def received(self, hub: str, repo: str) -> int:
        """Bytes the Hub has received for the repository so far: its Xet storage's xorbs (the Xet Hub), plus
        what came as git-LFS uploads and commit bodies (counted for the whole Hub; one command runs at a time)."""
        server = self.hubs[hub].server
        xorbs = server.xet.stored_bytes("model", repo) if server.xet is not None else 0
        return xorbs + server.uploaded_bytes

    def push(self, hub: str, side: str, rep: int, ckpt: str) -> Run:
        folder = self.run_dir(rep) / ckpt
        repo = self.repos(rep)[side]
        if side == "hubsync":
            cmd = [*hubsync_cmd(), "push", str(folder), "--repo", repo, "--training-state", "keep"]
            cmd += ["--training-state-format", self.args.state_format]
        else:
            cmd = [*hf_cmd(), "upload", repo, str(folder), "."]
            if ckpt != FIRST:
                cmd += ["--revision", ckpt]  # hf makes the branch
        home = self.work / f"home-{hub}-{side}-{rep}"
        before = self.received(hub, repo)
        run = run_timed(cmd, self.env(hub, side, home), self.scratch)
        run.received = self.received(hub, repo) - before
        return run

    def pull(self, hub: str, side: str, rep: int, again: bool) -> Run:
        name = f"pull-{hub}-{side}-{rep}-{int(again)}"
        out, home = self.work / name, self.work / f"home-{name}"
        repo = self.repos(rep)["hubsync"]
        if side == "hubsync":
            cmd = [*hubsync_cmd(), "pull", repo, "--revision", FIRST, "--to", str(out)]
            got = out / FIRST
        else:
            cmd = [*hf_cmd(), "download", repo, "--revision", FIRST, "--local-dir", str(out)]
            got = out
        run = run_timed(cmd, self.env(hub, side, home), self.scratch)
        if run.returncode == 0:
            run.check = compare(self.run_dir(rep) / FIRST, got)
        if not self.args.keep:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(home, ignore_errors=True)
        return run


def measure(bench: Bench) -> dict[tuple[str, str, str], Series]:
    series = {(case, hub, side): Series() for case in CASES for hub in HUBS for side in SIDES}
    checks = bench.checks

    def both(case: str, hub: str, rep: int, do: Callable[..., Run]) -> None:
        # hubsync first in even repetitions, hf first in odd ones: a warmer page cache or a slow spell of the
        # shared machine hits both alike.
        for side in SIDES if rep % 2 == 0 else SIDES[::-1]:
            run = do(side=side)
            series[case, hub, side].add(run)
            if run.check and (case, hub, side) not in checks:
                checks[case, hub, side] = run.check
            if rep == 0 and side == "hubsync" and run.returncode == 0:
                lines = [line for line in run.stdout.splitlines() if line.strip() and not line.startswith(" ")]
                bench.said[f"{case} ({hub})"] = lines[0] if lines else "(nothing)"

    for rep in range(bench.args.repeat):
        t0 = time.perf_counter()
        bench.generate(rep)
        for hub in HUBS if rep % 2 == 0 else HUBS[::-1]:
            for case, ckpt in PUSHES.items():
                both(case, hub, rep, partial(bench.push, hub=hub, rep=rep, ckpt=ckpt))
            both("pull", hub, rep, partial(bench.pull, hub=hub, rep=rep, again=False))
            both("pull2", hub, rep, partial(bench.pull, hub=hub, rep=rep, again=True))
        if not bench.args.keep:
            shutil.rmtree(bench.run_dir(rep), ignore_errors=True)
        print(
            f"  repetition {rep + 1}/{bench.args.repeat}: {time.perf_counter() - t0:.1f} s "
            f"(making the checkpoints {bench.generate_s[-1]:.1f} s; load {loadavg()})",
            file=sys.stderr,
        )
    return series


# ---------------------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------------------


def report(series: dict[tuple[str, str, str], Series], bench: Bench) -> None:
    args = bench.args
    size = {ckpt: sum(files.values()) for ckpt, files in bench.sizes.items()}
    pushed_size = {case: size[ckpt] for case, ckpt in PUSHES.items()}

    def secs(case: str, hub: str) -> tuple[str, str, str]:
        hs, hf = series[case, hub, "hubsync"], series[case, hub, "hf"]
        shown = ["FAILED" if s.failed is not None and not s.runs else fmt(s.wall, ".2f") for s in (hs, hf)]
        return shown[0], shown[1], fmt(ratio(hs.wall, hf.wall), ".2f")

    def received(case: str, hub: str) -> tuple[str, str]:
        if case not in PUSHES:
            return "", ""
        return human_bytes(series[case, hub, "hubsync"].received), human_bytes(series[case, hub, "hf"].received)

    head = (
        f"{'case':<72} {'Xet: hubsync':>12} {'hf':>6} {'ratio':>5}   {'LFS: hubsync':>12} {'hf':>6} {'ratio':>5}   "
        f"{'received Xet: hubsync':>21} {'hf':>9}   {'LFS: hubsync':>12} {'hf':>9}   {'of':>9}"
    )
    print()
    print(
        f"hubsync vs hf on a local Hub with Xet and on one with git-LFS only, median of {args.repeat} repetitions "
        f"(hubsync --training-state-format {args.state_format})"
    )
    print("(seconds: wall time of whole CLI processes; received: bytes the Hub took in during the push)")
    print(head)
    print("-" * len(head))
    for case, name in CASES.items():
        xs, ls = secs(case, "xet"), secs(case, "lfs")
        xr, lr = received(case, "xet"), received(case, "lfs")
        of = human_bytes(pushed_size[case]) if case in PUSHES else ""
        print(
            f"{name:<72} {xs[0]:>12} {xs[1]:>6} {xs[2]:>5}   {ls[0]:>12} {ls[1]:>6} {ls[2]:>5}   "
            f"{xr[0]:>21} {xr[1]:>9}   {lr[0]:>12} {lr[1]:>9}   {of:>9}"
        )

    print()
    print("as rows for the README's Performance table:")
    print()
    print(
        "| case | Xet: hubsync / hf (s) | ratio | git-LFS: hubsync / hf (s) | ratio | received, Xet: hubsync / hf |"
        " received, git-LFS: hubsync / hf |"
    )
    print("|---|---|---|---|---|---|---|")
    for case, name in CASES.items():
        xs, ls = secs(case, "xet"), secs(case, "lfs")
        xr, lr = received(case, "xet"), received(case, "lfs")
        of = f" of {human_bytes(pushed_size[case])}" if case in PUSHES else ""
        x_recv = f"{xr[0]} / {xr[1]}{of}" if case in PUSHES else "-"
        l_recv = f"{lr[0]} / {lr[1]}{of}" if case in PUSHES else "-"
        print(f"| {name} | {xs[0]} / {xs[1]} | {xs[2]} | {ls[0]} / {ls[1]} | {ls[2]} | {x_recv} | {l_recv} |")

    print()
    for ckpt, files in bench.sizes.items():
        listed = ", ".join(f"{k} {human_bytes(v)}" for k, v in sorted(files.items()))
        print(f"{ckpt} ({human_bytes(size[ckpt])}): {listed}")
    print()
    print("pulled files against the pushed folder (first repetition):")
    for (case, hub, side), check in sorted(bench.checks.items()):
        print(f"  {case:<6} {hub:<4} {side:<8} {check}")
    print()
    print("hubsync said (first line, first repetition):")
    for key, line in bench.said.items():
        print(f"  {key:<16} {line}")
    print()
    print("notes:")
    print(
        f"  hubsync: `hubsync push CKPT --repo me/bench-R --training-state keep --training-state-format "
        f"{args.state_format}` (branch checkpoint-N, plus a model card, training_loss.svg and main's index); "
        "`hubsync pull me/bench-R --revision checkpoint-50 --to FRESH`"
    )
    print(
        "  hf: `hf upload me/bench-hf-R CKPT .` (checkpoint-50 to main; the others with --revision checkpoint-N); "
        "`hf download me/bench-R --revision checkpoint-50 --local-dir FRESH`"
    )
    print(
        "  received, Xet: growth of the repository's xorbs (chunks after hf_xet's dedup and compression; shards "
        "left out) + commit bodies; git-LFS: LFS uploads + commit bodies"
    )
    print(
        "  the local Hub deduplicates within a repository, in Xet storage as in git-LFS (huggingface.co's Xet "
        "also across repositories); a plain-HTTP download of a Xet file (hubsync pull's) is served from the file "
        "rebuilt by hf_xet the first time, then from that copy; hf download reads Xet directly"
    )
    print(
        "  env: HF_ENDPOINT, HF_TOKEN, HF_HUB_DISABLE_UPDATE_CHECK=1, HF_HOME per side, Hub and repetition for "
        "pushes, fresh for every pull; hf on the git-LFS Hub also HF_HUB_DISABLE_XET=1 (it fails there without)"
    )
    print(f"  making the checkpoints (not timed): median {statistics.median(bench.generate_s):.1f} s per repetition")
    print()
    print("spread (min..max seconds over the repetitions) and bytes received per run:")
    for (case, hub, side), s in series.items():
        if s.runs or s.failed:
            got = f"   received {', '.join(human_bytes(r.received) for r in s.runs)}" if case in PUSHES else ""
            print(f"  {case:<6} {hub:<4} {side:<8} {s.spread():>13}{got}")
    for (case, hub, side), s in series.items():
        if s.failed is not None:
            print(f"\n{case} {hub} {side} FAILED (exit code {s.failed.returncode}):\n{s.failed.stderr.strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, help="repetitions of every measurement (default 3; 1 with --quick)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (checkpoints, pulls, Hub stores)")
    parser.add_argument("--quick", action="store_true", help="small checkpoints (~10 MB): a smoke test")
    parser.add_argument(
        "--state-format",
        choices=["safe", "pickle"],
        default="safe",
        help="hubsync push's --training-state-format: safe (safetensors + JSON, hubsync's default; then pull "
        "rebuilds optimizer.pt etc. with torch) or pickle (the files as they are, as hf uploads them; hubsync then "
        "reads every pickle whole for tokens on every push, re-pushes included)",
    )
    args = parser.parse_args()
    args.repeat = max(1, args.repeat if args.repeat is not None else (1 if args.quick else 3))

    with work_folder("xet", args.keep) as work:
        return _main(args, work)


def _main(args: argparse.Namespace, work: Path) -> int:
    print(f"machine: {os.cpu_count()} CPUs, load {loadavg()}, temp folder {work}", file=sys.stderr)
    (work / "scratch").mkdir()
    with running_hub(work / "hub-xet", xet=True) as xet, running_hub(work / "hub-lfs", xet=False) as lfs:
        bench = Bench(args, work, {"xet": xet, "lfs": lfs})
        print(f"measuring ({args.repeat} repetitions) ...", file=sys.stderr)
        try:
            series = measure(bench)
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        report(series, bench)
    print()
    print(f"load average at the end: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
