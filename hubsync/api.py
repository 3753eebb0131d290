"""hubsync as a library: what each command does, as functions that raise hubsync.errors and print nothing.

Each function takes the options its command takes, as keyword arguments (`training_state="keep"` for
`--training-state keep`), resolved the same way: an argument over its HUBSYNC_* variable over the configuration
file (hubsync.toml or [tool.hubsync]) over the default. The Hub is reached at `endpoint` (default HF_ENDPOINT,
else https://huggingface.co) with `token` (default HF_TOKEN, else the saved login), or through `client`, any
object with the methods a HubClient has that the call uses. When the Hub rate-limits the requests (a 429 saying
when its window resets), each call waits as it says, up to `max_wait` seconds in all (the max-wait setting,
HUBSYNC_MAX_WAIT; default 600), and fails at once with RateLimitedError when it asks for longer. What happens on
the way (a push landed, a Hub call is retried or waits out a rate limit, a note on visibility) is passed to
`report`, if given, as one of the event classes below.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from hubsync.core.checkpoint import Checkpoint, read_checkpoint
from hubsync.core.config import (
    CARD_SETTINGS,
    DEFAULT_MAX_WAIT,
    FileConfig,
    Resolved,
    find_config,
    resolve_settings,
)
from hubsync.core.errors import (
    CheckpointPushError,
    HubError,
    HubsyncError,
    IncompletePushError,
    RetentionError,
    SettingError,
    TagExistsError,
)
from hubsync.core.options import (
    card_settings,
    given_settings,
    keyword_label,
    push_options,
    resolve_for,
    retention_policy,
)
from hubsync.core.plan import PushOptions, PushPlan, check_branch_name, check_distinct_branches, check_repo_id
from hubsync.core.plan import plan_push as plan_one_push
from hubsync.core.runs import choose_targets

if TYPE_CHECKING:
    from hubsync.convert import ConvertedFile
    from hubsync.core.prune import PrunePlan
    from hubsync.core.signing import Verifying
    from hubsync.core.tags import TagChange
    from hubsync.hub.client import HubClient
    from hubsync.hub.preview import HubPreview
    from hubsync.hub.prune import PruneResult, Retained, StorageSummary
    from hubsync.hub.pull import PullOutcome
    from hubsync.hub.push import PushResult
    from hubsync.hub.revisions import RevisionInfo
    from hubsync.hub.watch import Watcher, WatchTarget

Report = Callable[[object], None]


# What a call reports while it runs (the command prints them).
@dataclass(frozen=True)
class Pushing:
    """A checkpoint's push starts (everything the Hub could refuse has been asked)."""

    plan: PushPlan


@dataclass(frozen=True)
class Pushed:
    """A checkpoint's push landed (`result.created` is False when the branch already held it)."""

    plan: PushPlan
    result: PushResult


@dataclass(frozen=True)
class Pruned:
    """The retention policy (the keep settings) pruned the repository after the push landed: `retained.plan`
    and `retained.result` as `hubsync prune` has them."""

    retained: Retained


@dataclass(frozen=True)
class Retrying:
    """A Hub call failed in a way that may pass; it is tried again after `pause` seconds."""

    reason: str
    pause: float


@dataclass(frozen=True)
class RateLimited:
    """The Hub rate-limited a call; it is tried again after `pause` seconds (the Hub's reset time and a little
    jitter). Not a failure: it uses up none of the retries meant for outages."""

    pause: float


@dataclass(frozen=True)
class VisibilityNote:
    """The repository exists with another visibility than the one asked for, which applies only to a repository
    that has to be created. `source`: how it was asked for (a flag, keyword, variable or file)."""

    repo_id: str
    private: bool  # the repository's
    asked_private: bool
    source: str


@dataclass(frozen=True)
class PushJob:
    """Every checkpoint a push would push, each planned and checked (nothing on the Hub or on disk touched)."""

    plans: tuple[PushPlan, ...]
    checkpoints: tuple[Checkpoint, ...]
    settings: Resolved
    passed_over: Mapping[str, str] = field(default_factory=dict)  # incomplete checkpoint folder -> what it lacks

    def to_json(self) -> dict[str, Any]:
        return {
            "plans": [p.to_json() for p in self.plans],
            "passed_over": [{"checkpoint": c, "missing": m} for c, m in self.passed_over.items()],
        }


@dataclass(frozen=True)
class PruneOutcome:
    plan: PrunePlan
    result: PruneResult | None  # None for a dry run

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan.to_json(), **({} if self.result is None else {"result": self.result.to_json()})}


P = ParamSpec("P")
R = TypeVar("R")


def _public(function: Callable[P, R]) -> Callable[P, R]:
    """A public function: what it raises names no token (a token passed in the wrong argument, as a repo id, is
    quoted by the message that refuses it), and a file that cannot be read or written is a LocalFileError that
    shows the path as given, not an OSError with the absolute one."""

    @functools.wraps(function)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except HubsyncError as exc:
            _redact(exc, kwargs.get("token"))
            raise
        except OSError as exc:
            if exc.filename is None:  # not a file's: a socket's, say
                raise
            from hubsync.core.errors import LocalFileError
            from hubsync.core.paths import display_path

            shown = display_path(os.fsdecode(exc.filename))
            shown = shown if len(shown) <= 200 else f"{shown[:120]}…{shown[-60:]}"  # a name can be 4,000 long
            raise LocalFileError(shown, exc.strerror or type(exc).__name__) from exc

    return call


def _redact(exc: BaseException, token: object) -> None:
    from hubsync.core.secrets import redact, saved_tokens

    tokens = [t for t in (token if isinstance(token, str) else "", *saved_tokens()) if t]
    seen: BaseException | None = exc
    while seen is not None:  # and what it wraps: CheckpointPushError carries the failure it reports
        seen.args = tuple(redact(a, tokens) if isinstance(a, str) else a for a in seen.args)
        seen = seen.__cause__


def settings_for(path: str | Path, options: Mapping[str, Any]) -> Resolved:
    """The push settings for `path` from keyword `options` (None: not given), variables and the configuration."""
    return resolve_for(Path(path), given_settings(options), label=keyword_label)


def _max_wait(max_wait: object) -> float:
    """The max-wait setting of a call that pushes nothing: `max_wait` over HUBSYNC_MAX_WAIT over the configuration
    file that applies to the current folder (hubsync.toml, [tool.hubsync]) over its default."""
    given = {} if max_wait is None else {"max-wait": max_wait}
    try:
        config = find_config(Path.cwd())
    except FileNotFoundError:  # the current folder was deleted: no configuration applies
        config = FileConfig()
    return float(resolve_settings(given, config, names=("max-wait",), label=keyword_label)["max-wait"])


def _job_max_wait(settings: Resolved) -> float:
    return float(settings.values.get("max-wait", DEFAULT_MAX_WAIT))


def _flags(**flags: object) -> None:
    """Each flag True or False: `force="false"` must not force."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise SettingError(f"{name}=", name, value, "must be True or False")


def _seconds(name: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise SettingError(f"{name}=", name, value, "must be a number of seconds above 0")


def _repo(repo_id: object) -> str:
    if not isinstance(repo_id, str):
        raise SettingError("repo_id=", "repo_id", repo_id, "must be a string: NAMESPACE/NAME")
    return check_repo_id(repo_id)


def _revision(revision: object) -> str | None:
    """A revision to read: a branch, a tag or a commit id, sent to the Hub as it is (a name the Hub would turn
    into another, or a control character, is refused here)."""
    if revision is None:
        return None
    if not isinstance(revision, str) or not revision or revision != revision.strip():
        raise SettingError("revision=", "revision", revision, "must be a branch, a tag or a commit id")
    if any(ord(c) < 32 or ord(c) == 127 for c in revision) or ".." in revision or revision.startswith("/"):
        raise SettingError("revision=", "revision", revision, "must be a branch, a tag or a commit id")
    return revision


def _path(name: str, value: object) -> Path:
    if not isinstance(value, str | os.PathLike) or "\0" in os.fspath(value):
        raise SettingError(f"{name}=", name, value, "must be a path (str or pathlib.Path) without a NUL")
    return Path(value)


def _signed(push: PushOptions) -> PushOptions:
    """`push` with its signer said (a key's fingerprint, ...), read now: a key that cannot sign, or the sign extra
    missing, refuses the push before anything is converted."""
    if push.signing is None:
        return push
    from hubsync.signing import signer_of

    return dataclasses.replace(push, signing=signer_of(push.signing))


@_public
def plan_push(
    path: str | Path,
    repo_id: str | None = None,
    *,
    token: str | None = None,
    settings: Resolved | None = None,
    **options: Any,
) -> PushJob:
    """Plan pushing `path`, a checkpoint folder or a run folder (then `select` picks its checkpoints: latest, best,
    all, last:N or STEP[,STEP...]), with every check a push makes before it reaches the Hub: names, tokens in
    files, what converting the weights would refuse. `options` are push's: revision, private, training_state,
    training_state_format, allow_public_state, tags, release, git_commit, template, license, base_model,
    datasets, languages, max_wait (the seconds one Hub call may wait out the Hub's rate limit), sign_key,
    sign_certificate, sign_chain, sign_keyless (model.sig: README, "Signing and verifying"). `settings`
    (already resolved, as the command line does) replaces repo_id and options."""
    from hubsync.convert import check_weights, measured_push

    path = _path("path", path)
    if settings is None:
        settings = settings_for(path, {"repo_id": repo_id, **options})
    push = _signed(push_options(settings, (token,) if token else ()))
    targets = choose_targets(path, settings["select"], "select" in settings.explicit)
    checkpoints = tuple(read_checkpoint(p) for p in targets.folders)
    # Tags name one commit: the newest's.
    untagged = dataclasses.replace(push, tags=())
    plans = [plan_one_push(c, push if c is checkpoints[-1] else untagged) for c in checkpoints]
    check_distinct_branches(plans)
    plans = [measured_push(p, c) for p, c in zip(plans, checkpoints, strict=True)]  # converted files, as written
    for plan, checkpoint in zip(plans, checkpoints, strict=True):  # what converting them would refuse, read only
        check_weights(checkpoint, plan.conversion)
    return PushJob(tuple(plans), checkpoints, settings, dict(targets.passed_over))


@_public
def preview_push(
    job: PushJob,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    client: HubClient | None = None,
    report: Report | None = None,
) -> list[HubPreview]:
    """What pushing `job` would change on the Hub, asked read-only (a dry run): for each plan, whether the
    repository and branch exist and which files are unchanged or would be deleted. What the push would refuse (a
    tag on another commit) is refused here too; a Hub that does not answer leaves the rest unknown."""
    from hubsync.convert.compare import check_superseded
    from hubsync.hub.preview import preview_push as preview_one
    from hubsync.hub.push import preflight

    for plan, checkpoint in zip(job.plans, job.checkpoints, strict=True):
        check_superseded(checkpoint, plan.conversion)  # as the push would, before it converts anything
    # A dry run waits little for a Hub that fails; a rate limit says when it serves again, and is waited out.
    hub = client or _client(
        endpoint, token, report, retry_delays=(0.5,), max_pause=2.0, max_wait=_job_max_wait(job.settings)
    )
    pairs = list(zip(job.plans, job.checkpoints, strict=True))
    if hub.token:
        try:
            preflight(hub, pairs)
        except HubError as exc:
            if isinstance(exc, TagExistsError):
                raise
    previews: list[HubPreview] = []
    with _quiet():
        for plan, checkpoint in pairs:
            looked = not previews or previews[-1].looked
            previews.append(preview_one(plan, checkpoint, hub) if looked else previews[-1])
    if previews and previews[0].looked and previews[0].private is not None:
        _visibility(job, job.plans[0].repo_id, previews[0].private, report)
    return previews


@_public
def push(
    path: str | Path | PushJob,
    repo_id: str | None = None,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    client: HubClient | None = None,
    report: Report | None = None,
    progress_bars: bool = False,
    **options: Any,
) -> list[PushResult]:
    """Push `path` (a checkpoint or run folder, or a PushJob from plan_push) to `repo_id`, each checkpoint as
    one commit on its own branch; the results in order. Everything the Hub could refuse is asked first, before
    anything changes. When one of several checkpoints fails, CheckpointPushError says which landed.
    huggingface_hub's progress bars are off unless `progress_bars`."""
    from hubsync.hub.push import execute_push, preflight

    _flags(progress_bars=progress_bars)
    if isinstance(path, PushJob):
        if options:
            raise TypeError(f"push() of a PushJob takes no options ({', '.join(options)}): give them to plan_push()")
        if repo_id is not None and any(p.repo_id != repo_id for p in path.plans):
            raise SettingError("repo_id=", "repo_id", repo_id, "must be the PushJob's repository, or left out")
    job = path if isinstance(path, PushJob) else plan_push(path, repo_id, token=token, **options)
    hub = client or _client(endpoint, token, report, max_wait=_job_max_wait(job.settings))
    pairs = list(zip(job.plans, job.checkpoints, strict=True))
    with _quiet(progress_bars):
        facts = preflight(hub, pairs)  # every refusal the Hub could make, first
        for repo in facts.values():
            if repo.exists:
                _visibility(job, repo.repo_id, repo.private, report)
        results: list[PushResult] = []
        for done, (plan, checkpoint) in enumerate(pairs):
            if report is not None:
                report(Pushing(plan))
            try:
                result = execute_push(plan, checkpoint, hub, checked=done == 0)  # the others: after those before
            except HubsyncError as exc:
                if len(pairs) == 1:
                    raise
                partly = isinstance(exc, IncompletePushError)  # its commit is on the Hub, not all its tags
                landed = tuple(p.checkpoint for p in job.plans[:done])
                landed += (f"{plan.checkpoint} (its commit)",) if partly else ()
                left = tuple(p.checkpoint for p in job.plans[done:])
                raise CheckpointPushError(plan.checkpoint, landed, left, exc) from exc
            results.append(result)
            if report is not None:
                report(Pushed(plan, result))
        _retain(job, hub, results, report)
    return results


def _retain(job: PushJob, hub: HubClient, results: list[PushResult], report: Report | None) -> None:
    """The retention policy after the push landed: RetentionError (carrying the cause) when its prune fails."""
    from hubsync.hub.prune import apply_retention

    policy = retention_policy(job.settings)
    if policy is None or not results:
        return
    repo_id = results[-1].repo_id
    try:
        retained = apply_retention(hub, repo_id, policy, results[-1].revision)
    except HubsyncError as exc:
        raise RetentionError(repo_id, tuple(r.revision for r in results), policy.keep, exc) from exc
    if report is not None:
        report(Pruned(retained))


@_public
def preview_retention(
    job: PushJob,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    client: HubClient | None = None,
) -> Retained | None:
    """What the job's retention policy would prune once its push has landed (a dry run: read only, nothing
    deleted): the branches as the Hub has them now, with the job's own revisions added. None: no policy. The
    storage a prune would free is known only after the push, so the plan names branches only. HubError when
    the Hub cannot say (a missing repository holds nothing to prune)."""
    from hubsync.core.errors import RepoNotFoundError
    from hubsync.core.prune import PruneCandidate
    from hubsync.core.prune import plan_prune as plan
    from hubsync.hub.prune import Retained, prune_inputs

    policy = retention_policy(job.settings)
    if policy is None or not job.plans:
        return None
    repo_id = job.plans[-1].repo_id
    hub = client or _client(
        endpoint, token, None, retry_delays=(0.5,), max_pause=2.0, max_wait=_job_max_wait(job.settings)
    )
    with _quiet():
        try:
            found = prune_inputs(hub, repo_id)
            candidates, tags, best = list(found.revisions), found.tags, found.best_step
        except RepoNotFoundError:
            candidates, tags, best = [], {}, None
    ours = {p.revision: p for p in job.plans}
    candidates = [c for c in candidates if c.revision not in ours]
    candidates += [PruneCandidate(p.revision, p.step, "(this push)") for p in job.plans]
    pruned = plan(
        repo_id,
        candidates,
        keep=policy.keep,
        keep_best=policy.keep_best,
        keep_tagged=policy.keep_tagged,
        tags=tags,
        best_step=best,
        spare=(job.plans[-1].revision,),
    )
    return Retained(policy, pruned, None)


@_public
def watcher(
    run_dir: str | Path,
    repo_id: str | None = None,
    *,
    interval: float = 5.0,
    idle_timeout: float | None = None,
    retry_max: float = 60.0,
    should_stop: Callable[[], bool] = lambda: False,
    endpoint: str | None = None,
    token: str | None = None,
    client: WatchTarget | None = None,
    report: Report | None = None,
    settings: Resolved | None = None,
    checkpoints_dir: str | Path | None = None,
    **options: Any,
) -> Watcher:
    """A watch of the training run in `run_dir` (it may not exist yet): `.run()` pushes each checkpoint once it
    is complete, with push's `options`, until the run's final checkpoint is pushed, `idle_timeout` seconds pass
    without change, or `should_stop()`; it keeps its record in run_dir/.hubsync/watch.json. Every option is
    checked now, not hours later. What happens is passed to `report` (hubsync.hub.watch's events). With
    `checkpoints_dir`, the checkpoint-N folders are read there instead (the record stays in run_dir)."""
    from hubsync.hub.watch import CLIENT_RETRY_DELAYS, Watcher, WatchSettings

    run = _path("run_dir", run_dir)
    _seconds("interval", interval)
    _seconds("idle_timeout", idle_timeout, optional=True)
    _seconds("retry_max", retry_max)
    if not callable(should_stop):
        raise SettingError("should_stop=", "should_stop", should_stop, "must be a function of no arguments")
    if settings is None:  # the configuration is looked up from inside the run folder
        settings = settings_for(run / "checkpoint", {"repo_id": repo_id, **options})
    push = _signed(push_options(settings, (token,) if token else ()))
    # The watch waits out a rate limit itself, as a pause that Ctrl-C ends: its client waits for none.
    hub = client or _client(endpoint, token, report, retry_delays=CLIENT_RETRY_DELAYS, max_wait=0.0)
    hub.require_token()
    source = None if checkpoints_dir is None else _path("checkpoints_dir", checkpoints_dir)
    watch = WatchSettings(
        run,
        push,
        interval=interval,
        retry_max=retry_max,
        idle_timeout=idle_timeout,
        checkpoints_dir=source,
        max_wait=_job_max_wait(settings),
        retention=retention_policy(settings),
    )
    return Watcher(watch, hub, report or (lambda event: None), should_stop, quiet=_quiet)


@_public
def pull_checkpoint(
    repo_id: str,
    revision: str | None = None,
    to: str | Path | None = None,
    *,
    force: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    client: HubClient | None = None,
    report: Report | None = None,
    progress_bars: bool = False,
    max_wait: float | None = None,
    verify: str | Path | None = None,
    verify_chain: str | Path | None = None,
    verify_identity: str | None = None,
    verify_issuer: str | None = None,
) -> PullOutcome:
    """pull(), with what it did: the plan (commit, files, resumable) and whether the folder was there already.
    `verify` (a PEM public key), `verify_chain` (a certificate chain) or `verify_identity` and `verify_issuer`
    (keyless Sigstore): the revision's model.sig is checked to be that signer's and to cover its files as they
    are, before anything is downloaded, placed or rebuilt (the sign extra)."""
    from hubsync.hub.pull import pull_revision

    verifying = _verifying(verify, verify_chain, verify_identity, verify_issuer)
    _repo(repo_id)
    revision = _revision(revision)
    _flags(force=force, progress_bars=progress_bars)
    target = None if to is None else _path("to", to)
    if target is not None:
        _refuse_inside_a_checkpoint(target)
    wait = _max_wait(max_wait)
    hub = client or _client(endpoint, token, report, max_wait=wait)
    with _quiet(progress_bars):
        return pull_revision(hub, repo_id, revision, target, force=force, verify=verifying)


def _verifying(
    key: str | Path | None, chain: str | Path | None, identity: str | None, issuer: str | None
) -> Verifying | None:
    """How a pull checks the signature, from its arguments (None: it does not); a SigningError for a mix."""
    from hubsync.core.errors import SigningError
    from hubsync.core.signing import Verifying

    given = [name for name, value in (("verify", key), ("verify_chain", chain)) if value is not None]
    keyless = identity is not None or issuer is not None
    if len(given) + keyless > 1:
        raise SigningError("--verify", "pass one of a public key, a certificate chain, or an identity and issuer")
    if key is not None:
        return Verifying("key", public_key=os.fspath(key))
    if chain is not None:
        return Verifying("certificate", chain=(os.fspath(chain),))
    if keyless:
        if not identity or not issuer:
            raise SigningError("--verify-identity", "keyless verifying needs both the identity and its OIDC issuer")
        return Verifying("sigstore", identity=identity, issuer=issuer)
    return None


def _refuse_inside_a_checkpoint(target: Path) -> None:
    """A pull into a checkpoint folder (a folder holding trainer_state.json, itself or above) would change the
    user's checkpoint, and its next push would publish the pulled one inside it."""
    from hubsync.core.errors import OutputInsideCheckpointError
    from hubsync.core.paths import display_path

    for folder in (target, *target.absolute().parents):
        if (folder / "trainer_state.json").is_file():
            raise OutputInsideCheckpointError(display_path(target))


@_public
def pull(
    repo_id: str,
    revision: str | None = None,
    to: str | Path | None = None,
    *,
    force: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    client: HubClient | None = None,
    report: Report | None = None,
    max_wait: float | None = None,
    verify: str | Path | None = None,
) -> Path:
    """Restore `revision` (default: the newest checkpoint revision) into `to`/checkpoint-<step> (default
    out/<repo name>), each file verified against the Hub's hashes; the folder, ready for
    `trainer.train(resume_from_checkpoint=...)`. A folder that already holds exactly that revision is left as it is;
    one that holds something else is refused unless `force`."""
    return pull_checkpoint(
        repo_id,
        revision,
        to,
        force=force,
        endpoint=endpoint,
        token=token,
        client=client,
        report=report,
        max_wait=max_wait,
        verify=verify,
    ).path


@_public
def list_revisions(
    repo_id: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    client: HubClient | None = None,
    report: Report | None = None,
    max_wait: float | None = None,
) -> list[RevisionInfo]:
    """The repository's checkpoint revisions, by step: step, epoch, metrics, resumable, commit, date, tags, size
    on the Hub, whether main holds its release, whether it is the best one; then the branches hubsync did not push
    (other than main), with `by_hubsync` False (a checkpoint revision whose head hubsync did not write says so too)."""
    from hubsync.hub.revisions import all_revisions

    _repo(repo_id)
    wait = _max_wait(max_wait)
    with _quiet():
        return all_revisions(client or _client(endpoint, token, report, max_wait=wait), repo_id)


@_public
def repo_storage(
    repo_id: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    client: HubClient | None = None,
    report: Report | None = None,
    max_wait: float | None = None,
) -> StorageSummary:
    """What the repository stores on the Hub (its usedStorage), its stored files, and those no branch or tag
    holds any more (a prune frees them)."""
    from hubsync.hub.prune import storage_summary

    _repo(repo_id)
    hub = client or _client(endpoint, token, report, max_wait=_max_wait(max_wait))
    with _quiet():
        return storage_summary(hub, repo_id)


@_public
def plan_prune(
    repo_id: str,
    keep: int,
    *,
    keep_best: bool = False,
    keep_tagged: bool = False,
    keep_storage: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    client: HubClient | None = None,
    report: Report | None = None,
    max_wait: float | None = None,
) -> PrunePlan:
    """Which checkpoint branches a prune keeping the `keep` newest would delete (and why each is kept), and,
    unless keep_storage, which stored files it would then permanently delete: those no remaining commit holds."""
    from hubsync.hub.prune import plan_on_hub

    _repo(repo_id)
    _check_prune_options(keep, keep_best, keep_tagged)
    _flags(keep_storage=keep_storage)
    wait = _max_wait(max_wait)
    hub = client or _client(endpoint, token, report, max_wait=wait)
    hub.require_token()  # deleting needs one; without it a private repository would look missing
    with _quiet():
        return plan_on_hub(
            hub, repo_id, keep=keep, keep_best=keep_best, keep_tagged=keep_tagged, keep_storage=keep_storage
        )


def _check_prune_options(keep: object, keep_best: object, keep_tagged: object) -> None:
    """keep= a whole number of 0 or more, the others True or False: a SettingError before the Hub is asked."""
    if keep is None:
        raise SettingError("keep=", "keep", keep, "must be given: the number of newest checkpoint branches to keep")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise SettingError("keep=", "keep", keep, "must be a whole number of 0 or more")
    _flags(keep_best=keep_best, keep_tagged=keep_tagged)


@_public
def prune(
    repo_id: str | PrunePlan,
    keep: int | None = None,
    *,
    keep_best: bool = False,
    keep_tagged: bool = False,
    keep_storage: bool = False,
    dry_run: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    client: HubClient | None = None,
    report: Report | None = None,
    max_wait: float | None = None,
) -> PruneOutcome:
    """Delete the checkpoint branches beyond the `keep` newest (by step), never main, the best one with
    keep_best, a tagged one with keep_tagged; then drop them from main's index in one commit. `repo_id` may be a
    plan from plan_prune(), carried out as it is. Then, unless keep_storage, permanently delete the stored files
    that no commit of a remaining branch or tag holds (the Hub frees nothing for a deleted branch alone). With
    dry_run, only the plan."""
    from hubsync.core.prune import PrunePlan
    from hubsync.hub.prune import execute_prune

    _flags(dry_run=dry_run)
    hub = client or _client(endpoint, token, report, max_wait=_max_wait(max_wait))
    if isinstance(repo_id, PrunePlan):
        plan = repo_id
    else:
        _check_prune_options(keep, keep_best, keep_tagged)
        assert keep is not None
        plan = plan_prune(
            repo_id, keep, keep_best=keep_best, keep_tagged=keep_tagged, keep_storage=keep_storage, client=hub
        )
    with _quiet():
        return PruneOutcome(plan, None if dry_run else execute_prune(plan, hub))


def _tag_name(name: object, *, new: bool) -> str:
    """A tag to create: a name the Hub takes and that cannot read as a branch, main or a commit id. A tag to
    delete: any name that is safe to send (the Hub's refs decide whether it is a tag)."""
    from hubsync.core.errors import InvalidTagError
    from hubsync.core.plan import check_tag_name

    if not isinstance(name, str):
        raise SettingError("name=", "name", name, "must be a tag name (a string)")
    if not name:
        raise InvalidTagError(name, "it is empty")
    if not new:
        try:
            return str(_revision(name))
        except SettingError as exc:
            raise InvalidTagError(name, "it holds a control character, '..' or a leading '/'") from exc
    return check_tag_name(name, branch="")


@_public
def tag(
    repo_id: str,
    revision: str,
    name: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    client: HubClient | None = None,
    report: Report | None = None,
    max_wait: float | None = None,
) -> TagChange:
    """Create the tag `name` at `revision` (a branch such as checkpoint-1000, a tag, or a commit id). A tag of
    that name at that commit already: nothing changes (`changes` False). At another commit: TagExistsError, as
    tags never move (delete_tag() it first). The name is checked before the Hub is asked."""
    from hubsync.hub.tags import execute_tag, plan_tag_creation

    _repo(repo_id)
    name = _tag_name(name, new=True)
    if revision is None:
        raise SettingError("revision=", "revision", revision, "must be a branch, a tag or a commit id")
    checked = str(_revision(revision))
    hub = client or _client(endpoint, token, report, max_wait=_max_wait(max_wait))
    hub.require_token()  # creating needs one; without it a private repository would look missing
    with _quiet():
        return execute_tag(plan_tag_creation(hub, repo_id, checked, name), hub)


@_public
def delete_tag(
    repo_id: str,
    name: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    client: HubClient | None = None,
    report: Report | None = None,
    max_wait: float | None = None,
) -> TagChange:
    """Delete the tag `name` (only a tag: a branch of that name is refused, never deleted); `commit`: where it
    pointed. TagNotFoundError when the repository has no such tag."""
    from hubsync.hub.tags import execute_tag, plan_tag_deletion

    _repo(repo_id)
    name = _tag_name(name, new=False)
    hub = client or _client(endpoint, token, report, max_wait=_max_wait(max_wait))
    hub.require_token()
    with _quiet():
        return execute_tag(plan_tag_deletion(hub, repo_id, name), hub)


@_public
def render_card(
    checkpoint: str | Path,
    repo_id: str | None = None,
    revision: str | None = None,
    *,
    settings: Resolved | None = None,
    **options: Any,
) -> dict[str, bytes]:
    """The model card a push of `checkpoint` would publish, and the files it links to (its loss plot), by name.
    `options`: template, license, base_model, datasets, languages (as push takes them)."""
    from hubsync.core.card import card_files
    from hubsync.core.metadata import check_card_metadata

    ckpt = read_checkpoint(_path("checkpoint", checkpoint))
    if settings is None:
        unknown = sorted(set(options) - {n.replace("-", "_") for n in CARD_SETTINGS})
        if unknown:
            raise TypeError(f"unexpected option {unknown[0]!r} for a card")
        settings = resolve_for(ckpt.path, given_settings(options), names=CARD_SETTINGS, label=keyword_label)
    card = card_settings(settings)
    repo = _repo(f"your-namespace/{ckpt.run_name or ckpt.name}" if repo_id is None else repo_id)
    if revision is not None and not isinstance(revision, str):
        raise SettingError("revision=", "revision", revision, "must be a branch name")
    files = card_files(ckpt, card, repo, check_branch_name(revision or ckpt.name))
    check_card_metadata(files["README.md"], card.template_name or "the packaged card template")  # as push does
    return files


@_public
def write_card(
    checkpoint: str | Path,
    output: str | Path,
    repo_id: str | None = None,
    revision: str | None = None,
    *,
    settings: Resolved | None = None,
    **options: Any,
) -> list[Path]:
    """render_card(), written: the card to `output`, the files it links to beside it (each whole, never into
    the checkpoint folder); the paths written, the card first."""
    from hubsync.core.errors import OutputInsideCheckpointError
    from hubsync.core.paths import display_path
    from hubsync.files import lies_within, write_file_atomic

    ckpt = read_checkpoint(_path("checkpoint", checkpoint))
    target = _path("output", output)
    if lies_within(target, ckpt.path):
        raise OutputInsideCheckpointError(display_path(target))
    files = render_card(ckpt.path, repo_id, revision, settings=settings, **options)
    target.parent.mkdir(parents=True, exist_ok=True)
    written = [target]
    write_file_atomic(target, files.pop("README.md"))
    for name, data in files.items():
        write_file_atomic(target.parent / name, data)
        written.append(target.parent / name)
    return written


@dataclass(frozen=True)
class Conversion:
    """What convert_checkpoint() wrote: each converted file, and the folder."""

    files: tuple[ConvertedFile, ...]
    output: Path | None  # None: the checkpoint holds no pickled weights, nothing was written
    total_bytes: int = 0  # the pickled weights' size, read to convert them


@_public
def convert_checkpoint(
    checkpoint: str | Path,
    output: str | Path | None = None,
    *,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
    max_shard_size: int | str | None = None,
) -> Conversion:
    """Convert a checkpoint's pickled weights to safetensors in `output` (default: safetensors-<name> beside it),
    verified bit for bit, with the configs and tokenizer files copied beside them; pytorch_model.bin in shards
    with an index when its tensors take more than `max_shard_size` (the push setting: "5GB" by default). The
    pickles are read without running code from them; the checkpoint folder is never modified. `progress` is
    called with bytes read."""
    from hubsync.convert import convert_checkpoint, default_output_dir
    from hubsync.core.conversion import plan_conversion

    _flags(force=force)
    ckpt = read_checkpoint(_path("checkpoint", checkpoint))
    given = {} if max_shard_size is None else {"max-shard-size": max_shard_size}
    limit = resolve_for(ckpt.path, given, names=("max-shard-size",), label=keyword_label)["max-shard-size"]
    plan = plan_conversion(ckpt)
    if not plan.conversions:
        return Conversion((), None)
    out_dir = _path("output", output) if output else default_output_dir(ckpt)
    done = convert_checkpoint(
        ckpt, plan, out_dir, force=force, progress=progress or (lambda n: None), max_shard_size=limit
    )
    sources = {c.source for c in plan.conversions}
    return Conversion(tuple(done), out_dir, sum(f.size for f in ckpt.files if f.relpath in sources))


def conversion_size(checkpoint: str | Path) -> int:
    """The bytes convert_checkpoint() reads: the pickled weights' size (for a progress bar)."""
    from hubsync.core.conversion import plan_conversion

    ckpt = read_checkpoint(checkpoint)
    sources = {c.source for c in plan_conversion(ckpt).conversions}
    return sum(f.size for f in ckpt.files if f.relpath in sources)


def _client(
    endpoint: str | None,
    token: str | None,
    report: Report | None,
    retry_delays: Sequence[float] | None = None,
    max_pause: float | None = None,
    max_wait: float = DEFAULT_MAX_WAIT,
) -> HubClient:
    from hubsync.hub.client import HubClient

    def on_retry(reason: str, pause: float) -> None:
        if report is not None:
            report(Retrying(reason, pause))

    def on_rate_limit(pause: float) -> None:
        if report is not None:
            report(RateLimited(pause))

    extra: dict[str, Any] = {}
    if retry_delays is not None:
        extra["retry_delays"] = retry_delays
    if max_pause is not None:
        extra["max_pause"] = max_pause
    return HubClient(endpoint, token, on_retry=on_retry, max_wait=max_wait, on_rate_limit=on_rate_limit, **extra)


def _visibility(job: PushJob, repo_id: str, private: bool, report: Report | None) -> None:
    settings = job.settings
    source = settings.sources.get("private", "default")
    if report is None or source == "default" or private == settings["private"]:
        return
    report(VisibilityNote(repo_id, private, settings["private"], source))


@contextmanager
def _quiet(progress_bars: bool = False) -> Iterator[None]:
    """huggingface_hub silent while hubsync calls it (a library prints nothing; a push from a training run would
    draw over the Trainer's own bar): its notices, and its progress bars unless `progress_bars`; as they were
    afterwards."""
    import logging

    from huggingface_hub.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    hub_logger = logging.getLogger("huggingface_hub")
    level, was_disabled = hub_logger.level, are_progress_bars_disabled()
    hub_logger.setLevel(logging.ERROR)  # "No files have been modified since last commit", and the like
    if not progress_bars:
        disable_progress_bars()
    try:
        yield
    finally:
        hub_logger.setLevel(level)
        if not was_disabled:
            enable_progress_bars()
