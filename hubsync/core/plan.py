"""The push plan: a pure function from a checkpoint's inventory and the user's options to what will happen."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .card import CardSettings, card_context, card_files
from .checkpoint import (
    ADAPTER_CONFIG,
    DCP_METADATA,
    MAX_JSON_BYTES,
    TRAINING_ARGS,
    Checkpoint,
    TrainerState,
    check_complete,
    checkpoint_step,
    looks_pickled,
)
from .conversion import (
    PICKLE_SUFFIXES,
    STATE_FILE_RE,
    TRAINING_ARGS_DOCUMENT,
    ConversionPlan,
    check_no_outside_links,
    dcp_conversions,
    is_dcp_source,
    is_training_state,
    plan_conversion,
    resume_missing,
)
from .errors import (
    HubLimitError,
    InvalidRepoIdError,
    InvalidRevisionError,
    InvalidTagError,
    NameTakenError,
    SharedBranchError,
    UnpublishableNameError,
    UnscrubbableFileError,
)
from .index import index_entry, revision_metrics
from .metadata import check_card_metadata, check_license
from .remote_paths import MAX_FILE_SIZE, MAX_FOLDER_ENTRIES, crowded_folder, remote_path_problem
from .render import render
from .repo_id import is_repo_id
from .secrets import (
    Identity,
    file_holds_token,
    large_file_holds_token,
    redact,
    scrub_value,
    scrubbed_json,
    this_machine,
)
from .selection import DEFAULT_REVISION, revision_name
from .shards import DEFAULT_MAX_SHARD_SIZE, SPLIT_WEIGHTS
from .signing import Signing, card_section

FSDP_MODEL_FOLDER = "pytorch_model_fsdp_0"  # accelerate's save_fsdp_model, for the Trainer's one model
_BRANCH_RE = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]{0,199}\Z")


@dataclass(frozen=True)
class Upload:
    source: str  # path relative to the checkpoint folder, or to the staging folder (converted, generated)
    path_in_repo: str
    size: int  # converted weights: their source's size, within the pickle's overhead; training state: 0 until
    # measured (with_sizes: its JSON structure and tensors, as the conversion will write them)
    converted_from: str | None = None  # the pickled file this one is converted from
    generated: bool = False  # made by hubsync (the card and its plot): its bytes are in PushPlan.generated


@dataclass(frozen=True)
class PushPlan:
    repo_id: str
    revision: str  # the branch that receives the commit
    private: bool  # visibility if the repository has to be created
    checkpoint: str  # the checkpoint as shown to people
    step: int | None
    uploads: tuple[Upload, ...]
    skipped: tuple[str, ...]
    commit_message: str
    commit_description: str
    conversion: ConversionPlan
    generated: Mapping[str, bytes] = field(default_factory=dict)  # path in repo -> content (card, plot)
    dropped: tuple[str, ...] = ()  # training state left out
    index_entry: Mapping[str, Any] | None = None  # main's index entry for this revision, but for its commit
    front_matter: str | None = None  # the card's metadata, for main's index README
    training_state: str = "drop"
    state_format: str = "safe"
    allow_public_state: bool = False
    tags: tuple[str, ...] = ()
    release: tuple[str, ...] = ()  # with --release: the paths that main gets too (the inference files)
    metrics: Mapping[str, float] = field(default_factory=dict)  # epoch, train loss, newest eval metrics
    git_commit: str | None = None  # of the training repository, recorded in the card and the commit message
    warnings: tuple[str, ...] = ()  # what the push publishes in a form that falls short, and how to mend it
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE  # converted files with more tensor bytes are split (core/shards)
    signing: Signing | None = None  # the commit also gets model.sig, over its files as published

    @property
    def total_bytes(self) -> int:
        return sum(u.size for u in self.uploads)

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo_id,
            "revision": self.revision,
            "private": self.private,
            "checkpoint": self.checkpoint,
            "step": self.step,
            "files": [
                {
                    "path": u.path_in_repo,
                    "size": u.size,
                    **({"converted_from": u.converted_from} if u.converted_from else {}),
                    **({"generated": True} if u.generated else {}),
                }
                for u in self.uploads
            ],
            "dropped": list(self.dropped),
            "skipped": list(self.skipped),
            "superseded": list(self.conversion.superseded),
            "bytes": self.total_bytes,
            "commit_message": self.commit_message,
            "training_state": self.training_state,
            "training_state_format": self.state_format,
            "tags": list(self.tags),
            "release": list(self.release),
            "commit_description": self.commit_description,
            "metrics": dict(self.metrics),
            "git_commit": self.git_commit,
            "signing": self.signing.to_json() if self.signing else None,
        }


def check_repo_id(repo_id: str) -> str:
    """NAMESPACE/NAME as the Hub accepts it (huggingface_hub's own rules: no '--' or '..', no '-' or '.' at an end)."""
    if not is_repo_id(repo_id):
        raise InvalidRepoIdError(repo_id)
    return repo_id


def check_branch_name(name: str) -> str:
    """A name git accepts for a branch or tag, and not one hubsync keeps for itself (main holds the index)."""
    parts = name.split("/")
    problems = [
        (not _BRANCH_RE.match(name), "use letters, digits, '.', '_', '-' and '/'"),
        (".." in name or "//" in name or name.endswith(("/", ".")), "no '..', '//' or trailing '/', '.'"),
        (any(p.startswith((".", "-")) for p in parts), "no part may start with '.' or '-'"),
        (any(p.endswith(".lock") for p in parts), "no part may end in '.lock' (git's lock files)"),
        (name.startswith("refs/") or re.fullmatch(r"[0-9a-f]{40}", name) is not None, "it looks like a ref or commit"),
        (name == "HEAD", "HEAD names the current branch in git; pick a name of its own"),
        (name == "main", "main holds the index of checkpoint revisions; pick a name of its own"),
    ]
    for bad, reason in problems:
        if bad:
            raise InvalidRevisionError(name, reason)
    return name


def check_tag_name(name: str, branch: str) -> str:
    """A tag follows the rules of a branch name, and may not take the name of main, of the branch it is pushed
    to, or of a checkpoint-N branch: a ref named both ways is ambiguous. (Other branches are not looked up.)"""
    if name in ("main", "HEAD", branch) or checkpoint_step(name) is not None:
        raise InvalidTagError(name, "a branch has, or a checkpoint branch may have, that name")
    try:
        return check_branch_name(name)
    except InvalidRevisionError as exc:
        raise InvalidTagError(name, exc.reason) from exc


def check_distinct_branches(plans: list[PushPlan]) -> None:
    """One push, one branch a checkpoint: several checkpoints named to one branch would each replace the one
    before (and a tag checked against the branch's head would be checked against the wrong one)."""
    seen: dict[str, str] = {}
    for plan in plans:
        if plan.revision in seen:
            raise SharedBranchError(plan.revision, seen[plan.revision], plan.checkpoint)
        seen[plan.revision] = plan.checkpoint


def commit_message(checkpoint: Checkpoint) -> str:
    """`hubsync: checkpoint-1000 (step 1000, epoch 2.10, eval_loss 0.8312)`, with what is known."""
    facts = []
    if checkpoint.step is not None:
        facts.append(f"step {checkpoint.step}")
    state = checkpoint.trainer_state
    if state is not None and state.epoch is not None:
        facts.append(f"epoch {state.epoch:.2f}")
    if state is not None and "eval_loss" in state.latest_eval:
        facts.append(f"eval_loss {state.latest_eval['eval_loss']:.4f}")
    return f"hubsync: {checkpoint.name}" + (f" ({', '.join(facts)})" if facts else "")


def commit_description(checkpoint: Checkpoint, uploads: tuple[Upload, ...]) -> str:
    from hubsync import __version__

    state = checkpoint.trainer_state
    return render(
        "commit_description.md.j2",
        version=__version__,
        checkpoint=checkpoint.name,
        step=checkpoint.step,
        epoch=state.epoch if state else None,
        eval_metrics=dict(state.latest_eval) if state else {},
        git_commit=checkpoint.git_commit,
        files=len(uploads),
        bytes=sum(u.size for u in uploads),
    ).strip()


@dataclass(frozen=True)
class PushOptions:
    repo_id: str
    revision: str | None = None  # the branch; default: the checkpoint folder's name
    private: bool = True
    training_state: str = "drop"  # or "keep"
    state_format: str = "safe"  # kept training state as safetensors + JSON, or "pickle": the files as they are
    card: CardSettings | None = field(default_factory=CardSettings)  # None: keep the checkpoint's own README.md
    allow_public_state: bool = False
    tags: tuple[str, ...] = ()
    release: bool = False
    revision_pattern: bool = False  # `revision` is a pattern with {step}, {epoch}, {run}
    git_commit: str | None = None  # the training code's commit, given; default: the checkpoint's git work tree
    secret_tokens: tuple[str, ...] = ()  # tokens never to publish beside those of HF_TOKEN and the saved login
    adapter_config: Mapping[str, Any] | None = None  # --adapter-config: for FSDP's LoRA weights, which have none
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE  # the max-shard-size setting, in bytes
    signing: Signing | None = None  # sign each revision (its signer said: hubsync.signing.signer_of)


def plan_push(checkpoint: Checkpoint, options: PushOptions) -> PushPlan:
    """Decide what a push of `checkpoint` does: which files are converted, dropped, generated and uploaded."""
    repo_id = check_repo_id(options.repo_id)
    check_no_outside_links(checkpoint)  # a link to the weights leads out: that, not "no weights", is the problem
    check_complete(checkpoint)
    if options.git_commit:
        checkpoint = replace(checkpoint, git_commit=options.git_commit)
    lora_fsdp = checkpoint.fsdp_weights == "adapter_model.safetensors"
    outside_config = (options.adapter_config or checkpoint.run_adapter_config) if lora_fsdp else None
    if outside_config is not None and checkpoint.adapter_config is None:  # the card reads the base model from it
        checkpoint = replace(checkpoint, adapter_config=outside_config)
    else:
        outside_config = None
    state = checkpoint.trainer_state
    if options.revision_pattern:
        name = revision_name(
            options.revision or DEFAULT_REVISION,
            step=checkpoint.step,
            epoch=state.epoch if state else None,
            run=checkpoint.run_name,
            folder=checkpoint.display,
        )
    else:
        name = options.revision or checkpoint.name
    branch = check_branch_name(name)
    tags = tuple(check_tag_name(t, branch) for t in options.tags)
    conversion = plan_conversion(checkpoint)
    sizes = {f.relpath: f.size for f in checkpoint.files}
    converted = [Upload(c.target, c.target, sizes[c.source], c.source) for c in conversion.conversions]
    if conversion.index is not None:
        source, target = conversion.index
        converted.append(Upload(target, target, sizes[source], source))
    warnings = []
    if options.adapter_config is not None and outside_config is None:
        has = "has its own adapter_config.json" if lora_fsdp else "is not one"
        warnings.append(
            f"--adapter-config is not used: it is for an FSDP sharded LoRA checkpoint, which holds none; this one {has}"
        )
    if checkpoint.fsdp_weights is not None:  # FSDP's sharded model folder, consolidated into one loadable file
        model_files = [n for n in sizes if n.startswith(f"{FSDP_MODEL_FOLDER}/") and n.endswith(".distcp")]
        converted.append(
            Upload(
                checkpoint.fsdp_weights,
                checkpoint.fsdp_weights,
                sum(sizes[n] for n in model_files),
                f"{FSDP_MODEL_FOLDER}/{DCP_METADATA}",
            )
        )
        if lora_fsdp and checkpoint.adapter_config is None:
            warnings.append(
                "adapter_model.safetensors is published without adapter_config.json, which PEFT needs to load it: "
                "pass --adapter-config FILE (the adapter_config.json of the run's LoraConfig)"
            )
    if options.card is not None:
        check_license(options.card.license)
    context = card_context(checkpoint, options.card, repo_id, branch) if options.card is not None else None
    generated = card_files(checkpoint, options.card, repo_id, branch, context) if options.card is not None else {}
    if options.signing is not None and "README.md" in generated:  # the card says who signed, and how to verify
        generated["README.md"] += card_section(options.signing, repo_id, branch).encode()
    if options.card is not None:  # the Hub would refuse it, after the repository was created
        check_card_metadata(generated["README.md"], options.card.template_name or "the packaged card template")
    names = {f.relpath for f in checkpoint.files}
    who = this_machine(checkpoint.path.parent, options.secret_tokens)
    for path, data in list(generated.items()):  # the card shows names from the checkpoint's files: a token too
        text = data.decode("utf-8", "replace")
        if (clean := redact(text, who.tokens)) != text:
            generated[path] = clean.encode()
    for path, data in publishable_configs(checkpoint, context["base_model"] if context else None, who).items():
        if path in names:
            generated[path] = data
    if outside_config is not None:
        generated[ADAPTER_CONFIG] = adapter_config_json(outside_config, context["base_model"] if context else None, who)
    dropped = tuple(
        f.relpath for f in checkpoint.files if options.training_state == "drop" and is_training_state(f.relpath)
    )
    if options.training_state == "keep" and options.state_format == "safe":
        state_files = [f for f in checkpoint.files if STATE_FILE_RE.match(f.relpath)]
        for f in state_files:
            json_name, tensors_name = (
                f.relpath.rsplit(".", 1)[0] + ".json",
                f.relpath.rsplit(".", 1)[0] + ".safetensors",
            )
            converted += [
                Upload(json_name, json_name, 0, f.relpath),
                Upload(tensors_name, tensors_name, f.size, f.relpath),
            ]
        safe = {f.relpath for f in state_files}
        for source, target in dcp_conversions(set(sizes)):  # FSDP's folders: about the size of their source
            converted.append(Upload(target, target, sizes[source], source))
            safe.add(source)
        if TRAINING_ARGS in sizes:
            safe.add(TRAINING_ARGS)
            if checkpoint.training_args is not None:
                generated[TRAINING_ARGS_DOCUMENT] = training_args_json(checkpoint.training_args, who)
    else:
        safe = set()
    replaced = conversion.sources | set(generated) | set(dropped) | safe
    raw_state = options.training_state == "keep" and options.state_format == "pickle"
    pickles = [
        f.relpath
        for f in checkpoint.files
        if f.relpath not in replaced
        and (
            f.relpath.rstrip(" .").lower().endswith(PICKLE_SUFFIXES)
            or (not f.relpath.endswith(".safetensors") and looks_pickled(checkpoint.path / f.relpath))
        )
        and not (raw_state and is_training_state(f.relpath))
    ]
    kept = [Upload(f.relpath, f.relpath, f.size) for f in checkpoint.files if f.relpath not in replaced | set(pickles)]
    made_from = {u.path_in_repo: u.converted_from for u in converted}
    for upload in kept:  # a file of the checkpoint under a name hubsync writes: one would silently replace the other
        if upload.path_in_repo in made_from:
            reason = (
                f"has the name of the file hubsync makes from {made_from[upload.path_in_repo]}, and one would "
                "replace the other on the Hub"
            )
            raise NameTakenError(checkpoint.display, upload.path_in_repo, reason)
    made = [Upload(path, path, len(data), generated=True) for path, data in generated.items()]
    uploads = tuple(sorted(kept + converted + made, key=lambda u: u.path_in_repo))
    for upload in uploads:  # what pull would refuse is never published: a refusal before the Hub changes
        if problem := remote_path_problem(upload.path_in_repo):
            raise UnpublishableNameError(checkpoint.display, upload.converted_from or upload.path_in_repo, problem)
    if crowded := crowded_folder(u.path_in_repo for u in uploads):  # refused by the Hub only when it commits
        folder, count = crowded
        reason = f"holds {count:,} files and folders; a folder on the Hub holds at most {MAX_FOLDER_ENTRIES:,}"
        raise HubLimitError(checkpoint.display, folder or ".", reason)
    # Converted weights and training state are split into shards of at most max_shard_size (measured_plan).
    split = {c.source for c in conversion.conversions if c.source == SPLIT_WEIGHTS}
    split |= {u.converted_from for u in converted if u.converted_from and STATE_FILE_RE.match(u.converted_from)}
    # FSDP's folders too: each .distcp file's tensors, and the consolidated weights (measured_dcp)
    split |= {u.converted_from for u in converted if u.converted_from and is_dcp_source(u.converted_from)}
    for upload in uploads:
        if upload.size > MAX_FILE_SIZE and upload.converted_from not in split:
            size = f"{upload.size / 1000**3:.1f} GB"
            reason = f"is {size}; a file on the Hub is at most {MAX_FILE_SIZE // 1000**3} GB"
            raise HubLimitError(checkpoint.display, upload.converted_from or upload.path_in_repo, reason)
    for upload in kept:  # published byte for byte: JSON is scrubbed (generated above), any other file looked through
        if not upload.path_in_repo.lower().endswith(".json") and file_holds_token(
            checkpoint.path / upload.source, who.tokens
        ):
            raise UnscrubbableFileError(upload.path_in_repo, "hubsync scrubs JSON files only")
    if options.training_state == "keep" and (missing := resume_missing(frozenset(u.path_in_repo for u in uploads))):
        warnings.append(  # asked to keep what resuming needs, yet it will not resume: the state is incomplete
            "with --training-state keep the revision will still not be resumable: it will have no "
            + " or ".join(missing)
        )
    entry = index_entry(
        branch,
        checkpoint.step,
        state.epoch if state else None,
        revision_metrics(state),
        [u.path_in_repo for u in uploads],
        commit="",
    )
    if options.signing is not None:
        entry["signed"] = True
    return PushPlan(
        repo_id=repo_id,
        revision=branch,
        private=options.private,
        checkpoint=checkpoint.display,
        step=checkpoint.step,
        uploads=uploads,
        skipped=checkpoint.skipped
        + tuple(
            f"{p} (a pickle that hubsync does not convert: never uploaded, since loading it runs code)" for p in pickles
        ),
        commit_message=commit_message(checkpoint),
        commit_description=commit_description(checkpoint, uploads),
        conversion=conversion,
        generated=generated,
        dropped=dropped,
        index_entry=entry if context is not None else None,
        front_matter=context["front_matter"] if context is not None else None,
        training_state=options.training_state,
        state_format=options.state_format,
        allow_public_state=options.allow_public_state,
        tags=tags,
        release=tuple(u.path_in_repo for u in uploads if options.release and is_inference_file(u.path_in_repo)),
        metrics=checkpoint_metrics(state),
        git_commit=checkpoint.git_commit,
        warnings=tuple(warnings),
        max_shard_size=options.max_shard_size,
        signing=options.signing,
    )


def adapter_config_json(config: Mapping[str, Any], base_model: str | None, who: Identity) -> bytes:
    """An adapter_config.json from outside the checkpoint as published: its local base model path made the
    Hub id (or null), then scrubbed as every published JSON file is."""
    if is_local_path(config.get("base_model_name_or_path")):
        config = {**config, "base_model_name_or_path": base_model}
    raw = (json.dumps(dict(config), indent=2, sort_keys=True) + "\n").encode()
    return scrubbed_json(ADAPTER_CONFIG, raw, who) or raw


def with_sizes(plan: PushPlan, sizes: Mapping[str, int]) -> PushPlan:
    """`plan` with the sizes of converted files measured (path in repo -> bytes) in place of estimates."""
    uploads = tuple(replace(u, size=sizes.get(u.path_in_repo, u.size)) for u in plan.uploads)
    return replace(plan, uploads=uploads)


def checkpoint_metrics(state: TrainerState | None) -> dict[str, float]:
    """What a summary shows of a checkpoint's training record: epoch, train_loss (the newest training loss) and
    the newest eval_* metrics; never a bare `loss`, which would not say which."""
    if state is None:
        return {}
    return ({"epoch": state.epoch} if state.epoch is not None else {}) | revision_metrics(state)


def is_local_path(value: Any) -> bool:
    """An absolute path of this machine (or one like it), which names users and machines."""
    return isinstance(value, str) and (
        value.startswith(("/", "~", "\\\\")) or re.match(r"^[A-Za-z]:[\\/]", value) is not None
    )


def publishable_configs(
    checkpoint: Checkpoint, base_model: str | None, who: Identity | None = None
) -> dict[str, bytes]:
    """Copies of the checkpoint's JSON files as they may be published: the absolute local paths the libraries
    write into them fixed (trainer_state.json's best_model_checkpoint becomes the folder's name, the base model's
    local path in adapter_config.json / config.json its Hub id or null), then every JSON file scrubbed by value of
    tokens, host and user names and paths of this machine (core/secrets.py). Only files that change are returned:
    the others are published byte for byte."""
    who = this_machine(checkpoint.path.parent) if who is None else who
    out = {}
    fixes: list[tuple[str, Mapping[str, Any] | None, str, Any]] = [
        ("trainer_state.json", checkpoint.trainer_state_json, "best_model_checkpoint", None),
        ("adapter_config.json", checkpoint.adapter_config, "base_model_name_or_path", base_model),
        ("config.json", checkpoint.model_config, "_name_or_path", base_model),
    ]
    for name, data, key, replacement in fixes:
        if not isinstance(data, Mapping) or not is_local_path(data.get(key)):
            continue
        if replacement is None and key == "best_model_checkpoint":
            replacement = str(data[key]).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        out[name] = (json.dumps({**data, key: replacement}, indent=2, sort_keys=True) + "\n").encode()
    for f in checkpoint.files:
        if f.relpath.lower().endswith(".json") and f.size > MAX_JSON_BYTES:  # too large to parse: looked through
            if large_file_holds_token(checkpoint.path / f.relpath, who.tokens):
                raise UnscrubbableFileError(
                    f.relpath, f"it is larger than {MAX_JSON_BYTES >> 20} MiB, more than hubsync parses to scrub"
                )
            continue
        if not f.relpath.lower().endswith(".json"):
            continue
        raw = out.get(f.relpath)
        if raw is None:
            try:
                raw = (checkpoint.path / f.relpath).read_bytes()
            except OSError:
                continue  # gone or unreadable: the upload says so
        scrubbed = scrubbed_json(f.relpath, raw, who)
        if scrubbed is not None:
            out[f.relpath] = scrubbed
    return out


def training_args_json(args: Mapping[str, Any], who: Identity | None = None) -> bytes:
    """training_args.bin's fields as JSON, without what must not be published: tokens, and local paths; then
    scrubbed by value as every published JSON file is."""

    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items() if "token" not in str(k).lower() and not is_local_path(v)}
        if isinstance(value, list):
            return [clean(v) for v in value if not is_local_path(v)]
        return value

    plain = json.loads(json.dumps(clean(args), default=str))
    return (json.dumps(scrub_value(plain, who or this_machine()), indent=1) + "\n").encode()


def is_inference_file(path: str) -> bool:
    """What loading the model needs: weights, configs, tokenizer; not the card, plot, or training record."""
    return not (
        is_training_state(path) or path in ("README.md", "trainer_state.json") or path.endswith((".svg", ".md"))
    )


def branch_deletions(branch_paths: Iterable[str], planned: Iterable[str]) -> tuple[str, ...]:
    """What a push of `planned` deletes from a branch that holds `branch_paths`: a branch mirrors the checkpoint
    last pushed to it, so files of an earlier push that this one leaves out go in the same commit (.gitattributes
    stays)."""
    keep = {*planned, ".gitattributes"}
    return tuple(sorted(path for path in set(branch_paths) if path not in keep))
