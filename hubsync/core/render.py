"""Jinja2 templates: packaged inside the wheel as hubsync/templates, or found in a source checkout."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox

from .escape import finalize, with_filters

_PACKAGE = Path(__file__).resolve().parent.parent


def templates_dir() -> Path:
    """hubsync/templates in an installed wheel; the checkout's templates/ in a source or editable install."""
    for candidate in (_PACKAGE / "templates", _PACKAGE.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("hubsync's templates are missing from this installation")


@cache
def _environment() -> jinja2.Environment:
    return with_filters(
        jinja2.Environment(
            loader=jinja2.FileSystemLoader(templates_dir()),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,  # Markdown, not HTML: escape.finalize escapes each value as Markdown text
            finalize=finalize,
        )
    )


def render(name: str, **context: Any) -> str:
    return _environment().get_template(name).render(**context)


@cache
def _sandbox() -> jinja2.sandbox.SandboxedEnvironment:
    return with_filters(
        jinja2.sandbox.SandboxedEnvironment(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
        )
    )


def render_file(text: str, **context: Any) -> str:
    """Render a user's template text, in Jinja2's sandbox (a template file is code), with the same settings."""
    return _sandbox().from_string(text).render(**context)
