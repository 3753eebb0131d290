"""Carry out a PushPlan against a Hub client that is passed in."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hubsync.convert import convert_weights
from hubsync.convert.compare import check_superseded
from hubsync.convert.state import encode_state
from hubsync.core.checkpoint import Checkpoint
from hubsync.core.conversion import STATE_FILE_RE
from hubsync.core.errors import CommitConflictError, PicklesInPublicRepoError, PublicTrainingStateError
from hubsync.core.index import (
    INDEX_FILE,
    dump_index,
    front_matter_of,
    merge_index,
    parse_index,
    render_index_readme,
)
from hubsync.core.plan import PushPlan
from hubsync.core.pull import RemoteFile
from hubsync.files import system_temp_dir

from .client import CommitResult

CONFLICT_RETRIES = 8
Files = Sequence[tuple[Path | bytes, str]]
T = TypeVar("T")
DEFAULT_FRONT_MATTER = "tags:\n- hubsync"  # for an index README whose metadata someone removed


class PushTarget(Protocol):
    """What executing a push needs from a Hub (HubClient provides it)."""

    def require_token(self) -> None: ...
    def ensure_repo(self, repo_id: str, private: bool) -> bool: ...
    def ensure_branch(self, repo_id: str, branch: str) -> bool: ...
    def delete_branch(self, repo_id: str, branch: str) -> bool: ...
    def ensure_tag(self, repo_id: str, tag: str, commit: str) -> None: ...
    def branch_head(self, repo_id: str, branch: str) -> str | None: ...
    def commit_files(
        self,
        repo_id: str,
        branch: str,
        files: Any,
        message: str,
        description: str = "",
        parent_commit: str | None = None,
        delete: Sequence[str] = (),
    ) -> CommitResult: ...
    def tree(self, repo_id: str, commit: str) -> list[RemoteFile]: ...
    def read_file(self, repo_id: str, revision: str, path: str) -> bytes | None: ...
    def web_url(self, repo_id: str, revision: str | None = None) -> str: ...


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    revision: str
    commit: str
    commit_url: str
    url: str
    created: bool
    files: int
    bytes: int
    tags: tuple[str, ...]
    released: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "commit_url": self.commit_url,
            "url": self.url,
            "created": self.created,
            "files": self.files,
            "bytes": self.bytes,
            "tags": list(self.tags),
            "released": self.released,
        }


def execute_push(plan: PushPlan, checkpoint: Checkpoint, hub: PushTarget) -> PushResult:
    """Convert pickled weights and training state (verified) into a temp folder, make sure the repository exists
    (and may hold what is planned), commit the planned files to the branch in one commit, tag it, and record it
    in main's index. A file that cannot be converted is refused before anything happens on the Hub."""
    hub.require_token()
    with system_temp_dir("push") as staging:
        check_superseded(checkpoint, plan.conversion)  # a .bin left out must say what its safetensors file says
        if plan.conversion.conversions:
            convert_weights(checkpoint, plan.conversion, staging)
        for source in dict.fromkeys(u.converted_from for u in plan.uploads):
            if source is not None and STATE_FILE_RE.match(source):
                encode_state(checkpoint.path / source, f"{checkpoint.display}/{source}", staging)
        private = hub.ensure_repo(plan.repo_id, private=plan.private)
        if plan.training_state == "keep" and not private:
            if plan.state_format == "pickle":
                raise PicklesInPublicRepoError(plan.repo_id)
            if not plan.allow_public_state:
                raise PublicTrainingStateError(plan.repo_id)
        for path, data in plan.generated.items():
            (staging / path).parent.mkdir(parents=True, exist_ok=True)
            (staging / path).write_bytes(data)
        files = {
            u.path_in_repo: (staging if u.converted_from or u.generated else checkpoint.path) / u.source
            for u in plan.uploads
        }
        return _push(plan, files, hub)


def _push(plan: PushPlan, files: dict[str, Path], hub: PushTarget) -> PushResult:
    created = hub.ensure_branch(plan.repo_id, plan.revision)
    start = hub.branch_head(plan.repo_id, plan.revision) if created else None
    try:
        result = _commit_to_head(
            hub,
            plan.repo_id,
            plan.revision,
            [(src, dest) for dest, src in files.items()],
            plan.commit_message,
            plan.commit_description,
        )
    except BaseException:
        # The empty branch this push made would look like a checkpoint revision: take it away again, unless
        # another push has committed to it meanwhile.
        with suppress(Exception):
            if created and hub.branch_head(plan.repo_id, plan.revision) == start:
                hub.delete_branch(plan.repo_id, plan.revision)
        raise
    for tag in plan.tags:
        hub.ensure_tag(plan.repo_id, tag, result.oid)
    if plan.index_entry is not None:
        released = [(files[path], path) for path in plan.release]
        _update_index(hub, plan, {**plan.index_entry, "commit": result.oid, "tags": list(plan.tags)}, released)
    return PushResult(
        repo_id=plan.repo_id,
        revision=plan.revision,
        commit=result.oid,
        commit_url=result.url,
        url=hub.web_url(plan.repo_id, plan.revision),
        created=result.created,
        files=len(plan.uploads),
        bytes=plan.total_bytes,
        tags=plan.tags,
        released=bool(plan.release),
    )


def _commit_to_head(
    hub: PushTarget, repo_id: str, branch: str, files: Files, message: str, description: str = ""
) -> CommitResult:
    """Make the branch hold exactly `files` (and .gitattributes), in one commit on top of its current head. When
    another push moved the head meanwhile (412), plan the deletions again against the new head and commit again:
    concurrent pushes all land in the branch's history, and the last one is its tree."""
    keep = {dest for _, dest in files} | {".gitattributes"}

    def commit() -> CommitResult:
        head = hub.branch_head(repo_id, branch)
        stale = [f.path for f in hub.tree(repo_id, head)] if head else []
        delete = sorted(path for path in stale if path not in keep)
        return hub.commit_files(repo_id, branch, files, message, description, parent_commit=head, delete=delete)

    return retry_conflicts(commit)


def retry_conflicts(commit: Callable[[], T]) -> T:
    """Run `commit` (which reads a branch head and commits on top of it) again while the branch keeps moving
    under it (412), up to CONFLICT_RETRIES times, with short random pauses."""
    for attempt in range(CONFLICT_RETRIES):
        try:
            return commit()
        except CommitConflictError:
            if attempt == CONFLICT_RETRIES - 1:
                raise
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
    raise AssertionError("unreachable")


def _update_index(hub: PushTarget, plan: PushPlan, entry: dict[str, Any], released: Files) -> None:
    """Record the revision in main's index (.hubsync/index.json and README.md), with the released inference
    files when --release; nothing is committed when main already says all that."""
    assert plan.front_matter is not None
    front_matter = plan.front_matter

    def commit() -> None:
        nonlocal entry
        head = hub.branch_head(plan.repo_id, "main")
        entries = parse_index(hub.read_file(plan.repo_id, head or "main", INDEX_FILE))
        if released:
            entries = [{**e, "released": False} for e in entries]
            entry = {**entry, "released": True}
        merged = merge_index(entries, entry)
        if merged == entries and not released:
            return  # main already lists this revision at this commit; its README may describe a newer one
        readme = render_index_readme(merged, plan.repo_id, front_matter, hub.web_url(plan.repo_id))
        files: list[tuple[Path | bytes, str]] = [(dump_index(merged), INDEX_FILE), (readme, "README.md"), *released]
        message = f"hubsync: {'release' if released else 'index'} {plan.revision}"
        hub.commit_files(plan.repo_id, "main", files, message, parent_commit=head)  # no change: no commit

    retry_conflicts(commit)


def drop_from_index(hub: PushTarget, repo_id: str, branches: Callable[[], Collection[str]]) -> CommitResult | None:
    """Make main's index (.hubsync/index.json and its README.md) list only revisions that `branches()` still
    names, in one commit; None when main has no index or it lists nothing that is gone."""

    def commit() -> CommitResult | None:
        head = hub.branch_head(repo_id, "main")
        raw = hub.read_file(repo_id, head or "main", INDEX_FILE)
        if head is None or raw is None:
            return None
        entries = parse_index(raw)
        existing = set(branches())
        kept = [e for e in entries if e["revision"] in existing]
        if len(kept) == len(entries):
            return None
        front_matter = front_matter_of(hub.read_file(repo_id, head, "README.md"))
        readme = render_index_readme(kept, repo_id, front_matter or DEFAULT_FRONT_MATTER, hub.web_url(repo_id))
        gone_all = [e["revision"] for e in entries if e["revision"] not in existing]
        gone = ", ".join(gone_all[:5]) + (f" and {len(gone_all) - 5} more" if len(gone_all) > 5 else "")
        files: list[tuple[Path | bytes, str]] = [(dump_index(kept), INDEX_FILE), (readme, "README.md")]
        return hub.commit_files(repo_id, "main", files, f"hubsync: prune {gone}", parent_commit=head)

    return retry_conflicts(commit)
