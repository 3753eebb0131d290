"""HubsyncCallback's worker: staged copies of a training run's checkpoints, pushed by a watch of them.

The callback stages each checkpoint the Trainer saves as hard links (copies where links fail) in
`<run>/.hubsync/staged/<run name>/checkpoint-N`, so that save_total_limit's rotation cannot delete it before it is
pushed; the worker is a hubsync.hub.watch.Watcher of that folder whose record is the run's own
(`<run>/.hubsync/watch.json`, shared with `hubsync watch <run>` and a restarted training run), and each staged copy
is removed once its push is recorded. The worker runs as a thread or as this module's own process
(`python -m hubsync.hub.staging`, at nice 19), which reads its job as one JSON line on stdin, then `finish` or
`now` (the end of its input, a training process gone: finish, then now after job["wait"] seconds), and writes
what happens as JSON lines on stdout. No transformers here: the child process stays light.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubsync.core.checkpoint import checkpoint_name, checkpoint_step
from hubsync.core.paths import display_path
from hubsync.core.watch import parse_state

if TYPE_CHECKING:
    from hubsync.hub.watch import Watcher

STAGED_DIR = ".hubsync/staged"
NICE = 19

Say = Callable[[str, str], None]  # (level: "info" | "warning" | "error", message)


def staged_dir(run_dir: Path) -> Path:
    """Where a run's checkpoints are staged: under a folder of the run's name, which a card takes as the run's."""
    return run_dir / STAGED_DIR / run_dir.name


def check_staging(run_dir: Path) -> None:
    """The folders hubsync keeps in the run folder are folders of its own: a link there (to a folder elsewhere,
    whose checkpoints the worker would push, then delete) or a file is refused, as is a record that cannot be
    read, before training starts. WatchStateError names the path."""
    from hubsync.core.errors import WatchStateError

    for folder in (run_dir / ".hubsync", run_dir / ".hubsync" / "staged", staged_dir(run_dir)):
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise WatchStateError(display_path(folder), "it is a link or a file, not a folder hubsync made")
    record = run_dir / ".hubsync" / "watch.json"
    if record.is_symlink() or (record.exists() and not record.is_file()):
        raise WatchStateError(display_path(record), "it is a link or a folder, not the record hubsync wrote")
    if record.exists():
        parse_state(record.read_bytes(), "", "", display_path(record))  # any record: damaged or not


def staged_steps(folder: Path) -> list[int]:
    """The steps of the staged checkpoint-N folders, oldest first (links and files are no staged copies)."""
    try:
        names = [e.name for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(step for step in map(checkpoint_step, names) if step is not None)


def stage(checkpoint: Path, folder: Path) -> bool:
    """Stage `checkpoint` as folder/<its name>: hard links of its files (a copy of each one a link fails for),
    made under a temporary name and renamed whole, so that a watch never sees it half made. Whether it was
    staged now (False: already staged)."""
    target = folder / checkpoint.name
    if target.is_dir() and not target.is_symlink():
        return False
    if target.is_symlink() or target.exists():  # a file or a link where a staged copy goes: not one of hubsync's
        target.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".tmp-{checkpoint.name}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)

    def link(source: str, destination: str) -> None:
        try:
            os.link(source, destination, follow_symlinks=False)
        except OSError:
            shutil.copy2(source, destination)

    try:
        shutil.copytree(checkpoint, temporary, symlinks=True, copy_function=link)
        os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return True


def work(job: Mapping[str, Any], finish: threading.Event, now: threading.Event, say: Say) -> None:
    """Push every checkpoint staged for job["run_dir"], oldest first, until `now` is set, or `finish` is set and
    none is left. A Hub that fails is tried again with growing pauses (the Watcher's); a failure that would
    only fail again (a refused token) is raised."""
    import hubsync.api
    from hubsync.hub.watch import NotOnHub, Pruned, PruneFailed, Pushed, PushFailed, Skipped

    run = Path(job["run_dir"])
    source = staged_dir(run)

    def done(step: int) -> None:
        shutil.rmtree(source / checkpoint_name(step), ignore_errors=True)

    def report(event: object) -> None:
        if isinstance(event, Pushed):
            done(event.step)  # its push is in the record already
            say("info", f"pushed checkpoint-{event.step} to {event.result.repo_id} @ {event.result.revision}")
        elif isinstance(event, Skipped):
            done(event.step)
            say("warning", f"{checkpoint_name(event.step)} is not pushed: {event.reason}")
        elif isinstance(event, PushFailed):
            what = "the check of the record" if event.step is None else f"the push of checkpoint-{event.step}"
            say("warning", f"{what} failed ({event.error}); trying again in {event.retry_in:.0f} s")
        elif isinstance(event, Pruned):
            deleted = event.retained.result.deleted if event.retained.result is not None else ()
            kept = len(event.retained.plan.keep)
            gone = f"deleted {', '.join(deleted)}" if deleted else "deleted nothing"
            say("info", f"retention (keep {event.retained.policy.keep}): {gone}; {kept} checkpoint branches kept")
        elif isinstance(event, PruneFailed):
            say(
                "warning",
                f"the retention policy's prune after checkpoint-{event.step} failed ({event.error}); the push "
                "stays done, and the policy runs again after the next push",
            )
        elif isinstance(event, NotOnHub) and event.push_again:
            say("info", f"the Hub lacks recorded pushes {list(event.push_again)}: pushing them again")

    def should_stop() -> bool:
        return now.is_set() or (finish.is_set() and not staged_steps(source))

    watcher = hubsync.api.watcher(
        run,
        job.get("repo_id"),
        interval=job.get("interval", 0.5),
        retry_max=job.get("retry_max", 60.0),
        should_stop=should_stop,
        endpoint=job.get("endpoint"),
        token=job.get("token"),
        report=report,
        checkpoints_dir=source,
        **job.get("options", {}),
    )
    check_staging(run)
    _forget_after(watcher, job.get("resumed_at"))
    _drop_recorded(watcher.state_path, watcher.hub.endpoint, watcher.settings.options.repo_id, source)
    _push_until(watcher, source, should_stop, done)  # the watcher keeps huggingface_hub's bars off the Trainer's


def _push_until(watcher: Watcher, source: Path, should_stop: Callable[[], bool], done: Callable[[int], None]) -> None:
    while not should_stop():
        summary = watcher.run()
        for step in summary.state.pushed:  # staged copies of checkpoints the record holds (a run restarted)
            if step in staged_steps(source):
                done(step)
        if summary.finished:  # the run's final checkpoint is pushed: wait for another to be staged, or the end
            while not should_stop() and not set(staged_steps(source)) - set(summary.state.pushed):
                time.sleep(watcher.settings.interval)


def _forget_after(watcher: Watcher, step: int | None) -> None:
    """A training run that starts at `step` (0: from scratch) saves its own checkpoints past it: the record's
    pushes of later steps are another run's (one trained before into this folder), so they are forgotten, and
    this run's checkpoints of those steps are pushed, not taken for pushed."""
    if not isinstance(step, int):
        return
    state = watcher._load()
    kept = {s: p for s, p in state.pushed.items() if s <= step}
    if len(kept) < len(state.pushed):
        final = state.final_step if state.final_step is not None and state.final_step <= step else None
        watcher._save(dataclasses.replace(state, pushed=kept, final_step=final))


def _drop_recorded(record: Path, endpoint: str, repo_id: str, source: Path) -> None:
    """Remove staged copies that the record says were pushed (a run that ended before it removed them)."""
    try:
        raw = record.read_bytes()
    except FileNotFoundError:
        return
    state = parse_state(raw, endpoint, repo_id, display_path(record))
    for step in staged_steps(source):
        if step in state.pushed:
            shutil.rmtree(source / checkpoint_name(step), ignore_errors=True)


def lower_priority(native_id: int = 0) -> None:
    """Run at nice 19 (the calling thread only, when `native_id` names it; on Linux a thread has its own)."""
    with contextlib.suppress(AttributeError, OSError):  # no setpriority (Windows), or not allowed
        os.setpriority(os.PRIO_PROCESS, native_id, NICE)


def _main() -> int:
    """The worker process: its job on stdin's first line, then `finish` or `now` (end of input: finish)."""
    lower_priority()
    job = json.loads(sys.stdin.readline())
    offline = job.get("hf_hub_offline")  # the environment's when the callback was made, not the training's
    if offline is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = offline
    finish, now = threading.Event(), threading.Event()
    lock = threading.Lock()

    def say(level: str, message: str) -> None:
        with lock, contextlib.suppress(OSError, ValueError):  # no one reads any more: the training process is gone
            sys.stdout.write(json.dumps({"level": level, "message": message}) + "\n")
            sys.stdout.flush()

    def listen() -> None:
        for line in sys.stdin:
            (now if line.strip() == "now" else finish).set()
        # The training process ended, or was killed: push what is left, for as long as it would have waited.
        finish.set()
        now.wait(float(job.get("wait", 600.0)))
        now.set()

    threading.Thread(target=listen, daemon=True).start()
    try:
        work(job, finish, now, say)
    except Exception as exc:  # the training process says it; a traceback would name paths
        say("error", f"the worker stopped: {exc}" if str(exc) else f"the worker stopped: {type(exc).__name__}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
