"""torch.distributed.checkpoint's `.metadata` read without running it: the restricted reader of DCP's pickle.

A DCP folder (FSDP's pytorch_model_fsdp_0/, optimizer_0/) holds `.metadata`, a plain pickle of DCP's Metadata (what
each entry is, and where its bytes lie: storage_data maps MetadataIndex -> _StorageInfo(file, offset, length)), and
one `__<rank>_0.distcp` a rank. The unpickler here answers only the classes of METADATA_CLASSES (and torch.Size, the
dtypes of TORCH_DTYPES, torch.strided, DCP's memory-format enum) with inert records; anything else refuses the file.
It lives in core, beside torchfile's reader, because reading a checkpoint (which weights an FSDP model folder
consolidates to) needs it; convert/dcp.py encodes and rebuilds the folders with it.
"""

from __future__ import annotations

import itertools
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .errors import HubsyncError, UnreadableWeightsError
from .escape import one_line
from .torchfile import (
    MALFORMED_PICKLE_ERRORS,
    NEVER_WRITTEN,
    TORCH_DTYPES,
    BoundedUnpickler,
    PickleLimitError,
    PickleLimits,
)

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
    for name in TORCH_DTYPES:
        found[("torch", name)] = _Const("dtype", name)
    return found


_ALLOWED = _allowed()


class _MetadataUnpickler(BoundedUnpickler):
    limits: ClassVar[PickleLimits] = PickleLimits(opcodes=50_000_000, containers=10_000_000)
    refused: ClassVar[frozenset[int]] = (NEVER_WRITTEN - {pickle.NEWOBJ[0]}) | {pickle.BINPERSID[0]}

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
    chunk_sizes: dict[tuple[str, tuple[int, ...]], list[int]]  # (fqn, chunk offsets) -> its sizes


def _bad(shown: str, reason: str) -> UnreadableWeightsError:
    return UnreadableWeightsError(shown, reason)


def _ints(value: Any, what: str, shown: str) -> list[int]:
    if not isinstance(value, _Size):
        raise _bad(shown, f"{what} is not a torch.Size")
    return list(value.dims)


_MALFORMED: tuple[type[BaseException], ...] = (*MALFORMED_PICKLE_ERRORS, MemoryError)


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
    except _MALFORMED as exc:
        raise _bad(shown, f"not a DCP metadata file ({one_line(str(exc))[:200]})") from exc
    return _check_metadata(root, shown, len(data))


def _check_metadata(root: Any, shown: str, budget: int) -> DcpMetadata:
    """The metadata `root` as plain data, checked. `budget`: the items (entries, chunks, names of planner paths)
    it may unfold into, the pickle's size in bytes: each costs a pickle at least a byte where nothing is shared,
    and a pickle that shares one list of chunks (or one path) under many names would otherwise unfold into far
    more than it holds."""
    left = [budget]

    def spend(count: int) -> None:
        left[0] -= count
        if left[0] < 0:
            raise _bad(shown, f"it unfolds into more items than its {budget:,} bytes hold (shared lists?)")

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
        spend(1 + (len(chunks) if isinstance(chunks, list) else 0))
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
        if isinstance(planner, dict):
            spend(len(planner) + sum(len(v) for v in planner.values() if isinstance(v, tuple)))
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
        spend(len(modules))
        storage_meta = {"save_id": save_id, "modules": modules}
    version = root.get("version")
    if version is not None and not isinstance(version, str):
        raise _bad(shown, "its version is not a string")
    storage = root.get("storage_data")
    if not isinstance(storage, dict):
        raise _bad(shown, "its storage_data is not a dict")
    spend(len(storage))
    entries = []
    seen: set[tuple[str, tuple[int, ...] | None]] = set()
    chunk_sizes: dict[tuple[str, tuple[int, ...]], list[int]] = {}
    for fqn, spec in tensors.items():
        for c in reversed(spec["chunks"]):  # the first chunk of an offset counts
            chunk_sizes[(fqn, tuple(c["offsets"]))] = c["sizes"]
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
            if offsets is None or (fqn, offsets) not in chunk_sizes:
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
    for before, after in itertools.pairwise(entries):
        # DCP's writer lays a file's entries end to end: bytes read as two entries would be published twice
        if before.file == after.file and after.start < before.start + before.length:
            raise _bad(shown, f"the entries {before.fqn[:80]!r} and {after.fqn[:80]!r} share bytes of {after.file}")
    return DcpMetadata(tensors, tuple(values), planner, storage_meta, version, tuple(entries), chunk_sizes)
