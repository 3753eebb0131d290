"""Defaults from a training project's configuration: `[tool.hubsync]` in pyproject.toml, or hubsync.toml.

Read when a command runs, never at import. Flags override HUBSYNC_* variables, which override the file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .paths import display_path

# Setting name -> (type, HUBSYNC_* variable). Lists are comma-separated in variables.
SETTINGS: dict[str, tuple[type, str]] = {
    "repo": (str, "HUBSYNC_REPO"),
    "select": (str, "HUBSYNC_SELECT"),
    "revision": (str, "HUBSYNC_REVISION"),
    "training-state": (str, "HUBSYNC_TRAINING_STATE"),
    "tags": (list, "HUBSYNC_TAGS"),
    "template": (str, "HUBSYNC_TEMPLATE"),
    "license": (str, "HUBSYNC_LICENSE"),
    "base-model": (str, "HUBSYNC_BASE_MODEL"),
    "datasets": (list, "HUBSYNC_DATASETS"),
    "languages": (list, "HUBSYNC_LANGUAGES"),
    "private": (bool, "HUBSYNC_PRIVATE"),
}


@dataclass(frozen=True)
class FileConfig:
    values: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None  # the file, as shown to people
    folder: Path | None = None  # relative paths in the file (template) are relative to this


def find_config(start: Path) -> FileConfig:
    """hubsync.toml in the run folder or beside it; else the nearest pyproject.toml with [tool.hubsync] above it."""
    run = start if start.is_dir() else start.parent
    for candidate in (run / "hubsync.toml", run.parent / "hubsync.toml"):
        if candidate.is_file():
            return FileConfig(
                _check(_read(candidate), display_path(candidate)), display_path(candidate), candidate.parent
            )
    for folder in (run, *run.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            section = _read(candidate).get("tool", {}).get("hubsync")
            if isinstance(section, dict):
                shown = f"{display_path(candidate)} [tool.hubsync]"
                return FileConfig(_check(section, shown), shown, folder)
            if (folder / ".git").exists():
                break  # the training project's root: look no further up
    return FileConfig()


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(display_path(path), str(exc)) from exc


def _check(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        name = key.replace("_", "-")
        if name not in SETTINGS:
            raise ConfigError(source, f"unknown setting {key!r} (known: {', '.join(SETTINGS)})")
        kind = SETTINGS[name][0]
        if kind is list and isinstance(value, str):
            value = [value]
        if not isinstance(value, kind) or (isinstance(value, list) and not all(isinstance(v, str) for v in value)):
            raise ConfigError(source, f"{key} must be {'a list of strings' if kind is list else kind.__name__}")
        out[name] = value
    return out


def env_value(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """A setting from its HUBSYNC_* variable, or None when unset."""
    kind, variable = SETTINGS[name]
    raw = (os.environ if environ is None else environ).get(variable)
    if raw is None or raw == "":
        return None
    if kind is list:
        return [v.strip() for v in raw.split(",") if v.strip()]
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(variable, f"{raw!r} is not true or false")
    return raw
