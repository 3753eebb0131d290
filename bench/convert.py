#!/usr/bin/env python
"""Benchmark `hubsync convert` against a plain file copy: "conversion at the speed of a file copy".

Run with the project's venv:

    .venv/bin/python bench/convert.py [--repeat N] [--quick] [--keep] [--no-profile]   (or: make bench)

It makes (once, with torch, in a child process) in a temp folder:

1. a Llama-like bf16 `pytorch_model.bin` of ~1.4 GB whose `lm_head.weight` is the same tensor object as
   `model.embed_tokens.weight` (a tied weight: one storage, two names), beside a `config.json`;
2. a PEFT LoRA `adapter_model.bin` with Llama-3.1-8B shapes (r=16 on q,k,v,o,gate,up,down; fp32, ~168 MB),
   beside an `adapter_config.json`.

and then measures, interleaved and repeated (the machine is shared and noisy; the median of each is reported):

* wall time of the whole `hubsync convert CKPT -o OUT` process (bitwise verification included) vs `cp SRC DST`
  of the same .bin file, and the ratio of medians (target: at most 2.0);
* peak RssAnon of the `hubsync convert` process vs the peak RssAnon of a baseline interpreter that has only
  imported what `hubsync convert` imports (target: within 64 MiB), both sampled by this process from
  /proc/PID/status every ~2 ms;
* for reference: the naive way (`torch.load(..., weights_only=True)` + `safetensors.torch.save_file`) on the
  1.4 GB file, against `cp` and against a baseline interpreter that imported torch + safetensors.torch; and
  `cp` followed by an fsync of the copy (neither `cp` nor hubsync fsyncs the weights: this shows what
  durability against a power cut would cost).

Only reports; never asserts. Exit code 0 unless the benchmark itself cannot run. Uses only the standard
library here; torch, safetensors and numpy are used in child processes from the same interpreter.
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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import Series as _Series
from _common import fmt, hubsync_cmd, loadavg, ratio, settle, work_folder

PY = sys.executable
SAMPLE_INTERVAL = 0.002  # seconds between /proc/PID/status reads
MIB = 1024 * 1024

# ---------------------------------------------------------------------------------------------------------
# Test files, made by a child process so that this (sampling) process never imports torch and stays small.
# ---------------------------------------------------------------------------------------------------------

GENERATE = textwrap.dedent(
    r"""
    import json, sys, time
    from pathlib import Path
    import torch

    spec = json.loads(sys.argv[1])
    g = torch.Generator().manual_seed(1234)

    def rand_bf16(*shape):
        # Random bit patterns (NaNs included): conversion copies bytes and never looks at values.
        return torch.randint(-32768, 32768, shape, dtype=torch.int16, generator=g).view(torch.bfloat16)

    t0 = time.perf_counter()
    m = spec["model"]
    V, H, I, L, KV = m["vocab"], m["hidden"], m["intermediate"], m["layers"], m["kv_dim"]
    sd = {}
    embed = rand_bf16(V, H)
    sd["model.embed_tokens.weight"] = embed
    for i in range(L):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = rand_bf16(H, H)
        sd[p + "self_attn.k_proj.weight"] = rand_bf16(KV, H)
        sd[p + "self_attn.v_proj.weight"] = rand_bf16(KV, H)
        sd[p + "self_attn.o_proj.weight"] = rand_bf16(H, H)
        sd[p + "mlp.gate_proj.weight"] = rand_bf16(I, H)
        sd[p + "mlp.up_proj.weight"] = rand_bf16(I, H)
        sd[p + "mlp.down_proj.weight"] = rand_bf16(H, I)
        sd[p + "input_layernorm.weight"] = rand_bf16(H)
        sd[p + "post_attention_layernorm.weight"] = rand_bf16(H)
    sd["model.norm.weight"] = rand_bf16(H)
    sd["lm_head.weight"] = embed  # tied: the same tensor object, so torch.save stores one storage
    d = Path(m["dir"])
    d.mkdir(parents=True)
    torch.save(sd, d / "pytorch_model.bin")
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
        "intermediate_size": I, "num_hidden_layers": L, "vocab_size": V, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    }, indent=2))
    model_params = sum(t.numel() for n, t in sd.items() if n != "lm_head.weight")
    del sd, embed

    a = spec["adapter"]
    H, I, L, KV, r = a["hidden"], a["intermediate"], a["layers"], a["kv_dim"], a["r"]
    shapes = {  # module: (in_features, out_features)
        "self_attn.q_proj": (H, H), "self_attn.k_proj": (H, KV), "self_attn.v_proj": (H, KV),
        "self_attn.o_proj": (H, H), "mlp.gate_proj": (H, I), "mlp.up_proj": (H, I), "mlp.down_proj": (I, H),
    }
    sd = {}
    for i in range(L):
        for mod, (fin, fout) in shapes.items():
            p = f"base_model.model.model.layers.{i}.{mod}."
            sd[p + "lora_A.weight"] = torch.randn(r, fin, generator=g)
            sd[p + "lora_B.weight"] = torch.randn(fout, r, generator=g)
    d = Path(a["dir"])
    d.mkdir(parents=True)
    torch.save(sd, d / "adapter_model.bin")
    (d / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "lora_dropout": 0.0, "bias": "none",
        "task_type": "CAUSAL_LM", "base_model_name_or_path": "meta-llama/Llama-3.1-8B",
        "target_modules": sorted(m.split(".")[1] for m in shapes),
    }, indent=2))
    adapter_params = sum(t.numel() for t in sd.values())
    print(json.dumps({"seconds": time.perf_counter() - t0, "model_params": model_params,
                      "model_tensors": L * 9 + 3, "adapter_params": adapter_params,
                      "adapter_tensors": len(sd)}))
    """
)

# The naive way: load everything into memory with torch, then write it with safetensors. Tied names are
# dropped like hubsync does (save_file refuses tensors that share memory). No verification, no fsync.
NAIVE = textwrap.dedent(
    r"""
    import sys
    import torch
    from safetensors.torch import save_file
    sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
    seen, kept = set(), {}
    for name, t in sd.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key not in seen:
            seen.add(key)
            kept[name] = t.contiguous()
    save_file(kept, sys.argv[2], metadata={"format": "pt"})
    """
)

# Where the time of one conversion goes: the same code path as the CLI, in one process, with timers around
# its phases. Reference only.
PROFILE = textwrap.dedent(
    r"""
    import json, os, sys, time
    t_start = time.perf_counter()
    from pathlib import Path
    import hubsync.convert as hc
    import hubsync.convert.writer as w
    from hubsync.core.checkpoint import read_checkpoint
    from hubsync.core.conversion import plan_conversion
    import safetensors, numpy  # what the CLI ends up importing
    t_imported = time.perf_counter()
    T = {}

    def timed(name, fn):
        def inner(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                T[name] = T.get(name, 0.0) + time.perf_counter() - t
        return inner

    hc.read_torch_archive = timed("read_torch_archive: zip + restricted unpickle", hc.read_torch_archive)
    hc.find_aliases = timed("find_aliases", hc.find_aliases)
    w.plan_layout = timed("plan_layout (header)", w.plan_layout)
    w._write = timed("write: copy tensors (copy_file_range; a thread reads each back meanwhile)", w._write)
    w._TensorChecker.finish = timed("wait for the read-back of the last tensors", w._TensorChecker.finish)
    w.verify_header = timed("verify the header with the safetensors library", w.verify_header)
    os.fsync = timed("fsync (companion files only)", os.fsync)
    hc.copy_file_atomic = timed("copy companion files", hc.copy_file_atomic)

    t0 = time.perf_counter()
    ckpt = read_checkpoint(sys.argv[1])
    plan = plan_conversion(ckpt)
    T["read_checkpoint + plan"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hc.convert_checkpoint(ckpt, plan, Path(sys.argv[2]))
    T["convert_checkpoint total"] = time.perf_counter() - t0
    T["imports"] = t_imported - t_start
    print(json.dumps(T))
    """
)

# Records which modules a real `hubsync convert` run has loaded when it exits, so that the memory baseline
# imports exactly those (the CLI imports lazily, and safetensors' numpy framework pulls in numpy).
MODULES_PROBE = textwrap.dedent(
    r"""
    import atexit, json, sys
    out = sys.argv.pop(1)
    atexit.register(lambda: json.dump(sorted(sys.modules), open(out, "w")))
    sys.argv[0] = "hubsync"
    from hubsync.cli import main
    main()
    """
)

BASELINE_IMPORT = textwrap.dedent(
    r"""
    import importlib, json, sys, time
    failed = []
    for name in json.load(open(sys.argv[1])):
        if name in sys.modules or name == "__main__":
            continue
        try:
            importlib.import_module(name)
        except Exception:
            failed.append(name)
    time.sleep(0.5)
    """
)

TORCH_BASELINE = "import torch, safetensors.torch, time; time.sleep(0.5)"


# ---------------------------------------------------------------------------------------------------------
# Running a child while sampling its anonymous memory.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    wall: float
    peak_anon_kib: int
    returncode: int
    stdout: str
    stderr: str


def _rss_anon_kib(status: bytes) -> int:
    i = status.find(b"RssAnon:")
    if i < 0:
        return 0  # a zombie: no memory left to report
    return int(status[i + 8 : status.index(b"kB", i)])


def run_sampled(cmd: list[str], scratch: Path) -> Run:
    """Wall time of the whole child process, and the peak RssAnon seen by sampling /proc/PID/status.

    Every command goes through this same loop, so polling overhead is the same for cp and for hubsync.
    stdout/stderr go to files (a pipe could fill up and stall the child).
    """
    out_path, err_path = scratch / "child.stdout", scratch / "child.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        status_path = f"/proc/{proc.pid}/status"
        peak = 0
        while True:
            try:
                fd = os.open(status_path, os.O_RDONLY)
                try:
                    peak = max(peak, _rss_anon_kib(os.read(fd, 8192)))
                finally:
                    os.close(fd)
            except OSError:
                pass
            if proc.poll() is not None:
                break
            time.sleep(SAMPLE_INTERVAL)
        wall = time.perf_counter() - t0
    return Run(wall, peak, proc.returncode, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"))


def warm(path: Path) -> None:
    """Read the source once so that every timed run starts from the same, warm, page cache."""
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------
# The measurements.
# ---------------------------------------------------------------------------------------------------------


class Series(_Series):
    @property
    def peak_mib(self) -> float | None:
        return statistics.median(r.peak_anon_kib for r in self.runs) / 1024 if self.runs else None


def measure(
    args: argparse.Namespace, work: Path, model_dir: Path, adapter_dir: Path, modules_json: Path
) -> dict[str, Series]:
    scratch = work / "scratch"
    scratch.mkdir()
    model_src, adapter_src = model_dir / "pytorch_model.bin", adapter_dir / "adapter_model.bin"
    series = {
        k: Series()
        for k in (
            "model.cp",
            "model.hubsync",
            "model.cp_fsync",
            "model.naive",
            "adapter.cp",
            "adapter.hubsync",
            "adapter.cp_fsync",
            "baseline",
            "baseline.torch",
        )
    }
    counter = iter(range(10**9))

    def out_path(suffix: str = "") -> Path:
        return work / f"out-{next(counter)}{suffix}"

    def cp(src: Path) -> Run:
        warm(src)
        dst = out_path(".bin")
        run = run_sampled(["cp", str(src), str(dst)], scratch)
        remove(dst)
        settle()
        return run

    def cp_fsync(src: Path) -> Run:
        warm(src)
        dst = out_path(".bin")
        # coreutils `sync FILE` fsyncs that one file: the same durability as hubsync's fsync.
        run = run_sampled(["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", str(src), str(dst)], scratch)
        remove(dst)
        settle()
        return run

    def convert(ckpt: Path, src: Path) -> Run:
        warm(src)
        dst = out_path()  # a fresh output folder every time
        run = run_sampled([*hubsync_cmd(), "convert", str(ckpt), "-o", str(dst)], scratch)
        remove(dst)
        settle()
        return run

    def naive(src: Path) -> Run:
        warm(src)
        dst = out_path(".safetensors")
        run = run_sampled([PY, "-c", NAIVE, str(src), str(dst)], scratch)
        remove(dst)
        settle()
        return run

    steps: list[tuple[str, Callable[[], Run]]] = [
        ("model.cp", lambda: cp(model_src)),
        ("model.hubsync", lambda: convert(model_dir, model_src)),
        ("baseline", lambda: run_sampled([PY, "-c", BASELINE_IMPORT, str(modules_json)], scratch)),
        ("adapter.cp", lambda: cp(adapter_src)),
        ("adapter.hubsync", lambda: convert(adapter_dir, adapter_src)),
    ]
    if not args.no_reference:
        steps += [
            ("model.cp_fsync", lambda: cp_fsync(model_src)),
            ("adapter.cp_fsync", lambda: cp_fsync(adapter_src)),
            ("model.naive", lambda: naive(model_src)),
            ("baseline.torch", lambda: run_sampled([PY, "-c", TORCH_BASELINE], scratch)),
        ]
    settle()
    for rep in range(args.repeat):
        # Interleaved, and in the reverse order every other repetition, so that a slow spell on the shared
        # machine hits cp and hubsync alike instead of one whole series.
        order = steps if rep % 2 == 0 else steps[::-1]
        t0 = time.perf_counter()
        for name, step in order:
            series[name].add(step())
        print(
            f"  repetition {rep + 1}/{args.repeat}: {time.perf_counter() - t0:.1f} s  (load {loadavg()})",
            file=sys.stderr,
        )
    return series


def profile(work: Path, model_dir: Path, src: Path) -> dict[str, float] | None:
    warm(src)
    dst = work / "out-profile"
    try:
        proc = subprocess.run([PY, "-c", PROFILE, str(model_dir), str(dst)], capture_output=True, text=True)
    finally:
        remove(dst)
        settle()
    if proc.returncode != 0:
        print(f"profile run failed:\n{proc.stderr}", file=sys.stderr)
        return None
    phases: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return phases


# ---------------------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------------------


def report(series: dict[str, Series], sizes: dict[str, int], args: argparse.Namespace, gen: dict[str, Any]) -> None:
    base = series["baseline"].peak_mib
    tbase = series["baseline.torch"].peak_mib

    def mb(n: int) -> str:
        return f"{n / 1e6:,.0f} MB"

    model_name = f"{mb(sizes['model'])} bf16 .bin, tied"
    adapter_name = f"{mb(sizes['adapter'])} LoRA adapter (fp32)"

    head = (
        f"{'case':<40} {'cp (s)':>7} {'convert (s)':>11} {'ratio':>6} {'target':>7}   "
        f"{'peak RssAnon (MiB)':>18} {'baseline':>9} {'over baseline':>13} {'target':>7}"
    )
    print()
    print(f"hubsync convert vs cp, median of {args.repeat} interleaved runs (wall time of the whole process)")
    print(head)
    print("-" * len(head))

    def row(name: str, cp_s: Series, conv: Series, ratio_target: str, base_mib: float | None, mem_target: str) -> None:
        r = ratio(conv.wall, cp_s.wall)
        over = None if conv.peak_mib is None or base_mib is None else conv.peak_mib - base_mib
        if conv.failed is not None and not conv.runs:
            print(f"{name:<40} {fmt(cp_s.wall, '7.2f')} {'FAILED':>11}")
            return
        print(
            f"{name:<40} {fmt(cp_s.wall, '7.2f')} {fmt(conv.wall, '11.2f')} {fmt(r, '6.2f')} {ratio_target:>7}   "
            f"{fmt(conv.peak_mib, '18.1f')} {fmt(base_mib, '9.1f')} {fmt(over, '+13.1f')} {mem_target:>7}"
        )

    row(model_name, series["model.cp"], series["model.hubsync"], "<= 2.0", base, "<= 64")
    row(adapter_name, series["adapter.cp"], series["adapter.hubsync"], "-", base, "<= 64")
    if not args.no_reference:
        row(
            f"naive torch.load+save_file ({mb(sizes['model'])})",
            series["model.cp"],
            series["model.naive"],
            "-",
            tbase,
            "-",
        )
        print()
        print("reference: cp followed by fsync of the copy (what durability against a power cut would cost;")
        print("           neither plain cp nor hubsync fsyncs the weights)")
        for key, label in (("model", model_name), ("adapter", adapter_name)):
            cf, hs = series[f"{key}.cp_fsync"], series[f"{key}.hubsync"]
            print(
                f"  {label:<32} cp+fsync {fmt(cf.wall, '.2f')} s   hubsync / (cp+fsync) = "
                f"{fmt(ratio(hs.wall, cf.wall), '.2f')}"
            )
    print()
    print("notes:")
    print(
        f"  baseline for hubsync rows: an interpreter that imported the {gen['modules']} modules a real "
        f"`hubsync convert` run had loaded at exit (hubsync.cli, hubsync.convert, safetensors, numpy, ...), "
        f"then slept 0.5 s"
    )
    if not args.no_reference:
        print("  baseline for the naive row: an interpreter that imported torch and safetensors.torch")
    print("  RssAnon: peak of samples of /proc/PID/status every ~2 ms; MiB = 2^20 bytes")
    print("  every source file is read once (cat > /dev/null) before each timed run; outputs are deleted and")
    print("  os.sync() is called after each run, outside the timing")
    print()
    print("spread (min..max seconds over the repetitions):")
    for key, s in series.items():
        if s.runs or s.failed:
            print(
                f"  {key:<18} {s.spread():>13}   peak RssAnon MiB "
                f"{', '.join(f'{r.peak_anon_kib / 1024:.1f}' for r in s.runs) or '-'}"
            )
    for key, s in series.items():
        if s.failed is not None:
            print(f"\n{key} FAILED (exit code {s.failed.returncode}):\n{s.failed.stderr.strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder with the generated files")
    parser.add_argument("--quick", action="store_true", help="small files: a smoke test")
    parser.add_argument("--no-reference", action="store_true", help="skip the naive and cp+fsync reference runs")
    parser.add_argument("--no-profile", action="store_true", help="skip the phase breakdown of one conversion")
    args = parser.parse_args()
    args.repeat = max(1, args.repeat)

    with work_folder("convert", args.keep) as work:
        return _main(args, work)


def _main(args: argparse.Namespace, work: Path) -> int:
    model: dict[str, Any]
    adapter: dict[str, Any]
    if args.quick:
        model = {"vocab": 8000, "hidden": 1024, "intermediate": 2816, "layers": 4, "kv_dim": 1024}
        adapter = {"hidden": 4096, "intermediate": 14336, "layers": 2, "kv_dim": 1024, "r": 16}
    else:
        # ~1.37 GB in bf16: a 32000 x 2048 embedding (tied to lm_head) and 12 layers of 2048/5632.
        model = {"vocab": 32000, "hidden": 2048, "intermediate": 5632, "layers": 12, "kv_dim": 2048}
        # Llama-3.1-8B: hidden 4096, intermediate 14336, 32 layers, 8 of 32 heads for k/v -> 1024.
        # r=16 on all 7 linear layers: 32 * 16 * 81920 = 41.9 M params = 168 MB in fp32.
        adapter = {"hidden": 4096, "intermediate": 14336, "layers": 32, "kv_dim": 1024, "r": 16}
    model_dir, adapter_dir = work / "checkpoint-model", work / "checkpoint-adapter"
    model["dir"], adapter["dir"] = str(model_dir), str(adapter_dir)

    print(f"machine: {os.cpu_count()} CPUs, load {loadavg()}, temp folder {work}", file=sys.stderr)
    print("making the test files with torch ...", file=sys.stderr)
    proc = subprocess.run(
        [PY, "-c", GENERATE, json.dumps({"model": model, "adapter": adapter})], capture_output=True, text=True
    )
    if proc.returncode != 0:
        print(f"could not make the test files:\n{proc.stderr}", file=sys.stderr)
        return 1
    gen = json.loads(proc.stdout.strip().splitlines()[-1])
    sizes = {
        "model": (model_dir / "pytorch_model.bin").stat().st_size,
        "adapter": (adapter_dir / "adapter_model.bin").stat().st_size,
    }
    print(
        f"  made in {gen['seconds']:.1f} s: pytorch_model.bin {sizes['model'] / 1e6:,.1f} MB "
        f"({gen['model_tensors']} names, 1 tied), adapter_model.bin {sizes['adapter'] / 1e6:,.1f} MB "
        f"({gen['adapter_tensors']} tensors)",
        file=sys.stderr,
    )

    # Which modules does a real conversion load? The memory baseline imports the same ones.
    modules_json = work / "modules.json"
    probe_out = work / "out-probe"
    proc = subprocess.run(
        [PY, "-c", MODULES_PROBE, str(modules_json), "convert", str(adapter_dir), "-o", str(probe_out)],
        capture_output=True,
        text=True,
    )
    remove(probe_out)
    if proc.returncode != 0 or not modules_json.exists():
        print(f"hubsync convert failed on the adapter (exit code {proc.returncode}):\n{proc.stderr}", file=sys.stderr)
        modules_json.write_text(json.dumps(["hubsync.cli", "hubsync.convert", "safetensors", "numpy"]))
    gen["modules"] = len(json.loads(modules_json.read_text()))
    if proc.returncode == 0:
        print(f"  hubsync convert says: {proc.stdout.strip().splitlines()[0]}", file=sys.stderr)

    print(f"measuring ({args.repeat} interleaved repetitions) ...", file=sys.stderr)
    series = measure(args, work, model_dir, adapter_dir, modules_json)
    first = series["model.hubsync"].runs[:1]
    if first:
        print(f"  hubsync convert says: {first[0].stdout.strip().splitlines()[0]}", file=sys.stderr)

    report(series, sizes, args, gen)

    profiles = (
        []
        if args.no_profile
        else [
            (model_dir, model_dir / "pytorch_model.bin", sizes["model"]),
            (adapter_dir, adapter_dir / "adapter_model.bin", sizes["adapter"]),
        ]
    )
    for ckpt_dir, src, size in profiles:
        phases = profile(work, ckpt_dir, src)
        if phases:
            total = phases.get("convert_checkpoint total", 0.0)
            print()
            print(
                f"where the time goes in one conversion of {src.name} ({size / 1e6:,.0f} MB) "
                f"(in-process, single run, reference):"
            )
            for name, seconds in sorted(phases.items(), key=lambda kv: -kv[1]):
                share = f"{100 * seconds / total:5.1f}%" if total and name != "imports" else "      "
                print(f"  {name:<52} {seconds:7.3f} s {share}")
    print()
    print(f"load average at the end: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
