"""How local paths are shown to people: never absolute, since those name users and machines."""

from __future__ import annotations

import os
from pathlib import Path


def display_path(path: str | os.PathLike[str]) -> str:
    """`path` relative to the working directory when it lies below it, else `…/` and its last two parts."""
    absolute = Path(os.path.abspath(path))
    cwd = Path.cwd()
    if absolute == cwd:
        return "."
    if absolute.is_relative_to(cwd):
        return absolute.relative_to(cwd).as_posix()
    return "…/" + "/".join(absolute.parts[-2:])
