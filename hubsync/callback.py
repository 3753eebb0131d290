"""hubsync.HubsyncCallback: a transformers TrainerCallback that pushes every checkpoint the Trainer saves.

    trainer = Trainer(..., callbacks=[hubsync.HubsyncCallback("me/my-model", training_state="keep")])

Each save is staged at once (hard links, see hubsync.hub.staging) and pushed by a worker in the background, so a
training step never waits for the Hub and save_total_limit never deletes a checkpoint before it is pushed: a slow
Hub makes the pushes lag, never skip one. Only the main process of a distributed run pushes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hubsync.core.checkpoint import checkpoint_name
from hubsync.core.config import debug_wanted
from hubsync.core.paths import display_path
from hubsync.extras import needs_extra
from hubsync.hub import staging

with needs_extra("HubsyncCallback"):
    from transformers import TrainerCallback

logger = logging.getLogger("hubsync")

WORKERS = ("process", "thread")
MAX_SECONDS = 7 * 24 * 3600  # wait= and the pauses: a bound a timer takes (1e300 s overflows it)
# The watch's own parameters, which the callback sets itself.
WATCHER_ONLY = frozenset({"should_stop", "report", "client", "settings", "checkpoints_dir", "idle_timeout"})


class HubsyncCallback(TrainerCallback):
    """Push each checkpoint the Trainer saves to `repo_id` as its own revision, with push's options (keyword
    arguments: training_state="keep", private=True, tags=[...], ...), resolved as hubsync.push resolves them.

    The pushes run in a worker: a child process at nice 19 (`worker="process"`, the default) or a thread
    (`worker="thread"`). The watch record `<run>/.hubsync/watch.json` says what is pushed, so a restarted run
    (or `hubsync watch <run>`) pushes nothing twice. At the end of training the callback waits at most `wait`
    seconds for the pushes, then logs what is left (a warning of the "hubsync" logger). Every option is checked
    when the callback is made, before training starts; a bad one raises a hubsync.errors error (TypeError for a
    keyword that is no option, and for select=: every save is pushed). With keep=N (and keep_best, keep_tagged,
    keep_storage, as `hubsync prune` takes them), or `keep` in the configuration, each push that lands is followed
    by a prune to the N newest checkpoint revisions (the one just pushed always stays); a failed prune is logged
    as a warning, and tried again after the next push."""

    def __init__(
        self,
        repo_id: str | None = None,
        *,
        worker: str = "process",
        wait: float = 600.0,
        interval: float = 0.5,
        retry_max: float = 60.0,
        endpoint: str | None = None,
        token: str | None = None,
        **options: Any,
    ) -> None:
        import hubsync.api
        from hubsync.core.errors import SettingError

        if "select" in options:  # a push of a run folder picks checkpoints; the callback pushes every save
            raise TypeError("HubsyncCallback() takes no select=: it pushes every checkpoint the Trainer saves")
        for name in sorted(set(options) & WATCHER_ONLY):
            raise TypeError(f"HubsyncCallback() got an unexpected keyword argument {name!r}")
        if token is not None and not isinstance(token, str):
            raise SettingError("token=", "token", "<redacted>", "must be a string")
        if worker not in WORKERS:
            raise SettingError("worker=", "worker", worker, f"must be {' or '.join(WORKERS)}")
        for name, value, may_be_zero in (
            ("wait", wait, True),
            ("interval", interval, False),
            ("retry_max", retry_max, False),
        ):
            number = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
            if not number or value < 0 or (value == 0 and not may_be_zero) or value > MAX_SECONDS:
                said = f"{'0 or more' if may_be_zero else 'above 0'}, at most {MAX_SECONDS:,} (a week)"
                raise SettingError(f"{name}=", name, value, f"must be a number of seconds, {said}")
        self.worker = worker
        self.wait_seconds = float(wait)
        self._job: dict[str, Any] = {
            "repo_id": repo_id,
            "options": options,
            "endpoint": endpoint,
            "token": token,
            "interval": interval,
            "retry_max": retry_max,
            "wait": float(wait),
            "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
        }
        # Every check a watch makes, now: the configuration found from here (the run's own is looked up again
        # when training starts, from its output folder).
        check = hubsync.api.watcher(Path.cwd() / "hubsync-run", repo_id, endpoint=endpoint, token=token, **options)
        self.repo_id = check.settings.options.repo_id
        self._run: Path | None = None
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen[str] | None = None
        self._relay_thread: threading.Thread | None = None
        self._finish = threading.Event()
        self._now = threading.Event()
        self._error: str | None = None

    # -- what the Trainer calls ------------------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if _is_main(args, state):  # state.global_step: where this run starts (0, or the step it resumes from)
            self._start(Path(args.output_dir), resumed_at=state.global_step)
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if not _is_main(args, state):
            return control
        run = Path(args.output_dir)
        self._start(run)
        checkpoint = run / checkpoint_name(state.global_step)  # as the Trainer names it
        if checkpoint.is_dir():
            try:
                staging.stage(checkpoint, staging.staged_dir(run))
            except OSError as exc:  # a full disk, say: training goes on, the checkpoint is said to be missing
                logger.warning("hubsync: could not stage %s for its push: %s", checkpoint.name, exc.strerror or exc)
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._run is None:
            return control
        finished = self.wait(self.wait_seconds)
        self._stop(now=not finished)
        left = self.pending
        if left:
            folder = display_path(staging.staged_dir(self._run))
            logger.warning(
                "hubsync: %d checkpoint(s) not pushed to %s after %.0f s (%s): they stay in %s, pushed by the next "
                "training run of %s with HubsyncCallback, or by `hubsync push %s --repo %s --select all`",
                len(left),
                self.repo_id,
                self.wait_seconds,
                ", ".join(map(checkpoint_name, left)),
                folder,
                display_path(self._run),
                folder,
                self.repo_id,
            )
        if self._error:
            logger.warning("hubsync: %s", self._error)
        return control

    # -- for the training script ------------------------------------------------------------------------------------
    @property
    def pending(self) -> list[int]:
        """The steps of the checkpoints saved and not pushed yet, oldest first."""
        return [] if self._run is None else staging.staged_steps(staging.staged_dir(self._run))

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every saved checkpoint is pushed, at most `timeout` seconds (None: no limit); whether
        none is left. Returns early when the worker stopped (its error is logged)."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.pending and self._alive():
            if end is not None and time.monotonic() >= end:
                break
            time.sleep(0.05)
        return not self.pending

    # -- the worker --------------------------------------------------------------------------------------------------
    def _start(self, run: Path, resumed_at: int | None = None) -> None:
        if self._run is not None:
            return
        import hubsync.api

        job = {k: v for k, v in self._job.items() if k != "hf_hub_offline"}
        # Checked again with the run folder's configuration, before the first training step; and the folders
        # hubsync keeps there.
        hubsync.api.watcher(run, job["repo_id"], endpoint=job["endpoint"], token=job["token"], **job["options"])
        staging.check_staging(run)
        self._run = run
        self._job["run_dir"] = str(run)
        self._job["resumed_at"] = resumed_at if isinstance(resumed_at, int) else None
        if self.worker == "thread":
            self._thread = threading.Thread(target=self._work_in_thread, name="hubsync-callback", daemon=True)
            self._thread.start()
            return
        env = dict(os.environ)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "hubsync.hub.staging"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if debug_wanted(os.environ) else subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(self._job) + "\n")  # the token travels by pipe, never in argv
        self._process.stdin.flush()
        self._relay_thread = threading.Thread(target=self._relay, name="hubsync-callback-log", daemon=True)
        self._relay_thread.start()

    def _work_in_thread(self) -> None:
        staging.lower_priority(threading.get_native_id())
        try:
            staging.work(self._job, self._finish, self._now, self._say)
        except Exception as exc:  # said at the end of training, and logged now
            self._say("error", f"the worker stopped: {exc}")

    def _relay(self) -> None:
        """Log what the worker process says."""
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            try:
                said = json.loads(line)
                self._say(str(said["level"]), str(said["message"]))
            except (ValueError, KeyError, TypeError):
                continue

    def _say(self, level: str, message: str) -> None:
        if level == "error":
            self._error = message
        logger.log(logging.INFO if level == "info" else logging.WARNING, "hubsync: %s", message)

    def _alive(self) -> bool:
        if self._thread is not None:
            return self._thread.is_alive()
        return self._process is not None and self._process.poll() is None

    def _stop(self, now: bool) -> None:
        """Tell the worker to end (now: after the push under way; else once nothing is left), and wait for it."""
        (self._now if now else self._finish).set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._process is not None:
            try:
                assert self._process.stdin is not None
                self._process.stdin.write("now\n" if now else "finish\n")
                self._process.stdin.close()
            except OSError:  # it ended already
                pass
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.terminate()
                self._process.wait(timeout=10)
            if self._relay_thread is not None:
                self._relay_thread.join(timeout=5)  # what it said last, logged
            if self._process.stdout is not None:
                self._process.stdout.close()


def _is_main(args: Any, state: Any) -> bool:
    """Whether this process pushes: the main process of a distributed run (every other one does nothing)."""
    return bool(getattr(state, "is_world_process_zero", True)) and getattr(args, "process_index", 0) == 0
