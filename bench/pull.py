#!/usr/bin/env python
"""Benchmark `hubsync pull` of a checkpoint revision against `hf download` of the same revision, on the local Hub.

Run with the project's venv:

    .venv/bin/python bench/pull.py [--repeat N] [--quick] [--keep]

Target (from the issue):

* pulling a checkpoint of about 250 MB in 5 files, verification included, takes at most 1.2 times the wall time
  of `hf download` of the same revision.

It makes, once, in a child process with torch, one checkpoint-50 folder shaped like a LoRA checkpoint with its
training state (6 files: the issue's 5 large-ish ones plus adapter_config.json):

* adapter_model.safetensors: random fp32 (~80 MB), written with safetensors.numpy.save_file;
* optimizer.pt: torch.save of a dict of random tensors (~160 MB);
* scheduler.pt, rng_state.pth: small torch.save dicts;
* trainer_state.json, adapter_config.json: small JSON.

and pushes it once with `hubsync push DIR --repo me/bench --training-state keep` (branch checkpoint-50).

Measured, interleaved and repeated (the machine is shared and noisy; the median of each is reported):

* wall time of one `hubsync pull me/bench --revision checkpoint-50 --to FRESH` process (it checks every file
  against the Hub's sha256 or git blob id), against one `hf download me/bench --revision checkpoint-50
  --local-dir FRESH` process, each into a new folder and with a new HF_HOME, so that no cache is reused; and the
  ratio of medians (target: at most 1.2);
* whether hubsync's pulled files are byte-identical to the pushed folder.

The local Hub runs in a thread of this process; every pull is a real CLI subprocess, so its wall time includes
interpreter start-up and imports, as a user sees them. --quick (~25 MB, one repetition) is a smoke test. Only
reports; never asserts. Exit code 0 unless the benchmark itself cannot run.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import Series, fmt, hf_cmd, hubsync_cmd, human_bytes, loadavg, ratio, settle, work_folder

from hubsync.localhub import RunningHub, running_hub

PY = sys.executable
STEP = 50
REVISION = f"checkpoint-{STEP}"

# ---------------------------------------------------------------------------------------------------------
# The checkpoint, made by a child process so that this process (which serves the Hub) never imports torch.
# ---------------------------------------------------------------------------------------------------------

GENERATE = textwrap.dedent(
    r"""
    import json, random, sys, time
    from pathlib import Path
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    spec = json.loads(sys.argv[1])
    dst, scale = Path(spec["dir"]), spec["scale"]
    dst.mkdir(parents=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(spec["seed"])
    g = torch.Generator().manual_seed(spec["seed"])
    # 80 MB of fp32 in 10 tensors of 2 M values each (scale 1).
    n = int(2_000_000 * scale)
    adapter = {f"base_model.model.layers.{i}.lora.weight": rng.standard_normal(n, dtype=np.float32) for i in range(10)}
    save_file(adapter, str(dst / "adapter_model.safetensors"), metadata={"format": "pt"})
    # 160 MB: exp_avg and exp_avg_sq per adapter tensor, as AdamW keeps them.
    state = {
        i: {
            "step": torch.tensor(float(spec["step"])),
            "exp_avg": torch.randn(n, generator=g) * 1e-4,
            "exp_avg_sq": torch.rand(n, generator=g) * 1e-8,
        }
        for i in range(10)
    }
    groups = [{"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "params": list(range(10))}]
    torch.save({"state": state, "param_groups": groups}, dst / "optimizer.pt")
    torch.save({"base_lrs": [2e-4], "last_epoch": spec["step"], "_step_count": spec["step"] + 1}, dst / "scheduler.pt")
    random.seed(spec["seed"])
    np.random.seed(spec["seed"])
    torch.manual_seed(spec["seed"])
    torch.save(
        {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()},
        dst / "rng_state.pth",
    )
    (dst / "trainer_state.json").write_text(
        json.dumps({"global_step": spec["step"], "epoch": 1.0, "log_history": []}, indent=2) + "\n"
    )
    config = {"peft_type": "LORA", "r": 16, "task_type": "CAUSAL_LM",
              "base_model_name_or_path": "meta-llama/Llama-3.1-8B"}
    (dst / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    sizes = {p.name: p.stat().st_size for p in dst.iterdir()}
    print(json.dumps({"seconds": time.perf_counter() - t0, "files": sizes}))
    """
)


@dataclass
class Run:
    wall: float
    returncode: int
    stdout: str
    stderr: str
    out_dir: Path


def run_timed(cmd: list[str], env: dict[str, str], scratch: Path, out_dir: Path) -> Run:
    """Wall time of the whole child process. stdout/stderr go to files (a pipe could fill up and stall it)."""
    settle()
    out_path, err_path = scratch / "child.stdout", scratch / "child.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=scratch)
        wall = time.perf_counter() - t0
    return Run(
        wall, proc.returncode, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"), out_dir
    )


# ---------------------------------------------------------------------------------------------------------
# The measurements.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    hub: RunningHub
    sizes: dict[str, int] = field(default_factory=dict)
    generate_s: float = 0.0
    push_s: float = 0.0
    hf_fetched: str = ""

    @property
    def scratch(self) -> Path:
        return self.work / "scratch"

    @property
    def source(self) -> Path:
        return self.work / "run" / REVISION

    @property
    def repo(self) -> str:
        return f"{self.hub.user}/bench"

    def env(self, hf: bool, home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSYNC_", "HF_", "HUGGINGFACE_"))}
        env.update(
            HF_ENDPOINT=self.hub.endpoint,
            HF_TOKEN=self.hub.token,
            HF_HOME=str(home),
            HF_HUB_DISABLE_UPDATE_CHECK="1",  # no PyPI look-up (once a day for a user), no internet here anyway
        )
        if hf:
            env["HF_HUB_DISABLE_XET"] = "1"  # the local Hub has no Xet; hubsync finds that out by itself
        return env

    def generate(self) -> None:
        spec = {"dir": str(self.source), "seed": 1234, "step": STEP, "scale": 0.1 if self.args.quick else 1.0}
        proc = subprocess.run([PY, "-c", GENERATE, json.dumps(spec)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"could not make the checkpoint:\n{proc.stderr}")
        made = json.loads(proc.stdout.strip().splitlines()[-1])
        self.generate_s, self.sizes = made["seconds"], made["files"]

    def push(self) -> None:
        cmd = [
            *hubsync_cmd(),
            "push",
            str(self.source),
            "--repo",
            self.repo,
            "--training-state",
            "keep",
            "--training-state-format",
            self.args.state_format,
        ]
        run = run_timed(cmd, self.env(hf=False, home=self.work / "home-push"), self.scratch, self.scratch)
        if run.returncode != 0:
            raise RuntimeError(f"hubsync push failed (exit code {run.returncode}):\n{run.stderr}")
        self.push_s = run.wall

    def hubsync_pull(self, rep: int) -> Run:
        out = self.work / f"pull-hubsync-{rep}"
        cmd = [*hubsync_cmd(), "pull", self.repo, "--revision", REVISION, "--to", str(out)]
        return run_timed(cmd, self.env(hf=False, home=self.work / f"home-hubsync-{rep}"), self.scratch, out)

    def hf_download(self, rep: int) -> Run:
        out = self.work / f"pull-hf-{rep}"
        cmd = [*hf_cmd(), "download", self.repo, "--revision", REVISION, "--local-dir", str(out)]
        return run_timed(cmd, self.env(hf=True, home=self.work / f"home-hf-{rep}"), self.scratch, out)


def files_of(folder: Path) -> dict[str, int]:
    """Relative path -> size of the regular files under folder, leaving out hf's .cache metadata."""
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in folder.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(folder).parts
    }


def compare(source: Path, pulled: Path) -> tuple[list[str], list[str], list[str]]:
    """(identical, differing or missing, extra) files of pulled against source."""
    src, got = files_of(source), files_of(pulled)
    same, bad = [], []
    for name in sorted(src):
        if name in got and filecmp.cmp(source / name, pulled / name, shallow=False):
            same.append(name)
        else:
            bad.append(name if name in got else f"{name} (missing)")
    return same, bad, sorted(set(got) - set(src))


def measure(bench: Bench) -> tuple[dict[str, Series], list[str]]:
    series = {"pull.hf": Series(), "pull.hubsync": Series()}
    checks: list[str] = []
    sides = [("pull.hubsync", bench.hubsync_pull), ("pull.hf", bench.hf_download)]
    for rep in range(bench.args.repeat):
        t0 = time.perf_counter()
        # Interleaved, and in the other order every other repetition, so that a slow spell on the shared machine
        # (or a warmer page cache for whoever goes second) hits both alike instead of one whole series.
        for key, side in sides if rep % 2 == 0 else sides[::-1]:
            run = side(rep)
            series[key].add(run)
            if key == "pull.hubsync" and run.returncode == 0:
                same, bad, extra = compare(bench.source, run.out_dir / REVISION)
                verdict = "byte-identical" if not bad else f"DIFFERENT: {', '.join(bad)}"
                checks.append(
                    f"  repetition {rep + 1}: {len(same)}/{len(same) + len(bad)} files {verdict}"
                    + (f"; also pulled {', '.join(extra)}" if extra else "")
                )
            if key == "pull.hf" and run.returncode == 0:
                got = files_of(run.out_dir)
                bench.hf_fetched = f"{len(got)} files, {human_bytes(sum(got.values()))}: {', '.join(sorted(got))}"
            if not bench.args.keep:
                shutil.rmtree(run.out_dir, ignore_errors=True)
        print(
            f"  repetition {rep + 1}/{bench.args.repeat}: {time.perf_counter() - t0:.1f} s (load {loadavg()})",
            file=sys.stderr,
        )
    return series, checks


# ---------------------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------------------


def report(series: dict[str, Series], checks: list[str], bench: Bench) -> None:
    args = bench.args
    hf, hs = series["pull.hf"], series["pull.hubsync"]
    total = sum(bench.sizes.values())

    head = f"{'case':<52} {'hf download (s)':>15} {'hubsync (s)':>11} {'ratio':>6} {'target':>7}"
    print()
    print(f"hubsync pull vs hf download on the local Hub, median of {args.repeat} interleaved runs")
    print("(wall time of whole CLI processes, each into a fresh folder with a fresh HF_HOME)")
    print(head)
    print("-" * len(head))
    name = f"pull {REVISION} ({len(bench.sizes)} files, {human_bytes(total)}, state {bench.args.state_format})"
    if hs.failed is not None and not hs.runs:
        print(f"{name:<52} {fmt(hf.wall, '15.2f')} {'FAILED':>11}")
    else:
        r = ratio(hs.wall, hf.wall)
        print(f"{name:<52} {fmt(hf.wall, '15.2f')} {fmt(hs.wall, '11.2f')} {fmt(r, '6.2f')} {'<= 1.2':>7}")

    print()
    print(f"the checkpoint folder ({', '.join(f'{k} {human_bytes(v)}' for k, v in sorted(bench.sizes.items()))})")
    print(
        "  6 files: the issue's 5 (adapter weights, optimizer, scheduler, RNG state, trainer state) plus "
        "adapter_config.json"
    )
    if bench.hf_fetched:
        print(f"  the revision as hf download fetched it: {bench.hf_fetched}")
    print()
    print("hubsync's pulled files against the pushed folder:")
    for line in checks or ["  (no successful pull)"]:
        print(line)

    print()
    print("notes:")
    print(
        f"  pushed once with `hubsync push {REVISION} --repo {bench.repo} --training-state keep` "
        f"({bench.push_s:.1f} s; making the folder {bench.generate_s:.1f} s, not timed)"
    )
    print(f"  hubsync: `hubsync pull {bench.repo} --revision {REVISION} --to FRESH` (verifies every file)")
    print(f"  hf: `hf download {bench.repo} --revision {REVISION} --local-dir FRESH`")
    print(
        "  env: HF_ENDPOINT, HF_TOKEN, a fresh HF_HOME per run, HF_HUB_DISABLE_UPDATE_CHECK=1; "
        "hf also HF_HUB_DISABLE_XET=1"
    )
    print("  os.sync() before every timed process; the local Hub serves the blobs from its store (page cache)")
    print()
    print("spread (min..max seconds over the repetitions):")
    for key, s in series.items():
        if s.runs or s.failed:
            print(f"  {key:<16} {s.spread():>13}")
    for key, s in series.items():
        if s.failed is not None:
            print(f"\n{key} FAILED (exit code {s.failed.returncode}):\n{s.failed.stderr.strip()}")
    if hs.runs:
        said = [line for line in hs.runs[0].stdout.splitlines() if line.strip()]
        print(f"\nhubsync pull said: {said[-1].strip() if said else '(nothing)'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, help="runs of each measurement (default 3; 1 with --quick)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (checkpoint, pulls, Hub store)")
    parser.add_argument("--quick", action="store_true", help="small files (~25 MB): a smoke test")
    parser.add_argument(
        "--state-format",
        choices=["pickle", "safe"],
        default="pickle",
        help="how the training state is pushed: pickle (the files as they are; default) or safe (safetensors + "
        "JSON: then pull rebuilds optimizer.pt etc. with torch, and the rebuilt files differ in bytes, not content)",
    )
    args = parser.parse_args()
    args.repeat = max(1, args.repeat if args.repeat is not None else (1 if args.quick else 3))

    with work_folder("pull", args.keep) as work:
        return _main(args, work)


def _main(args: argparse.Namespace, work: Path) -> int:
    print(f"machine: {os.cpu_count()} CPUs, load {loadavg()}, temp folder {work}", file=sys.stderr)
    (work / "scratch").mkdir()
    with running_hub(work / "hub") as hub:
        bench = Bench(args, work, hub)
        try:
            print(f"making {REVISION} and pushing it to {hub.endpoint} ...", file=sys.stderr)
            bench.generate()
            bench.push()
            print(f"measuring ({args.repeat} interleaved repetitions) ...", file=sys.stderr)
            series, checks = measure(bench)
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        report(series, checks, bench)
    print()
    print(f"load average at the end: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
