"""Create or delete one tag as `hubsync tag` planned it (hubsync.core.tags), from one read-only look first."""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from hubsync.core.preflight import RepoFacts
from hubsync.core.tags import TagChange, plan_tag, plan_tag_delete


class TagTarget(Protocol):
    """What tagging needs from a Hub (HubClient provides it)."""

    def require_token(self) -> None: ...
    def repo_facts(self, repo_id: str) -> RepoFacts: ...
    def resolve_commit(self, repo_id: str, revision: str) -> str: ...
    def ensure_tag(self, repo_id: str, tag: str, commit: str) -> None: ...
    def delete_tag(self, repo_id: str, tag: str) -> bool: ...


def plan_tag_creation(hub: TagTarget, repo_id: str, revision: str, tag: str) -> TagChange:
    """The repository's refs and the commit `revision` names, asked read-only; then the plan."""
    repo = hub.repo_facts(repo_id)
    commit = hub.resolve_commit(repo_id, revision) if repo.exists else ""
    return plan_tag(repo, tag, revision, commit)


def plan_tag_deletion(hub: TagTarget, repo_id: str, tag: str) -> TagChange:
    return plan_tag_delete(hub.repo_facts(repo_id), tag)


def execute_tag(change: TagChange, hub: TagTarget) -> TagChange:
    """Carry out `change` (nothing when it changes nothing); the change as it happened. A tag deleted meanwhile
    by someone else is the one to delete gone: said as a change that changed nothing."""
    if not change.changes:
        return change
    if change.action == "create":
        hub.ensure_tag(change.repo_id, change.tag, change.commit)  # asks again: a tag made meanwhile elsewhere
        return change
    if hub.delete_tag(change.repo_id, change.tag):
        return change
    return replace(change, changes=False)
