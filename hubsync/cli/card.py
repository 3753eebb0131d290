"""`hubsync card`: render a checkpoint's model card (hubsync.render_card), print or write it (hubsync.write_card)."""

from __future__ import annotations

from typing import Any

import click

from .app import cli
from .options import card_options, flag_settings
from .output import echo


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=str),
    help="Write the card to this file, and its plot beside it [default: print the card].",
)
@click.option(
    "--repo", "repo_id", metavar="NAMESPACE/NAME", help="Repository named in the card [default: a placeholder]."
)
@click.option("--revision", metavar="BRANCH", help="Revision named in the card [default: the folder's name].")
@card_options
@click.pass_context
def card(
    ctx: click.Context,
    /,
    checkpoint: str,
    output: str | None,
    repo_id: str | None,
    revision: str | None,
    **flags: Any,
) -> None:
    """Render a checkpoint's model card without pushing it.

    \b
    Example:
      hubsync card out/my-run/checkpoint-1000 -o card/README.md
    """
    from hubsync.api import render_card, write_card
    from hubsync.core.checkpoint import read_checkpoint
    from hubsync.core.config import CARD_SETTINGS
    from hubsync.core.paths import display_path

    ckpt = read_checkpoint(checkpoint)
    settings = flag_settings(ctx, ckpt.path, flags, names=CARD_SETTINGS)
    if output is None:
        echo(render_card(ckpt.path, repo_id, revision, settings=settings)["README.md"].decode(), nl=False)
        return
    for path in write_card(ckpt.path, output, repo_id, revision, settings=settings):
        echo(f"Wrote {display_path(path)}")
