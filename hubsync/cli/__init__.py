"""The `hubsync` command line. Only this package prints and chooses exit codes; the library raises."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from hubsync import __version__
from hubsync.core.errors import HubsyncError

from .errors import message_for


def _secrets() -> list[str]:
    """Values that must never reach the terminal, whatever the message."""
    ctx = click.get_current_context(silent=True)
    found = [os.environ.get("HF_TOKEN") or ""]
    while ctx is not None:
        found.append(str(ctx.params.get("token") or ""))
        ctx = ctx.parent
    return [s for s in found if len(s) >= 8]


def _scrub(text: str) -> str:
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text


class HubsyncGroup(click.Group):
    """Turns HubsyncErrors into one line on stderr and exit code 1 (HUBSYNC_DEBUG=1: the traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HubsyncError as exc:
            if os.environ.get("HUBSYNC_DEBUG"):
                raise
            click.echo(_scrub(message_for(exc)), err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted: nothing was left half-written.", err=True)
            ctx.exit(130)


@click.group(cls=HubsyncGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hubsync")
def cli() -> None:
    """Push Trainer/PEFT checkpoints to the Hugging Face Hub as revisions.

    \b
    Example:
      hubsync push out/my-run/checkpoint-1000 --repo me/my-model
    """


endpoint_option = click.option(
    "--endpoint", metavar="URL", help="Hub address [default: HF_ENDPOINT, else https://huggingface.co]."
)
token_option = click.option("--token", metavar="TOKEN", help="Hub token [default: HF_TOKEN, else the saved login].")


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option("--repo", "repo_id", required=True, metavar="NAMESPACE/NAME", help="Repository to push to.")
@click.option("--revision", metavar="BRANCH", help="Branch that receives the commit [default: the folder's name].")
@click.option("--public", is_flag=True, help="Create the repository public when it is missing [default: private].")
@click.option("--dry-run", is_flag=True, help="Print the plan; touch nothing locally or on the Hub.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@endpoint_option
@token_option
def push(
    checkpoint: str,
    repo_id: str,
    revision: str | None,
    public: bool,
    dry_run: bool,
    as_json: bool,
    endpoint: str | None,
    token: str | None,
) -> None:
    """Push a checkpoint folder to a branch of a Hub repository, in one commit.

    The repository is created (private) when missing, and the branch from main.

    \b
    Example:
      hubsync push out/my-run/checkpoint-1000 --repo me/my-model
    """
    from hubsync.core.checkpoint import read_checkpoint
    from hubsync.core.plan import plan_push

    ckpt = read_checkpoint(checkpoint)
    plan = plan_push(ckpt, repo_id=repo_id, revision=revision, private=not public)
    if dry_run:
        _print_plan(plan, as_json)
        return

    from hubsync.hub.client import HubClient
    from hubsync.hub.push import execute_push

    result = execute_push(plan, ckpt, HubClient(endpoint, token))
    if as_json:
        click.echo(json.dumps({"plan": plan.to_json(), "result": result.to_json()}, indent=2))
        return
    verb = "Pushed" if result.created else "Already up to date:"
    click.echo(f"{verb} {plan.checkpoint} -> {result.repo_id} @ {result.revision}")
    click.echo(f"  files:  {result.files} ({_size(result.bytes)})")
    click.echo(f"  commit: {result.commit}")
    click.echo(f"  url:    {result.url}")


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(file_okay=False, path_type=str),
    help="Folder for the converted files [default: safetensors-<checkpoint name>, beside the checkpoint].",
)
@click.option("--force", is_flag=True, help="Replace files in an output folder that is not empty.")
def convert(checkpoint: str, output: str | None, force: bool) -> None:
    """Convert a checkpoint's pickled weights to safetensors, verified bit for bit.

    adapter_model.bin becomes adapter_model.safetensors, pytorch_model.bin model.safetensors, and
    pytorch_model-0000x-of-0000N.bin shards model-0000x-of-0000N.safetensors with a rewritten index.
    Configs and tokenizer files are copied beside them; training state is not. The pickles are read
    without running any code from them, and the checkpoint folder is never modified.

    \b
    Example:
      hubsync convert out/my-run/checkpoint-1000
    """
    from pathlib import Path

    from hubsync.convert import convert_checkpoint, default_output_dir
    from hubsync.core.checkpoint import read_checkpoint
    from hubsync.core.conversion import plan_conversion
    from hubsync.core.paths import display_path

    ckpt = read_checkpoint(checkpoint)
    plan = plan_conversion(ckpt)
    if not plan.conversions:
        click.echo(
            f"Nothing to convert: {ckpt.display} holds no pickled weights (adapter_model.bin, pytorch_model*.bin)."
        )
        return
    out_dir = Path(output) if output else default_output_dir(ckpt)
    total = sum(f.size for f in ckpt.files if f.relpath in {c.source for c in plan.conversions})
    with _progress(total, "Converting") as advance:
        done = convert_checkpoint(ckpt, plan, out_dir, force=force, progress=advance)
    for converted in done:
        aliases = f", {len(converted.aliases)} tied names recorded as aliases" if converted.aliases else ""
        click.echo(
            f"{converted.source} -> {converted.target}: {converted.tensors} tensors, "
            f"{_size(converted.bytes)}, verified{aliases}"
        )
    click.echo(f"Wrote {display_path(out_dir)}")


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal's stderr; nothing when stderr is not a terminal."""
    if not sys.stderr.isatty() or total <= 0:
        yield lambda n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


def _print_plan(plan: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"plan": plan.to_json()}, indent=2))
        return
    click.echo(f"Plan (dry run): {plan.checkpoint} -> {plan.repo_id} @ {plan.revision}")
    for upload in plan.uploads:
        click.echo(f"  upload  {upload.path_in_repo}  ({_size(upload.size)})")
    for skipped in plan.skipped:
        click.echo(f"  skip    {skipped}")
    click.echo(f"  total   {len(plan.uploads)} files, {_size(plan.total_bytes)}")
    click.echo(f"  commit  {plan.commit_message}")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


@cli.command()
@click.option(
    "--root",
    required=True,
    type=click.Path(file_okay=False, path_type=str),
    help="Folder that holds the Hub's repositories (created when missing).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=0, show_default=True, help="Port to listen on; 0 picks a free one.")
@click.option("--user", default="me", show_default=True, help="The user the token belongs to.")
@click.option("--token", help="Token to accept [default: the one stored under --root, else a new one].")
@click.option("--verbose", is_flag=True, help="Log every request to stderr.")
def localhub(root: str, host: str, port: int, user: str, token: str | None, verbose: bool) -> None:
    """Serve a Hub-compatible server on this machine, storing everything under --root.

    Prints HF_ENDPOINT=... and HF_TOKEN=..., one per line, for `eval`.

    \b
    Example:
      hubsync localhub --root /tmp/hub --port 8000
    """
    from hubsync.localhub import LocalHubServer, Store
    from hubsync.localhub.store import StoreError

    store = Store(root)
    try:
        token = store.ensure_user(user, token)
        server = LocalHubServer(store, host, port, verbose=verbose)
    except StoreError as exc:
        raise click.UsageError(exc.message) from exc
    except OSError as exc:
        raise click.UsageError(f"cannot listen on {host}:{port} ({exc.strerror})") from exc
    click.echo(f"HF_ENDPOINT={server.url}")
    click.echo(f"HF_TOKEN={token}")
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    cli(prog_name="hubsync")
