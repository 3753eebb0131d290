"""FSDP's torch.distributed.checkpoint (DCP) folders without pickles: read safely, pushed as JSON + safetensors.

A DCP folder (pytorch_model_fsdp_0/, optimizer_0/) holds `.metadata`, a plain pickle of DCP's Metadata (what each
entry is, and where its bytes lie: storage_data maps MetadataIndex -> _StorageInfo(file, offset, length)), and one
`__<rank>_0.distcp` a rank: the entries' torch.save() archives laid end to end, a tensor each for tensor entries, any
picklable value for the others (BytesStorageMetadata: the optimizer's param_groups).

`.metadata` is read by an unpickler that answers only the classes of METADATA_CLASSES (and torch.Size, the dtypes
of torchzip, torch.strided, DCP's memory-format enum) with inert records; anything else refuses the file. Each
entry of a .distcp is read by torchzip's restricted reader. The pickle-free form, beside them:

- `dcp.json` (DCP_DOCUMENT): the metadata (dtypes, sizes, chunks, planner data) and, for each .distcp file, its
  entries in order: a tensor (by its name in that file's safetensors) or a value (state.py's JSON tree). No byte
  offsets: they are those of the rebuilt files, which pull writes.
- `__<rank>_0.safetensors`: the tensors of `__<rank>_0.distcp`, one a (fqn, chunk offsets): `<fqn>@<offsets>`.

Pull writes each .distcp back with torch.save() an entry, then `.metadata` with the new offsets (pickle.dump, as
DCP's FileSystemWriter does), constructing only DCP's own classes from the table. The bytes differ from the original
files (torch.save writes a fresh serialization id), what DCP loads from them does not.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from hubsync.core.checkpoint import DCP_DOCUMENT, DCP_METADATA, loads_json
from hubsync.core.errors import DamagedStateError, HubsyncError, UnreadableWeightsError, UnrepresentableStateError
from hubsync.core.escape import one_line
from hubsync.core.torchfile import BoundedUnpickler, PickleLimitError, PickleLimits
from hubsync.extras import needs_extra
from hubsync.files import temp_file, write_file_atomic

from .state import MAX_NODES, _mapped_tensors, decode_tree
from .torchzip import _NEVER_WRITTEN, _TORCH_DTYPES, DType, TensorRef, read_torch_archive

FORMAT = "hubsync-dcp"
MAX_METADATA_BYTES = 256 * 1024 * 1024  # a few hundred bytes an entry: millions of entries
DISTCP_RE = re.compile(r"^__([0-9]{1,6})_([0-9]{1,6})\.distcp\Z")
_MODULE = "torch.distributed.checkpoint.metadata"
# (module, name) -> the record kind. The classes of DCP's Metadata as torch 2.4-2.13 pickles them.
METADATA_CLASSES: dict[tuple[str, str], str] = {
    (_MODULE, "Metadata"): "Metadata",
    (_MODULE, "TensorStorageMetadata"): "TensorStorageMetadata",
    (_MODULE, "TensorProperties"): "TensorProperties",
    (_MODULE, "ChunkStorageMetadata"): "ChunkStorageMetadata",
    (_MODULE, "BytesStorageMetadata"): "BytesStorageMetadata",
    (_MODULE, "MetadataIndex"): "MetadataIndex",
    (_MODULE, "StorageMeta"): "StorageMeta",
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): "_StorageInfo",
}
_FIELDS = {
    "Metadata": {"state_dict_metadata", "planner_data", "storage_data", "storage_meta", "version"},
    "TensorStorageMetadata": {"properties", "size", "chunks"},
    "ChunkStorageMetadata": {"offsets", "sizes"},
    "BytesStorageMetadata": set(),
    "MetadataIndex": {"fqn", "offset", "index"},
    "StorageMeta": {"checkpoint_id", "save_id", "load_id", "modules"},
    "_StorageInfo": {"relative_path", "offset", "length", "transform_descriptors"},
}
MEMORY_FORMATS = ("contiguous_format", "channels_last", "preserve_format")  # DCP's _MEM_FORMAT_ENCODING 0, 1, 2
_INT64 = 1 << 63


class _Record:
    """An allowed DCP object as its pickle describes it: made empty (NEWOBJ), given attributes once (BUILD)."""

    __slots__ = ("fields", "kind")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.fields: dict[str, Any] | tuple[Any, ...] | None = None

    def __setstate__(self, state: Any) -> None:
        if self.fields is not None:
            raise pickle.UnpicklingError(f"the state of {self.kind} is set twice")
        if self.kind == "TensorProperties":
            if not (isinstance(state, tuple) and len(state) == 5):
                raise pickle.UnpicklingError("unexpected state of TensorProperties")
            self.fields = state
            return
        if isinstance(state, tuple) and len(state) == 2 and state[0] is None:  # (dict, slots) of a slots class
            state = state[1]
        if (
            not isinstance(state, dict)
            or not all(type(k) is str for k in state)
            or not set(state) <= _FIELDS[self.kind]
        ):
            raise pickle.UnpicklingError(f"unexpected state of {self.kind}")
        self.fields = dict(state)

    def get(self, name: str) -> Any:
        return self.fields.get(name) if isinstance(self.fields, dict) else None


class _RecordClass:
    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("the pickle tries to change one of the reader's own objects")


@dataclass(frozen=True)
class _Const:
    """torch.float32, torch.strided, a memory format: a name from a fixed set."""

    what: str
    name: str

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("the pickle tries to change one of the reader's own objects")


class _Call:
    __slots__ = ("build",)

    def __init__(self, build: Callable[..., Any]) -> None:
        self.build = build

    def __call__(self, *args: Any) -> Any:
        return self.build(*args)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("the pickle tries to change one of the reader's own objects")


@dataclass(frozen=True)
class _Size:
    dims: tuple[int, ...]


def _size(*args: Any) -> _Size:
    if (
        len(args) != 1
        or not isinstance(args[0], tuple)
        or len(args[0]) > 64
        or not all(type(v) is int and 0 <= v < _INT64 for v in args[0])
    ):
        raise pickle.UnpicklingError("unexpected arguments to torch.Size")
    return _Size(args[0])


def _layout(*args: Any) -> _Const:
    if args != ("torch.strided",):
        raise pickle.UnpicklingError(f"a tensor layout other than torch.strided: {str(args)[:60]}")
    return _Const("layout", "strided")


def _memory_format(*args: Any) -> _Const:
    if len(args) != 1 or type(args[0]) is not int or not 0 <= args[0] < len(MEMORY_FORMATS):
        raise pickle.UnpicklingError("unexpected memory format")
    return _Const("memory_format", MEMORY_FORMATS[args[0]])


def _path(*parts: Any) -> _Const:
    """StorageMeta.checkpoint_id: the folder it was saved to on the training machine, never kept (it names it)."""
    if not all(isinstance(p, str) for p in parts):
        raise pickle.UnpicklingError("unexpected arguments to a path")
    return _Const("path", "")


def _allowed() -> dict[tuple[str, str], Any]:
    found: dict[tuple[str, str], Any] = {key: _RecordClass(kind) for key, kind in METADATA_CLASSES.items()}
    found[("torch", "Size")] = _Call(_size)
    found[("torch.serialization", "_get_layout")] = _Call(_layout)
    found[(_MODULE, "_MEM_FORMAT_ENCODING")] = _Call(_memory_format)
    for module in ("pathlib", "pathlib._local"):
        for name in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"):
            found[(module, name)] = _Call(_path)
    for name in _TORCH_DTYPES:
        found[("torch", name)] = _Const("dtype", name)
    return found


_ALLOWED = _allowed()


class _MetadataUnpickler(BoundedUnpickler):
    limits: ClassVar[PickleLimits] = PickleLimits(opcodes=50_000_000, containers=10_000_000)
    refused: ClassVar[frozenset[int]] = (_NEVER_WRITTEN - {pickle.NEWOBJ[0]}) | {pickle.BINPERSID[0]}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it names {one_line(f'{module}.{name}')[:120]}") from None

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not isinstance(cls, _RecordClass) or args != ():
            raise pickle.UnpicklingError("NEWOBJ of something other than a DCP metadata class")
        self.append(_Record(cls.kind))

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if not isinstance(func, _Call) or not isinstance(args, tuple):
            raise pickle.UnpicklingError("a call of something other than torch.Size, a layout or a memory format")
        self.stack[-1] = func(*args)

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = {
        **BoundedUnpickler.dispatch,
        pickle.NEWOBJ[0]: load_newobj,
        pickle.REDUCE[0]: load_reduce,
    }


# --- reading -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One entry of a .distcp file: a tensor chunk (`offset` its chunk offsets) or a value (offset None)."""

    fqn: str
    offset: tuple[int, ...] | None
    index: int | None
    file: str
    start: int  # where its torch.save() archive lies in the file
    length: int

    @property
    def key(self) -> str:
        """Its tensor's name in the file's safetensors."""
        return f"{self.fqn}@{','.join(map(str, self.offset or ()))}"


@dataclass(frozen=True)
class DcpMetadata:
    tensors: dict[
        str, dict[str, Any]
    ]  # fqn -> {"dtype", "requires_grad", "pin_memory", "memory_format", "size", "chunks"}
    values: tuple[str, ...]  # fqns of BytesStorageMetadata entries
    planner_data: dict[str, list[Any]] | None
    storage_meta: dict[str, Any] | None
    version: str | None
    entries: tuple[Entry, ...]  # by file, then by position in it


def _bad(shown: str, reason: str) -> UnreadableWeightsError:
    return UnreadableWeightsError(shown, reason)


def _ints(value: Any, what: str, shown: str) -> list[int]:
    if not isinstance(value, _Size):
        raise _bad(shown, f"{what} is not a torch.Size")
    return list(value.dims)


def read_metadata(path: Path, shown: str) -> DcpMetadata:
    """Read a DCP `.metadata` pickle without running it: UnreadableWeightsError when it holds anything but DCP's
    metadata classes and plain data, or is truncated or inconsistent."""
    try:
        size = path.stat().st_size
        if size > MAX_METADATA_BYTES:
            raise _bad(shown, f"larger than {MAX_METADATA_BYTES >> 20} MiB")
        data = path.read_bytes()
    except OSError as exc:
        raise _bad(shown, one_line(exc.strerror or type(exc).__name__)) from exc
    try:
        root = _MetadataUnpickler(data).load()
    except PickleLimitError as exc:
        raise _bad(shown, f"its pickle asks for too much ({exc})") from exc
    except HubsyncError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        RecursionError,
        ArithmeticError,
        struct.error,
        MemoryError,
    ) as exc:
        raise _bad(shown, f"not a DCP metadata file ({one_line(str(exc))[:200]})") from exc
    return _check_metadata(root, shown)


def _check_metadata(root: Any, shown: str) -> DcpMetadata:
    if not isinstance(root, _Record) or root.kind != "Metadata" or not isinstance(root.fields, dict):
        raise _bad(shown, "it does not hold a DCP Metadata")
    sdm = root.get("state_dict_metadata")
    if not isinstance(sdm, dict):
        raise _bad(shown, "its state_dict_metadata is not a dict")
    tensors: dict[str, dict[str, Any]] = {}
    values: list[str] = []
    for fqn, item in sdm.items():
        if not isinstance(fqn, str) or not isinstance(item, _Record):
            raise _bad(shown, "an entry that is not a string and a storage record")
        if item.kind == "BytesStorageMetadata":
            values.append(fqn)
            continue
        if item.kind != "TensorStorageMetadata":
            raise _bad(shown, f"the entry {fqn[:80]!r} is a {item.kind}")
        props = item.get("properties")
        if not isinstance(props, _Record) or props.kind != "TensorProperties" or not isinstance(props.fields, tuple):
            raise _bad(shown, f"the entry {fqn[:80]!r} has no tensor properties")
        dtype, layout, requires_grad, memory_format, pin_memory = props.fields
        if not (isinstance(dtype, _Const) and dtype.what == "dtype"):
            raise _bad(shown, f"the entry {fqn[:80]!r} has a dtype hubsync does not know")
        if layout != _Const("layout", "strided") or not (
            isinstance(memory_format, _Const) and memory_format.what == "memory_format"
        ):
            raise _bad(shown, f"the entry {fqn[:80]!r} has an unexpected layout or memory format")
        if type(requires_grad) is not bool or type(pin_memory) is not bool:
            raise _bad(shown, f"the entry {fqn[:80]!r} has unexpected tensor properties")
        chunks = item.get("chunks")
        if not isinstance(chunks, list) or not all(
            isinstance(c, _Record) and c.kind == "ChunkStorageMetadata" for c in chunks
        ):
            raise _bad(shown, f"the entry {fqn[:80]!r} has no list of chunks")
        shape = _ints(item.get("size"), "a size", shown)
        tensors[fqn] = {
            "dtype": dtype.name,
            "requires_grad": requires_grad,
            "pin_memory": pin_memory,
            "memory_format": memory_format.name,
            "size": shape,
            "chunks": [
                {
                    "offsets": _ints(c.get("offsets"), "a chunk offset", shown),
                    "sizes": _ints(c.get("sizes"), "a chunk size", shown),
                }
                for c in chunks
            ],
        }
        for chunk in tensors[fqn]["chunks"]:
            if (
                len(chunk["offsets"]) != len(shape)
                or len(chunk["sizes"]) != len(shape)
                or any(o + s > d for o, s, d in zip(chunk["offsets"], chunk["sizes"], shape, strict=True))
            ):
                raise _bad(shown, f"a chunk of {fqn[:80]!r} lies outside its tensor")
    planner = root.get("planner_data")
    if planner is not None:
        if not isinstance(planner, dict) or not all(
            isinstance(k, str)
            and isinstance(v, tuple)
            and len(v) <= 1000
            and all(type(p) is str or (type(p) is int and 0 <= p < _INT64) for p in v)
            for k, v in planner.items()
        ):
            raise _bad(shown, "its planner data is not a map of names to paths")
        planner = {k: list(v) for k, v in planner.items()}
    meta = root.get("storage_meta")
    storage_meta = None
    if meta is not None:
        if not isinstance(meta, _Record) or meta.kind != "StorageMeta":
            raise _bad(shown, "its storage_meta is not a StorageMeta")
        save_id, modules = meta.get("save_id"), meta.get("modules")
        if save_id is not None and not isinstance(save_id, str):
            raise _bad(shown, "its save id is not a string")
        if modules is None:
            modules = []
        if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
            raise _bad(shown, "its modules are not a list of names")
        storage_meta = {"save_id": save_id, "modules": modules}
    version = root.get("version")
    if version is not None and not isinstance(version, str):
        raise _bad(shown, "its version is not a string")
    storage = root.get("storage_data")
    if not isinstance(storage, dict):
        raise _bad(shown, "its storage_data is not a dict")
    entries = []
    seen: set[tuple[str, tuple[int, ...] | None]] = set()
    for index, info in storage.items():
        if not isinstance(index, _Record) or index.kind != "MetadataIndex":
            raise _bad(shown, "a storage key that is not a MetadataIndex")
        if not isinstance(info, _Record) or info.kind != "_StorageInfo":
            raise _bad(shown, "a storage record that is not a _StorageInfo")
        fqn, offset, position = index.get("fqn"), index.get("offset"), index.get("index")
        if not isinstance(fqn, str) or (position is not None and (type(position) is not int or position < 0)):
            raise _bad(shown, "a malformed storage key")
        offsets = tuple(_ints(offset, "a storage offset", shown)) if offset is not None else None
        if fqn in tensors:
            if offsets is None or list(offsets) not in [c["offsets"] for c in tensors[fqn]["chunks"]]:
                raise _bad(shown, f"the stored chunk of {fqn[:80]!r} is none of its chunks")
        elif fqn not in values or offsets is not None:
            raise _bad(shown, f"stored bytes of {fqn[:80]!r}, which the metadata does not describe")
        if (fqn, offsets) in seen:
            raise _bad(shown, f"{fqn[:80]!r} is stored twice")
        seen.add((fqn, offsets))
        file, start, length = info.get("relative_path"), info.get("offset"), info.get("length")
        if info.get("transform_descriptors"):
            raise _bad(shown, "its entries are stored transformed (compressed?), which hubsync does not read")
        if not isinstance(file, str) or not DISTCP_RE.match(file):
            raise _bad(shown, f"an entry is stored in {str(file)[:80]!r}, not a __<rank>_0.distcp file beside it")
        if not all(type(v) is int and 0 <= v < _INT64 for v in (start, length)):
            raise _bad(shown, "a malformed storage range")
        entries.append(Entry(fqn, offsets, position, file, start, length))
    entries.sort(key=lambda e: (e.file, e.start))
    return DcpMetadata(tensors, tuple(values), planner, storage_meta, version, tuple(entries))


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
        with os.fdopen(fd, "wb") as out, path.open("rb") as src:
            src.seek(entry.start)
            left = entry.length
            while left:
                chunk = src.read(min(left, 8 << 20))
                if not chunk:
                    raise _bad(where, "the file ends early")
                out.write(chunk)
                left -= len(chunk)
        archive = read_torch_archive(tmp, f"{where} ({entry.fqn[:80]})", state=True)
    finally:
        tmp.unlink(missing_ok=True)
    if entry.offset is None:
        if archive.tensors:
            raise UnrepresentableStateError(where, f"tensor inside the value {entry.fqn[:80]!r}")
        check_tree(archive.root, where)
        return _encode(archive.root, {}, where, left=budget)
    spec = meta.tensors[entry.fqn]
    chunk = next(c for c in spec["chunks"] if c["offsets"] == list(entry.offset))
    ref = archive.root
    if not isinstance(ref, TensorRef):
        raise _bad(where, f"the entry {entry.fqn[:80]!r} does not hold a tensor")
    if ref.dtype != _TORCH_DTYPES[spec["dtype"]] or list(ref.shape) != chunk["sizes"]:
        raise _bad(where, f"the tensor {entry.fqn[:80]!r} is not the dtype and shape its metadata says")
    if not ref.is_contiguous:
        raise UnrepresentableStateError(where, "non-contiguous tensor chunk")
    storage = archive.storages[ref.storage.key]
    start = entry.start + storage.file_offset + ref.offset * ref.dtype.itemsize
    return _Tensor(entry.key, ref.dtype, ref.shape, ((path, start, ref.nbytes),))


def consolidate_dcp(folder: Path, shown: str, target: Path) -> int:
    """Write the whole tensors of a DCP model folder (pytorch_model_fsdp_0/) as one safetensors file, named as
    the model loads them: the state dict's own keys (planner data: ("model", key) -> key), each tensor from its
    chunks, which FSDP splits along the first dimension (Shard(0)); UnrepresentableStateError for another split.
    The number of tensors written."""
    meta = read_metadata(folder / DCP_METADATA, f"{shown}/{DCP_METADATA}")
    pieces: dict[str, dict[tuple[int, ...], _Tensor]] = {}
    for entry in meta.entries:
        if entry.offset is not None:
            found = _read_entry(folder, shown, meta, entry, target.parent)
            pieces.setdefault(entry.fqn, {})[entry.offset] = found
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
                raise UnrepresentableStateError(
                    f"{shown}/{DCP_METADATA}", f"tensor {fqn[:80]!r} split other than by rows"
                )
            rows += c["sizes"][0] if size else 1
        if (size and rows != size[0]) or tuple(tuple(c["offsets"]) for c in chunks) != tuple(
            sorted(pieces.get(fqn, {}))
        ):
            raise _bad(f"{shown}/{DCP_METADATA}", f"the chunks of {fqn[:80]!r} do not make the whole tensor")
        parts = [pieces[fqn][tuple(c["offsets"])] for c in chunks]
        whole.append(_Tensor(name, parts[0].dtype, tuple(size), tuple(p for t in parts for p in t.pieces)))
    if len({t.key for t in whole}) != len(whole):
        raise _bad(f"{shown}/{DCP_METADATA}", "two tensors of one name")
    _write_safetensors(whole, target, shown)
    return len(whole)


def encode_dcp(folder: Path, shown: str, out_dir: Path) -> list[str]:
    """Write dcp.json and one <stem>.safetensors a .distcp of the DCP `folder` into `out_dir`: the names written."""
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
        target = out_dir / (name.removesuffix(".distcp") + ".safetensors")
        _write_safetensors(found, target, f"{shown}/{name}")
        written.append(target.name)
    write_file_atomic(out_dir / DCP_DOCUMENT, (json.dumps(document, indent=1) + "\n").encode())
    return [DCP_DOCUMENT, *written]


def _write_safetensors(tensors: list[_Tensor], target: Path, shown: str) -> None:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    ordered = sorted(tensors, key=lambda t: t.key)
    for t in ordered:
        header[t.key] = {"dtype": t.dtype.name, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    fd, tmp = temp_file(target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(struct.pack("<Q", len(encoded)) + encoded)
            for source, start, count in (p for t in ordered for p in t.pieces):
                with source.open("rb") as src:
                    src.seek(start)
                    left = count
                    while left:
                        chunk = src.read(min(left, 8 << 20))
                        if not chunk:
                            raise _bad(shown, "the file ends early")
                        out.write(chunk)
                        left -= len(chunk)
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
            state_dict_metadata[fqn] = dm.TensorStorageMetadata(props, torch.Size(_int_list(spec["size"])), chunks)
        for fqn in values:
            if not isinstance(fqn, str) or fqn in state_dict_metadata:
                raise ValueError("a malformed value entry")
            state_dict_metadata[fqn] = dm.BytesStorageMetadata()
        storage_data: dict[Any, Any] = {}
        for name, records in files.items():
            if not isinstance(name, str) or not DISTCP_RE.match(name) or not isinstance(records, list):
                raise ValueError(f"it names the file {str(name)[:80]!r}")
            tensors = _mapped_tensors(folder / (name.removesuffix(".distcp") + ".safetensors"))
            target = folder / name
            fd, tmp = temp_file(folder)
            try:
                with os.fdopen(fd, "wb") as buffer:  # streamed: each tensor from the page cache, as torch.save reads it
                    _write_distcp(buffer, name, records, tensors, state_dict_metadata, storage_data)
                    buffer.flush()
                    os.fsync(buffer.fileno())
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            written.append(target)
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
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError, RecursionError, OSError) as exc:
        raise DamagedStateError(shown, f"{type(exc).__name__}: {exc}"[:200]) from exc
    except Exception as exc:  # safetensors' SafetensorError, torch's errors on shapes
        if type(exc).__name__ != "SafetensorError":
            raise
        raise DamagedStateError(shown, f"{type(exc).__name__}: {exc}"[:200]) from exc
    target = folder / DCP_METADATA
    write_file_atomic(target, pickle.dumps(metadata))  # what FileSystemWriter writes: writing a pickle, not reading
    return [target, *written]


def _write_distcp(
    out: Any, name: str, records: Any, tensors: dict[str, Any], described: dict[str, Any], storage_data: dict[Any, Any]
) -> None:
    """Write one .distcp file's entries (each a torch.save of its own) to `out`, noting where each lies."""
    import torch
    from torch.distributed.checkpoint import metadata as dm
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    for record in records:
        fqn, index = record["fqn"], record["index"]
        if not isinstance(fqn, str) or fqn not in described or not (index is None or type(index) is int):
            raise ValueError("an entry of no described name")
        start = out.tell()
        if "tensor" in record:
            offset = torch.Size(_int_list(record["offset"]))
            torch.save(tensors[record["tensor"]], out)
        else:
            offset = None
            torch.save(decode_tree(record["value"], {}), out)
        storage_data[dm.MetadataIndex(fqn, offset, index)] = _StorageInfo(name, start, out.tell() - start)


def _int_list(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(type(v) is int and 0 <= v < _INT64 for v in value):
        raise ValueError("a size that is not a list of integers")
    return value
