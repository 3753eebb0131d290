"""Convert a checkpoint's pickled weights to safetensors: safely (no code from the file runs), verified, memory-flat."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hubsync.core.checkpoint import Checkpoint, read_json_file
from hubsync.core.conversion import PICKLE_SUFFIXES, ConversionPlan, is_training_state, safetensors_name
from hubsync.core.errors import CheckpointFileError, OutputExistsError, OutputInsideCheckpointError
from hubsync.core.paths import display_path
from hubsync.files import copy_file_atomic, is_temp, lies_within, remove_stale_temps, temp_dir, write_file_atomic

from .torchzip import read_torch_archive
from .writer import Progress, find_aliases, write_verified

ALIASES_KEY = "hubsync_aliases"


@dataclass(frozen=True)
class ConvertedFile:
    source: str
    target: str
    tensors: int
    bytes: int
    aliases: dict[str, str]  # dropped name -> the name that holds the same tensor


def convert_weights(
    checkpoint: Checkpoint, plan: ConversionPlan, out_dir: Path, progress: Progress = lambda n: None
) -> list[ConvertedFile]:
    """Write the plan's safetensors files (and rewritten index) into `out_dir`, each whole and verified."""
    done = []
    for conversion in plan.conversions:
        shown = f"{checkpoint.display}/{conversion.source}"
        archive = read_torch_archive(checkpoint.path / conversion.source, shown)
        kept, aliases = find_aliases(archive.tensors)
        metadata = {"format": "pt"}
        if aliases:
            metadata[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
        written = write_verified(archive, kept, metadata, out_dir / conversion.target, shown, progress)
        done.append(ConvertedFile(conversion.source, conversion.target, len(kept), written, aliases))
    if plan.index is not None:
        _rewrite_index(checkpoint, plan.index, out_dir, done)
    return done


def check_weights(checkpoint: Checkpoint, plan: ConversionPlan) -> None:
    """Refuse what convert_weights would refuse before it writes: each pickled file read as it reads it (the zip
    rule, the restricted pickle, the tensor bounds) and the index's weight map. Writes nothing and reads no
    tensor bytes, so that a dry run refuses what the push would, with the same error."""
    dropped: set[str] = set()
    for conversion in plan.conversions:
        archive = read_torch_archive(checkpoint.path / conversion.source, f"{checkpoint.display}/{conversion.source}")
        dropped.update(find_aliases(archive.tensors)[1])
    if plan.index is not None:
        _new_index(checkpoint, plan.index[0], dropped)


def _rewrite_index(checkpoint: Checkpoint, index: tuple[str, str], out_dir: Path, done: list[ConvertedFile]) -> None:
    source, target = index
    metadata, new_map = _new_index(checkpoint, source, {name for f in done for name in f.aliases})
    metadata["total_size"] = sum(f.bytes for f in done)
    write_file_atomic(out_dir / target, json.dumps({"metadata": metadata, "weight_map": new_map}, indent=2).encode())


def _new_index(checkpoint: Checkpoint, source: str, dropped: set[str]) -> tuple[dict[str, object], dict[str, str]]:
    """The index's metadata and its weight map onto the safetensors shards, less the `dropped` aliases."""
    shown = f"{checkpoint.display}/{source}"
    data = read_json_file(checkpoint.path / source, shown)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointFileError(shown, "it has no weight_map")
    new_map = {}
    for name, shard in weight_map.items():
        new_shard = safetensors_name(shard) if isinstance(shard, str) else None
        if new_shard is None:
            raise CheckpointFileError(shown, f"{name!r} maps to {shard!r}, not a pytorch_model shard")
        if name not in dropped:
            new_map[name] = new_shard
    found = data.get("metadata")  # transformers writes {"total_size": N}; a hostile index may hold anything there
    metadata = {k: v for k, v in found.items() if isinstance(k, str)} if isinstance(found, dict) else {}
    return metadata, new_map


def companion_files(checkpoint: Checkpoint, plan: ConversionPlan) -> list[str]:
    """Files that go with converted weights: configs, tokenizer, card; no pickles and no training state."""
    return [
        f.relpath
        for f in checkpoint.files
        if f.relpath not in plan.sources
        and not is_training_state(f.relpath)
        and not f.relpath.endswith(PICKLE_SUFFIXES)
        and not is_temp(Path(f.relpath))
    ]


def default_output_dir(checkpoint: Checkpoint) -> Path:
    """Beside the checkpoint, under a name that the Trainer's `checkpoint-*` rotation never matches."""
    return checkpoint.path.parent / f"safetensors-{checkpoint.name}"


def convert_checkpoint(
    checkpoint: Checkpoint,
    plan: ConversionPlan,
    out_dir: Path,
    *,
    force: bool = False,
    progress: Progress = lambda n: None,
) -> list[ConvertedFile]:
    """Convert into `out_dir`, which must be new or empty (or `force`). An interrupted run leaves nothing there."""
    out_dir = Path(os.path.abspath(out_dir))
    if lies_within(out_dir, checkpoint.path):
        raise OutputInsideCheckpointError(display_path(out_dir))
    if out_dir.exists() and any(not is_temp(p) for p in out_dir.iterdir()) and not force:
        raise OutputExistsError(display_path(out_dir))
    if out_dir.exists():
        remove_stale_temps(out_dir)
        return _convert_into(checkpoint, plan, out_dir, progress)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir.parent)
    staging = temp_dir(out_dir.parent, out_dir.name)
    try:
        done = _convert_into(checkpoint, plan, staging, progress)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return done


def _convert_into(
    checkpoint: Checkpoint, plan: ConversionPlan, out_dir: Path, progress: Progress
) -> list[ConvertedFile]:
    done = convert_weights(checkpoint, plan, out_dir, progress)
    for relpath in companion_files(checkpoint, plan):
        (out_dir / relpath).parent.mkdir(parents=True, exist_ok=True)
        copy_file_atomic(checkpoint.path / relpath, out_dir / relpath)
    return done
