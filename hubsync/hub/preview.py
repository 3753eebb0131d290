"""What a dry run learns from the Hub, read only: whether the repository exists (and is private), whether the
branch exists, which planned files the branch already holds byte for byte, which files of the branch the push
would delete, and whether the revision stops being resumable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from hubsync.core.checkpoint import Checkpoint
from hubsync.core.conversion import is_resumable, resume_missing
from hubsync.core.errors import HubError, HubsyncError, HubUnreachableError
from hubsync.core.index import INDEX_FILE, readme_action
from hubsync.core.plan import PushPlan, branch_deletions
from hubsync.core.preflight import RepoFacts
from hubsync.core.pull import RemoteFile
from hubsync.core.signing import SIGNATURE_FILE
from hubsync.core.watch import same_content

from .push import local_hashes


class PreviewSource(Protocol):
    """What a dry run asks of a Hub (HubClient provides it): read only."""

    @property
    def token(self) -> str | None: ...
    def repo_facts(self, repo_id: str) -> RepoFacts: ...
    def tree(self, repo_id: str, commit: str, revision: str | None = None) -> list[RemoteFile]: ...
    def read_file(self, repo_id: str, revision: str, path: str) -> bytes | None: ...


@dataclass(frozen=True)
class HubPreview:
    looked: bool  # False: the Hub was not asked (no token) or did not answer; `reason` says which
    reason: str | None = None
    private: bool | None = None  # None: the repository does not exist (a push creates it)
    branch_exists: bool = False
    unchanged: frozenset[str] = frozenset()  # paths in repo the branch holds with exactly the planned bytes
    delete: tuple[str, ...] = ()  # paths the branch holds that the push leaves out: its commit deletes them
    resumable_now: bool | None = None  # whether the branch is resumable now; None: no branch yet (or not looked)
    lacks_after: tuple[str, ...] = ()  # what the revision would lack for resuming after the push
    main_readme: str | None = None  # what the push does with main's README.md (ReadmeUpdate.action); None: nothing

    @property
    def stops_resumable(self) -> bool:
        """The revision is resumable on the Hub now and would not be after the push."""
        return bool(self.resumable_now and self.lacks_after)

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
            "delete": list(self.delete),
            "resumable_now": self.resumable_now,
            "resumable_after": None if self.resumable_now is None else not self.lacks_after,
            "main_readme": self.main_readme,
        }


def preview_push(plan: PushPlan, checkpoint: Checkpoint, hub: PreviewSource) -> HubPreview:
    """Ask the Hub what a push of `plan` would find. Never raises for the Hub's sake: a dry run still prints."""
    if not hub.token:
        return HubPreview(looked=False, reason="no token, so the Hub was not asked")
    try:
        facts = hub.repo_facts(plan.repo_id)
        head = facts.branches.get(plan.revision)
        remote = hub.tree(plan.repo_id, head, plan.revision) if head else []
        main = facts.branches.get("main") if facts.exists and plan.index_entry is not None else None
        readme = hub.read_file(plan.repo_id, main, "README.md") if main else None
        has_index = bool(main) and hub.read_file(plan.repo_id, main or "main", INDEX_FILE) is not None
    except HubUnreachableError:
        return HubPreview(looked=False, reason="the Hub could not be reached")
    except HubsyncError as exc:
        status = f" {exc.status}" if isinstance(exc, HubError) and exc.status else ""
        return HubPreview(looked=False, reason=f"the Hub answered an error{status}")
    action = readme_action(readme, has_index) if plan.index_entry is not None else None
    if not facts.exists:
        return HubPreview(looked=True, main_readme=action)
    on_branch = {f.path for f in remote}
    planned = {u.path_in_repo for u in plan.uploads} | ({SIGNATURE_FILE} if plan.signing else set())
    now = is_resumable(on_branch) if head is not None else None
    return HubPreview(
        looked=True,
        private=facts.private,
        branch_exists=head is not None,
        unchanged=unchanged(plan, checkpoint, remote),
        delete=branch_deletions(on_branch, planned),
        resumable_now=now,
        lacks_after=resume_missing(planned),
        main_readme=action,
    )


def unchanged(plan: PushPlan, checkpoint: Checkpoint, remote: list[RemoteFile]) -> frozenset[str]:
    """Planned files whose bytes the remote tree already holds, compared as the Hub compares them. Converted files
    are not known before they are converted."""
    on_hub = {f.path: f for f in remote}
    same = set()
    for upload in plan.uploads:
        there = on_hub.get(upload.path_in_repo)
        if there is None or upload.converted_from is not None:
            continue
        source = plan.generated[upload.path_in_repo] if upload.generated else checkpoint.path / upload.source
        if same_content(there, local_hashes(source)):
            same.add(upload.path_in_repo)
    return frozenset(same)
