"""`hubsync watch`: follow a training run from another process and push each checkpoint once it is complete.

Only reads the run folder, but for its own state file (`<run>/.hubsync/watch.json`, replaced whole). The record
is checked against the Hub once when the watch starts. A Hub that fails is tried again later, with growing
pauses; a checkpoint that cannot be read is reported and skipped; a checkpoint that the Trainer deletes before it
could be pushed is reported. What to push is decided by hubsync.core.watch; this module carries it out.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from hubsync.convert import measured_push
from hubsync.core.checkpoint import checkpoint_name, read_checkpoint
from hubsync.core.config import DEFAULT_MAX_WAIT
from hubsync.core.errors import (
    CheckpointFileError,
    HubsyncError,
    IncompleteCheckpointError,
    IncompletePushError,
    LinkOutsideCheckpointError,
    NotACheckpointError,
    NotARunFolderError,
    RateLimitedError,
    RepoNotFoundError,
    UnpublishableNameError,
    UnreadableWeightsError,
    UnrepresentableStateError,
    UnsafePickleError,
    VerificationError,
)
from hubsync.core.paths import display_path
from hubsync.core.plan import PushOptions, plan_push
from hubsync.core.prune import RetentionPolicy
from hubsync.core.transient import transient_failure
from hubsync.core.watch import (
    STATE_FILE,
    PushedCheckpoint,
    Signature,
    SkippedCheckpoint,
    WatchState,
    check_against_hub,
    dump_state,
    has_pending,
    is_final,
    next_step,
    observe_run,
    parse_state,
    run_folder_problem,
)
from hubsync.files import remove_stale_temps, write_file_atomic

from .client import RATE_LIMIT_JITTER
from .prune import PruneTarget, Retained, apply_retention
from .push import PushResult, PushTarget, execute_push

SLEEP_SLICE = 0.1  # how often a pause checks whether to stop
# The watch tries a failed push again itself, with growing pauses; the client's own retries of one call stay
# short, so that Ctrl-C does not wait for them (a server's Retry-After is still honoured).
CLIENT_RETRY_DELAYS = (0.5, 1.0)
# Failures that belong to one checkpoint (its files): it is skipped and the watch goes on with the others.
CHECKPOINT_ERRORS = (
    CheckpointFileError,
    IncompleteCheckpointError,
    NotACheckpointError,
    UnreadableWeightsError,
    UnsafePickleError,
    VerificationError,
    LinkOutsideCheckpointError,
    UnrepresentableStateError,
    UnpublishableNameError,
    OSError,
)


class WatchTarget(PushTarget, Protocol):
    """What a watch needs from a Hub (HubClient provides it): a push's needs, and the refs to check its record."""

    endpoint: str

    def refs(self, repo_id: str) -> tuple[dict[str, str], dict[str, str]]: ...


@dataclass(frozen=True)
class WatchSettings:
    run_dir: Path
    options: PushOptions  # its tags go to the run's final checkpoint only: tags never move
    interval: float = 5.0  # seconds between looks at the run folder
    retry_max: float = 60.0  # the longest pause before pushing again after the Hub failed
    idle_timeout: float | None = None  # stop when nothing changed for this long and everything seen is pushed
    # Where the checkpoint-N folders are read, when not in run_dir (HubsyncCallback's staged copies); the record
    # stays in run_dir, so that a watch of run_dir and a restarted training run share it.
    checkpoints_dir: Path | None = None
    # The longest the watch waits out the Hub's rate limit between two calls that succeed (the max-wait setting).
    max_wait: float = DEFAULT_MAX_WAIT
    # Pruned after each push that lands (the keep settings); the Hub must then be a PruneTarget (HubClient is).
    retention: RetentionPolicy | None = None

    @property
    def source(self) -> Path:
        return self.run_dir if self.checkpoints_dir is None else self.checkpoints_dir


# What the watch reports while it runs (the CLI prints them).
@dataclass(frozen=True)
class Pushed:
    step: int
    result: PushResult


@dataclass(frozen=True)
class Pruned:
    """The retention policy pruned the repository after the push of `step` landed."""

    step: int
    retained: Retained


@dataclass(frozen=True)
class PruneFailed:
    """The retention policy's prune after the push of `step` failed; the push stays done, the watch goes on and
    the policy runs again after the next push."""

    step: int
    keep: int
    error: HubsyncError


@dataclass(frozen=True)
class Lost:
    steps: tuple[int, ...]


@dataclass(frozen=True)
class PushFailed:
    step: int | None  # None: checking the record against the Hub failed
    error: HubsyncError
    retry_in: float


@dataclass(frozen=True)
class RateLimitPause:
    """The Hub rate-limited the watch's requests: it pauses `pause` seconds (the Hub's reset time and a little
    jitter), then goes on. Not a failed push: the pauses after failures do not grow from it."""

    step: int | None  # None: while checking the record against the Hub
    pause: float


@dataclass(frozen=True)
class Skipped:
    step: int
    reason: str


@dataclass(frozen=True)
class NotOnHub:
    """Recorded pushes that the Hub does not hold (any more) at the recorded commit."""

    push_again: tuple[int, ...]
    forgotten: tuple[int, ...]


@dataclass(frozen=True)
class WaitingForRun:
    run: str


@dataclass(frozen=True)
class WatchSummary:
    repo_id: str
    pushed: tuple[tuple[int, PushResult], ...]  # (step, result) by this watch (created False: already on the Hub)
    state: WatchState
    finished: bool  # the run's final checkpoint is on the Hub
    stopped: bool  # asked to stop (Ctrl-C, SIGTERM)
    idle: bool  # --idle-timeout ran out
    checked: bool  # the record was checked against the Hub (else state.pushed is only what the record says)
    run_found: bool  # the run folder existed
    untagged: tuple[str, ...]  # --tag names not applied: the run's final checkpoint was not pushed
    pruned: tuple[int, ...] = ()  # recorded steps whose branch this watch's retention policy deleted

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo_id,
            "pushed": [
                {"step": step, "revision": r.revision, "commit": r.commit, "created": r.created}
                for step, r in self.pushed
            ],
            "on_hub": [
                {"step": p.step, "revision": p.revision, "commit": p.commit}
                for p in sorted(self.state.pushed.values(), key=lambda p: p.step)
            ],
            "on_hub_checked": self.checked,
            "lost": [{"step": s, "checkpoint": checkpoint_name(s)} for s in self.state.lost],
            "skipped": [
                {"step": k.step, "checkpoint": checkpoint_name(k.step), "reason": k.reason}
                for k in sorted(self.state.skipped.values(), key=lambda k: k.step)
            ],
            "untagged": list(self.untagged),
            "pruned": [{"step": s, "checkpoint": checkpoint_name(s)} for s in self.pruned],
            "finished": self.finished,
            "stopped": self.stopped,
            "idle": self.idle,
        }


class Watcher:
    """One watch of one run folder, pushing to one repository through `hub`."""

    def __init__(
        self,
        settings: WatchSettings,
        hub: WatchTarget,
        report: Callable[[object], None],
        should_stop: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        quiet: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self.settings = settings
        self.quiet = quiet  # around run(): the library silences huggingface_hub there
        self.hub = hub
        self.report = report
        self.should_stop = should_stop
        self.clock = clock
        self.state_path = settings.run_dir / STATE_FILE
        self._raw_state: bytes | None = None
        self.pushed: list[tuple[int, PushResult]] = []
        self.pruned: set[int] = set()  # steps whose branch the retention policy deleted
        self.busy: str | None = None  # what the watch is doing on the Hub right now, in words
        self._tagged = False
        self._failures = 0
        self._retry_at = 0.0
        self._rate_limited = 0.0  # seconds paused for rate limits since a call last succeeded

    def run(self) -> WatchSummary:
        """Look at the run folder every interval and push what is complete, until the run's final checkpoint is
        pushed, the idle timeout runs out, or should_stop() says so. The state is saved whatever happens."""
        with self.quiet():
            return self._run()

    def _run(self) -> WatchSummary:
        settings = self.settings
        self._refuse_checkpoint_folder()
        state = self._load()
        previous: dict[int, Signature] | None = None
        last_change = self.clock()
        waiting = False
        checked = not state.pushed  # an empty record needs no look at the Hub
        finished = stopped = idle = run_found = False
        try:
            while True:
                if self.should_stop():
                    stopped = True
                    break
                if not settings.run_dir.is_dir():
                    if not waiting:
                        self.report(WaitingForRun(display_path(settings.run_dir)))
                        waiting = True
                    if settings.idle_timeout is not None and self.clock() - last_change >= settings.idle_timeout:
                        idle = True
                        break
                    self._pause(settings.interval)
                    continue
                if not run_found:
                    run_found = True
                    self._refuse_checkpoint_folder()  # it may have appeared as one
                if not checked:
                    checked, state = self._check(state)
                    if not checked:
                        self._pause(settings.interval)
                        continue
                current = observe_run(settings.source, skip=state.pushed)
                step = next_step(previous, current, state)
                if current != previous or step.push:
                    last_change = self.clock()
                state = step.state
                if step.lost:
                    self.report(Lost(step.lost))
                if step.finished:
                    finished = True
                    break
                state = self._push_ready(step.push, state, current)
                self._save(state)
                if (
                    settings.idle_timeout is not None
                    and not has_pending(current, state)
                    and self.clock() - last_change >= settings.idle_timeout
                ):
                    idle = True
                    break
                previous = current
                self._pause(settings.interval)
        finally:
            self._save(state)
        return WatchSummary(
            settings.options.repo_id,
            tuple(self.pushed),
            state,
            finished=finished,
            stopped=stopped,
            idle=idle,
            checked=checked,
            run_found=run_found,
            untagged=() if self._tagged else settings.options.tags,
            pruned=tuple(sorted(s for s in self.pruned if s in state.pushed)),
        )

    def _refuse_checkpoint_folder(self) -> None:
        """Never watch (and so never write into) a checkpoint folder."""
        run_dir = self.settings.run_dir
        problem = run_folder_problem(run_dir)
        if problem is not None:
            raise NotARunFolderError(display_path(run_dir), problem, display_path(run_dir.parent))

    def _check(self, state: WatchState) -> tuple[bool, WatchState]:
        """Compare the record with the Hub's branches (one refs call): a recorded push that the Hub does not hold
        at the recorded commit is no longer counted, and is pushed again. When the run's final checkpoint is
        recorded and --tag names a tag that the Hub does not have, it is tagged now. Whether the check was done."""
        repo_id = self.settings.options.repo_id
        if self.clock() < self._retry_at:
            return False, state
        self.busy = "the check of the record against the Hub"
        try:
            try:
                branches, tags = self.hub.refs(repo_id)
            except RepoNotFoundError:  # deleted, or never on this Hub
                branches, tags = {}, {}
            present = {s for s, files in observe_run(self.settings.source, skip=()).items() if files != ()}
            keep = None if self.settings.retention is None else self.settings.retention.keep
            check = check_against_hub(state, branches, present, keep=keep)
            if check.push_again or check.forgotten:
                self.report(NotOnHub(check.push_again, check.forgotten))
            state = check.state
            self.pruned |= set(check.pruned)
            final = state.pushed.get(state.final_step) if state.final_step is not None else None
            wanted = self.settings.options.tags
            if final is not None and wanted and not any(s > final.step for s in present):
                for tag in wanted:
                    if tags.get(tag) != final.commit:
                        self.hub.ensure_tag(repo_id, tag, final.commit)
                self._tagged = True
        except HubsyncError as exc:
            limited = _rate_limit_of(exc)
            if limited is not None:
                self.report(RateLimitPause(None, self._rate_limit_pause(limited)))
                return False, state
            if not transient_failure(exc):
                raise
            self.report(PushFailed(None, exc, self._failed()))
            return False, state
        finally:
            self.busy = None
        self._failures = 0
        self._rate_limited = 0.0
        return True, state

    def _rate_limit_pause(self, limited: RateLimitedError) -> float:
        """The pause the Hub's rate limit asks for (its reset time and a little jitter), not counted as a failure;
        RateLimitedError at once when it would take the pauses since the last call that succeeded past max-wait."""
        left = self.settings.max_wait - self._rate_limited
        if limited.asked > left or left <= 0:
            raise RateLimitedError(
                limited.endpoint,
                limited.asked,
                self._rate_limited,
                self.settings.max_wait,
                limited.repo_id,
                limited.revision,
            ) from limited
        pause = min(limited.asked + random.uniform(*RATE_LIMIT_JITTER), left)
        self._rate_limited += pause
        self._retry_at = self.clock() + pause
        return pause

    def _failed(self) -> float:
        """The pause before the Hub is tried again, doubling with each failure in a row."""
        self._failures += 1
        wait = min(max(self.settings.interval, 1.0) * 2.0 ** (self._failures - 1), self.settings.retry_max)
        self._retry_at = self.clock() + wait
        return wait

    def _push_ready(self, steps: tuple[int, ...], state: WatchState, current: dict[int, Signature]) -> WatchState:
        for step in steps:
            if self.should_stop() or self.clock() < self._retry_at:
                break
            folder = self.settings.source / checkpoint_name(step)
            self.busy = f"the push of {folder.name}"
            try:
                result, final = self._push(folder)
            except (HubsyncError, OSError) as exc:
                if not folder.is_dir():  # the Trainer deleted it while it was being pushed
                    state = dataclasses.replace(state, lost=tuple(sorted({*state.lost, step})))
                    self.report(Lost((step,)))
                    continue
                if isinstance(exc, CHECKPOINT_ERRORS):
                    skipped = SkippedCheckpoint(step, _reason(exc), current.get(step))
                    state = state.with_skipped(skipped)
                    self._save(state)
                    self.report(Skipped(step, skipped.reason))
                    continue
                limited = _rate_limit_of(exc)
                if limited is not None:  # pushed again after the pause: a push that landed commits nothing new
                    self.report(RateLimitPause(step, self._rate_limit_pause(limited)))
                    break
                if not transient_failure(exc):
                    raise
                assert isinstance(exc, HubsyncError)
                self.report(PushFailed(step, exc, self._failed()))
                break
            finally:
                self.busy = None
            self._failures = 0
            self._rate_limited = 0.0
            self.pushed.append((step, result))
            state = state.with_pushed(PushedCheckpoint(step, result.revision, result.commit), final)
            self._save(state)
            self.report(Pushed(step, result))
            self._retain(step, result)
        return state

    def _retain(self, step: int, result: PushResult) -> None:
        """The retention policy after a push landed; a failure is reported, and the watch goes on."""
        policy = self.settings.retention
        if policy is None:
            return
        self.busy = "the retention policy's prune"
        try:
            hub = cast(PruneTarget, self.hub)  # a watch with a policy is given a HubClient (hubsync.api.watcher)
            retained = apply_retention(hub, result.repo_id, policy, result.revision)
            assert retained.result is not None
            gone = set(retained.result.deleted)
            self.pruned |= {d.step for d in retained.plan.delete if d.revision in gone and d.step is not None}
            self.report(Pruned(step, retained))
        except HubsyncError as exc:
            self.report(PruneFailed(step, policy.keep, exc))
        finally:
            self.busy = None

    def _push(self, folder: Path) -> tuple[PushResult, bool]:
        checkpoint = read_checkpoint(folder)
        trainer = checkpoint.trainer_state
        final = trainer is not None and is_final(trainer.global_step, trainer.settings.get("max_steps"))
        options = self.settings.options if final else dataclasses.replace(self.settings.options, tags=())
        plan = measured_push(plan_push(checkpoint, options), checkpoint)  # converted files, as written
        result = execute_push(plan, checkpoint, self.hub)
        self._tagged = self._tagged or (final and bool(plan.tags))
        return result, final

    def _pause(self, seconds: float) -> None:
        end = self.clock() + seconds
        while not self.should_stop():
            left = end - self.clock()
            if left <= 0:
                return
            time.sleep(min(left, SLEEP_SLICE))

    def _load(self) -> WatchState:
        remove_stale_temps(self.state_path.parent)
        try:
            self._raw_state = self.state_path.read_bytes()
        except FileNotFoundError:
            self._raw_state = None
        return parse_state(
            self._raw_state, self.hub.endpoint, self.settings.options.repo_id, display_path(self.state_path)
        )

    def _save(self, state: WatchState) -> None:
        """Replace the state file whole, when the state changed and the run folder exists."""
        data = dump_state(state, self._raw_state)
        if data == self._raw_state or not self.settings.run_dir.is_dir():
            return
        self.state_path.parent.mkdir(exist_ok=True)
        write_file_atomic(self.state_path, data)
        self._raw_state = data


def _reason(exc: HubsyncError | OSError) -> str:
    """Why a checkpoint was skipped, without an absolute path (an OSError names one)."""
    if isinstance(exc, HubsyncError):
        return str(exc)
    what = exc.strerror or type(exc).__name__
    return f"{display_path(exc.filename)}: {what}" if exc.filename else what


def _rate_limit_of(exc: BaseException) -> RateLimitedError | None:
    """The Hub's rate limit that a push met, also after its commit landed (then tags or main's index were left)."""
    if isinstance(exc, IncompletePushError):
        exc = exc.cause
    return exc if isinstance(exc, RateLimitedError) else None
