"""The `hubsync` command line. Only this package prints and chooses exit codes; the library raises."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import click

from hubsync import __version__
from hubsync.core.errors import HubsyncError
from hubsync.core.escape import one_line, safe_text
from hubsync.core.paths import display_path

from .errors import message_for


def _secrets() -> list[str]:
    """Values that must never reach the terminal, whatever the message."""
    from hubsync.core.secrets import saved_tokens

    ctx = click.get_current_context(silent=True)
    found = [os.environ.get("HF_TOKEN") or "", *saved_tokens()]  # and the token `hf auth login` saved
    while ctx is not None:
        found.append(str(ctx.params.get("token") or ""))
        ctx = ctx.parent
    return [s for s in found if len(s) >= 8]


def _scrub(text: str) -> str:
    """No token, no password in a URL, and no absolute local path (they name users and machines), whatever a
    library put into a message."""
    from hubsync.core.secrets import redact

    text = redact(text, _secrets())  # the known tokens, and anything shaped like a token (a Hub quoting a header)
    text = _URL_USERINFO.sub(r"\1***@", text)
    text = _ABSOLUTE_PATH.sub(_local_path, text)
    return safe_text(text)  # as echo() does: messages also go into --json output


def echo(message: str = "", err: bool = False, nl: bool = True) -> None:
    """Every line hubsync prints. A terminal acts on control characters, and a file name, a metric name, a branch
    or a Hub's answer may hold them (ESC rewrites the screen, a bidi override reorders it): shown escaped."""
    click.echo(safe_text(message), err=err, nl=nl)


def _one_line(text: str) -> str:
    """An error as people read it: scrubbed, and one line whatever a value in it held."""
    return _scrub(text).replace("\n", "\\n").replace("\t", "\\t")


_URL_USERINFO = re.compile(r"(\w+://)[^/\s@]+@")
# An absolute POSIX or Windows path as libraries quote them in messages; checked against the disk below.
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.…])(?:/|[A-Za-z]:\\)[^\s'\"`,;()]+")


def _local_path(match: re.Match[str]) -> str:
    """A local path shown relative, or shortened; anything that is not one (a URL path) is left as it is."""
    candidate = Path(match.group(0))
    if len(candidate.parts) >= 3 and candidate.parent.exists():
        return display_path(candidate)
    return match.group(0)


# `hubsync ... | head -1`: the reader left. Stop without a word, with the status a shell reports for git, cat and
# other tools that SIGPIPE ends (128 + 13): not 0, since not all of the output was read, and not 1, which says
# hubsync explained a failure. (Python ignores SIGPIPE, so a write raises BrokenPipeError instead.)
SIGPIPE_EXIT = 128 + signal.SIGPIPE


def _stdout_gone() -> None:
    """Send what is still buffered for stdout to the null device, so that the interpreter's last flush at exit
    does not print `Exception ignored ... BrokenPipeError` (the recipe of Python's signal module docs)."""
    with suppress(OSError, ValueError):  # no file descriptor (a test's captured stdout): nothing to redirect
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _check_hf_endpoint() -> None:
    """HF_ENDPOINT as the settings check it, before huggingface_hub reads it at import (a bad port raised there)."""
    from hubsync.core.config import check_endpoint
    from hubsync.core.errors import ConfigError

    url = os.environ.get("HF_ENDPOINT")
    if url:
        try:
            check_endpoint(url)
        except ValueError as exc:
            raise ConfigError("HF_ENDPOINT", f"{json.dumps(url)} {exc}") from exc


class HubsyncGroup(click.Group):
    """Turns HubsyncErrors into one line on stderr and exit code 1 (HUBSYNC_DEBUG=1: the traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            _check_hf_endpoint()
            result = super().invoke(ctx)
            sys.stdout.flush()  # a reader that left shows here, not in the interpreter's last flush
            return result
        except BrokenPipeError:
            _stdout_gone()
            ctx.exit(SIGPIPE_EXIT)
        except click.UsageError as exc:
            if exc.ctx is None:
                raise
            # One line, as for every other error, with the way to the command's help.
            said = exc.format_message()
            said += "" if said.endswith((".", "?")) else "."
            message = f"{said} See `{exc.ctx.command_path} --help`."
            raise click.UsageError(_one_line(message)) from None
        except HubsyncError as exc:
            if os.environ.get("HUBSYNC_DEBUG"):
                raise
            echo(_one_line(message_for(exc)), err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            echo("Interrupted: nothing was left half-written.", err=True)
            ctx.exit(130)
        except OSError as exc:  # the machine said no: a full disk, a folder where a file should go, permissions
            if os.environ.get("HUBSYNC_DEBUG"):
                raise
            where = f" ({display_path(exc.filename)})" if exc.filename else ""
            reason = exc.strerror or type(exc).__name__
            echo(_one_line(f"Error: {reason}{where}. Check the path and the free space, then run it again."), err=True)
            ctx.exit(1)


@click.group(cls=HubsyncGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hubsync")
def cli() -> None:
    """Push Trainer/PEFT checkpoints to the Hugging Face Hub as revisions.

    \b
    Example:
      hubsync push out/my-run/checkpoint-1000 --repo me/my-model
    """


def _endpoint(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from hubsync.core.config import check_endpoint

    try:
        return None if value is None else check_endpoint(value)
    except ValueError as exc:
        raise click.BadParameter(f"{json.dumps(value)} {exc}") from exc


endpoint_option = click.option(
    "--endpoint",
    metavar="URL",
    callback=_endpoint,
    help="Hub address [default: HF_ENDPOINT, else https://huggingface.co].",
)


def _token(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A token goes into an HTTP header: printable ASCII, no spaces (never shown back: it may be a real one)."""
    from hubsync.core.config import is_token_text

    if value is not None and not is_token_text(value):
        raise click.BadParameter("a Hub token is printable ASCII without spaces, such as hf_...; check what was pasted")
    return value


token_option = click.option(
    "--token", metavar="TOKEN", callback=_token, help="Hub token [default: HF_TOKEN, else the saved login]."
)


def _bad_flag_values(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Check a push setting's flag by the settings table's rule, as its variable and file key are checked."""
    from hubsync.core.config import SETTINGS, check_value
    from hubsync.core.errors import SettingError

    if value is None or value == () or ctx.resilient_parsing:
        return value
    setting = next(s for s in SETTINGS.values() if s.param == param.name)
    try:
        return check_value(setting, value, setting.flag)
    except SettingError as exc:
        raise click.BadParameter(exc.reason) from exc


def _clear_option(name: str, what: str) -> Any:
    return click.option(f"--no-{name}", f"no_{name.replace('-', '_')}", is_flag=True, help=f"Clear {what}.")


def card_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options that shape a model card, shared by `push` and `card`."""
    for option in reversed(
        [
            click.option(
                "--base-model",
                metavar="HUB_ID",
                callback=_bad_flag_values,
                help="Base model's Hub id [default: from adapter_config.json].",
            ),
            click.option(
                "--license",
                "license_",
                metavar="ID",
                callback=_bad_flag_values,
                help="License for the card, such as apache-2.0.",
            ),
            click.option(
                "--dataset",
                "dataset",
                multiple=True,
                metavar="HUB_ID",
                callback=_bad_flag_values,
                help="Training dataset (repeatable).",
            ),
            _clear_option("dataset", "the datasets set by HUBSYNC_DATASETS or the configuration file"),
            click.option(
                "--language",
                "language",
                multiple=True,
                metavar="CODE",
                callback=_bad_flag_values,
                help="Language, such as en (repeatable).",
            ),
            _clear_option("language", "the languages set by HUBSYNC_LANGUAGES or the configuration file"),
            click.option(
                "--template",
                type=click.Path(dir_okay=False, path_type=str),
                help="A Jinja2 template that replaces the packaged card template.",
            ),
            _clear_option("template", "a template set by HUBSYNC_TEMPLATE or the configuration file"),
        ]
    ):
        f = option(f)
    return f


def _card_settings(settings: Any) -> Any:
    from importlib import metadata
    from pathlib import Path

    from hubsync.core.card import CardSettings
    from hubsync.core.paths import display_path

    template = settings["template"]
    text = None
    if template is not None:
        text = _read_template(Path(template))
    versions = {}
    for name in ("transformers", "peft", "torch", "huggingface_hub", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return CardSettings(
        base_model=settings["base-model"],
        license=settings["license"],
        datasets=settings["datasets"],
        languages=settings["languages"],
        versions=versions,
        template=text,
        template_name=display_path(template) if template else None,
    )


MAX_TEMPLATE_BYTES = 1024 * 1024


def _read_template(path: Path) -> str:
    """A card template: a regular file of text, at most 1 MiB (a device such as /dev/zero never ends)."""
    import stat

    from hubsync.core.errors import TemplateError

    try:
        if not stat.S_ISREG(path.stat().st_mode):  # before opening: a FIFO would block the open itself
            raise TemplateError(display_path(path), "it is not a regular file")
        with path.open("rb") as f:
            data = f.read(MAX_TEMPLATE_BYTES + 1)
    except OSError as exc:
        raise TemplateError(display_path(path), exc.strerror or type(exc).__name__) from exc
    if len(data) > MAX_TEMPLATE_BYTES:
        raise TemplateError(display_path(path), f"it is larger than {MAX_TEMPLATE_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TemplateError(display_path(path), "it is not UTF-8 text") from exc


def push_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options that say where and how checkpoints are pushed, shared by `push` and `watch`. Each is a push
    setting (hubsync.core.config), which a HUBSYNC_* variable or the configuration file can also set."""
    f = card_options(f)
    for option in reversed(
        [
            click.option(
                "--repo", "repo", metavar="NAMESPACE/NAME", callback=_bad_flag_values, help="Repository to push to."
            ),
            click.option(
                "--revision",
                metavar="PATTERN",
                callback=_bad_flag_values,
                help="Branch name, with {step}, {epoch}, {run} [default: checkpoint-{step}].",
            ),
            click.option(
                "--private/--public",
                "private",
                default=None,
                help="Visibility of a repository that has to be created [default: private].",
            ),
            click.option(
                "--training-state",
                type=click.Choice(["drop", "keep"]),
                help="Leave out optimizer, scheduler, RNG state and training_args.bin, or keep them so that "
                "training can resume from the revision [default: drop].",
            ),
            click.option(
                "--training-state-format",
                type=click.Choice(["safe", "pickle"]),
                help="Kept state as safetensors + JSON (pull rebuilds the .pt files), or the pickles as they are "
                "(private repositories only) [default: safe].",
            ),
            click.option(
                "--allow-public-state/--no-allow-public-state",
                default=None,
                help="Allow --training-state keep into a public repository [default: no].",
            ),
            click.option(
                "--tag",
                "tag",
                multiple=True,
                metavar="NAME",
                callback=_bad_flag_values,
                help="Tag the new commit, of the newest checkpoint when several are pushed (repeatable).",
            ),
            _clear_option("tag", "the tags set by HUBSYNC_TAGS or the configuration file"),
            click.option(
                "--release/--no-release",
                default=None,
                help="Also publish the checkpoint's inference files on main [default: no].",
            ),
            click.option(
                "--git-commit",
                metavar="SHA",
                callback=_bad_flag_values,
                help="The training code's git commit, recorded in the card and the commit message "
                "[default: HEAD of the git work tree holding the checkpoint].",
            ),
        ]
    ):
        f = option(f)
    return f


@cli.command()
@click.argument("path", type=click.Path(path_type=str))
@push_options
@click.option(
    "--select",
    metavar="WHICH",
    callback=_bad_flag_values,
    help="For a run folder: latest, best, all, last:N or STEP[,STEP...] [default: latest].",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; touch nothing locally or on the Hub.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON: the plans, then the results.")
@endpoint_option
@token_option
@click.pass_context
def push(
    ctx: click.Context,
    /,
    path: str,
    dry_run: bool,
    as_json: bool,
    endpoint: str | None,
    token: str | None,
    **flags: Any,
) -> None:
    """Push checkpoints to a Hub repository, each as one commit on its own branch.

    PATH is a checkpoint folder, or a run folder holding checkpoint-N folders (then --select picks which).
    The repository is created (private) when missing. Pickled weights are converted to safetensors, the
    placeholder README.md is replaced by a model card rendered from the training record (with a loss
    plot), training-only state is left out unless --training-state keep, and main's README indexes the
    revisions pushed so far.

    Defaults come from hubsync.toml in or beside the run folder, or [tool.hubsync] in the training
    project's pyproject.toml; HUBSYNC_* variables override them, and flags override both.

    \b
    Example:
      hubsync push out/my-run/checkpoint-1000 --repo me/my-model
      hubsync push out/my-run --select all --repo me/my-model --training-state keep --tag v1
    """
    from pathlib import Path

    from hubsync.convert import check_weights
    from hubsync.convert.state import measured_plan
    from hubsync.core.checkpoint import read_checkpoint
    from hubsync.core.errors import CheckpointPushError, HubsyncError
    from hubsync.core.plan import check_distinct_branches, plan_push

    settings, options = _push_options(ctx, Path(path), flags)
    select_given = settings.sources["select"] == "--select"
    targets, passed_over = _targets(Path(path), settings["select"], select_given)
    for folder, missing in passed_over.items():
        echo(f"Passed over {folder}: it is not complete (no {missing})", err=True)
    checkpoints = [read_checkpoint(p) for p in targets]
    # Every plan first: bad input fails before anything is uploaded. Tags name one commit: the newest's.
    untagged = dataclasses.replace(options, tags=())
    plans = [plan_push(c, options if c is checkpoints[-1] else untagged) for c in checkpoints]
    check_distinct_branches(plans)
    plans = [measured_plan(p, c) for p, c in zip(plans, checkpoints, strict=True)]  # training state's real sizes
    for plan, ckpt in zip(plans, checkpoints, strict=True):  # what converting them would refuse, read only
        check_weights(ckpt, plan.conversion)
    if dry_run:
        _dry_run(plans, checkpoints, as_json, endpoint, token, passed_over, settings)
        return

    from hubsync.core.errors import IncompletePushError
    from hubsync.hub.client import HubClient
    from hubsync.hub.push import execute_push, preflight

    _quiet_huggingface_hub(show_progress=not as_json and sys.stderr.isatty())
    hub = HubClient(endpoint, token, on_retry=_report_retry)
    facts = preflight(hub, list(zip(plans, checkpoints, strict=True)))  # every refusal the Hub could make, first
    for repo in facts.values():
        _visibility_note(repo.repo_id, repo.private if repo.exists else None, settings)
    results: list[Any] = []
    for done, (plan, ckpt) in enumerate(zip(plans, checkpoints, strict=True)):
        try:
            result = execute_push(plan, ckpt, hub, checked=done == 0)  # the others: again, after those before
        except HubsyncError as exc:
            partly = isinstance(exc, IncompletePushError)
            if isinstance(exc, IncompletePushError):  # its commit is on the Hub, without all its tags or main's index
                results.append(exc.result)
            if as_json:  # what landed before the failure, for a script to pick up
                failed = {"checkpoint": plan.checkpoint, "error": _scrub(message_for(exc))}
                echo(json.dumps(_push_json(plans, results, passed_over) | {"failed": failed}, indent=2))
            if len(plans) == 1:
                raise
            landed = tuple(p.checkpoint for p in plans[:done]) + (
                (f"{plan.checkpoint} (its commit)",) if partly else ()
            )
            raise CheckpointPushError(plan.checkpoint, landed, tuple(p.checkpoint for p in plans[done:]), exc) from exc
        results.append(result)
        if not as_json:
            verb = "Pushed" if result.created else "Already up to date:"
            echo(f"{verb} {plan.checkpoint} -> {result.repo_id} @ {result.revision}")
            echo(f"  files:  {result.files} ({_size(result.bytes)})")
            if result.deleted:
                echo(f"  deleted: {result.deleted} files the branch held (this push leaves them out)")
            for skipped in plan.skipped:
                echo(f"  skipped: {skipped}")
            echo(f"  commit: {result.commit}")
            if result.tags:
                echo(f"  tags:   {', '.join(result.tags)}")
            if result.released:
                echo("  main:   its inference files are published on main")
            echo(f"  url:    {result.url}")
    if as_json:
        echo(json.dumps(_push_json(plans, results, passed_over), indent=2))


def _visibility_note(repo_id: str, private: bool | None, settings: Any) -> None:
    """Say so when the visibility a user chose cannot apply: the repository exists (`private`, None if not)."""
    source = settings.sources["private"]
    if source == "default" or private is None or private == settings["private"]:
        return
    chosen = ("--private" if settings["private"] else "--public") if source == "--private" else source
    echo(
        f"Note: {repo_id} exists and is {'private' if private else 'public'}; the visibility {chosen} asks for "
        "applies only to a repository that has to be created.",
        err=True,
    )


def _push_json(plans: list[Any], results: list[Any] | None, passed_over: dict[str, str]) -> dict[str, Any]:
    """--json: the plans, the results of what landed (none for a dry run), and the incomplete checkpoints --select
    passed over."""
    return {
        "plans": [p.to_json() for p in plans],
        **({} if results is None else {"results": [r.to_json() for r in results]}),
        "passed_over": [{"checkpoint": c, "missing": m} for c, m in passed_over.items()],
    }


def _push_options(ctx: click.Context, path: Any, flags: dict[str, Any]) -> tuple[Any, Any]:
    """The settings (flags, variables, configuration) and the PushOptions they make."""
    from hubsync.core.plan import PushOptions

    settings = _settings(ctx, path, flags)
    if not settings["repo"]:
        raise click.UsageError("Missing option '--repo' (or `repo` in hubsync.toml / [tool.hubsync], or HUBSYNC_REPO).")
    options = PushOptions(
        settings["repo"],
        settings["revision"],
        private=settings["private"],
        training_state=settings["training-state"],
        card=_card_settings(settings),
        allow_public_state=settings["allow-public-state"],
        state_format=settings["training-state-format"],
        tags=settings["tags"],
        release=settings["release"],
        revision_pattern=True,
        git_commit=settings["git-commit"],
        secret_tokens=tuple(t for t in [ctx.params.get("token")] if t),
    )
    return settings, options


def _seconds(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


@cli.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(file_okay=False, path_type=str))
@push_options
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    callback=_seconds,
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Pause between looks at the run folder.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0),
    callback=_seconds,
    metavar="SECONDS",
    help="Also stop when the run folder has not changed for this long and everything in it is pushed [default: never].",
)
@click.option(
    "--retry-max",
    type=click.FloatRange(min=0),
    callback=_seconds,
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
    in one line and tries again later. It stops, with exit code 0, once the run's final checkpoint
    (global_step = max_steps) is pushed, or after --idle-timeout; on Ctrl-C or SIGTERM it finishes the
    push in progress, saves its record and exits with 130 (press Ctrl-C again to abandon the push: nothing
    is half-committed). A checkpoint that the Trainer deleted (save_total_limit) before it could be pushed
    is reported; one that cannot be read is reported, skipped and tried again when its files change. --tag
    tags the run's final checkpoint; when the watch ends before that, it says how to tag another one. A
    folder checkpoint-N is refused: pass the run folder that holds it.

    \b
    Example:
      hubsync watch out/my-run --repo me/my-model --training-state keep &
      python train.py --output_dir out/my-run
    """
    import threading
    from pathlib import Path

    from hubsync.hub.client import HubClient
    from hubsync.hub.watch import CLIENT_RETRY_DELAYS, Watcher, WatchSettings

    run = Path(run_dir)
    # The configuration is looked up from inside the run folder, which may not exist yet.
    options = _push_options(ctx, run / "checkpoint", flags)[1]  # each value checked now, not hours later
    hub = HubClient(endpoint, token, retry_delays=CLIENT_RETRY_DELAYS, on_retry=_report_retry)
    hub.require_token()
    _quiet_huggingface_hub(show_progress=False)
    if niceness:
        with suppress(OSError, AttributeError):  # not allowed, or not on this platform: normal priority then
            os.nice(niceness)

    stop = threading.Event()
    settings = WatchSettings(run, options, interval=interval, retry_max=retry_max, idle_timeout=idle_timeout)
    watcher = Watcher(settings, hub, lambda event: _report_watch(event, as_json), stop.is_set)

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
        echo(_scrub(json.dumps(summary.to_json(), indent=2)))  # skip reasons come from exceptions
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
    n = len(summary.state.pushed)
    # Without the check against the Hub (it did not answer), only the record speaks for them.
    on_hub = (
        f"{_count(n, 'checkpoint')} on {repo}" if summary.checked else f"{_count(n, 'checkpoint')} recorded for {repo}"
    )
    lost = f"; lost before they were pushed: {_checkpoints(summary.state.lost)}" if summary.state.lost else ""
    skipped = summary.state.skipped
    if skipped:
        lost += f"; skipped (unreadable): {_checkpoints(sorted(skipped))}"
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
        folder = display_path(Path(run_dir) / f"checkpoint-{newest}")
        line += (
            f" To tag checkpoint-{newest} instead: hubsync push {folder} --repo {summary.repo_id} {names} "
            "(with the watch's other options; nothing new is committed to its branch)"
        )
    else:
        line += " Run the watch again with it once the run has finished"
    return line + "."


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _checkpoints(steps: Any) -> str:
    return ", ".join(f"checkpoint-{s}" for s in steps)


def _report_watch(event: object, as_json: bool) -> None:
    """One line for each thing that happens while watching: pushes on stdout, trouble on stderr."""
    from hubsync.core.errors import HubError
    from hubsync.hub.watch import Lost, NotOnHub, Pushed, PushFailed, Skipped, WaitingForRun

    if isinstance(event, Pushed):
        if not as_json:
            r = event.result
            verb = "Pushed" if r.created else "Already on the Hub:"
            echo(f"{verb} checkpoint-{event.step} -> {r.repo_id} @ {r.revision} ({r.commit[:12]})")
    elif isinstance(event, Lost):
        echo(
            f"Lost: {_checkpoints(event.steps)} deleted from the run folder before it was pushed "
            "(the Trainer's save_total_limit?).",
            err=True,
        )
    elif isinstance(event, PushFailed):
        err = event.error
        why = f"{err.endpoint}: {err.detail}" if isinstance(err, HubError) else str(err)
        later = f"trying again in {event.retry_in:g} s"
        what = "the record not checked against it" if event.step is None else f"checkpoint-{event.step} not pushed"
        echo(_one_line(f"Hub unavailable ({why}): {what} yet; {later}."), err=True)
    elif isinstance(event, Skipped):
        echo(
            _scrub(
                f"Skipped checkpoint-{event.step}: {event.reason}. The watch goes on with the others, and tries it "
                "again if its files change."
            ),
            err=True,
        )
    elif isinstance(event, NotOnHub):
        if event.push_again:
            echo(f"Not on the Hub at the recorded commit: {_checkpoints(event.push_again)}; pushing again.", err=True)
        if event.forgotten:
            echo(
                f"Not on the Hub at the recorded commit, and gone from the run folder: {_checkpoints(event.forgotten)}"
                "; dropped from the record.",
                err=True,
            )
    elif isinstance(event, WaitingForRun):
        echo(f"Waiting for {event.run} to appear.", err=True)


def _settings(ctx: click.Context, path: Any, flags: dict[str, Any], names: tuple[str, ...] | None = None) -> Any:
    """The push settings from their flags (those given), HUBSYNC_* variables and the configuration file that
    applies to `path`, each checked; a bad value from a variable or a file exits with 1, naming its source."""
    from hubsync.core.config import PUSH_SETTINGS, find_config, resolve_settings

    given: dict[str, Any] = {}
    for setting in PUSH_SETTINGS:
        if setting.param not in flags or (names is not None and setting.name not in names):
            continue
        cleared = flags.get(f"no_{setting.param}", False)
        if cleared and flags[setting.param]:
            raise click.UsageError(f"{setting.flag} and --no-{setting.flag[2:]} contradict each other; pass one.")
        if cleared:
            given[setting.name] = None  # back to the default, whatever a variable or the file says
        elif ctx.get_parameter_source(setting.param) is click.core.ParameterSource.COMMANDLINE:
            given[setting.name] = flags[setting.param]
    return resolve_settings(given, find_config(_project_folder(path.resolve())), names=names)


def _project_folder(path: Any) -> Any:
    """Where a push's configuration is looked up from: the run folder, never the checkpoint folder being pushed
    (whoever wrote the checkpoint would choose how it is published). PATH is a run folder when it holds
    checkpoint-N folders and is not itself a checkpoint."""
    from hubsync.core.checkpoint import TRAINER_STATE, list_checkpoints

    if path.is_dir() and not (path / TRAINER_STATE).exists() and list_checkpoints(path):
        return path
    return path.parent


def _targets(path: Any, select: str, select_given: bool) -> tuple[list[Any], dict[str, str]]:
    """The checkpoint folders PATH names: itself, or the complete ones --select picks from a run folder; and the
    incomplete ones it passed over (shown path -> what they lack). A `select` from a variable or the
    configuration is for runs: a checkpoint folder is pushed as it is."""
    from hubsync.core.checkpoint import (
        TRAINER_STATE,
        folder_missing_parts,
        list_checkpoints,
        read_checkpoint,
        read_json_file,
    )
    from hubsync.core.errors import SelectionError
    from hubsync.core.paths import display_path
    from hubsync.core.selection import best_step_of, select_complete

    runs = list_checkpoints(path) if path.is_dir() else []
    if not runs or (path / TRAINER_STATE).exists():
        if select_given and select != "latest":
            read_checkpoint(path)  # a folder that is missing, or neither run nor checkpoint, says so first
            raise SelectionError(
                select, f"{display_path(path)} is a checkpoint, not a run folder (leave out --select for it)"
            )
        return [path], {}
    incomplete = {step: " or ".join(m) for step, folder in runs if (m := folder_missing_parts(folder))}
    best = None
    written = [folder / TRAINER_STATE for step, folder in runs if (folder / TRAINER_STATE).exists()]
    if written:  # the newest record names the best checkpoint
        state = read_json_file(written[-1], display_path(written[-1]))
        best = best_step_of(state.get("best_model_checkpoint") if isinstance(state, dict) else None)
    by_step = dict(runs)
    chosen = select_complete(list(by_step), select, best, incomplete)
    passed = {display_path(by_step[s]): why for s, why in chosen.passed_over.items()}
    return [by_step[s] for s in chosen.steps], passed


def _quiet_huggingface_hub(show_progress: bool) -> None:
    """huggingface_hub logs notices and draws progress bars on stderr: bars only on a terminal, notices never."""
    import logging

    from huggingface_hub.utils.tqdm import disable_progress_bars

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    if not show_progress:
        disable_progress_bars()


@cli.command()
@click.argument("repo_id", metavar="REPO")
@click.option("--revision", metavar="REV", help="Branch, tag or commit [default: the newest checkpoint revision].")
@click.option(
    "--to",
    "to",
    type=click.Path(file_okay=False, path_type=str),
    help="Folder that receives checkpoint-<step> [default: out/<repo name>].",
)
@click.option("--force", is_flag=True, help="Replace a checkpoint folder that exists and is not empty.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@endpoint_option
@token_option
def pull(
    repo_id: str,
    revision: str | None,
    to: str | None,
    force: bool,
    as_json: bool,
    endpoint: str | None,
    token: str | None,
) -> None:
    """Restore a checkpoint revision so that training resumes from it.

    Resolves REV to one commit, downloads its files, checks each against the Hub's sha256 or git blob id,
    and writes DIR/checkpoint-<step> whole, for Trainer.train(resume_from_checkpoint=...).

    \b
    Example:
      hubsync pull me/my-model --revision checkpoint-1000
    """
    import json as json_module
    from pathlib import Path

    from hubsync.core.checkpoint import loads_json, parse_trainer_state
    from hubsync.core.conversion import resume_missing
    from hubsync.core.errors import NoCheckpointRevisionError
    from hubsync.core.paths import display_path
    from hubsync.core.plan import check_repo_id
    from hubsync.core.pull import plan_pull, step_of
    from hubsync.hub.client import HubClient
    from hubsync.hub.pull import already_pulled, check_target, execute_pull
    from hubsync.hub.revisions import checkpoint_revisions

    check_repo_id(repo_id)
    _quiet_huggingface_hub(show_progress=not as_json and sys.stderr.isatty())
    hub = HubClient(endpoint, token, on_retry=_report_retry)
    if revision is None:
        known = [r for r in checkpoint_revisions(hub, repo_id) if r.step is not None]
        if not known:
            raise NoCheckpointRevisionError(repo_id)
        revision = known[-1].revision
    commit = hub.resolve_commit(repo_id, revision)
    entries = hub.tree(repo_id, commit, revision)
    step = step_of(revision)
    if any(e.path == "trainer_state.json" for e in entries):
        try:
            state = parse_trainer_state(loads_json(hub.read_file(repo_id, commit, "trainer_state.json") or b""))
            step = state.global_step if state.global_step is not None else step
        except ValueError:
            pass  # a damaged trainer_state.json is pulled as it is; the folder is named by the revision
    plan = plan_pull(repo_id, revision, commit, entries, Path(to or Path("out") / repo_id.split("/")[-1]), step)
    if already_pulled(plan):
        if as_json:
            already = {**plan.to_json(), "path": display_path(plan.target), "already_there": True}
            echo(json_module.dumps(already, indent=2))
        else:
            echo(f"Already there: {repo_id} @ {revision} ({commit[:12]}) in {display_path(plan.target)}")
        return
    check_target(plan, force)
    target = execute_pull(plan, hub, force=force)
    if as_json:
        echo(json_module.dumps({**plan.to_json(), "path": display_path(target), "already_there": False}, indent=2))
        return
    echo(f"Pulled {repo_id} @ {revision} ({commit[:12]}) -> {display_path(target)}")
    echo(f"  files: {len(plan.files)} ({_size(plan.total_bytes)}), each verified against the Hub's hashes")
    if plan.resumable:
        echo(f'  resume: Trainer.train(resume_from_checkpoint="{display_path(target)}")')
    else:
        missing = " or ".join(resume_missing(frozenset(f.path for f in plan.files)))
        echo(f"  note: this revision is not resumable: it has no {missing}")


@cli.command(name="ls")
@click.argument("repo_id", metavar="REPO")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@endpoint_option
@token_option
def ls_command(repo_id: str, as_json: bool, endpoint: str | None, token: str | None) -> None:
    """List a repository's checkpoint revisions: step, epoch, metrics, resumable or not, commit, date.

    \b
    Example:
      hubsync ls me/my-model
    """
    from hubsync.core.plan import check_repo_id
    from hubsync.hub.client import HubClient
    from hubsync.hub.revisions import checkpoint_revisions

    check_repo_id(repo_id)
    _quiet_huggingface_hub(show_progress=False)
    revisions = checkpoint_revisions(HubClient(endpoint, token, on_retry=_report_retry), repo_id)
    if as_json:
        echo(json.dumps([r.to_json() for r in revisions], indent=2))
        return
    if not revisions:
        echo(f"{repo_id} has no checkpoint revisions yet.")
        return
    names = sorted({m for r in revisions for m in r.metrics})
    header = ["revision", "step", "epoch", *names, "resumable", "commit", "date"]
    rows = [
        [
            r.revision,
            "" if r.step is None else str(r.step),
            "" if r.epoch is None else f"{r.epoch:.2f}",
            *[f"{r.metrics[m]:.4f}" if m in r.metrics else "" for m in names],
            "yes" if r.resumable else "no",
            r.commit[:12],
            (r.date or "")[:19].replace("T", " "),
        ]
        for r in revisions
    ]
    table = [[one_line(cell) for cell in row] for row in [header, *rows]]  # names from the Hub, escaped: then measured
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@cli.command()
@click.argument("repo_id", metavar="REPO")
@click.option(
    "--keep", required=True, type=click.IntRange(min=0), metavar="N", help="Keep the N newest checkpoint branches."
)
@click.option(
    "--keep-best", is_flag=True, help="Also keep the best checkpoint (trainer_state's best_model_checkpoint)."
)
@click.option("--keep-tagged", is_flag=True, help="Also keep every branch whose head commit a tag points to.")
@click.option("--dry-run", is_flag=True, help="Print the plan; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON: the plan, then the result.")
@endpoint_option
@token_option
def prune(
    repo_id: str,
    keep: int,
    keep_best: bool,
    keep_tagged: bool,
    dry_run: bool,
    as_json: bool,
    endpoint: str | None,
    token: str | None,
) -> None:
    """Delete a repository's checkpoint branches beyond the newest N.

    Newest is by step. main is never deleted, nor with --keep-best the best checkpoint (the one that the
    newest checkpoint's trainer_state.json names as best_model_checkpoint), nor with --keep-tagged a branch
    whose head commit is tagged. Only branches are deleted, never tags. The plan is printed first; then
    main's index and README stop listing the deleted revisions, in one commit.

    \b
    Example:
      hubsync prune me/my-model --keep 3 --keep-best --dry-run
    """
    from hubsync.core.plan import check_repo_id
    from hubsync.core.prune import plan_prune
    from hubsync.hub.client import HubClient
    from hubsync.hub.prune import execute_prune, prune_inputs

    check_repo_id(repo_id)
    _quiet_huggingface_hub(show_progress=False)
    hub = HubClient(endpoint, token, on_retry=_report_retry)
    hub.require_token()  # deleting needs one; without it a private repository would look missing
    found = prune_inputs(hub, repo_id)
    plan = plan_prune(
        repo_id,
        found.revisions,
        keep=keep,
        keep_best=keep_best,
        keep_tagged=keep_tagged,
        tags=found.tags,
        best_step=found.best_step,
    )
    if not as_json:
        _print_prune_plan(plan, keep_best, dry_run)
    if dry_run:
        if as_json:
            echo(json.dumps({"plan": plan.to_json()}, indent=2))
        return
    result = execute_prune(plan, hub)
    if as_json:
        echo(json.dumps({"plan": plan.to_json(), "result": result.to_json()}, indent=2))
        return
    count = len(result.deleted)
    echo(f"Deleted {count} branch{'es' if count != 1 else ''} of {repo_id}.")
    if result.index_commit:
        echo(f"  main:   the index no longer lists them (commit {result.index_commit})")


def _print_prune_plan(plan: Any, keep_best: bool, dry_run: bool) -> None:
    kept, deleted = len(plan.keep), len(plan.delete)
    echo(f"Plan{' (dry run)' if dry_run else ''}: {plan.repo_id}: keep {kept}, delete {deleted}")
    rows = [("keep", d) for d in plan.keep] + [("delete", d) for d in plan.delete]
    rows.sort(key=lambda row: (row[1].step if row[1].step is not None else -1, row[1].revision), reverse=True)
    width = max([len(d.revision) for _, d in rows], default=0)
    for action, d in rows:
        step = "" if d.step is None else f"step {d.step}"
        why = f"  ({', '.join(d.reasons)})" if d.reasons else ""
        echo(f"  {action:<6}  {d.revision:<{width}}  {step}{why}".rstrip())
    if keep_best and plan.best_step is None:
        echo("  note:  no best checkpoint is recorded (trainer_state.json's best_model_checkpoint is empty)")
    if dry_run:
        echo("Nothing was deleted (dry run).")


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=str),
    help="Write the card to this file, and its plot beside it [default: print the card].",
)
@click.option(
    "--repo", "repo_id", metavar="NAMESPACE/NAME", help="Repository named in the card [default: a placeholder]."
)
@click.option("--revision", metavar="BRANCH", help="Revision named in the card [default: the folder's name].")
@card_options
@click.pass_context
def card(
    ctx: click.Context,
    /,
    checkpoint: str,
    output: str | None,
    repo_id: str | None,
    revision: str | None,
    **flags: Any,
) -> None:
    """Render a checkpoint's model card without pushing it.

    \b
    Example:
      hubsync card out/my-run/checkpoint-1000 -o card/README.md
    """
    from pathlib import Path

    from hubsync.core.card import card_files
    from hubsync.core.checkpoint import read_checkpoint
    from hubsync.core.config import CARD_SETTINGS
    from hubsync.core.errors import OutputInsideCheckpointError
    from hubsync.core.metadata import check_card_metadata
    from hubsync.core.paths import display_path
    from hubsync.core.plan import check_branch_name, check_repo_id
    from hubsync.files import lies_within, write_file_atomic

    ckpt = read_checkpoint(checkpoint)
    settings = _card_settings(_settings(ctx, ckpt.path, flags, names=CARD_SETTINGS))
    repo = check_repo_id(repo_id or f"your-namespace/{ckpt.run_name or ckpt.name}")
    files = card_files(ckpt, settings, repo, check_branch_name(revision or ckpt.name))
    check_card_metadata(files["README.md"], settings.template_name or "the packaged card template")  # as push does
    if output is None:
        echo(files["README.md"].decode(), nl=False)
        return
    target = Path(output)
    if lies_within(target, ckpt.path):
        raise OutputInsideCheckpointError(display_path(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(target, files.pop("README.md"))
    echo(f"Wrote {display_path(target)}")
    for name, data in files.items():
        write_file_atomic(target.parent / name, data)
        echo(f"Wrote {display_path(target.parent / name)}")


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(file_okay=False, path_type=str),
    help="Folder for the converted files [default: safetensors-<checkpoint name>, beside the checkpoint].",
)
@click.option("--force", is_flag=True, help="Replace files in an output folder that is not empty.")
def convert(checkpoint: str, output: str | None, force: bool) -> None:
    """Convert a checkpoint's pickled weights to safetensors, verified bit for bit.

    adapter_model.bin becomes adapter_model.safetensors, pytorch_model.bin model.safetensors, and
    pytorch_model-0000x-of-0000N.bin shards model-0000x-of-0000N.safetensors with a rewritten index.
    Configs and tokenizer files are copied beside them; training state is not. The pickles are read
    without running any code from them, and the checkpoint folder is never modified.

    \b
    Example:
      hubsync convert out/my-run/checkpoint-1000
    """
    from pathlib import Path

    from hubsync.convert import convert_checkpoint, default_output_dir
    from hubsync.core.checkpoint import read_checkpoint
    from hubsync.core.conversion import plan_conversion
    from hubsync.core.paths import display_path

    ckpt = read_checkpoint(checkpoint)
    plan = plan_conversion(ckpt)
    if not plan.conversions:
        echo(f"Nothing to convert: {ckpt.display} holds no pickled weights (adapter_model.bin, pytorch_model*.bin).")
        return
    out_dir = Path(output) if output else default_output_dir(ckpt)
    total = sum(f.size for f in ckpt.files if f.relpath in {c.source for c in plan.conversions})
    with _progress(total, "Converting") as advance:
        done = convert_checkpoint(ckpt, plan, out_dir, force=force, progress=advance)
    for converted in done:
        aliases = f", {len(converted.aliases)} tied names recorded as aliases" if converted.aliases else ""
        echo(
            f"{converted.source} -> {converted.target}: {converted.tensors} tensors, "
            f"{_size(converted.bytes)}, verified{aliases}"
        )
    echo(f"Wrote {display_path(out_dir)}")


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal's stderr; nothing when stderr is not a terminal."""
    if not sys.stderr.isatty() or total <= 0:
        yield lambda n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


def _dry_run(
    plans: list[Any],
    checkpoints: list[Any],
    as_json: bool,
    endpoint: str | None,
    token: str | None,
    passed_over: dict[str, str],
    settings: Any,
) -> None:
    """Check what the push would check locally, ask the Hub (read only) what it holds, and print the plans."""
    from hubsync.convert.compare import check_superseded
    from hubsync.hub.client import HubClient
    from hubsync.hub.preview import preview_push

    for plan, ckpt in zip(plans, checkpoints, strict=True):
        check_superseded(ckpt, plan.conversion)  # as the push would, before it converts anything
    from hubsync.core.errors import HubError, TagExistsError
    from hubsync.hub.push import preflight

    _quiet_huggingface_hub(show_progress=False)
    hub = HubClient(endpoint, token, retry_delays=(0.5,), on_retry=_report_retry, max_wait=2.0)  # it waits little
    if hub.token:
        # What the push would refuse (public state, a tag elsewhere), refused here too; a Hub that does not
        # answer leaves that unknown, and the preview below says so.
        try:
            preflight(hub, list(zip(plans, checkpoints, strict=True)))
        except HubError as exc:
            if isinstance(exc, TagExistsError):
                raise
    previews: list[Any] = []
    for plan, ckpt in zip(plans, checkpoints, strict=True):
        previews.append(preview_push(plan, ckpt, hub) if not previews or previews[-1].looked else previews[-1])
    if previews and previews[0].looked:
        _visibility_note(plans[0].repo_id, previews[0].private, settings)
    if as_json:
        shown = [p.to_json() | {"hub": v.to_json()} for p, v in zip(plans, previews, strict=True)]
        echo(json.dumps(_push_json(plans, None, passed_over) | {"plans": shown}, indent=2))
        return
    for plan, preview in zip(plans, previews, strict=True):
        _print_plan(plan, preview)


def _repo_line(plan: Any, preview: Any) -> str:
    visibility = "private" if plan.private else "public"
    if not preview.looked:
        return (
            f"{plan.repo_id}: not known whether it exists ({preview.reason}); a push creates it {visibility} if missing"
        )
    if not preview.exists:
        return f"{plan.repo_id} will be created, {visibility}"
    branch = "exists" if preview.branch_exists else "will be created"
    return f"{plan.repo_id} exists ({'private' if preview.private else 'public'}); branch {plan.revision} {branch}"


def _print_plan(plan: Any, preview: Any) -> None:
    echo(f"Plan (dry run): {plan.checkpoint} -> {plan.repo_id} @ {plan.revision}")
    echo(f"  repo    {_repo_line(plan, preview)}")
    for upload in plan.uploads:
        if upload.path_in_repo in preview.unchanged:
            echo(f"  same    {upload.path_in_repo}  (unchanged: the branch already holds it)")
            continue
        how = (
            f"converted from {upload.converted_from}, compared with the branch when pushed, "
            + ("" if _measured_size(upload) else "about ")
            if upload.converted_from
            else "generated, "
            if upload.generated
            else ""
        )
        echo(f"  upload  {upload.path_in_repo}  ({how}{_size(upload.size)})")
    for dropped in plan.dropped:
        echo(f"  drop    {dropped}  (training state; --training-state keep uploads it)")
    for skipped in plan.skipped:
        echo(f"  skip    {skipped}")
    for pickled in plan.conversion.superseded:
        echo(f"  skip    {pickled}  (the safetensors file beside it holds the same tensors)")
    for path in preview.delete:
        echo(f"  delete  {path}  (the branch holds it; this push leaves it out)")
    changed = [u for u in plan.uploads if u.path_in_repo not in preview.unchanged]
    exact = all(_measured_size(u) for u in changed if u.converted_from)
    size = _size(sum(u.size for u in changed))
    deletes = f"; {len(preview.delete)} to delete" if preview.delete else ""
    echo(f"  total   {len(changed)} files to upload, {'' if exact else 'about '}{size}{deletes}")
    if preview.stops_resumable:
        keep = "; --training-state keep keeps it" if plan.training_state == "drop" else ""
        lacks = ", ".join(preview.lacks_after)
        echo(f"  resume  resumable on the Hub now, not after this push (no {lacks}{keep})")
    echo(f"  commit  {plan.commit_message}")
    if plan.tags:
        echo(f"  tags    {', '.join(plan.tags)}")
    if plan.release:
        echo(f"  main    also gets {', '.join(plan.release)}")


def _measured_size(upload: Any) -> bool:
    """Whether a converted file's size is measured (training state) rather than its source's (weights)."""
    from hubsync.core.conversion import STATE_FILE_RE

    return upload.converted_from is not None and STATE_FILE_RE.match(upload.converted_from) is not None


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


@cli.command()
@click.option(
    "--root",
    required=True,
    type=click.Path(file_okay=False, path_type=str),
    help="Folder that holds the Hub's repositories (created when missing).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=0, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on; 0 picks a free one."
)
@click.option("--user", default="me", show_default=True, help="The user the token belongs to.")
@click.option("--token", help="Token to accept [default: the one stored under --root, else a new one].")
@click.option("--verbose", is_flag=True, help="Log every request to stderr.")
@click.option(
    "--public-url",
    help="Address clients reach the server at through a proxy in front of it, for the links it hands out (the "
    "listening address is then printed on stderr) [default: http://HOST:PORT].",
)
def localhub(
    root: str, host: str, port: int, user: str, token: str | None, verbose: bool, public_url: str | None
) -> None:
    """Serve a Hub-compatible server on this machine, storing everything under --root.

    Prints HF_ENDPOINT=... and HF_TOKEN=..., one per line, for `eval`.

    \b
    Example:
      hubsync localhub --root /tmp/hub --port 8000
    """
    from hubsync.localhub import LocalHubServer, Store
    from hubsync.localhub.store import StoreError

    try:
        store = Store(root)
        token = store.ensure_user(user, token)
        if public_url is not None and not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:-]+(?::[0-9]+)?/?", public_url):
            raise click.BadParameter("give a URL such as http://hub.example:8000", param_hint="--public-url")
        server = LocalHubServer(
            store,
            host,
            port,
            verbose=verbose,
            public_url=public_url,
            on_handler_error=lambda error: echo(f"localhub: internal error, a bug: {error.summary}", err=True),
        )
    except StoreError as exc:
        raise click.UsageError(exc.message) from exc
    except OSError as exc:
        if exc.filename:
            raise click.UsageError(f"cannot use --root {display_path(root)} ({exc.strerror})") from exc
        raise click.UsageError(f"cannot listen on {host}:{port} ({exc.strerror})") from exc
    if store.tightened:
        echo(f"localhub: made {store.tightened} entries under --root private to this account", err=True)
    if public_url is not None:  # HF_ENDPOINT names the proxy; where to point it is said here, off stdout
        echo(f"localhub: listening on http://{server.url_host} (clients use {server.url})", err=True)
    echo(f"HF_ENDPOINT={server.url}")
    echo(f"HF_TOKEN={token}")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _report_retry(reason: str, pause: float) -> None:
    """A Hub call that will be tried again: said on stderr, so that a wait is never silent."""
    echo(f"Hub: {reason}; retrying in {pause:.2g} s", err=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # a kill cleans up like Ctrl-C: no temp files left behind
    cli(prog_name="hubsync")
