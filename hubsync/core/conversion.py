"""Which files of a checkpoint are pickled weights, and the safetensors names they become. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .checkpoint import DCP_DOCUMENT, DCP_METADATA_RE, TRAINING_ARGS, Checkpoint, missing_parts
from .errors import LinkOutsideCheckpointError
from .layouts import has_state_file, state_layout

_SHARD_RE = re.compile(r"^pytorch_model-([0-9]+)-of-([0-9]+)\.bin\Z")
_SAFETENSORS_SHARD_RE = re.compile(r"^model-[0-9]+-of-[0-9]+\.safetensors\Z")
# .distcp: torch.distributed.checkpoint's files (FSDP), torch.save() archives laid end to end, which no zip reader
# that looks for one archive recognises.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".distcp")


@dataclass(frozen=True)
class StateFile:
    """A training-state file the Trainer writes with torch.save: `<stem><suffix>`, and `<stem>_<rank><suffix>` one
    a process when `per_process`. hubsync's pickle-free form of it is <name>.json + <name>.safetensors."""

    stem: str
    suffix: str
    per_process: bool = False

    @property
    def pattern(self) -> str:
        return re.escape(self.stem) + ("(_[0-9]{1,9})?" if self.per_process else "")


# The one table of the Trainer's training state (optimizer, LR scheduler, AMP scaler, RNG); the names below and
# the folders and shards of DeepSpeed and FSDP (NESTED_STATE_RE) are all derived from, or beside, it.
TRAINING_STATE_FILES = (
    StateFile("optimizer", ".pt"),
    StateFile("scheduler", ".pt"),
    StateFile("scaler", ".pt"),
    StateFile("rng_state", ".pth", per_process=True),
)
TRAINING_ARGS_DOCUMENT = "training_args.json"  # the pickled TrainingArguments (training_args.bin) as JSON
_STEMS = "|".join(f.pattern for f in TRAINING_STATE_FILES)
_PICKLED = "|".join(f"{f.pattern}{re.escape(f.suffix)}" for f in TRAINING_STATE_FILES)
# DeepSpeed's engine state: every torch.save() file of its global_step<N>/ folder (the model states of each model
# parallel rank, the ZeRO optimizer shard of each rank), pushed in the pickle-free form beside itself.
DEEPSPEED_FOLDER = r"global_step[0-9]{1,12}"
_DEEPSPEED_STEM = rf"{DEEPSPEED_FOLDER}/[A-Za-z0-9][A-Za-z0-9_-]{{0,120}}"
DEEPSPEED_STATE_RE = re.compile(rf"^{_DEEPSPEED_STEM}\.pt\Z")
STATE_FILE_RE = re.compile(rf"^({_PICKLED}|{_DEEPSPEED_STEM}\.pt)\Z")  # the pickles pushed in the pickle-free form
STATE_DOCUMENT_RE = re.compile(rf"^({_STEMS}|{_DEEPSPEED_STEM})\.json\Z")  # their pickle-free form's document
# The files of a state file's tensors split into shards (core/shards): <stem>-00001-of-00002.safetensors, the index.
_SHARD_SUFFIX = r"-[0-9]{5}-of-[0-9]{5}\.safetensors|\.safetensors\.index\.json"
# Training-only state: the above in either form, and the TrainingArguments.
TRAINING_STATE_RE = re.compile(
    rf"^({_PICKLED}|({_STEMS})(\.json|\.safetensors|{_SHARD_SUFFIX})|{re.escape(TRAINING_ARGS)}"
    rf"|{re.escape(TRAINING_ARGS_DOCUMENT)})\Z"
)


DISTCP_FILE_RE = re.compile(r"^(?P<folder>[^/]+)/__[0-9]{1,6}_[0-9]{1,6}\.distcp\Z")


def dcp_conversions(names: set[str] | frozenset[str]) -> list[tuple[str, str]]:
    """(pickled file, pickle-free file) of each FSDP torch.distributed.checkpoint folder: <folder>/.metadata ->
    <folder>/dcp.json, <folder>/__<rank>_0.distcp -> <folder>/__<rank>_0.safetensors (an estimate: the measured
    plan, convert.measured_dcp, lists its shards and index instead when its tensors take more than max-shard-size).
    Folders without their .metadata are left alone (nothing reads their .distcp files)."""
    folders = {n.rsplit("/", 1)[0] for n in names if DCP_METADATA_RE.match(n)}
    out = []
    for name in sorted(names):
        if DCP_METADATA_RE.match(name):
            out.append((name, f"{name.rsplit('/', 1)[0]}/{DCP_DOCUMENT}"))
        elif (m := DISTCP_FILE_RE.match(name)) and m["folder"] in folders:
            out.append((name, name.removesuffix(".distcp") + ".safetensors"))
    return out


def is_dcp_source(name: str) -> bool:
    """Whether a converted file comes from an FSDP folder (its .metadata or one of its .distcp files)."""
    return DCP_METADATA_RE.match(name) is not None or DISTCP_FILE_RE.match(name) is not None


def pickled_state_name(stem: str) -> str | None:
    """The file torch.save wrote for a training-state stem (optimizer -> optimizer.pt, rng_state_1 ->
    rng_state_1.pth), None when the stem is not one of TRAINING_STATE_FILES."""
    for f in TRAINING_STATE_FILES:
        if re.fullmatch(f.pattern, stem):
            return stem + f.suffix
    if re.fullmatch(_DEEPSPEED_STEM, stem):
        return stem + ".pt"
    return None


@dataclass(frozen=True)
class WeightConversion:
    source: str  # a pickled weights file in the checkpoint
    target: str  # the safetensors file it becomes


@dataclass(frozen=True)
class ConversionPlan:
    conversions: tuple[WeightConversion, ...]
    index: tuple[str, str] | None  # (pytorch_model.bin.index.json, model.safetensors.index.json) to rewrite
    superseded: tuple[str, ...]  # pickled weights (and their index) that safetensors files here already hold
    # (pickled files, safetensors files) that must hold the same tensors for the pickled ones to be left out
    compared: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = ()

    @property
    def sources(self) -> frozenset[str]:
        """Files whose content the converted files replace."""
        index = {self.index[0]} if self.index else set()
        return frozenset(c.source for c in self.conversions) | frozenset(self.superseded) | index


# The scripts DeepSpeed writes beside its state (engine._copy_recovery_script: zero_to_fp32.py alone, in 0.19): they
# read that state, so they go where it goes (kept with it, dropped with it).
DEEPSPEED_SCRIPTS = ("zero_to_fp32.py",)
# DeepSpeed and FSDP write their optimizer state into folders and files of their own; `latest` names DeepSpeed's.
NESTED_STATE_RE = re.compile(
    r"^(global_step[0-9]+/.*|optimizer_[0-9]+/.*|pytorch_model_fsdp_[0-9]+/.*|latest"
    rf"|{'|'.join(re.escape(s) for s in DEEPSPEED_SCRIPTS)}|.*optim_states\.pt)\Z"
)


def is_training_state(relpath: str) -> bool:
    """Optimizer, scheduler, RNG, scaler, TrainingArguments, and DeepSpeed/FSDP optimizer shards."""
    if "/" not in relpath and TRAINING_STATE_RE.match(relpath) is not None:
        return True
    return NESTED_STATE_RE.match(relpath) is not None


def safetensors_name(source: str) -> str | None:
    """The safetensors name transformers and PEFT load for a pickled weights file, or None if it is not one."""
    if source == "adapter_model.bin":
        return "adapter_model.safetensors"
    if source == "pytorch_model.bin":
        return "model.safetensors"
    m = _SHARD_RE.match(source)
    if m:
        return f"model-{m.group(1)}-of-{m.group(2)}.safetensors"
    return None


def check_no_outside_links(checkpoint: Checkpoint) -> None:
    """Refuse a checkpoint with links that lead outside it: following one could publish any file of the machine,
    and skipping it could leave out weights the user counts on."""
    if checkpoint.outside_links:
        path, target = checkpoint.outside_links[0]
        raise LinkOutsideCheckpointError(f"{checkpoint.display}/{path}", target)


def plan_conversion(checkpoint: Checkpoint) -> ConversionPlan:
    """Which pickled weights become which safetensors files; refuses links that lead out of the checkpoint.

    Model weights saved in both formats under other names (model.safetensors beside pytorch_model-00001-of-
    00001.bin) are two sets: converting the pickled one would publish both, so it is left out as a whole and
    compared, set against set, with the safetensors one."""
    check_no_outside_links(checkpoint)
    names = {f.relpath for f in checkpoint.files}
    pickled_model = tuple(sorted(n for n in names if n == "pytorch_model.bin" or _SHARD_RE.match(n)))
    safe_model = tuple(sorted(n for n in names if n == "model.safetensors" or _SAFETENSORS_SHARD_RE.match(n)))
    two_sets = bool(safe_model) and any(safetensors_name(n) not in names for n in pickled_model)
    conversions = []
    superseded = []
    compared: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    for name in sorted(names):
        target = safetensors_name(name)
        if target is None:
            continue
        if two_sets and name in pickled_model:
            superseded.append(name)
        elif target in names:
            superseded.append(name)
            compared.append(((name,), (target,)))
        else:
            conversions.append(WeightConversion(name, target))
    if two_sets:
        compared.append((pickled_model, safe_model))
    index = None
    if "pytorch_model.bin.index.json" in names:
        if pickled_model and all(n in superseded for n in pickled_model):
            superseded.append("pytorch_model.bin.index.json")  # it indexes files that are left out
        elif "model.safetensors.index.json" not in names:
            index = ("pytorch_model.bin.index.json", "model.safetensors.index.json")
    return ConversionPlan(tuple(conversions), index, tuple(superseded), tuple(compared))


def resume_missing(paths: set[str] | frozenset[str]) -> tuple[str, ...]:
    """What a revision lacks for Trainer.train(resume_from_checkpoint=...) to carry on from it once pulled:
    trainer_state.json and weights (missing_parts: without them resuming fails), and the optimizer and
    scheduler state, as pickles or in hubsync's pickle-free form (<name>.json + <name>.safetensors), without
    which the Trainer restarts them silently. RNG state is not required: the Trainer resumes without it and
    only logs that its random draws (dropout) differ from those of an uninterrupted run.

    A distributed engine's optimizer state (DeepSpeed ZeRO's, layouts.state_layout) takes optimizer.pt's place:
    then what that engine's resume needs is what is required."""

    def has(stem: str) -> bool:
        name = pickled_state_name(stem)
        assert name is not None
        return has_state_file(paths, name)

    layout = state_layout(paths)
    optimizer = layout.missing if layout is not None else () if has("optimizer") else ("optimizer state",)
    return (*missing_parts(paths), *optimizer, *(() if has("scheduler") else ("scheduler state",)))


def is_resumable(paths: set[str] | frozenset[str]) -> bool:
    """Whether training resumes from a revision after `hubsync pull` (resume_missing says what is lacking)."""
    return not resume_missing(paths)
