"""`hubsync tag`: create a tag at a revision (hubsync.tag), or delete one (hubsync.delete_tag)."""

from __future__ import annotations

import json

import click

from .app import cli
from .options import endpoint_option, max_wait_option, token_option
from .output import echo, one_line, quiet_huggingface_hub, report


@cli.command()
@click.argument("repo_id", metavar="REPO")
@click.argument("names", metavar="[REVISION] NAME", nargs=-1, required=True)
@click.option("--delete", is_flag=True, help="Delete the tag NAME (only a tag, never a branch).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@endpoint_option
@token_option
@max_wait_option
def tag(
    repo_id: str,
    names: tuple[str, ...],
    delete: bool,
    as_json: bool,
    endpoint: str | None,
    token: str | None,
    max_wait: float | None,
) -> None:
    """Create the tag NAME at REVISION, or delete it with --delete.

    REVISION is a branch (such as checkpoint-1000), a tag or a commit id. Tags never move: a tag that already
    points to that commit is left as it is; one that points to another commit is refused (delete it first).
    The name is checked before the Hub is asked: not main, HEAD, a checkpoint-N name, a commit id or a branch
    of the repository. --delete deletes only a tag, never a branch.

    \b
    Example:
      hubsync tag me/my-model checkpoint-1000 v1
      hubsync tag --delete me/my-model v1
    """
    from hubsync.api import delete_tag
    from hubsync.api import tag as create_tag

    wanted = 1 if delete else 2
    if len(names) != wanted:
        shape = "REPO NAME with --delete" if delete else "REPO REVISION NAME (or --delete REPO NAME)"
        raise click.UsageError(f"expected {shape}, got {len(names) + 1} arguments", click.get_current_context())
    quiet_huggingface_hub(show_progress=False)
    if delete:
        change = delete_tag(repo_id, names[0], endpoint=endpoint, token=token, report=report, max_wait=max_wait)
    else:
        revision, name = names
        change = create_tag(repo_id, revision, name, endpoint=endpoint, token=token, report=report, max_wait=max_wait)
    if as_json:
        echo(json.dumps(change.to_json(), indent=2))
        return
    shown = one_line(change.tag)
    if change.action == "delete":
        said = "Deleted" if change.changes else "Already gone (deleted meanwhile):"
        echo(f"{said} tag {shown} of {change.repo_id}; it pointed to {change.commit}")
    elif change.changes:
        echo(f"Tagged {change.repo_id} @ {one_line(str(change.revision))}: {shown} -> {change.commit}")
    else:
        echo(f"Already tagged: {shown} in {change.repo_id} points to {change.commit}; nothing changed")
