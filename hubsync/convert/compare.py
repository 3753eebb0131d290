"""Whether a pickled weights file and the safetensors file beside it hold the same tensors, read without torch.

A checkpoint can hold both (an older PEFT wrote adapter_model.bin, a newer one adapter_model.safetensors into the
same folder). Only the safetensors file is published; that is right only when both say the same. Nothing here
loads a whole file: the pickle is read by the restricted reader (torchzip), the safetensors file by its header,
and the tensors' bytes are compared range against range, a buffer at a time.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from hubsync.core.checkpoint import Checkpoint
from hubsync.core.conversion import ConversionPlan, safetensors_name
from hubsync.core.errors import ConflictingWeightsError

from .torchzip import TensorRef, TorchArchive, read_torch_archive
from .writer import VERIFY_CHUNK, _same_bytes, _strided_chunks, find_aliases

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit


def check_superseded(checkpoint: Checkpoint, plan: ConversionPlan) -> None:
    """Refuse a checkpoint whose pickled weights differ from the safetensors file that supersedes them."""
    for pickled in plan.superseded:
        target = safetensors_name(pickled)
        if target is None:
            continue
        difference = weights_difference(checkpoint.path / pickled, checkpoint.path / target, pickled)
        if difference is not None:
            raise ConflictingWeightsError(f"{checkpoint.display}/{pickled}", target, difference)


def safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header (name -> dtype, shape, data_offsets) and where its data starts; ValueError if
    the file is not one."""
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError("the file is shorter than a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise ValueError("its header is too large")
        raw = f.read(length)
    if len(raw) != length:
        raise ValueError("its header is cut short")
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    header.pop("__metadata__", None)
    return header, 8 + length


def weights_difference(pickled: Path, safetensors: Path, shown: str) -> str | None:
    """None when both files hold the same tensors (names, dtypes, shapes and bytes; a tied weight the pickle
    names twice counts once); else the first difference, in words."""
    archive = read_torch_archive(pickled, shown)
    try:
        header, data_start = safetensors_header(safetensors)
    except (OSError, ValueError) as exc:
        return f"the safetensors file cannot be read ({exc})"
    kept, aliases = find_aliases(archive.tensors)
    names = set(kept) | set(aliases)
    for name in sorted(names - set(header)):
        if aliases.get(name) not in header:  # a tied weight is saved once, under either of its names
            return f"{name} is only in the pickled file"
    for name in sorted(set(header) - names):
        return f"{name} is only in the safetensors file"
    with pickled.open("rb") as a, safetensors.open("rb") as b:
        for name, entry in sorted(header.items()):
            tensor = archive.tensors[name]
            if not isinstance(entry, dict) or entry.get("dtype") != tensor.dtype.name:
                return f"{name} is {tensor.dtype.name} in one and {_field(entry, 'dtype')} in the other"
            if entry.get("shape") != list(tensor.shape):
                return f"{name} has shape {list(tensor.shape)} in one and {_field(entry, 'shape')} in the other"
            offsets = entry.get("data_offsets")
            if not (isinstance(offsets, list) and len(offsets) == 2 and offsets[1] - offsets[0] == tensor.nbytes):
                return f"{name} has a different size in the safetensors file"
            if not _same_tensor_bytes(archive, tensor, a, b, data_start + int(offsets[0])):
                return f"the values of {name} differ"
    return None


def _field(entry: Any, key: str) -> str:
    return str(entry.get(key)) if isinstance(entry, dict) else "not a tensor"


def _same_tensor_bytes(archive: TorchArchive, tensor: TensorRef, pickled: Any, safetensors: Any, at: int) -> bool:
    if tensor.nbytes == 0:
        return True
    if tensor.is_contiguous:
        start = archive.storages[tensor.storage.key].file_offset + tensor.offset * tensor.dtype.itemsize
        return _same_bytes(pickled, start, safetensors, at, tensor.nbytes)
    for chunk in _strided_chunks(archive, tensor):
        for i in range(0, len(chunk), VERIFY_CHUNK):
            piece = chunk[i : i + VERIFY_CHUNK]
            safetensors.seek(at)
            if safetensors.read(len(piece)) != piece:
                return False
            at += len(piece)
    return True
