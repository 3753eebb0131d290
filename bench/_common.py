"""What the benchmark scripts share: the CLIs to time, flushing between runs, and number formatting."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PY = sys.executable


@contextmanager
def work_folder(name: str, keep: bool) -> Iterator[Path]:
    """A temp folder for one benchmark's files, removed at the end unless `keep` (then its path is printed)."""
    work = Path(tempfile.mkdtemp(prefix=f"hubsync-bench-{name}-"))
    try:
        yield work
    finally:
        if keep:
            print(f"\nkept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def settle() -> None:
    """Write back whatever a previous step left dirty, so that it is not flushed during the next timed run."""
    os.sync()


def hubsync_cmd() -> list[str]:
    script = Path(PY).parent / "hubsync"
    return [str(script)] if script.exists() else [PY, "-m", "hubsync"]


def hf_cmd() -> list[str]:
    script = Path(PY).parent / "hf"
    return [str(script)] if script.exists() else [PY, "-m", "huggingface_hub.cli.hf"]


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def fmt(x: float | None, spec: str) -> str:
    width = spec.split(".")[0].lstrip("+")
    return format("-", f">{width}") if x is None else format(x, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    if n < 1000:
        return f"{n:.0f} B"
    if n < 1e6:
        return f"{n / 1e3:.1f} kB"
    return f"{n / 1e6:,.1f} MB"


@dataclass
class Series:
    """The runs of one measurement: its median wall time and spread; a failed run kept aside."""

    runs: list[Any] = field(default_factory=list)  # each with .wall and .returncode
    failed: Any = None

    def add(self, run: Any) -> None:
        if run.returncode == 0:
            self.runs.append(run)
        elif self.failed is None:
            self.failed = run

    @property
    def wall(self) -> float | None:
        return statistics.median(r.wall for r in self.runs) if self.runs else None

    def spread(self) -> str:
        if not self.runs:
            return "-"
        walls = sorted(r.wall for r in self.runs)
        return f"{walls[0]:.2f}..{walls[-1]:.2f}"


def start_hub(root: Path, *options: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """A `hubsync localhub` at nice 19 (a stand-in for a remote Hub, out of the measured process's way), with
    `options` (such as --no-xet); its HF_ENDPOINT and HF_TOKEN."""
    hub = subprocess.Popen(
        ["nice", "-n", "19", *hubsync_cmd(), "localhub", "--root", str(root), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert hub.stdout is not None
    env = dict(line.strip().split("=", 1) for line in (hub.stdout.readline(), hub.stdout.readline()))
    return hub, env
