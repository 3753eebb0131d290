"""What the Hub must allow before a push changes anything: checked, for every planned checkpoint, from one
read-only look at each repository (RepoFacts), before any conversion, upload, repository creation or commit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .errors import BranchNamedLikeTagError, PicklesInPublicRepoError, PublicTrainingStateError, TagExistsError
from .plan import PushPlan


@dataclass(frozen=True)
class RepoFacts:
    """A repository as the Hub showed it just now (all empty when it does not exist yet)."""

    endpoint: str
    repo_id: str
    exists: bool
    private: bool = True
    branches: Mapping[str, str] = field(default_factory=dict)  # name -> commit
    tags: Mapping[str, str] = field(default_factory=dict)  # name -> commit


def check_plans(plans: Sequence[PushPlan], facts: Mapping[str, RepoFacts]) -> None:
    """Refuse the whole push when any of its plans would be refused later (`facts` has every plan's repository)."""
    for plan in plans:
        repo = facts[plan.repo_id]
        check_visibility(plan, private=repo.private if repo.exists else plan.private, exists=repo.exists)
        check_tags(plan, repo)


def check_visibility(plan: PushPlan, private: bool, exists: bool = True) -> None:
    """Training state goes into a public repository (one that is, or one that would be created public) only with
    --allow-public-state, and never as pickles."""
    if plan.training_state != "keep" or private:
        return
    if plan.state_format == "pickle":
        raise PicklesInPublicRepoError(plan.repo_id, exists)
    if not plan.allow_public_state:
        raise PublicTrainingStateError(plan.repo_id, exists)


def check_tags(plan: PushPlan, repo: RepoFacts, unchanged: bool = True) -> None:
    """Tags never move, so a --tag that exists already must name the head of the branch the push goes to, and the
    push must leave that head as it is (`unchanged`: the branch already holds exactly the planned files). A tag
    elsewhere is refused even when that commit holds the same files: it is another commit."""
    head = repo.branches.get(plan.revision)
    if head is None and plan.revision in repo.tags:
        tagged = repo.tags[plan.revision][:12]
        detail = f"the branch {plan.revision} would be named like the tag {plan.revision}, at {tagged}"
        raise BranchNamedLikeTagError(repo.endpoint, detail, repo_id=plan.repo_id, revision=plan.revision)
    for tag in plan.tags:
        existing = repo.tags.get(tag)
        if existing is None:
            continue
        if existing != head:
            where = f"the head of {plan.revision}" if head else f"{plan.revision}, which does not exist yet"
            detail = f"it points to {existing[:12]}, not to {where}"
        elif not unchanged:
            detail = f"it points to the head of {plan.revision}, {existing[:12]}, which this push would replace"
        else:
            continue
        raise TagExistsError(repo.endpoint, detail, repo_id=plan.repo_id, revision=tag)
