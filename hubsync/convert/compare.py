"""Whether a pickled weights file and the safetensors file beside it hold the same tensors, read without torch.

A checkpoint can hold both (an older PEFT wrote adapter_model.bin, a newer one adapter_model.safetensors into the
same folder). Only the safetensors file is published; that is right only when both say the same. Nothing here
loads a whole file: the pickle is read by the restricted reader (torchzip), the safetensors file by its header,
and the tensors' bytes are compared range against range, a buffer at a time.
"""

from __future__ import annotations

import json
import struct
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from hubsync.core.checkpoint import Checkpoint
from hubsync.core.conversion import ConversionPlan, is_training_state
from hubsync.core.errors import ConflictingWeightsError, InvalidSafetensorsError

from .torchzip import TensorRef, TorchArchive, read_torch_archive
from .writer import VERIFY_CHUNK, _same_bytes, _strided_chunks, find_aliases

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
# Bits per element of each dtype the safetensors format names.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16,
    "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip


def check_superseded(checkpoint: Checkpoint, plan: ConversionPlan) -> None:
    """Refuse a checkpoint whose safetensors weights are not valid safetensors files (published as they are,
    a reader would refuse them), or whose pickled weights differ from the safetensors files that supersede
    them (the pickled ones are left out)."""
    for f in checkpoint.files:
        if f.relpath.endswith(".safetensors") and not is_training_state(f.relpath):
            read_safetensors_header(checkpoint.path / f.relpath, f"{checkpoint.display}/{f.relpath}")
    for pickled, safetensors in plan.compared:
        shown = f"{checkpoint.display}/{' + '.join(pickled)}"
        difference = _sets_difference(
            [(checkpoint.path / p, f"{checkpoint.display}/{p}") for p in pickled],
            [(checkpoint.path / t, f"{checkpoint.display}/{t}") for t in safetensors],
        )
        if difference is not None:
            raise ConflictingWeightsError(shown, " + ".join(safetensors), difference)


def read_safetensors_header(path: Path, shown: str) -> tuple[dict[str, Any], int]:
    """safetensors_header, or InvalidSafetensorsError naming the file as `shown`."""
    try:
        return safetensors_header(path)
    except (OSError, ValueError) as exc:
        raise InvalidSafetensorsError(shown, str(exc)) from exc


def safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header (name -> dtype, shape, data_offsets) and where its data starts; ValueError if
    the safetensors library refuses the file, or if the header is not exactly what the format requires: integer
    shapes and offsets, known dtypes, each tensor's offsets spanning its shape's bytes, tensors laid end to end
    over the whole data section with nothing after it, metadata mapping text to text."""
    _library_accepts(path)
    return _parse_header(path)


def _parse_header(path: Path) -> tuple[dict[str, Any], int]:
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError("the file is shorter than a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise ValueError("its header is too large")
        raw = f.read(length)
        f.seek(0, 2)
        data_length = f.tell() - 8 - length
    if len(raw) != length:
        raise ValueError("its header is cut short")
    try:
        header = json.loads(raw, object_pairs_hook=_no_repeated_keys)
    except RecursionError as exc:
        raise ValueError("its header is nested too deeply") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"its header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("its __metadata__ is not a map of text to text")
    spans = sorted((_checked_entry(name, entry), name) for name, entry in header.items())
    end = 0
    for (start, stop), name in spans:
        if start != end:
            raise ValueError(f"{name} does not start where the tensor before it ends")
        end = stop
    if end != data_length:
        raise ValueError(f"its tensors cover {end} bytes of a data section of {data_length}")
    return header, 8 + length


def _library_accepts(path: Path) -> None:
    """What the safetensors library itself refuses (it reads only the header; numpy, not torch)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except SafetensorError as exc:
        said = " ".join(str(exc).removeprefix("Error while deserializing header: ").split())
        raise ValueError(f"the safetensors library refuses it: {said}"[:300]) from exc


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("its header names a key twice")
    return out


def _checked_entry(name: str, entry: Any) -> tuple[int, int]:
    """A tensor's (start, end) in the data section, once its dtype, shape and offsets agree."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):  # others: ignored
        raise ValueError(f"{name} is not a tensor entry (dtype, shape, data_offsets)")
    bits = DTYPE_BITS.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    shape, offsets = entry["shape"], entry["data_offsets"]
    if bits is None:
        raise ValueError(f"{name} has an unknown dtype {str(entry['dtype'])[:40]!r}")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise ValueError(f"the shape of {name} is not a list of whole numbers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise ValueError(f"the data_offsets of {name} are not two whole numbers")
    start, end = offsets
    numel = 1
    for d in shape:
        numel *= d
    if not 0 <= start <= end or numel * bits != (end - start) * 8:
        raise ValueError(f"the data_offsets of {name} do not span its shape's {numel * bits / 8:g} bytes")
    return start, end


def weights_difference(pickled: Path, safetensors: Path, shown: str) -> str | None:
    """None when both files hold the same tensors (names, dtypes, shapes and bytes; a tied weight the pickle
    names twice counts once); else the first difference, in words. InvalidSafetensorsError when the
    safetensors file is not a valid one."""
    return _sets_difference([(pickled, shown)], [(safetensors, safetensors.name)])


def _sets_difference(pickled: list[tuple[Path, str]], safetensors: list[tuple[Path, str]]) -> str | None:
    """weights_difference for sets of files (shards): the same tensors, whichever file of its set holds each."""
    tensors: dict[str, tuple[int, TensorRef]] = {}
    archives: list[TorchArchive] = []
    names: set[str] = set()
    aliases: dict[str, str] = {}
    for i, (path, shown) in enumerate(pickled):
        archives.append(read_torch_archive(path, shown))
        kept, file_aliases = find_aliases(archives[-1].tensors)
        for name, tensor in archives[-1].tensors.items():
            if name in tensors:
                return f"{name} is in two pickled files"
            tensors[name] = (i, tensor)
        names |= set(kept) | set(file_aliases)
        aliases |= file_aliases
    entries: dict[str, tuple[int, dict[str, Any], int]] = {}
    for j, (path, shown) in enumerate(safetensors):
        header, data_start = read_safetensors_header(path, shown)
        for name, entry in header.items():
            if name in entries:
                return f"{name} is in two safetensors files"
            entries[name] = (j, entry, data_start)
    for name in sorted(names - set(entries)):
        if aliases.get(name) not in entries:  # a tied weight is saved once, under either of its names
            return f"{name} is only in the pickled file"
    for name in sorted(set(entries) - names):
        return f"{name} is only in the safetensors file"
    with ExitStack() as stack:
        opened = [stack.enter_context(path.open("rb")) for path, _ in pickled]
        readers = [stack.enter_context(path.open("rb")) for path, _ in safetensors]
        for name, (j, entry, data_start) in sorted(entries.items()):
            i, tensor = tensors[name]
            if entry["dtype"] != tensor.dtype.name:
                return f"{name} is {tensor.dtype.name} in one and {_field(entry, 'dtype')} in the other"
            if entry["shape"] != list(tensor.shape):
                return f"{name} has shape {list(tensor.shape)} in one and {_field(entry, 'shape')} in the other"
            start, end = entry["data_offsets"]
            if end - start != tensor.nbytes:
                return f"{name} has a different size in the safetensors file"
            if not _same_tensor_bytes(archives[i], tensor, opened[i], readers[j], data_start + start):
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
