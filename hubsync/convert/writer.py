"""Write one safetensors file from a torch archive's byte ranges, verify it bit for bit, then put it in place.

Contiguous tensors are copied file to file by the kernel (`os.copy_file_range`) where it exists, and in
bounded chunks elsewhere; nothing holds a whole tensor in memory. The result is read back and compared
with the source byte for byte, and its header is parsed by the safetensors library itself, before the
temp file is renamed to its final name. The read back is hashed too (sha256, the id a Hub names the file by), so
an upload need not read the file once more to hash it.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import RawIOBase
from pathlib import Path

from hubsync.core.errors import VerificationError
from hubsync.files import temp_file

from .torchzip import TensorRef, TorchArchive

CHUNK = 8 * 1024 * 1024
VERIFY_CHUNK = 1024 * 1024
Progress = Callable[[int], None]  # called with bytes done since the last call
Digest = Callable[[Path, str], None]  # called with a file written and its sha256 (hex)
Sink = Callable[[bytes | bytearray | memoryview], None]


@dataclass(frozen=True)
class Layout:
    """Where each kept tensor goes in the output file."""

    header: bytes  # length prefix, JSON header and padding
    tensors: tuple[tuple[str, TensorRef, int], ...]  # name, source tensor, byte offset in the output file


def find_aliases(tensors: dict[str, TensorRef]) -> tuple[dict[str, TensorRef], dict[str, str]]:
    """Keep one name per tensor view (the first in the file's order); map each dropped alias to the kept name."""
    kept: dict[str, TensorRef] = {}
    first_name: dict[tuple[object, ...], str] = {}
    aliases: dict[str, str] = {}
    for name, tensor in tensors.items():
        key = tensor.view_key()
        if key in first_name and tensor.numel > 0:
            aliases[name] = first_name[key]
        else:
            first_name.setdefault(key, name)
            kept[name] = tensor
    return kept, aliases


def plan_layout(tensors: dict[str, TensorRef], metadata: dict[str, str]) -> Layout:
    """Larger dtypes first so every tensor starts aligned to its item size, as safetensors itself lays them out."""
    order = sorted(tensors.items(), key=lambda kv: (-kv[1].dtype.itemsize, kv[0]))
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, t in order:
        header[name] = {"dtype": t.dtype.name, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    prefix = struct.pack("<Q", len(encoded)) + encoded
    placed = []
    position = len(prefix)
    for name, t in order:
        placed.append((name, t, position))
        position += t.nbytes
    return Layout(prefix, tuple(placed))


def _copy_range(
    src: RawIOBase, dst: RawIOBase, src_offset: int, dst_offset: int, count: int, progress: Progress
) -> None:
    copy_file_range = getattr(os, "copy_file_range", None)
    while count > 0 and copy_file_range is not None:
        try:
            done = copy_file_range(src.fileno(), dst.fileno(), min(count, 1 << 30), src_offset, dst_offset)
        except OSError:  # another file system, or a kernel that says no: copy through memory below
            break
        if done == 0:
            raise OSError("unexpected end of the source file")
        src_offset, dst_offset, count = src_offset + done, dst_offset + done, count - done
        progress(done)
    buf = bytearray(min(CHUNK, max(count, 0)))
    while count > 0:
        view = memoryview(buf)[: min(count, CHUNK)]
        src.seek(src_offset)
        n = src.readinto(view)
        if not n:
            raise OSError("unexpected end of the source file")
        dst.seek(dst_offset)
        dst.write(view[:n])
        src_offset, dst_offset, count = src_offset + n, dst_offset + n, count - n
        progress(n)


def _strided_chunks(archive: TorchArchive, tensor: TensorRef) -> Iterator[bytes]:
    """A non-contiguous tensor's bytes in row-major order, a block of rows at a time."""
    import numpy as np

    if tensor.nbytes == 0:
        return
    record = archive.storages[tensor.storage.key]
    itemsize = tensor.dtype.itemsize
    storage = np.memmap(
        archive.path, dtype=f"u{itemsize}", mode="r", offset=record.file_offset, shape=(record.size // itemsize,)
    )
    view = np.lib.stride_tricks.as_strided(
        storage[tensor.offset :],
        shape=tensor.shape,
        strides=tuple(s * itemsize if d != 1 else 0 for d, s in zip(tensor.shape, tensor.stride, strict=True)),
        writeable=False,
    )
    row_bytes = max(tensor.nbytes // max(tensor.shape[0], 1), 1)
    rows = max(1, CHUNK // row_bytes)
    for start in range(0, tensor.shape[0], rows):
        yield np.ascontiguousarray(view[start : start + rows]).tobytes()
    del view, storage


def _same_bytes(
    src: RawIOBase, src_offset: int, out: RawIOBase, out_offset: int, count: int, read: Sink | None = None
) -> bool:
    """Compare two byte ranges through two reused buffers (bytearray == is a memcmp; slicing would copy); `read`
    is fed each buffer read from `out`."""
    size = min(VERIFY_CHUNK, count)
    a, b = bytearray(size), bytearray(size)
    while count > 0:
        if count < size:
            size = count
            a, b = bytearray(size), bytearray(size)
        src.seek(src_offset)
        out.seek(out_offset)
        if src.readinto(a) != size or out.readinto(b) != size or a != b:
            return False
        if read is not None:
            read(b)
        src_offset, out_offset, count = src_offset + size, out_offset + size, count - size
    return True


def _write(
    archive: TorchArchive, layout: Layout, out: RawIOBase, progress: Progress, written: Callable[[int], None]
) -> None:
    """Write the header, then each tensor; `written(i)` is called once tensor i is in the file."""
    out.write(layout.header)
    out.flush()
    with archive.path.open("rb", buffering=0) as src:
        for index, (_name, tensor, position) in enumerate(layout.tensors):
            if tensor.is_contiguous:
                start = archive.storages[tensor.storage.key].file_offset + tensor.offset * tensor.dtype.itemsize
                _copy_range(src, out, start, position, tensor.nbytes, progress)
            else:
                out.seek(position)
                for chunk in _strided_chunks(archive, tensor):
                    out.write(chunk)
                    progress(len(chunk))
            written(index)
    # No fsync, as cp does none: the source stays untouched, and the rename below makes the file appear whole
    # to every process; only a power cut before writeback could leave it short, and a re-run redoes it.
    out.flush()


class _TensorChecker:
    """Compares each tensor, once written, with its source, in a thread of its own.

    The kernel copies the next tensor on one core while this reads back the last one on the other. What it reads
    back is hashed on the way, header first, then each tensor in the file's order: the file's sha256.
    """

    def __init__(self, archive: TorchArchive, layout: Layout, written: Path) -> None:
        self.archive, self.layout, self.written = archive, layout, written
        self.queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.mismatch: str | None = None
        self.error: BaseException | None = None
        self.sha256 = hashlib.sha256()
        self.hashed = 0  # bytes fed to sha256, read back from the written file
        self.thread = threading.Thread(target=self._run, name="hubsync-verify", daemon=True)
        self.thread.start()

    def submit(self, index: int) -> None:
        self.queue.put(index)

    def finish(self) -> str | None:
        """Wait for every check; the name of the first tensor whose bytes differ, if any."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.mismatch

    def digest(self) -> str | None:
        """The written file's sha256, once finish() found every tensor the same; None if it was not read whole."""
        size = self.written.stat().st_size
        return self.sha256.hexdigest() if self.mismatch is None and self.hashed == size else None

    def _hash(self, data: bytes | bytearray | memoryview) -> None:
        self.sha256.update(data)
        self.hashed += len(data)

    def _run(self) -> None:
        try:
            with self.archive.path.open("rb", buffering=0) as src, self.written.open("rb", buffering=0) as out:
                while (index := self.queue.get()) is not None:
                    if self.hashed == 0:  # the header is in the file before the first tensor is
                        self._hash(out.read(len(self.layout.header)))
                    if self.mismatch is None and not self._same(src, out, *self.layout.tensors[index]):
                        self.mismatch = self.layout.tensors[index][0]
        except BaseException as exc:
            self.error = exc
            while self.queue.get() is not None:  # let the writer finish; it reads the error at the end
                pass

    def _same(self, src: RawIOBase, out: RawIOBase, name: str, tensor: TensorRef, position: int) -> bool:
        if tensor.is_contiguous:
            start = self.archive.storages[tensor.storage.key].file_offset + tensor.offset * tensor.dtype.itemsize
            return _same_bytes(src, start, out, position, tensor.nbytes, self._hash)
        out.seek(position)
        for chunk in _strided_chunks(self.archive, tensor):
            back = out.read(len(chunk))
            if back != chunk:
                return False
            self._hash(back)
        return True


def verify_header(layout: Layout, written: Path, shown: str, metadata: dict[str, str]) -> None:
    """The new file's header as the safetensors library itself parses it: names, dtypes, shapes, metadata."""
    from safetensors import safe_open

    try:
        with safe_open(str(written), framework="numpy") as f:
            header_names = set(f.keys())
            if f.metadata() != metadata:
                raise VerificationError(shown, "the header metadata differs")
            for name, tensor, _ in layout.tensors:
                piece = f.get_slice(name)
                if piece.get_dtype() != tensor.dtype.name or tuple(piece.get_shape()) != tensor.shape:
                    raise VerificationError(shown, f"tensor {name} has another dtype or shape")
    except VerificationError:
        raise
    except Exception as exc:  # safetensors raises its own error types for a malformed file
        raise VerificationError(shown, f"safetensors cannot read it ({exc})") from exc
    if header_names != {name for name, _, _ in layout.tensors}:
        raise VerificationError(shown, "the tensor names differ")


def write_verified(
    archive: TorchArchive,
    tensors: dict[str, TensorRef],
    metadata: dict[str, str],
    target: Path,
    shown: str,
    progress: Progress = lambda n: None,
    digest: Digest = lambda path, sha256: None,
) -> int:
    """Write `tensors` to `target` as safetensors through a temp file, read back and compared with the source
    bit for bit; rename it into place only then, and tell `digest` its sha256 (hashed from that read back). Returns
    the tensor bytes written."""
    layout = plan_layout(tensors, metadata)
    fd, tmp = temp_file(target.parent, ".safetensors")
    try:
        checker = _TensorChecker(archive, layout, tmp)
        try:
            with os.fdopen(fd, "wb", buffering=0) as out:
                _write(archive, layout, out, progress, checker.submit)
        finally:
            mismatch = checker.finish()
        if mismatch is not None:
            raise VerificationError(shown, f"the bytes of tensor {mismatch} differ")
        verify_header(layout, tmp, shown, metadata)
        sha256 = checker.digest()
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sha256 is not None:
        digest(target, sha256)
    return sum(t.nbytes for t in tensors.values())
