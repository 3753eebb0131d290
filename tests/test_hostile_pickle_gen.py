"""Hostile torch files made by generators (issue 15, items 3, 4 and 9): crafted zip archives and pickles drawn by
hypothesis over the opcodes and globals the restricted reader allows, and the reproductions of the issue.

What holds for every file: nothing from it runs (a marker file never appears), it ends either refused with a
HubsyncError or converted to exactly what `torch.load(weights_only=True)` returns, in bounded time and memory;
never another exception (a traceback on the command line).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from conftest import local_hub
from huggingface_hub import HfApi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsync.cli import cli
from hubsync.convert.state import encode_state, rebuild_state, safe_names
from hubsync.convert.torchzip import read_torch_archive
from hubsync.convert.writer import find_aliases, write_verified
from hubsync.core.errors import HubsyncError
from hubsync.localhub import RunningHub

MARKER = Path(tempfile.mkdtemp(prefix="hubsync-marker-")) / "MARKER"

# -- what each reader makes of a file ---------------------------------------------------------------------------


def torch_reads(path: Path) -> tuple[bool, Any]:
    try:
        return True, torch.load(path, weights_only=True)
    except Exception as exc:  # torch refuses in many ways: RuntimeError, UnpicklingError, ValueError, ...
        return False, exc


def hubsync_converts(path: Path, out: Path) -> dict[str, torch.Tensor]:
    """The tensors hubsync's convert writes for a weights file (each alias under its own name again)."""
    from safetensors.torch import load_file

    archive = read_torch_archive(path, path.name)
    kept, aliases = find_aliases(archive.tensors)
    target = out / "w.safetensors"
    write_verified(archive, kept, {"format": "pt"}, target, path.name)
    tensors = load_file(target)
    target.unlink()
    return {**tensors, **{alias: tensors[name] for alias, name in aliases.items()}}


def hubsync_state(path: Path, out: Path) -> Any:
    """A training-state file pushed in the pickle-free format, then rebuilt as pull does, then loaded."""
    encode_state(path, path.name, out)
    rebuilt = rebuild_state(out / safe_names(path.name)[0])
    try:
        return torch.load(rebuilt, weights_only=False)  # hubsync's own output, made by torch.save
    finally:
        for p in out.iterdir():
            p.unlink()


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and _raw(a) == _raw(b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and (a == b or (a != a and b != b))


def _raw(t: torch.Tensor) -> bytes:
    if t.numel() == 0:  # an empty tensor may keep a stride of 0, which view() refuses
        return b""
    if t.dtype == torch.bool:  # a byte of 2 is True; torch's strided copy writes it as 1, a contiguous one as 2
        t = t != 0
    flat = torch.empty(t.numel(), dtype=t.dtype)  # fresh strides: contiguous() keeps a size-1 dimension's 0
    flat.copy_(t.detach().reshape(-1))
    return bytes(flat.view(torch.uint8).numpy())


def check_file(path: Path, out: Path, *, state: bool) -> str:
    """The property, for one file: 'refused', 'same' (converted as torch reads it) or 'torch refuses'."""
    started = time.monotonic()
    torch_ok, expected = torch_reads(path)
    try:
        got = hubsync_state(path, out) if state else hubsync_converts(path, out)
    except HubsyncError as exc:
        assert "\n" not in str(exc)
        outcome = "refused"
    else:
        if not state:  # a weights file hubsync converts must be one torch reads, to the same tensors
            assert torch_ok, f"hubsync converted a file torch refuses ({expected!r:.200})"
        if torch_ok and not state:
            assert isinstance(expected, dict), expected
            assert same(dict(sorted(expected.items())), dict(sorted(got.items()))), (expected, got)
        elif torch_ok:
            assert same(expected, got), (expected, got)
        outcome = "same" if torch_ok else "torch refuses"
    assert not MARKER.exists()
    assert time.monotonic() - started < 10
    return outcome


def rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


# -- crafted zip archives ---------------------------------------------------------------------------------------


def good_archive() -> bytes:
    buf = io.BytesIO()
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    torch.save({"w": w, "t": w.t(), "b": torch.ones(3, dtype=torch.int64)}, buf)
    return buf.getvalue()


GOOD = good_archive()


def _central_records(data: bytes) -> list[int]:
    """The offsets of each central directory record."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        at = z.start_dir
        count = len(z.infolist())
    out = []
    for _ in range(count):
        out.append(at)
        n, m, k = struct.unpack_from("<HHH", data, at + 28)
        at += 46 + n + m + k
    return out


def _local_records(data: bytes) -> list[int]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [i.header_offset for i in z.infolist()]


# field name -> (offset in the local header, offset in the central record, struct format)
FIELDS = {
    "flags": (6, 8, "<H"),
    "method": (8, 10, "<H"),
    "crc": (14, 16, "<I"),
    "csize": (18, 20, "<I"),
    "usize": (22, 24, "<I"),
    "name0": (30, 46, "<B"),
    "needed": (4, 6, "<H"),  # the version needed to extract: zipfile refuses past 63 (6.3)
    "disk": (None, 34, "<H"),  # the disk the local header is on: miniz refuses any other
}
VALUES = [0, 1, 2, 3, 8, 9, 12, 14, 0x41, 0x808, 0x809, 0x800, 0xFFFF, 0xFFFFFFFF, 16, 24, 40, 0x828, 0x2008, 64]
# torch.save's small records, and what a hostile file may put in them instead
RECORDS = ["version", ".format_version", ".storage_alignment", "byteorder", ".data/serialization_id"]
RECORD_VALUES = [b"", b"x", b"\x004", b"0", b"11", b"3", b"64", b"big", b"\xff\xfe", b"3x", b" 64", b"9" * 20]


def _rewrite(entries: list[tuple[str, bytes]], comment: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        warnings.simplefilter("ignore")  # "Duplicate name": what the test means to write
        for name, body in entries:
            z.writestr(name, body)
        z.comment = comment
    return buf.getvalue()


def _entries(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


@st.composite
def crafted_zips(draw: st.DrawFn) -> tuple[str, bytes]:
    data = bytearray(GOOD)
    kind = draw(
        st.sampled_from(
            [
                "local", "central", "both", "descriptor", "duplicate", "prepend", "append", "comment", "offset",
                "flip", "record", "extra",
            ]
        )
    )  # fmt: skip
    locals_, centrals = _local_records(GOOD), _central_records(GOOD)
    i = draw(st.integers(0, len(locals_) - 1))
    field = draw(st.sampled_from(sorted(FIELDS)))
    local_at, central_at, fmt = FIELDS[field]
    value = draw(st.sampled_from(VALUES)) % (256 if fmt == "<B" else 1 << (8 * struct.calcsize(fmt)))
    if kind in ("local", "both") and local_at is not None:
        struct.pack_into(fmt, data, locals_[i] + local_at, value)
    if kind in ("central", "both"):
        struct.pack_into(fmt, data, centrals[i] + central_at, value)
    if kind == "descriptor":
        entry = zipfile.ZipFile(io.BytesIO(GOOD)).infolist()[i]
        n, m = struct.unpack_from("<HH", GOOD, locals_[i] + 26)
        at = locals_[i] + 30 + n + m + entry.compress_size + 4 + 4 * draw(st.integers(0, 2))
        struct.pack_into("<I", data, at, value)
    if kind == "duplicate":  # the same name twice, other bytes in one of them, before or after
        entries = _entries(GOOD)
        name, body = entries[i]
        other = bytes(reversed(body)) if draw(st.booleans()) else body[: len(body) // 2]
        entries.insert(i + draw(st.integers(0, 1)), (name, other))
        return kind, _rewrite(entries)
    if kind == "record":  # a small record holding something else, its CRC and sizes made to match
        name = "archive/" + draw(st.sampled_from(RECORDS))
        body = draw(st.sampled_from(RECORD_VALUES) | st.binary(max_size=4))
        return f"{kind}:{name}={body!r}", _rewrite([(n, body if n == name else b) for n, b in _entries(GOOD)])
    if kind == "extra":  # an entry torch.save never writes, which torch ignores
        name = draw(st.sampled_from(["archive/extra", "archive/data/x", "archive/.data/other", "archive/data.pkl/"]))
        return kind, _rewrite([*_entries(GOOD), (name, b"1")])
    if kind == "prepend":
        return kind, draw(st.sampled_from([b"\0", b"junk" * 10, GOOD[:30]])) + GOOD
    if kind == "append":
        return kind, GOOD + draw(st.sampled_from([b"\0", b"junk" * 10, GOOD[-22:]]))
    if kind == "comment":
        return kind, _rewrite(_entries(GOOD), comment=b"hello")
    if kind == "offset":  # one central record points at another entry's local header, or inside it
        j = draw(st.integers(0, len(locals_) - 1))
        delta = draw(st.sampled_from([0, 0, 1, 30]))
        struct.pack_into("<I", data, centrals[i] + 42, locals_[j] + (delta or int(i == j)))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
    return f"{kind}:{field}={value}:{i}", bytes(data)


ZIP_OUTCOMES: dict[str, int] = {}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(crafted_zips())
def test_a_crafted_zip_converts_as_torch_reads_it_or_is_refused(tmp_path: Path, crafted: tuple[str, bytes]) -> None:
    kind, data = crafted
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    outcome = check_file(path, out, state=False)
    ZIP_OUTCOMES[outcome] = ZIP_OUTCOMES.get(outcome, 0) + 1
    # A change on one side (local header, central directory, data descriptor) is a disagreement; so are two names,
    # bytes around the archive, a moved entry; both sides changed alike must still be what torch reads.
    both, field, value = kind.startswith("both:"), *(kind.split(":")[1].split("=", 1) if "=" in kind else ("", ""))
    odd_both = both and ((field == "method" and value != "0") or field == "crc")
    if data != GOOD and not kind.startswith(("flip", "record")) and (not both or odd_both):
        assert outcome == "refused", kind


def test_the_unchanged_archive_converts_as_torch_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(GOOD)
    assert check_file(path, tmp_path, state=False) == "same"


def test_a_duplicate_storage_entry_is_refused_whichever_torch_would_take(tmp_path: Path) -> None:
    """Torch (miniz) takes the last of two entries of one name, as zipfile does; a reader that walks the local
    headers takes the first. The file has no one meaning, so it is refused."""
    for first in (True, False):
        entries = _entries(GOOD)
        name = next(n for n, _ in entries if n.endswith("data/0"))
        body = dict(entries)[name]
        at = [n for n, _ in entries].index(name) + (0 if first else 1)
        entries.insert(at, (name, b"\x7f" * len(body)))
        path = tmp_path / "dup.bin"
        path.write_bytes(_rewrite(entries))
        assert torch_reads(path)[0]
        with pytest.raises(HubsyncError, match="twice"):
            read_torch_archive(path, "dup.bin")


def _both(field: str, value: int, entry: int, base: bytes = GOOD) -> bytes:
    """GOOD with one field of one entry set alike in its local header and its central record."""
    local_at, central_at, fmt = FIELDS[field]
    data = bytearray(base)
    if local_at is not None:
        struct.pack_into(fmt, data, _local_records(GOOD)[entry] + local_at, value)
    struct.pack_into(fmt, data, _central_records(GOOD)[entry] + central_at, value)
    return bytes(data)


def _flipped_record(name: str, body: bytes) -> bytes:
    """GOOD with the bytes of one small record changed in place, its CRC left as it was (torch checks none)."""
    old = dict(_entries(GOOD))["archive/" + name]
    assert len(body) == len(old) and GOOD.count(old) >= 1
    at = _local_records(GOOD)[[n for n, _ in _entries(GOOD)].index("archive/" + name)]
    at = GOOD.index(old, at)
    return GOOD[:at] + body + GOOD[at + len(old) :]


def _name_length_plus_256(data: bytes) -> bytes:
    """The last central record's name length 256 longer: it runs past the central directory's end."""
    at = _central_records(data)[-1] + 29
    return data[:at] + b"\x01" + data[at + 1 :]


def _zip64_end_record_size(data: bytes) -> bytes:
    """The zip64 end record's own size field (44) zeroed."""
    at = data.rindex(b"PK\x06\x06") + 4
    return data[:at] + b"\0" + data[at + 1 :]


def _folder(data: bytes) -> bytes:
    """data.pkl's external attributes marking it an MS-DOS folder (0x10): miniz then reads no data for it."""
    at = _central_records(data)[0] + 38
    return data[:at] + b"\x10" + data[at + 1 :]


def _with_record(name: str, body: bytes) -> bytes:
    return _rewrite([(n, body if n == "archive/" + name else b) for n, b in _entries(GOOD)])


# What the generator found (issue 15, item 3), each as a fixed file: name -> (the file, whether torch reads it).
FOUND = {
    "alignment_flipped": (lambda: _flipped_record(".storage_alignment", b"\x004"), False),
    "alignment_not_a_number": (lambda: _with_record(".storage_alignment", b"x"), False),
    "version_not_a_number": (lambda: _with_record("version", b"x"), False),
    "version_too_new": (lambda: _with_record("version", b"11"), False),
    "no_version": (lambda: _rewrite([e for e in _entries(GOOD) if e[0] != "archive/version"]), False),
    "serialization_id_not_utf8": (lambda: _with_record(".data/serialization_id", b"\xff"), False),
    "patched_data_flag": (lambda: _both("flags", 0x828, 1), False),
    "masked_headers_flag": (lambda: _both("flags", 0x2808, 4), False),
    "strong_encryption_flag": (lambda: _both("flags", 0x848, 4), False),
    "on_another_disk": (lambda: _both("disk", 2, 0), False),
    "needs_zip_6.4": (lambda: _both("needed", 64, 3), True),  # zipfile raised NotImplementedError
    "format_version_deflated": (lambda: _both("method", 8, 1), True),  # "1" is no deflate stream
    # "64" is no deflate stream: torch ignores the failed inflate and reads what the heap held (int() mostly fails)
    "alignment_deflated": (lambda: _both("method", 8, 2), None),
    "reserved_flag": (lambda: _both("flags", 0x818, 4), True),
    "unknown_entry": (lambda: _rewrite([*_entries(GOOD), ("archive/extra", b"1")]), True),
    "record_past_the_directory": (lambda: _name_length_plus_256(GOOD), False),  # zipfile cut it short
    "zip64_end_record_size": (lambda: _zip64_end_record_size(GOOD), False),  # miniz checks it, zipfile not
    "marked_as_a_folder": (lambda: _folder(GOOD), None),  # torch reads heap bytes as data.pkl
    "newline_in_a_name": (lambda: _both("flags", 0x809, 1, _both("name0", 10, 1)), False),  # encrypted '\nrchive/...'
}


@pytest.mark.parametrize("name", sorted(FOUND))
def test_what_torch_refuses_or_reads_otherwise_in_a_record_or_a_flag_is_refused_in_one_line(
    tmp_path: Path, name: str
) -> None:
    make, torch_ok = FOUND[name]
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(make())
    if torch_ok is not None:
        assert torch_reads(path)[0] is torch_ok
    assert check_file(path, tmp_path, state=False) == "refused"
    with pytest.raises(HubsyncError) as refused:
        hubsync_state(path, tmp_path)
    assert "\n" not in str(refused.value)


# -- generated pickles over the opcodes and globals the reader allows --------------------------------------------

STORAGE_TYPES = ["FloatStorage", "LongStorage", "HalfStorage", "ByteStorage", "BoolStorage"]
ITEMSIZE = {"FloatStorage": 4, "LongStorage": 8, "HalfStorage": 2, "ByteStorage": 1, "BoolStorage": 1}
STORAGE_NUMEL = {"0": 6, "1": 16, "2": 1}  # key -> elements (the bytes are written as the record's type says)


def _s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(v: int) -> bytes:
    if -(2**31) <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    return b"\x8a\x08" + v.to_bytes(8, "little", signed=True)


class Emitter:
    """Writes a pickle opcode by opcode from hypothesis draws: containers sharing each other through the memo
    (cycles included), deep nesting, huge integers, BUILD and SETITEMS on odd objects, tensors with odd records."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.out = bytearray(b"\x80\x02")
        self.memo = 0
        self.nodes = 0

    def put(self) -> int:
        self.out += b"r" + struct.pack("<I", self.memo)  # LONG_BINPUT
        self.memo += 1
        return self.memo - 1

    def glob(self, module: str, name: str) -> None:
        self.out += f"c{module}\n{name}\n".encode()

    def value(self, depth: int) -> None:
        self.nodes += 1
        kinds = ["int", "float", "str", "none", "tensor", "ref"]
        if depth < 6 and self.nodes < 60:
            kinds += ["list", "dict", "tuple", "odict", "build", "setitems", "deep", "shared"]
        kind = self.draw(st.sampled_from([*kinds, "bigint", "evil", "bytes"]))
        d, out = self.draw, self.out
        if kind == "int":
            out += b"J" + struct.pack("<i", d(st.integers(-(2**31), 2**31 - 1)))
        elif kind == "bigint":  # past what str() and JSON write out, or past the reader's limit
            n = d(st.sampled_from([9, 255, 600, 2000]))
            raw = (d(st.binary(min_size=1, max_size=8)) * n)[:n]
            out += (b"\x8a" + bytes([n]) if n < 256 else b"\x8b" + struct.pack("<i", n)) + raw
        elif kind == "float":
            out += b"G" + struct.pack(">d", d(st.floats()))
        elif kind == "str":
            out += _s(d(st.text(max_size=5)))
        elif kind == "bytes":
            raw = d(st.binary(max_size=8))
            out += b"C" + bytes([len(raw)]) + raw
        elif kind == "none":
            out += d(st.sampled_from([b"N", b"\x88", b"\x89"]))
        elif kind == "ref" and self.memo:
            out += b"j" + struct.pack("<I", d(st.integers(0, self.memo - 1)))  # may be a container being built
        elif kind == "ref":
            out += b"N"
        elif kind == "list":
            out += b"]"
            self.put()
            n = d(st.integers(0, 3))
            if n:
                out += b"("
                for _ in range(n):
                    self.value(depth + 1)
                out += b"e"
        elif kind == "dict":
            out += b"}"
            self.put()
            n = d(st.integers(0, 3))
            if n:
                out += b"("
                for _ in range(n):
                    self.key(depth + 1)
                    self.value(depth + 1)
                out += b"u"
        elif kind == "tuple":
            out += b"("
            for _ in range(d(st.integers(0, 3))):
                self.value(depth + 1)
            out += b"t"
            self.put()
        elif kind == "odict":
            self.glob("collections", "OrderedDict")
            out += b")R"
            self.put()
        elif kind == "build":  # set the state of whatever comes: a tensor record, a stand-in, a container
            self.value(depth + 1)
            if d(st.booleans()):
                out += b"}" + _s(d(st.sampled_from(["shape", "storage", "offset", "dtype", "_metadata", "x"])))
                self.value(depth + 1)
                out += b"s"
            else:
                self.value(depth + 1)
            out += b"b"
        elif kind == "setitems":  # SETITEMS on whatever comes
            self.value(depth + 1)
            out += b"("
            self.key(depth + 1)
            self.value(depth + 1)
            out += b"u"
        elif kind == "deep":  # a list nested far deeper than any state, or a list holding itself
            n = d(st.sampled_from([50, 150, 5000]))
            if d(st.booleans()):
                out += b"]" * n + b"a" * (n - 1)
            else:
                out += b"]r" + struct.pack("<I", 90000) + b"j" + struct.pack("<I", 90000) + b"a"
        elif kind == "shared":  # [L, L] (or (T, T)) nested n deep through the memo: 2^n entries unfolded
            self.shared(d(st.sampled_from([3, 20, 63])), d(st.booleans()), 100000)
        elif kind == "evil":  # a global the reader must refuse: calling it would create the marker
            module, name = d(st.sampled_from([("os", "system"), ("posix", "system"), ("builtins", "exec")]))
            self.glob(module, name)
            out += b"(" + _s(f"open({str(MARKER)!r}, 'w').close()" if name == "exec" else f"touch {MARKER}") + b"tR"
        elif kind == "tensor":
            self.tensor()

    def key(self, depth: int) -> None:
        """A dict key; now and then a tuple that shares itself (hashing it would take for ever) or a huge int."""
        kind = self.draw(st.sampled_from(["str", "str", "int", "tuple", "value"]))
        if kind == "str":
            self.out += _s(self.draw(st.text(max_size=4)))
        elif kind == "int":
            self.out += b"K" + bytes([self.draw(st.integers(0, 255))])
        elif kind == "tuple":
            self.shared(self.draw(st.sampled_from([2, 30, 63])), True, 200000)
        else:
            self.value(depth)

    def shared(self, depth: int, as_tuple: bool, slots: int) -> None:
        self.out += b")" if as_tuple else b"]"
        for level in range(depth):
            get = b"j" + struct.pack("<I", slots + level)
            self.out += b"r" + struct.pack("<I", slots + level) + b"0"  # memoize, pop
            self.out += get + get + b"\x86" if as_tuple else b"](" + get + get + b"e"

    def tensor(self) -> None:
        d, out = self.draw, self.out
        version = d(st.sampled_from(["v2", "v2", "v3", "parameter"]))
        if version == "parameter":
            self.glob("torch._utils", "_rebuild_parameter")
            out += b"("
        self.glob("torch._utils", "_rebuild_tensor_v2" if version != "v3" else "_rebuild_tensor_v3")
        out += b"("
        # the persistent id: ('storage', type, key, location, numel), now and then with the wrong types
        out += b"("
        out += _s("storage")
        storage_type = d(st.sampled_from([*STORAGE_TYPES, "UntypedStorage", "bad"]))
        if version == "v3":
            storage_type = "UntypedStorage"
        if storage_type == "UntypedStorage":
            self.glob("torch.storage", "UntypedStorage")
        elif storage_type == "bad":
            out += b"K\x01"
        else:
            self.glob("torch", storage_type)
        key = d(st.sampled_from(sorted(STORAGE_NUMEL)))
        out += _s(key) if d(st.integers(0, 9)) else b"K\x00"
        out += _s("cpu")
        itemsize = 1 if storage_type == "UntypedStorage" else ITEMSIZE.get(storage_type, 4)
        numel = STORAGE_NUMEL[key] * 8 // itemsize  # the record holds numel * 8 bytes
        out += b"J" + struct.pack("<i", d(st.sampled_from([numel, numel, numel + 1, 0, -1])))
        out += b"tQ"  # TUPLE, BINPERSID
        out += b"J" + struct.pack("<i", d(st.sampled_from([0, 0, 1, 5, -1, 2**31 - 1])))  # offset
        ndim = d(st.integers(0, 3))
        sizes = [d(st.sampled_from([0, 1, 2, 3, 4, 2**31 - 1])) for _ in range(ndim)]
        strides = [d(st.sampled_from([0, 1, 2, 3, 6, -1, 2**31 - 1])) for _ in range(ndim)]
        if d(st.booleans()):  # a plausible contiguous layout
            strides, acc = [], 1
            for size in reversed(sizes):
                strides.insert(0, acc)
                acc *= max(size, 1)
        for seq in (sizes, strides):
            out += b"(" + b"".join(_int(v) for v in seq) + b"t"
        out += b"\x89"  # requires_grad
        if version == "v3":
            out += b"N"
            self.glob("torch", d(st.sampled_from(["float32", "int64", "float16", "uint8"])))
            out += b"tR"
        else:
            self.glob("collections", "OrderedDict")
            out += b")RtR"
        if version == "parameter":
            out += b"\x89"
            self.glob("collections", "OrderedDict")
            out += b")RtR"


@st.composite
def generated_pickles(draw: st.DrawFn) -> bytes:
    e = Emitter(draw)
    if draw(st.booleans()):  # a state dict: names -> tensors, the shape of a weights file
        e.out += b"}"
        e.put()
        e.out += b"("
        plain = draw(st.integers(0, 3)) == 0  # now and then only well-formed tensors: torch reads the file
        for i in range(draw(st.integers(1, 4))):
            e.out += _s(f"t{i}")
            if plain:
                e.glob("torch._utils", "_rebuild_tensor_v2")
                e.out += b"((" + _s("storage") + b"ctorch\nFloatStorage\n" + _s("0") + _s("cpu") + b"K\x0ctQ"
                e.out += b"K" + bytes([draw(st.integers(0, 4))]) + b"K\x02K\x04\x86K\x04K\x01\x86"  # 2 x 4 of 12
                e.out += b"\x89ccollections\nOrderedDict\n)RtR"
            else:
                e.tensor() if draw(st.integers(0, 4)) else e.value(1)
        e.out += b"u"
    else:
        e.value(0)
    return bytes(e.out) + b"."


def torch_zip(pkl: bytes, *, compress: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl, zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
        z.writestr("archive/byteorder", "little")
        for key, numel in STORAGE_NUMEL.items():
            z.writestr(f"archive/data/{key}", bytes(range(numel * 8)))
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


PICKLE_OUTCOMES: dict[str, int] = {}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(generated_pickles(), st.booleans())
def test_a_generated_pickle_is_refused_or_read_as_torch_reads_it(tmp_path: Path, pkl: bytes, as_state: bool) -> None:
    path = tmp_path / ("optimizer.pt" if as_state else "pytorch_model.bin")
    path.write_bytes(torch_zip(pkl))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    outcome = check_file(path, out, state=as_state)
    key = f"{'state' if as_state else 'weights'}:{outcome}"
    PICKLE_OUTCOMES[key] = PICKLE_OUTCOMES.get(key, 0) + 1


def test_a_storage_recorded_as_two_types_is_refused(tmp_path: Path) -> None:
    """Torch reads every record of a storage key as the first one (a float tensor where the pickle says int64);
    torch.save refuses to write such a file. Found by the generator."""

    def tensor(storage_type: str, numel: int) -> bytes:
        return (
            b"ctorch._utils\n_rebuild_tensor_v2\n((" + _s("storage") + f"ctorch\n{storage_type}\n".encode()
            + _s("2") + _s("cpu") + b"J" + struct.pack("<i", numel) + b"tQK\x00))\x89ccollections\nOrderedDict\n)RtR"
        )  # fmt: skip

    for second in (tensor("LongStorage", 1), tensor("FloatStorage", 1)):
        path = tmp_path / "pytorch_model.bin"
        path.write_bytes(torch_zip(b"\x80\x02}(" + _s("a") + tensor("FloatStorage", 2) + _s("b") + second + b"u."))
        assert torch_reads(path)[0]
        with pytest.raises(HubsyncError, match="recorded with two types or sizes"):
            read_torch_archive(path, path.name)


def test_an_opcode_torch_does_not_read_in_weights_is_refused(tmp_path: Path) -> None:
    """torch.load(weights_only=True) reads no POP, SHORT_BINBYTES, LONG4, STACK_GLOBAL, FRAME: a weights file
    using one is a file torch refuses, so hubsync refuses it too. Found by the generator (POP)."""
    for extra in (b"N0", b"C\x01x0", b"\x8b\x01\x00\x00\x00\x010"):
        path = tmp_path / "pytorch_model.bin"
        path.write_bytes(torch_zip(b"\x80\x02}" + extra + b"."))
        assert not torch_reads(path)[0]
        with pytest.raises(HubsyncError, match="not allowed here"):
            read_torch_archive(path, path.name)


def test_a_tensor_keying_a_dict_in_training_state_is_no_traceback(tmp_path: Path) -> None:
    """{tensor: {}}: the tree walk skipped keys, the encoder then met a tensor it had no name for (KeyError)."""
    tensor = (
        b"ctorch._utils\n_rebuild_tensor_v2\n((" + _s("storage") + b"ctorch\nFloatStorage\n" + _s("0") + _s("cpu")
        + b"K\x0ctQK\x00))\x89ccollections\nOrderedDict\n)RtR"
    )  # fmt: skip
    path = tmp_path / "optimizer.pt"
    path.write_bytes(torch_zip(b"\x80\x02}(" + tensor + b"}u."))
    out = tmp_path / "out"
    out.mkdir()
    expected = torch.load(path, weights_only=True)
    try:
        got = hubsync_state(path, out)
    except HubsyncError as exc:
        assert "\n" not in str(exc)
    else:  # a tensor keys by identity: compare the one key and its value
        ((key, value),), ((want_key, want_value),) = got.items(), expected.items()
        assert same(key, want_key) and same(value, want_value)


def test_the_generators_cost_bounded_memory_and_draw_every_outcome() -> None:
    """Runs after the two property tests (file order): their outcomes, and the process's peak memory."""
    print(f"zip outcomes {ZIP_OUTCOMES}, pickle outcomes {PICKLE_OUTCOMES}, peak RSS {rss_mb()} MB")
    assert rss_mb() < 2048
    if ZIP_OUTCOMES and PICKLE_OUTCOMES:
        assert ZIP_OUTCOMES.get("refused") and ZIP_OUTCOMES.get("same")
        assert PICKLE_OUTCOMES.get("weights:refused") and PICKLE_OUTCOMES.get("state:refused")
        assert PICKLE_OUTCOMES.get("weights:same") and PICKLE_OUTCOMES.get("state:same")
    assert not MARKER.exists()


# -- the reproductions, each measured in a process of its own ---------------------------------------------


def _state_zip(pkl: bytes) -> bytes:
    return torch_zip(pkl)


def _tuple_key_bomb() -> bytes:
    """A dict whose key is ((), ()) nested 63 levels through the memo: hashing it visits 2^63 tuples."""
    body = b")"
    for level in range(63):
        body += b"r" + struct.pack("<I", level) + b"j" + struct.pack("<I", level) + b"\x86"
    return _state_zip(b"\x80\x02}" + body + b"K\x01s.")


def _shared_list(depth: int = 63) -> bytes:
    body = b"]"
    for level in range(depth):
        body += b"r" + struct.pack("<I", level) + b"j" + struct.pack("<I", level) + b"\x86"
    return _state_zip(b"\x80\x02}" + _s("state") + body + b"s.")


def _self_dict() -> bytes:
    d: dict[str, Any] = {}
    d["self"] = d
    return _state_zip(pickle.dumps(d, protocol=2))


def _stride_zero() -> bytes:
    """One float of storage, read as 2^42 floats through a stride of 0: convert would write 16 TiB."""
    e = b"\x80\x02}" + _s("w") + b"ctorch._utils\n_rebuild_tensor_v2\n((" + _s("storage")
    e += b"ctorch\nFloatStorage\n" + _s("2") + _s("cpu") + b"K\x02tQK\x00(\x8a\x06" + (1 << 42).to_bytes(6, "little")
    e += b"t(K\x00t\x89ccollections\nOrderedDict\n)RtRs."
    return torch_zip(e)


def _byteorder_bomb() -> bytes:
    """A byteorder entry of 200 MB deflated into 200 KB (the issue's: 1.5 GB in 1.5 MB, read whole)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        info = zipfile.ZipInfo("archive/byteorder")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w") as f:
            f.write(b"little")
            chunk = b"\0" * 10_000_000
            for _ in range(20):
                f.write(chunk)
    return buf.getvalue()


def _compressed_pickle_bomb() -> bytes:
    """data.pkl deflated: 20 MB of EMPTY_DICT under one MARK (each byte a dict object) in a file of 20 KB."""
    return torch_zip(b"\x80\x02](" + b"}" * 20_000_000 + b"e.", compress=True)


def _args_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02](" + b"}" * 10_000_000 + b"e.", zipfile.ZIP_DEFLATED, 9)
    return buf.getvalue()


def _corrupt_deflate() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle.dumps([str(i) for i in range(3000)], protocol=2), zipfile.ZIP_DEFLATED)
    data = bytearray(buf.getvalue())
    data[100:120] = b"\xff" * 20  # inside the deflated stream; the sizes and CRC stay as they were
    return bytes(data)


def _build_on_tensor_record() -> bytes:
    """BUILD on the reader's own tensor record, after its bounds were checked: {'shape': (2^40,)}."""
    e = b"\x80\x02}" + _s("w") + b"ctorch._utils\n_rebuild_tensor_v2\n((" + _s("storage")
    e += b"ctorch\nFloatStorage\n" + _s("0") + _s("cpu") + b"K\x0ctQK\x00(K\x0ct(K\x01t\x89"
    e += b"ccollections\nOrderedDict\n)RtR}" + _s("shape") + b"(\x8a\x06" + (1 << 40).to_bytes(6, "little") + b"tsbs."
    return torch_zip(e)


def _huge_int() -> bytes:
    return _state_zip(b"\x80\x02}" + _s("step") + b"\x8b" + struct.pack("<i", 2000) + b"\x07" * 2000 + b"s.")


def _hex_int() -> bytes:  # a protocol-0 INT in hex: 16,000 bits, more digits than str() writes out
    return _state_zip(b"\x80\x02}" + _s("step") + b"I0x" + b"7" * 4000 + b"\ns.")


def _numpy_stride_overflow() -> bytes:
    """A (1, 2) tensor whose size-1 dimension has a stride of 2^62: in bounds, but numpy's byte strides overflow."""
    e = b"\x80\x02}" + _s("w") + b"ctorch._utils\n_rebuild_tensor_v2\n((" + _s("storage")
    e += b"ctorch\nFloatStorage\n" + _s("0") + _s("cpu") + b"K\x0ctQK\x00(K\x01K\x02t(\x8a\x08"
    e += (1 << 62).to_bytes(8, "little") + b"K\x02t\x89ccollections\nOrderedDict\n)RtRs."
    return torch_zip(e)


def _encrypted() -> bytes:
    data = bytearray(GOOD)
    for at in (_local_records(GOOD)[0] + 6, _central_records(GOOD)[0] + 8):
        struct.pack_into("<H", data, at, struct.unpack_from("<H", data, at)[0] | 1)
    return bytes(data)


def _method(method: int) -> bytes:
    data = bytearray(GOOD)
    for at in (_local_records(GOOD)[0] + 8, _central_records(GOOD)[0] + 10):
        struct.pack_into("<H", data, at, method)
    return bytes(data)


REPRODUCTIONS = {  # name -> (the file it lands in, how to make it, what the refusal says)
    "tuple_key_bomb": ("optimizer.pt", _tuple_key_bomb, "a key too large to hash"),
    "shared_list_63": ("optimizer.pt", _shared_list, "more than 1,000,000 entries"),
    "self_dict": ("optimizer.pt", _self_dict, "contains itself"),
    "stride_zero": ("pytorch_model.bin", _stride_zero, "more elements than its storage holds"),
    "byteorder_bomb": ("pytorch_model.bin", _byteorder_bomb, "byteorder' is 200,000,006 bytes"),
    "compressed_pickle_bomb": ("pytorch_model.bin", _compressed_pickle_bomb, "more than 1,000,000 objects"),
    "build_on_tensor_record": ("pytorch_model.bin", _build_on_tensor_record, "sets the state of a TensorRef"),
    "huge_int": ("optimizer.pt", _huge_int, "an integer of 2,000 bytes"),
    "hex_int": ("optimizer.pt", _hex_int, "integer of more than 3,600 digits"),
    "numpy_stride_overflow": ("pytorch_model.bin", _numpy_stride_overflow, "converted"),
    "encrypted": ("pytorch_model.bin", _encrypted, "is encrypted"),
    "method_bzip2": ("pytorch_model.bin", lambda: _method(12), "compressed with method 12"),
    "method_lzma": ("pytorch_model.bin", lambda: _method(14), "compressed with method 14"),
}

_PROBE = """
import resource, sys, time
from pathlib import Path
from hubsync.core.errors import HubsyncError
import hubsync.convert.state, hubsync.convert.torchzip, hubsync.convert.writer, hubsync.core.ghostpickle, numpy
path, state = Path(sys.argv[1]), sys.argv[2] == "state"
print(f"BASE_MB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}")
started = time.monotonic()
try:
    if state:
        from hubsync.convert.state import encode_state
        encode_state(path, path.name, path.parent / "out")
    elif path.name == "training_args.bin":
        from hubsync.core.checkpoint import _training_args  # as every command reads it: None when unreadable
        _training_args(path.parent, {path.name})
        print("RESULT read")
    else:
        from hubsync.convert.torchzip import read_torch_archive
        from hubsync.convert.writer import find_aliases, write_verified
        archive = read_torch_archive(path, path.name)
        meta = {"format": "pt"}
        write_verified(archive, find_aliases(archive.tensors)[0], meta, path.parent / "out" / "w.safetensors", "w")
    if path.name != "training_args.bin":
        print("RESULT converted")
except HubsyncError as exc:
    print("RESULT refused:", exc)
print(f"SECONDS {time.monotonic() - started:.2f}")
print(f"PEAK_MB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}")
"""


def probe(path: Path, *, state: bool, timeout: float = 60) -> dict[str, str]:
    """Read `path` as convert (or the state encoding) would, in a process of its own: its outcome, time and peak
    memory. Another exception fails the probe (a traceback)."""
    (path.parent / "out").mkdir(exist_ok=True)
    import hubsync

    env = {**os.environ, "PYTHONPATH": str(Path(hubsync.__file__).parents[1])}  # the hubsync under test
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), "state" if state else "weights"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    return dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.split(" ", 1)[0].isupper())


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reproductions")
    files = {}
    for name, (filename, make, _) in REPRODUCTIONS.items():
        (root / name).mkdir()
        files[name] = root / name / filename
        files[name].write_bytes(make())
    return files


@pytest.mark.parametrize("name", sorted(REPRODUCTIONS))
def test_each_reproduction_is_refused_at_once_in_bounded_memory(name: str, made: dict[str, Path]) -> None:
    filename, _, said = REPRODUCTIONS[name]
    path = made[name]
    assert path.stat().st_size < 300_000, path.stat().st_size
    got = probe(path, state=filename == "optimizer.pt", timeout=30)
    if said == "converted":  # in bounds: converted as torch reads it (numpy's byte strides no longer overflow)
        assert got["RESULT"] == "converted", got
        assert check_file(path, path.parent / "out", state=False) == "same"
    else:
        assert got["RESULT"].startswith("refused") and said in got["RESULT"], got
    assert float(got["SECONDS"]) < 5, got
    assert int(got["PEAK_MB"]) - int(got["BASE_MB"]) < 150, got


def test_training_args_bombs_are_read_in_bounded_memory(tmp_path: Path) -> None:
    """training_args.bin is read by every command (for the card): a deflated data.pkl of 30 MB took 827 MB."""
    for make in (_args_bomb, _corrupt_deflate):
        path = tmp_path / make.__name__ / "training_args.bin"
        path.parent.mkdir()
        path.write_bytes(make())
        got = probe(path, state=False, timeout=30)
        assert got["RESULT"] == "read" and float(got["SECONDS"]) < 5, got
        assert int(got["PEAK_MB"]) - int(got["BASE_MB"]) < 150, got


# -- on the command line: one line naming the file, in every command that meets it --------------------------------


@pytest.fixture(scope="module")
def module_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    with local_hub(tmp_path_factory.mktemp("gen-hub") / "root") as running:
        yield running


def cli_run(hub: RunningHub, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token})


def assert_one_line(result: Result, shown: str, code: int = 1) -> None:
    assert result.exit_code == code, (result.exception, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and shown in lines[0], result.stderr


CLI_CASES = {
    "duplicate_entry": (
        "adapter_model.bin",
        lambda: _rewrite([*_entries(GOOD), *[(n, b"\x7f" * len(b)) for n, b in _entries(GOOD) if n.endswith("/0")]]),
    ),
    "stride_zero": ("adapter_model.bin", _stride_zero),
    "build_on_tensor_record": ("adapter_model.bin", _build_on_tensor_record),
    "tuple_key_bomb": ("optimizer.pt", _tuple_key_bomb),
    "huge_int": ("optimizer.pt", _huge_int),
    "deep_list": ("optimizer.pt", lambda: _state_zip(b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".")),
    "corrupt_deflate": ("training_args.bin", _corrupt_deflate),
    "encrypted_args": ("training_args.bin", _encrypted),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_hostile_files_end_in_one_line_in_every_command(
    case: str, tiny_run: Path, module_hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    name, make = CLI_CASES[case]
    ckpt = Path(shutil.copytree(tiny_run / "checkpoint-30", tmp_path / "run" / "checkpoint-30"))
    if name == "adapter_model.bin":
        (ckpt / "adapter_model.safetensors").unlink()
    (ckpt / name).write_bytes(make())
    folder, shown = "run/checkpoint-30", f"run/checkpoint-30/{name}"
    repo = f"me/gen-{case.replace('_', '-')}"
    hub = module_hub
    card = cli_run(hub, "card", folder)
    assert card.exit_code == 0 and "Traceback" not in card.stderr, card.stderr
    dry = ["--dry-run"]
    if name == "adapter_model.bin":
        assert_one_line(cli_run(hub, "convert", folder, "-o", "converted"), shown)
        for state in ("keep", "drop"):  # the push reads the weights before the Hub (a dry run too: test_dry_run_checks)
            assert_one_line(cli_run(hub, "push", folder, "--repo", repo, "--training-state", state), shown)
        assert not HfApi(endpoint=hub.endpoint, token=hub.token).repo_exists(repo)
    elif name == "optimizer.pt":
        assert cli_run(hub, "convert", folder, "-o", "converted").exit_code == 0
        assert_one_line(cli_run(hub, "push", folder, "--repo", repo, "--training-state", "keep", *dry), shown)
        assert cli_run(hub, "push", folder, "--repo", repo, "--training-state", "drop", *dry).exit_code == 0
    else:  # training_args.bin: read for the card only; unreadable, it is left out of the card, never a crash
        assert cli_run(hub, "convert", folder, "-o", "converted").exit_code == 0
        for state in ("keep", "drop"):
            pushed = cli_run(hub, "push", folder, "--repo", repo, "--training-state", state, "--json")
            assert pushed.exit_code == 0 and "Traceback" not in pushed.stderr, pushed.stderr
            plan = json.loads(pushed.stdout)["plans"][0]
            assert "training_args.bin" not in {f["path"] for f in plan["files"]}
        watched = cli_run(hub, "watch", "run", "--repo", repo, "--interval", "0.05", "--idle-timeout", "0.3")
        assert watched.exit_code == 0 and "Traceback" not in watched.stderr, watched.stderr
    assert not MARKER.exists()


def test_zlib_is_what_corrupts_the_deflated_entry() -> None:
    """The corrupt-deflate reproduction really is one: the standard library's reader fails inside zlib."""
    with zipfile.ZipFile(io.BytesIO(_corrupt_deflate())) as z, pytest.raises((zlib.error, zipfile.BadZipFile)):
        z.read("archive/data.pkl")
