"""The checkpoint revisions of a repository, as `hubsync ls` shows them and `hubsync pull` picks the newest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from hubsync.core.checkpoint import checkpoint_step, loads_json, parse_trainer_state
from hubsync.core.conversion import is_resumable
from hubsync.core.errors import RemoteFileTooLargeError, UnsafeRemotePathError
from hubsync.core.index import INDEX_FILE, parse_index, revision_metrics
from hubsync.core.layouts import state_layout
from hubsync.core.pull import RemoteFile, step_of
from hubsync.core.signing import SIGNATURE_FILE


class RevisionSource(Protocol):
    """What listing a repository's checkpoint revisions needs from a Hub (HubClient provides it): read only."""

    def refs(self, repo_id: str) -> tuple[dict[str, str], dict[str, str]]: ...
    def read_file(self, repo_id: str, revision: str, path: str) -> bytes | None: ...
    def tree(self, repo_id: str, commit: str, revision: str | None = None) -> list[RemoteFile]: ...
    def commit_dates(self, repo_id: str, revision: str, newest: int | None = None) -> list[tuple[str, str]]: ...


@dataclass(frozen=True)
class RevisionInfo:
    revision: str
    step: int | None
    epoch: float | None
    metrics: dict[str, float]
    resumable: bool
    commit: str
    date: str | None
    layout: str | None = None  # a distributed engine's state: "FSDP sharded state, 2 ranks"
    signed: bool = False  # it holds model.sig (`hubsync pull --verify` checks it)

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "step": self.step,
            "epoch": self.epoch,
            "metrics": self.metrics,
            "resumable": self.resumable,
            "commit": self.commit,
            "date": self.date,
            **({"layout": self.layout} if self.layout is not None else {}),
            "signed": self.signed,
        }


def checkpoint_revisions(hub: RevisionSource, repo_id: str) -> list[RevisionInfo]:
    """Revisions recorded in main's index, and branches named like checkpoint-N; ordered by step."""
    branches, _tags = hub.refs(repo_id)
    indexed = {e["revision"]: e for e in parse_index(hub.read_file(repo_id, "main", INDEX_FILE))}
    names = [b for b in branches if b in indexed or checkpoint_step(b.rsplit("/", 1)[-1]) is not None]
    out = []
    for name in names:
        commit = branches[name]
        entry = indexed.get(name)
        if entry is None or entry.get("commit") != commit:
            entry = _describe(hub, repo_id, name, commit)
            if entry is None:
                continue  # an empty branch, left by a push that was killed before its commit
        dates = hub.commit_dates(repo_id, commit, newest=1)  # only the date of the commit itself
        out.append(
            RevisionInfo(
                revision=name,
                step=entry.get("step") if isinstance(entry.get("step"), int) else step_of(name),
                epoch=entry.get("epoch") if isinstance(entry.get("epoch"), (int, float)) else None,
                metrics={k: v for k, v in (entry.get("metrics") or {}).items() if isinstance(v, (int, float))},
                resumable=bool(entry.get("resumable")),
                commit=commit,
                date=dates[0][1] if dates else None,
                layout=entry.get("layout") if isinstance(entry.get("layout"), str) else None,
                signed=entry.get("signed") is True,
            )
        )
    return sorted(out, key=lambda r: (r.step if r.step is not None else -1, r.revision))


def _describe(hub: RevisionSource, repo_id: str, revision: str, commit: str) -> dict[str, Any] | None:
    """What the index would say of a revision that it does not know (pushed by hand, or moved since); None for
    a branch that holds nothing but what the repository's first commit made."""
    try:
        names = {f.path for f in hub.tree(repo_id, commit, revision)}
    except UnsafeRemotePathError:
        return {"resumable": False}  # listed, never pulled: pull refuses it and says why
    if not names - {".gitattributes"}:
        return None
    layout = state_layout(names)
    entry: dict[str, Any] = {
        "resumable": is_resumable(names),
        "signed": SIGNATURE_FILE in names,
        **({"layout": layout.describe()} if layout is not None else {}),
    }
    if "trainer_state.json" in names:
        try:
            raw = hub.read_file(repo_id, commit, "trainer_state.json")
        except RemoteFileTooLargeError:
            return entry
        try:
            state = parse_trainer_state(loads_json(raw or b"{}"))
        except ValueError:
            return entry
        entry.update(step=state.global_step, epoch=state.epoch, metrics=revision_metrics(state))
    return entry
