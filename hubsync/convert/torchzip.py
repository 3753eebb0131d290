"""Read what a torch.save() zip archive holds without running it: tensor names, dtypes, shapes and byte ranges.

The archive's pickle is read by an unpickler that imports nothing. The few globals a state dict needs
(the tensor-rebuild functions, storage types, dtypes, OrderedDict) are answered with inert stand-ins that
only record metadata; any other global refuses the file. Tensor bytes are never read here: torch stores
each storage uncompressed as its own zip member, so a tensor is a byte range of the file.
"""

from __future__ import annotations

import contextvars
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from hubsync.core.errors import HubsyncError, UnreadableWeightsError, UnrepresentableStateError, UnsafePickleError
from hubsync.core.escape import one_line
from hubsync.core.torchfile import (
    MALFORMED_PICKLE_ERRORS,
    ArchiveError,
    BoundedUnpickler,
    DType,
    PickleLimitError,
    check_archive,
    open_archive,
    read_entry,
    torch_records,
)
from hubsync.core.torchfile import NEVER_WRITTEN as _NEVER_WRITTEN
from hubsync.core.torchfile import TORCH_DTYPES as _TORCH_DTYPES

from .objects import ALLOWED_OBJECTS, ObjectKind, PickledObject, PickledSet, tensor_attributes_ok

MAX_PICKLE_BYTES = 64 * 1024 * 1024  # a state dict's data.pkl holds only names and tensor records: KBs to a few MBs
MAX_BYTEORDER_BYTES = 16  # "little" or "big"
_INT64 = 1 << 63


# Legacy typed storages name their dtype; UntypedStorage tensors carry it as a torch dtype (_rebuild_tensor_v3).
_STORAGE_DTYPES = {
    "DoubleStorage": DType("F64", 8),
    "FloatStorage": DType("F32", 4),
    "HalfStorage": DType("F16", 2),
    "BFloat16Storage": DType("BF16", 2),
    "LongStorage": DType("I64", 8),
    "IntStorage": DType("I32", 4),
    "ShortStorage": DType("I16", 2),
    "CharStorage": DType("I8", 1),
    "ByteStorage": DType("U8", 1),
    "BoolStorage": DType("BOOL", 1),
}


_OTHER_TORCH_DTYPES = frozenset(
    {
        "complex32",
        "complex64",
        "complex128",
        "cfloat",
        "cdouble",
        "chalf",
        "qint8",
        "quint8",
        "qint32",
        "quint4x2",
        "quint2x4",
        "float8_e4m3fnuz",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
        "float4_e2m1fn_x2",
        "bits8",
        "bits16",
        "bits1x8",
        "bits2x4",
        "bits4x2",
        "uint1",
        "uint2",
        "uint3",
        "uint4",
        "uint5",
        "uint6",
        "uint7",
        "int1",
        "int2",
        "int3",
        "int4",
        "int5",
        "int6",
        "int7",
    }
)


@dataclass(frozen=True)
class StorageRef:
    key: str  # the zip member data/<key>
    dtype: DType | None  # None for UntypedStorage: the tensor names the dtype
    numel: int  # elements of a typed storage; bytes of an untyped one


@dataclass(frozen=True)
class TensorRef:
    storage: StorageRef
    dtype: DType
    offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    # The Python attributes the tensor was pickled with (objects.tensor_attributes_ok): they belong to this
    # reference, not to the tensor's data, so two references of one view are one tensor however they differ here.
    attributes: tuple[tuple[str, Any], ...] = field(default=(), compare=False)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def is_contiguous(self) -> bool:
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def view_key(self) -> tuple[Any, ...]:
        """Two names with the same view key are the same tensor (a tied weight)."""
        return (self.storage.key, self.dtype.name, self.offset, self.shape, self.stride)


@dataclass(frozen=True)
class StorageRecord:
    file_offset: int  # where the storage's bytes start in the archive file
    size: int  # bytes


@dataclass(frozen=True)
class TorchArchive:
    path: Path
    tensors: dict[str, TensorRef]  # in the file's order
    storages: dict[str, StorageRecord]
    root: Any = None  # with state=True: the whole tree, tensors as TensorRef, numpy arrays as NumpyArray


class _Inert:
    """A stand-in that a pickle cannot change: its BUILD opcode would otherwise set attributes on an object that
    every later read in the process shares."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("the pickle tries to change one of the reader's own objects")


class _Stub(_Inert):
    """An inert stand-in for an allowed global."""

    __slots__ = ("build", "name")

    def __init__(self, name: str, build: Callable[..., Any]) -> None:
        self.name = name
        self.build = build

    def __call__(self, *args: Any) -> Any:
        return self.build(*args)


class _DTypeStub(_Inert):
    __slots__ = ("dtype",)

    def __init__(self, dtype: DType) -> None:
        self.dtype = dtype


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise pickle.UnpicklingError(f"{what} is not a tuple of integers")
    return value


def _rebuild_v2(storage: Any, offset: Any, shape: Any, stride: Any, *rest: Any) -> TensorRef:
    if not isinstance(storage, StorageRef) or storage.dtype is None or type(offset) is not int:
        raise pickle.UnpicklingError("unexpected arguments to _rebuild_tensor_v2")
    return TensorRef(storage, storage.dtype, offset, _ints(shape, "size"), _ints(stride, "stride"))


def _rebuild_v3(
    storage: Any, offset: Any, shape: Any, stride: Any, _grad: Any, _hooks: Any, dtype: Any, *rest: Any
) -> TensorRef:
    if not isinstance(storage, StorageRef) or not isinstance(dtype, _DTypeStub) or type(offset) is not int:
        raise pickle.UnpicklingError("unexpected arguments to _rebuild_tensor_v3")
    return TensorRef(storage, dtype.dtype, offset, _ints(shape, "size"), _ints(stride, "stride"))


def _rebuild_parameter(data: Any, *rest: Any) -> TensorRef:
    if not isinstance(data, TensorRef):
        raise pickle.UnpicklingError("a parameter without a tensor")
    return data


class _TensorType(_Inert):
    """torch.Tensor, only as the type that _rebuild_from_type_v2 names; a pickle cannot call it."""

    __slots__ = ()


_TENSOR_TYPE = _TensorType()
_FROM_TYPE = "torch._tensor._rebuild_from_type_v2"


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> TensorRef:
    """A tensor pickled with Python attributes: torch.save writes _rebuild_from_type_v2(_rebuild_tensor_v2,
    torch.Tensor, (storage, ...), {'ds_id': '2_20'}) for one (DeepSpeed ZeRO-3's flat fp32 groups). Only that
    shape is read, the attributes kept in the reference; another rebuild function, a subclass of Tensor, or an
    attribute holding anything but plain values is refused by name, as the function always was."""
    if func is not _REBUILD_TENSOR_V2:
        raise UnsafePickleError(_reading.get(), f"{_FROM_TYPE} of something other than _rebuild_tensor_v2")
    if new_type is not _TENSOR_TYPE:
        raise UnsafePickleError(_reading.get(), f"{_FROM_TYPE} of a type other than torch.Tensor")
    if not tensor_attributes_ok(state):
        raise UnsafePickleError(_reading.get(), f"{_FROM_TYPE} with attributes other than plain values")
    if not isinstance(args, tuple):
        raise pickle.UnpicklingError(f"unexpected arguments to {_FROM_TYPE}")
    return replace(_rebuild_v2(*args), attributes=tuple(state.items()))


def _ordered_dict(*args: Any) -> OrderedDict[Any, Any]:
    if args:
        raise pickle.UnpicklingError("OrderedDict with arguments")
    return OrderedDict()


_REBUILD_TENSOR_V2 = _Stub("_rebuild_tensor_v2", _rebuild_v2)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): _Stub("OrderedDict", _ordered_dict),
        ("torch._utils", "_rebuild_tensor_v2"): _REBUILD_TENSOR_V2,
        ("torch._utils", "_rebuild_tensor_v3"): _Stub("_rebuild_tensor_v3", _rebuild_v3),
        ("torch._utils", "_rebuild_parameter"): _Stub("_rebuild_parameter", _rebuild_parameter),
        ("torch.storage", "UntypedStorage"): "UntypedStorage",
    }
    for name in _STORAGE_DTYPES:
        allowed[("torch", name)] = name
    for name, dtype in _TORCH_DTYPES.items():
        allowed[("torch", name)] = _DTypeStub(dtype)
    return allowed


_ALLOWED = _allowed_globals()


# The opcodes torch.load(weights_only=True) reads (torch/_weights_only_unpickler.py), NEWOBJ aside: a weights
# file with any other (POP, LONG4, SHORT_BINBYTES, FRAME, STACK_GLOBAL, ...) is one torch refuses.
_TORCH_READS = frozenset(
    op[0]
    for op in (
        pickle.GLOBAL, pickle.REDUCE, pickle.BUILD, pickle.APPEND, pickle.APPENDS, pickle.SETITEM, pickle.SETITEMS,
        pickle.MARK, pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.NONE, pickle.NEWFALSE,
        pickle.NEWTRUE, pickle.EMPTY_TUPLE, pickle.EMPTY_LIST, pickle.EMPTY_DICT, pickle.EMPTY_SET, pickle.BININT,
        pickle.BININT1, pickle.BININT2, pickle.BINFLOAT, pickle.BINUNICODE, pickle.SHORT_BINSTRING,
        pickle.BINPERSID, pickle.BINGET, pickle.LONG_BINGET, pickle.BINPUT, pickle.LONG_BINPUT, pickle.LONG1,
        pickle.PROTO, pickle.STOP,
    )
)  # fmt: skip


class _SafeUnpickler(BoundedUnpickler):
    refused: ClassVar[frozenset[int]] = frozenset(range(256)) - _TORCH_READS

    def __init__(self, data: bytes, shown: str) -> None:
        super().__init__(data)
        self.shown = shown
        self._records: dict[str, tuple[Any, int]] = {}  # storage key -> its type and size, as first recorded

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            if module == "torch" and (name.endswith("Storage") or name in _OTHER_TORCH_DTYPES):
                # A real tensor type, just not one safetensors stores (complex, quantized, float8_e8m0fnu, ...).
                raise UnreadableWeightsError(
                    self.shown, f"it holds torch.{one_line(name)[:80]} tensors, which safetensors cannot store"
                ) from None
            raise UnsafePickleError(self.shown, one_line(f"{module}.{name}")[:200]) from None

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if storage_type == "UntypedStorage":
            dtype = None
        elif isinstance(storage_type, str) and storage_type in _STORAGE_DTYPES:
            dtype = _STORAGE_DTYPES[storage_type]
        else:
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r:.80}")
        if not isinstance(key, str) or type(numel) is not int or not 0 <= numel < _INT64:
            raise pickle.UnpicklingError("malformed storage reference")
        # torch keeps the first record of a key and reads every later one as it (torch.save refuses to write
        # one storage as two types): a key recorded twice otherwise would read as two things
        if self._records.setdefault(key, (storage_type, numel)) != (storage_type, numel):
            raise pickle.UnpicklingError(f"the storage {key[:40]!r} is recorded with two types or sizes")
        return StorageRef(key, dtype, numel)


@dataclass
class NumpyArray:
    """A numpy array as its pickle gives it (dtype string such as '<u4', shape, raw bytes); nothing imported."""

    dtype: str = ""
    shape: tuple[int, ...] = ()
    data: bytes = b""

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _NumpyDtype)):
            raise pickle.UnpicklingError("unexpected numpy array state")
        _version, shape, dtype, fortran, data = state
        if fortran or not isinstance(data, bytes):
            raise pickle.UnpicklingError("unsupported numpy array layout")
        self.dtype, self.shape, self.data = dtype.descr, _ints(shape, "shape"), data


_reading: contextvars.ContextVar[str] = contextvars.ContextVar("reading", default="training state")


class _NumpyDtype:
    def __init__(self, name: Any = None, *_: Any) -> None:
        if not isinstance(name, str) or not re.fullmatch(r"[biuf][1248]", name):
            raise UnrepresentableStateError(_reading.get(), f"numpy array of dtype {name!r:.40}")
        self.name, self.order = name, "<"

    @property
    def descr(self) -> str:
        return f"{self.order}{self.name}"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = "<" if state[1] in ("|", "=") else state[1]


def _numpy_reconstruct(cls: Any, shape: Any, code: Any) -> NumpyArray:
    if cls != "numpy.ndarray":
        raise pickle.UnpicklingError("unexpected numpy reconstruction")
    return NumpyArray()


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """How protocol-2 pickles spell bytes: _codecs.encode(str, 'latin1'). Nothing else is allowed."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("unexpected _codecs.encode call")
    return text.encode("latin1")


class _ObjectClass(_Inert):
    """An inert stand-in for a class of objects.ALLOWED_OBJECTS: called (REDUCE), it checks the arguments and
    gives a record of them; one made empty and given attributes is built by NEWOBJ and BUILD instead."""

    __slots__ = ("kind",)

    def __init__(self, kind: ObjectKind) -> None:
        self.kind = kind

    def __call__(self, *args: Any) -> PickledObject:
        self.kind.check_args(args)
        return PickledObject(self.kind, args)


def _object_globals() -> dict[tuple[str, str], Any]:
    found: dict[tuple[str, str], Any] = {(k.module, k.name): _ObjectClass(k) for k in ALLOWED_OBJECTS.values()}
    for module in ("builtins", "__builtin__"):  # protocol 2 pickles spell builtins as __builtin__
        found[(module, "set")] = _Stub("set", PickledSet)
    return found


class _StateUnpickler(_SafeUnpickler):
    """The weights reader, plus the few plain types of training state: numpy arrays, dtypes, bytes, sets, the
    objects of objects.ALLOWED_OBJECTS as records, and tensors with plain Python attributes (_rebuild_from_type_v2)
    (torch reads training state with weights_only=False: every opcode that builds plain data is allowed, and NEWOBJ
    only for an allowed class, with no arguments)."""

    refused: ClassVar[frozenset[int]] = _NEVER_WRITTEN - {pickle.NEWOBJ[0]}

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not isinstance(cls, _ObjectClass) or cls.kind.args is not None or args != ():
            raise pickle.UnpicklingError("NEWOBJ of something other than an allowed object")
        self.append(PickledObject(cls.kind))

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = {
        **_SafeUnpickler.dispatch,
        pickle.NEWOBJ[0]: load_newobj,
    }

    def load(self) -> Any:
        token = _reading.set(self.shown)
        try:
            return super().load()
        finally:
            _reading.reset(token)

    _EXTRA: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy._core.multiarray", "_reconstruct"): _Stub("_reconstruct", _numpy_reconstruct),
        ("numpy.core.multiarray", "_reconstruct"): _Stub("_reconstruct", _numpy_reconstruct),
        ("numpy", "ndarray"): "numpy.ndarray",
        ("numpy", "dtype"): _Stub("dtype", _NumpyDtype),
        ("_codecs", "encode"): _Stub("encode", _latin1),
        ("torch._tensor", "_rebuild_from_type_v2"): _Stub("_rebuild_from_type_v2", _rebuild_from_type_v2),
        ("torch", "Tensor"): _TENSOR_TYPE,
        **_object_globals(),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._EXTRA:
            return self._EXTRA[(module, name)]
        return super().find_class(module, name)


def read_torch_archive(path: Path, shown: str, *, state: bool = False) -> TorchArchive:
    """Inventory a torch.save() zip archive holding a flat {name: tensor} dict. Runs nothing from the file.

    With `state`, the archive may hold any tree of containers, scalars, tensors and numpy arrays (optimizer,
    scheduler and RNG state): its tensors are named t0, t1, ... and the tree is kept in `root`.

    The archive must be one that torch reads the same way (hubsync.core.torchfile's zip rule), and its pickle
    stays within that module's limits; else UnreadableWeightsError."""
    try:
        if path.stat().st_size == 0:
            raise UnreadableWeightsError(shown, "the file is empty")
        if not zipfile.is_zipfile(path):
            raise UnreadableWeightsError(
                shown, "not a torch.save() zip archive (truncated, or the legacy format of torch < 1.6)"
            )
        with path.open("rb") as raw, open_archive(raw) as archive:
            entries = check_archive(raw, archive)
            prefix = torch_records(archive, entries)
            byteorder = "little"
            if prefix + "byteorder" in entries:
                byteorder = read_entry(archive, prefix + "byteorder", MAX_BYTEORDER_BYTES).decode()
            if byteorder != "little":
                raise UnreadableWeightsError(shown, f"{byteorder[:16]!r}-endian tensors are not supported")
            data = read_entry(archive, prefix + "data.pkl", MAX_PICKLE_BYTES)
            try:
                unpickler = _StateUnpickler if state else _SafeUnpickler
                obj = unpickler(data, shown).load()
            except UnsafePickleError:
                raise
            except PickleLimitError as exc:
                raise UnreadableWeightsError(shown, f"its pickle asks for too much ({exc})") from exc
            except MALFORMED_PICKLE_ERRORS as exc:
                raise UnreadableWeightsError(shown, f"malformed pickle ({one_line(str(exc)[:200])})") from exc
            tensors = _tensors_in(obj) if state else _state_dict_of(obj, shown)
            storages: dict[str, StorageRecord] = {}
            for tensor in tensors.values():
                key = tensor.storage.key
                if key in storages:
                    continue
                member = f"{prefix}data/{key}"
                entry = entries.get(member)
                if entry is None:
                    raise UnreadableWeightsError(shown, f"the archive lacks the storage {member[:80]!r}")
                if entry.method != zipfile.ZIP_STORED:
                    raise UnreadableWeightsError(shown, f"the storage {member[:80]!r} is compressed")
                itemsize = tensor.storage.dtype.itemsize if tensor.storage.dtype is not None else 1
                if entry.size != tensor.storage.numel * itemsize:
                    raise UnreadableWeightsError(
                        shown, f"the storage {member[:80]!r} is not the size its record says (truncated?)"
                    )
                storages[key] = StorageRecord(entry.data_offset, entry.size)
    except HubsyncError:
        raise
    except ArchiveError as exc:
        raise UnreadableWeightsError(shown, f"its zip archive is ambiguous or damaged: {exc}") from exc
    except (OSError, zipfile.BadZipFile, ValueError, NotImplementedError, EOFError, struct.error, OverflowError) as exc:
        raise UnreadableWeightsError(shown, one_line(str(exc)[:200]) or type(exc).__name__) from exc
    _check_bounds(tensors, storages, shown)
    return TorchArchive(path, tensors, storages, obj if state else None)


def _tensors_in(obj: Any) -> dict[str, TensorRef]:
    """Every distinct tensor of a tree, named t0, t1, ... in the order met."""
    found: dict[TensorRef, str] = {}
    seen: set[int] = set()  # containers walked already: a pickle may share one list under many names
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, TensorRef):
            found.setdefault(item, f"t{len(found)}")
        elif isinstance(item, (dict, list, tuple)) and id(item) not in seen:
            seen.add(id(item))
            # a dict's keys too: a pickle may key a dict by a tensor
            stack.extend(reversed([c for kv in item.items() for c in kv]) if isinstance(item, dict) else reversed(item))
    return {name: ref for ref, name in found.items()}


def _state_dict_of(obj: Any, shown: str) -> dict[str, TensorRef]:
    if not isinstance(obj, dict):
        raise UnreadableWeightsError(shown, f"it holds a {type(obj).__name__}, not a state dict of tensors")
    out: dict[str, TensorRef] = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, TensorRef):
            raise UnreadableWeightsError(
                shown, f"entry {name!r:.60} is a {type(value).__name__}, not a tensor: not a state dict"
            )
        out[name] = value
    return out


def _check_bounds(tensors: dict[str, TensorRef], storages: dict[str, StorageRecord], shown: str) -> None:
    """Each tensor reads only its storage's bytes, and writes no more elements than its storage holds: a stride of
    0 (or strides that overlap) would make a few bytes stand for terabytes of output."""
    for name, t in tensors.items():
        if any(not 0 <= v < _INT64 for v in (*t.shape, *t.stride, t.offset)):
            raise UnreadableWeightsError(
                shown, f"tensor {name} has a negative size, stride or offset, or one past 64 bits"
            )
        if t.numel == 0:
            continue
        size = storages[t.storage.key].size
        last = t.offset + sum((d - 1) * s for d, s in zip(t.shape, t.stride, strict=True))
        if (last + 1) * t.dtype.itemsize > size:
            raise UnreadableWeightsError(shown, f"tensor {name} reaches past the end of its storage (truncated?)")
        if t.nbytes > size:
            raise UnreadableWeightsError(
                shown, f"tensor {name} has more elements than its storage holds (a stride of 0, or overlapping strides)"
            )
