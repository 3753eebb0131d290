"""What `hubsync watch` decides after each look at a run folder: which checkpoints are complete and not yet
pushed, which ones the Trainer deleted before they were pushed, and whether the run is done. Pure, but for
`observe_run`, which only reads the run folder, and the watch state's (de)serialisation.

A checkpoint is complete when its trainer_state.json exists (the Trainer writes it last) and the size and
modification time of every file in it are unchanged between two consecutive looks. This transformers version
writes checkpoint-N in place; a staging folder such as tmp-checkpoint-N is not named checkpoint-N and is never
looked at.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Container, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .checkpoint import CHECKPOINT_DIR_RE, TRAINER_STATE
from .errors import WatchStateError
from .pull import RemoteFile

STATE_FILE = ".hubsync/watch.json"  # under the run folder

# A checkpoint's files as one look saw them: (path, size, mtime in ns), sorted; None when it was not read
# (already pushed). An empty tuple: the folder vanished while it was read.
Signature = tuple[tuple[str, int, int], ...] | None


@dataclass(frozen=True)
class PushedCheckpoint:
    step: int
    revision: str
    commit: str


@dataclass(frozen=True)
class WatchState:
    """What a watch remembers across restarts, for one repository."""

    repo_id: str
    pushed: Mapping[int, PushedCheckpoint] = field(default_factory=dict)
    seen: frozenset[int] = frozenset()  # steps whose folder a look ever found
    lost: tuple[int, ...] = ()  # seen, never pushed, then gone (save_total_limit deleted them)
    final_step: int | None = None  # the checkpoint whose global_step reached max_steps

    def with_pushed(self, record: PushedCheckpoint, final: bool) -> WatchState:
        return replace(
            self,
            pushed={**self.pushed, record.step: record},
            final_step=record.step if final else self.final_step,
        )


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
            and any(path == TRAINER_STATE for path, _, _ in files)
        )
    )
    present = {step for step, files in current.items() if files != ()}
    lost = tuple(
        sorted(
            step for step in state.seen if step not in present and step not in state.pushed and step not in state.lost
        )
    )
    new_state = replace(state, seen=state.seen | present, lost=tuple(sorted({*state.lost, *lost})))
    final = state.final_step
    # A checkpoint beyond the final one: training was resumed with more steps.
    finished = final is not None and final in state.pushed and not ready and not any(s > final for s in present)
    return WatchStep(ready, lost, new_state, finished)


def observe_run(run_dir: Path, skip: Container[int]) -> dict[int, Signature]:
    """One look at the run folder: every checkpoint-N folder, with its files' sizes and times unless `skip`
    names its step. Only reads."""
    found: dict[int, Signature] = {}
    try:
        children = list(os.scandir(run_dir))
    except FileNotFoundError:
        return found
    for child in children:
        m = CHECKPOINT_DIR_RE.match(child.name)
        if not m or not child.is_dir(follow_symlinks=False):
            continue
        step = int(m.group(1))
        found[step] = None if step in skip else _signature(Path(child.path))
    return found


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


def parse_state(raw: bytes | None, repo_id: str, shown: str) -> WatchState:
    """The watch state file's record for `repo_id` (another repository's records start afresh)."""
    if raw is None:
        return WatchState(repo_id)
    try:
        data = json.loads(raw)
        repos = data["repos"]
        mine = repos.get(repo_id) if isinstance(repos, dict) else None
        if mine is None:
            return WatchState(repo_id)
        pushed = {
            int(p["step"]): PushedCheckpoint(int(p["step"]), str(p["revision"]), str(p["commit"]))
            for p in mine["pushed"]
        }
        final = mine.get("final_step")
        return WatchState(
            repo_id,
            pushed,
            frozenset(int(s) for s in mine["seen"]),
            tuple(sorted(int(s) for s in mine["lost"])),
            int(final) if final is not None else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise WatchStateError(shown, f"{type(exc).__name__}: {exc}") from exc


def dump_state(state: WatchState, raw_before: bytes | None) -> bytes:
    """The state file with `state` as its repository's record; other repositories' records are kept."""
    repos: dict[str, Any] = {}
    if raw_before is not None:
        try:
            old = json.loads(raw_before).get("repos")
            repos = dict(old) if isinstance(old, dict) else {}
        except (ValueError, AttributeError, UnicodeDecodeError):
            repos = {}
    repos[state.repo_id] = {
        "pushed": [
            {"step": p.step, "revision": p.revision, "commit": p.commit}
            for p in sorted(state.pushed.values(), key=lambda p: p.step)
        ],
        "seen": sorted(state.seen),
        "lost": list(state.lost),
        "final_step": state.final_step,
    }
    return (json.dumps({"version": 1, "repos": repos}, indent=2, sort_keys=True) + "\n").encode()


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
    for path, mine in local.items():
        theirs = by_path[path]
        same = theirs.sha256 == mine.sha256 if theirs.sha256 else theirs.git_oid == mine.git_oid
        if theirs.size != mine.size or not same:
            return False
    return True
