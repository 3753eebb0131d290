"""Push settings: one table of what a user can set per project, and the rule that resolves each from its sources.

Each setting has a flag, a key in `hubsync.toml` / `[tool.hubsync]`, a `HUBSYNC_*` variable, a type, its allowed
values and a default. A value is taken from the flag, else the variable, else the file, else the default, and it
is checked the same way whatever its source: a bad value is a SettingError that names where it came from.
Read when a command runs, never at import.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import (
    ConfigError,
    HubsyncError,
    InvalidLicenseError,
    InvalidRepoIdError,
    SettingError,
    UnknownVariableError,
    WiderExposureError,
)
from .metadata import check_license
from .paths import display_path
from .plan import check_repo_id, check_tag_name
from .selection import check_revision_pattern, check_select
from .shards import DEFAULT_MAX_SHARD_SIZE, parse_size

_HUB_ID_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")
_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*\Z")
_GIT_COMMIT_RE = re.compile(r"^[0-9a-fA-F]{7,64}\Z")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# How long one Hub call waits out the Hub's rate limit, in all. huggingface.co counts requests in fixed 5-minute
# windows and says when the window resets (`RateLimit: ...;t=<seconds>`): a burst that meets the limit early in a
# window is asked to wait up to 300 s, and a call whose retry lands just as the next window fills again up to 300
# more. 600 s waits out both; a rate limit on commits (counted by the hour) asks for more, which the user can allow.
DEFAULT_MAX_WAIT = 600.0
MOST_MAX_WAIT = 86400.0  # a day: a wait longer than that is no wait but a hang


def _hub_id(value: str) -> str:
    if not _HUB_ID_RE.match(value) or ".." in value or "--" in value:
        raise ValueError("must be a Hub id such as meta-llama/Llama-3.1-8B")
    return value


def _language(value: str) -> str:
    if not _LANGUAGE_RE.match(value):
        raise ValueError("must be a language code such as en or pt-BR")
    return value


def _git_commit(value: str) -> str:
    if not _GIT_COMMIT_RE.match(value):
        raise ValueError("must be a git commit id: 7 to 64 hexadecimal digits")
    return value.lower()


def _license(value: str) -> str:
    try:
        return str(check_license(value))
    except InvalidLicenseError as exc:
        hint = (
            f"; did you mean {exc.suggestion}?" if exc.suggestion else " (https://hf.co/docs/hub/repositories-licenses)"
        )
        raise ValueError(f"is not one of the licenses the Hub accepts{hint}") from exc


def _tag(value: str) -> str:
    return check_tag_name(value, branch="")


class Count(int):
    """A setting's kind: a whole number of things (checkpoint revisions), not bytes or seconds."""


MOST_COUNT = 1_000_000  # more checkpoint revisions than any repository holds: a bound that catches a typo


@dataclass(frozen=True)
class Setting:
    name: str  # the key in a configuration file, and how messages name the setting
    param: str  # the Click parameter that holds its flag's value
    kind: type  # str, bool, list (of str), float (seconds), int (bytes) or Count (a whole number)
    default: Any = None
    choices: tuple[str, ...] = ()
    check: Callable[[str], str] | None = None  # each string (each item of a list): normalised, or ValueError
    path: bool = False  # a file: relative to the configuration file that names it
    least: int = 0  # a Count's smallest value
    why_least: str = ""  # why it is that, said when a smaller one is given

    @property
    def label(self) -> str:
        """How a message names one value: `tag "x"`, not `tags "x"`."""
        return self.name.removesuffix("s") if self.kind is list else self.name

    @property
    def variable(self) -> str:
        return "HUBSYNC_" + self.name.upper().replace("-", "_")

    @property
    def flag(self) -> str:
        return "--" + self.param.rstrip("_").replace("_", "-")


PUSH_SETTINGS: tuple[Setting, ...] = (
    Setting("repo", "repo", str, check=check_repo_id),
    Setting("select", "select", str, "latest", check=check_select),
    Setting("revision", "revision", str, "checkpoint-{step}", check=check_revision_pattern),
    Setting("private", "private", bool, True),
    Setting("training-state", "training_state", str, "drop", choices=("drop", "keep")),
    Setting("training-state-format", "training_state_format", str, "safe", choices=("safe", "pickle")),
    Setting("allow-public-state", "allow_public_state", bool, False),
    Setting("tags", "tag", list, (), check=_tag),
    Setting("release", "release", bool, False),
    Setting("git-commit", "git_commit", str, check=_git_commit),
    Setting("template", "template", str, path=True),
    Setting("adapter-config", "adapter_config", str, path=True),
    Setting("license", "license_", str, check=_license),
    Setting("base-model", "base_model", str, check=_hub_id),
    Setting("datasets", "dataset", list, (), check=_hub_id),
    Setting("languages", "language", list, (), check=_language),
    Setting("max-wait", "max_wait", float, DEFAULT_MAX_WAIT),
    Setting("max-shard-size", "max_shard_size", int, DEFAULT_MAX_SHARD_SIZE),
    # The retention policy, applied after each push when `keep` is set: prune's options. keep = 0 would delete
    # the checkpoint just pushed.
    Setting("keep", "keep", Count, least=1, why_least="a retention policy keeps at least the checkpoint just pushed"),
    Setting("keep-best", "keep_best", bool, False),
    Setting("keep-tagged", "keep_tagged", bool, False),
    Setting("keep-storage", "keep_storage", bool, False),
    # Signing (hubsync/core/signing.py): a key, or a key with its certificate and chain, or keyless Sigstore.
    Setting("sign-key", "sign_key", str, path=True),
    Setting("sign-certificate", "sign_certificate", str, path=True),
    Setting("sign-chain", "sign_chain", str, path=True),
    Setting("sign-keyless", "sign_keyless", bool, False),
)
RETENTION_SETTINGS = ("keep", "keep-best", "keep-tagged", "keep-storage")
SETTINGS = {s.name: s for s in PUSH_SETTINGS}
# Values that publish more than the default: only their flag, given on the command line, may choose them. A file
# may come with a run that someone else wrote, and a variable may be left over from another project; either may
# make a push more private (`private = true`), never less.
WIDER: dict[str, tuple[Any, str, str]] = {
    "private": (False, "asks for a public repository", "--public"),
    "allow-public-state": (True, "allows training state in a public repository", "--allow-public-state"),
}
CARD_SETTINGS = ("template", "license", "base-model", "datasets", "languages")


@dataclass(frozen=True)
class FileConfig:
    values: Mapping[str, Any] = field(default_factory=dict)  # as the file has them, keys as in SETTINGS
    source: str | None = None  # the file, as shown to people
    folder: Path | None = None  # relative paths in the file (template) are relative to this


@dataclass(frozen=True)
class Resolved:
    """Each setting's value, and where it came from: a flag, a variable, a file as shown, or `default`."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    explicit: frozenset[str] = frozenset()  # the names given by a flag (or a keyword argument), not by a file

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


# HUBSYNC_* variables that are not settings: hubsync's own (HUBSYNC_DEBUG), the GitHub Action's, the test suites'.
OTHER_VARIABLES = frozenset(
    {
        "HUBSYNC_DEBUG",
        "HUBSYNC_VERIFY",  # pull's --verify (hubsync/cli/pull.py)
        "HUBSYNC_VERSION",
        "HUBSYNC_PYTHON",
        "HUBSYNC_RUNS_DIR",
        "HUBSYNC_FAULT_RUNS",
        "HUBSYNC_FAULT_SEED",
        "HUBSYNC_KILL_RUNS",
        "HUBSYNC_KILL_SEED",
    }
)


def debug_wanted(environ: Mapping[str, str]) -> bool:
    """HUBSYNC_DEBUG: tracebacks instead of one line. Off when unset, empty or false ("0", "false", "no", "off"),
    as every boolean variable reads; any other text turns it on, so that a debugging request is never lost."""
    return environ.get("HUBSYNC_DEBUG", "").strip().lower() not in ("", *FALSE)


def check_variable_names(environ: Mapping[str, str]) -> None:
    """A HUBSYNC_* variable that is a setting's name misspelt (HUBSYNC_TAG for HUBSYNC_TAGS, HUBSYNC_PRIVTE) would
    be ignored, and the push would go on without it: UnknownVariableError. A name that is like none of them may be
    the user's own and is left alone."""
    known = [s.variable for s in PUSH_SETTINGS] + sorted(OTHER_VARIABLES)
    for name in sorted(environ):
        if name.startswith("HUBSYNC_") and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
            if close:
                raise UnknownVariableError(name, close[0])


def resolve_settings(
    flags: Mapping[str, Any],
    config: FileConfig,
    environ: Mapping[str, str] | None = None,
    names: tuple[str, ...] | None = None,
    label: Callable[[Setting], str] | None = None,
) -> Resolved:
    """The settings `names` (all by default) from `flags` (only those given on the command line, by setting
    name), else their HUBSYNC_* variable, else `config`, else their default; each value checked.

    An empty variable clears its setting (the default applies, also over the file); a flag given as an empty
    list (--no-tag) clears a list. SettingError names the source of a bad value: a flag by `label` (its --flag
    by default; the library names its keyword argument)."""
    environ = os.environ if environ is None else environ
    label = label or (lambda s: s.flag)
    check_variable_names(environ)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in PUSH_SETTINGS:
        if names is not None and setting.name not in names:
            continue
        given: list[tuple[str, Any]] = []  # (source, value), the one that applies first
        if setting.name in flags:
            given.append((label(setting), flags[setting.name]))
        if setting.variable in environ:
            given.append((setting.variable, _from_variable(setting, environ[setting.variable])))
        if setting.name in config.values:
            given.append((config.source or "the configuration file", config.values[setting.name]))
        checked = [(source, _checked_from(setting, raw, source, config)) for source, raw in given]
        # Every value is checked, also one that another source overrides: a typo never waits for its turn.
        source, value = checked[0] if checked else ("default", setting.default)
        values[setting.name], sources[setting.name] = value, source
    for name, (wider, effect, flag) in WIDER.items():  # after every value is checked: a typo is said first
        if name in values and values[name] is wider and sources[name] != label(SETTINGS[name]):
            setting, source = SETTINGS[name], sources[name]
            shown = "true" if wider else "false"
            said = f"it reads as {shown}" if source == setting.variable else f"{name} = {shown}"
            raise WiderExposureError(source, name, said, effect, flag)
    explicit = frozenset(n for n in values if n in flags and flags[n] is not None)
    return Resolved(values, sources, explicit)


def _checked_from(setting: Setting, raw: Any, source: str, config: FileConfig) -> Any:
    """A value from `source` checked (None: cleared, the default), a file a configuration names made relative
    to it."""
    value = setting.default if raw is None else check_value(setting, raw, source)
    if setting.path and value is not None and source == config.source and config.folder is not None:
        value = _inside(config.folder, value, setting, source)
    return value


def _inside(folder: Path, value: str, setting: Setting, source: str) -> str:
    """A file that a configuration file names, relative to it: it must lie in that file's folder or below (links
    followed), so that a configuration can only use what the project holds."""
    target = (folder / value).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise SettingError(source, setting.name, value, "must be a file in the folder of the file that names it")
    return str(folder / value)


def _from_variable(setting: Setting, raw: str) -> Any:
    """A variable's text as the setting's type; None when it is empty (cleared)."""
    text = raw.strip()
    if not text:
        return None
    if setting.kind is list:
        return [item.strip() for item in text.split(",") if item.strip()]
    if setting.kind is bool:
        if text.lower() in TRUE:
            return True
        if text.lower() in FALSE:
            return False
        raise SettingError(setting.variable, setting.name, raw, "must be true or false")
    return raw


def check_value(setting: Setting, raw: Any, source: str) -> Any:
    """`raw` (from a flag, a variable or a file) as a valid value of `setting`; SettingError naming `source`."""
    if setting.kind is float:
        return _seconds(setting, raw, source)
    if setting.kind is Count:
        return _count(setting, raw, source)
    if setting.kind is int:
        try:
            return parse_size(raw)
        except ValueError as exc:
            shown = raw if isinstance(raw, str | int) and not isinstance(raw, bool) else repr(raw)
            if isinstance(shown, int) and shown.bit_length() > 64:  # TOML's integers have no bound
                shown = "a number of over 19 digits"
            raise SettingError(source, setting.name, shown, str(exc)) from None
    if setting.kind is list and isinstance(raw, str):
        raw = [raw]
    if setting.kind is list and isinstance(raw, tuple):
        raw = list(raw)
    kind_ok = isinstance(raw, setting.kind) and not (setting.kind is not bool and isinstance(raw, bool))
    if not kind_ok or (setting.kind is list and not all(isinstance(v, str) for v in raw)):
        wanted = {str: "a string", bool: "true or false", list: "a list of strings"}[setting.kind]
        raise SettingError(source, setting.name, raw, f"must be {wanted}")
    if setting.kind is bool:
        return raw
    items = raw if setting.kind is list else [raw]
    out = []
    for item in items:
        if not item.strip() or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in item):
            raise SettingError(
                source, setting.name, item, "must not be empty or hold a control character", setting.label
            )
        if setting.choices and item not in setting.choices:
            raise SettingError(source, setting.name, item, f"must be {' or '.join(setting.choices)}", setting.label)
        try:
            out.append(setting.check(item) if setting.check else item)
        except (ValueError, HubsyncError) as exc:
            raise SettingError(source, setting.name, item, _reason(exc), setting.label) from exc
    return tuple(out) if setting.kind is list else out[0]


def _seconds(setting: Setting, raw: Any, source: str) -> float:
    """A number of seconds from 0 to MOST_MAX_WAIT: a number (a file's, a keyword's) or its text (a flag's, a
    variable's), such as 600 or 1.5."""
    wanted = f"must be a number of seconds from 0 to {MOST_MAX_WAIT:g}, such as {DEFAULT_MAX_WAIT:g}"
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise SettingError(source, setting.name, raw, wanted)
    if isinstance(raw, int) and raw.bit_length() > 64:  # TOML's integers have no bound, and repr() has one
        raise SettingError(source, setting.name, "a number of over 19 digits", wanted)
    try:
        value = float(raw)
    except (ValueError, OverflowError):  # OverflowError: an integer of hundreds of digits
        raise SettingError(source, setting.name, raw, wanted) from None
    if not math.isfinite(value) or not 0 <= value <= MOST_MAX_WAIT:
        raise SettingError(source, setting.name, raw, wanted)
    return value


def _count(setting: Setting, raw: Any, source: str) -> int:
    """A whole number from setting.least to MOST_COUNT: an integer (a file's, a keyword's) or its digits (a
    flag's, a variable's), such as 3."""
    wanted = f"must be a whole number from {setting.least} to {MOST_COUNT:,}, such as 3"
    if setting.why_least:
        wanted += f" ({setting.why_least})"
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise SettingError(source, setting.name, raw, wanted)
    if isinstance(raw, int) and raw.bit_length() > 64:  # TOML's integers have no bound, and repr() has one
        raise SettingError(source, setting.name, "a number of over 19 digits", wanted)
    text = raw.strip() if isinstance(raw, str) else None
    if text is not None and (not text.isascii() or not text.isdigit() or len(text) > 19):
        raise SettingError(source, setting.name, raw, wanted)
    value = int(raw if text is None else text)
    if not setting.least <= value <= MOST_COUNT:
        raise SettingError(source, setting.name, raw, wanted)
    return value


def _reason(exc: Exception) -> str:
    """What is wrong with a value, as `<setting> "<value>" <this>` or `<setting> must ..., not "<value>"`."""
    if isinstance(exc, InvalidRepoIdError):
        return "must be NAMESPACE/NAME (letters, digits, '-', '_', '.'), such as me/my-model"
    reason = getattr(exc, "reason", None)
    text = reason if isinstance(reason, str) else str(exc)
    return text if text.startswith(("must", "is ")) else f"is not valid: {text}"


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback_url(url: str) -> bool:
    """Whether `url` names this machine (loopback): only a Hub there may hand out `local://` Xet storage, a
    folder on this machine, which clients elsewhere could not reach (and a remote Hub must not name)."""
    host = (urlsplit(url).hostname or "").lower()
    return host in LOOPBACK_HOSTS


def is_token_text(token: str) -> bool:
    """Whether a token can go into an HTTP header as a Hub token: printable ASCII without spaces, not empty."""
    return bool(token) and all(33 <= ord(c) <= 126 for c in token)


def check_endpoint(url: str) -> str:
    """A Hub address as huggingface_hub can use it: http(s)://host[:port][/path], without a trailing slash."""
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError for a port that is not a number from 0 to 65535
    except ValueError as exc:
        raise ValueError(f"must be an address such as https://huggingface.co ({exc})") from exc
    host = parts.hostname or ""
    if (
        parts.scheme not in ("http", "https")
        or not re.fullmatch(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]", host if ":" not in host else f"[{host}]")
        or port == 0
        or "?" in url
        or "#" in url
        or any(c.isspace() or ord(c) < 32 for c in url)
    ):
        raise ValueError("must be an address such as https://huggingface.co or http://127.0.0.1:8000")
    return url.rstrip("/")


def find_config(run: Path) -> FileConfig:
    """hubsync.toml in the run folder or beside it; else the nearest pyproject.toml with [tool.hubsync] at or above
    the run, up to the root of the git work tree that holds it. Outside a work tree, only the run folder and the
    one above it are looked at: a folder higher up (/tmp, a home folder) may be anyone's."""
    run = run.resolve()
    for candidate in (run / "hubsync.toml", run.parent / "hubsync.toml"):
        if candidate.is_file():
            return FileConfig(
                _known(_read(candidate), display_path(candidate)), display_path(candidate), candidate.parent
            )
    root = next((f for f in (run, *run.parents) if (f / ".git").exists()), None)
    folders = [run, run.parent] if root is None else [run, *run.parents[: len(run.parents) - len(root.parents)]]
    for folder in folders:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            section = _read(candidate).get("tool", {}).get("hubsync")
            if isinstance(section, dict):
                shown = f"{display_path(candidate)} [tool.hubsync]"
                return FileConfig(_known(section, shown), shown, folder)
    return FileConfig()


def _read(path: Path) -> dict[str, Any]:
    """A configuration file, only when it is the user's own: on a shared machine a file in /tmp or another
    user's folder could otherwise choose how this user's checkpoints are published (as git's safe.directory)."""
    with suppress(OSError, AttributeError):  # AttributeError: no getuid on this platform
        info = path.stat()
        if info.st_uid != os.getuid():
            raise ConfigError(
                display_path(path),
                "it belongs to another user, so it is not read (copy it, or take it over with chown if it is yours)",
            )
        if info.st_mode & 0o002:  # group-writable is common (umask 002)
            raise ConfigError(
                display_path(path), "anyone may write it, so it is not read (chmod o-w it if you trust it)"
            )
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(display_path(path), str(exc)) from exc
    except RecursionError as exc:
        raise ConfigError(display_path(path), "it is nested too deeply") from exc


def _known(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The file's settings by name (`training_state` is `training-state`); an unknown key is an error."""
    out = {}
    for key, value in values.items():
        name = key.replace("_", "-")
        if name not in SETTINGS:
            raise ConfigError(source, f"unknown setting {key!r} (known: {', '.join(SETTINGS)})")
        if name in out:
            raise ConfigError(source, f"{name} is set twice (as {name} and as {name.replace('-', '_')}); keep one")
        out[name] = value
    return out
