"""`hubsync ls`: a repository's checkpoint revisions (hubsync.list_revisions), as a table or JSON."""

from __future__ import annotations

import json
from typing import Any

import click

from hubsync.core.escape import one_line

from .app import cli
from .options import endpoint_option, max_wait_option, token_option
from .output import count, echo, quiet_huggingface_hub, report, size


@cli.command(name="ls")
@click.argument("repo_id", metavar="REPO")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option(
    "--storage",
    "show_storage",
    is_flag=True,
    help="Also show what the repository stores on the Hub, and how much of it no branch or tag holds.",
)
@endpoint_option
@token_option
@max_wait_option
def ls_command(
    repo_id: str, as_json: bool, show_storage: bool, endpoint: str | None, token: str | None, max_wait: float | None
) -> None:
    """List a repository's checkpoint revisions: step, epoch, metrics, resumable or not, size on the Hub, tags (those
    naming the revision's head), commit, date, and notes: the best checkpoint (the newest revision's trainer_state
    says which), the one `--release` put on main, and branches hubsync did not push ("not hubsync's (by hand)":
    main's index has no entry for their head), listed after the checkpoints.

    With --storage, also the bytes the Hub counts for the repository (its used storage), its stored files, and
    those that no branch or tag holds any more (left by deleted branches: `hubsync prune` frees them).

    \b
    Example:
      hubsync ls me/my-model --storage
    """
    from hubsync.api import list_revisions, repo_storage

    quiet_huggingface_hub(show_progress=False)
    options: dict[str, Any] = {"endpoint": endpoint, "token": token, "report": report, "max_wait": max_wait}
    revisions = list_revisions(repo_id, **options)
    summary = repo_storage(repo_id, **options) if show_storage else None
    if as_json:
        listed = [r.to_json() for r in revisions]
        echo(json.dumps(listed if summary is None else {"revisions": listed, "storage": summary.to_json()}, indent=2))
        return
    if summary is not None:
        used = "used: not reported by the Hub" if summary.used_storage is None else f"{size(summary.used_storage)} used"
        echo(
            f"storage: {used}; {count(summary.files, 'stored file')} ({size(summary.bytes)}), "
            f"{count(len(summary.unheld), 'file')} ({size(summary.unheld_bytes)}) held by no branch or tag"
            + (": `hubsync prune` frees them" if summary.unheld else "")
        )
    if not revisions:
        echo(f"{repo_id} has no checkpoint revisions yet.")
        return
    released = [r.revision for r in revisions if r.released]
    if released:
        echo(f"main holds the inference files of {one_line(released[0])} (hubsync push --release).")
    names = sorted({m for r in revisions for m in r.metrics})
    header = ["revision", "step", "epoch", *names, "resumable", "signed", "size", "tags", "commit", "date", "notes"]
    rows = [
        [
            r.revision,
            "" if r.step is None else str(r.step),
            "" if r.epoch is None else f"{r.epoch:.2f}",
            *[f"{r.metrics[m]:.4f}" if m in r.metrics else "" for m in names],
            ("yes" if r.resumable else "no") + (f" ({r.layout})" if r.layout else ""),
            "yes" if r.signed else "no",
            "" if r.size is None else size(r.size),
            ",".join(r.tags),
            r.commit[:12],
            (r.date or "")[:19].replace("T", " "),
            notes(r),
        ]
        for r in revisions
    ]
    table = [[one_line(cell) for cell in row] for row in [header, *rows]]  # names from the Hub, escaped: then measured
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def notes(revision: Any) -> str:
    """What `hubsync ls` says of a revision beyond its columns: the best checkpoint, the one released on main, and
    a branch whose head hubsync did not write (no entry of main's index for that commit)."""
    said = []
    if revision.best:
        said.append("best")
    if revision.released:
        said.append("released on main")
    if not revision.by_hubsync:
        said.append("not hubsync's (by hand)")
    return "; ".join(said)
