"""The `hubsync` command group: how every command's failure is shown (one line, exit code 1) and `main`."""

from __future__ import annotations

import json
import os
import signal
import sys
from contextlib import suppress
from typing import Any

import click

from hubsync import __version__
from hubsync.core.config import debug_wanted
from hubsync.core.errors import HubsyncError
from hubsync.core.paths import display_path

from .errors import message_for
from .output import echo, one_line

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
            raise click.UsageError(one_line(message)) from None
        except HubsyncError as exc:
            if debug_wanted(os.environ):
                raise
            echo(one_line(message_for(exc)), err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            echo("Interrupted: nothing was left half-written.", err=True)
            ctx.exit(130)
        except OSError as exc:  # the machine said no: a full disk, a folder where a file should go, permissions
            if debug_wanted(os.environ):
                raise
            where = f" ({display_path(exc.filename)})" if exc.filename else ""
            reason = exc.strerror or type(exc).__name__
            echo(one_line(f"Error: {reason}{where}. Check the path and the free space, then run it again."), err=True)
            ctx.exit(1)


@click.group(cls=HubsyncGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hubsync")
def cli() -> None:
    """Push Trainer/PEFT checkpoints to the Hugging Face Hub as revisions.

    \b
    Example:
      hubsync push out/my-run/checkpoint-1000 --repo me/my-model
    """


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # a kill cleans up like Ctrl-C: no temp files left behind
    cli(prog_name="hubsync")
