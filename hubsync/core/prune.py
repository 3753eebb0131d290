"""The prune plan: which checkpoint branches of a repository to delete, and why each other one stays. Pure.

"Newest" is by step number. The best checkpoint is the one that the newest checkpoint revision's
trainer_state.json names in `best_model_checkpoint` (the Trainer records it there when
`metric_for_best_model` is set, and the newest checkpoint has the fullest record). A tagged checkpoint is a
branch whose head commit a tag points to. `main` is never a candidate: it holds the index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PruneCandidate:
    """A checkpoint branch as prune sees it."""

    revision: str
    step: int | None
    commit: str


@dataclass(frozen=True)
class PruneDecision:
    revision: str
    step: int | None
    commit: str
    reasons: tuple[str, ...]  # why it is kept; empty for a branch that is deleted

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "step": self.step, "commit": self.commit, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class PrunePlan:
    repo_id: str
    keep_newest: int
    keep: tuple[PruneDecision, ...]  # newest first
    delete: tuple[PruneDecision, ...]  # newest first
    best_step: int | None  # the best checkpoint's step, when --keep-best and the record names one

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo_id,
            "keep_newest": self.keep_newest,
            "best_step": self.best_step,
            "keep": [d.to_json() for d in self.keep],
            "delete": [d.to_json() for d in self.delete],
        }


def plan_prune(
    repo_id: str,
    revisions: Sequence[PruneCandidate],
    *,
    keep: int,
    keep_best: bool = False,
    keep_tagged: bool = False,
    tags: Mapping[str, str] | None = None,
    best_step: int | None = None,
) -> PrunePlan:
    """Keep the `keep` newest checkpoint branches by step, the best one (keep_best) and the tagged ones
    (keep_tagged); delete the rest. A branch without a step number cannot be ordered, so it stays."""
    if keep < 0:
        raise ValueError("keep must be at least 0")
    tagged: dict[str, list[str]] = {}
    for tag, commit in sorted((tags or {}).items()):
        tagged.setdefault(commit, []).append(tag)
    candidates = [r for r in revisions if r.revision != "main"]
    ordered = sorted(candidates, key=lambda r: (r.step if r.step is not None else -1, r.revision), reverse=True)
    numbered = [r for r in ordered if r.step is not None]
    newest = {r.revision for r in numbered[:keep]}
    kept: list[PruneDecision] = []
    deleted: list[PruneDecision] = []
    for r in ordered:
        reasons = []
        if r.step is None:
            reasons.append("no step number")
        if r.revision in newest:
            reasons.append(f"newest {keep}")
        if keep_best and best_step is not None and r.step == best_step:
            reasons.append("best checkpoint")
        if keep_tagged and r.commit in tagged:
            reasons.append("tagged " + ", ".join(tagged[r.commit]))
        decision = PruneDecision(r.revision, r.step, r.commit, tuple(reasons))
        (kept if reasons else deleted).append(decision)
    return PrunePlan(repo_id, keep, tuple(kept), tuple(deleted), best_step if keep_best else None)
