"""What `hubsync tag` does to a repository's tags, decided from its refs alone: create, leave, or refuse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InvalidTagError, RepoNotFoundError, TagExistsError, TagNotFoundError
from .preflight import RepoFacts

MAX_LISTED_TAGS = 10  # tags a refusal names; a repository may hold hundreds


@dataclass(frozen=True)
class TagChange:
    """One tag to create or delete. `changes`: False when the Hub already is as asked (the tag there, at
    `commit`), so nothing is sent."""

    repo_id: str
    tag: str
    commit: str  # what the tag points to: the commit it will name, or the one it named before a delete
    action: str  # "create" or "delete"
    changes: bool = True
    revision: str | None = None  # as given to create it: a branch, a tag or a commit id

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo_id,
            "tag": self.tag,
            "commit": self.commit,
            "action": self.action,
            "changed": self.changes,
            **({} if self.revision is None else {"revision": self.revision}),
        }


def _existing(repo: RepoFacts) -> None:
    if not repo.exists:
        raise RepoNotFoundError(repo.endpoint, "no such repository", repo_id=repo.repo_id)


def plan_tag(repo: RepoFacts, tag: str, revision: str, commit: str) -> TagChange:
    """Tag `commit` (what `revision` resolved to) `tag`, a name already checked by check_tag_name. A tag there at
    that commit: nothing to do. At another: refused, since tags never move. Named like a branch: refused, since
    the name would mean two commits."""
    _existing(repo)
    if tag in repo.branches:
        raise InvalidTagError(tag, f"{repo.repo_id} has a branch of that name, and a name for two commits pulls either")
    existing = repo.tags.get(tag)
    if existing is not None and existing != commit:
        detail = f"it points to {existing[:12]}, not to {commit[:12]} ({revision})"
        raise TagExistsError(repo.endpoint, detail, repo_id=repo.repo_id, revision=tag)
    return TagChange(repo.repo_id, tag, commit, "create", changes=existing is None, revision=revision)


def plan_tag_delete(repo: RepoFacts, tag: str) -> TagChange:
    """Delete the tag `tag`; only a tag, never a branch of that name."""
    _existing(repo)
    commit = repo.tags.get(tag)
    if commit is None:
        if tag in repo.branches:
            detail = (
                f"{tag} is a branch, and `hubsync tag --delete` deletes only tags (`hubsync prune` deletes branches)"
            )
        elif repo.tags:
            names = sorted(repo.tags)
            more = f", and {len(names) - MAX_LISTED_TAGS} more" if len(names) > MAX_LISTED_TAGS else ""
            detail = f"its tags: {', '.join(names[:MAX_LISTED_TAGS])}{more}"
        else:
            detail = "it has no tags"
        raise TagNotFoundError(repo.endpoint, detail, repo_id=repo.repo_id, revision=tag)
    return TagChange(repo.repo_id, tag, commit, "delete")
