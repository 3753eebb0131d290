"""The `hubsync` command line: one module per command, each parsing its flags, calling one library function
(hubsync.api) and printing what it returns. Only this package prints and chooses exit codes; the library raises."""

from __future__ import annotations

from . import card, convert, localhub, ls, prune, pull, push, tag, watch  # noqa: F401  (each registers its command)
from .app import cli, main
from .output import echo

__all__ = ["cli", "echo", "main"]
