"""The local Hub's Xet storage: hf_xet's own `local://DIR` storage, a folder per repository, and the files its
shards describe. The routes that send clients there are in `xet.py`.

Each repository gets a folder of its own, so that a commit finds only what was uploaded with a write token of its
repository: hf_xet's local storage checks no token, and without this a user who knew the sha256 of another's
private file could commit it to a repository of theirs and download it. (So Xet deduplicates within a repository
here, not across repositories as huggingface.co does.) A plain-HTTP download of a Xet file is served from the file
rebuilt by hf_xet from that storage, checked against its sha256 first.

Shard layout (xet-core `metadata_shard/shard_format.rs`, hub-docs `xet/shard.md`): a 48-byte header (a 32-byte
tag, version 2, footer size), the file-info section at the footer's `file_info_offset`, then the footer at the end
(version 1, then `file_info_offset`, `xorb_info_offset`, ...). A file info is a 48-byte header (Xet hash, flags,
number of entries, unused), its entries (48 bytes each), as many verification entries when flag 1<<31 is set, and a
48-byte metadata extension (sha256 first) when flag 1<<30 is set; a header whose hash is all 0xff ends the
section. Hashes are four little-endian 64-bit words, and their hex is each word printed as a number: the bytes of
every 8-byte group reversed, the byte-order quirk of Xet hashes.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hubsync.core.remote_paths import MAX_FILE_SIZE
from hubsync.core.transient import xet_storage_busy

TOKEN_LIFETIME = 3600  # seconds a Xet token is valid; hf_xet asks for a new one before it expires
SHARD_TAG = b"HFRepoMetaData\x00\x55\x69\x67\x45\x6a\x7b\x81\x57\x83\xa5\xbd\xd9\x5c\xcd\xd1\x4a\xa9"
ENTRY = 48  # every header and entry of a shard's file-info section
BOOKEND = b"\xff" * 32
WITH_VERIFICATION = 1 << 31
WITH_METADATA_EXT = 1 << 30
MAX_SHARD_BYTES = 256 * 1024 * 1024  # hf_xet cuts shards at 64 MiB; a larger file there is no shard of its
MAX_SEGMENTS = 10_000_000
XORB_NAME = re.compile(r"default\.[0-9a-f]{64}")  # a xorb as hf_xet's local storage names it


# While a client's transfer in another process has hf_xet's local storage open, the local Hub waits for it
# (core/transient.py xet_storage_busy).
BUSY_RETRIES = 150
BUSY_PAUSE = 0.2  # seconds: 30 s in all


class XetStorageError(Exception):
    """The Xet storage could not give a file back."""


class ShardError(ValueError):
    """A file in the Xet storage's shard folder that is no shard hf_xet writes."""


@dataclass(frozen=True)
class XetFile:
    """One file a shard describes: its Xet hash, its size, and its sha256 (None when the shard gives none)."""

    xet_hash: str
    size: int
    sha256: str | None
    xorbs: tuple[str, ...] = ()  # the xorbs (chunk data) its segments lie in, by hash


def hash_hex(raw: bytes) -> str:
    """A Xet hash's hex: each little-endian 64-bit word printed as a number."""
    return "".join(f"{word:016x}" for word in struct.unpack("<4Q", raw))


def shard_files(data: bytes) -> list[XetFile]:
    """The files a shard describes, read with every offset and count checked: a shard is a client's upload."""
    if len(data) < 2 * ENTRY or data[:32] != SHARD_TAG:
        raise ShardError("no shard tag")
    version, footer_size = struct.unpack_from("<QQ", data, 32)
    if version != 2 or not 24 <= footer_size <= len(data) - ENTRY:
        raise ShardError("unknown shard version or footer size")
    footer_version, offset, xorb_info = struct.unpack_from("<QQQ", data, len(data) - footer_size)
    end = min(xorb_info, len(data) - footer_size)
    if footer_version != 1 or not ENTRY <= offset <= end:
        raise ShardError("unknown footer version or file-info offset")
    files: list[XetFile] = []
    while True:
        if offset + ENTRY > end:
            raise ShardError("the file-info section has no end")
        raw_hash = data[offset : offset + 32]
        flags, count = struct.unpack_from("<II", data, offset + 32)
        offset += ENTRY
        if raw_hash == BOOKEND:
            return files
        if count > MAX_SEGMENTS:
            raise ShardError("a file of more segments than any shard holds")
        segments = data[offset : offset + count * ENTRY]
        if len(segments) != count * ENTRY:
            raise ShardError("a file's segments run past the section")
        size = sum(struct.unpack_from("<I", segments, i * ENTRY + 36)[0] for i in range(count))
        offset += count * ENTRY * (2 if flags & WITH_VERIFICATION else 1)
        sha256 = None
        if flags & WITH_METADATA_EXT:
            if offset + ENTRY > end:
                raise ShardError("a file's metadata runs past the section")
            sha256 = hash_hex(data[offset : offset + 32])
            offset += ENTRY
        xorbs = tuple(dict.fromkeys(hash_hex(segments[i * ENTRY : i * ENTRY + 32]) for i in range(count)))
        files.append(XetFile(hash_hex(raw_hash), size, sha256, xorbs))


class XetStorage:
    """The local Hub's Xet storage: one hf_xet `local://` folder per repository, under `root`. Thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._known: dict[Path, tuple[tuple[int, int], list[XetFile]]] = {}  # shard -> ((mtime, size), its files)
        self._tokens: dict[str, tuple[str, str, str, int]] = {}  # token -> (operation, repo type, repo, expiry)

    def folder(self, repo_type: str, repo_id: str) -> Path:
        """The repository's storage folder, named by a hash of its type and id (ids hold characters that no
        folder name should)."""
        return self.root / hashlib.sha256(f"{repo_type}:{repo_id}".encode()).hexdigest()[:32]

    def cas_url(self, repo_type: str, repo_id: str) -> str:
        folder = self.folder(repo_type, repo_id)
        self.root.mkdir(mode=0o700, exist_ok=True)  # hf_xet writes inside with the client's umask: these keep it ours
        folder.mkdir(mode=0o700, exist_ok=True)
        return f"local://{folder}"

    def new_token(self, operation: str, repo_type: str, repo_id: str) -> tuple[str, int]:
        """A token for one operation ("read" or "write") on one repository, and when it expires."""
        token = f"xet_{secrets.token_urlsafe(24)}"
        expiry = int(time.time()) + TOKEN_LIFETIME
        with self._lock:
            now = time.time()
            self._tokens = {t: v for t, v in self._tokens.items() if v[3] > now}
            self._tokens[token] = (operation, repo_type, repo_id, expiry)
        return token, expiry

    def token_allows(self, token: str, operation: str, repo_type: str, repo_id: str) -> bool:
        with self._lock:
            held = self._tokens.get(token)
        return held is not None and held[:3] == (operation, repo_type, repo_id) and held[3] > time.time()

    def candidates(self, repo_type: str, repo_id: str, sha256: str) -> list[XetFile]:
        """The files the repository's shards describe with this sha256 (each shard read once). Claims only: a
        shard is a client's upload, and anyone handed the storage may write one (see `described`)."""
        shards = self._storage_part(repo_type, repo_id, "shards")
        if shards is None:
            return []
        try:
            paths = sorted(p for p in shards.iterdir() if p.suffix == ".mdb")
        except OSError:
            return []
        found = {f.xet_hash: f for path in paths for f in self._shard(path) if f.sha256 == sha256}
        return list(found.values())

    def described(self, repo_type: str, repo_id: str, sha256: str) -> XetFile | None:
        """The file of the repository's Xet storage that has this sha256, as its shards say: the one claim (a
        shard is a client's upload) of a size the Hub takes, whose chunk data (every xorb it names) is there.
        None when there is none, or when several files claim it (anyone handed the storage, a reader of a public
        repository included, may write a shard: which bytes are meant is then unknown). The bytes are checked
        against the sha256 when the local Hub rebuilds the file for a plain download (`rebuild`); it cannot
        check them at the commit, because hf_xet's local storage takes one process at a time and a client
        (`hf upload`) keeps it open meanwhile."""
        claims = [f for f in self.candidates(repo_type, repo_id, sha256) if f.size <= MAX_FILE_SIZE]
        xorbs = self._storage_part(repo_type, repo_id, "xorbs")
        if len(claims) != 1 or xorbs is None:
            return None
        for xorb in claims[0].xorbs:
            try:
                if not stat.S_ISREG(os.lstat(xorbs / f"default.{xorb}").st_mode):
                    return None
            except OSError:
                return None
        return claims[0]

    def _storage_part(self, repo_type: str, repo_id: str, part: str) -> Path | None:
        """The repository's shard or xorb folder, when it is a folder of its own: None when a link on the way
        leads elsewhere (to another repository's storage), or it is not there."""
        folder = self.folder(repo_type, repo_id)
        path = folder / "xet" / "xorbs" / part
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return None
            if os.path.realpath(path) != os.path.join(os.path.realpath(self.root), folder.name, "xet", "xorbs", part):
                return None
        except OSError:
            return None
        return path

    def _shard(self, path: Path) -> list[XetFile]:
        """The files a shard describes; none for anything else there: a link, a FIFO or device (never opened
        for reading, which could block or never end), a file larger than any shard."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            return []
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SHARD_BYTES:
                return []
            key = (info.st_mtime_ns, info.st_size)
            with self._lock:
                known = self._known.get(path)
            if known is not None and known[0] == key:
                return known[1]
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read(MAX_SHARD_BYTES + 1)
            files = shard_files(data)
        except (OSError, ShardError, struct.error):
            return []
        finally:
            os.close(fd)
        with self._lock:
            self._known[path] = (key, files)
        return files

    def stored_bytes(self, repo_type: str, repo_id: str) -> int:
        """The bytes of chunk data (xorbs) the repository's Xet storage holds: what uploads through Xet sent."""
        xorbs = self.folder(repo_type, repo_id) / "xet" / "xorbs" / "xorbs"
        try:
            return sum(p.stat().st_size for p in xorbs.iterdir() if XORB_NAME.fullmatch(p.name))
        except FileNotFoundError:
            return 0

    def drop_files(self, repo_type: str, repo_id: str, sha256s: set[str]) -> int:
        """Remove the chunk data (xorbs) of the files whose sha256 is in `sha256s`, but for the xorbs that any
        other file its shards describe uses too (Xet deduplicates chunks within the repository), and the shards
        that describe only such files: the permanent deletion of LFS files. The number of xorbs removed.

        A shard that describes another file too stays (it is what rebuilds that file); what it claims of a
        deleted one is no longer there, which `described` checks. hf_xet dedups an upload against the shards
        it finds, so only a file whose shards all left can be uploaded through Xet again."""
        shards = self._storage_part(repo_type, repo_id, "shards")
        xorbs = self._storage_part(repo_type, repo_id, "xorbs")
        if shards is None or xorbs is None:
            return 0
        described = {path: self._shard(path) for path in sorted(shards.iterdir()) if path.suffix == ".mdb"}
        files = [f for listed in described.values() for f in listed]
        kept = {x for f in files if f.sha256 not in sha256s for x in f.xorbs}
        gone = {x for f in files if f.sha256 in sha256s for x in f.xorbs} - kept
        for xorb in sorted(gone):
            (xorbs / f"default.{xorb}").unlink(missing_ok=True)
            (xorbs / f"default.{xorb}.tagset").unlink(missing_ok=True)
        for path, listed in described.items():
            if listed and all(f.sha256 in sha256s for f in listed):
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".tagset").unlink(missing_ok=True)
        # hf_xet's cache of the storage's shards would have a new upload deduplicated against the chunks just
        # removed: it goes, hf_xet makes it again. (Its chunk -> shard lookup stays: hf_xet rebuilds files with it.)
        for cached in (self.folder(repo_type, repo_id) / "xet" / "shard-cache").glob("*.mdb"):
            cached.unlink(missing_ok=True)
        return len(gone)

    def rebuild(self, repo_type: str, repo_id: str, file: XetFile, target: Path) -> None:
        """Write the file `file` names to `target` (atomically), rebuilt by hf_xet from the repository's storage,
        checked against its sha256 and size first: what the Hub sends to a client that does not speak Xet."""
        import hf_xet  # the local Hub starts without it; only a Xet file's plain download needs it

        if self._storage_part(repo_type, repo_id, "xorbs") is None:
            raise XetStorageError("The repository's Xet storage is not a folder of its own")

        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".xet-")
        os.close(fd)
        try:
            token, expiry = self.new_token("read", repo_type, repo_id)
            session = hf_xet.XetSession()
            endpoint = self.cas_url(repo_type, repo_id)
            for attempt in range(BUSY_RETRIES + 1):
                try:
                    with session.new_file_download_group(
                        endpoint=endpoint, token=token, token_expiry_unix_secs=expiry
                    ) as group:
                        group.start_download_file(hf_xet.XetFileInfo(file.xet_hash, file.size), tmp)
                    break
                except RuntimeError as exc:
                    if not xet_storage_busy(str(exc)) or attempt == BUSY_RETRIES:
                        raise
                    time.sleep(BUSY_PAUSE)
            os.chmod(tmp, 0o600)
            digest = hashlib.sha256()
            size = 0
            with open(tmp, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
            if size != file.size or digest.hexdigest() != file.sha256:
                raise XetStorageError("A file in Xet storage does not match the sha256 its shard gives")
            os.replace(tmp, target)
        except XetStorageError:
            raise
        except Exception as exc:  # hf_xet's own errors: the storage lacks a chunk, a xorb is damaged, ...
            raise XetStorageError(f"The Xet storage could not rebuild a file ({type(exc).__name__})") from exc
        finally:
            Path(tmp).unlink(missing_ok=True)
