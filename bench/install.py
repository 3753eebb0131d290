#!/usr/bin/env python
"""Benchmark installing hubsync's dependencies as the GitHub Action does: the light set against the old one.

Run with the project's venv:

    .venv/bin/python bench/install.py [--repeat N] [--keep]

The Action's "Install hubsync" step makes a fresh venv and pip-installs hubsync into it. Before the light install,
hubsync's dependencies held torch, transformers, peft and accelerate; they are now the `train` extra. So:

* old: [project.dependencies] + the `train` extra (what `pip install hubsync` installed before);
* light: [project.dependencies] (what `pip install hubsync` installs now).

Both lists are read from pyproject.toml. Measured, interleaved and repeated (the machine is shared and noisy; the
median of each is reported): the wall time of `python -m pip install --no-cache-dir REQUIREMENTS` into a new venv
(nothing cached, the venv's own creation not counted), the venv's size on disk afterwards (as `du -s` counts it)
and the number of distributions in it. hubsync itself is left out of both (a wheel of a few hundred kB).

pip answers from whatever indexes this machine's pip configuration names; on a GitHub runner the download from
PyPI adds to both, to the old set far more (torch's CPU wheel alone is 183 MB). 3 to 4 minutes with --repeat 2 on
2 cores. Only reports; never asserts. Exit code 0 unless the benchmark itself cannot run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from _common import PY, Series, fmt, human_bytes, loadavg, ratio, settle, work_folder

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Install:
    wall: float
    returncode: int
    size: int  # bytes on disk
    dists: int
    stderr: str


def dependency_sets() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    light = list(project["dependencies"])
    return {"old": light + list(project["optional-dependencies"]["train"]), "light": light}


def disk_usage(folder: Path) -> int:
    """Bytes of disk the folder's files take, as `du -s` counts them (each hard-linked file once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def install(requirements: list[str], venv: Path) -> Install:
    subprocess.run([PY, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    settle()
    t0 = time.perf_counter()
    done = subprocess.run(
        [python, "-m", "pip", "install", "--no-cache-dir", "--quiet", "--disable-pip-version-check", *requirements],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=False,
    )
    dists = sum(1 for line in listed.stdout.splitlines() if "==" in line and not line.startswith("pip=="))
    return Install(wall, done.returncode, disk_usage(venv), dists, done.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the venvs (their folder is printed)")
    args = parser.parse_args()
    sets = dependency_sets()
    series = {name: Series() for name in sets}
    sizes: dict[str, list[Install]] = {name: [] for name in sets}
    print(f"load average at start: {loadavg()}")
    with work_folder("install", args.keep) as work:
        for i in range(args.repeat):
            for name, requirements in sets.items():
                run = install(requirements, work / f"{name}-{i}")
                series[name].add(run)
                sizes[name].append(run)
                if run.returncode != 0:
                    print(f"  {name} run {i + 1} failed:\n{run.stderr.strip()[-2000:]}", file=sys.stderr)
                elif not args.keep:
                    shutil.rmtree(work / f"{name}-{i}")
    print(f"load average at end:   {loadavg()}")
    print(f"\npip install --no-cache-dir into a fresh venv, median of {args.repeat} (interleaved):")
    print(f"  {'':6} {'wall s':>7} {'spread':>13} {'venv on disk':>13} {'dists':>6}")
    for name, s in series.items():
        ok = [r for r in sizes[name] if r.returncode == 0]
        size = human_bytes(ok[-1].size) if ok else "-"
        dists = str(ok[-1].dists) if ok else "-"
        print(f"  {name:6} {fmt(s.wall, '7.1f')} {s.spread():>13} {size:>13} {dists:>6}")
    print(f"  light / old: {fmt(ratio(series['light'].wall, series['old'].wall), '.2f')}x the time")
    print("\n  old:   " + " ".join(sets["old"]))
    print("  light: " + " ".join(sets["light"]))


if __name__ == "__main__":
    main()
