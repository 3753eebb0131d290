"""FSDP's torch.distributed.checkpoint (DCP) folders without pickles: read safely, pushed as JSON + safetensors.

A DCP folder (pytorch_model_fsdp_0/, optimizer_0/) holds `.metadata`, a plain pickle of DCP's Metadata (what each
entry is, and where its bytes lie: storage_data maps MetadataIndex -> _StorageInfo(file, offset, length)), and one
`__<rank>_0.distcp` a rank: the entries' torch.save() archives laid end to end, a tensor each for tensor entries, any
picklable value for the others (BytesStorageMetadata: the optimizer's param_groups).

`.metadata` is read by core/dcp_metadata.py's unpickler, which answers only DCP's metadata classes (and torch.Size,
the dtypes, torch.strided, DCP's memory-format enum) with inert records; anything else refuses the file. Each
entry of a .distcp is read by torchzip's restricted reader. The pickle-free form, beside them:

- `dcp.json` (DCP_DOCUMENT): the metadata (dtypes, sizes, chunks, planner data) and, for each .distcp file, its
  entries in order: a tensor (by its name in that file's safetensors) or a value (state.py's JSON tree). No byte
  offsets: they are those of the rebuilt files, which pull writes.
- `__<rank>_0.safetensors`: the tensors of `__<rank>_0.distcp`, one a (fqn, chunk offsets): `<fqn>@<offsets>`; when
  they take more than max-shard-size, `__<rank>_0-00001-of-0000N.safetensors` ... and their index
  `__<rank>_0.safetensors.index.json` instead (core/shards, as state.py splits optimizer.pt's tensors).

The model folder is also consolidated into the file the model loads (consolidate_dcp): adapter_model.safetensors
whole (PEFT loads no shards), or model.safetensors, as transformers' model-0000i-of-0000N.safetensors and
model.safetensors.index.json when its tensors take more than max-shard-size. The sizes of all these files are
known from `.metadata` alone (encoded_dcp_sizes, consolidated_sizes): what the plan shows and checks.

Pull writes each .distcp back with torch.save() an entry, then `.metadata` with the new offsets (pickle.dump, as
DCP's FileSystemWriter does), constructing only DCP's own classes from the table. The bytes differ from the original
files (torch.save writes a fresh serialization id), what DCP loads from them does not.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubsync.core.checkpoint import DCP_DOCUMENT, DCP_METADATA, loads_json
from hubsync.core.dcp_metadata import _INT64, DISTCP_RE, FORMAT, DcpMetadata, Entry, _bad, read_metadata
from hubsync.core.errors import DamagedStateError, HubsyncError, UnrepresentableStateError
from hubsync.core.shards import (
    DEFAULT_MAX_SHARD_SIZE,
    SPLIT_STEM,
    group_shards,
    index_document,
    index_name,
    shard_name,
    shard_weight_map,
)
from hubsync.core.torchfile import TORCH_DTYPES as _TORCH_DTYPES
from hubsync.core.torchfile import ArchiveError, DType, open_archive
from hubsync.extras import needs_extra
from hubsync.files import temp_file, write_file_atomic

from .state import MAX_NODES, decode_tree, groups_like, load_state_tensors, state_files
from .torchzip import TensorRef, read_torch_archive

# --- encoding ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tensor:
    key: str
    dtype: DType
    shape: tuple[int, ...]
    pieces: tuple[tuple[Path, int, int], ...]  # (.distcp file, start, bytes), laid end to end

    @property
    def nbytes(self) -> int:
        return sum(n for _, _, n in self.pieces)


def dcp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if DISTCP_RE.match(p.name))


def _read_entry(
    folder: Path, shown: str, meta: DcpMetadata, entry: Entry, scratch: Path, budget: list[int] | None = None
) -> Any:
    """Where an entry's tensor lies in its .distcp file (a _Tensor), or its value as a JSON tree; the entry's
    torch.save() archive read by torchzip's restricted reader, from a copy of its bytes in `scratch`. `budget`:
    the entries a folder's values may unfold into, all together (each a pickle that may share one list under many
    names)."""
    from .state import _encode, check_tree

    where = f"{shown}/{entry.file}"
    path = folder / entry.file
    if entry.start + entry.length > path.stat().st_size:
        raise _bad(where, f"the entry {entry.fqn[:80]!r} reaches past the end of the file (truncated?)")
    fd, tmp = temp_file(scratch, ".item")
    try:
        with os.fdopen(fd, "wb") as out:
            _copy(path, entry.start, entry.length, out, where)
        _check_stored(tmp, f"{where} ({entry.fqn[:80]})")
        archive = read_torch_archive(tmp, f"{where} ({entry.fqn[:80]})", state=True)
    finally:
        tmp.unlink(missing_ok=True)
    if entry.offset is None:
        if archive.tensors:
            raise UnrepresentableStateError(where, f"tensor inside the value {entry.fqn[:80]!r}")
        check_tree(archive.root, where)
        return _encode(archive.root, {}, where, left=budget)
    spec = meta.tensors[entry.fqn]
    ref = archive.root
    if not isinstance(ref, TensorRef):
        raise _bad(where, f"the entry {entry.fqn[:80]!r} does not hold a tensor")
    if ref.dtype != _TORCH_DTYPES[spec["dtype"]] or list(ref.shape) != meta.chunk_sizes[(entry.fqn, entry.offset)]:
        raise _bad(where, f"the tensor {entry.fqn[:80]!r} is not the dtype and shape its metadata says")
    if not ref.is_contiguous:
        raise UnrepresentableStateError(where, "non-contiguous tensor chunk")
    if ref.attributes:  # DCP writes plain chunks; the .safetensors form would drop these
        raise UnrepresentableStateError(where, "tensor chunk with Python attributes")
    storage = archive.storages[ref.storage.key]
    start = entry.start + storage.file_offset + ref.offset * ref.dtype.itemsize
    return _Tensor(entry.key, ref.dtype, ref.shape, ((path, start, ref.nbytes),))


def _copy(source: Path, start: int, count: int, out: Any, shown: str) -> None:
    """Append `count` bytes of `source` from `start` to `out`, 8 MiB at a time; a file that ends early says so."""
    with source.open("rb") as src:
        src.seek(start)
        while count:
            chunk = src.read(min(count, 8 << 20))
            if not chunk:
                raise _bad(shown, "the file ends early")
            out.write(chunk)
            count -= len(chunk)


def _check_stored(path: Path, shown: str) -> None:
    """An entry's archive holds its records as torch.save() writes them, stored: a deflated pickle of a few KB
    would unfold into millions of opcodes to read, and a .distcp holds one archive an entry."""
    try:
        with path.open("rb") as raw, open_archive(raw) as archive:
            compressed = [i.filename for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED]
    except (ArchiveError, OSError):
        return  # the reader says what is wrong with it
    if compressed:
        raise _bad(shown, f"its record {compressed[0][:80]!r} is compressed, which torch.save() never writes")


@dataclass(frozen=True)
class _Whole:
    """A whole tensor of a DCP model folder as the model loads it: its name, and its chunks' offsets in order."""

    name: str
    fqn: str
    dtype: DType
    shape: tuple[int, ...]
    chunks: tuple[tuple[int, ...], ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _whole_tensors(meta: DcpMetadata, shown: str) -> list[_Whole]:
    """The whole tensors a DCP model folder's metadata describes, named by the state dict's own keys (planner
    data: ("model", key) -> key), each from its chunks, which FSDP splits along the first dimension (Shard(0));
    UnrepresentableStateError for another split. From the metadata alone: what a dry run measures."""
    where = f"{shown}/{DCP_METADATA}"
    stored: dict[str, set[tuple[int, ...]]] = {}
    for entry in meta.entries:
        if entry.offset is not None:
            stored.setdefault(entry.fqn, set()).add(entry.offset)
    whole = []
    for fqn, spec in meta.tensors.items():
        path = (meta.planner_data or {}).get(fqn)
        name = ".".join(map(str, path[1:])) if path and len(path) > 1 and path[0] == "model" else fqn
        name = name if path else name.removeprefix("model.")
        chunks = sorted(spec["chunks"], key=lambda c: c["offsets"])
        size = spec["size"]
        rows = 0
        for c in chunks:
            if (
                c["offsets"][1:] != [0] * (len(size) - 1)
                or c["sizes"][1:] != size[1:]
                or (size and c["offsets"][0] != rows)
            ):
                raise UnrepresentableStateError(where, f"tensor {fqn[:80]!r} split other than by rows")
            rows += c["sizes"][0] if size else 1
        offsets = tuple(tuple(c["offsets"]) for c in chunks)
        if (size and rows != size[0]) or offsets != tuple(sorted(stored.get(fqn, ()))):
            raise _bad(where, f"the chunks of {fqn[:80]!r} do not make the whole tensor")
        whole.append(_Whole(name, fqn, _TORCH_DTYPES[spec["dtype"]], tuple(size), offsets))
    if len({t.name for t in whole}) != len(whole):
        raise _bad(where, "two tensors of one name")
    return whole


def _consolidated_files(
    whole: Sequence[_Whole], target: str, max_shard_size: int
) -> list[tuple[str, list[_Whole] | bytes]]:
    """(file, its tensors or, for the index, its bytes) of a consolidated model: `target` whole, or, for
    model.safetensors whose tensors take more than `max_shard_size`, transformers' model-0000i-of-0000N.safetensors
    and model.safetensors.index.json (from_pretrained loads them). An adapter stays whole: PEFT loads no shards."""
    groups = group_shards([(t.name, t.nbytes) for t in whole], max_shard_size)
    if target != f"{SPLIT_STEM}.safetensors" or len(groups) == 1:
        return [(target, list(whole))]
    by_name = {t.name: t for t in whole}
    files: list[tuple[str, list[_Whole] | bytes]] = [
        (shard_name(SPLIT_STEM, i, len(groups)), [by_name[n] for n in group]) for i, group in enumerate(groups, 1)
    ]
    weight_map = shard_weight_map(groups, SPLIT_STEM)
    files.append((index_name(SPLIT_STEM), index_document(weight_map, sum(t.nbytes for t in whole))))
    return files


def consolidated_sizes(
    folder: Path, shown: str, target: str, max_shard_size: int = DEFAULT_MAX_SHARD_SIZE
) -> dict[str, int]:
    """The files consolidate_dcp writes for `target` (adapter_model.safetensors, model.safetensors) and their sizes,
    exactly, from the folder's metadata alone (no tensor bytes are read): what a dry run shows."""
    meta = read_metadata(folder / DCP_METADATA, f"{shown}/{DCP_METADATA}")
    return {
        name: len(content)
        if isinstance(content, bytes)
        else _file_size([(t.name, t.dtype, t.shape, t.nbytes) for t in content])
        for name, content in _consolidated_files(_whole_tensors(meta, shown), target, max_shard_size)
    }


def consolidate_dcp(folder: Path, shown: str, target: Path, max_shard_size: int = DEFAULT_MAX_SHARD_SIZE) -> list[str]:
    """Write the whole tensors of a DCP model folder (pytorch_model_fsdp_0/) as the model loads them (_whole_tensors):
    `target` (adapter_model.safetensors, model.safetensors) as one file, or model.safetensors in shards of at most
    `max_shard_size` tensor bytes and their index when it holds more (_consolidated_files), beside `target`. The
    names written."""
    meta = read_metadata(folder / DCP_METADATA, f"{shown}/{DCP_METADATA}")
    whole = _whole_tensors(meta, shown)
    pieces: dict[tuple[str, tuple[int, ...]], _Tensor] = {}
    for entry in meta.entries:
        if entry.offset is not None:
            pieces[(entry.fqn, entry.offset)] = _read_entry(folder, shown, meta, entry, target.parent)
    written = []
    for name, content in _consolidated_files(whole, target.name, max_shard_size):
        if isinstance(content, bytes):
            write_file_atomic(target.parent / name, content)
        else:
            tensors = [
                _Tensor(t.name, t.dtype, t.shape, tuple(p for c in t.chunks for p in pieces[(t.fqn, c)].pieces))
                for t in content
            ]
            _write_safetensors(tensors, target.parent / name, shown)
        written.append(name)
    return written


_Spec = tuple[str, DType, tuple[int, ...], int]  # a tensor of a safetensors file: key, dtype, shape, bytes


def _rank_files(
    name: str, specs: Sequence[_Spec], max_shard_size: int, like: Sequence[int] | None
) -> list[tuple[str, list[str] | bytes]]:
    """(file, its tensors' keys or, for the index, its bytes) of one .distcp file's tensors (`name`, `specs` in
    the file's order): its <stem>.safetensors, or shards of at most `max_shard_size` tensor bytes and their index,
    named as state.py names optimizer.pt's (`like`: as an earlier encoding split them, into files of those
    sizes)."""
    by_key = {spec[0]: spec for spec in specs}
    if like is not None:
        groups = groups_like(list(by_key), lambda g: _file_size([by_key[k] for k in g]), like)
    else:
        groups = group_shards([(spec[0], spec[3]) for spec in specs], max_shard_size)
    names = state_files(name, groups)
    files: list[tuple[str, list[str] | bytes]] = [(n, list(g)) for n, g in zip(names, groups, strict=False)]
    if len(groups) > 1:
        weight_map = shard_weight_map(groups, name.removesuffix(".distcp"))
        files.append((names[-1], index_document(weight_map, sum(spec[3] for spec in specs))))
    return files


def _chunk_specs(meta: DcpMetadata) -> dict[str, list[_Spec]]:
    """Each .distcp file's tensors as its safetensors form holds them, (key, dtype, shape, bytes) in the order
    of the file, from the metadata alone (encode_dcp checks each chunk is what this says)."""
    out: dict[str, list[_Spec]] = {}
    for entry in meta.entries:
        if entry.offset is not None:
            dtype = _TORCH_DTYPES[meta.tensors[entry.fqn]["dtype"]]
            shape = tuple(meta.chunk_sizes[(entry.fqn, entry.offset)])
            out.setdefault(entry.file, []).append((entry.key, dtype, shape, math.prod(shape) * dtype.itemsize))
    return out


def encoded_dcp_sizes(folder: Path, shown: str, max_shard_size: int = DEFAULT_MAX_SHARD_SIZE) -> dict[str, int]:
    """The tensors files encode_dcp writes for the DCP `folder` (names without the folder; not dcp.json, whose
    values are read from the .distcp files) and their sizes, exactly, from the metadata alone: what a dry run
    shows."""
    meta = read_metadata(folder / DCP_METADATA, f"{shown}/{DCP_METADATA}")
    specs = _chunk_specs(meta)
    sizes = {}
    for name in dcp_files(folder):
        found = {spec[0]: spec for spec in specs.get(name, [])}
        for file, content in _rank_files(name, list(found.values()), max_shard_size, None):
            sizes[file] = len(content) if isinstance(content, bytes) else _file_size([found[k] for k in content])
    return sizes


def encode_dcp(
    folder: Path,
    shown: str,
    out_dir: Path,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    like: Mapping[str, Sequence[int]] | None = None,
) -> list[str]:
    """Write dcp.json and, for each .distcp file of the DCP `folder`, its tensors into `out_dir`: <stem>.safetensors,
    or shards of at most `max_shard_size` tensor bytes and their index (`like`: .distcp name -> the sizes of the
    files an earlier encoding split its tensors into). The names written."""
    meta = read_metadata(folder / DCP_METADATA, f"{shown}/{DCP_METADATA}")
    files: dict[str, list[dict[str, Any]]] = {name: [] for name in dcp_files(folder)}
    tensors: dict[str, list[_Tensor]] = {name: [] for name in files}
    budget = [MAX_NODES]
    for entry in meta.entries:
        if entry.file not in files:
            raise _bad(f"{shown}/{DCP_METADATA}", f"it names {entry.file}, which the folder lacks")
        record: dict[str, Any] = {"fqn": entry.fqn, "index": entry.index}
        found = _read_entry(folder, shown, meta, entry, out_dir, budget)
        if isinstance(found, _Tensor):
            tensors[entry.file].append(found)
            record["offset"] = list(entry.offset or ())
            record["tensor"] = entry.key
        else:
            record["value"] = found
        files[entry.file].append(record)
    document = {
        "format": FORMAT,
        "version": 1,
        "tensors": meta.tensors,
        "values": list(meta.values),
        "planner_data": meta.planner_data,
        "storage_meta": meta.storage_meta,
        "dcp_version": meta.version,
        "files": files,
    }
    written = []
    for name, found in tensors.items():
        by_key = {t.key: t for t in found}
        if len(by_key) != len(found):
            raise _bad(f"{shown}/{name}", "two tensors of one name")
        like_sizes = like.get(name) if like is not None else None
        if like is not None and like_sizes is None:
            raise ValueError(f"{name} has no files to be encoded like")
        for file, content in _rank_files(name, [_spec(t) for t in found], max_shard_size, like_sizes):
            if isinstance(content, bytes):
                write_file_atomic(out_dir / file, content)
            else:
                _write_safetensors([by_key[k] for k in content], out_dir / file, f"{shown}/{name}")
            written.append(file)
    write_file_atomic(out_dir / DCP_DOCUMENT, (json.dumps(document, indent=1) + "\n").encode())
    return [DCP_DOCUMENT, *written]


def _spec(t: _Tensor) -> _Spec:
    return t.key, t.dtype, t.shape, t.nbytes


def _header(specs: Sequence[_Spec]) -> bytes:
    """The safetensors header _write_safetensors writes for tensors (key, dtype, shape, bytes), sorted by key."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, dtype, shape, nbytes in sorted(specs, key=lambda t: t[0]):
        header[key] = {"dtype": dtype.name, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return encoded + b" " * (-len(encoded) % 8)


def _file_size(specs: Sequence[_Spec]) -> int:
    return 8 + len(_header(specs)) + sum(s[3] for s in specs)


def _write_safetensors(tensors: list[_Tensor], target: Path, shown: str) -> None:
    ordered = sorted(tensors, key=lambda t: t.key)
    if any(t.key == "__metadata__" for t in ordered):
        raise _bad(shown, "a tensor named __metadata__, the name safetensors keeps for its own header")
    encoded = _header([_spec(t) for t in ordered])
    fd, tmp = temp_file(target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(struct.pack("<Q", len(encoded)) + encoded)
            for source, start, count in (p for t in ordered for p in t.pieces):
                _copy(source, start, count, out, shown)
            out.flush()
            os.fsync(out.fileno())
        from safetensors import safe_open

        with safe_open(str(tmp), framework="numpy") as check:  # the library itself accepts what was written
            if sorted(check.keys()) != [t.key for t in ordered]:
                raise _bad(shown, "its safetensors form does not hold every tensor")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# --- rebuilding ----------------------------------------------------------------------------------------------


# The files a .distcp file's tensors are pushed in: __<rank>_0.safetensors, or its shards and their index.
_TENSORS_FILE_RE = re.compile(
    r"^(__[0-9]{1,6}_[0-9]{1,6})(?:\.safetensors|-[0-9]{5}-of-[0-9]{5}\.safetensors|\.safetensors\.index\.json)\Z"
)


def rebuild_dcp(document_path: Path) -> list[Path]:
    """Write `.metadata` and every .distcp file of a DCP folder back from its dcp.json and safetensors files, with
    torch (DamagedStateError when the document is not what push wrote). Only the names this module allows are
    written, into the document's own folder."""
    folder = document_path.parent
    shown = f"{folder.name}/{document_path.name}"
    try:
        document = loads_json(document_path.read_bytes())
    except ValueError as exc:
        raise DamagedStateError(shown, str(exc)) from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT or document.get("version") != 1:
        raise DamagedStateError(shown, f"it is not a {FORMAT} document")
    files = document.get("files")
    if isinstance(files, dict) and all(isinstance(n, str) and DISTCP_RE.match(n) for n in files):  # else refused below
        named = {n.removesuffix(".distcp") for n in files}
        for path in sorted(folder.iterdir()):  # a rank's tensors the document does not name would be dropped unread
            if (m := _TENSORS_FILE_RE.match(path.name)) and m[1] not in named:
                raise DamagedStateError(f"{folder.name}/{path.name}", f"{document_path.name} names no {m[1]}.distcp")
    with needs_extra("writing FSDP's torch.distributed.checkpoint state back from its pickle-free form"):
        import torch
        from torch.distributed.checkpoint import metadata as dm

    written = []
    try:
        specs, values, files = document["tensors"], document["values"], document["files"]
        formats = {
            "contiguous_format": torch.contiguous_format,
            "channels_last": torch.channels_last,
            "preserve_format": torch.preserve_format,
        }
        state_dict_metadata: dict[str, Any] = {}
        described: set[tuple[str, tuple[int, ...], tuple[int, ...], Any]] = set()  # (fqn, offsets, sizes, dtype)
        for fqn, spec in specs.items():
            if spec["dtype"] not in _TORCH_DTYPES or not isinstance(fqn, str):
                raise ValueError(f"a dtype hubsync does not rebuild: {str(spec['dtype'])[:40]!r}")
            props = dm.TensorProperties(
                dtype=getattr(torch, spec["dtype"]),
                layout=torch.strided,
                requires_grad=bool(spec["requires_grad"]),
                memory_format=formats[spec["memory_format"]],
                pin_memory=bool(spec["pin_memory"]),
            )
            chunks = [
                dm.ChunkStorageMetadata(
                    offsets=torch.Size(_int_list(c["offsets"])), sizes=torch.Size(_int_list(c["sizes"]))
                )
                for c in spec["chunks"]
            ]
            size = torch.Size(_int_list(spec["size"]))
            # DCP allocates the whole tensor on load: its chunks must make exactly that much, no more, no less
            if sum(math.prod(c.sizes) for c in chunks) != math.prod(size) or math.prod(size) >= 2**62:
                raise ValueError(f"the chunks of {fqn[:80]!r} do not make the whole tensor of its size")
            state_dict_metadata[fqn] = dm.TensorStorageMetadata(props, size, chunks)
            described |= {(fqn, tuple(c.offsets), tuple(c.sizes), props.dtype) for c in chunks}
        for fqn in values:
            if not isinstance(fqn, str) or fqn in state_dict_metadata:
                raise ValueError("a malformed value entry")
            state_dict_metadata[fqn] = dm.BytesStorageMetadata()
        storage_data: dict[Any, Any] = {}
        for name, records in files.items():
            if not isinstance(name, str) or not DISTCP_RE.match(name) or not isinstance(records, list):
                raise ValueError(f"it names the file {str(name)[:80]!r}")
            stem = name.removesuffix(".distcp")  # the file alone, or its shards as its index names them
            if not (folder / f"{stem}.safetensors").is_file() and not (folder / index_name(stem)).is_file():
                raise ValueError(f"it names {name}, whose tensors ({stem}.safetensors) the revision does not hold")
            try:
                tensors = load_state_tensors(folder / f"{stem}.safetensors", folder / index_name(stem))
            except DamagedStateError as exc:  # named as the revision lists it
                raise DamagedStateError(f"{folder.name}/{exc.path}", exc.reason) from exc
            target = folder / name
            fd, tmp = temp_file(folder)
            try:
                with os.fdopen(fd, "wb") as buffer:  # streamed: each tensor from the page cache, as torch.save reads it
                    _write_distcp(buffer, name, records, tensors, state_dict_metadata, described, storage_data)
                    buffer.flush()
                    os.fsync(buffer.fileno())
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            written.append(target)
        stored = {(key.fqn, None if key.offset is None else tuple(key.offset)) for key in storage_data}
        unstored = [fqn for fqn, offsets, _, _ in described if (fqn, offsets) not in stored]
        unstored += [fqn for fqn in values if (fqn, None) not in stored]
        if unstored:
            raise ValueError(f"no file holds {sorted(unstored)[0][:80]!r}, which it describes")
        meta = document["storage_meta"]
        storage_meta = (
            dm.StorageMeta(save_id=meta["save_id"], modules=[str(m) for m in meta["modules"]]) if meta else None
        )
        version = document["dcp_version"]
        planner = document["planner_data"]
        metadata = dm.Metadata(
            state_dict_metadata=state_dict_metadata,
            planner_data={str(k): tuple(v) for k, v in planner.items()} if planner is not None else None,
            storage_data=storage_data,
            storage_meta=storage_meta,
            version=str(version) if version is not None else None,
        )
    except OSError as exc:  # its text names the file by its absolute path: only the name is shown
        _remove(written)
        which = f" ({Path(exc.filename).name})" if exc.filename else ""
        raise DamagedStateError(shown, f"{type(exc).__name__}: {exc.strerror or 'cannot be read'}{which}") from exc
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError, RecursionError) as exc:
        _remove(written)
        raise DamagedStateError(shown, f"{type(exc).__name__}: {exc}"[:200]) from exc
    except Exception as exc:  # safetensors' SafetensorError, torch's errors on shapes
        _remove(written)
        if type(exc).__name__ != "SafetensorError":
            raise
        raise DamagedStateError(shown, f"{type(exc).__name__}: {exc}"[:200]) from exc
    target = folder / DCP_METADATA
    write_file_atomic(target, pickle.dumps(metadata))  # what FileSystemWriter writes: writing a pickle, not reading
    try:  # held to the rules a pushed .metadata is read by: chunks inside their tensors, every chunk stored
        read_metadata(target, f"{folder.name}/{DCP_METADATA}")
    except HubsyncError as exc:
        _remove([target, *written])
        raise DamagedStateError(shown, f"the metadata it describes is inconsistent: {exc}"[:300]) from exc
    return [target, *written]


def _remove(paths: list[Path]) -> None:
    """Nothing half-rebuilt is left beside a document that turned out damaged."""
    for path in paths:
        path.unlink(missing_ok=True)


def _write_distcp(
    out: Any,
    name: str,
    records: Any,
    tensors: dict[str, Any],
    entries: dict[str, Any],
    chunks: set[tuple[str, tuple[int, ...], tuple[int, ...], Any]],
    storage_data: dict[Any, Any],
) -> None:
    """Write one .distcp file's entries (each a torch.save of its own) to `out`, noting where each lies: only
    entries the metadata names (`entries`), each tensor a chunk it describes (`chunks`: fqn, offsets, sizes,
    dtype)."""
    with needs_extra("writing FSDP's torch.distributed.checkpoint state back from its pickle-free form"):
        import torch
        from torch.distributed.checkpoint import metadata as dm
        from torch.distributed.checkpoint.filesystem import _StorageInfo

    for record in records:
        fqn, index = record["fqn"], record["index"]
        if not isinstance(fqn, str) or fqn not in entries or not (index is None or type(index) is int):
            raise ValueError("an entry of no described name")
        start = out.tell()
        if "tensor" in record:
            offset = torch.Size(_int_list(record["offset"]))
            tensor = tensors[record["tensor"]]
            if (fqn, tuple(offset), tuple(tensor.shape), tensor.dtype) not in chunks:
                raise ValueError(f"the tensor of {fqn[:80]!r} is not the dtype, offset and shape described")
            torch.save(tensor, out)
        else:
            offset = None
            torch.save(decode_tree(record["value"], {}), out)
        storage_data[dm.MetadataIndex(fqn, offset, index)] = _StorageInfo(name, start, out.tell() - start)


def _int_list(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(type(v) is int and 0 <= v < _INT64 for v in value):
        raise ValueError("a size that is not a list of integers")
    return value
