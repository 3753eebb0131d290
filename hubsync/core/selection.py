"""Which checkpoints of a run to push (`--select`), and what their revisions are called (`--revision`). Pure."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import checkpoint_step
from .errors import InvalidRevisionError, SelectionError

DEFAULT_REVISION = "checkpoint-{step}"
_PLACEHOLDERS = {"step", "epoch", "run"}


def select_steps(steps: Sequence[int], select: str, best_step: int | None) -> list[int]:
    """The steps `select` names among a run's checkpoint steps: latest, best, all, last:N or STEP[,STEP...]."""
    available = sorted(steps)
    if not available:
        raise SelectionError(select, "the run has no checkpoint-N folders")
    if select == "latest":
        return [available[-1]]
    if select == "all":
        return available
    if select == "best":
        if best_step is None:
            raise SelectionError(select, "trainer_state.json names no best checkpoint (set metric_for_best_model)")
        if best_step not in available:
            raise SelectionError(select, f"the best checkpoint, checkpoint-{best_step}, is no longer in the run")
        return [best_step]
    m = re.fullmatch(r"last:([0-9]+)", select)
    if m:
        count = int(m.group(1))
        if count < 1:
            raise SelectionError(select, "last:N needs N of at least 1")
        return available[-count:]
    if re.fullmatch(r"[0-9]+(,[0-9]+)*", select):
        wanted = [int(s) for s in select.split(",")]
        missing = [s for s in wanted if s not in available]
        if missing:
            raise SelectionError(select, f"no checkpoint-{missing[0]} in the run (it has {_some(available)})")
        return sorted(set(wanted))
    raise SelectionError(select, "use latest, best, all, last:N or STEP[,STEP...]")


@dataclass(frozen=True)
class Selection:
    steps: tuple[int, ...]  # complete checkpoints, oldest first
    passed_over: Mapping[int, str]  # incomplete checkpoints that latest, all or last:N left out: step -> what lacks


def select_complete(
    steps: Sequence[int], select: str, best_step: int | None, incomplete: Mapping[int, str]
) -> Selection:
    """select_steps() among the complete checkpoints: latest, all and last:N pass over the incomplete ones
    (`incomplete`: step -> what it lacks, see missing_parts); best and STEP refuse to name one."""
    if select in ("latest", "all") or re.fullmatch(r"last:[0-9]+", select):
        complete = [s for s in steps if s not in incomplete]
        if steps and not complete:
            newest = max(steps)
            raise SelectionError(
                select, f"no checkpoint of the run is complete (checkpoint-{newest} has no {incomplete[newest]})"
            )
        chosen = select_steps(complete, select, best_step)
        passed = {s: incomplete[s] for s in sorted(incomplete) if select == "all" or s > chosen[0]}
        return Selection(tuple(chosen), passed)
    chosen = select_steps(steps, select, best_step)
    for step in chosen:
        if step in incomplete:
            raise SelectionError(
                select,
                f"checkpoint-{step} is not complete: it has no {incomplete[step]} (wait for the save, or pick another)",
            )
    return Selection(tuple(chosen), {})


def _some(steps: list[int]) -> str:
    shown = ", ".join(str(s) for s in steps[-5:])
    return f"steps {'..., ' if len(steps) > 5 else ''}{shown}"


def best_step_of(best_model_checkpoint: object) -> int | None:
    """The step of trainer_state.json's best_model_checkpoint (a path ending in checkpoint-N)."""
    if not isinstance(best_model_checkpoint, str) or not best_model_checkpoint:  # a hostile record may hold anything
        return None
    return checkpoint_step(Path(best_model_checkpoint.replace("\\", "/")).name)


def check_select(select: str) -> str:
    """`select` when it is one of the forms --select takes (which steps exist is checked against the run)."""
    if select in ("latest", "best", "all") or re.fullmatch(r"[0-9]{1,18}(,[0-9]{1,18})*", select):
        return select
    m = re.fullmatch(r"last:([0-9]{1,18})", select)
    if m and int(m.group(1)) >= 1:
        return select
    raise SelectionError(select, "use latest, best, all, last:N (N at least 1) or STEP[,STEP...]")


def _fields(pattern: str) -> set[str]:
    """The placeholders of a revision pattern; InvalidRevisionError for braces that do not pair up."""
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as exc:  # "Single '}' encountered", "expected '}' before end of string"
        raise InvalidRevisionError(pattern, "braces must pair up around {step}, {epoch} or {run}") from exc
    fields = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in _PLACEHOLDERS:
            raise InvalidRevisionError(pattern, f"unknown placeholder {{{name}}}; use {{step}}, {{epoch}}, {{run}}")
        if spec or conversion:
            raise InvalidRevisionError(pattern, f"write {{{name}}} without a format or conversion")
        fields.add(name)
    return fields


def check_revision_pattern(pattern: str) -> str:
    """A revision pattern that makes a valid branch name, tried with a sample step, epoch and run name."""
    from .plan import check_branch_name

    _fields(pattern)
    check_branch_name(pattern.format(step=1000, epoch="2.00", run="run"))
    return pattern


def revision_name(pattern: str, *, step: int | None, epoch: float | None, run: str | None, folder: str) -> str:
    """Fill a revision pattern's {step}, {epoch} and {run}."""
    fields = _fields(pattern)
    values = {"step": step, "epoch": None if epoch is None else f"{epoch:.2f}", "run": run}
    for name in fields:
        if values[name] is None:
            raise InvalidRevisionError(pattern, f"{folder} has no {name} to fill {{{name}}}")
    return pattern.format(**values)
