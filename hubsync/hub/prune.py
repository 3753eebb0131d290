"""Carry out a PrunePlan: delete the checkpoint branches it names, drop them from main's index, then permanently
delete the stored files that no remaining commit holds (after looking again: a push may have landed since)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from hubsync.core.prune import (
    PruneCandidate,
    PrunePlan,
    RetentionPolicy,
    StoredFile,
    plan_prune,
    plan_storage,
    remaining_heads,
)

from .push import IndexTarget, drop_from_index
from .revisions import RevisionSource, best_step, checkpoint_revisions


class StorageSource(RevisionSource, Protocol):
    """What planning a prune's storage needs from a Hub: the stored files, and what each commit holds."""

    def history(self, repo_id: str, revision: str) -> list[str]: ...
    def stored_sha256s(self, repo_id: str, commit: str) -> set[str]: ...
    def pull_request_heads(self, repo_id: str) -> set[str]: ...
    def stored_files(self, repo_id: str) -> list[StoredFile]: ...


class PruneTarget(StorageSource, IndexTarget, Protocol):
    """What a prune needs from a Hub (HubClient provides it): the revisions, main's index, deleting branches and
    stored files."""

    def require_token(self) -> None: ...
    def delete_branch(self, repo_id: str, branch: str) -> bool: ...
    def delete_stored_files(self, repo_id: str, files: Sequence[StoredFile]) -> None: ...
    def used_storage(self, repo_id: str) -> int | None: ...


def held_files(hub: StorageSource, repo_id: str, heads: Iterable[str]) -> set[str]:
    """Every LFS file (sha256, and its pointer's git id) of every commit of these heads' histories. The Hub
    client asks for each commit's tree and each head's history once (commits never change), so that looking
    again before deleting costs only what is new."""
    held: set[str] = set()
    for head in sorted(set(heads)):
        for commit in hub.history(repo_id, head):
            held |= hub.stored_sha256s(repo_id, commit)
    return held


@dataclass(frozen=True)
class PruneInputs:
    """What planning a prune needs to know of a repository."""

    revisions: tuple[PruneCandidate, ...]
    tags: dict[str, str]  # tag -> commit
    best_step: int | None  # from the newest checkpoint revision's trainer_state.json


@dataclass(frozen=True)
class StorageResult:
    deleted: tuple[StoredFile, ...]  # the stored files permanently deleted
    spared: int  # planned files that a commit made since the plan holds: kept
    used_storage: int | None  # what the Hub says the repository stores now

    @property
    def freed_bytes(self) -> int:
        return sum({f.sha256: f.size for f in self.deleted}.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "deleted_files": len(self.deleted),
            "freed_bytes": self.freed_bytes,
            "spared_files": self.spared,
            "used_storage": self.used_storage,
        }


@dataclass(frozen=True)
class PruneResult:
    deleted: tuple[str, ...]
    index_commit: str | None  # main's commit that dropped them from the index; None when none was needed
    storage: StorageResult | None = None  # None: branches only (--keep-storage)

    def to_json(self) -> dict[str, Any]:
        found = {"deleted": list(self.deleted), "index_commit": self.index_commit}
        return found if self.storage is None else {**found, "storage": self.storage.to_json()}


def prune_inputs(hub: RevisionSource, repo_id: str) -> PruneInputs:
    """The repository's checkpoint branches (as `hubsync ls` lists them), its tags, and the best step."""
    revisions = checkpoint_revisions(hub, repo_id)
    _branches, tags = hub.refs(repo_id)
    best = best_step(hub, repo_id, revisions)
    candidates = tuple(PruneCandidate(r.revision, r.step, r.commit) for r in revisions)
    return PruneInputs(candidates, tags, best)


@dataclass(frozen=True)
class StorageSummary:
    """What a repository stores, as the Hub says (`hubsync ls --storage`)."""

    used_storage: int | None  # the Hub's usedStorage: all it counts for the repository
    files: int  # files of its LFS listing, and their bytes
    bytes: int
    unheld: tuple[StoredFile, ...]  # those no commit of any branch or tag holds: a prune frees them

    @property
    def unheld_bytes(self) -> int:
        return sum({f.sha256: f.size for f in self.unheld}.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "used_storage": self.used_storage,
            "files": self.files,
            "bytes": self.bytes,
            "unheld_files": len(self.unheld),
            "unheld_bytes": self.unheld_bytes,
        }


def storage_summary(hub: PruneTarget, repo_id: str) -> StorageSummary:
    """The repository's used storage, its stored files, and which of them no branch or tag holds."""
    branches, tags = hub.refs(repo_id)
    listed = hub.stored_files(repo_id)
    heads = set(branches.values()) | set(tags.values()) | hub.pull_request_heads(repo_id)
    plan = plan_storage(listed, held_files(hub, repo_id, heads))
    sizes = {f.sha256: f.size for f in listed}
    return StorageSummary(hub.used_storage(repo_id), len(sizes), sum(sizes.values()), plan.delete)


def with_storage(plan: PrunePlan, hub: StorageSource) -> PrunePlan:
    """`plan` with the stored files it would permanently delete: those of the Hub's LFS listing that no commit
    of a ref left after the plan's branches go holds (head or history)."""
    branches, tags = hub.refs(plan.repo_id)
    heads = remaining_heads(plan, branches, tags) | hub.pull_request_heads(plan.repo_id)
    referenced = held_files(hub, plan.repo_id, heads)
    return replace(plan, storage=plan_storage(hub.stored_files(plan.repo_id), referenced))


def free_storage(plan: PrunePlan, hub: PruneTarget) -> StorageResult:
    """Permanently delete the plan's stored files that are still listed and that no commit of any ref holds
    now: the refs are read again, so a push that landed since the plan (a running watch, say) keeps its files."""
    assert plan.storage is not None
    branches, tags = hub.refs(plan.repo_id)
    heads = set(branches.values()) | set(tags.values()) | hub.pull_request_heads(plan.repo_id)
    referenced = held_files(hub, plan.repo_id, heads)
    listed = {f.file_oid for f in hub.stored_files(plan.repo_id)}
    now = plan_storage([f for f in plan.storage.delete if f.file_oid in listed], referenced)
    doomed = list(now.delete)
    spared = sum(1 for f in plan.storage.delete if f.file_oid in listed) - len(doomed)
    hub.delete_stored_files(plan.repo_id, doomed)
    return StorageResult(tuple(doomed), spared, hub.used_storage(plan.repo_id))


def execute_prune(plan: PrunePlan, hub: PruneTarget) -> PruneResult:
    """Delete the plan's branches (one already gone is fine), then commit main's index without every revision
    whose branch no longer exists, then (unless the plan keeps storage) permanently delete the stored files no
    remaining commit holds: a re-run after a failure in between finishes the job."""
    hub.require_token()
    # A branch that moved since the plan was made (a push landed, say from a running watch) is left alone.
    heads = hub.refs(plan.repo_id)[0]
    deleted = tuple(
        d.revision
        for d in plan.delete
        if heads.get(d.revision) == d.commit and hub.delete_branch(plan.repo_id, d.revision)
    )
    result = drop_from_index(hub, plan.repo_id, lambda: hub.refs(plan.repo_id)[0])
    storage = None if plan.storage is None else free_storage(plan, hub)
    return PruneResult(deleted, result.oid if result is not None and result.created else None, storage)


def plan_on_hub(
    hub: StorageSource,
    repo_id: str,
    *,
    keep: int,
    keep_best: bool = False,
    keep_tagged: bool = False,
    keep_storage: bool = False,
    spare: Sequence[str] = (),
) -> PrunePlan:
    """The prune plan for the repository as the Hub has it now: its branches, and unless keep_storage its
    stored files. What `hubsync prune` and a retention policy both plan with."""
    found = prune_inputs(hub, repo_id)
    branches = plan_prune(
        repo_id,
        found.revisions,
        keep=keep,
        keep_best=keep_best,
        keep_tagged=keep_tagged,
        tags=found.tags,
        best_step=found.best_step,
        spare=spare,
    )
    return branches if keep_storage else with_storage(branches, hub)


@dataclass(frozen=True)
class Retained:
    """What a retention policy did after a push: its plan, and what the prune did (None: a dry run's)."""

    policy: RetentionPolicy
    plan: PrunePlan
    result: PruneResult | None

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"keep": self.policy.keep, "plan": self.plan.to_json()}
        return found if self.result is None else {**found, "result": self.result.to_json()}


def apply_retention(hub: PruneTarget, repo_id: str, policy: RetentionPolicy, pushed: str) -> Retained:
    """The policy's prune after a push to branch `pushed` landed, planned and carried out as `hubsync prune`
    does; the branch just pushed is never deleted, even when older ones are among the newest."""
    plan = plan_on_hub(
        hub,
        repo_id,
        keep=policy.keep,
        keep_best=policy.keep_best,
        keep_tagged=policy.keep_tagged,
        keep_storage=policy.keep_storage,
        spare=(pushed,),
    )
    return Retained(policy, plan, execute_prune(plan, hub))
