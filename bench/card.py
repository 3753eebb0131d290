#!/usr/bin/env python
"""Benchmark card rendering: a log_history of 100,000 entries, results table and loss plot included.

Target: under 2 s for the whole card (README.md and training_loss.svg). Prints the median of a few
runs, and for scale the time to parse the trainer_state.json that holds that history. Only reports.

    .venv/bin/python bench/card.py [--entries N] [--repeat N]    (or: make bench)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from hubsync.core.card import CardSettings, card_files
from hubsync.core.checkpoint import read_checkpoint


def make_checkpoint(folder: Path, entries: int) -> Path:
    """A checkpoint whose trainer_state.json logs `entries` entries: a loss every step, an eval every 100."""
    history: list[dict[str, float | int]] = []
    step = 0
    while len(history) < entries:
        step += 1
        loss = 2.0 * math.exp(-step / 20_000) + 0.05 * math.sin(step / 7)
        history.append({"step": step, "epoch": step / 10_000, "loss": loss, "learning_rate": 1e-4, "grad_norm": 1.0})
        if step % 100 == 0 and len(history) < entries:
            history.append(
                {
                    "step": step,
                    "epoch": step / 10_000,
                    "eval_loss": loss + 0.1,
                    "eval_accuracy": 0.5,
                    "eval_runtime": 1.0,
                }
            )
    ckpt = folder / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    state = {"global_step": step, "epoch": step / 10_000, "log_history": history, "train_batch_size": 8}
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    (ckpt / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": 16,
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": "meta-llama/Llama-3.1-8B",
            }
        )
    )
    return ckpt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hubsync-bench-card-") as tmp:
        folder = make_checkpoint(Path(tmp), args.entries)
        reads, renders = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            ckpt = read_checkpoint(folder)
            t1 = time.perf_counter()
            files = card_files(ckpt, CardSettings(), "me/bench", ckpt.name)
            t2 = time.perf_counter()
            reads.append(t1 - t0)
            renders.append(t2 - t1)
        evals = sum(1 for e in ckpt.trainer_state.log_history if "eval_loss" in e)  # type: ignore[union-attr]
        print(f"card for a log_history of {args.entries:,} entries ({evals:,} evaluations), median of {args.repeat}:")
        print(
            f"  read trainer_state.json ({(folder / 'trainer_state.json').stat().st_size / 1e6:.1f} MB)"
            f"   {statistics.median(reads):6.3f} s"
        )
        print(f"  render card + plot                        {statistics.median(renders):6.3f} s   target < 2 s")
        print(
            f"  README.md {len(files['README.md']) / 1e3:.0f} kB, training_loss.svg "
            f"{len(files['training_loss.svg']) / 1e3:.0f} kB"
        )


if __name__ == "__main__":
    main()
