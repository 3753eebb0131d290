#!/usr/bin/env python
"""Benchmark `hubsync push` of a run's checkpoints against `hf upload` of the same folders, on the local Hub.

Run with the project's venv:

    .venv/bin/python bench/push.py [--repeat N] [--quick] [--keep] [--no-profile]   (or: make bench)

Targets (from the issue; ratios from one run):

* pushing 5 checkpoints of a run (safetensors weights, training state kept) takes at most 1.0 times the wall time
  of `hf upload` run once per checkpoint folder with the same files;
* re-pushing an unchanged checkpoint takes under 2 s and uploads 0 bytes.

It makes, once, a real tiny run with `python -m hubsync.tinyrun` (Trainer + PEFT on CPU, 5 checkpoints) and then,
in a child process with torch, for every measurement a fresh run folder of 5 checkpoint-N folders shaped like a
LoRA run on Llama-3.1-8B:

* adapter_model.safetensors: r=16 on q_proj and v_proj of 32 layers, fp32, new random values (~27 MB);
* optimizer.pt: AdamW state (exp_avg, exp_avg_sq per tensor: ~2x the adapter) with the real run's param_groups;
* scheduler.pt, training_args.bin: the real run's, with this run's learning rate, seed, output_dir and run_name;
* rng_state.pth: python, numpy and torch RNG states seeded for this run;
* adapter_config.json, trainer_state.json (log_history with losses and evals) and the placeholder README.md: the
  real run's.

The local Hub stores blobs by sha256 across all repositories, so every measurement pushes, to a repository of its
own, a run whose LFS files the Hub has never seen: none rides on bytes another one uploaded.

Measured, interleaved and repeated (the machine is shared and noisy; the median of each is reported):

* wall time of one `hubsync push RUN --select all --repo me/X --training-state keep` process, against the summed
  wall time of the 5 `hf upload me/Y RUN/checkpoint-N . --revision checkpoint-N` processes (hf creates the
  repository and the branch itself), and the ratio of medians (target: at most 1.0);
* then, on hubsync's repository, a re-push of the latest checkpoint unchanged: wall time (target: under 2 s) and the
  bytes the Hub received meanwhile (target: 0); for reference, the same for a second `hf upload` of that folder;
* bytes received by the Hub (LFS uploads + commit bodies) and HTTP requests, by route, of each push.

The local Hub runs in a thread of this process; every push is a real CLI subprocess, so its wall time includes
interpreter start-up and imports, as a user sees them. Optionally (default on), one more push with timers around
hubsync's phases shows where its time goes. --quick (1-layer adapter, a 5-step tiny run, one repetition) is a
~20 s smoke test; the full run takes about a minute and a half. Only reports; never asserts. Exit code 0 unless
the benchmark itself cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import Series as _Series
from _common import fmt, hf_cmd, hubsync_cmd, human_bytes, loadavg, ratio, settle, work_folder

from hubsync.localhub import RunningHub, running_hub
from hubsync.localhub.protocol import Router
from hubsync.localhub.store import StoreError

PY = sys.executable
CHECKPOINTS = 5
BASE_LR = 2e-4

# ---------------------------------------------------------------------------------------------------------
# Test runs, made by a child process so that this process (which serves the Hub) never imports torch.
# ---------------------------------------------------------------------------------------------------------

GENERATE = textwrap.dedent(
    r"""
    import json, random, shutil, sys, time
    from pathlib import Path
    import numpy as np
    import torch
    from safetensors.torch import save_file

    spec = json.loads(sys.argv[1])
    template = Path(spec["template"])
    L, H, KV, r = spec["layers"], spec["hidden"], spec["kv_dim"], spec["r"]
    shapes = {"q_proj": (H, H), "v_proj": (H, KV)}  # module: (in_features, out_features)
    t0 = time.perf_counter()
    out = {}
    for run in spec["runs"]:
        seed, lr, run_dir = run["seed"], run["lr"], Path(run["dir"])
        g = torch.Generator().manual_seed(seed)
        # The same TrainingArguments object is saved in every checkpoint of a run, as the Trainer does.
        ckpts = sorted(template.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        args = torch.load(ckpts[0] / "training_args.bin", weights_only=False)
        args.output_dir, args.run_name, args.learning_rate, args.seed = str(run_dir), run_dir.name, lr, seed
        for src in ckpts:
            dst = run_dir / src.name
            dst.mkdir(parents=True)
            step = int(src.name.split("-")[1])
            for name in ("trainer_state.json", "README.md"):
                shutil.copy2(src / name, dst / name)
            config = json.loads((src / "adapter_config.json").read_text())
            config.update(r=r, lora_alpha=2 * r, target_modules=sorted(shapes),
                          base_model_name_or_path="meta-llama/Llama-3.1-8B")
            (dst / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

            adapter = {}
            for i in range(L):
                for mod, (fin, fout) in shapes.items():
                    p = f"base_model.model.model.layers.{i}.self_attn.{mod}."
                    adapter[p + "lora_A.weight"] = torch.randn(r, fin, generator=g) / fin**0.5
                    adapter[p + "lora_B.weight"] = torch.randn(fout, r, generator=g) * 1e-3
            save_file(adapter, dst / "adapter_model.safetensors", metadata={"format": "pt"})

            opt = torch.load(src / "optimizer.pt", weights_only=True)
            groups = opt["param_groups"]
            groups[0]["params"], groups[0]["initial_lr"] = list(range(len(adapter))), lr
            for extra in groups[1:]:
                extra["params"], extra["initial_lr"] = [], lr
            state = {}
            for i, t in enumerate(adapter.values()):
                state[i] = {
                    "step": torch.tensor(float(step)),
                    "exp_avg": torch.randn(t.shape, generator=g) * 1e-4,
                    "exp_avg_sq": torch.rand(t.shape, generator=g) * 1e-8,
                }
            torch.save({"state": state, "param_groups": groups}, dst / "optimizer.pt")

            sched = torch.load(src / "scheduler.pt", weights_only=True)
            sched["base_lrs"] = [lr] * len(sched["base_lrs"])
            torch.save(sched, dst / "scheduler.pt")
            random.seed(seed + step)
            np.random.seed(seed + step)
            torch.manual_seed(seed + step)
            rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}
            torch.save(rng, dst / "rng_state.pth")
            torch.save(args, dst / "training_args.bin")
        out[str(run_dir)] = {p.relative_to(run_dir).as_posix(): p.stat().st_size for p in run_dir.glob("*/*")}
    print(json.dumps({"seconds": time.perf_counter() - t0, "files": out}))
    """
)

# Where the time of one `hubsync push` goes: the real CLI in one process, with timers around its phases.
# Rows whose label starts with spaces are spent inside the row above them. Reference only.
PROFILE = textwrap.dedent(
    r"""
    import json, sys, time
    started = time.time()
    t0 = time.perf_counter()
    out_path = sys.argv.pop(1)
    import hubsync.cli
    import hubsync.core.checkpoint as checkpoint
    import hubsync.core.plan as plan
    import hubsync.hub.client as client
    import hubsync.hub.push as push
    import huggingface_hub
    import huggingface_hub.lfs
    T = {"imports (hubsync.cli, hubsync.hub.client: huggingface_hub, httpx2, ...)": [time.perf_counter() - t0, 1]}
    MAIN = "CLI main(): from parsing the arguments to the end"
    T[MAIN] = [0.0, 1]

    def timed(owner, attr, name):
        fn = getattr(owner, attr, None)
        if fn is None:  # renamed or gone in this version: no row
            return
        T.setdefault(name, [0.0, 0])

        def inner(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                T[name][0] += time.perf_counter() - t
                T[name][1] += 1

        setattr(owner, attr, inner)

    timed(checkpoint, "read_checkpoint", "  read_checkpoint")
    timed(plan, "plan_push", "  plan_push (model card + loss plot)")
    timed(push, "execute_push", "  execute_push")
    timed(client.HubClient, "ensure_repo", "    ensure_repo (create_repo + repo_info)")
    timed(client.HubClient, "ensure_branch", "    ensure_branch (refs; list commits + create branch when new)")
    timed(client.HubClient, "branch_head", "    branch_head (refs)")
    timed(client.HubClient, "tree", "    tree (list the files of the branch head)")
    timed(client.HubClient, "commit_files", "    commit_files (checkpoint and index commits)")
    timed(client.HubClient, "offers_xet", "      offers_xet (GET xet-write-token)")
    timed(huggingface_hub.HfApi, "create_commit", "      create_commit (preupload, LFS upload, commit)")
    timed(huggingface_hub.lfs, "sha_fileobj", "        sha256 of the files (huggingface_hub.lfs.sha_fileobj)")
    timed(push, "_update_index", "    _update_index (main's index README)")
    timed(client.HubClient, "read_file", "      read_file (main's index.json: hf_hub_download)")
    sys.argv[0] = "hubsync"
    code = 0
    t0 = time.perf_counter()
    try:
        hubsync.cli.main()
    except SystemExit as exc:
        code = exc.code or 0
    T[MAIN][0] = time.perf_counter() - t0
    with open(out_path, "w") as f:
        json.dump({"started": started, "phases": T, "code": code}, f)
    """
)


# ---------------------------------------------------------------------------------------------------------
# Counting what reaches the Hub.
# ---------------------------------------------------------------------------------------------------------


class RequestLog:
    """Counts the requests the local Hub answers, by route (the handler's name), across all its threads."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def install(self) -> None:
        find = Router.find
        log = self

        def counted(router: Router[Any], method: str, path: str) -> Any:
            try:
                found = find(router, method, path)
            except StoreError:
                parts = path.split("/")
                log.add(f"{method} no route: {'/'.join(parts[5:6]) or path}")
                raise
            log.add(f"{method} {found[0].name}")
            return found

        Router.find = counted  # type: ignore[method-assign]

    def add(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.counts)


@dataclass
class Run:
    wall: float
    returncode: int
    stdout: str
    stderr: str
    uploaded: int  # bytes the Hub received while the command ran
    requests: Counter[str] = field(default_factory=Counter)
    started: float = 0.0  # time.time() just before the process was started

    def __add__(self, other: Run) -> Run:
        return Run(
            self.wall + other.wall,
            self.returncode or other.returncode,
            self.stdout + other.stdout,
            self.stderr + other.stderr,
            self.uploaded + other.uploaded,
            self.requests + other.requests,
            self.started,
        )


def run_timed(cmd: list[str], env: dict[str, str], scratch: Path, hub: RunningHub, log: RequestLog) -> Run:
    """Wall time of the whole child process, and what the Hub received meanwhile.

    stdout/stderr go to files (a pipe could fill up and stall the child)."""
    settle()
    out_path, err_path = scratch / "child.stdout", scratch / "child.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        before, requests = hub.server.uploaded_bytes, log.snapshot()
        started, t0 = time.time(), time.perf_counter()
        proc = subprocess.run(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=scratch)
        wall = time.perf_counter() - t0
        uploaded, requests = hub.server.uploaded_bytes - before, log.snapshot() - requests
    return Run(
        wall,
        proc.returncode,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
        uploaded,
        requests,
        started,
    )


# ---------------------------------------------------------------------------------------------------------
# The measurements.
# ---------------------------------------------------------------------------------------------------------


class Series(_Series):
    @property
    def uploaded(self) -> float | None:
        return statistics.median(r.uploaded for r in self.runs) if self.runs else None


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    template: Path
    hub: RunningHub
    log: RequestLog
    sizes: dict[str, int] = field(default_factory=dict)  # file name -> bytes, in the latest checkpoint
    run_bytes: int = 0
    generate_s: list[float] = field(default_factory=list)

    @property
    def latest(self) -> str:
        return f"checkpoint-{CHECKPOINTS * self.args.save_steps}"

    @property
    def scratch(self) -> Path:
        return self.work / "scratch"

    def env(self, hf: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSYNC_", "HF_", "HUGGINGFACE_"))}
        env.update(
            HF_ENDPOINT=self.hub.endpoint,
            HF_TOKEN=self.hub.token,
            HF_HOME=str(self.work / "hf-home"),
            HF_HUB_DISABLE_UPDATE_CHECK="1",  # no PyPI look-up (once a day for a user), no internet here anyway
        )
        if hf:
            env["HF_HUB_DISABLE_XET"] = (
                "1"  # this local Hub has no Xet (git-LFS only); hubsync finds that out by itself
            )
        return env

    def generate(self, runs: list[Path], seed: int) -> None:
        spec = {
            "template": str(self.template),
            "runs": [
                {"dir": str(d), "seed": seed + i, "lr": BASE_LR * (1 + (seed + i) / 1000)} for i, d in enumerate(runs)
            ],
            **self.args.shapes,
        }
        proc = subprocess.run([PY, "-c", GENERATE, json.dumps(spec)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"could not make the test runs:\n{proc.stderr}")
        made = json.loads(proc.stdout.strip().splitlines()[-1])
        self.generate_s.append(made["seconds"])
        files: dict[str, int] = made["files"][str(runs[0])]
        self.run_bytes = sum(files.values())
        last = f"{self.latest}/"
        self.sizes = {k.removeprefix(last): v for k, v in files.items() if k.startswith(last)}

    def hubsync_push(self, run_dir: Path, repo: str) -> Run:
        cmd = [*hubsync_cmd(), "push", str(run_dir), "--select", "all", "--repo", repo, "--training-state", "keep"]
        return run_timed(cmd, self.env(hf=False), self.scratch, self.hub, self.log)

    def hubsync_repush(self, ckpt: Path, repo: str) -> Run:
        cmd = [*hubsync_cmd(), "push", str(ckpt), "--repo", repo, "--training-state", "keep"]
        return run_timed(cmd, self.env(hf=False), self.scratch, self.hub, self.log)

    def hf_upload(self, ckpt: Path, repo: str) -> Run:
        cmd = [*hf_cmd(), "upload", repo, str(ckpt), ".", "--revision", ckpt.name]
        return run_timed(cmd, self.env(hf=True), self.scratch, self.hub, self.log)

    def hf_upload_all(self, run_dir: Path, repo: str) -> Run:
        total: Run | None = None
        for ckpt in sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
            run = self.hf_upload(ckpt, repo)
            total = run if total is None else total + run
            if run.returncode != 0:
                break
        assert total is not None
        return total


def measure(bench: Bench) -> dict[str, Series]:
    series = {k: Series() for k in ("push.hf", "push.hubsync", "repush.hf", "repush.hubsync")}
    latest = bench.latest

    def hubsync_side(run_dir: Path, repo: str) -> None:
        pushed = bench.hubsync_push(run_dir, repo)
        series["push.hubsync"].add(pushed)
        if pushed.returncode == 0:
            series["repush.hubsync"].add(bench.hubsync_repush(run_dir / latest, repo))

    def hf_side(run_dir: Path, repo: str) -> None:
        uploaded = bench.hf_upload_all(run_dir, repo)
        series["push.hf"].add(uploaded)
        if uploaded.returncode == 0:
            series["repush.hf"].add(bench.hf_upload(run_dir / latest, repo))

    for rep in range(bench.args.repeat):
        t0 = time.perf_counter()
        hs_run, hf_run = bench.work / f"run-{rep}-hubsync", bench.work / f"run-{rep}-hf"
        bench.generate([hs_run, hf_run], seed=1000 * (rep + 1))
        sides = [
            (hubsync_side, hs_run, f"{bench.hub.user}/bench-hubsync-{rep}"),
            (hf_side, hf_run, f"{bench.hub.user}/bench-hf-{rep}"),
        ]
        # Interleaved, and in the other order every other repetition, so that a slow spell on the shared machine
        # (or a warmer cache for whoever goes second) hits both alike instead of one whole series.
        for side, run_dir, repo in sides if rep % 2 == 0 else sides[::-1]:
            side(run_dir, repo)
        shutil.rmtree(hs_run, ignore_errors=True)
        shutil.rmtree(hf_run, ignore_errors=True)
        print(
            f"  repetition {rep + 1}/{bench.args.repeat}: {time.perf_counter() - t0:.1f} s "
            f"(making the runs {bench.generate_s[-1]:.1f} s; load {loadavg()})",
            file=sys.stderr,
        )
    return series


def profile(bench: Bench) -> tuple[dict[str, list[float]], float, float] | None:
    """One more push (fresh run, fresh repository) with timers: (phases, process wall, start-up to first line)."""
    run_dir = bench.work / "run-profile"
    bench.generate([run_dir], seed=999_000)
    out = bench.work / "profile.json"
    repo = f"{bench.hub.user}/bench-hubsync-profile"
    cmd = [PY, "-c", PROFILE, str(out), "push", str(run_dir), "--select", "all", "--repo", repo]
    cmd += ["--training-state", "keep"]
    try:
        run = run_timed(cmd, bench.env(hf=False), bench.scratch, bench.hub, bench.log)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    if run.returncode != 0 or not out.exists():
        print(f"profile run failed:\n{run.stderr}", file=sys.stderr)
        return None
    data = json.loads(out.read_text())
    return data["phases"], run.wall, data["started"] - run.started


# ---------------------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------------------


def report(series: dict[str, Series], bench: Bench) -> None:
    args = bench.args
    latest = bench.latest
    ckpt_bytes = sum(bench.sizes.values())
    push_hf, push_hs = series["push.hf"], series["push.hubsync"]
    re_hf, re_hs = series["repush.hf"], series["repush.hubsync"]

    head = (
        f"{'case':<46} {'hf upload (s)':>13} {'hubsync (s)':>11} {'ratio':>6} {'target':>7}   "
        f"{'uploaded: hf':>12} {'hubsync':>9} {'target':>6}"
    )
    print()
    print(f"hubsync push vs hf upload on the local Hub, median of {args.repeat} interleaved runs")
    print("(wall time of whole CLI processes; uploaded = bytes the Hub received: LFS uploads + commit bodies)")
    print(head)
    print("-" * len(head))

    def row(name: str, hf: Series, hs: Series, ratio: float | None, ratio_target: str, time_target: str) -> None:
        if hs.failed is not None and not hs.runs:
            print(f"{name:<46} {fmt(hf.wall, '13.2f')} {'FAILED':>11}")
            return
        target = ratio_target if ratio_target != "-" else time_target
        upload_target = "0" if time_target != "-" else "-"
        print(
            f"{name:<46} {fmt(hf.wall, '13.2f')} {fmt(hs.wall, '11.2f')} {fmt(ratio, '6.2f')} {target:>7}   "
            f"{human_bytes(hf.uploaded):>12} {human_bytes(hs.uploaded):>9} {upload_target:>6}"
        )

    row(
        f"push {CHECKPOINTS} checkpoints, state kept ({CHECKPOINTS} x {human_bytes(ckpt_bytes)})",
        push_hf,
        push_hs,
        ratio(push_hs.wall, push_hf.wall),
        "<= 1.0",
        "-",
    )
    row(f"re-push {latest} unchanged", re_hf, re_hs, None, "-", "< 2 s")

    print()
    print(f"one checkpoint folder ({', '.join(f'{k} {human_bytes(v)}' for k, v in sorted(bench.sizes.items()))})")
    print(
        "  hubsync pushes all of it but README.md, plus a model card README.md and training_loss.svg, and commits "
        "main's index after each checkpoint; hf pushes the folder as it is"
    )

    firsts = [(name, s.runs[0].requests) for name, s in series.items() if s.runs]
    if firsts:
        print()
        print("HTTP requests the Hub answered, by route (first repetition):")
        keys = sorted(set().union(*(c for _, c in firsts)))
        labels = {"push.hf": "hf x5", "push.hubsync": "hubsync", "repush.hf": "hf again", "repush.hubsync": "re-push"}
        print(f"  {'request':<40}" + "".join(f"{labels[name]:>10}" for name, _ in firsts))
        for key in keys:
            print(f"  {key:<40}" + "".join(f"{c.get(key, 0):>10}" for _, c in firsts))
        print(f"  {'total':<40}" + "".join(f"{sum(c.values()):>10}" for _, c in firsts))

    print()
    print("notes:")
    print(
        f"  every repetition pushes two fresh runs ({bench.run_bytes / 1e6:,.0f} MB each, new random weights and "
        f"optimizer state, unique training_args.bin, scheduler.pt, rng_state.pth) to two new repositories: the Hub "
        f"(content-addressed across repositories) has seen none of their LFS files before"
    )
    print(
        "  hf: one `hf upload REPO CKPT . --revision checkpoint-N` process per checkpoint folder, one after another "
        "(it creates the repository and the branch itself); time = sum of the 5 processes"
    )
    print("  env: HF_ENDPOINT, HF_TOKEN, a fresh HF_HOME, HF_HUB_DISABLE_UPDATE_CHECK=1; hf also HF_HUB_DISABLE_XET=1")
    print("  (the local Hub has no Xet; hubsync asks the Hub instead, one GET per commit)")
    print(
        "  os.sync() before every timed process; the run folders were just written, so both read them from the "
        "page cache; the local Hub (a thread of this process) fsyncs every blob it receives, for both"
    )
    print(f"  making the runs (not timed): median {statistics.median(bench.generate_s):.1f} s per repetition")
    print()
    print("spread (min..max seconds over the repetitions):")
    for key, s in series.items():
        if s.runs or s.failed:
            print(
                f"  {key:<16} {s.spread():>13}   uploaded {', '.join(human_bytes(r.uploaded) for r in s.runs) or '-'}"
            )
    for key, s in series.items():
        if s.failed is not None:
            print(f"\n{key} FAILED (exit code {s.failed.returncode}):\n{s.failed.stderr.strip()}")
    if re_hs.runs:
        said = [line for line in re_hs.runs[0].stdout.splitlines() if line and not line.startswith(" ")]
        print(f"\nhubsync re-push said: {said[0] if said else '(nothing)'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, help="runs of each measurement (default 3; 1 with --quick)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (tiny run, Hub store)")
    parser.add_argument("--quick", action="store_true", help="small files: a smoke test")
    parser.add_argument("--no-profile", action="store_true", help="skip the phase breakdown of one push")
    args = parser.parse_args()
    args.repeat = max(1, args.repeat if args.repeat is not None else (1 if args.quick else 3))
    # Llama-3.1-8B: hidden 4096, 8 of 32 heads for k/v -> 1024, 32 layers; r=16 on q_proj and v_proj:
    # 32 * 16 * (4096 + 4096 + 4096 + 1024) = 6.8 M params = 27 MB in fp32. --quick: 1 layer.
    args.shapes = {"layers": 1 if args.quick else 32, "hidden": 4096, "kv_dim": 1024, "r": 16}
    args.save_steps = 1 if args.quick else 10  # the tiny run: 50 steps with an evaluation every 10 (5 s less: 5)

    with work_folder("push", args.keep) as work:
        return _main(args, work)


def _main(args: argparse.Namespace, work: Path) -> int:
    print(f"machine: {os.cpu_count()} CPUs, load {loadavg()}, temp folder {work}", file=sys.stderr)
    template = work / "tinyrun"
    print(f"a real tiny run with hubsync.tinyrun ({CHECKPOINTS} checkpoints) ...", file=sys.stderr)
    t0 = time.perf_counter()
    steps = ["--max-steps", str(CHECKPOINTS * args.save_steps), "--save-steps", str(args.save_steps)]
    proc = subprocess.run([PY, "-m", "hubsync.tinyrun", str(template), *steps], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"hubsync.tinyrun failed:\n{proc.stderr}", file=sys.stderr)
        return 1
    print(f"  done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    (work / "scratch").mkdir()

    log = RequestLog()
    log.install()
    with running_hub(work / "hub", xet=False) as hub:  # git-LFS for both: bench/xet.py compares under Xet
        bench = Bench(args, work, template, hub, log)
        print(f"measuring ({args.repeat} interleaved repetitions) against {hub.endpoint} ...", file=sys.stderr)
        try:
            series = measure(bench)
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        report(series, bench)
        phases = None if args.no_profile else profile(bench)

    if phases:
        timers, wall, startup = phases
        print()
        print(
            "where the time goes in one `hubsync push RUN --select all --training-state keep` "
            "(fresh run and repository, in-process timers, single run, reference):"
        )
        print(f"  {'whole process (wall, as measured above)':<72} {wall:7.3f} s")
        print(f"  {'interpreter start-up, until the first line of the script':<72} {startup:7.3f} s")
        for name, (seconds, calls) in timers.items():
            print(f"  {name:<72} {seconds:7.3f} s  x{calls}")
        rest = wall - startup - sum(seconds for name, (seconds, _) in timers.items() if not name.startswith(" "))
        print(f"  {'the rest: interpreter exit, and this script itself':<72} {rest:7.3f} s")
    print()
    print(f"load average at the end: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
