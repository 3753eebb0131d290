"""Run folders: which checkpoint folders a path names (`--select`), and where its configuration is looked up.

Reads folder listings and the newest trainer_state.json; what to pick among the steps is hubsync.core.selection's
pure rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import TRAINER_STATE, folder_missing_parts, list_checkpoints, read_checkpoint, read_json_file
from .errors import SelectionError
from .paths import display_path
from .selection import best_step_of, select_complete


@dataclass(frozen=True)
class Targets:
    """The checkpoint folders to push, oldest first, and the incomplete ones a selection passed over."""

    folders: tuple[Path, ...]
    passed_over: Mapping[str, str] = field(default_factory=dict)  # folder as shown -> what it lacks


def is_run_folder(path: Path) -> bool:
    """A folder that holds checkpoint-N folders and is not itself a checkpoint."""
    return path.is_dir() and not (path / TRAINER_STATE).exists() and bool(list_checkpoints(path))


def project_folder(path: Path) -> Path:
    """Where a push's configuration is looked up from: the run folder, never the checkpoint folder being pushed
    (whoever wrote the checkpoint would choose how it is published)."""
    return path if is_run_folder(path) else path.parent


def choose_targets(path: Path, select: str, select_given: bool) -> Targets:
    """The checkpoint folders `path` names: itself, or the complete ones `select` picks from a run folder. A
    `select` that was not given explicitly (a variable's, the configuration's) is for runs: a checkpoint folder is
    pushed as it is; one given explicitly for a checkpoint folder is refused."""
    runs = list_checkpoints(path) if path.is_dir() else []
    if not runs or (path / TRAINER_STATE).exists():
        if select_given and select != "latest":
            read_checkpoint(path)  # a folder that is missing, or neither run nor checkpoint, says so first
            raise SelectionError(
                select, f"{display_path(path)} is a checkpoint, not a run folder (leave out --select for it)"
            )
        return Targets((path,))
    incomplete = {step: " or ".join(m) for step, folder in runs if (m := folder_missing_parts(folder))}
    best = None
    written = [folder / TRAINER_STATE for step, folder in runs if (folder / TRAINER_STATE).exists()]
    if written:  # the newest record names the best checkpoint
        state = read_json_file(written[-1], display_path(written[-1]))
        best = best_step_of(state.get("best_model_checkpoint") if isinstance(state, dict) else None)
    by_step = dict(runs)
    chosen = select_complete(list(by_step), select, best, incomplete)
    passed = {display_path(by_step[s]): why for s, why in chosen.passed_over.items()}
    return Targets(tuple(by_step[s] for s in chosen.steps), passed)
