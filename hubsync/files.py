"""Files that appear only whole: temp files and staging folders beside their target, renamed into place.

Temp names carry the process id, so that a later run removes what a killed run left, and never what a run
still going (another process) is writing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TEMP_PREFIX = ".hubsync-tmp-"
_OWNER = re.compile(re.escape(TEMP_PREFIX) + r"(?:.*-)?p([0-9]+)-[^-]*\Z")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _prefix(name: str = "") -> str:
    return f"{TEMP_PREFIX}{name + '-' if name else ''}p{os.getpid()}-"


def temp_file(directory: Path, suffix: str = "", mode: int | None = None) -> tuple[int, Path]:
    """A temp file in `directory` with `mode`, or the permissions a plain new file would get (mkstemp makes it
    0600)."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=_prefix(), suffix=suffix)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o666 & ~_umask() if mode is None else mode)
    return fd, Path(name)


def temp_dir(directory: Path, name: str) -> Path:
    """A staging folder in `directory`, with the permissions a plain new folder would get."""
    path = Path(tempfile.mkdtemp(dir=directory, prefix=_prefix(name)))
    path.chmod(0o777 & ~_umask())
    return path


@contextmanager
def system_temp_dir(name: str) -> Iterator[Path]:
    """A private folder in the system temp folder for the duration of the block. Folders that killed runs left
    there are removed first: a run killed while converting would otherwise leave its weights behind for good."""
    root = Path(tempfile.gettempdir())
    remove_stale_temps(root)
    path = Path(tempfile.mkdtemp(dir=root, prefix=_prefix(name)))  # 0700: it may hold training state
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def is_temp(path: Path) -> bool:
    return path.name.startswith(TEMP_PREFIX)


def remove_stale_temps(directory: Path) -> None:
    """Remove temp files and folders in `directory` whose process is gone (killed, or the machine restarted)."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        m = _OWNER.match(entry.name.removesuffix(".safetensors"))
        if not is_temp(entry) or (m is not None and _alive(int(m.group(1)))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or a platform that cannot tell: leave it be
    return True


def write_file_atomic(target: Path, data: bytes, mode: int | None = None) -> None:
    fd, tmp = temp_file(target.parent, mode=mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_file_atomic(source: Path, target: Path) -> None:
    fd, tmp = temp_file(target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def lies_within(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies within it, links followed (a link must not lead writes into it)."""
    real = Path(os.path.realpath(folder))
    # realpath reads the path part by part: links followed where they exist, `new/..` (a folder still to be made)
    # back where it started, and a link after it followed again
    resolved = Path(os.path.realpath(path))
    return resolved == real or resolved.is_relative_to(real)


HASH_CHUNK = 4 * 1024 * 1024


def git_blob_hasher(size: int) -> hashlib._Hash:
    """A sha1 fed git's blob header for `size` bytes: fed the content next, its digest is the git blob id that a
    Hub's tree lists for a file (of the content for a regular file, of the pointer for an LFS one)."""
    return hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)


def git_blob_id(data: bytes) -> str:
    """The git blob id of `data`."""
    hasher = git_blob_hasher(len(data))
    hasher.update(data)
    return hasher.hexdigest()


def hash_file(path: Path, *hashers: hashlib._Hash) -> list[str]:
    """Feed the file to every hasher in one read; their hex digests, in order."""
    with path.open("rb", buffering=0) as f:
        buf = bytearray(HASH_CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            for hasher in hashers:
                hasher.update(view[:n])
    return [h.hexdigest() for h in hashers]


@dataclass(frozen=True)
class KnownDigest:
    """A file's sha256, known from writing it, and what its inode said then: an upload may take the sha256 instead
    of reading the file again only while the file is still that one (same inode, size, modification and change
    times). For hubsync's own files in a private temp folder, made read-only once written."""

    sha256: str
    identity: tuple[int, int, int, int, int]

    @classmethod
    def seal(cls, path: Path, sha256: str) -> KnownDigest:
        """Make the just-written `path` read-only and remember its sha256 and identity."""
        path.chmod(0o444)
        return cls(sha256, _identity(path))

    def holds(self, path: Path) -> bool:
        try:
            return _identity(path) == self.identity
        except OSError:
            return False


def _identity(path: Path) -> tuple[int, int, int, int, int]:
    st = os.stat(path, follow_symlinks=False)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
