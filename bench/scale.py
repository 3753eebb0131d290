#!/usr/bin/env python
"""Benchmark hubsync on a big full-fine-tune checkpoint (issue 18, part 3: flat memory, copy speed, both ways):
`hubsync push` / `hubsync pull` against `hf upload` / `hf download` of the same folder, side by side in one run,
with the wall time of each command and its peak anonymous memory.

Run with the project's venv:

    .venv/bin/python bench/scale.py [--gb 5] [--repeat N] [--no-xet] [--no-check] [--keep]

The size is --gb, else the environment variable HUBSYNC_BENCH_GB, else 5 (GB, 10^9 bytes); `HUBSYNC_BENCH_GB=0.3`
is a quick run. Targets (from the issue), on a checkpoint of at least 5 GB:

* `hubsync push CKPT --repo me/scale-hs-R --training-state keep` (the training state pushed pickle-free:
  optimizer.pt & co. become safetensors + JSON, converted, read back to verify, hashed) takes at most 1.2 times
  the wall time of `hf upload me/scale-hf-R CKPT` (the folder as it is);
* `hubsync pull me/scale-hs-R --revision checkpoint-N --to FRESH` (downloads, rebuilds optimizer.pt & co. from the
  safetensors and verifies every file) takes at most 1.3 times `hf download me/scale-hf-R --local-dir FRESH`;
* the peak anonymous memory (RssAnon: heap and private pages, not the page cache of the files read or mapped) of
  `hubsync push` and of `hubsync pull` is at most 256 MB each, whatever the size. The same figure of the two hf
  commands, and of the local Hub that serves them, is reported too.

The checkpoint, made once by a child process with torch (this process never imports it), is shaped like a
Trainer checkpoint of a full fine-tune of a Llama-like model (hidden size and number of layers picked so that the
folder has the asked size; vocabulary 32000, untied embeddings): for N parameters,

* model-0000i-of-0000N.safetensors (up to 4 shards) + model.safetensors.index.json: the weights in bf16 (2N
  bytes, 1/5);
* optimizer.pt: torch.save of the state_dict of a real torch.optim.AdamW over the fp32 parameters (the Trainer's
  two groups: with and without weight decay), stepped once on random gradients, so that every parameter has its
  step, exp_avg and exp_avg_sq (8N bytes, 4/5);
* config.json (the model's shape, bf16, and the base model's Hub id, as transformers 4 wrote it: the model card
  names it), generation_config.json, trainer_state.json, training_args.bin,
  scheduler.pt, rng_state.pth: from a real 1-step full fine-tune with hubsync.tinyrun, trainer_state.json's
  global_step set to the folder's step.

Random values everywhere (nothing to deduplicate). Each repetition starts two fresh `hubsync localhub` processes
at nice 19 (one for hubsync's repositories, one for hf's: the Hub is content-addressed, so a shared one would
let the second pusher skip the weight shards the first one sent), with Xet storage as huggingface.co (both
clients then upload and download through hf_xet) or, with --no-xet, git-LFS only. Then, interleaved (the other
order every other repetition): hubsync push, hf upload, hubsync pull, hf download, each a whole CLI process with a
fresh HF_HOME, after os.sync(). Every 50 ms a thread of this process reads RssAnon from /proc/PID/status of the
command and its child processes (summed) and of each local Hub: the tables show the highest sample.

After each pull (not timed, unless --no-check) the pulled folder is compared with the pushed one: files that are
byte-identical, and for the ones rebuilt by hubsync (optimizer.pt, scheduler.pt, rng_state.pth,
training_args.bin: same content, other bytes) a child process loads both with torch.load(weights_only=True,
mmap=True) and compares them value by value.

Disk: the checkpoint, the two Hubs' stores and the two pulls: about 5 times --gb under the temp folder
(TMPDIR), plus hubsync's staging of the converted state. A 5 GB run takes about 10 minutes on 2 cores (1
repetition; more with --repeat); 0.3 GB (3 repetitions) about 2 minutes. Only reports; never asserts. Exit code
0 unless the benchmark itself cannot run.
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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from _common import Series, fmt, hf_cmd, hubsync_cmd, human_bytes, loadavg, ratio, settle, start_hub, work_folder

PY = sys.executable
STEP = 500
REVISION = f"checkpoint-{STEP}"
SHARDS = 4
SAMPLE_S = 0.05
TARGETS = {"push": 1.2, "pull": 1.3}  # hubsync / hf, ratio of medians
MEMORY_TARGET = 256e6  # bytes of RssAnon, hubsync's commands
CASES = {
    "push.hubsync": "hubsync push --training-state keep",
    "push.hf": "hf upload",
    "pull.hubsync": f"hubsync pull --revision {REVISION}",
    "pull.hf": "hf download",
}

# ---------------------------------------------------------------------------------------------------------
# The checkpoint, made by a child process so that this process never imports torch (nor holds its memory).
# ---------------------------------------------------------------------------------------------------------

GENERATE = textwrap.dedent(
    r"""
    import json, math, shutil, sys, time
    from pathlib import Path
    import torch
    from safetensors.torch import save_file

    spec = json.loads(sys.argv[1])
    dst, template = Path(spec["dir"]), Path(spec["template"])
    dst.mkdir(parents=True)
    torch.manual_seed(spec["seed"])

    # A Llama-3-like shape: head_dim 64, 4 query heads per k/v head, MLP 3.5 x hidden, untied embeddings.
    # 13 H^2 parameters a layer, 2 V H for the embeddings; 10 bytes a parameter (bf16 weights + fp32 exp_avg and
    # exp_avg_sq). The hidden size is the one that 24 layers would need, to a multiple of 256; then as many
    # layers as make up the size.
    n = spec["gb"] * 1e9 / 10
    vocab, per_h2 = 32000, 13
    h = (-2 * vocab + math.sqrt(4 * vocab**2 + 4 * per_h2 * 24 * n)) / (2 * per_h2 * 24)
    hidden = max(256, round(h / 256) * 256)
    inter, kv = hidden * 7 // 2, hidden // 4
    layers = max(2, math.ceil((n - 2 * vocab * hidden) / (per_h2 * hidden * hidden)))
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        })
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    params = {}
    for name, shape in shapes.items():
        t = torch.ones(shape) if name.endswith("norm.weight") else torch.randn(shape) * 0.02
        params[name] = torch.nn.Parameter(t)

    # The Trainer's two groups (no weight decay for the norms), a real AdamW, one step on random gradients, a
    # layer at a time (AdamW steps only the parameters that have a gradient), so that only one layer's gradients
    # exist at once.
    decay = [p for k, p in params.items() if not k.endswith("norm.weight")]
    no_decay = [p for k, p in params.items() if k.endswith("norm.weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=5e-5, betas=(0.9, 0.999), eps=1e-8,
    )
    groups = {}
    for k, p in params.items():
        groups.setdefault(k.split(".")[2] if k.startswith("model.layers.") else k, []).append(p)
    for ps in groups.values():
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-3
        opt.step()
        for p in ps:
            p.grad = None

    # The weights in bf16, in SHARDS shards of about equal size, with transformers' index.
    names = list(params)
    total = sum(params[k].numel() * 2 for k in names)
    count = min(spec["shards"], len(names))
    plan, acc = [[] for _ in range(count)], 0
    for k in names:
        plan[min(count - 1, acc * count // total)].append(k)
        acc += params[k].numel() * 2
    plan = [ks for ks in plan if ks]
    weight_map = {}
    for i, ks in enumerate(plan):
        fname = f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors"
        save_file({k: params[k].detach().to(torch.bfloat16) for k in ks}, str(dst / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in ks})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    torch.save(opt.state_dict(), dst / "optimizer.pt")
    del opt, params, decay, no_decay, groups

    # The small files of a real full fine-tune (hubsync.tinyrun), the config reshaped.
    for name in ("training_args.bin", "scheduler.pt", "rng_state.pth", "generation_config.json"):
        shutil.copyfile(template / name, dst / name)
    config = json.loads((template / "config.json").read_text())
    config.update(
        hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=hidden // 64,
        num_key_value_heads=kv // 64, head_dim=64, vocab_size=vocab, max_position_embeddings=4096,
        dtype="bfloat16", _name_or_path="meta-llama/Llama-3.2-1B",
    )
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = json.loads((template / "trainer_state.json").read_text())
    state.update(global_step=spec["step"], max_steps=spec["step"])
    (dst / "trainer_state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    sizes = {p.name: p.stat().st_size for p in sorted(dst.iterdir())}
    shape = {"hidden": hidden, "layers": layers, "parameters": sum(math.prod(s) for s in shapes.values())}
    print(json.dumps({"files": sizes, "shape": shape}))
    """
)

# The files that hubsync pull rebuilds (other bytes than torch.save wrote, same content): loaded by both sides'
# torch.load(weights_only=True), memory-mapped, and compared value by value.
COMPARE = textwrap.dedent(
    r"""
    import importlib, json, sys
    import numpy as np
    import torch

    def same(a, b):
        if isinstance(a, np.ndarray):
            return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
        if isinstance(a, torch.Tensor):
            return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        if isinstance(a, dict):
            return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return type(a) is type(b) and a == b

    def load(path):
        # rng_state.pth holds numpy's generator state: allowed are the numpy globals the file names, no others.
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if any(not n.startswith("numpy.") for n in names):
            raise ValueError(f"names {names}")
        allowed = []
        for n in names:
            module, _, attr = n.rpartition(".")
            allowed.append(getattr(importlib.import_module(module), attr))
        if allowed:  # and the classes of numpy's dtypes, which the list leaves out
            allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, weights_only=True, mmap=True)

    verdicts = {}
    for left, right in json.loads(sys.argv[1]):
        try:
            verdicts[right] = "same content" if same(load(left), load(right)) else "DIFFERENT CONTENT"
        except Exception as exc:
            verdicts[right] = f"not loadable with weights_only ({type(exc).__name__}: {exc})"[:200]
    print(json.dumps(verdicts))
    """
)


# ---------------------------------------------------------------------------------------------------------
# Peak anonymous memory, sampled from /proc.
# ---------------------------------------------------------------------------------------------------------


def rss_anon(pid: int) -> int:
    """RssAnon of a process in bytes; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def descendants(root: int) -> set[int]:
    """The pids of `root` and of every process below it (from each process's parent in /proc/PID/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(parents.get(pid, ()))
    return found


class Sampler(threading.Thread):
    """Every SAMPLE_S, the summed RssAnon of a command's process tree (the tree looked up every 5th sample) and
    the RssAnon of each local Hub; keeps the highest of each."""

    def __init__(self, root: int, hubs: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.root, self.hubs = root, hubs
        self.peak = 0
        self.hub_peaks = dict.fromkeys(hubs, 0)
        self.stop = threading.Event()

    def run(self) -> None:
        tree, tick = {self.root}, 0
        while not self.stop.is_set():
            if tick % 5 == 0:
                tree = descendants(self.root) | tree
            tick += 1
            self.peak = max(self.peak, sum(rss_anon(pid) for pid in tree))
            for name, pid in self.hubs.items():
                self.hub_peaks[name] = max(self.hub_peaks[name], rss_anon(pid))
            self.stop.wait(SAMPLE_S)


@dataclass
class Run:
    wall: float
    returncode: int
    stdout: str
    stderr: str
    peak: int  # bytes of RssAnon, the command's process tree
    hub_peak: int  # bytes of RssAnon, the local Hub it talked to
    check: str = ""


def run_measured(cmd: list[str], env: dict[str, str], scratch: Path, hubs: dict[str, int], hub: str) -> Run:
    """Wall time of the whole child process and its peak RssAnon (and the Hubs'). stdout/stderr go to files (a
    pipe could fill up and stall it)."""
    settle()
    out_path, err_path = scratch / "child.stdout", scratch / "child.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=scratch)
        sampler = Sampler(proc.pid, hubs)
        sampler.start()
        code = proc.wait()
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
    return Run(
        wall,
        code,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
        sampler.peak,
        sampler.hub_peaks[hub],
    )


# ---------------------------------------------------------------------------------------------------------
# The measurements.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Hub:
    proc: subprocess.Popen[str]
    env: dict[str, str]
    root: Path
    idle: int  # RssAnon once started


@contextmanager
def hubs_running(work: Path, rep: int, xet: bool) -> Iterator[dict[str, Hub]]:
    """Two fresh local Hubs, one for each side, stopped and their stores removed at the end."""
    hubs: dict[str, Hub] = {}
    try:
        for side in ("hubsync", "hf"):
            root = work / f"hub-{side}-{rep}"
            proc, env = start_hub(root, "--xet" if xet else "--no-xet")
            hubs[side] = Hub(proc, env, root, 0)
        time.sleep(0.5)
        for hub in hubs.values():
            hub.idle = rss_anon(hub.proc.pid)
        yield hubs
    finally:
        for hub in hubs.values():
            hub.proc.terminate()
            hub.proc.wait()
            shutil.rmtree(hub.root, ignore_errors=True)


def files_of(folder: Path) -> dict[str, int]:
    """Relative path -> size of the regular files under folder, leaving out hf's .cache metadata."""
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in folder.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(folder).parts
    }


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    sizes: dict[str, int] = field(default_factory=dict)
    shape: dict[str, int] = field(default_factory=dict)
    generate_s: float = 0.0
    hub_idle: list[int] = field(default_factory=list)
    said: dict[str, str] = field(default_factory=dict)  # case -> hubsync's last line, first repetition

    @property
    def source(self) -> Path:
        return self.work / "run" / REVISION

    @property
    def scratch(self) -> Path:
        return self.work / "scratch"

    def env(self, hub: Hub, side: str, home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSYNC_", "HF_", "HUGGINGFACE_"))}
        env.update(hub.env, HF_HOME=str(home), HF_HUB_DISABLE_UPDATE_CHECK="1")
        if side == "hf" and not self.args.xet:
            # huggingface_hub goes through Xet whenever hf_xet is installed, and fails on a Hub without it: a user
            # of such a Hub sets this. hubsync asks the Hub instead.
            env["HF_HUB_DISABLE_XET"] = "1"
        return env

    def generate(self) -> None:
        t0 = time.perf_counter()
        template = self.work / "tinyrun"
        steps = ["--max-steps", "1", "--save-steps", "1"]
        proc = subprocess.run(
            [PY, "-m", "hubsync.tinyrun", str(template), "--full", *steps], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"hubsync.tinyrun failed:\n{proc.stderr}")
        spec = {
            "dir": str(self.source),
            "template": str(template / "checkpoint-1"),
            "gb": self.args.gb,
            "seed": 1234,
            "step": STEP,
            "shards": SHARDS,
        }
        proc = subprocess.run([PY, "-c", GENERATE, json.dumps(spec)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"could not make the checkpoint:\n{proc.stderr}")
        made = json.loads(proc.stdout.strip().splitlines()[-1])
        self.generate_s, self.sizes, self.shape = time.perf_counter() - t0, made["files"], made["shape"]
        shutil.rmtree(template, ignore_errors=True)

    def command(self, case: str, rep: int, out: Path) -> list[str]:
        repo = {"hubsync": f"me/scale-hs-{rep}", "hf": f"me/scale-hf-{rep}"}[case.split(".")[1]]
        return {
            "push.hubsync": [*hubsync_cmd(), "push", str(self.source), "--repo", repo, "--training-state", "keep"],
            "push.hf": [*hf_cmd(), "upload", repo, str(self.source)],
            "pull.hubsync": [*hubsync_cmd(), "pull", repo, "--revision", REVISION, "--to", str(out)],
            "pull.hf": [*hf_cmd(), "download", repo, "--local-dir", str(out)],
        }[case]

    def measure_one(self, case: str, rep: int, hubs: dict[str, Hub]) -> Run:
        side = case.split(".")[1]
        out = self.work / f"{case}-{rep}"
        env = self.env(hubs[side], side, self.work / f"home-{case}-{rep}")
        pids = {name: hub.proc.pid for name, hub in hubs.items()}
        run = run_measured(self.command(case, rep, out), env, self.scratch, pids, side)
        if run.returncode == 0 and case.startswith("pull."):
            if not self.args.no_check:
                run.check = self.check(out / REVISION if side == "hubsync" else out)
            shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(self.work / f"home-{case}-{rep}", ignore_errors=True)
        return run

    def check(self, pulled: Path) -> str:
        """How the pushed folder's files came back: byte-identical, or (rebuilt by hubsync pull) the same values."""
        src, got = files_of(self.source), files_of(pulled)
        same = [n for n in sorted(src) if n in got and filecmp.cmp(self.source / n, pulled / n, shallow=False)]
        other = [n for n in sorted(src) if n in got and n not in same]
        missing = [n for n in sorted(src) if n not in got]
        verdicts: dict[str, str] = {}
        if other:
            pairs = [[str(self.source / n), str(pulled / n)] for n in other]
            proc = subprocess.run([PY, "-c", COMPARE, json.dumps(pairs)], capture_output=True, text=True)
            if proc.returncode == 0:
                verdicts = json.loads(proc.stdout.strip().splitlines()[-1])
        other_s = [f"{n} ({verdicts.get(str(pulled / n), 'not compared')})" for n in other]
        return (
            f"{len(same)}/{len(src)} byte-identical"
            + (f"; other bytes: {', '.join(other_s)}" if other else "")
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; also pulled: {', '.join(sorted(set(got) - set(src)))}" if set(got) - set(src) else "")
        )


def measure(bench: Bench) -> dict[str, Series]:
    series = {case: Series() for case in CASES}
    for rep in range(bench.args.repeat):
        t0 = time.perf_counter()
        # Interleaved, and in the other order every other repetition, so that a slow spell on the shared machine
        # (or a warmer page cache for whoever goes second) hits both alike instead of one whole series.
        order = ["push.hubsync", "push.hf", "pull.hubsync", "pull.hf"]
        if rep % 2:
            order = ["push.hf", "push.hubsync", "pull.hf", "pull.hubsync"]
        with hubs_running(bench.work, rep, bench.args.xet) as hubs:
            bench.hub_idle.extend(hub.idle for hub in hubs.values())
            for case in order:
                if case.startswith("pull.") and not series[case.replace("pull.", "push.")].runs:
                    continue  # nothing pushed to pull
                run = bench.measure_one(case, rep, hubs)
                series[case].add(run)
                if case.endswith(".hubsync") and run.returncode == 0 and case not in bench.said:
                    lines = [line.strip() for line in run.stdout.splitlines() if line.strip()]
                    bench.said[case] = lines[-1] if lines else "(nothing)"
                print(
                    f"    {case:<13} {run.wall:7.1f} s  peak {human_bytes(run.peak):>9}  "
                    f"hub {human_bytes(run.hub_peak)}  exit {run.returncode}",
                    file=sys.stderr,
                )
        print(
            f"  repetition {rep + 1}/{bench.args.repeat}: {time.perf_counter() - t0:.1f} s (load {loadavg()})",
            file=sys.stderr,
        )
    return series


# ---------------------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------------------


def peak(series: Series, attr: str = "peak") -> float | None:
    return max(getattr(r, attr) for r in series.runs) if series.runs else None


def report(series: dict[str, Series], bench: Bench) -> None:
    args = bench.args
    total = sum(bench.sizes.values())
    storage = "Xet" if args.xet else "git-LFS"
    print()
    print(
        f"hubsync vs hf on a {human_bytes(total)} full-fine-tune checkpoint, local Hubs with {storage}, "
        f"median of {args.repeat} interleaved run(s)"
    )
    print("(wall time of whole CLI processes; peak = highest RssAnon sampled every 50 ms, the process and children)")
    head = (
        f"{'command':<38} {'wall (s)':>8} {'ratio':>6} {'target':>7} {'':>6}   "
        f"{'peak MB':>8} {'target':>7} {'':>6}   {'Hub peak MB':>11}"
    )
    print(head)
    print("-" * len(head))
    for case, name in CASES.items():
        s = series[case]
        op, side = case.split(".")
        r = ratio(s.wall, series[f"{op}.hf"].wall) if side == "hubsync" else None
        r_target = f"<= {TARGETS[op]}" if side == "hubsync" else ""
        r_met = "" if side == "hf" or r is None else ("met" if r <= TARGETS[op] else "MISSED")
        p = peak(s)
        m_target = f"<= {MEMORY_TARGET / 1e6:.0f}" if side == "hubsync" else ""
        m_met = "" if side == "hf" or p is None else ("met" if p <= MEMORY_TARGET else "MISSED")
        if not s.runs:
            print(f"{name:<38} {'FAILED' if s.failed else 'not run':>8}")
            continue
        mb = None if p is None else p / 1e6
        hub_mb = peak(s, "hub_peak")
        print(
            f"{name:<38} {fmt(s.wall, '8.1f')} {fmt(r, '6.2f')} {r_target:>7} {r_met:>6}   "
            f"{fmt(mb, '8.0f')} {m_target:>7} {m_met:>6}   {fmt(None if hub_mb is None else hub_mb / 1e6, '11.0f')}"
        )
    print()
    print(
        f"the checkpoint ({REVISION}: {bench.shape.get('parameters', 0) / 1e6:,.0f} M parameters, hidden "
        f"{bench.shape.get('hidden')}, {bench.shape.get('layers')} layers; made in {bench.generate_s:.0f} s, "
        "not timed):"
    )
    print("  " + ", ".join(f"{k} {human_bytes(v)}" for k, v in bench.sizes.items()))
    if bench.hub_idle:
        print(
            f"  each local Hub (a `hubsync localhub` process at nice 19): {human_bytes(min(bench.hub_idle))} RssAnon "
            f"idle; its peak while serving each command is in the last column"
        )
    print()
    print("pulled files against the pushed folder:")
    for case in ("pull.hubsync", "pull.hf"):
        for i, run in enumerate(series[case].runs):
            print(f"  {case} repetition {i + 1}: {run.check or 'not checked'}")
    print()
    print("notes:")
    print("  hubsync push: the training state pickle-free (optimizer.pt etc. as safetensors + JSON), to the branch")
    print(f"  {REVISION} and main's index; hf upload: the folder as it is, to main")
    print("  hubsync pull: downloads, rebuilds optimizer.pt & co. and verifies every file; hf download: main as it is")
    print(
        "  env: HF_ENDPOINT, HF_TOKEN, a fresh HF_HOME per command, HF_HUB_DISABLE_UPDATE_CHECK=1"
        + ("" if args.xet else "; hf also HF_HUB_DISABLE_XET=1 (the Hub has no Xet)")
    )
    print("  os.sync() before every timed process; the checkpoint was just written, so it is read from the page cache")
    for case, line in bench.said.items():
        print(f"  {case} said: {line}")
    print()
    print("spread (min..max seconds over the repetitions):")
    for case, s in series.items():
        if s.runs or s.failed:
            print(f"  {case:<14} {s.spread():>13}   peaks {', '.join(human_bytes(r.peak) for r in s.runs) or '-'}")
    for case, s in series.items():
        if s.failed is not None:
            print(f"\n{case} FAILED (exit code {s.failed.returncode}):\n{s.failed.stderr.strip()[-3000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, help="size of the checkpoint in GB (default: HUBSYNC_BENCH_GB, else 5)")
    parser.add_argument("--repeat", type=int, help="runs of each measurement (default 1 from 2 GB, else 3)")
    parser.add_argument("--xet", action=argparse.BooleanOptionalAction, default=True, help="Hubs with Xet storage")
    parser.add_argument("--no-check", action="store_true", help="do not compare the pulled files with the pushed")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (the checkpoint)")
    args = parser.parse_args()
    if args.gb is None:
        args.gb = float(os.environ.get("HUBSYNC_BENCH_GB") or 5)
    if args.repeat is None:
        args.repeat = 1 if args.gb >= 2 else 3
    args.repeat = max(1, args.repeat)
    with work_folder("scale", args.keep) as work:
        return _main(args, work)


def _main(args: argparse.Namespace, work: Path) -> int:
    free = shutil.disk_usage(work).free
    print(f"machine: {os.cpu_count()} CPUs, load {loadavg()}, {human_bytes(free)} free in {work}", file=sys.stderr)
    if free < 6 * args.gb * 1e9:
        print(f"  warning: a {args.gb:g} GB run needs about {6 * args.gb:.0f} GB of disk", file=sys.stderr)
    (work / "scratch").mkdir()
    bench = Bench(args, work)
    try:
        print(f"making a {args.gb:g} GB checkpoint (a real tiny run, then the big files) ...", file=sys.stderr)
        bench.generate()
        print(f"  done in {bench.generate_s:.0f} s; measuring ({args.repeat} repetition(s)) ...", file=sys.stderr)
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
