"""Convert a checkpoint's pickled weights to safetensors: safely (no code from the file runs), verified, memory-flat."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from hubsync.core.checkpoint import DCP_METADATA_RE, Checkpoint, read_json_file
from hubsync.core.conversion import (
    DISTCP_FILE_RE,
    PICKLE_SUFFIXES,
    ConversionPlan,
    WeightConversion,
    is_training_state,
    safetensors_name,
)
from hubsync.core.errors import CheckpointFileError, HubLimitError, OutputExistsError, OutputInsideCheckpointError
from hubsync.core.paths import display_path
from hubsync.core.plan import PushPlan, Upload
from hubsync.core.remote_paths import MAX_FILE_SIZE
from hubsync.core.shards import (
    DEFAULT_MAX_SHARD_SIZE,
    SPLIT_STEM,
    SPLIT_WEIGHTS,
    group_shards,
    index_document,
    index_name,
    shard_name,
    shard_weight_map,
)
from hubsync.files import copy_file_atomic, is_temp, lies_within, remove_stale_temps, temp_dir, write_file_atomic

from .torchzip import TensorRef, read_torch_archive
from .writer import Progress, find_aliases, plan_layout, write_verified

ALIASES_KEY = "hubsync_aliases"


@dataclass(frozen=True)
class ConvertedFile:
    source: str
    target: str
    tensors: int
    bytes: int
    aliases: dict[str, str]  # dropped name -> the name that holds the same tensor


def convert_weights(
    checkpoint: Checkpoint,
    plan: ConversionPlan,
    out_dir: Path,
    progress: Progress = lambda n: None,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
) -> list[ConvertedFile]:
    """Write the plan's safetensors files (and rewritten index) into `out_dir`, each whole and verified;
    pytorch_model.bin in shards of at most `max_shard_size` tensor bytes, with their index, when it holds more."""
    done = []
    for conversion in plan.conversions:
        shown = f"{checkpoint.display}/{conversion.source}"
        archive = read_torch_archive(checkpoint.path / conversion.source, shown)
        kept, aliases = find_aliases(archive.tensors)
        metadata = {"format": "pt"}
        if aliases:
            metadata[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
        for target, tensors in _weight_files(conversion, kept, max_shard_size):
            if isinstance(tensors, bytes):
                write_file_atomic(out_dir / target, tensors)
                continue
            written = write_verified(archive, tensors, metadata, out_dir / target, shown, progress)
            done.append(ConvertedFile(conversion.source, target, len(tensors), written, aliases))
    if plan.index is not None:
        _rewrite_index(checkpoint, plan.index, out_dir, done)
    return done


def _weight_files(
    conversion: WeightConversion, kept: dict[str, TensorRef], max_shard_size: int
) -> list[tuple[str, dict[str, TensorRef] | bytes]]:
    """(file, its tensors or, for an index, its bytes) that one conversion writes."""
    groups = group_shards([(n, t.nbytes) for n, t in kept.items()], max_shard_size)
    if conversion.source != SPLIT_WEIGHTS or len(groups) == 1:
        return [(conversion.target, kept)]
    weight_map = shard_weight_map(groups, SPLIT_STEM)
    files: list[tuple[str, dict[str, TensorRef] | bytes]] = [
        (shard_name(SPLIT_STEM, i, len(groups)), {n: kept[n] for n in group}) for i, group in enumerate(groups, 1)
    ]
    files.append((index_name(SPLIT_STEM), index_document(weight_map, sum(t.nbytes for t in kept.values()))))
    return files


def measured_weights(plan: PushPlan, checkpoint: Checkpoint) -> PushPlan:
    """`plan` with pytorch_model.bin's uploads as convert_weights writes them under the plan's max_shard_size:
    its shards and index, each of its exact size, when its tensors take more (read from the pickle's structure,
    no tensor bytes)."""
    conversion = next((c for c in plan.conversion.conversions if c.source == SPLIT_WEIGHTS), None)
    if conversion is None:
        return plan
    shown = f"{checkpoint.display}/{conversion.source}"
    kept, aliases = find_aliases(read_torch_archive(checkpoint.path / conversion.source, shown).tensors)
    files = _weight_files(conversion, kept, plan.max_shard_size)
    if len(files) == 1:
        return plan
    metadata = {"format": "pt", **({ALIASES_KEY: json.dumps(aliases, sort_keys=True)} if aliases else {})}
    uploads = [u for u in plan.uploads if u.converted_from != conversion.source]
    for target, tensors in files:
        size = len(tensors) if isinstance(tensors, bytes) else _file_size(tensors, metadata)
        if size > MAX_FILE_SIZE:  # one tensor larger than the Hub holds: no split helps
            reason = f"has a tensor of over {MAX_FILE_SIZE // 1000**3} GB, the most a file on the Hub holds"
            raise HubLimitError(checkpoint.display, conversion.source, reason)
        uploads.append(Upload(target, target, size, conversion.source))
    return replace(plan, uploads=tuple(sorted(uploads, key=lambda u: u.path_in_repo)))


def measured_push(plan: PushPlan, checkpoint: Checkpoint) -> PushPlan:
    """`plan` with its converted files as they will be written: the training state's exact sizes, and the shards
    and index of weights or state whose tensors take more than the plan's max_shard_size. Reads the pickles'
    structure only; what execute_push needs of a plan_push plan."""
    from .state import measured_plan

    return measured_dcp(measured_weights(measured_plan(plan, checkpoint), checkpoint), checkpoint)


def measured_dcp(plan: PushPlan, checkpoint: Checkpoint) -> PushPlan:
    """`plan` with FSDP's folders as they will be converted (read from their .metadata, no tensor bytes): each
    .distcp file's tensors file, or its shards and index when they take more than the plan's max_shard_size, and
    the consolidated weights, model.safetensors in transformers' shards and index when they take more (an adapter
    stays whole), each of its exact size. HubLimitError for a file the Hub cannot hold even so."""
    from .dcp import consolidated_sizes, encoded_dcp_sizes

    uploads = list(plan.uploads)
    for upload in plan.uploads:
        source = upload.converted_from
        if source is None or not DCP_METADATA_RE.match(source):
            continue
        folder = source.rsplit("/", 1)[0]
        shown = f"{checkpoint.display}/{folder}"
        if "/" not in upload.path_in_repo:  # the consolidated weights
            sizes = consolidated_sizes(checkpoint.path / folder, shown, upload.path_in_repo, plan.max_shard_size)
            found = {name: (size, source) for name, size in sizes.items()}
            uploads = [u for u in uploads if u is not upload]
        elif ranks := [u for u in uploads if _rank_of(u.converted_from) == folder]:  # kept pickle-free
            sizes = encoded_dcp_sizes(checkpoint.path / folder, shown, plan.max_shard_size)
            found = {
                f"{folder}/{name}": (size, f"{folder}/{_RANK_FILE_RE.match(name)[1]}.distcp")  # type: ignore[index]
                for name, size in sizes.items()
            }
            uploads = [u for u in uploads if u not in ranks]
        else:
            continue
        for path, (size, origin) in found.items():
            if size > MAX_FILE_SIZE:
                what = "holds" if len(found) == 1 else "has a tensor of"
                reason = f"{what} over {MAX_FILE_SIZE // 1000**3} GB ({path}), the most a file on the Hub holds"
                raise HubLimitError(checkpoint.display, origin, reason)
            uploads.append(Upload(path, path, size, origin))
    return replace(plan, uploads=tuple(sorted(uploads, key=lambda u: u.path_in_repo)))


def _rank_of(source: str | None) -> str | None:
    """The FSDP folder a .distcp file lies in, None for any other file."""
    found = DISTCP_FILE_RE.match(source or "")
    return found["folder"] if found else None


_RANK_FILE_RE = re.compile(
    r"^(__[0-9]{1,6}_[0-9]{1,6})(?:\.safetensors|-[0-9]{5}-of-[0-9]{5}\.safetensors|\.safetensors\.index\.json)\Z"
)


def _file_size(tensors: dict[str, TensorRef], metadata: dict[str, str]) -> int:
    return len(plan_layout(tensors, metadata).header) + sum(t.nbytes for t in tensors.values())


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
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
) -> list[ConvertedFile]:
    """Convert into `out_dir`, which must be new or empty (or `force`). An interrupted run leaves nothing there."""
    out_dir = Path(os.path.abspath(out_dir))
    if lies_within(out_dir, checkpoint.path):
        raise OutputInsideCheckpointError(display_path(out_dir))
    if out_dir.exists() and any(not is_temp(p) for p in out_dir.iterdir()) and not force:
        raise OutputExistsError(display_path(out_dir))
    if out_dir.exists():
        remove_stale_temps(out_dir)
        return _convert_into(checkpoint, plan, out_dir, progress, max_shard_size)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir.parent)
    staging = temp_dir(out_dir.parent, out_dir.name)
    try:
        done = _convert_into(checkpoint, plan, staging, progress, max_shard_size)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return done


def _convert_into(
    checkpoint: Checkpoint, plan: ConversionPlan, out_dir: Path, progress: Progress, max_shard_size: int
) -> list[ConvertedFile]:
    done = convert_weights(checkpoint, plan, out_dir, progress, max_shard_size)
    for relpath in companion_files(checkpoint, plan):
        (out_dir / relpath).parent.mkdir(parents=True, exist_ok=True)
        copy_file_atomic(checkpoint.path / relpath, out_dir / relpath)
    return done
