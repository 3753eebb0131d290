"""The prune plan: which checkpoint branches of a repository to delete, and why each other one stays. Pure.

"Newest" is by step number. The best checkpoint is the one that the newest checkpoint revision's
trainer_state.json names in `best_model_checkpoint` (the Trainer records it there when
`metric_for_best_model` is set, and the newest checkpoint has the fullest record). A tagged checkpoint is a
branch whose head commit a tag points to. `main` is never a candidate: it holds the index.

Deleting a branch frees no storage on the Hub: its files stay until permanently deleted. The storage plan
(plan_storage) names the files of the Hub's own LFS listing that no commit of any remaining ref holds (its
head or its history: the Hub's permanent deletion rewrites every commit that still names a deleted file).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
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
class StoredFile:
    """A file of a repository's LFS (or Xet) storage, as the Hub's listing has it (HfApi.list_lfs_files)."""

    file_oid: str  # what the Hub's permanent deletion is given
    sha256: str
    size: int
    filename: str | None  # a path it has (or had) in some commit: for people, never for deciding

    def to_json(self) -> dict[str, Any]:
        return {"file_oid": self.file_oid, "sha256": self.sha256, "size": self.size, "filename": self.filename}


@dataclass(frozen=True)
class StoragePlan:
    """Which stored files a prune permanently deletes: those no remaining commit holds."""

    delete: tuple[StoredFile, ...]  # by filename, then sha256
    kept_files: int
    kept_bytes: int

    @property
    def freed_bytes(self) -> int:
        return sum({f.sha256: f.size for f in self.delete}.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "delete": [f.to_json() for f in self.delete],
            "freed_bytes": self.freed_bytes,
            "kept_files": self.kept_files,
            "kept_bytes": self.kept_bytes,
        }


@dataclass(frozen=True)
class PrunePlan:
    repo_id: str
    keep_newest: int
    keep: tuple[PruneDecision, ...]  # newest first
    delete: tuple[PruneDecision, ...]  # newest first
    best_step: int | None  # the best checkpoint's step, when --keep-best and the record names one
    storage: StoragePlan | None = None  # None: branches only (--keep-storage)

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo_id,
            "keep_newest": self.keep_newest,
            "best_step": self.best_step,
            "keep": [d.to_json() for d in self.keep],
            "delete": [d.to_json() for d in self.delete],
            "storage": None if self.storage is None else self.storage.to_json(),
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
    spare: Collection[str] = (),
) -> PrunePlan:
    """Keep the `keep` newest checkpoint branches by step, the best one (keep_best) and the tagged ones
    (keep_tagged); delete the rest. A branch without a step number cannot be ordered, so it stays; so does each
    branch in `spare` (a retention policy's: the one just pushed, whatever its step)."""
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
        if r.revision in spare:
            reasons.append("just pushed")
        decision = PruneDecision(r.revision, r.step, r.commit, tuple(reasons))
        (kept if reasons else deleted).append(decision)
    return PrunePlan(repo_id, keep, tuple(kept), tuple(deleted), best_step if keep_best else None)


@dataclass(frozen=True)
class RetentionPolicy:
    """What push, watch and HubsyncCallback prune after each push that lands (the keep, keep-best, keep-tagged
    and keep-storage settings): the `keep` newest checkpoint branches stay, as `hubsync prune --keep` keeps them.
    Never 0: the checkpoint just pushed stays whatever its step."""

    keep: int
    keep_best: bool = False
    keep_tagged: bool = False
    keep_storage: bool = False

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise ValueError("a retention policy keeps at least 1 checkpoint branch")

    def describe(self) -> str:
        """As people read it: `keep the 2 newest checkpoint branches, and the best; storage kept`."""
        also = [w for w, on in (("the best", self.keep_best), ("the tagged ones", self.keep_tagged)) if on]
        said = f"keep the {self.keep} newest checkpoint branch{'es' if self.keep != 1 else ''}"
        said += f", and {' and '.join(also)}" if also else ""
        return said + (
            "; storage kept (branches only)" if self.keep_storage else "; then free the storage of what it deletes"
        )


def remaining_heads(plan: PrunePlan, branches: Mapping[str, str], tags: Mapping[str, str]) -> set[str]:
    """The head commits of every ref that stays after the plan's branches are deleted: main, every other
    branch (checkpoint or not), every tag."""
    gone = {d.revision for d in plan.delete}
    return {c for b, c in branches.items() if b not in gone} | set(tags.values())


def plan_storage(listed: Sequence[StoredFile], referenced: Collection[str]) -> StoragePlan:
    """Delete each listed file that no remaining commit holds (`referenced`: the sha256s, and the git ids of the
    LFS pointers, of their files); keep the rest. A file listed twice is counted once."""

    def held(f: StoredFile) -> bool:  # by its content, or by its pointer's id (a listing that lies about either)
        return f.sha256 in referenced or f.file_oid in referenced

    delete = sorted((f for f in listed if not held(f)), key=lambda f: (f.filename or "", f.sha256))
    kept = {f.sha256: f.size for f in listed if held(f)}
    return StoragePlan(tuple(delete), len(kept), sum(kept.values()))
