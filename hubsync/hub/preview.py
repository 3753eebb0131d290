"""What a dry run learns from the Hub, read only: whether the repository exists (and is private), whether the
branch exists, and which planned files the branch already holds byte for byte."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubsync.core.checkpoint import Checkpoint
from hubsync.core.errors import HubError, HubsyncError, HubUnreachableError, RevisionNotFoundError
from hubsync.core.plan import PushPlan
from hubsync.core.pull import RemoteFile
from hubsync.files import hash_file

from .client import HubClient


@dataclass(frozen=True)
class HubPreview:
    looked: bool  # False: the Hub was not asked (no token) or did not answer; `reason` says which
    reason: str | None = None
    private: bool | None = None  # None: the repository does not exist (a push creates it)
    branch_exists: bool = False
    unchanged: frozenset[str] = frozenset()  # paths in repo the branch holds with exactly the planned bytes

    @property
    def exists(self) -> bool:
        return self.private is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "looked": self.looked,
            "reason": self.reason,
            "repo_exists": self.exists if self.looked else None,
            "private": self.private,
            "branch_exists": self.branch_exists if self.looked else None,
            "unchanged": sorted(self.unchanged),
        }


def preview_push(plan: PushPlan, checkpoint: Checkpoint, hub: HubClient) -> HubPreview:
    """Ask the Hub what a push of `plan` would find. Never raises for the Hub's sake: a dry run still prints."""
    if not hub.token:
        return HubPreview(looked=False, reason="no token, so the Hub was not asked")
    try:
        private = hub.visibility(plan.repo_id)
        if private is None:
            return HubPreview(looked=True)
        try:
            remote = hub.tree(plan.repo_id, plan.revision)
        except RevisionNotFoundError:
            return HubPreview(looked=True, private=private)
    except HubUnreachableError:
        return HubPreview(looked=False, reason="the Hub could not be reached")
    except HubsyncError as exc:
        status = f" {exc.status}" if isinstance(exc, HubError) and exc.status else ""
        return HubPreview(looked=False, reason=f"the Hub answered an error{status}")
    return HubPreview(looked=True, private=private, branch_exists=True, unchanged=unchanged(plan, checkpoint, remote))


def unchanged(plan: PushPlan, checkpoint: Checkpoint, remote: list[RemoteFile]) -> frozenset[str]:
    """Planned files whose bytes the remote tree already holds: sha256 for LFS files, the git blob id for the
    others (as the Hub itself compares them). Converted files are not known before they are converted."""
    on_hub = {f.path: f for f in remote}
    same = set()
    for upload in plan.uploads:
        there = on_hub.get(upload.path_in_repo)
        if there is None or upload.converted_from is not None:
            continue
        if upload.generated:
            data = plan.generated[upload.path_in_repo]
            if there.size != len(data):
                continue
            blob = _blob_hasher(len(data))
            blob.update(data)
            ids = [hashlib.sha256(data).hexdigest(), blob.hexdigest()]
        else:
            path: Path = checkpoint.path / upload.source
            if there.size != upload.size:
                continue
            ids = hash_file(path, hashlib.sha256(), _blob_hasher(upload.size))
        if (there.sha256 or there.git_oid) == (ids[0] if there.sha256 else ids[1]):
            same.add(upload.path_in_repo)
    return frozenset(same)


def _blob_hasher(size: int) -> Any:
    """git's object id of a file: sha1 of `blob <size>\\0` and its bytes."""
    hasher = hashlib.sha1(usedforsecurity=False)
    hasher.update(b"blob %d\0" % size)
    return hasher
