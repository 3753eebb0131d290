"""`hubsync push`: parse the flags, plan (hubsync.plan_push), push (hubsync.push) or preview, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .app import cli
from .errors import message_for
from .options import bad_flag_values, endpoint_option, flag_settings, push_options, token_option
from .output import count, echo, one_line, progress_bars, quiet_huggingface_hub, report, scrub, size
from .prune import print_retention


@cli.command()
@click.argument("path", type=click.Path(path_type=str))
@push_options
@click.option(
    "--select",
    metavar="WHICH",
    callback=bad_flag_values,
    help="For a run folder: latest, best, all, last:N or STEP[,STEP...] [default: latest].",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; touch nothing locally or on the Hub.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON: the plans, then the results.")
@endpoint_option
@token_option
@click.pass_context
def push(
    ctx: click.Context,
    /,
    path: str,
    dry_run: bool,
    as_json: bool,
    endpoint: str | None,
    token: str | None,
    **flags: Any,
) -> None:
    """Push checkpoints to a Hub repository, each as one commit on its own branch.

    PATH is a checkpoint folder, or a run folder holding checkpoint-N folders (then --select picks which).
    The repository is created (private) when missing. Pickled weights are converted to safetensors, the
    placeholder README.md is replaced by a model card rendered from the training record (with a loss
    plot), training-only state is left out unless --training-state keep, and main's README indexes the
    revisions pushed so far.

    With --keep N (or `keep` in the configuration, HUBSYNC_KEEP), once the push has landed the repository is
    pruned to the N newest checkpoint branches as `hubsync prune --keep N` would (with --keep-best,
    --keep-tagged, --keep-storage); the branch just pushed always stays. When that prune fails, the push
    stays done and the exit code is 1.

    Defaults come from hubsync.toml in or beside the run folder, or [tool.hubsync] in the training
    project's pyproject.toml; HUBSYNC_* variables override them, and flags override both.

    \b
    Example:
      hubsync push out/my-run/checkpoint-1000 --repo me/my-model
      hubsync push out/my-run --select all --repo me/my-model --training-state keep --tag v1
    """
    from hubsync.api import Pruned, Pushed, Pushing, plan_push, preview_push
    from hubsync.api import push as push_job
    from hubsync.core.errors import (
        CheckpointPushError,
        HubsyncError,
        IncompletePushError,
        MissingRepoError,
        RetentionError,
    )

    settings = flag_settings(ctx, Path(path), flags)
    try:
        job = plan_push(path, token=token, settings=settings)  # every plan first: bad input fails before uploads
    except MissingRepoError:
        raise click.UsageError(
            "Missing option '--repo' (or `repo` in hubsync.toml / [tool.hubsync], or HUBSYNC_REPO)."
        ) from None
    for folder, missing in job.passed_over.items():
        echo(f"Passed over {folder}: it is not complete (no {missing})", err=True)
    if dry_run:
        quiet_huggingface_hub(show_progress=False)
        previews = preview_push(job, endpoint=endpoint, token=token, report=report)
        retained = _preview_retention(job, endpoint, token)
        if as_json:
            would = {} if retained is None else {"retention": _retention_json(retained)}
            shown = [p.to_json() | {"hub": v.to_json()} for p, v in zip(job.plans, previews, strict=True)]
            echo(json.dumps(job.to_json() | {"plans": shown} | would, indent=2))
            return
        for plan, preview in zip(job.plans, previews, strict=True):
            _print_plan(plan, preview)
        if isinstance(retained, str):
            echo(f"Retention (dry run): after the push, {retained}")
        elif retained is not None:
            print_retention(retained, dry_run=True)
        return

    results: list[Any] = []
    started: list[Any] = []
    retained_after: list[Any] = []

    def on_event(event: object) -> None:
        if isinstance(event, Pushing):
            started.append(event.plan)
        elif isinstance(event, Pushed):
            results.append(event.result)
            if not as_json:
                _print_result(event.plan, event.result)
        elif isinstance(event, Pruned):
            retained_after.append(event.retained)
            if not as_json:
                print_retention(event.retained)
        else:
            report(event)

    quiet_huggingface_hub()
    try:
        push_job(job, endpoint=endpoint, token=token, report=on_event, progress_bars=not as_json and progress_bars())
    except RetentionError as exc:  # the push landed: its results, then the policy's failure (exit code 1)
        if as_json:
            failed = {"keep": exc.keep, "error": scrub(message_for(exc.cause))}
            echo(json.dumps(_json(job, results) | {"retention": {"failed": failed}}, indent=2))
        raise
    except HubsyncError as exc:
        if as_json and started:  # what landed before the failure, for a script to pick up
            cause = exc.__cause__ if isinstance(exc, CheckpointPushError) else exc  # the checkpoint's own failure
            landed = results + ([cause.result] if isinstance(cause, IncompletePushError) else [])
            said = message_for(cause) if isinstance(cause, HubsyncError) else message_for(exc)
            failed = {"checkpoint": started[-1].checkpoint, "error": scrub(said)}
            echo(json.dumps(_json(job, landed) | {"failed": failed}, indent=2))
        raise
    if as_json:
        after = {"retention": retained_after[0].to_json()} if retained_after else {}
        echo(json.dumps(_json(job, results) | after, indent=2))


def _preview_retention(job: Any, endpoint: str | None, token: str | None) -> Any:
    """What the retention policy would do after the push (a Retained, read only), None without a policy, or
    the policy in words when the Hub cannot say which branches it has."""
    from hubsync.api import preview_retention
    from hubsync.core.errors import HubError
    from hubsync.core.options import retention_policy

    policy = retention_policy(job.settings)
    if policy is None:
        return None
    try:
        return preview_retention(job, endpoint=endpoint, token=token)
    except HubError as exc:
        return f"{policy.describe()} (which branches go is not known: {one_line(message_for(exc))})"


def _retention_json(retained: Any) -> Any:
    return {"would": retained} if isinstance(retained, str) else retained.to_json()


def _json(job: Any, results: list[Any]) -> dict[str, Any]:
    """--json: the plans, the results of what landed, and the incomplete checkpoints --select passed over."""
    return {**job.to_json(), "results": [r.to_json() for r in results]}


def _print_result(plan: Any, result: Any) -> None:
    verb = "Pushed" if result.created else "Already up to date:"
    echo(f"{verb} {plan.checkpoint} -> {result.repo_id} @ {result.revision}")
    echo(f"  files:  {result.files} ({size(result.bytes)})")
    if result.sent_bytes is not None:
        how = ["through Xet"] if result.xet else []
        if result.sent_bytes < result.bytes:  # unchanged files, or chunks Xet found on the Hub already
            how.append(f"the Hub already held {size(result.bytes - result.sent_bytes)}")
        echo(f"  sent:   {size(result.sent_bytes)} of {size(result.bytes)}" + (f" ({'; '.join(how)})" if how else ""))
    if result.deleted:
        echo(f"  deleted: {count(result.deleted, 'file')} the branch held (this push leaves them out)")
    for skipped in plan.skipped:
        echo(f"  skipped: {skipped}")
    for warning in plan.warnings:
        echo(f"  warning: {warning}")
    if plan.signing:
        echo(f"  signed: model.sig, by {plan.signing.signer}")
    echo(f"  commit: {result.commit}")
    if result.tags:
        echo(f"  tags:   {', '.join(result.tags)}")
    if result.released:
        echo("  main:   its inference files are published on main")
    echo(f"  url:    {result.url}")


def _repo_line(plan: Any, preview: Any) -> str:
    visibility = "private" if plan.private else "public"
    if not preview.looked:
        return (
            f"{plan.repo_id}: not known whether it exists ({preview.reason}); a push creates it {visibility} if missing"
        )
    if not preview.exists:
        return f"{plan.repo_id} will be created, {visibility}"
    branch = "exists" if preview.branch_exists else "will be created"
    return f"{plan.repo_id} exists ({'private' if preview.private else 'public'}); branch {plan.revision} {branch}"


def _print_plan(plan: Any, preview: Any) -> None:
    echo(f"Plan (dry run): {plan.checkpoint} -> {plan.repo_id} @ {plan.revision}")
    echo(f"  repo    {_repo_line(plan, preview)}")
    for upload in plan.uploads:
        if upload.path_in_repo in preview.unchanged:
            echo(f"  same    {upload.path_in_repo}  (unchanged: the branch already holds it)")
            continue
        how = (
            f"converted from {upload.converted_from}, compared with the branch when pushed, "
            + ("" if _measured_size(upload) else "about ")
            if upload.converted_from
            else "generated, "
            if upload.generated
            else ""
        )
        echo(f"  upload  {upload.path_in_repo}  ({how}{size(upload.size)})")
    for dropped in plan.dropped:
        echo(f"  drop    {dropped}  (training state; --training-state keep uploads it)")
    for skipped in plan.skipped:
        echo(f"  skip    {skipped}")
    for warning in plan.warnings:
        echo(f"  warning: {warning}")
    for pickled in plan.conversion.superseded:
        echo(f"  skip    {pickled}  (the safetensors file beside it holds the same tensors)")
    for path in preview.delete:
        echo(f"  delete  {path}  (the branch holds it; this push leaves it out)")
    changed = [u for u in plan.uploads if u.path_in_repo not in preview.unchanged]
    exact = all(_measured_size(u) for u in changed if u.converted_from)
    total = size(sum(u.size for u in changed))
    deletes = f"; {len(preview.delete)} to delete" if preview.delete else ""
    echo(f"  total   {count(len(changed), 'file')} to upload, {'' if exact else 'about '}{total}{deletes}")
    if preview.stops_resumable:
        keep = "; --training-state keep keeps it" if plan.training_state == "drop" else ""
        lacks = ", ".join(preview.lacks_after)
        echo(f"  resume  resumable on the Hub now, not after this push (no {lacks}{keep})")
    if plan.signing:
        echo(f"  sign    model.sig over every file above, by {plan.signing.signer}")
    echo(f"  commit  {plan.commit_message}")
    if plan.tags:
        echo(f"  tags    {', '.join(plan.tags)}")
    if plan.release:
        echo(f"  main    also gets {', '.join(plan.release)}")
    if preview.main_readme is not None:
        from hubsync.core.index import README_ACTIONS

        echo(f"  readme  main's README.md: {README_ACTIONS[preview.main_readme]}")


def _measured_size(upload: Any) -> bool:
    """Whether a converted file's size is measured (training state, FSDP's tensors files and consolidated
    weights: convert.measured_push) rather than its source's (weights, FSDP's dcp.json)."""
    from hubsync.core.checkpoint import DCP_METADATA_RE
    from hubsync.core.conversion import DISTCP_FILE_RE, STATE_FILE_RE

    source = upload.converted_from
    if source is None:
        return False
    consolidated = DCP_METADATA_RE.match(source) is not None and "/" not in upload.path_in_repo
    return consolidated or STATE_FILE_RE.match(source) is not None or DISTCP_FILE_RE.match(source) is not None
