"""hubsync as a library: what each command does, as functions that raise hubsync.errors and print nothing.

Each function takes the options its command takes, as keyword arguments (`training_state="keep"` for
`--training-state keep`), resolved the same way: an argument over its HUBSYNC_* variable over the configuration
file (hubsync.toml or [tool.hubsync]) over the default. The Hub is reached at `endpoint` (default HF_ENDPOINT,
else https://huggingface.co) with `token` (default HF_TOKEN, else the saved login), or through `client`, any
object with the methods a HubClient has that the call uses. What happens on the way (a push landed, a Hub call
is retried, a note on visibility) is passed to `report`, if given, as one of the event classes below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubsync.core.checkpoint import Checkpoint, read_checkpoint
from hubsync.core.config import CARD_SETTINGS, Resolved
from hubsync.core.errors import CheckpointPushError, HubError, HubsyncError, IncompletePushError, TagExistsError
from hubsync.core.options import card_settings, given_settings, keyword_label, push_options, resolve_for
from hubsync.core.plan import PushPlan, check_branch_name, check_distinct_branches, check_repo_id
from hubsync.core.plan import plan_push as plan_one_push
from hubsync.core.runs import choose_targets

if TYPE_CHECKING:
    from hubsync.convert import ConvertedFile
    from hubsync.core.prune import PrunePlan
    from hubsync.hub.client import HubClient
    from hubsync.hub.preview import HubPreview
    from hubsync.hub.prune import PruneResult
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
class Retrying:
    """A Hub call failed in a way that may pass; it is tried again after `pause` seconds."""

    reason: str
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


def settings_for(path: str | Path, options: Mapping[str, Any]) -> Resolved:
    """The push settings for `path` from keyword `options` (None: not given), variables and the configuration."""
    return resolve_for(Path(path), given_settings(options), label=keyword_label)


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
    datasets, languages. `settings` (already resolved, as the command line does) replaces repo_id and options."""
    from hubsync.convert import check_weights
    from hubsync.convert.state import measured_plan

    path = Path(path)
    if settings is None:
        settings = settings_for(path, {"repo_id": repo_id, **options})
    push = push_options(settings, (token,) if token else ())
    targets = choose_targets(path, settings["select"], "select" in settings.explicit)
    checkpoints = tuple(read_checkpoint(p) for p in targets.folders)
    # Tags name one commit: the newest's.
    untagged = dataclasses.replace(push, tags=())
    plans = [plan_one_push(c, push if c is checkpoints[-1] else untagged) for c in checkpoints]
    check_distinct_branches(plans)
    plans = [measured_plan(p, c) for p, c in zip(plans, checkpoints, strict=True)]  # training state's real sizes
    for plan, checkpoint in zip(plans, checkpoints, strict=True):  # what converting them would refuse, read only
        check_weights(checkpoint, plan.conversion)
    return PushJob(tuple(plans), checkpoints, settings, dict(targets.passed_over))


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
    hub = client or _client(endpoint, token, report, retry_delays=(0.5,), max_wait=2.0)  # a dry run waits little
    pairs = list(zip(job.plans, job.checkpoints, strict=True))
    if hub.token:
        try:
            preflight(hub, pairs)
        except HubError as exc:
            if isinstance(exc, TagExistsError):
                raise
    previews: list[HubPreview] = []
    for plan, checkpoint in pairs:
        previews.append(preview_one(plan, checkpoint, hub) if not previews or previews[-1].looked else previews[-1])
    if previews and previews[0].looked and previews[0].private is not None:
        _visibility(job, job.plans[0].repo_id, previews[0].private, report)
    return previews


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

    job = path if isinstance(path, PushJob) else plan_push(path, repo_id, token=token, **options)
    hub = client or _client(endpoint, token, report)
    pairs = list(zip(job.plans, job.checkpoints, strict=True))
    with _quiet_progress(not progress_bars):
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
    return results


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

    run = Path(run_dir)
    if settings is None:  # the configuration is looked up from inside the run folder
        settings = settings_for(run / "checkpoint", {"repo_id": repo_id, **options})
    push = push_options(settings, (token,) if token else ())
    hub = client or _client(endpoint, token, report, retry_delays=CLIENT_RETRY_DELAYS)
    hub.require_token()
    source = None if checkpoints_dir is None else Path(checkpoints_dir)
    watch = WatchSettings(
        run, push, interval=interval, retry_max=retry_max, idle_timeout=idle_timeout, checkpoints_dir=source
    )
    return Watcher(watch, hub, report or (lambda event: None), should_stop)


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
) -> PullOutcome:
    """pull(), with what it did: the plan (commit, files, resumable) and whether the folder was there already."""
    from hubsync.hub.pull import pull_revision

    check_repo_id(repo_id)
    hub = client or _client(endpoint, token, report)
    with _quiet_progress(not progress_bars):
        return pull_revision(hub, repo_id, revision, None if to is None else Path(to), force=force)


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
) -> Path:
    """Restore `revision` (default: the newest checkpoint revision) into `to`/checkpoint-<step> (default
    out/<repo name>), each file verified against the Hub's hashes; the folder, ready for
    `trainer.train(resume_from_checkpoint=...)`. A folder that already holds exactly that revision is left as it is;
    one that holds something else is refused unless `force`."""
    return pull_checkpoint(
        repo_id, revision, to, force=force, endpoint=endpoint, token=token, client=client, report=report
    ).path


def list_revisions(
    repo_id: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    client: HubClient | None = None,
    report: Report | None = None,
) -> list[RevisionInfo]:
    """The repository's checkpoint revisions, by step: step, epoch, metrics, resumable, commit, date."""
    from hubsync.hub.revisions import checkpoint_revisions

    check_repo_id(repo_id)
    return checkpoint_revisions(client or _client(endpoint, token, report), repo_id)


def plan_prune(
    repo_id: str,
    keep: int,
    *,
    keep_best: bool = False,
    keep_tagged: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    client: HubClient | None = None,
    report: Report | None = None,
) -> PrunePlan:
    """Which checkpoint branches a prune keeping the `keep` newest would delete (and why each is kept)."""
    from hubsync.core.prune import plan_prune as plan
    from hubsync.hub.prune import prune_inputs

    check_repo_id(repo_id)
    hub = client or _client(endpoint, token, report)
    hub.require_token()  # deleting needs one; without it a private repository would look missing
    found = prune_inputs(hub, repo_id)
    return plan(
        repo_id,
        found.revisions,
        keep=keep,
        keep_best=keep_best,
        keep_tagged=keep_tagged,
        tags=found.tags,
        best_step=found.best_step,
    )


def prune(
    repo_id: str | PrunePlan,
    keep: int | None = None,
    *,
    keep_best: bool = False,
    keep_tagged: bool = False,
    dry_run: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    client: HubClient | None = None,
    report: Report | None = None,
) -> PruneOutcome:
    """Delete the checkpoint branches beyond the `keep` newest (by step), never main, the best one with
    keep_best, a tagged one with keep_tagged; then drop them from main's index in one commit. `repo_id` may be a
    plan from plan_prune(), carried out as it is. With dry_run, only the plan."""
    from hubsync.core.prune import PrunePlan
    from hubsync.hub.prune import execute_prune

    hub = client or _client(endpoint, token, report)
    if isinstance(repo_id, PrunePlan):
        plan = repo_id
    else:
        if keep is None:
            raise TypeError("prune() needs keep=N, the number of newest checkpoint branches to keep")
        plan = plan_prune(repo_id, keep, keep_best=keep_best, keep_tagged=keep_tagged, client=hub)
    return PruneOutcome(plan, None if dry_run else execute_prune(plan, hub))


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

    ckpt = read_checkpoint(checkpoint)
    if settings is None:
        unknown = sorted(set(options) - {n.replace("-", "_") for n in CARD_SETTINGS})
        if unknown:
            raise TypeError(f"unexpected option {unknown[0]!r} for a card")
        settings = resolve_for(ckpt.path, given_settings(options), names=CARD_SETTINGS, label=keyword_label)
    card = card_settings(settings)
    repo = check_repo_id(repo_id or f"your-namespace/{ckpt.run_name or ckpt.name}")
    files = card_files(ckpt, card, repo, check_branch_name(revision or ckpt.name))
    check_card_metadata(files["README.md"], card.template_name or "the packaged card template")  # as push does
    return files


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

    ckpt = read_checkpoint(checkpoint)
    target = Path(output)
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
    """What convert() wrote: each converted file, and the folder."""

    files: tuple[ConvertedFile, ...]
    output: Path | None  # None: the checkpoint holds no pickled weights, nothing was written
    total_bytes: int = 0  # the pickled weights' size, read to convert them


def convert(
    checkpoint: str | Path,
    output: str | Path | None = None,
    *,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Conversion:
    """Convert a checkpoint's pickled weights to safetensors in `output` (default: safetensors-<name> beside it),
    verified bit for bit, with the configs and tokenizer files copied beside them. The pickles are read without
    running code from them; the checkpoint folder is never modified. `progress` is called with bytes read."""
    from hubsync.convert import convert_checkpoint, default_output_dir
    from hubsync.core.conversion import plan_conversion

    ckpt = read_checkpoint(checkpoint)
    plan = plan_conversion(ckpt)
    if not plan.conversions:
        return Conversion((), None)
    out_dir = Path(output) if output else default_output_dir(ckpt)
    done = convert_checkpoint(ckpt, plan, out_dir, force=force, progress=progress or (lambda n: None))
    sources = {c.source for c in plan.conversions}
    return Conversion(tuple(done), out_dir, sum(f.size for f in ckpt.files if f.relpath in sources))


def conversion_size(checkpoint: str | Path) -> int:
    """The bytes convert() reads: the pickled weights' size (for a progress bar)."""
    from hubsync.core.conversion import plan_conversion

    ckpt = read_checkpoint(checkpoint)
    sources = {c.source for c in plan_conversion(ckpt).conversions}
    return sum(f.size for f in ckpt.files if f.relpath in sources)


def _client(
    endpoint: str | None,
    token: str | None,
    report: Report | None,
    retry_delays: Sequence[float] | None = None,
    max_wait: float | None = None,
) -> HubClient:
    from hubsync.hub.client import HubClient

    def on_retry(reason: str, pause: float) -> None:
        if report is not None:
            report(Retrying(reason, pause))

    extra: dict[str, Any] = {}
    if retry_delays is not None:
        extra["retry_delays"] = retry_delays
    if max_wait is not None:
        extra["max_wait"] = max_wait
    return HubClient(endpoint, token, on_retry=on_retry, **extra)


def _visibility(job: PushJob, repo_id: str, private: bool, report: Report | None) -> None:
    settings = job.settings
    source = settings.sources.get("private", "default")
    if report is None or source == "default" or private == settings["private"]:
        return
    report(VisibilityNote(repo_id, private, settings["private"], source))


@contextmanager
def _quiet_progress(quiet: bool = True) -> Iterator[None]:
    """huggingface_hub's progress bars off while hubsync moves files (a library prints nothing; a push from a
    training run would draw over the Trainer's own bar), as they were afterwards."""
    from huggingface_hub.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if not quiet:
        yield
        return
    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()
