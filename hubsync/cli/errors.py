"""The messages people read: one ordered table from exception type to a line naming the problem and the next step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hubsync.core import errors as e
from hubsync.core.remote_paths import shown_remote_path


def _shell(value: object) -> str:
    """A value as a shell command takes it, for a command that a message tells a person to run."""
    import shlex

    return shlex.quote(str(value))


def _hub(err: e.HubError) -> str:
    where = f" {err.repo_id}" if err.repo_id else ""
    if err.revision:
        where += f" at {err.revision}"
    return where


def _bytes(n: int) -> str:
    if not isinstance(n, int) or n < 1000:
        return f"{n} bytes"
    value = n / 1000
    for unit in ("KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


ERROR_MESSAGES: list[tuple[type[BaseException], Callable[[Any], str]]] = [
    (e.CheckpointPushError, lambda err: _push_failed(err)),
    (
        e.RetentionError,
        lambda err: (
            f"Pushed {', '.join(err.pushed)} to {err.repo_id}, but then the retention policy (keep = {err.keep}) "
            "could not prune: "
            + message_for(err.cause).removeprefix("Error: ").rstrip(".")
            + f". The push stays done; prune later with `hubsync prune {err.repo_id} --keep {err.keep}` "
            "(with the keep-* options of the policy)."
        ),
    ),
    (
        e.IncompletePushError,
        lambda err: (
            f"{err.checkpoint} landed on {err.revision} (commit {err.commit[:12]}), but then "
            + message_for(err.cause).removeprefix("Error: ").rstrip(".")
            + ". Run the same push again: it commits nothing new and finishes the tags and main's index."
        ),
    ),
    (
        e.NotACheckpointError,
        lambda err: (
            f"{err.path} is not a checkpoint folder: {err.reason}. "
            "Pass a checkpoint-N folder that the Trainer wrote (it holds trainer_state.json and the weights)."
        ),
    ),
    (
        e.IncompleteCheckpointError,
        lambda err: (
            f"{err.path} is not a complete checkpoint: it has no {err.missing}. "
            + (
                "The Trainer writes trainer_state.json last: wait until the save has finished, or push another "
                "checkpoint."
                if "trainer_state.json" in err.missing
                else "Push a checkpoint the Trainer saved (adapter_model.safetensors or model.safetensors)."
            )
        ),
    ),
    (
        e.CheckpointFileError,
        lambda err: (
            f"cannot read {err.path}: {err.reason.rstrip('.')}. Check that the checkpoint was written completely."
        ),
    ),
    (
        e.UnsafePickleError,
        lambda err: (
            f"refused {err.path}: it needs {err.what} to load, which could run code, so it was not loaded. "
            "Re-save it in a trusted environment as plain tensors and containers (save_pretrained(), or "
            "torch.save() of a state dict); for training state, --training-state-format pickle uploads it as it is, "
            "into a private repository."
        ),
    ),
    (
        e.ConflictingWeightsError,
        lambda err: (
            f"{err.pickled} and {err.safetensors} hold different weights ({err.reason}); a reader would load "
            "one of them and the other would be lost. Remove the stale file from the checkpoint (keep a copy "
            "elsewhere if unsure), then push again."
        ),
    ),
    (
        e.InvalidSafetensorsError,
        lambda err: (
            f"{err.path} is not a valid safetensors file ({err.reason}), so it is not published: a reader would "
            "refuse to load it. Save the weights again (save_pretrained(), or safetensors' save_file()), then "
            "push again."
        ),
    ),
    (
        e.UnreadableWeightsError,
        lambda err: (
            f"cannot convert {err.path}: {err.reason}. Check that the file is complete; "
            "hubsync reads state dicts written by torch.save() (torch >= 1.6)."
        ),
    ),
    (
        e.VerificationError,
        lambda err: f"{err.path} was not converted: read back, {err.reason}. Nothing was kept; run it again.",
    ),
    (
        e.OutputInsideCheckpointError,
        lambda err: (
            f"{err.path} lies inside the checkpoint (links followed), and hubsync never writes into a checkpoint. "
            "Choose an output outside it."
        ),
    ),
    (
        e.OutputExistsError,
        lambda err: (
            f"{err.path} already exists and is not empty. Choose another folder with -o, "
            "or pass --force to replace its files."
        ),
    ),
    (
        e.BaseModelError,
        lambda err: (
            "the model card needs the base model's Hub id, and the checkpoint names "
            + ("none" if err.found is None else "a local path, which is never published")
            + ". Pass it with --base-model, such as --base-model meta-llama/Llama-3.1-8B."
        ),
    ),
    (
        e.TemplateError,
        lambda err: (
            f"cannot render the card template {err.path}: {err.reason.rstrip('.')}. Fix the template, or leave out "
            "--template."
        ),
    ),
    (
        e.InvalidLicenseError,
        lambda err: (
            f"the Hub does not accept the license {err.license!r} ({err.source}), only the identifiers it lists"
            + (f"; did you mean {err.suggestion}?" if err.suggestion else ".")
            + " Pass one of those at https://huggingface.co/docs/hub/repositories-licenses, or other with a "
            "LICENSE file."
        ),
    ),
    (
        e.SelectionError,
        lambda err: (
            f"cannot select {err.select!r}: {err.reason}. --select takes latest, best, all, last:N or "
            "STEP[,STEP...] of a run folder's checkpoint-N folders."
        ),
    ),
    (
        e.PublicTrainingStateError,
        lambda err: (
            f"{err.repo_id} {e.public(err.exists)}, and --training-state keep would publish the optimizer, "
            "scheduler and RNG state with it. Push to a private repository, drop the state, or pass "
            "--allow-public-state."
        ),
    ),
    (
        e.WiderExposureError,
        lambda err: (
            f"{err.source}: {err.reason}, and a file or a variable may make a push more private, never less. "
            f"Pass {err.flag} on the command line if that is what you want, or "
            + (f"unset {err.source}." if err.source.startswith("HUBSYNC_") else f"remove it from {err.source}.")
        ),
    ),
    (e.SettingError, lambda err: _bad_setting(err)),
    (
        e.UnknownVariableError,
        lambda err: (
            f"{err.name} is not a variable hubsync reads; did you mean {err.meant}? Nothing was done: rename it, or "
            "unset it."
        ),
    ),
    (
        e.SharedBranchError,
        lambda err: (
            f"{err.first} and {err.second} would both go to the branch {err.branch}, each replacing the one "
            "before. Put {step} in --revision, or push one checkpoint."
        ),
    ),
    (
        e.ConfigError,
        lambda err: f"bad configuration in {err.source}: {err.reason}. Fix it there, then run the command again.",
    ),
    (
        e.PullTargetExistsError,
        lambda err: (
            f"{err.path} already exists and is not empty, and pulling never overwrites it silently. "
            "Pull into another folder with --to, or pass --force to replace it."
        ),
    ),
    (
        e.MissingExtraError,
        lambda err: (
            f"{err.feature} needs {err.module}, which is not installed here. "
            f"Install hubsync's {err.extra} extra: pip install 'hubsync[{err.extra}]'."
        ),
    ),
    (
        e.RenderedTooLargeError,
        lambda err: (
            f"cannot write {err.what}: {err.reason.rstrip('.')}, so a value it shows (a metric's name, a field of "
            "trainer_state.json or adapter_config.json, or of main's index on the Hub) is far too large. Nothing was "
            "uploaded; check those files."
        ),
    ),
    (
        e.UnscrubbableFileError,
        lambda err: (
            f"refused {shown_remote_path(err.path)}: it holds something shaped like a token, and {err.why}. Nothing "
            "was uploaded; take the secret out of a copy of the checkpoint and push the copy."
        ),
    ),
    (
        e.NameTakenError,
        lambda err: (
            f"refused {shown_remote_path(err.path)} in {err.checkpoint}: it {err.reason}. Nothing was uploaded; "
            "push a copy of the checkpoint without it."
        ),
    ),
    (
        e.UnpublishableNameError,
        lambda err: (
            f"refused {shown_remote_path(err.path)} in {err.checkpoint}: {err.reason}, so a revision holding it "
            "could not be pulled back. Nothing was uploaded; rename or remove it in a copy of the checkpoint and "
            "push the copy."
        ),
    ),
    (
        e.HubLimitError,
        lambda err: (
            f"refused {shown_remote_path(err.path)} in {err.checkpoint}: it {err.reason}, so the Hub would refuse the "
            "commit. Nothing was uploaded; split it into smaller files or folders in a copy of the checkpoint and "
            "push the copy."
        ),
    ),
    (
        e.UnsafeRemotePathError,
        lambda err: (
            f"refused: {err.revision or 'the revision'} holds the path {shown_remote_path(err.path)} ({err.reason}), "
            "which hubsync never places or handles. Nothing was written or changed; use another revision, or delete "
            "that file from the branch (or the branch; whoever may write to the repository can)."
        ),
    ),
    (
        e.HostileListingError,
        lambda err: (
            f"refused: the tree of {err.revision} lists {err.reason}, which no checkpoint has. Nothing was "
            "written; use another revision, or ask whoever may write to the repository to fix the branch."
        ),
    ),
    (
        e.NotEnoughSpaceError,
        lambda err: (
            f"the revision's files take {_bytes(err.needed)}, more than the {_bytes(err.free)} free where "
            f"{err.path} would go. Nothing was written; free some space, or pull with --to onto another disk."
        ),
    ),
    (
        e.SignatureError,
        lambda err: (
            f"signature check failed: {shown_remote_path(err.path)} {err.reason}. Nothing was placed; pull a revision "
            "its signer signed, or ask them to push it again with --sign-key."
        ),
    ),
    (
        e.SigningError,
        lambda err: f"cannot sign or verify with {err.path}: {err.reason}. Nothing was pushed or placed.",
    ),
    (
        e.PullVerificationError,
        lambda err: (
            f"the downloaded {err.path} {err.reason}, so nothing was placed. Run the pull again; if it fails the "
            "same way, the file on the Hub is damaged."
        ),
    ),
    (
        e.NotACheckpointRevisionError,
        lambda err: (
            f"{err.repo_id} @ {err.revision} is not a checkpoint revision: {err.reason}. Nothing was written; "
            f"`hubsync ls {err.repo_id}` lists the checkpoint revisions to pull."
        ),
    ),
    (
        e.MissingRepoError,
        lambda err: (
            "no repository to push to. Pass one (--repo, or repo_id in Python), or set `repo` in hubsync.toml "
            "/ [tool.hubsync], or HUBSYNC_REPO."
        ),
    ),
    (
        e.NoCheckpointRevisionError,
        lambda err: (
            f"{err.repo_id} has no checkpoint revision to pull. Pass one with --revision; `hubsync ls "
            f"{err.repo_id}` lists them."
        ),
    ),
    (
        e.UnrepresentableStateError,
        lambda err: (
            f"{err.path} holds a {err.what}, which hubsync's pickle-free format cannot represent. Push it with "
            "--training-state-format pickle (private repositories only), or drop the training state."
        ),
    ),
    (
        e.PicklesInPublicRepoError,
        lambda err: (
            f"{err.repo_id} {e.public(err.exists)}, and pickled training state runs code when loaded, so it goes "
            "only into private repositories. Use the default --training-state-format safe, or a private repository."
        ),
    ),
    (
        e.DamagedStateError,
        lambda err: (
            f"cannot rebuild the training state from {err.path}: {err.reason}. Nothing was placed; the revision's "
            "training state is damaged: pull another revision, or push that checkpoint again."
        ),
    ),
    (
        e.LinkOutsideCheckpointError,
        lambda err: (
            f"{err.path} is a link that leads outside the checkpoint ({err.target}), and hubsync uploads only what "
            "lies inside it. Copy the file into the checkpoint in place of the link (or delete the link), then run "
            "it again."
        ),
    ),
    (
        e.WatchStateError,
        lambda err: (
            f"cannot read the watch state {err.path} ({err.reason}). Move it aside and start the watch again: "
            "checkpoints already on the Hub are recognised and not pushed twice."
        ),
    ),
    (
        e.NotARunFolderError,
        lambda err: (
            f"{err.path} is a checkpoint folder, not a run folder ({err.reason}). hubsync watch follows a whole "
            f"run: pass the folder that holds its checkpoint-N folders, such as {err.parent}."
        ),
    ),
    (
        e.InvalidRepoIdError,
        lambda err: f"{err.repo_id!r} is not a repository id. Use NAMESPACE/NAME, such as me/my-model.",
    ),
    (
        e.InvalidTagError,
        lambda err: f"{err.revision!r} cannot be a tag name ({err.reason}). Choose another tag name.",
    ),
    (
        e.InvalidRevisionError,
        lambda err: f"{err.revision!r} cannot be a branch name ({err.reason}). Choose another with --revision.",
    ),
    (
        e.TokenMissingError,
        lambda err: f"no Hugging Face token for {err.endpoint}. Set HF_TOKEN, pass --token, or run `hf auth login`.",
    ),
    (
        e.TrustedPublishingError,
        lambda err: (
            f"Trusted Publishing (HF_OIDC_RESOURCE) got no token from {err.endpoint}: {err.detail}. In GitHub Actions, "
            "give the job `permissions: id-token: write` and register the workflow as a trusted publisher of the "
            "repository, or pass a token instead."
        ),
    ),
    (
        e.TokenRejectedError,
        lambda err: (
            f"the Hub at {err.endpoint} rejected the token ({err.detail}). "
            "Check HF_TOKEN or --token; create a token with write access if needed."
        ),
    ),
    (
        e.PermissionDeniedError,
        lambda err: (
            f"the token may not write to{_hub(err)} on {err.endpoint} ({err.detail}). "
            "Use a token with write access to that namespace, or push to a repository of your own."
        ),
    ),
    (
        e.RevisionNotFoundError,
        lambda err: (
            f"no revision {err.revision!r} in {err.repo_id} on {err.endpoint}. "
            f"List its checkpoint revisions with `hubsync ls {err.repo_id}`, and pass one of them."
        ),
    ),
    (
        e.RepoNotFoundError,
        lambda err: (
            f"repository {err.repo_id} not found on {err.endpoint}, or the token cannot see it. "
            "Check the name, and use a token of its owner for a private repository."
        ),
    ),
    (
        e.LocalFileError,
        lambda err: f"{err.path}: {err.reason.rstrip('.')}. Check the path, then run the command again.",
    ),
    (
        e.BranchNamedLikeTagError,
        lambda err: (
            f"refused in {err.repo_id}: {err.detail}, and a name for two commits pulls either. Choose another "
            "--revision; nothing was pushed."
        ),
    ),
    (
        e.TagExistsError,
        lambda err: (
            f"the tag {err.revision} already exists in {err.repo_id} ({err.detail}), and tags never move. "
            f"Choose another tag name, or delete that tag first: `hubsync tag --delete {_shell(err.repo_id)} "
            f"{_shell(err.revision)}`."
        ),
    ),
    (
        e.TagNotFoundError,
        lambda err: (
            f"{err.repo_id} on {err.endpoint} has no tag {err.revision!r} ({err.detail}), so nothing was deleted. "
            "Check the name, and pass it as the Hub lists it."
        ),
    ),
    (
        e.CommitConflictError,
        lambda err: (
            f"other pushes kept moving{_hub(err)} on {err.endpoint} while this one tried to commit. "
            "Run the command again; nothing was half-written."
        ),
    ),
    (e.XetStorageError, lambda err: _xet_failed(err)),
    (
        e.RateLimitedError,
        lambda err: (
            f"rate-limited by the Hub at {err.endpoint}{' for' + _hub(err) if err.repo_id else ''}: it asks to wait "
            f"{err.asked} s{f' more, after {err.waited:.0f} s' if err.waited >= 0.5 else ''}, longer than --max-wait "
            f"allows ({err.max_wait:g} s). Raise --max-wait (or HUBSYNC_MAX_WAIT, or max-wait in hubsync.toml) to "
            "wait it out, or run the command again later."
        ),
    ),
    (
        e.HubUnreachableError,
        lambda err: (
            f"cannot reach the Hub at {err.endpoint} ({err.detail}). "
            "Check the address (--endpoint or HF_ENDPOINT) and the network, or start one with `hubsync localhub`."
        ),
    ),
    (
        e.RemoteFileGoneError,
        lambda err: (
            f"{err.endpoint} no longer has the content of a file of {err.repo_id or 'the repository'}"
            f"{' @ ' + err.revision if err.revision else ''} ({err.detail}): it was permanently deleted, as "
            "`hubsync prune` does for the commits of deleted branches. Nothing was placed; pull a revision that "
            "`hubsync ls` lists."
        ),
    ),
    (
        e.NotAHubError,
        lambda err: (
            f"{err.endpoint} does not answer as a Hugging Face Hub ({err.detail}). "
            "Check the address passed with --endpoint or HF_ENDPOINT."
        ),
    ),
    (
        e.DownloadTooSlowError,
        lambda err: (
            f"the Hub at {err.endpoint} serves{_hub(err)} {shown_remote_path(err.path)} too slowly: it {err.told}, "
            "past the time hubsync allows for that size (a minute, then 16 KiB/s), so the pull stopped and nothing "
            "was placed. Run it again later, or use another Hub."
        ),
    ),
    (
        e.RemoteFileTooLargeError,
        lambda err: (
            f"the Hub at {err.endpoint} serves{_hub(err)} a {shown_remote_path(err.path)} that {err.told}, so "
            "hubsync read no further. Ask the repository's owner to fix the file, or use another revision or Hub."
        ),
    ),
    (
        e.EndlessListingError,
        lambda err: (
            f"the Hub at {err.endpoint} sent a {err.what} for{_hub(err)} that {err.told}, so hubsync read no "
            "further and stopped there. Ask the Hub's operator to fix it, or use another Hub."
        ),
    ),
    (
        e.HubTooSlowError,
        lambda err: (
            f"the Hub at {err.endpoint} is too slow: its answer for{_hub(err)} ({err.what}) {err.took}. "
            "Try again later (a watch retries by itself), or use another Hub."
        ),
    ),
    (
        e.HubError,
        lambda err: (
            f"the Hub at {err.endpoint} refused the request for{_hub(err)} ({err.detail}). "
            "It refuses what was sent, so running it again will fail the same way: change what the Hub names, or "
            "run it with HUBSYNC_DEBUG=1 and report the output."
            if isinstance(err.status, int) and 400 <= err.status < 500 and err.status not in (408, 429)
            else f"the Hub at {err.endpoint} refused the request for{_hub(err)} ({err.detail}). "
            "Run the command again; if it fails the same way, run it with HUBSYNC_DEBUG=1 and report the output."
        ),
    ),
    (e.HubsyncError, lambda err: f"{err}."),
]


def _bad_setting(err: e.SettingError) -> str:
    from hubsync.core.config import SETTINGS

    setting = SETTINGS.get(err.setting)
    if err.from_flag or setting is None:
        step = f"Fix {err.source}"
    elif err.source == setting.variable:
        step = f"Fix {err.source}, or unset it"
    else:  # a flag would not help: every value is checked, also one that a flag overrides
        step = f"Fix it in {err.source}"
    return f"{err.source}: {err.reason}{'' if err.reason.endswith('?') else '.'} {step}."


def _xet_failed(err: e.XetStorageError) -> str:
    """What failed is the Xet storage the Hub hands out for uploads, not the Hub: say which, and what to do."""
    storage = f"the Xet storage ({err.storage}) that the Hub at {err.endpoint} hands out for{_hub(err)}"
    lfs = "or push through plain LFS with HF_HUB_DISABLE_XET=1"
    if err.kind == "unreachable":
        return f"cannot reach {storage} ({err.detail}). Check the network to it and run the command again, {lfs}."
    if err.kind == "refused":
        return (
            f"{storage} refused its upload token ({err.detail}). Run the command again for a fresh token; if it "
            f"fails the same way, ask the Hub's operator, {lfs}."
        )
    if err.kind == "unreadable":
        return (
            f"{storage} could not give back a file ({err.detail}); nothing was placed. Run the command again; if it "
            "fails the same way, pull over plain HTTP with HF_HUB_DISABLE_XET=1."
        )
    if err.kind == "busy":
        return (
            f"{storage} stayed busy with another transfer ({err.detail}); nothing was committed. Run the command "
            f"again when the other transfer is done, {lfs}."
        )
    if err.kind == "expired":
        return (
            f"the Hub at {err.endpoint} hands out Xet storage tokens for{_hub(err)} that have already expired "
            f"({err.detail}). Check this machine's clock, then run the command again, {lfs}."
        )
    return (
        f"{storage} broke off the upload ({err.detail}); nothing was committed. Run the command again (it sends "
        f"only what the storage lacks), {lfs}."
    )


def _push_failed(err: e.CheckpointPushError) -> str:
    landed = ", ".join(err.landed) or "none"
    before = f"on the Hub: {landed}; not pushed: {', '.join(err.not_pushed)}; a re-run pushes the rest"
    cause = message_for(err.cause).removeprefix("Error: ")
    return f"pushing {err.checkpoint} failed ({before}): {cause}"


def message_for(exc: BaseException) -> str:
    for exc_type, render in ERROR_MESSAGES:
        if isinstance(exc, exc_type):
            return "Error: " + render(exc)
    raise TypeError(f"no message for {type(exc).__name__}")
