"""Jinja2 templates: packaged inside the wheel as hubsync/templates, or found in a source checkout.

Every template renders in a sandbox that bounds what one expression may build (`"x" * 10**9`, `2 ** 10**9`, a
huge `range`) and how much text it may write. A user's template is code whose author may not be the user (a
template in a run folder that came from elsewhere), and loops or string doubling can still run for ever or fill
the memory: it renders in a child process with limits on CPU time, memory and wall time.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterable
from contextlib import suppress
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox

from .errors import RenderedTooLargeError
from .escape import finalize, with_filters

_PACKAGE = Path(__file__).resolve().parent.parent

MAX_OUTPUT = 1024 * 1024  # characters a template may write, and the largest value one expression may build
MAX_CPU_S = 5  # CPU seconds a user's template may take
MAX_WALL_S = 15  # and seconds of wall time (a machine shared with others)
MAX_MEMORY = 1024 * 1024 * 1024  # bytes of address space the rendering process may hold beyond its start


class RenderError(Exception):
    """A user's template failed: `str()` says how, for a one-line message."""


class TemplateLimitError(RenderError):
    """A template went past one of the bounds: `str()` says which."""


def templates_dir() -> Path:
    """hubsync/templates in an installed wheel; the checkout's templates/ in a source or editable install."""
    for candidate in (_PACKAGE / "templates", _PACKAGE.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("hubsync's templates are missing from this installation")


class BoundedSandbox(jinja2.sandbox.SandboxedEnvironment):
    """Jinja2's sandbox (no attribute games, `range` of at most 100000 items), and no operator that builds a
    value larger than the output may be: a repetition or a power is checked before it runs."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        sized = (str, bytes, list, tuple)
        built = 0  # the length of the value the operator would build
        if operator == "*" and isinstance(left, sized) and isinstance(right, int):
            built = len(left) * right
        elif operator == "*" and isinstance(right, sized) and isinstance(left, int):
            built = len(right) * left
        elif operator == "+" and isinstance(left, sized) and isinstance(right, sized):
            built = len(left) + len(right)
        if built > MAX_OUTPUT:
            raise TemplateLimitError(f"an expression builds more than {MAX_OUTPUT >> 10} KiB")
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 4096:
            raise TemplateLimitError("an expression raises a number to a power larger than 4096")
        return super().call_binop(context, operator, left, right)


def _bounded_text(chunks: Iterable[str]) -> str:
    out: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_OUTPUT:
            raise TemplateLimitError(f"it writes more than {MAX_OUTPUT >> 10} KiB of text")
        out.append(chunk)
    return "".join(out)


@cache
def _environment() -> jinja2.Environment:
    return with_filters(
        BoundedSandbox(
            loader=jinja2.FileSystemLoader(templates_dir()),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,  # Markdown, not HTML: escape.finalize escapes each value as Markdown text
            finalize=finalize,
        )
    )


def render(name: str, **context: Any) -> str:
    """A packaged template: hubsync's own code, but the values come from checkpoints and Hubs; bounded alike.
    Past a bound it is those values that are too large: RenderedTooLargeError."""
    try:
        return _bounded_text(_environment().get_template(name).generate(**context))
    except TemplateLimitError as exc:
        raise RenderedTooLargeError(name.removesuffix(".j2"), str(exc)) from exc


@cache
def _sandbox() -> jinja2.sandbox.SandboxedEnvironment:
    # A user's template escapes alike (`raw` opts out): its values come from the same files.
    return with_filters(
        BoundedSandbox(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False, finalize=finalize
        )
    )


def render_file(text: str, **context: Any) -> str:
    """Render a user's template text in the bounded sandbox, in a child process with CPU, memory and wall time
    limits. TemplateLimitError when it goes past one; jinja2.TemplateSyntaxError, or RenderError naming the error it
    raised, when it fails."""
    _sandbox().parse(text)  # a syntax error is found here, cheaply, with its line
    limits = f"{MAX_CPU_S} s of CPU, {MAX_MEMORY >> 20} MiB of memory and {MAX_OUTPUT >> 10} KiB of text"
    payload = pickle.dumps((text, context, MAX_CPU_S))  # hubsync's own values, to its own child
    try:
        done = subprocess.run(
            [sys.executable, "-c", "from hubsync.core.render import _child; _child()"],
            input=payload,
            capture_output=True,
            timeout=MAX_WALL_S,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise TemplateLimitError(f"it ran past {MAX_WALL_S} s (templates are bounded to {limits})") from exc
    if done.returncode != 0 or not done.stdout:
        # SIGXCPU (or SIGKILL past the hard limit) is the CPU bound; anything else ran out of what it may hold.
        what = f"{MAX_CPU_S} s of CPU" if done.returncode < 0 else f"{MAX_MEMORY >> 20} MiB of memory"
        raise TemplateLimitError(f"it ran past {what} (templates are bounded to {limits})")
    try:  # JSON, not a pickle: the child ran a template that may be hostile, so its answer is read as data
        kind, value = json.loads(done.stdout)
    except (ValueError, TypeError) as exc:
        raise RenderError("the template's renderer gave an unreadable answer") from exc
    if kind == "ok":
        return str(value)
    if kind == "limit":
        raise TemplateLimitError(f"{value} (templates are bounded to {limits})")
    raise RenderError(value)


def _child() -> None:
    """The rendering process: limits first, then the template; the outcome as JSON on stdout."""
    import resource

    text, context, cpu_s = pickle.loads(sys.stdin.buffer.read())
    start = 0  # the address space the interpreter already holds: the bound is on what the template adds
    with suppress(OSError, ValueError, IndexError):
        start = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (start + MAX_MEMORY, start + MAX_MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    try:
        outcome: tuple[str, str] = ("ok", _bounded_text(_sandbox().from_string(text).generate(**context)))
    except TemplateLimitError as exc:
        outcome = ("limit", str(exc))
    except MemoryError:
        outcome = ("limit", f"it ran past {MAX_MEMORY >> 20} MiB of memory")
    except RecursionError:
        outcome = ("limit", "it nests or recurses too deeply")
    except Exception as exc:  # a user's template can fail at run time in any way: 1/0, a bad format, ...
        outcome = ("error", f"{type(exc).__name__}: {exc}")
    sys.stdout.buffer.write(json.dumps(outcome).encode())
    sys.stdout.buffer.flush()
    os._exit(0)
