"""What a checkpoint folder holds: its files and what its trainer_state.json says, read without side effects."""

from __future__ import annotations

import getpass
import json
import math
import os
import pickle
import re
import subprocess
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointFileError, IncompleteCheckpointError, NotACheckpointError
from .ghostpickle import read_torch_pickle
from .paths import display_path

# A step number: at most 18 digits, so that every step fits in an int64 and in a file name, and a hostile name
# or trainer_state.json never reaches int() with thousands of digits (which raises past 4,300).
MAX_STEP_DIGITS = 18
MAX_STEP = 10**MAX_STEP_DIGITS - 1
STEP_DIGITS = rf"[0-9]{{1,{MAX_STEP_DIGITS}}}"
CHECKPOINT_NAME = re.compile(rf"checkpoint-({STEP_DIGITS})")  # the Trainer's folder (and branch) name; fullmatch


def checkpoint_step(name: str) -> int | None:
    """The step of a `checkpoint-N` name (a folder's, a branch's last part), None when it is not one."""
    m = CHECKPOINT_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def checkpoint_name(step: int) -> str:
    """`checkpoint-N`, the name the Trainer gives the folder of step N; ValueError for a step that is not one."""
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        raise ValueError(f"not a step number (0 to {MAX_STEP_DIGITS} digits)")
    return f"checkpoint-{step}"


TRAINER_STATE = "trainer_state.json"
TRAINING_ARGS = "training_args.bin"
ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_FILES = (
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# FSDP's SHARDED_STATE_DICT: torch.distributed.checkpoint folders, the model's and the optimizer's, each a
# `.metadata` pickle and one `__<rank>_0.distcp` a rank; hubsync's pickle-free form of a folder is dcp.json and one
# `__<rank>_0.safetensors` a rank, or its shards and index over max-shard-size (convert/dcp.py).
DCP_MODEL_FOLDER = r"pytorch_model_fsdp_[0-9]{1,6}"
DCP_FOLDER = rf"(?:{DCP_MODEL_FOLDER}|optimizer_[0-9]{{1,6}})"
DCP_METADATA = ".metadata"
DCP_DOCUMENT = "dcp.json"
DCP_METADATA_RE = re.compile(rf"^{DCP_FOLDER}/\.metadata\Z")
DCP_DOCUMENT_RE = re.compile(rf"^{DCP_FOLDER}/dcp\.json\Z")
_DCP_MODEL_RE = re.compile(rf"^{DCP_MODEL_FOLDER}/(?:\.metadata|dcp\.json)\Z")
MAX_JSON_BYTES = 64 * 1024 * 1024
EVAL_TIMINGS = frozenset({"eval_runtime", "eval_samples_per_second", "eval_steps_per_second"})


@dataclass(frozen=True)
class CheckpointFile:
    relpath: str  # POSIX path relative to the checkpoint folder
    size: int


@dataclass(frozen=True)
class TrainerState:
    """The parts of trainer_state.json that hubsync uses."""

    global_step: int | None = None
    epoch: float | None = None
    best_metric: float | None = None
    best_model_checkpoint: str | None = None
    latest_eval: Mapping[str, float] = field(default_factory=dict)  # the newest log entry with eval_* metrics
    latest_loss: float | None = None
    log_history: tuple[Mapping[str, Any], ...] = ()  # entries that are JSON objects, in order
    settings: Mapping[str, Any] = field(default_factory=dict)  # train_batch_size, max_steps, *_steps, total_flos...

    @property
    def eval_metrics(self) -> dict[str, float]:
        """The newest evaluation's metrics without the eval_ prefix, and without the timing ones."""
        return {k.removeprefix("eval_"): v for k, v in self.latest_eval.items() if k not in EVAL_TIMINGS}


@dataclass(frozen=True)
class Checkpoint:
    path: Path  # absolute; never shown to people (see display)
    display: str
    name: str
    step: int | None
    files: tuple[CheckpointFile, ...]
    trainer_state: TrainerState | None
    skipped: tuple[str, ...] = ()  # entries not uploaded, with the reason
    adapter_config: Mapping[str, Any] | None = None
    model_config: Mapping[str, Any] | None = None  # config.json
    training_args: Mapping[str, Any] | None = None  # training_args.bin as plain data, read without running it
    git_commit: str | None = None  # of the training repository, when the checkpoint lies in a git work tree
    run_name: str | None = None  # the folder holding the checkpoint-N folders
    outside_links: tuple[tuple[str, str], ...] = ()  # (path, where it leads): never followed, refused by uploads
    trainer_state_json: Mapping[str, Any] | None = None  # trainer_state.json as it is, for a publishable copy
    # FSDP's sharded model folder (pytorch_model_fsdp_0/): the loadable file its tensors make, consolidated
    # (adapter_model.safetensors for LoRA weights, else model.safetensors), and the adapter_config.json the
    # Trainer wrote beside the checkpoints (FSDP's checkpoints hold none)
    fsdp_weights: str | None = None
    run_adapter_config: Mapping[str, Any] | None = None


def finite_number(value: Any) -> float | None:
    """`value` as a float when it is a finite number (an integer too large for a float is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def parse_trainer_state(data: Any) -> TrainerState:
    """Pick hubsync's fields out of a parsed trainer_state.json; ValueError when it is not one."""
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    step = data.get("global_step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ValueError(f"global_step is {step!r}, not a step number")
    if step is not None and step > MAX_STEP:  # a hostile record: its repr alone may be thousands of digits
        raise ValueError(f"global_step has more than {MAX_STEP_DIGITS} digits, more than any run takes")
    history = data.get("log_history", [])
    if not isinstance(history, list):
        raise ValueError("log_history is not a list")
    latest_eval: dict[str, float] = {}
    latest_loss = None
    for entry in history:
        if not isinstance(entry, dict):
            continue
        metrics = {k: v for k, v in entry.items() if k.startswith("eval_") and finite_number(v) is not None}
        if metrics:
            latest_eval = {k: float(v) for k, v in metrics.items()}
        if finite_number(entry.get("loss")) is not None:
            latest_loss = float(entry["loss"])
    best = data.get("best_model_checkpoint")
    settings = {
        k: data[k]
        for k in (
            "train_batch_size",
            "max_steps",
            "num_train_epochs",
            "logging_steps",
            "eval_steps",
            "save_steps",
            "total_flos",
        )
        if finite_number(data.get(k)) is not None
    }
    return TrainerState(
        log_history=tuple(e for e in history if isinstance(e, dict)),
        settings=settings,
        global_step=step,
        epoch=finite_number(data.get("epoch")),
        best_metric=finite_number(data.get("best_metric")),
        best_model_checkpoint=best if isinstance(best, str) else None,
        latest_eval=latest_eval,
        latest_loss=latest_loss,
    )


def loads_json(raw: bytes) -> Any:
    """Parse JSON that someone else wrote (a file, a Hub download): ValueError for anything that is not JSON
    hubsync can hold, never a RecursionError."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError("not JSON text (it holds bytes that are not UTF-8)") from exc
    except ValueError as exc:  # int(): more digits than Python converts
        raise ValueError("not valid JSON (a number with too many digits)") from exc
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(data):
        raise ValueError("not valid text (it holds a lone UTF-16 surrogate such as \\ud800)")
    return data


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(data: Any) -> bool:
    """Whether a string in `data` holds half of a UTF-16 pair, which JSON escapes allow and UTF-8 cannot write."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def read_json_file(path: Path, shown: str) -> Any:
    """Parse a small JSON file the user brought; CheckpointFileError naming it when it is not one."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointFileError(shown, f"larger than {MAX_JSON_BYTES // 2**20} MiB")
        with path.open("rb") as f:  # read bounded: a device or a pipe (/dev/zero) has no size to trust
            data = f.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise CheckpointFileError(shown, f"larger than {MAX_JSON_BYTES // 2**20} MiB")
        return loads_json(data)
    except ValueError as exc:
        raise CheckpointFileError(shown, str(exc)) from exc
    except OSError as exc:
        raise CheckpointFileError(shown, exc.strerror or type(exc).__name__) from exc


def _scan_files(root: Path) -> tuple[list[CheckpointFile], list[str], list[tuple[str, str]]]:
    """The regular files under `root` (links that stay inside it count as files), what was skipped and why, and
    the links that lead outside it, as (path, where to) for messages."""
    files: list[CheckpointFile] = []
    skipped: list[str] = []
    outside: list[tuple[str, str]] = []
    real_root = root.resolve()

    def leads_outside(link: Path, rel: str) -> bool:
        try:
            target = link.resolve(strict=True)
        except (OSError, RuntimeError):  # dangling, or a loop: nothing to upload, nothing to leak
            return False
        if target.is_relative_to(real_root):
            return False
        text = os.readlink(link)
        outside.append((rel, text if not os.path.isabs(text) else display_path(text)))
        return True

    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        # Hidden entries are never the Trainer's: .git, .env, editor and OS files, hubsync's own records.
        for name in [n for n in dirnames if n.startswith(".")]:
            dirnames.remove(name)
            skipped.append(f"{(here / name).relative_to(root).as_posix()}/ (hidden: left out)")
        for name in [n for n in filenames if n.startswith(".")]:
            if DCP_METADATA_RE.match((here / name).relative_to(root).as_posix()):
                continue  # a needed file, whatever its name says: DCP reads nothing without it
            filenames.remove(name)
            skipped.append(f"{(here / name).relative_to(root).as_posix()} (hidden: left out)")
        for name in list(dirnames):
            if (here / name).is_symlink():
                dirnames.remove(name)
                rel = (here / name).relative_to(root).as_posix()
                why = "a link that leads outside the checkpoint" if leads_outside(here / name, rel) else "a link"
                skipped.append(f"{rel}/ ({why} to a folder)")
        for name in filenames:
            full = here / name
            rel = full.relative_to(root).as_posix()
            if rel == "hubsync.toml":  # never read from a checkpoint (it may have come with a download)
                skipped.append(f"{rel} (a hubsync configuration, never read from a checkpoint: left out)")
                continue
            if full.is_symlink():
                if leads_outside(full, rel):
                    skipped.append(f"{rel} (a link that leads outside the checkpoint)")
                    continue
                if not full.is_file():
                    skipped.append(f"{rel} (a link that leads nowhere)")
                    continue
            elif not full.is_file():
                skipped.append(f"{rel} (not a regular file)")
                continue
            files.append(CheckpointFile(rel, full.stat().st_size))
        dirnames.sort()
    files.sort(key=lambda f: f.relpath)
    return files, skipped, sorted(outside)


def looks_pickled(path: Path) -> bool:
    """Whether a file is a pickle whatever its name: pickle protocol 2 or later (what pickle and torch.save write)
    at its start, or a zip archive holding a .pkl (torch.save's format). Reads a few bytes and, for a zip, its
    directory."""
    import zipfile

    try:
        with path.open("rb") as f:
            head = f.read(4)
            # PROTO 2..5, then an opcode (never 0: a safetensors file's 8-byte header size can begin 0x80 0x05 0x00)
            if len(head) >= 3 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[2] != 0:
                return True
            if head == b"PK\x03\x04":
                with zipfile.ZipFile(f) as archive:
                    return any(name.endswith(".pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError):
        return False
    return False


def has_weights(paths: Collection[str]) -> bool:
    """Whether a checkpoint's files hold weights that Trainer._load_from_checkpoint loads: an adapter, a model, a
    sharded model's index, adapters in subfolders (several adapters), or FSDP's sharded model folder
    (pytorch_model_fsdp_0/, as DCP wrote it or in hubsync's pickle-free form)."""
    return any(
        p in WEIGHT_FILES or (p.count("/") == 1 and p.split("/")[1] in ADAPTER_WEIGHTS) or _DCP_MODEL_RE.match(p)
        for p in paths
    )


def missing_parts(paths: Collection[str]) -> tuple[str, ...]:
    """What a checkpoint's files lack to be a complete checkpoint: trainer_state.json, which the Trainer writes
    last (without it the save is unfinished, and resuming fails), and weights. The one rule for push, --select
    and resumable."""
    missing = () if TRAINER_STATE in paths else (TRAINER_STATE,)
    return missing if has_weights(paths) else (*missing, "model weights")


def check_complete(checkpoint: Checkpoint) -> None:
    """Refuse a checkpoint folder that is still being written, or holds no weights."""
    missing = missing_parts({f.relpath for f in checkpoint.files})
    if missing:
        raise IncompleteCheckpointError(checkpoint.display, " or ".join(missing))


def folder_missing_parts(folder: Path) -> tuple[str, ...]:
    """missing_parts() of a checkpoint folder, from its file names (hidden ones left out, as a push does). A link
    that leads outside counts as there: its push is refused for the link, which is the problem to report."""
    files, _skipped, outside = _scan_files(folder)
    return missing_parts({f.relpath for f in files} | {path for path, _ in outside})


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The `checkpoint-N` folders of a run folder, by step."""
    found = []
    for child in run_dir.iterdir():
        step = checkpoint_step(child.name)
        if step is not None and child.is_dir():
            found.append((step, child))
    return sorted(found)


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Inventory a checkpoint folder written by transformers' Trainer (or by save_pretrained)."""
    shown = display_path(path)
    root = Path(os.path.abspath(path))
    if not root.exists():
        raise NotACheckpointError(shown, "no such folder")
    if not root.is_dir():
        raise NotACheckpointError(shown, "it is a file, not a folder")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029" for c in root.name):
        # It would be the commit's title on the Hub and a line of its own in every message.
        raise NotACheckpointError(shown, "its name holds a control character or a line break; rename it")
    files, skipped, outside = _scan_files(root)
    names = {f.relpath for f in files}
    if not names & {TRAINER_STATE, ADAPTER_CONFIG, *WEIGHT_FILES}:
        runs = list_checkpoints(root)
        if runs:
            raise NotACheckpointError(
                shown, f"it is a run folder; pass one of its checkpoints, such as {shown}/{runs[-1][1].name}"
            )
        raise NotACheckpointError(shown, f"it has no {TRAINER_STATE}, {ADAPTER_CONFIG} or model weights")
    state = None
    raw_state = None
    if TRAINER_STATE in names:
        state_shown = f"{shown}/{TRAINER_STATE}"
        try:
            raw_state = read_json_file(root / TRAINER_STATE, state_shown)
            state = parse_trainer_state(raw_state)
        except ValueError as exc:
            raise CheckpointFileError(state_shown, str(exc)) from exc
    step = state.global_step if state and state.global_step is not None else checkpoint_step(root.name)
    fsdp_weights, run_adapter_config = _fsdp_model(root, names, shown)
    return Checkpoint(
        root,
        shown,
        root.name,
        step,
        tuple(files),
        state,
        tuple(skipped),
        adapter_config=_json_object(root, ADAPTER_CONFIG, names, shown),
        model_config=_json_object(root, "config.json", names, shown),
        training_args=_training_args(root, names),
        git_commit=git_commit_of(root),
        run_name=_run_name(root) if checkpoint_step(root.name) is not None else None,
        outside_links=tuple(outside),
        trainer_state_json=raw_state,
        fsdp_weights=fsdp_weights,
        run_adapter_config=run_adapter_config,
    )


def _fsdp_model(root: Path, names: set[str], shown: str) -> tuple[str | None, Mapping[str, Any] | None]:
    """What FSDP's sharded model folder consolidates to, from its tensor names (its .metadata read by the
    restricted reader, which refuses a hostile one), and the run folder's adapter_config.json for LoRA weights."""
    folder = "pytorch_model_fsdp_0"
    if f"{folder}/{DCP_METADATA}" not in names or names & {
        "adapter_model.safetensors",
        "model.safetensors",
        "model.safetensors.index.json",
    }:
        return None, None
    from .dcp_metadata import read_metadata  # the reader of DCP's pickle, which nothing here runs

    meta = read_metadata(root / folder / DCP_METADATA, f"{shown}/{folder}/{DCP_METADATA}")
    if not any(".lora_A." in k or ".lora_B." in k for k in meta.tensors):
        return "model.safetensors", None
    config = None
    beside = root.parent / ADAPTER_CONFIG
    # never through a link: one that leads out of the run folder would publish whatever JSON it names
    if ADAPTER_CONFIG not in names and beside.is_file() and not beside.is_symlink():
        config = read_json_file(beside, f"{display_path(root.parent)}/{ADAPTER_CONFIG}")
        config = config if isinstance(config, dict) else None
    return "adapter_model.safetensors", config


def _json_object(root: Path, name: str, names: set[str], shown: str) -> Mapping[str, Any] | None:
    if name not in names:
        return None
    data = read_json_file(root / name, f"{shown}/{name}")
    if not isinstance(data, dict):
        raise CheckpointFileError(f"{shown}/{name}", "expected a JSON object")
    return data


def _training_args(root: Path, names: set[str]) -> Mapping[str, Any] | None:
    """training_args.bin as plain data, read without importing or running anything; None when unreadable."""
    if TRAINING_ARGS not in names:
        return None
    try:
        data = read_torch_pickle(root / TRAINING_ARGS)
    except (OSError, pickle.UnpicklingError):
        return None
    return data if isinstance(data, dict) else None


def _run_name(checkpoint: Path) -> str | None:
    """The run folder's name, which cards publish; not when that folder is a home folder or named as the user."""
    run = checkpoint.parent
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = None
    if run == Path.home() or run.name in ("", user) or run == run.parent:
        return None
    return run.name


def git_commit_of(folder: Path) -> str | None:
    """The HEAD commit of the git work tree holding `folder`, if any (and git is installed)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--verify", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None
