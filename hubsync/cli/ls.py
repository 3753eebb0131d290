"""`hubsync ls`: a repository's checkpoint revisions (hubsync.list_revisions), as a table or JSON."""

from __future__ import annotations

import json

import click

from hubsync.core.escape import one_line

from .app import cli
from .options import endpoint_option, max_wait_option, token_option
from .output import echo, quiet_huggingface_hub, report


@cli.command(name="ls")
@click.argument("repo_id", metavar="REPO")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@endpoint_option
@token_option
@max_wait_option
def ls_command(repo_id: str, as_json: bool, endpoint: str | None, token: str | None, max_wait: float | None) -> None:
    """List a repository's checkpoint revisions: step, epoch, metrics, resumable or not, commit, date.

    \b
    Example:
      hubsync ls me/my-model
    """
    from hubsync.api import list_revisions

    quiet_huggingface_hub(show_progress=False)
    revisions = list_revisions(repo_id, endpoint=endpoint, token=token, report=report, max_wait=max_wait)
    if as_json:
        echo(json.dumps([r.to_json() for r in revisions], indent=2))
        return
    if not revisions:
        echo(f"{repo_id} has no checkpoint revisions yet.")
        return
    names = sorted({m for r in revisions for m in r.metrics})
    header = ["revision", "step", "epoch", *names, "resumable", "commit", "date"]
    rows = [
        [
            r.revision,
            "" if r.step is None else str(r.step),
            "" if r.epoch is None else f"{r.epoch:.2f}",
            *[f"{r.metrics[m]:.4f}" if m in r.metrics else "" for m in names],
            ("yes" if r.resumable else "no") + (f" ({r.layout})" if r.layout else ""),
            r.commit[:12],
            (r.date or "")[:19].replace("T", " "),
        ]
        for r in revisions
    ]
    table = [[one_line(cell) for cell in row] for row in [header, *rows]]  # names from the Hub, escaped: then measured
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
