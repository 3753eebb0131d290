"""What `hubsync watch` decides after each look at a run folder: which checkpoints are complete and not yet
pushed, which ones the Trainer deleted before they were pushed, and whether the run is done. Pure, but for
`observe_run` and `run_folder_problem`, which only read the run folder, and the watch state's (de)serialisation.

A checkpoint is complete when its trainer_state.json exists (the Trainer writes it last) and the size and
modification time of every file in it are unchanged between two consecutive looks. Whether it may be pushed
(trainer_state.json and weights) is push's rule, checkpoint.missing_parts via plan_push: a stable folder that
lacks weights is skipped with that reason. This transformers version writes checkpoint-N in place; a staging
folder such as tmp-checkpoint-N is not named checkpoint-N and is never looked at.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Container, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .checkpoint import TRAINER_STATE, checkpoint_step, loads_json
from .errors import WatchStateError
from .pull import RemoteFile

STATE_FILE = ".hubsync/watch.json"  # under the run folder
STATE_VERSION = 2  # version 1 named no Hub: a record of me/x on one Hub was taken for me/x on any other

# A checkpoint's files as one look saw them: (path, size, mtime in ns), sorted; None when it was not read
# (already pushed). An empty tuple: the folder vanished while it was read.
Signature = tuple[tuple[str, int, int], ...] | None


@dataclass(frozen=True)
class PushedCheckpoint:
    step: int
    revision: str
    commit: str


@dataclass(frozen=True)
class SkippedCheckpoint:
    """A checkpoint that could not be pushed for a reason of its own (an unreadable file, say)."""

    step: int
    reason: str
    files: Signature = field(default=None, compare=False)  # as it was when it failed; not kept across restarts


@dataclass(frozen=True)
class WatchState:
    """What a watch remembers across restarts, for one repository on one Hub."""

    repo_id: str
    pushed: Mapping[int, PushedCheckpoint] = field(default_factory=dict)
    seen: frozenset[int] = frozenset()  # steps whose folder a look ever found
    lost: tuple[int, ...] = ()  # seen, never pushed, then gone (save_total_limit deleted them)
    final_step: int | None = None  # the checkpoint whose global_step reached max_steps
    skipped: Mapping[int, SkippedCheckpoint] = field(default_factory=dict)
    endpoint: str | None = None  # None: a record written before records named their Hub

    def with_pushed(self, record: PushedCheckpoint, final: bool) -> WatchState:
        return replace(
            self,
            pushed={**self.pushed, record.step: record},
            final_step=record.step if final else self.final_step,
            skipped={s: k for s, k in self.skipped.items() if s != record.step},
        )

    def with_skipped(self, record: SkippedCheckpoint) -> WatchState:
        return replace(self, skipped={**self.skipped, record.step: record})


@dataclass(frozen=True)
class HubCheck:
    """The record compared with the repository's branches, once when a watch starts."""

    state: WatchState  # only the pushes the Hub still holds at the recorded commit
    push_again: tuple[int, ...]  # recorded, not on the Hub (any more), and still in the run folder
    forgotten: tuple[int, ...]  # recorded, not on the Hub, and gone from the run folder: nothing to push
    pruned: tuple[int, ...] = ()  # recorded, not on the Hub: a retention policy pruned them (kept in the record)


def check_against_hub(
    state: WatchState, branches: Mapping[str, str], present: Collection[int], keep: int | None = None
) -> HubCheck:
    """Keep a recorded push only when its branch is still at the recorded commit (the repository may have been
    deleted, pruned or rewritten, or the record may come from another Hub). With a retention policy keeping the
    `keep` newest, a recorded push older than the `keep` newest recorded ones stays recorded when its branch is
    gone: the policy pruned it, and pushing it again would only have it pruned again."""
    older = set(sorted(state.pushed, reverse=True)[keep:]) if keep is not None else set()
    kept = {
        s: p
        for s, p in state.pushed.items()
        if branches.get(p.revision) == p.commit or (s in older and p.revision not in branches)
    }
    gone = sorted(set(state.pushed) - set(kept))
    forgotten = tuple(s for s in gone if s not in present)
    # A forgotten checkpoint was pushed once; it must not be reported as lost before it was pushed.
    new_state = replace(state, pushed=kept, seen=state.seen - set(forgotten))
    pruned = tuple(sorted(s for s in kept if branches.get(kept[s].revision) != kept[s].commit))
    return HubCheck(new_state, tuple(s for s in gone if s in present), forgotten, pruned)


@dataclass(frozen=True)
class WatchStep:
    """What to do after one look."""

    push: tuple[int, ...]  # complete and not yet pushed, oldest first
    lost: tuple[int, ...]  # newly found gone before they were pushed
    state: WatchState  # with this look's seen and lost steps
    finished: bool  # the run's final checkpoint is pushed and nothing complete waits


def next_step(
    previous: Mapping[int, Signature] | None, current: Mapping[int, Signature], state: WatchState
) -> WatchStep:
    """Compare this look at the run folder with the one before."""
    before = previous or {}
    ready = tuple(
        sorted(
            step
            for step, files in current.items()
            if step not in state.pushed
            and files  # read, and not vanished
            and before.get(step) == files
            and _has_trainer_state(files)
            and not _skipped_as_is(state, step, files)  # tried again only when its files change
        )
    )
    present = {step for step, files in current.items() if files != ()}
    lost = tuple(
        sorted(
            step for step in state.seen if step not in present and step not in state.pushed and step not in state.lost
        )
    )
    new_state = replace(
        state,
        seen=state.seen | present,
        lost=tuple(sorted({*state.lost, *lost})),
        skipped={s: k for s, k in state.skipped.items() if s not in lost},
    )
    final = state.final_step
    # A skipped checkpoint whose files changed (or are not known: the watch restarted) is tried before the end.
    retry = any(
        step in state.skipped and not _skipped_as_is(state, step, files) for step, files in current.items() if files
    )
    # A complete-looking checkpoint not pushed yet (one the Hub no longer holds, found by a restarted watch, is
    # ready only at the second look): the run is not done until it is pushed or skipped.
    waiting = any(
        step not in state.pushed and files and _has_trainer_state(files) and not _skipped_as_is(state, step, files)
        for step, files in current.items()
    )
    # A checkpoint beyond the final one: training was resumed with more steps.
    finished = (
        final is not None
        and final in state.pushed
        and not retry
        and not waiting
        and not any(s > final for s in present)
    )
    return WatchStep(ready, lost, new_state, finished)


def has_pending(current: Mapping[int, Signature], state: WatchState) -> bool:
    """Whether a checkpoint in the run folder is neither pushed nor skipped as it is now."""
    return any(
        step not in state.pushed and not _skipped_as_is(state, step, files)
        for step, files in current.items()
        if files != ()
    )


def _has_trainer_state(files: Signature) -> bool:
    return files is not None and any(path == TRAINER_STATE for path, _, _ in files)


def _skipped_as_is(state: WatchState, step: int, files: Signature) -> bool:
    skipped = state.skipped.get(step)
    return skipped is not None and skipped.files is not None and skipped.files == files


def observe_run(run_dir: Path, skip: Container[int]) -> dict[int, Signature]:
    """One look at the run folder: every checkpoint-N folder, with its files' sizes and times unless `skip`
    names its step. Only reads."""
    found: dict[int, Signature] = {}
    try:
        children = list(os.scandir(run_dir))
    except FileNotFoundError:
        return found
    for child in children:
        step = checkpoint_step(child.name)
        if step is None or not child.is_dir(follow_symlinks=False):
            continue
        found[step] = None if step in skip else _signature(Path(child.path))
    return found


def run_folder_problem(run_dir: Path) -> str | None:
    """Why `run_dir` is a checkpoint folder rather than the run folder that holds checkpoint-N folders, if it
    is one. A run folder may also hold trainer_state.json and an adapter at its top (trainer.save_state() and
    save_model() at the end of training), but then beside its checkpoint-N folders. Only reads."""
    try:
        children = [c.name for c in os.scandir(run_dir) if c.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        children = None
    if children is not None and any(checkpoint_step(name) is not None for name in children):
        return None
    if checkpoint_step(run_dir.name) is not None:
        return "its name is that of a checkpoint"
    if children is not None and (run_dir / TRAINER_STATE).is_file():
        return f"it holds {TRAINER_STATE} and no checkpoint-N folders"
    return None


def _signature(folder: Path) -> Signature:
    files = []
    try:
        for dirpath, _dirnames, filenames in os.walk(folder):
            for name in filenames:
                full = os.path.join(dirpath, name)
                st = os.stat(full, follow_symlinks=False)
                files.append((Path(full).relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns))
    except FileNotFoundError:  # deleted while we looked
        return ()
    if not folder.is_dir():
        return ()
    return tuple(sorted(files))


class _Damaged(Exception):
    """Why the state file cannot be used, in words."""


def parse_state(raw: bytes | None, endpoint: str, repo_id: str, shown: str) -> WatchState:
    """The watch state file's record for `repo_id` on the Hub at `endpoint`; a record without a Hub (a file of
    version 1) is taken for any Hub, to be checked against it. Other repositories' records start afresh."""
    fresh = WatchState(repo_id, endpoint=endpoint)
    if raw is None:
        return fresh
    try:
        data = loads_json(raw)
    except ValueError as exc:
        raise WatchStateError(shown, f"it is {exc}") from exc  # "not valid JSON (...)", "nested too deeply", ...
    try:
        records = _records(data)
        mine = _find(records, endpoint, repo_id)
        return fresh if mine is None else _parse_record(mine, endpoint, repo_id)
    except _Damaged as exc:
        raise WatchStateError(shown, str(exc)) from None


def _records(data: Any) -> list[Any]:
    """Every record of the file, as a version 2 record (`endpoint` None for those of version 1)."""
    if not isinstance(data, dict):
        raise _Damaged("it is not a JSON object")
    version = data.get("version")
    if version == 1:
        repos = data.get("repos")
        if not isinstance(repos, dict):
            raise _Damaged("it has no 'repos' table")
        return [
            {**rec, "endpoint": None, "repo": name} if isinstance(rec, dict) else rec for name, rec in repos.items()
        ]
    if version == STATE_VERSION:
        records = data.get("records")
        if not isinstance(records, list):
            raise _Damaged("it has no 'records' list")
        return records
    raise _Damaged(f"unsupported version {version!r}" if "version" in data else "it has no version")


def _find(records: list[Any], endpoint: str, repo_id: str) -> Any:
    """The record of this repository on this Hub, else one of this repository that names no Hub."""
    for wanted in (endpoint, None):
        for rec in records:
            if isinstance(rec, dict) and rec.get("repo") == repo_id and rec.get("endpoint") == wanted:
                return rec
    return None


def _parse_record(rec: dict[str, Any], endpoint: str, repo_id: str) -> WatchState:
    name = f"the record of {repo_id}"

    def steps(key: str) -> list[int]:
        value = rec.get(key)
        if not isinstance(value, list) or not all(_is_step(s) for s in value):
            raise _Damaged(f"{name} has no '{key}' list of step numbers")
        return value

    pushed = rec.get("pushed")
    if not isinstance(pushed, list):
        raise _Damaged(f"{name} has no 'pushed' list")
    for p in pushed:
        if not (
            isinstance(p, dict)
            and _is_step(p.get("step"))
            and isinstance(p.get("revision"), str)
            and isinstance(p.get("commit"), str)
        ):
            raise _Damaged(f"{name} lists a pushed checkpoint without its step, revision and commit")
    skipped = rec.get("skipped", [])
    if not isinstance(skipped, list) or not all(
        isinstance(k, dict) and _is_step(k.get("step")) and isinstance(k.get("reason"), str) for k in skipped
    ):
        raise _Damaged(f"{name} has a 'skipped' entry without its step and reason")
    final = rec.get("final_step")
    if final is not None and not _is_step(final):
        raise _Damaged(f"{name} has a 'final_step' that is not a step number")
    return WatchState(
        repo_id,
        {p["step"]: PushedCheckpoint(p["step"], p["revision"], p["commit"]) for p in pushed},
        frozenset(steps("seen")),
        tuple(sorted(steps("lost"))),
        final,
        {k["step"]: SkippedCheckpoint(k["step"], k["reason"]) for k in skipped},
        endpoint,
    )


def _is_step(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def dump_state(state: WatchState, raw_before: bytes | None) -> bytes:
    """The state file with `state` as the record of its repository on its Hub. Other records are kept, but one
    of the same repository that names no Hub: this one replaces it."""
    others: list[Any] = []
    if raw_before is not None:
        try:
            others = _records(loads_json(raw_before))
        except (ValueError, UnicodeDecodeError, _Damaged):
            others = []
    others = [
        rec
        for rec in others
        if not (
            isinstance(rec, dict) and rec.get("repo") == state.repo_id and rec.get("endpoint") in (None, state.endpoint)
        )
    ]
    mine = {
        "endpoint": state.endpoint,
        "repo": state.repo_id,
        "pushed": [
            {"step": p.step, "revision": p.revision, "commit": p.commit}
            for p in sorted(state.pushed.values(), key=lambda p: p.step)
        ],
        "seen": sorted(state.seen),
        "lost": list(state.lost),
        "skipped": [{"step": k.step, "reason": k.reason} for k in sorted(state.skipped.values(), key=lambda k: k.step)],
        "final_step": state.final_step,
    }
    data = {"version": STATE_VERSION, "records": [*others, mine]}
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def is_final(global_step: int | None, max_steps: Any) -> bool:
    """Whether a checkpoint's trainer_state says training reached its last step."""
    if global_step is None or isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps <= 0:
        return False
    return global_step >= max_steps


@dataclass(frozen=True)
class LocalHashes:
    size: int
    sha256: str
    git_oid: str  # git blob id of the content


def holds_exactly(
    remote: Sequence[RemoteFile], paths: Collection[str], local: Mapping[str, LocalHashes], indexed: bool
) -> bool:
    """Whether a branch whose files are `remote` already holds the push that would upload `paths`: the same
    paths (and .gitattributes), each file uploaded as it is (`local`) with the same content, and main's index
    naming that commit. Converted and generated files are derived from the others, so they are not compared."""
    by_path = {f.path: f for f in remote}
    if not indexed or set(by_path) - {".gitattributes"} != set(paths):
        return False
    return all(same_content(by_path[path], mine) for path, mine in local.items())


def same_content(theirs: RemoteFile, mine: LocalHashes) -> bool:
    """Whether a file on the Hub holds these bytes, compared as the Hub lists it: sha256 for an LFS file, the git
    blob id for the others."""
    same = theirs.sha256 == mine.sha256 if theirs.sha256 else theirs.git_oid == mine.git_oid
    return theirs.size == mine.size and same
