"""The options several commands share (where the Hub is, which token, how to push, how the card looks) and the
rule that turns the flags given into settings, beside HUBSYNC_* variables and the configuration file."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from hubsync.core.config import Resolved


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


def bad_flag_values(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
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


# Every command that talks to a Hub; a setting (max-wait), checked by the settings table's rule.
max_wait_option = click.option(
    "--max-wait",
    "max_wait",
    metavar="SECONDS",
    callback=bad_flag_values,
    help="Longest one Hub call waits out the Hub's rate limit, in all; a longer wait asked fails at once "
    "[default: HUBSYNC_MAX_WAIT, else max-wait in hubsync.toml, else 600: two of the Hub's 5-minute windows].",
)


def _clear_option(name: str, what: str) -> Any:
    return click.option(f"--no-{name}", f"no_{name.replace('-', '_')}", is_flag=True, help=f"Clear {what}.")


def card_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options that shape a model card, shared by `push` and `card`."""
    for option in reversed(
        [
            click.option(
                "--base-model",
                metavar="HUB_ID",
                callback=bad_flag_values,
                help="Base model's Hub id [default: from adapter_config.json].",
            ),
            click.option(
                "--license",
                "license_",
                metavar="ID",
                callback=bad_flag_values,
                help="License for the card, such as apache-2.0.",
            ),
            click.option(
                "--dataset",
                "dataset",
                multiple=True,
                metavar="HUB_ID",
                callback=bad_flag_values,
                help="Training dataset (repeatable).",
            ),
            _clear_option("dataset", "the datasets set by HUBSYNC_DATASETS or the configuration file"),
            click.option(
                "--language",
                "language",
                multiple=True,
                metavar="CODE",
                callback=bad_flag_values,
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


def push_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options that say where and how checkpoints are pushed, shared by `push` and `watch`. Each is a push
    setting (hubsync.core.config), which a HUBSYNC_* variable or the configuration file can also set."""
    f = card_options(f)
    for option in reversed(
        [
            click.option(
                "--repo", "repo", metavar="NAMESPACE/NAME", callback=bad_flag_values, help="Repository to push to."
            ),
            click.option(
                "--revision",
                metavar="PATTERN",
                callback=bad_flag_values,
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
                callback=bad_flag_values,
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
                callback=bad_flag_values,
                help="The training code's git commit, recorded in the card and the commit message "
                "[default: HEAD of the git work tree holding the checkpoint].",
            ),
            click.option(
                "--adapter-config",
                type=click.Path(dir_okay=False, path_type=str),
                help="The adapter_config.json to publish with the LoRA weights of an FSDP sharded checkpoint, "
                "which holds none [default: the run folder's adapter_config.json].",
            ),
            click.option(
                "--max-shard-size",
                metavar="SIZE",
                callback=bad_flag_values,
                help="Split a converted file (weights, training state) whose tensors take more than SIZE into "
                'shards with an index, as save_pretrained does: "5GB", "500MB", "10GiB" or bytes, up to the '
                "49GB (the Hub holds files of at most 50GB) [default: 5GB].",
            ),
            click.option(
                "--sign-key",
                type=click.Path(dir_okay=False, path_type=str),
                metavar="KEY.pem",
                help="Sign each revision with this EC private key (PEM): model.sig, in the OpenSSF Model Signing "
                "format, over every file the commit publishes; needs hubsync[sign].",
            ),
            click.option(
                "--sign-certificate",
                type=click.Path(dir_okay=False, path_type=str),
                metavar="CERT.pem",
                help="With --sign-key: sign with the key's certificate, so that --verify-chain can check it.",
            ),
            click.option(
                "--sign-chain",
                type=click.Path(dir_okay=False, path_type=str),
                metavar="CHAIN.pem",
                help="With --sign-certificate: the certificates from it up to the root, in one PEM file.",
            ),
            click.option(
                "--sign-keyless/--no-sign-keyless",
                default=None,
                help="Sign keyless through Sigstore with the environment's OIDC identity (a GitHub workflow's, "
                "with id-token: write) [default: no].",
            ),
            max_wait_option,
            click.option(
                "--keep",
                "keep",
                metavar="N",
                callback=bad_flag_values,
                help="Retention policy: after each push, prune the repository's checkpoint branches to the N newest "
                "(N at least 1), as `hubsync prune --keep N` does [default: no policy].",
            ),
            _clear_option("keep", "a retention policy set by HUBSYNC_KEEP or the configuration file"),
            click.option(
                "--keep-best/--no-keep-best",
                default=None,
                help="With --keep: also keep the best checkpoint [default: no].",
            ),
            click.option(
                "--keep-tagged/--no-keep-tagged",
                default=None,
                help="With --keep: also keep every tagged checkpoint branch [default: no].",
            ),
            click.option(
                "--keep-storage/--no-keep-storage",
                default=None,
                help="With --keep: delete branches only, not the stored files they held [default: no].",
            ),
        ]
    ):
        f = option(f)
    return f


def flag_settings(
    ctx: click.Context, path: Path, flags: dict[str, Any], names: tuple[str, ...] | None = None
) -> Resolved:
    """The push settings from their flags (those given on the command line), HUBSYNC_* variables and the
    configuration file that applies to `path`, each checked; a bad value from a variable or a file names its
    source."""
    from hubsync.core.config import PUSH_SETTINGS
    from hubsync.core.options import resolve_for

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
    return resolve_for(path, given, names=names)


def seconds(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value
