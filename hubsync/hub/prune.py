"""Carry out a PrunePlan: delete the checkpoint branches it names, then drop them from main's index."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from hubsync.core.checkpoint import loads_json, parse_trainer_state
from hubsync.core.prune import PruneCandidate, PrunePlan
from hubsync.core.selection import best_step_of

from .push import IndexTarget, drop_from_index
from .revisions import RevisionSource, checkpoint_revisions


class PruneTarget(RevisionSource, IndexTarget, Protocol):
    """What a prune needs from a Hub (HubClient provides it): the revisions, main's index, and deleting branches."""

    def require_token(self) -> None: ...
    def delete_branch(self, repo_id: str, branch: str) -> bool: ...


@dataclass(frozen=True)
class PruneInputs:
    """What planning a prune needs to know of a repository."""

    revisions: tuple[PruneCandidate, ...]
    tags: dict[str, str]  # tag -> commit
    best_step: int | None  # from the newest checkpoint revision's trainer_state.json


@dataclass(frozen=True)
class PruneResult:
    deleted: tuple[str, ...]
    index_commit: str | None  # main's commit that dropped them from the index; None when none was needed

    def to_json(self) -> dict[str, Any]:
        return {"deleted": list(self.deleted), "index_commit": self.index_commit}


def prune_inputs(hub: RevisionSource, repo_id: str) -> PruneInputs:
    """The repository's checkpoint branches (as `hubsync ls` lists them), its tags, and the best step."""
    revisions = checkpoint_revisions(hub, repo_id)
    _branches, tags = hub.refs(repo_id)
    best = None
    numbered = [r for r in revisions if r.step is not None]
    if numbered:
        raw = hub.read_file(repo_id, numbered[-1].commit, "trainer_state.json")
        try:
            state = parse_trainer_state(loads_json(raw)) if raw is not None else None
        except ValueError:
            state = None
        best = best_step_of(state.best_model_checkpoint) if state is not None else None
    candidates = tuple(PruneCandidate(r.revision, r.step, r.commit) for r in revisions)
    return PruneInputs(candidates, tags, best)


def execute_prune(plan: PrunePlan, hub: PruneTarget) -> PruneResult:
    """Delete the plan's branches (one already gone is fine), then commit main's index without every revision
    whose branch no longer exists: a re-run after a failure in between finishes the job."""
    hub.require_token()
    # A branch that moved since the plan was made (a push landed, say from a running watch) is left alone.
    heads = hub.refs(plan.repo_id)[0]
    deleted = tuple(
        d.revision
        for d in plan.delete
        if heads.get(d.revision) == d.commit and hub.delete_branch(plan.repo_id, d.revision)
    )
    result = drop_from_index(hub, plan.repo_id, lambda: hub.refs(plan.repo_id)[0])
    return PruneResult(deleted, result.oid if result is not None and result.created else None)
