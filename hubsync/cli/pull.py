"""`hubsync pull`: restore a checkpoint revision (hubsync.pull_checkpoint), print where it is."""

from __future__ import annotations

import json
import os

import click

from .app import cli
from .options import endpoint_option, max_wait_option, token_option
from .output import echo, progress_bars, quiet_huggingface_hub, report, size


@cli.command()
@click.argument("repo_id", metavar="REPO")
@click.option("--revision", metavar="REV", help="Branch, tag or commit [default: the newest checkpoint revision].")
@click.option(
    "--to",
    "to",
    type=click.Path(file_okay=False, path_type=str),
    help="Folder that receives checkpoint-<step> [default: out/<repo name>].",
)
@click.option("--force", is_flag=True, help="Replace a checkpoint folder that exists and is not empty.")
@click.option(
    "--verify",
    type=click.Path(dir_okay=False, path_type=str),
    metavar="KEY.pub",
    envvar="HUBSYNC_VERIFY",
    help="Refuse the revision unless its model.sig is signed by this EC public key (PEM) and covers its files as "
    "they are; checked before anything is placed or rebuilt. Needs hubsync[sign]. HUBSYNC_VERIFY sets it for "
    "every pull.",
)
@click.option(
    "--verify-chain",
    type=click.Path(dir_okay=False, path_type=str),
    metavar="CHAIN.pem",
    help="As --verify, for a revision signed with a certificate: the chain it must lead to.",
)
@click.option("--verify-identity", metavar="IDENTITY", help="As --verify, for a keyless (Sigstore) signature.")
@click.option(
    "--verify-issuer",
    metavar="URL",
    help="The OIDC issuer of --verify-identity (GitHub Actions: https://token.actions.githubusercontent.com).",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@endpoint_option
@token_option
@max_wait_option
def pull(
    repo_id: str,
    revision: str | None,
    to: str | None,
    force: bool,
    verify: str | None,
    verify_chain: str | None,
    verify_identity: str | None,
    verify_issuer: str | None,
    as_json: bool,
    endpoint: str | None,
    token: str | None,
    max_wait: float | None,
) -> None:
    """Restore a checkpoint revision so that training resumes from it.

    Resolves REV to one commit, downloads its files, checks each against the Hub's sha256 or git blob id,
    and writes DIR/checkpoint-<step> whole, for Trainer.train(resume_from_checkpoint=...).

    With --verify KEY.pub, the revision's signature (model.sig, written by `hubsync push --sign-key`) is checked
    first: a revision that is unsigned, signed by another key, or changed since it was signed is refused.

    \b
    Example:
      hubsync pull me/my-model --revision checkpoint-1000
      hubsync pull me/my-model --revision checkpoint-1000 --verify signing.pub
    """
    from hubsync.api import pull_checkpoint
    from hubsync.core.conversion import resume_missing
    from hubsync.core.layouts import state_layout
    from hubsync.core.paths import display_path

    if verify == "" or (verify is None and os.environ.get("HUBSYNC_VERIFY") == ""):  # never a check turned off
        where = "--verify" if verify == "" else "HUBSYNC_VERIFY"
        raise click.UsageError(
            f"{where} is empty: name the signer's public key (KEY.pub), or unset it to pull without verifying."
        )
    quiet_huggingface_hub()
    outcome = pull_checkpoint(
        repo_id,
        revision,
        to,
        force=force,
        endpoint=endpoint,
        token=token,
        report=report,
        progress_bars=not as_json and progress_bars(),
        max_wait=max_wait,
        verify=verify,
        verify_chain=verify_chain,
        verify_identity=verify_identity,
        verify_issuer=verify_issuer,
    )
    plan, shown = outcome.plan, display_path(outcome.path)
    if as_json:
        echo(json.dumps(outcome.to_json(), indent=2))
    elif outcome.already_there:
        echo(f"Already there: {repo_id} @ {plan.revision} ({plan.commit[:12]}) in {shown}")
    else:
        echo(f"Pulled {repo_id} @ {plan.revision} ({plan.commit[:12]}) -> {shown}")
        placed = sum(1 for p in outcome.path.rglob("*") if p.is_file())  # rebuilt .pt files replace their forms
        echo(
            f"  files: {len(plan.files)} downloaded ({size(plan.total_bytes)}), each verified against the Hub's "
            f"hashes; {placed} in the folder"
        )
        if verify or verify_chain or verify_identity:
            echo(f"  signature: model.sig verified ({_signer(verify, verify_chain, verify_identity)}), before placing")
        layout = state_layout(frozenset(f.path for f in plan.files))
        if layout is not None:
            echo(f"  optimizer state: {layout.describe()}; {layout.how_to_resume()}")
        if plan.resumable:
            echo(f'  resume: Trainer.train(resume_from_checkpoint="{shown}")')
        else:
            missing = " or ".join(resume_missing(frozenset(f.path for f in plan.files)))
            echo(f"  note: this revision is not resumable: it has no {missing}")


def _signer(key: str | None, chain: str | None, identity: str | None) -> str:
    from hubsync.core.paths import display_path

    if key:
        from hubsync.signing import key_fingerprint

        return f"signed by the key {key_fingerprint(key, False)}"
    if chain:
        return f"signed with a certificate of the chain {display_path(chain)}"
    return f"signed keyless by {identity}"
