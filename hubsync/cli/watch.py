"""`hubsync watch`: parse the flags, run a Watcher (hubsync.hub.watch) on the run folder, print what it reports."""

from __future__ import annotations

import json
import os
import signal
from contextlib import suppress
from pathlib import Path
from typing import Any

import click

from hubsync.core.checkpoint import checkpoint_name
from hubsync.core.paths import display_path

from .app import cli
from .options import endpoint_option, flag_settings, push_options, seconds, token_option
from .output import (
    checkpoints,
    count,
    echo,
    one_line,
    quiet_huggingface_hub,
    report_rate_limit,
    report_retry,
    scrub,
)


@cli.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(file_okay=False, path_type=str))
@push_options
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    callback=seconds,
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Pause between looks at the run folder.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0),
    callback=seconds,
    metavar="SECONDS",
    help="Also stop when the run folder has not changed for this long and everything in it is pushed [default: never].",
)
@click.option(
    "--retry-max",
    type=click.FloatRange(min=0),
    callback=seconds,
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest pause before pushing again after the Hub failed (the pauses double from --interval).",
)
@click.option(
    "--nice",
    "niceness",
    type=click.IntRange(0, 19),
    default=10,
    show_default=True,
    help="Lower this process's priority by this much, so that training keeps the CPU.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary when it stops, instead of a line a push.")
@endpoint_option
@token_option
@click.pass_context
def watch(
    ctx: click.Context,
    /,
    run_dir: str,
    interval: float,
    idle_timeout: float | None,
    retry_max: float,
    niceness: int,
    as_json: bool,
    endpoint: str | None,
    token: str | None,
    **flags: Any,
) -> None:
    """Push each new checkpoint of a training run while it trains, from another process.

    Start it beside the training process. Every --interval it looks at RUN_DIR; a checkpoint-N folder is
    pushed (as `hubsync push` would, with the same options) once its trainer_state.json is written and no
    file in it changed between two looks. It only reads the run folder, keeping its own record in
    RUN_DIR/.hubsync/watch.json, so a restarted watch pushes nothing twice. When the Hub fails, it says so
    in one line and tries again later; when it rate-limits the requests, the watch pauses as long as it asks
    (up to --max-wait in a row), which counts as no failure. It stops, with exit code 0, once the run's final checkpoint
    (global_step = max_steps) is pushed, or after --idle-timeout; on Ctrl-C or SIGTERM it finishes the
    push in progress, saves its record and exits with 130 (press Ctrl-C again to abandon the push: nothing
    is half-committed). A checkpoint that the Trainer deleted (save_total_limit) before it could be pushed
    is reported; one that cannot be read is reported, skipped and tried again when its files change. --tag
    tags the run's final checkpoint; when the watch ends before that, it says how to tag another one. A
    folder checkpoint-N is refused: pass the run folder that holds it. With --keep N (or `keep` in
    hubsync.toml, HUBSYNC_KEEP) each push that lands is followed by `hubsync prune --keep N` (with
    --keep-best, --keep-tagged, --keep-storage); a prune that fails is reported and tried after the next push.

    \b
    Example:
      hubsync watch out/my-run --repo me/my-model --training-state keep &
      python train.py --output_dir out/my-run
    """
    import threading
    from pathlib import Path

    from hubsync.api import watcher as watch_run
    from hubsync.core.errors import MissingRepoError

    run = Path(run_dir)
    stop = threading.Event()
    try:
        watcher = watch_run(
            run,
            interval=interval,
            idle_timeout=idle_timeout,
            retry_max=retry_max,
            should_stop=stop.is_set,
            endpoint=endpoint,
            token=token,
            report=lambda event: _report_watch(event, as_json),
            settings=flag_settings(ctx, run / "checkpoint", flags),  # looked up from inside the run folder
        )
    except MissingRepoError:
        raise click.UsageError(
            "Missing option '--repo' (or `repo` in hubsync.toml / [tool.hubsync], or HUBSYNC_REPO)."
        ) from None
    quiet_huggingface_hub(show_progress=False)
    if niceness:
        with suppress(OSError, AttributeError):  # not allowed, or not on this platform: normal priority then
            os.nice(niceness)

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        busy = watcher.busy
        if busy is None:
            echo("Stopping (no push in progress).", err=True)
        else:
            echo(f"Stopping once {busy} is done (Ctrl-C again abandons it; nothing is half-written).", err=True)

    handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = watcher.run()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if summary.untagged:
        echo(_untagged(summary, run_dir), err=True)
    if as_json:
        echo(scrub(json.dumps(summary.to_json(), indent=2)))  # skip reasons come from exceptions
    else:
        echo(_watch_closing_line(summary, idle_timeout, run_dir))
    if summary.stopped:
        ctx.exit(130)


def _watch_closing_line(summary: Any, idle_timeout: float | None, run_dir: str) -> str:
    repo = summary.repo_id
    if not summary.run_found:
        if summary.idle:
            return f"Stopped after {idle_timeout:g} s: {display_path(run_dir)} never appeared; nothing pushed."
        return f"Stopped: {display_path(run_dir)} has not appeared; nothing pushed. Run it again to go on."
    n = len(summary.state.pushed) - len(summary.pruned)
    # Without the check against the Hub (it did not answer), only the record speaks for them.
    on_hub = (
        f"{count(n, 'checkpoint')} on {repo}" if summary.checked else f"{count(n, 'checkpoint')} recorded for {repo}"
    )
    lost = f"; lost before they were pushed: {checkpoints(summary.state.lost)}" if summary.state.lost else ""
    if summary.pruned:
        lost += f"; pruned by the retention policy: {checkpoints(summary.pruned)}"
    skipped = summary.state.skipped
    if skipped:
        lost += f"; skipped (unreadable): {checkpoints(sorted(skipped))}"
    if summary.finished:
        return f"Done: the run finished; {on_hub}{lost}."
    if summary.idle:
        return f"Stopped after {idle_timeout:g} s without change; {on_hub}{lost}."
    return f"Stopped; {on_hub}{lost}. Run it again to go on."


def _untagged(summary: Any, run_dir: str) -> str:
    """Why --tag was not applied, and how to tag a checkpoint that is on the Hub."""
    names = " ".join(f"--tag {t}" for t in summary.untagged)
    why = "the watch was stopped" if summary.stopped else "the watch stopped"
    line = f"Not tagged: {names} is for the run's final checkpoint (global_step = max_steps), and {why} before "
    line += "that was pushed."
    if summary.state.pushed:
        newest = max(summary.state.pushed)
        folder = display_path(Path(run_dir) / checkpoint_name(newest))
        line += (
            f" To tag checkpoint-{newest} instead: hubsync push {folder} --repo {summary.repo_id} {names} "
            "(with the watch's other options; nothing new is committed to its branch)"
        )
    else:
        line += " Run the watch again with it once the run has finished"
    return line + "."


def _report_watch(event: object, as_json: bool) -> None:
    """One line for each thing that happens while watching: pushes on stdout, trouble on stderr."""
    from hubsync.api import RateLimited, Retrying
    from hubsync.core.errors import HubError
    from hubsync.hub.watch import (
        Lost,
        NotOnHub,
        Pruned,
        PruneFailed,
        Pushed,
        PushFailed,
        RateLimitPause,
        Skipped,
        WaitingForRun,
    )

    from .errors import message_for
    from .prune import print_retention

    if isinstance(event, Retrying):
        report_retry(event.reason, event.pause)
    elif isinstance(event, RateLimited | RateLimitPause):
        report_rate_limit(event.pause)
    elif isinstance(event, Pushed):
        if not as_json:
            r = event.result
            verb = "Pushed" if r.created else "Already on the Hub:"
            echo(f"{verb} {checkpoint_name(event.step)} -> {r.repo_id} @ {r.revision} ({r.commit[:12]})")
            if r.deleted:  # as push says it: a branch that held training state can stop being resumable
                echo(f"  deleted: {r.deleted} files the branch held (this push leaves them out)")
    elif isinstance(event, Pruned):
        if not as_json:
            print_retention(event.retained)
    elif isinstance(event, PruneFailed):
        said = message_for(event.error).removeprefix("Error: ").rstrip(".")
        echo(
            one_line(
                f"Retention: the prune after {checkpoint_name(event.step)} failed ({said}); the push stays done, "
                "and the policy runs again after the next push."
            ),
            err=True,
        )
    elif isinstance(event, Lost):
        echo(
            f"Lost: {checkpoints(event.steps)} deleted from the run folder before it was pushed "
            "(the Trainer's save_total_limit?).",
            err=True,
        )
    elif isinstance(event, PushFailed):
        err = event.error
        why = f"{err.endpoint}: {err.detail}" if isinstance(err, HubError) else str(err)
        later = f"trying again in {event.retry_in:g} s"
        what = (
            "the record not checked against it" if event.step is None else f"{checkpoint_name(event.step)} not pushed"
        )
        echo(one_line(f"Hub unavailable ({why}): {what} yet; {later}."), err=True)
    elif isinstance(event, Skipped):
        echo(
            scrub(
                f"Skipped checkpoint-{event.step}: {event.reason}. The watch goes on with the others, and tries it "
                "again if its files change."
            ),
            err=True,
        )
    elif isinstance(event, NotOnHub):
        if event.push_again:
            echo(f"Not on the Hub at the recorded commit: {checkpoints(event.push_again)}; pushing again.", err=True)
        if event.forgotten:
            echo(
                f"Not on the Hub at the recorded commit, and gone from the run folder: {checkpoints(event.forgotten)}"
                "; dropped from the record.",
                err=True,
            )
    elif isinstance(event, WaitingForRun):
        echo(f"Waiting for {event.run} to appear.", err=True)
