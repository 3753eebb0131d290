"""The checkpoint revisions of a repository, as `hubsync ls` shows them and `hubsync pull` picks the newest."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from hubsync.core.checkpoint import checkpoint_step, loads_json, parse_trainer_state
from hubsync.core.conversion import is_resumable
from hubsync.core.errors import HubTooSlowError, RemoteFileTooLargeError, UnsafeRemotePathError
from hubsync.core.index import INDEX_FILE, parse_index, revision_metrics
from hubsync.core.layouts import state_layout
from hubsync.core.pull import RemoteFile, step_of
from hubsync.core.selection import best_step_of
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
    tags: tuple[str, ...] = ()  # the tags whose commit is the revision's head
    by_hubsync: bool = True  # False: main's index has no entry for it at this head (pushed by hand, or moved since)
    released: bool = False  # main's index says `hubsync push --release` put its inference files on main
    size: int | None = None  # the bytes of its files, as the Hub's tree listing says; None: not listed
    best: bool = False  # the best checkpoint, as the newest revision's trainer_state says (best_model_checkpoint)
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
            "tags": list(self.tags),
            "by_hubsync": self.by_hubsync,
            "released": self.released,
            "size": self.size,
            "best": self.best,
            "signed": self.signed,
        }


def checkpoint_revisions(hub: RevisionSource, repo_id: str) -> list[RevisionInfo]:
    """Revisions recorded in main's index, and branches named like checkpoint-N; ordered by step. What `hubsync
    pull` picks from and `hubsync prune` may delete."""
    branches, tags = hub.refs(repo_id)
    indexed = {e["revision"]: e for e in parse_index(hub.read_file(repo_id, "main", INDEX_FILE))}
    names = [b for b in branches if b in indexed or checkpoint_step(b.rsplit("/", 1)[-1]) is not None]
    return _revisions(hub, repo_id, names, branches, tags, indexed)


def all_revisions(hub: RevisionSource, repo_id: str) -> list[RevisionInfo]:
    """What `hubsync ls` shows: the checkpoint revisions, then every other branch but main (marked as not
    hubsync's), each with its size on the Hub; the best checkpoint marked as prune_inputs finds it."""
    branches, tags = hub.refs(repo_id)
    indexed = {e["revision"]: e for e in parse_index(hub.read_file(repo_id, "main", INDEX_FILE))}
    names = [b for b in branches if b in indexed or checkpoint_step(b.rsplit("/", 1)[-1]) is not None]
    ours = _revisions(hub, repo_id, names, branches, tags, indexed)
    others = [b for b in branches if b != "main" and b not in names]
    theirs = _revisions(hub, repo_id, others, branches, tags, indexed, keep_empty=True)
    try:
        best = best_step(hub, repo_id, ours)
    except (RemoteFileTooLargeError, HubTooSlowError):  # the note only: a prune --keep-best refuses, ls goes on
        best = None
    out = []
    for r in [*ours, *sorted(theirs, key=lambda r: r.revision)]:
        try:
            size: int | None = sum(f.size for f in hub.tree(repo_id, r.commit, r.revision))
        except UnsafeRemotePathError:
            size = None  # a path hubsync never places: not listed by the client, so not summed
        out.append(replace(r, size=size, best=r.revision in names and best is not None and r.step == best))
    return out


def best_step(hub: RevisionSource, repo_id: str, revisions: list[RevisionInfo]) -> int | None:
    """The step of the best checkpoint: the best_model_checkpoint of the newest numbered revision's trainer_state
    (the Trainer records it in every later checkpoint); None when there is none or it cannot be read."""
    numbered = [r for r in revisions if r.step is not None]
    if not numbered:
        return None
    raw = hub.read_file(repo_id, numbered[-1].commit, "trainer_state.json")
    try:
        state = parse_trainer_state(loads_json(raw)) if raw is not None else None
    except ValueError:
        state = None
    return best_step_of(state.best_model_checkpoint) if state is not None else None


def _revisions(
    hub: RevisionSource,
    repo_id: str,
    names: list[str],
    branches: dict[str, str],
    tags: dict[str, str],
    indexed: dict[str, dict[str, Any]],
    keep_empty: bool = False,
) -> list[RevisionInfo]:
    out = []
    for name in names:
        commit = branches[name]
        entry = indexed.get(name)
        ours = entry is not None and entry.get("commit") == commit
        released = bool(entry is not None and entry.get("released"))
        if entry is None or not ours:
            entry = _describe(hub, repo_id, name, commit)
            if entry is None:
                if not keep_empty:
                    continue  # an empty branch, left by a push that was killed before its commit
                entry = {"resumable": False}
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
                tags=tuple(sorted(t for t, c in tags.items() if c == commit)),
                by_hubsync=ours,
                released=released,
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
