"""What the command line prints, and how: every line escaped, no token, no password, no absolute local path."""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from hubsync.core.escape import safe_text
from hubsync.core.paths import display_path

_URL_USERINFO = re.compile(r"(\w+://)[^/\s@]+@")
# An absolute POSIX or Windows path as libraries quote them in messages; checked against the disk below.
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.…])(?:/|[A-Za-z]:\\)[^\s'\"`,;()]+")


def _secrets() -> list[str]:
    """Values that must never reach the terminal, whatever the message."""
    from hubsync.core.secrets import saved_tokens

    ctx = click.get_current_context(silent=True)
    found = [os.environ.get("HF_TOKEN") or "", *saved_tokens()]  # and the token `hf auth login` saved
    while ctx is not None:
        found.append(str(ctx.params.get("token") or ""))
        ctx = ctx.parent
    return [s for s in found if len(s) >= 8]


def scrub(text: str) -> str:
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


def one_line(text: str) -> str:
    """An error as people read it: scrubbed, and one line whatever a value in it held."""
    return scrub(text).replace("\n", "\\n").replace("\t", "\\t")


def _local_path(match: re.Match[str]) -> str:
    """A local path shown relative, or shortened; anything that is not one (a URL path) is left as it is."""
    candidate = Path(match.group(0))
    if len(candidate.parts) >= 3 and candidate.parent.exists():
        return display_path(candidate)
    return match.group(0)


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def checkpoints(steps: object) -> str:
    return ", ".join(f"checkpoint-{s}" for s in steps)  # type: ignore[attr-defined]


def report(event: object) -> None:
    """What the library reports while a command runs, for every command: a retried Hub call, a visibility note."""
    from hubsync.api import RateLimited, Retrying, VisibilityNote

    if isinstance(event, Retrying):
        report_retry(event.reason, event.pause)
    elif isinstance(event, RateLimited):
        report_rate_limit(event.pause)
    elif isinstance(event, VisibilityNote):
        asked = "--private" if event.asked_private else "--public"
        chosen = asked if event.source == "--private" else event.source
        echo(
            f"Note: {event.repo_id} exists and is {'private' if event.private else 'public'}; the visibility "
            f"{chosen} asks for applies only to a repository that has to be created.",
            err=True,
        )


def report_retry(reason: str, pause: float) -> None:
    """A Hub call that will be tried again: said on stderr, so that a wait is never silent."""
    echo(f"Hub: {reason}; retrying in {pause:.2g} s", err=True)


def report_rate_limit(pause: float) -> None:
    """A wait the Hub's rate limit asks for: said on stderr, in whole seconds (never fewer than are waited)."""
    echo(f"rate-limited by the Hub, waiting {math.ceil(pause)} s", err=True)


def quiet_huggingface_hub(show_progress: bool = True) -> None:
    """huggingface_hub logs notices and draws progress bars on stderr: bars only where `show_progress`, notices
    never (what matters reaches hubsync's own lines)."""
    import logging

    from huggingface_hub.utils.tqdm import disable_progress_bars

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    if not show_progress:
        disable_progress_bars()


def progress_bars() -> bool:
    """huggingface_hub's progress bars: only on a terminal."""
    return sys.stderr.isatty()


@contextmanager
def progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal's stderr; nothing when stderr is not a terminal."""
    if not sys.stderr.isatty() or total <= 0:
        yield lambda n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update
