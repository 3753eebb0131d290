"""`hubsync prune`: plan which checkpoint branches go (hubsync.plan_prune), print it, delete (hubsync.prune)."""

from __future__ import annotations

import json
from typing import Any

import click

from .app import cli
from .options import endpoint_option, max_wait_option, token_option
from .output import count, echo, one_line, quiet_huggingface_hub, report, size


@cli.command()
@click.argument("repo_id", metavar="REPO")
@click.option(
    "--keep", required=True, type=click.IntRange(min=0), metavar="N", help="Keep the N newest checkpoint branches."
)
@click.option(
    "--keep-best", is_flag=True, help="Also keep the best checkpoint (trainer_state's best_model_checkpoint)."
)
@click.option("--keep-tagged", is_flag=True, help="Also keep every branch whose head commit a tag points to.")
@click.option(
    "--keep-storage",
    is_flag=True,
    help="Delete branches only: leave their files in the repository's storage (the Hub frees nothing then).",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON: the plan, then the result.")
@endpoint_option
@token_option
@max_wait_option
def prune(
    repo_id: str,
    keep: int,
    keep_best: bool,
    keep_tagged: bool,
    keep_storage: bool,
    dry_run: bool,
    as_json: bool,
    endpoint: str | None,
    token: str | None,
    max_wait: float | None,
) -> None:
    """Delete a repository's checkpoint branches beyond the newest N.

    Newest is by step. main is never deleted, nor with --keep-best the best checkpoint (the one that the
    newest checkpoint's trainer_state.json names as best_model_checkpoint), nor with --keep-tagged a branch
    whose head commit is tagged. Only branches are deleted, never tags. The plan is printed first; then
    main's index and README stop listing the deleted revisions, in one commit.

    A deleted branch frees no storage on the Hub. So prune then permanently deletes the files of the
    repository's storage that no commit of a remaining branch or tag holds (files of deleted branches, and of
    earlier ones), and says how many bytes that freed: commits of deleted branches can no longer be
    downloaded by their id. --keep-storage deletes branches only.

    \b
    Example:
      hubsync prune me/my-model --keep 3 --keep-best --dry-run
    """
    from hubsync.api import plan_prune
    from hubsync.api import prune as execute

    quiet_huggingface_hub(show_progress=False)
    plan = plan_prune(
        repo_id,
        keep,
        keep_best=keep_best,
        keep_tagged=keep_tagged,
        keep_storage=keep_storage,
        endpoint=endpoint,
        token=token,
        report=report,
        max_wait=max_wait,
    )
    if not as_json:
        _print_prune_plan(plan, keep_best, dry_run)
    outcome = execute(plan, dry_run=dry_run, endpoint=endpoint, token=token, report=report, max_wait=max_wait)
    if as_json:
        echo(json.dumps(outcome.to_json(), indent=2))
        return
    result = outcome.result
    if result is None:
        return
    branches = len(result.deleted)
    echo(f"Deleted {branches} branch{'es' if branches != 1 else ''} of {repo_id}.")
    _print_after_branches(result)


_SHOWN_FILES = 20


def _print_after_branches(result: Any) -> None:
    """What a prune (or a retention policy's) did after the branches: main's index, the storage it freed."""
    if result.index_commit:
        echo(f"  main:   the index no longer lists them (commit {result.index_commit})")
    stored = result.storage
    if stored is not None:
        freed = f"freed {size(stored.freed_bytes)}: {count(len(stored.deleted), 'file')} permanently deleted"
        spared = f"; {count(stored.spared, 'file')} kept, held by a commit made since the plan" if stored.spared else ""
        used = "" if stored.used_storage is None else f"; the repository now stores {size(stored.used_storage)}"
        echo(f"  storage: {freed}{spared}{used}")


def _print_prune_plan(plan: Any, keep_best: bool, dry_run: bool) -> None:
    kept, deleted = len(plan.keep), len(plan.delete)
    echo(f"Plan{' (dry run)' if dry_run else ''}: {plan.repo_id}: keep {kept}, delete {deleted}")
    rows = [("keep", d) for d in plan.keep] + [("delete", d) for d in plan.delete]
    rows.sort(key=lambda row: (row[1].step if row[1].step is not None else -1, row[1].revision), reverse=True)
    width = max([len(d.revision) for _, d in rows], default=0)
    for action, d in rows:
        step = "" if d.step is None else f"step {d.step}"
        why = f"  ({', '.join(d.reasons)})" if d.reasons else ""
        echo(f"  {action:<6}  {d.revision:<{width}}  {step}{why}".rstrip())
    if keep_best and plan.best_step is None:
        echo("  note:  no best checkpoint is recorded (trainer_state.json's best_model_checkpoint is empty)")
    stored = plan.storage
    if stored is None:
        echo("  storage: kept (--keep-storage): the Hub frees nothing for a deleted branch")
    else:
        echo(
            f"  storage: delete {count(len(stored.delete), 'file')} ({size(stored.freed_bytes)}) that no remaining "
            f"commit holds; keep {count(stored.kept_files, 'file')} ({size(stored.kept_bytes)})"
        )
        for f in stored.delete[:_SHOWN_FILES]:
            echo(f"    delete  {one_line(f.filename or '?')}  {f.sha256[:12]}  {size(f.size)}")
        if len(stored.delete) > _SHOWN_FILES:
            echo(f"    ... and {len(stored.delete) - _SHOWN_FILES} more (--json lists them all)")
    if dry_run:
        echo("Nothing was deleted (dry run).")


def print_retention(retained: Any, dry_run: bool = False) -> None:
    """A retention policy's plan and result after a push, in one short block (push and watch print it)."""
    plan, result, policy = retained.plan, retained.result, retained.policy
    kept = ", ".join(d.revision for d in plan.keep) or "none"
    if dry_run:
        doomed = ", ".join(d.revision for d in plan.delete) or "nothing"
        echo(f"Retention (dry run): after the push, {policy.describe()}: would delete {doomed}; keep {kept}.")
        echo("  Nothing is deleted (dry run).")
        return
    assert result is not None
    gone = ", ".join(result.deleted) or "nothing"
    echo(f"Retention: {policy.describe()}: deleted {gone} of {plan.repo_id}; kept {kept}.")
    _print_after_branches(result)
