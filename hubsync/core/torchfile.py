"""A torch.save() file's zip structure checked as torch reads it, and an unpickler that bounds what a pickle builds.

Both serve every reader of pickles in hubsync (the weights and training-state reader of hubsync.convert, and the
plain-data reader of training_args.bin). Neither imports torch or runs anything from the file.

The zip rule: one way to read the archive, the same for zipfile, for torch (miniz) and for hubsync. Each name once;
every entry's local header says what the central directory says (name, method, flags, CRC and sizes, or a data
descriptor that does); entries lie one after another, none inside another or inside the central directory; no
bytes before the first entry or after the end record; no encryption; only stored and deflated entries.

The pickle rule: a pickle of a few hundred bytes can stand for an object graph of any size (memo references share
one object under many names) and can make Python hash a tuple of 2^63 leaves (a dictionary key). The unpickler
here is the standard library's own Python implementation with limits: opcodes, containers built, integer sizes,
the size of every key it hashes, and BUILD only on the objects that accept it.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, ClassVar

from .escape import one_line, safe_text


class ArchiveError(ValueError):
    """The zip archive is not one that every reader reads the same way."""


@dataclass(frozen=True)
class Entry:
    name: str
    method: int
    data_offset: int  # where the entry's (compressed) bytes start in the file
    compressed_size: int
    size: int
    crc: int


_LOCAL = struct.Struct("<IHHHHHIIIHH")
_DESCRIPTOR_SIG = b"PK\x07\x08"
_EOCD_SIG = b"PK\x05\x06"
_EOCD64_LOCATOR_SIG = b"PK\x06\x07"
_EOCD64_SIG = b"PK\x06\x06"
_MAX32 = 0xFFFFFFFF
# The general purpose flags every reader takes alike: deflate's level hints (1, 2), a data descriptor (3), UTF-8
# names (11; torch writes 3 and 11). miniz refuses encryption (0, 6), patched data (5) and masked headers (13);
# zipfile reads 13 and ignores the reserved bits, whose meaning is unknown: all refused.
_FLAGS_READ_ALIKE = 0x0002 | 0x0004 | 0x0008 | 0x0800


def _shown(name: str) -> str:
    """An entry's name for a message: quoted, cut short, one line, nothing a terminal acts on."""
    return safe_text(repr(name[:80]))


def open_archive(fp: BinaryIO) -> zipfile.ZipFile:
    """zipfile's reading of `fp`, or ArchiveError: zipfile raises more than BadZipFile on hostile bytes (a
    "version needed to extract" past 6.3 is NotImplementedError, a cut field struct.error or EOFError)."""
    try:
        return zipfile.ZipFile(fp)
    except (zipfile.BadZipFile, NotImplementedError, EOFError, struct.error, OverflowError, ValueError) as exc:
        raise ArchiveError(f"zipfile cannot read it ({one_line(str(exc)[:120])})") from exc


def _zip64_values(extra: bytes, wanted: list[bool]) -> list[int]:
    """The zip64 extra field's 8-byte values, in order, for each field the fixed header marks 0xFFFFFFFF."""
    at = 0
    while at + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, at)
        if tag == 1:
            body, values = extra[at + 4 : at + 4 + size], []
            for i in range(sum(wanted)):
                if 8 * i + 8 > len(body):
                    raise ArchiveError("a zip64 extra field is cut short")
                values.append(struct.unpack_from("<Q", body, 8 * i)[0])
            return values
        at += 4 + size
    if any(wanted):
        raise ArchiveError("an entry's sizes are marked zip64 without a zip64 field")
    return []


def _central_directory_start(fp: BinaryIO, length: int) -> tuple[int, int, int]:
    """Where the central directory starts and how many entries the end records count, from an end record that
    closes the file (no comment, no trailing bytes: torch writes none, and other readers look for the record
    elsewhere), on one disk (miniz refuses any other)."""
    if length < 22:
        raise ArchiveError("the file is too short for a zip archive")
    fp.seek(length - 22)
    eocd = fp.read(22)
    if eocd[:4] != _EOCD_SIG:
        raise ArchiveError("the file does not end with a zip end record (trailing bytes, or a comment)")
    _sig, disk, cd_disk, on_disk, count, cd_size, cd_offset, comment = struct.unpack("<IHHHHIIH", eocd)
    if disk or cd_disk or on_disk != count:  # miniz (torch's reader) refuses these as multi-disk archives
        raise ArchiveError("a multi-disk archive")
    if comment:
        raise ArchiveError("an archive comment")
    end_records = length - 22
    locator = b""
    if length >= 22 + 20 + 56:  # torch writes zip64 end records whatever the size
        fp.seek(length - 22 - 20)
        locator = fp.read(20)
    if locator[:4] == _EOCD64_LOCATOR_SIG:
        record_disk, record_at, disks = struct.unpack_from("<IQI", locator, 4)
        if record_disk or disks != 1:
            raise ArchiveError("a multi-disk archive")
        if record_at != length - 22 - 20 - 56:
            raise ArchiveError("bytes between the zip64 end record and its locator")
        fp.seek(record_at)
        record = fp.read(56)
        if record[:4] != _EOCD64_SIG or struct.unpack_from("<Q", record, 4)[0] != 44:  # its size: miniz checks it
            raise ArchiveError("a damaged zip64 end record")
        disk64, cd_disk64, on_disk64, count64, cd_size, cd_offset = struct.unpack_from("<IIQQQQ", record, 16)
        if disk64 or cd_disk64 or on_disk64 != count64:
            raise ArchiveError("a multi-disk archive")
        count = count64
        end_records = record_at
    elif _MAX32 in (cd_size, cd_offset) or count == 0xFFFF:
        raise ArchiveError("a zip64 end record is missing")
    if cd_offset + cd_size != end_records:
        raise ArchiveError("bytes before the archive, or between its central directory and its end record")
    return cd_offset, cd_size, count


def check_archive(fp: BinaryIO, archive: zipfile.ZipFile) -> dict[str, Entry]:
    """Every entry of `archive` (opened on the same file as `fp`) by name, once the archive obeys the zip rule of
    this module's docstring; ArchiveError naming the first way it does not."""
    fp.seek(0, 2)
    length = fp.tell()
    cd_start, cd_size, count = _central_directory_start(fp, length)
    if archive.start_dir != cd_start:
        raise ArchiveError("bytes before the archive: readers would disagree on where its entries start")
    if count != len(archive.infolist()):  # readers that trust the count and readers that walk the directory differ
        raise ArchiveError(f"its end record counts {count} entries, its central directory holds another number")
    entries: dict[str, Entry] = {}
    spans: list[tuple[int, int, str]] = []
    fp.seek(cd_start)
    directory, at = fp.read(cd_size), 0
    for info in archive.infolist():
        name = info.filename
        # zipfile cuts a record whose lengths run past the directory's end short; miniz refuses it
        lengths = struct.unpack_from("<HHH", directory, at + 28) if at + 46 <= len(directory) else None
        if lengths != (len(info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")),
                       len(info.extra), len(info.comment)):  # fmt: skip
            raise ArchiveError(f"the central record of {_shown(name)} runs past the central directory")
        at += 46 + sum(lengths)
        if name in entries:
            raise ArchiveError(f"it holds {_shown(name)} twice (readers would disagree on which one counts)")
        if info.volume:  # the disk its local header is on: miniz refuses any but this one
            raise ArchiveError(f"{_shown(name)} lies on another disk (a multi-disk archive)")
        if info.external_attr & 0x10 or name.endswith("/"):  # miniz reads no data for a folder: torch reads the heap
            raise ArchiveError(f"{_shown(name)} is marked as a folder")
        if info.flag_bits & 0x41:
            raise ArchiveError(f"{_shown(name)} is encrypted")
        if info.flag_bits & ~_FLAGS_READ_ALIKE:
            raise ArchiveError(
                f"{_shown(name)} has zip flags {info.flag_bits:#06x}: patched, masked or reserved, which torch and"
                " zipfile read differently"
            )
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ArchiveError(f"{_shown(name)} is compressed with method {info.compress_type}, not stored or deflated")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise ArchiveError(f"{_shown(name)} is stored with two different sizes")
        fp.seek(info.header_offset)
        header = fp.read(_LOCAL.size)
        if len(header) != _LOCAL.size or header[:4] != b"PK\x03\x04":
            raise ArchiveError(f"{_shown(name)} has no local header where the central directory says")
        _sig, needed, flags, method, _t, _d, crc, csize, usize, name_len, extra_len = _LOCAL.unpack(header)
        raw_name = fp.read(name_len)
        extra = fp.read(extra_len)
        if raw_name != info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437"):
            raise ArchiveError(f"the local header of {_shown(name)} names another file")
        if (
            flags != info.flag_bits
            or method != info.compress_type
            or needed != info.extract_version | info.reserved << 8
        ):
            raise ArchiveError(f"the local header of {_shown(name)} disagrees with the central directory")
        data_offset = info.header_offset + _LOCAL.size + name_len + extra_len
        zip64 = _MAX32 in (csize, usize)
        if zip64:
            values = iter(_zip64_values(extra, [usize == _MAX32, csize == _MAX32]))
            usize = next(values) if usize == _MAX32 else usize
            csize = next(values) if csize == _MAX32 else csize
        end = data_offset + info.compress_size
        if flags & 0x08:  # a data descriptor after the data holds the CRC and sizes (torch writes these)
            if (crc, csize, usize) != (0, 0, 0) and (crc, csize, usize) != (
                info.CRC,
                info.compress_size,
                info.file_size,
            ):
                raise ArchiveError(f"the local header of {_shown(name)} disagrees with the central directory")
            fp.seek(end)
            wide = zip64 or info.compress_size >= _MAX32 or info.file_size >= _MAX32
            descriptor = fp.read(24 if wide else 16)
            if descriptor[:4] != _DESCRIPTOR_SIG:  # the signature is optional in the format; torch always writes it
                raise ArchiveError(f"{_shown(name)} has no data descriptor after its data")
            if len(descriptor) != (24 if wide else 16) or struct.unpack("<IQQ" if wide else "<III", descriptor[4:]) != (
                info.CRC,
                info.compress_size,
                info.file_size,
            ):
                raise ArchiveError(f"the data descriptor of {_shown(name)} disagrees with the central directory")
            end += len(descriptor)
        elif (crc, csize, usize) != (info.CRC, info.compress_size, info.file_size):
            raise ArchiveError(f"the local header of {_shown(name)} disagrees with the central directory")
        entries[name] = Entry(name, info.compress_type, data_offset, info.compress_size, info.file_size, info.CRC)
        spans.append((info.header_offset, end, name))
    if at != len(directory):
        raise ArchiveError("bytes in the central directory that no entry's record holds")
    spans.sort()
    last_end, last_name = 0, ""
    for start, end, name in spans:
        if start < last_end:
            raise ArchiveError(f"the entries {_shown(last_name)} and {_shown(name)} overlap")
        last_end, last_name = end, name
    if spans and spans[0][0] != 0:
        raise ArchiveError("bytes before the first entry")
    if last_end > cd_start:
        raise ArchiveError(f"the entry {_shown(last_name)} overlaps the central directory")
    return entries


def read_entry(archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """An entry's bytes, at most `limit` of them, decompressed and CRC-checked (zipfile stops at the size the
    central directory declares, so a small deflated entry cannot grow past it); ArchiveError otherwise."""
    import zlib

    info = archive.getinfo(name)
    if info.file_size > limit:
        raise ArchiveError(f"{_shown(name)} is {info.file_size:,} bytes, more than the {limit:,} allowed")
    try:
        with archive.open(info) as f:
            data = f.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as exc:
        raise ArchiveError(f"{_shown(name)} cannot be read ({one_line(str(exc)[:120])})") from exc
    if len(data) != info.file_size:
        raise ArchiveError(f"{_shown(name)} is not as long as the archive says")
    return data


# What torch.save() writes besides data.pkl and the storages data/<key>, and what each may hold. torch reads them
# unchecked (no CRC: miniz is built without it) and refuses some: a version outside 1..10 (inline_container.cc), a
# .storage_alignment int() cannot parse, a byteorder that is neither. Hubsync reads each whole, CRC checked, and
# takes only what torch.save writes: no entry whose meaning differs between readers, or that only one reads.
_RECORDS: dict[str, re.Pattern[bytes]] = {
    "version": re.compile(rb"(?:[1-9]|10)\n?"),  # torch writes "3\n"
    ".data/version": re.compile(rb"(?:[1-9]|10)\n?"),
    ".format_version": re.compile(rb"[0-9]{1,4}"),  # "1"
    ".storage_alignment": re.compile(rb"[1-9][0-9]{0,7}"),  # "64"
    "byteorder": re.compile(rb"little|big"),
    ".data/serialization_id": re.compile(rb"[0-9]{1,64}"),  # forty digits
}
_STORAGE_NAME = re.compile(r"data/[0-9]{1,19}")  # torch.save names its storages 0, 1, 2, ...
MAX_RECORD_BYTES = 256


def torch_records(archive: zipfile.ZipFile, entries: dict[str, Entry], pickle_name: str = "data.pkl") -> str:
    """The folder (`archive/`) of a torch.save() archive checked by check_archive, once every entry is one that
    torch.save writes and each small record holds what torch reads and accepts; ArchiveError otherwise."""
    pkl = [n for n in entries if n.endswith("/" + pickle_name) and n.count("/") == 1]
    if len(pkl) != 1:
        raise ArchiveError(f"no {pickle_name} in a folder of its own: not written by torch.save()")
    prefix = pkl[0][: -len(pickle_name)]
    for name in entries:
        inner = name[len(prefix) :] if name.startswith(prefix) else None
        if inner is None:  # torch reads the folder of the first entry
            raise ArchiveError(f"its entries lie in more than one folder ({_shown(name)})")
        if inner == pickle_name or _STORAGE_NAME.fullmatch(inner):
            continue
        pattern = _RECORDS.get(inner)
        if pattern is None:
            raise ArchiveError(f"it holds {_shown(name)}, which torch.save() never writes")
        if not pattern.fullmatch(read_entry(archive, name, MAX_RECORD_BYTES)):
            raise ArchiveError(f"its record {_shown(name)} holds what torch does not accept or write")
    if prefix + "version" not in entries and prefix + ".data/version" not in entries:
        raise ArchiveError("it has no version record (torch refuses it)")
    return prefix


# -- the bounded unpickler ----------------------------------------------------------------------------------------


class PickleLimitError(pickle.UnpicklingError):
    """The pickle asks for more than any checkpoint file needs: too many opcodes or objects, a huge key."""


@dataclass(frozen=True)
class PickleLimits:
    opcodes: int
    containers: int  # lists, dicts, tuples, sets and objects built
    int_bytes: int = 512  # LONG1/LONG4 payload; a longer integer has more digits than str() writes out
    key_nodes: int = 1024  # a tuple used as a key (hashed) unfolds into at most this many items
    line_bytes: int = 4096  # protocol-0 text arguments (INT, LONG, FLOAT, GLOBAL names)


_O = pickle  # opcode names: pickle.MARK, ...
_CONTAINER_OPS = frozenset(
    op[0]
    for op in (
        _O.EMPTY_DICT, _O.EMPTY_LIST, _O.EMPTY_TUPLE, _O.EMPTY_SET, _O.TUPLE, _O.TUPLE1, _O.TUPLE2, _O.TUPLE3,
        _O.DICT, _O.LIST, _O.FROZENSET, _O.REDUCE, _O.NEWOBJ, _O.NEWOBJ_EX, _O.INST, _O.OBJ, _O.BINPERSID,
        _O.PERSID,
    )
)  # fmt: skip
_PY_DISPATCH: dict[int, Callable[[Any], None]] = pickle._Unpickler.dispatch


class BoundedUnpickler(pickle._Unpickler):
    """The standard library's Python unpickler, within `limits`; `refused` opcodes are refused outright.

    BUILD (set an object's state) is allowed only on objects whose class defines `__setstate__` and on an
    OrderedDict given attribute names (a state dict's `_metadata`): anything else would rewrite the reader's own
    records after it checked them."""

    limits: ClassVar[PickleLimits] = PickleLimits(opcodes=8_000_000, containers=1_000_000)
    refused: ClassVar[frozenset[int]] = frozenset()

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self._opcodes = 0
        self._containers = 0
        self._key_budget = self.limits.key_nodes * 64  # all keys together: hashing stays linear in the file

    def load(self) -> Any:
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)  # type: ignore[attr-defined]
        self.read = self._unframer.read
        self.readinto = self._unframer.readinto
        self.readline = self._bounded_readline
        self.metastack: list[Any] = []
        self.stack: list[Any] = []
        self.append = self.stack.append
        self.proto = 0
        read, dispatch, limits = self.read, self.dispatch, self.limits
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError
                op = key[0]
                self._opcodes += 1
                if self._opcodes > limits.opcodes:
                    raise PickleLimitError(f"more than {limits.opcodes:,} pickle opcodes")
                if op in self.refused:
                    raise pickle.UnpicklingError(f"the opcode {key!r} is not allowed here")
                if op in _CONTAINER_OPS:
                    self._containers += 1
                    if self._containers > limits.containers:
                        raise PickleLimitError(f"more than {limits.containers:,} objects")
                dispatch[op](self)
        except pickle._Stop as stop:  # type: ignore[attr-defined]
            return stop.value

    def _bounded_readline(self) -> bytes:
        line: bytes = self._unframer.readline()
        if len(line) > self.limits.line_bytes:
            raise PickleLimitError("a text argument longer than any pickle of a checkpoint holds")
        return line

    def _check_key(self, key: Any) -> None:
        """Hashing (and comparing) a key costs its unfolded size: a tuple sharing itself could take for ever."""
        if isinstance(key, int) and not isinstance(key, bool) and key.bit_length() > 8 * self.limits.int_bytes:
            raise PickleLimitError("an integer key too large to hash")
        if not isinstance(key, tuple):
            return
        stack, seen = [key], 0
        while stack:
            item = stack.pop()
            seen += 1
            self._key_budget -= 1
            if seen > self.limits.key_nodes or self._key_budget < 0:
                raise PickleLimitError("a key too large to hash (a tuple sharing its parts)")
            if isinstance(item, tuple):
                stack.extend(item)

    def _check_keys(self, keys: Any) -> None:
        for k in keys:
            self._check_key(k)

    def load_setitem(self) -> None:
        self._check_key(self.stack[-2])
        _PY_DISPATCH[pickle.SETITEM[0]](self)

    def load_setitems(self) -> None:
        self._check_keys(self.stack[::2])
        _PY_DISPATCH[pickle.SETITEMS[0]](self)

    def load_dict(self) -> None:
        self._check_keys(self.stack[::2])
        _PY_DISPATCH[pickle.DICT[0]](self)

    def load_additems(self) -> None:
        self._check_keys(self.stack)
        _PY_DISPATCH[pickle.ADDITEMS[0]](self)

    def load_frozenset(self) -> None:
        self._check_keys(self.stack)
        _PY_DISPATCH[pickle.FROZENSET[0]](self)

    def load_long4(self) -> None:
        (n,) = struct.unpack("<i", self.read(4))
        if n < 0 or n > self.limits.int_bytes:
            raise PickleLimitError(f"an integer of {n:,} bytes")
        self.append(pickle.decode_long(self.read(n)))

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        setstate = getattr(type(inst), "__setstate__", None)
        if setstate is not None and setstate is not getattr(object, "__setstate__", None):
            _PY_DISPATCH[pickle.BUILD[0]](self)
        elif type(inst) is OrderedDict and isinstance(state, dict) and all(type(k) is str for k in state):
            self.stack.pop()
            inst.__dict__.update(state)
        else:
            raise pickle.UnpicklingError(f"the pickle sets the state of a {type(inst).__name__}, which has none")

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = {
        **_PY_DISPATCH,
        pickle.SETITEM[0]: load_setitem,
        pickle.SETITEMS[0]: load_setitems,
        pickle.DICT[0]: load_dict,
        pickle.ADDITEMS[0]: load_additems,
        pickle.FROZENSET[0]: load_frozenset,
        pickle.LONG4[0]: load_long4,
        pickle.BUILD[0]: load_build,
    }


# --- what the restricted readers share (torchzip, dcp_metadata) ----------------------------------------


@dataclass(frozen=True)
class DType:
    name: str  # safetensors' name
    itemsize: int


TORCH_DTYPES = {
    "float64": DType("F64", 8),
    "float32": DType("F32", 4),
    "float16": DType("F16", 2),
    "bfloat16": DType("BF16", 2),
    "int64": DType("I64", 8),
    "int32": DType("I32", 4),
    "int16": DType("I16", 2),
    "int8": DType("I8", 1),
    "uint8": DType("U8", 1),
    "bool": DType("BOOL", 1),
    "uint16": DType("U16", 2),
    "uint32": DType("U32", 4),
    "uint64": DType("U64", 8),
    "float8_e4m3fn": DType("F8_E4M3", 1),
    "float8_e5m2": DType("F8_E5M2", 1),
}


# What torch.save() never writes: instances made by calling a class (INST, OBJ, NEWOBJ), the copyreg extension
# registry, text persistent ids.
NEVER_WRITTEN = frozenset(
    op[0]
    for op in (
        pickle.INST, pickle.OBJ, pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.EXT1, pickle.EXT2, pickle.EXT4, pickle.PERSID,
    )
)  # fmt: skip


# What reading a malformed pickle raises in the restricted readers (besides their own refusals).
MALFORMED_PICKLE_ERRORS: tuple[type[BaseException], ...] = (
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
)
