"""From what a user chose (flags or keyword arguments, HUBSYNC_* variables, the configuration file) to the options
a push or a card uses. The one place that turns settings into PushOptions and CardSettings."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from .card import CardSettings
from .checkpoint import read_json_file
from .config import PUSH_SETTINGS, Resolved, Setting, find_config, resolve_settings
from .errors import CheckpointFileError, MissingRepoError, SettingError, SigningError, TemplateError
from .paths import display_path
from .plan import PushOptions
from .prune import RetentionPolicy
from .runs import project_folder
from .signing import Signing

MAX_TEMPLATE_BYTES = 1024 * 1024
# The frameworks whose versions a card records, where they are installed.
CARD_VERSIONS = ("transformers", "peft", "torch", "huggingface_hub", "safetensors")


def keyword(setting: Setting) -> str:
    """A setting's keyword argument in the library: `training_state` for training-state, `repo_id` for repo."""
    return "repo_id" if setting.name == "repo" else setting.name.replace("-", "_")


def keyword_label(setting: Setting) -> str:
    """How an error names a value given as a keyword argument: `training_state=`."""
    return keyword(setting) + "="


KEYWORDS = {keyword(s): s for s in PUSH_SETTINGS}


def given_settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments (None: not given) by setting name; TypeError for one that is no setting."""
    unknown = sorted(set(options) - set(KEYWORDS))
    if unknown:
        raise TypeError(f"unexpected option {unknown[0]!r}; the options are {', '.join(sorted(KEYWORDS))}")
    return {KEYWORDS[k].name: v for k, v in options.items() if v is not None}


def resolve_for(
    path: Path,
    given: Mapping[str, Any],
    names: tuple[str, ...] | None = None,
    label: Callable[[Setting], str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Resolved:
    """The settings for a push of `path` (a checkpoint or run folder): `given` (by setting name) over HUBSYNC_*
    variables over the configuration file found from its run folder, each checked."""
    config = find_config(project_folder(Path(path).resolve()))
    return resolve_settings(given, config, environ=environ, names=names, label=label)


def push_options(settings: Resolved, secret_tokens: tuple[str, ...] = ()) -> PushOptions:
    """The PushOptions that resolved settings make; MissingRepoError when none names the repository."""
    if not settings["repo"]:
        raise MissingRepoError()
    return PushOptions(
        settings["repo"],
        settings["revision"],
        private=settings["private"],
        training_state=settings["training-state"],
        card=card_settings(settings),
        allow_public_state=settings["allow-public-state"],
        state_format=settings["training-state-format"],
        tags=tuple(settings["tags"]),
        release=settings["release"],
        revision_pattern=True,
        git_commit=settings["git-commit"],
        secret_tokens=tuple(t for t in secret_tokens if t),
        adapter_config=_adapter_config(settings["adapter-config"]),
        max_shard_size=settings["max-shard-size"],
        signing=push_signing(settings),
    )


def retention_policy(settings: Resolved) -> RetentionPolicy | None:
    """The retention policy the settings set: None unless `keep` is set (the other keep-* alone do nothing)."""
    keep = settings.values.get("keep")
    if keep is None:
        return None
    return RetentionPolicy(
        int(keep),
        keep_best=bool(settings.values.get("keep-best", False)),
        keep_tagged=bool(settings.values.get("keep-tagged", False)),
        keep_storage=bool(settings.values.get("keep-storage", False)),
    )


def push_signing(settings: Resolved) -> Signing | None:
    """How the push signs, from the sign-* settings (None: it does not); its signer is said later, by
    hubsync.signing.signer_of, which reads the key."""
    key, certificate, chain = settings["sign-key"], settings["sign-certificate"], settings["sign-chain"]
    for name in ("sign-key", "sign-certificate", "sign-chain"):  # named with where it came from, as any setting
        value = settings[name]
        if value is not None and not Path(value).is_file():
            source = settings.sources.get(name, "default")
            raise SettingError(source, name, display_path(value), "must be a file that exists (PEM)")
    if settings["sign-keyless"]:
        if key or certificate:
            raise SigningError("--sign-keyless", "it signs without a key: leave out --sign-key and --sign-certificate")
        return Signing("sigstore")
    if certificate and not key:
        raise SigningError(display_path(certificate), "a certificate signs with its private key: pass --sign-key too")
    if chain and not certificate:
        raise SigningError(display_path(chain), "a chain is the certificate's: pass --sign-certificate too")
    if not key:
        return None
    if certificate:
        return Signing("certificate", key, certificate, (chain,) if chain else ())
    return Signing("key", key)


def _adapter_config(path: str | None) -> dict[str, Any] | None:
    """--adapter-config: a JSON object (CheckpointFileError naming the file otherwise)."""
    if path is None:
        return None
    shown = display_path(path)
    data = read_json_file(Path(path), shown)
    if not isinstance(data, dict):
        raise CheckpointFileError(shown, "expected a JSON object (an adapter_config.json)")
    return data


def card_settings(settings: Resolved) -> CardSettings:
    """The card's settings, with its template read (bounded) and the versions of the frameworks installed."""
    template = settings["template"]
    versions = {}
    for name in CARD_VERSIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return CardSettings(
        base_model=settings["base-model"],
        license=settings["license"],
        datasets=tuple(settings["datasets"]),
        languages=tuple(settings["languages"]),
        versions=versions,
        template=None if template is None else read_template(Path(template)),
        template_name=display_path(template) if template else None,
    )


def read_template(path: Path) -> str:
    """A card template: a regular file of text, at most 1 MiB (a device such as /dev/zero never ends)."""
    if Path(os.path.realpath(path)).parts[1:2] in (("proc",), ("sys",), ("dev",)):  # the system's, not a file's
        raise TemplateError(display_path(path), "it is a file of the system (/proc, /sys, /dev), not a template")
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
