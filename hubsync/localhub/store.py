"""The local Hub's persistent state: repositories, commits, refs and content-addressed blobs.

Layout under the root folder (everything is JSON or raw bytes, written whole):

    tokens.json                         {token: user}
    orgs.json                           {organization: [member, ...]}
    blobs/<sha256[:2]>/<sha256>         file contents, content-addressed
    repos/<type>s/<ns>/<name>/repo.json {"owner", "private", "createdAt"}
    repos/<type>s/<ns>/<name>/refs.json {"branches": {name: sha}, "tags": {name: sha}}
    repos/<type>s/<ns>/<name>/commits/<sha>.json
    repos/<type>s/<ns>/<name>/lfs.json [sha256, ...]: LFS objects uploaded (content checked) for it
    repos/<type>s/<ns>/<name>/purged.json [sha256, ...]: LFS objects permanently deleted from it (purge_lfs)

A commit is made visible by one `os.replace` of refs.json, after its blobs and its
commit record are on disk: a crash at any point leaves the repository as it was.

Everything under the root is the owner's alone: files 0600, folders 0700, whatever the umask (tokens.json
holds write tokens, and private repositories live here). A store that an older version left readable by
others is tightened when it is opened.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from hubsync.core.paths import display_path
from hubsync.core.repo_id import REPO_PART, is_repo_id
from hubsync.files import git_blob_id, write_file_atomic

from . import validation
from .xet_storage import XetFile, XetStorage, XetStorageError

REPO_TYPES = ("model", "dataset", "space")
_NAME_RE = re.compile(REPO_PART)  # a user: a namespace; fullmatch
_SHA_RE = re.compile(r"^[0-9a-f]{40}\Z")
_SHA_PREFIX_RE = re.compile(r"^[0-9a-f]{7,40}\Z")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_.-]{8,200}")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

INITIAL_GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()


class StoreError(Exception):
    """A request the store refuses; `status` and `code` say how the Hub would answer."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def not_found_repo(repo_id: str) -> StoreError:
    return StoreError(404, "RepoNotFound", f"Repository not found: {repo_id}")


def not_found_revision(revision: str) -> StoreError:
    return StoreError(404, "RevisionNotFound", f"Invalid rev id: {revision}")


def bad_request(message: str) -> StoreError:
    return StoreError(400, "BadRequest", message)


def purged_object(path: str) -> StoreError:
    """What a download of a file whose LFS object was permanently deleted (`Store.purge_lfs`) answers."""
    return StoreError(404, "EntryNotFound", f"The LFS object of {path} was permanently deleted from this repository")


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def is_lfs(path: str, size: int, sample: bytes) -> bool:
    """The local Hub's rule for which files are stored through LFS: every file the Hub would refuse as a regular
    one (validation.regular_file_error) is LFS, and a few more."""
    return path.endswith(LFS_SUFFIXES) or size >= LFS_SIZE_THRESHOLD or validation.looks_binary(sample)


# Names that git acts on inside a work tree, or that the client itself refuses at any depth
# (huggingface_hub FORBIDDEN_FOLDERS: .git and .cache). .gitattributes and .gitignore are ordinary on the Hub.
_FORBIDDEN_PARTS = frozenset({".git", ".cache", ".gitmodules"})
# Code points HFS+ ignores in names (git's utf8.c, is_hfs_dotgit): ".g\u200cit" is ".git" on macOS.
_IGNORABLE = dict.fromkeys([*range(0x200C, 0x2010), *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF])
_SHORT_NAME_RE = re.compile(r"git~[0-9]+|gi7eba~[0-9]+|gitmod~[0-9]+")  # NTFS 8.3 names of .git, .gitmodules
MAX_PATH_BYTES = 4096
MAX_PART_BYTES = 255


def forbidden_part(part: str) -> bool:
    """Whether a path part names .git, .gitmodules or .cache on some file system: any case (macOS, Windows),
    trailing dots and spaces or an NTFS stream (`.git::$INDEX_ALLOCATION`) dropped (Windows), HFS+-ignored
    code points removed, 8.3 short names (`GIT~1`)."""
    name = part.translate(_IGNORABLE).split(":", 1)[0].rstrip(". ").casefold()
    return name in _FORBIDDEN_PARTS or _SHORT_NAME_RE.fullmatch(name) is not None


def check_path_in_repo(path: str) -> str:
    """Refuse file paths that are empty, absolute or too long, climb out of the repository, hold control
    characters, backslashes or text that is not UTF-8, or name something git acts on (`.git`) at any depth."""
    parts = path.split("/")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape
        encoded = b""
    if (
        not encoded
        or len(encoded) > MAX_PATH_BYTES
        or "\\" in path
        or re.search(r"[\x00-\x1f\x7f-\x9f]", path)
        or any(p in ("", ".", "..") or len(p.encode()) > MAX_PART_BYTES for p in parts)
        or any(forbidden_part(p) for p in parts)
    ):
        raise bad_request(f"Invalid path in repository: {path!r}")
    return path


def check_ref_name(name: str, kind: str = "branch") -> str:
    """The branch (or tag) name `name` stands for (`refs/heads/x` is `x`); 400 when the Hub refuses it."""
    checked = validation.ref_name(name, kind)
    if checked is None:
        raise bad_request(validation.ref_name_error(name, kind))
    return checked


def check_repo_name(repo_id: str) -> tuple[str, str]:
    if not is_repo_id(repo_id):
        raise bad_request(f"Invalid repository id: {repo_id!r} (expected 'namespace/name')")
    namespace, name = repo_id.split("/")
    return namespace, name


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    lfs: bool
    oid: str  # git blob id: of the content, or of the LFS pointer for LFS files
    xet_hash: str | None = None  # an LFS file uploaded through Xet: its Xet hash (its bytes lie in Xet storage)

    def to_json(self) -> dict[str, Any]:
        data = {"size": self.size, "sha256": self.sha256, "lfs": self.lfs, "oid": self.oid}
        return data if self.xet_hash is None else {**data, "xetHash": self.xet_hash}

    @classmethod
    def from_json(cls, path: str, data: dict[str, Any]) -> FileEntry:
        return cls(path, data["size"], data["sha256"], data["lfs"], data["oid"], data.get("xetHash"))

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))


@dataclass(frozen=True)
class Commit:
    id: str
    parents: tuple[str, ...]
    title: str
    message: str
    date: str
    author: str
    files: dict[str, FileEntry]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parents": list(self.parents),
            "title": self.title,
            "message": self.message,
            "date": self.date,
            "author": self.author,
            "files": {p: e.to_json() for p, e in sorted(self.files.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Commit:
        return cls(
            id=data["id"],
            parents=tuple(data["parents"]),
            title=data["title"],
            message=data["message"],
            date=data["date"],
            author=data["author"],
            files={p: FileEntry.from_json(p, e) for p, e in data["files"].items()},
        )


@dataclass(frozen=True)
class LfsFile:
    """One LFS object of a repository, as `HfApi.list_lfs_files` lists it: `file_oid` (the git blob id of its
    pointer) names it for `permanently_delete_lfs_files`; where and when it first appeared."""

    file_oid: str
    sha256: str
    size: int
    pushed_at: str
    filename: str
    xet_hash: str | None

    def to_json(self) -> dict[str, Any]:
        data = {
            "fileOid": self.file_oid,
            "oid": self.sha256,
            "size": self.size,
            "pushedAt": self.pushed_at,
            "filename": self.filename,
            "ref": None,
        }
        return data if self.xet_hash is None else {**data, "xetHash": self.xet_hash}


@dataclass(frozen=True)
class RepoMeta:
    repo_type: str
    repo_id: str
    owner: str
    private: bool
    created_at: str


# Operations of a commit, as the NDJSON commit route receives them.
@dataclass(frozen=True)
class AddRegular:
    path: str
    content: bytes


@dataclass(frozen=True)
class AddStaged:
    """A regular file whose content already lies in `staged`, a file that `Store.staging` wrote: a commit
    request's files go to disk as they arrive instead of being held in memory."""

    path: str
    staged: Path
    size: int
    sha256: str
    oid: str


@dataclass(frozen=True)
class AddLfs:
    path: str
    sha256: str
    size: int | None


@dataclass(frozen=True)
class Delete:
    path: str
    folder: bool


CommitOp = AddRegular | AddStaged | AddLfs | Delete


def _check_regular(op: AddRegular | AddStaged) -> None:
    """400 for a file added as a regular (git) file that the Hub wants through LFS/Xet."""
    if isinstance(op, AddRegular):
        size, head = len(op.content), op.content[: validation.BINARY_SNIFF]
    else:
        with op.staged.open("rb") as f:
            size, head = op.size, f.read(validation.BINARY_SNIFF)
    if problem := validation.regular_file_error(op.path, size, head):
        raise bad_request(problem)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


FILE_MODE = 0o600
FOLDER_MODE = 0o700


def make_folders(path: Path) -> None:
    """Create `path` and its missing parents, each 0700 whatever the umask."""
    missing = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        if probe == probe.parent:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=FOLDER_MODE)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue
        folder.chmod(FOLDER_MODE)  # mkdir's mode is masked by the umask, which may also take the owner's bits


def private_temp_dir(parent: Path, prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    path.chmod(FOLDER_MODE)  # mkdtemp asks for 0700, less what the umask takes
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write `path` whole, 0600, through a temp file beside it."""
    make_folders(path.parent)
    write_file_atomic(path, data, mode=FILE_MODE)


def check_root(root: Path) -> None:
    """StoreError, before anything is made, when another account could read or replace what the store keeps: a
    root of theirs, or one in a folder anyone may write to (they could rename it and put another in its place)."""
    if not hasattr(os, "getuid"):
        return
    shown = display_path(root)
    if root.is_dir() and root.lstat().st_uid != os.getuid():
        raise StoreError(403, None, f"--root {shown} belongs to another account: give a folder of your own")
    parent = root.resolve().parent.lstat()
    if parent.st_mode & 0o002 and not parent.st_mode & stat.S_ISVTX:
        raise StoreError(403, None, f"--root {shown} lies in a folder anyone may write to: give a folder of your own")


def tighten(root: Path) -> int:
    """Make the store's own entries under `root` 0600 (files) and 0700 (folders); the number changed.

    Only what the store writes is touched (the root, tokens.json, orgs.json, blobs/, repos/): --root may be a
    folder that holds other things too. Links are left alone (never followed)."""
    changed = 0
    uid = os.getuid() if hasattr(os, "getuid") else None

    def fix(path: Path, mode: int) -> None:
        nonlocal changed
        st = path.lstat()
        if uid is not None and st.st_uid != uid:  # its owner could still replace tokens.json or add to repos/
            raise StoreError(
                403,
                None,
                f"--root {display_path(root)} holds entries of another account, who could read or change "
                "the local Hub's tokens and repositories: give a folder of your own",
            )
        if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) == mode:
            return
        path.chmod(mode)
        changed += 1

    fix(root, FOLDER_MODE)
    if (root / "tokens.json").exists():
        fix(root / "tokens.json", FILE_MODE)
    if (root / "orgs.json").exists():
        fix(root / "orgs.json", FILE_MODE)
    for top in ("blobs", "repos"):
        for folder, _dirs, files in os.walk(root / top):
            fix(Path(folder), FOLDER_MODE)
            for name in files:
                fix(Path(folder) / name, FILE_MODE)
    return changed


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


class Store:
    """All the local Hub's state under one root folder. Thread-safe."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()  # what it hands out (Xet storage addresses) must not depend on the cwd
        check_root(self.root)
        make_folders(self.root / "blobs")
        make_folders(self.root / "repos")
        self.tightened = tighten(self.root)  # entries an older version left readable by others
        self._lock = threading.RLock()
        self._tokens_path = self.root / "tokens.json"
        self.xet = XetStorage(self.root / "xet")
        self._orgs_path = self.root / "orgs.json"

    # -- users and tokens ------------------------------------------------------------
    def tokens(self) -> dict[str, str]:
        try:
            data = json.loads(self._tokens_path.read_text())
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(500, None, f"{self._tokens_path.name} under the root is damaged ({exc})") from exc
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise StoreError(500, None, f"{self._tokens_path.name} under the root is damaged (not token: user)")
        return data

    def user_for_token(self, token: str) -> str | None:
        return self.tokens().get(token)

    def ensure_user(self, user: str, token: str | None = None) -> str:
        """Return a token for `user`: `token` when given (registered if new), else the stored or a new one."""
        if not _NAME_RE.fullmatch(user):
            raise bad_request(f"Invalid user name: {user!r}")
        if user in self.orgs():
            raise bad_request(f"{user!r} is an organization, not a user")
        if token is not None and not _TOKEN_RE.fullmatch(token):
            raise bad_request("A token is 8 to 200 letters, digits, '_', '-' or '.'")
        with self._lock:
            tokens = self.tokens()
            if token is None:
                token = next((t for t, u in tokens.items() if u == user), None) or f"hf_{secrets.token_hex(16)}"
            elif tokens.get(token, user) != user:
                raise bad_request("That token already belongs to another user")
            if tokens.get(token) != user:
                tokens[token] = user
                write_atomic(self._tokens_path, _dump(tokens))
            return token

    # -- organizations -----------------------------------------------------------------
    def orgs(self) -> dict[str, list[str]]:
        """Every organization and its members."""
        try:
            data = json.loads(self._orgs_path.read_text())
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(500, None, f"{self._orgs_path.name} under the root is damaged ({exc})") from exc
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(m, str) for m in v) for k, v in data.items()
        ):
            raise StoreError(500, None, f"{self._orgs_path.name} under the root is damaged (not org: [members])")
        return data

    def create_org(self, org: str, members: Iterable[str] = ()) -> None:
        """Create organization `org` (kept when it exists) and make `members`, users, members of it."""
        if not _NAME_RE.fullmatch(org):
            raise bad_request(f"Invalid organization name: {org!r}")
        members = list(members)
        with self._lock:
            if org in self.tokens().values():
                raise bad_request(f"{org!r} is a user, not an organization")
            for member in members:
                if not _NAME_RE.fullmatch(member):
                    raise bad_request(f"Invalid user name: {member!r}")
            orgs = self.orgs()
            if member_orgs := [m for m in members if m in orgs or m == org]:
                raise bad_request(f"{member_orgs[0]!r} is an organization, not a user")
            known = orgs.get(org, [])
            orgs[org] = known + [m for m in dict.fromkeys(members) if m not in known]
            write_atomic(self._orgs_path, _dump(orgs))

    def orgs_of(self, user: str) -> list[str]:
        """The organizations `user` is a member of, by name."""
        return sorted(org for org, members in self.orgs().items() if user in members)

    def may_write(self, user: str | None, namespace: str) -> bool:
        """Whether `user` writes in `namespace`: their own, or an organization they are a member of."""
        return user is not None and (user == namespace or user in self.orgs().get(namespace, ()))

    # -- blobs -------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        if not _SHA256_RE.match(sha256):
            raise bad_request(f"Invalid sha256: {sha256!r}")
        return self.root / "blobs" / sha256[:2] / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        try:
            st = self.blob_path(sha256).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def put_blob(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha256, len(data)):
            write_atomic(self.blob_path(sha256), data)
        return sha256

    def put_blob_stream(self, sha256: str, size: int, chunks: Iterable[bytes]) -> None:
        """Store an uploaded object, checking its size and sha256 before it is kept."""
        target = self.blob_path(sha256)
        make_folders(target.parent)
        digest = hashlib.sha256()
        written = 0
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    written += len(chunk)
                    if written > size:
                        raise bad_request(f"Upload is larger than the announced {size} bytes")
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if written != size:
                raise bad_request(f"Upload has {written} bytes, {size} were announced")
            if digest.hexdigest() != sha256:
                raise bad_request("Uploaded content does not match its sha256")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextmanager
    def staging(self) -> Iterator[Callable[[str, bytes], AddStaged]]:
        """`stage(path, content)` writes a file of a commit being received to a private folder and returns the
        operation that adds it; whatever `apply_commit` did not keep is removed when the block ends."""
        folder = private_temp_dir(self.root / "blobs", ".commit-")
        count = 0

        def stage(path: str, content: bytes) -> AddStaged:
            nonlocal count
            count += 1
            staged = folder / str(count)
            write_atomic(staged, content)
            sha256 = hashlib.sha256(content).hexdigest()
            return AddStaged(path, staged, len(content), sha256, git_blob_id(content))

        try:
            yield stage
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def open_blob(self, sha256: str) -> IO[bytes]:
        return self.blob_path(sha256).open("rb")

    def ensure_blob(self, repo_type: str, repo_id: str, entry: FileEntry) -> None:
        """Make sure the blob of a file of the repository lies in the store: a file uploaded through Xet is
        rebuilt from the repository's Xet storage the first time a client downloads it without Xet."""
        if entry.lfs and entry.sha256 in self.purged(repo_type, repo_id):
            raise purged_object(entry.path)
        if entry.xet_hash is None:
            return
        if self.has_blob(entry.sha256, entry.size) and entry.sha256 in self.lfs_objects(repo_type, repo_id):
            return  # checked before (or uploaded through git-LFS as well)
        # Rebuilt from this repository's own storage even when the blob store holds these bytes: its claim is
        # checked, and a shard claiming another repository's file gets nothing.
        file = XetFile(entry.xet_hash, entry.size, entry.sha256)
        try:
            self.xet.rebuild(repo_type, repo_id, file, self.blob_path(entry.sha256))
        except XetStorageError as exc:
            raise StoreError(502, None, str(exc)) from exc
        self.grant_lfs(repo_type, repo_id, entry.sha256)

    # -- repositories ------------------------------------------------------------------
    def _repo_dir(self, repo_type: str, repo_id: str) -> Path:
        if repo_type not in REPO_TYPES:
            raise bad_request(f"Invalid repo type: {repo_type!r}")
        ns, name = check_repo_name(repo_id)
        return self.root / "repos" / f"{repo_type}s" / ns / name

    def repo(self, repo_type: str, repo_id: str) -> RepoMeta | None:
        try:
            data = json.loads((self._repo_dir(repo_type, repo_id) / "repo.json").read_text())
        except FileNotFoundError:
            return None
        return RepoMeta(repo_type, repo_id, data["owner"], data["private"], data["createdAt"])

    def list_repos(self) -> Iterator[RepoMeta]:
        for type_dir in sorted((self.root / "repos").iterdir()):
            for meta_file in sorted(type_dir.glob("*/*/repo.json")):
                repo_id = f"{meta_file.parent.parent.name}/{meta_file.parent.name}"
                meta = self.repo(type_dir.name[:-1], repo_id)
                if meta is not None:
                    yield meta

    def create_repo(self, repo_type: str, repo_id: str, owner: str, private: bool) -> RepoMeta:
        with self._lock:
            repo_dir = self._repo_dir(repo_type, repo_id)
            if self.repo(repo_type, repo_id) is not None:
                raise StoreError(409, None, f"You already created this {repo_type} repo: {repo_id}")
            staging = private_temp_dir(self.root / "repos", ".new-")
            try:
                now = _now()
                gitattributes = self.put_blob(INITIAL_GITATTRIBUTES)
                entry = FileEntry(
                    ".gitattributes",
                    len(INITIAL_GITATTRIBUTES),
                    gitattributes,
                    False,
                    git_blob_id(INITIAL_GITATTRIBUTES),
                )
                commit = self._make_commit((), "initial commit", "", owner, {entry.path: entry}, now)
                write_atomic(staging / "commits" / f"{commit.id}.json", _dump(commit.to_json()))
                write_atomic(staging / "refs.json", _dump({"branches": {"main": commit.id}, "tags": {}}))
                meta = {"owner": owner, "private": private, "createdAt": now}
                write_atomic(staging / "repo.json", _dump(meta))
                if repo_dir.exists():  # leftovers of a repository deleted or created halfway
                    shutil.rmtree(repo_dir)
                make_folders(repo_dir.parent)
                os.replace(staging, repo_dir)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            return RepoMeta(repo_type, repo_id, owner, private, now)

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self._lock:
            repo_dir = self._repo_dir(repo_type, repo_id)
            if self.repo(repo_type, repo_id) is None:
                raise not_found_repo(repo_id)
            # Renaming first makes the deletion atomic for readers.
            graveyard = private_temp_dir(self.root / "repos", ".deleted-")
            os.replace(repo_dir, graveyard / "repo")
            xet_folder = self.xet.folder(repo_type, repo_id)
            if xet_folder.exists():
                os.replace(xet_folder, graveyard / "xet")
            shutil.rmtree(graveyard, ignore_errors=True)

    def set_private(self, repo_type: str, repo_id: str, private: bool) -> None:
        with self._lock:
            meta = self._require(repo_type, repo_id)
            data = {"owner": meta.owner, "private": private, "createdAt": meta.created_at}
            write_atomic(self._repo_dir(repo_type, repo_id) / "repo.json", _dump(data))

    def _require(self, repo_type: str, repo_id: str) -> RepoMeta:
        meta = self.repo(repo_type, repo_id)
        if meta is None:
            raise not_found_repo(repo_id)
        return meta

    # -- which LFS objects a repository may use -----------------------------------------
    def lfs_objects(self, repo_type: str, repo_id: str) -> set[str]:
        """The LFS objects a repository may reference and serve: those uploaded for it, and those its commits
        hold. Blobs are shared by content, so without this a user who knew a sha256 could commit, or download,
        the content of another user's private file."""
        repo_dir = self._repo_dir(repo_type, repo_id)
        try:
            granted = set(json.loads((repo_dir / "lfs.json").read_text()))
        except FileNotFoundError:
            granted = set()
        for record in (repo_dir / "commits").glob("*.json"):
            files = json.loads(record.read_text())["files"].values()
            granted.update(e["sha256"] for e in files if e["lfs"] and not e.get("xetHash"))
        return granted - self.purged(
            repo_type, repo_id
        )  # not the files uploaded through Xet: their bytes are checked first (ensure_blob)

    def _uploaded_through_xet(self, repo_type: str, repo_id: str, ops: list[CommitOp]) -> dict[str, XetFile]:
        """The LFS files of a commit that came through Xet, as the repository's Xet storage describes them
        (sha256 -> the file; XetStorage.described). A file the repository holds through git-LFS is not looked
        for."""
        found: dict[str, XetFile] = {}
        wanted = {op.sha256 for op in ops if isinstance(op, AddLfs) and _SHA256_RE.match(op.sha256)}
        if not wanted or self.repo(repo_type, repo_id) is None:
            return found
        held = self.lfs_objects(repo_type, repo_id)
        for sha256 in sorted(wanted):
            if sha256 in held and self.has_blob(sha256):
                continue
            # One permanently deleted lost its chunk data (XetStorage.drop_files): described again only once a
            # new upload brought it back.
            file = self.xet.described(repo_type, repo_id, sha256)
            if file is not None:
                found[sha256] = file
        return found

    def xet_entry(self, repo_type: str, repo_id: str, sha256: str) -> FileEntry | None:
        """A file of the repository's commits with this sha256 that was uploaded through Xet, if any (none once
        permanently deleted)."""
        if sha256 in self.purged(repo_type, repo_id):
            return None
        for record in (self._repo_dir(repo_type, repo_id) / "commits").glob("*.json"):
            for path, data in json.loads(record.read_text())["files"].items():
                if data["sha256"] == sha256 and data.get("xetHash"):
                    return FileEntry.from_json(path, data)
        return None

    def grant_lfs(self, repo_type: str, repo_id: str, sha256: str) -> None:
        """Record that `sha256` was uploaded, content checked, for this repository (an object permanently deleted
        from it comes back: the commits that name it serve it again). Under the store's lock, as `purge_lfs`:
        a blob is either granted before a purge looks for its holders, or found gone here."""
        with self._lock:
            self._require(repo_type, repo_id)
            if not self.has_blob(sha256):  # a permanent deletion elsewhere took it between upload and grant
                raise StoreError(409, None, f"LFS object {sha256} was deleted while it was uploaded: upload it again")
            purged = self.purged(repo_type, repo_id)
            if sha256 in purged:
                write_atomic(self._repo_dir(repo_type, repo_id) / "purged.json", _dump(sorted(purged - {sha256})))
            path = self._repo_dir(repo_type, repo_id) / "lfs.json"
            try:
                granted = set(json.loads(path.read_text()))
            except FileNotFoundError:
                granted = set()
            if sha256 not in granted:
                write_atomic(path, _dump(sorted(granted | {sha256})))

    # -- LFS files: listing, permanent deletion, storage used -----------------------------
    def purged(self, repo_type: str, repo_id: str) -> set[str]:
        """The LFS objects (sha256) permanently deleted from the repository: its commit records may still name
        them (deleted branches, a deletion without history rewrite), but it serves and lists them no more."""
        try:
            return set(json.loads((self._repo_dir(repo_type, repo_id) / "purged.json").read_text()))
        except FileNotFoundError:
            return set()

    def _records(self, repo_type: str, repo_id: str) -> list[Commit]:
        """Every commit record of the repository, reachable from a ref or not, oldest first."""
        records = [
            Commit.from_json(json.loads(p.read_text()))
            for p in (self._repo_dir(repo_type, repo_id) / "commits").glob("*.json")
        ]
        return sorted(records, key=lambda c: (c.date, c.id))

    def lfs_files(self, repo_type: str, repo_id: str) -> list[LfsFile]:
        """One entry per LFS object of any commit record of the repository, not permanently deleted: where it
        first appeared (the earliest commit holding it, a path it has there). Deleted branches leave their
        commits, and so their objects, behind: that is why deleting a branch frees no storage on the Hub.
        Ordered by that date, then sha256."""
        self._require(repo_type, repo_id)
        purged = self.purged(repo_type, repo_id)
        found: dict[str, LfsFile] = {}
        for commit in self._records(repo_type, repo_id):
            for path, entry in sorted(commit.files.items()):
                if entry.lfs and entry.sha256 not in purged and entry.sha256 not in found:
                    found[entry.sha256] = LfsFile(
                        entry.oid, entry.sha256, entry.size, commit.date, path, entry.xet_hash
                    )
        return sorted(found.values(), key=lambda f: (f.pushed_at, f.sha256))

    def used_storage(self, repo_type: str, repo_id: str) -> int:
        """The bytes the repository stores: its LFS objects (as `lfs_files` lists them) and the regular files of
        all its commit records, each distinct content once."""
        sizes = {f.sha256: f.size for f in self.lfs_files(repo_type, repo_id)}
        for commit in self._records(repo_type, repo_id):
            sizes.update((e.sha256, e.size) for e in commit.files.values() if not e.lfs)
        return sum(sizes.values())

    def purge_lfs(self, repo_type: str, repo_id: str, file_oids: list[str], rewrite_history: bool) -> list[str]:
        """Permanently delete the LFS objects `file_oids` (their pointers' git blob ids, as `lfs_files` gives
        them) from the repository; the sha256 of each. All are checked first: one that is not an LFS file of
        the repository is a 404 and nothing is deleted.

        With `rewrite_history`, the commits reachable from its branches and tags that hold one are written again
        without it (new ids; the refs move in one replace of refs.json), as the Hub rewrites history. Then the
        objects are marked deleted (purged.json: from here on nothing serves them, whatever commit names them),
        their grant is dropped (lfs.json), the chunk data only they used leaves the Xet storage, and their
        bytes leave blobs/ unless another repository still holds them. Each step is one atomic replace and the
        state between two is whole: a crash leaves either the old repository, or the new one with some garbage."""
        with self._lock:
            listed = {f.file_oid: f for f in self.lfs_files(repo_type, repo_id)}
            if missing := [oid for oid in file_oids if oid not in listed]:
                raise StoreError(404, None, f"LFS file {missing[0]} is not in {repo_id}")
            doomed = {listed[oid].sha256 for oid in file_oids}
            if not doomed:
                return []
            repo_dir = self._repo_dir(repo_type, repo_id)
            if rewrite_history:
                refs = self.refs(repo_type, repo_id)
                rewritten = self._rewrite_without(repo_type, repo_id, refs, doomed)
                if rewritten:
                    moved = {kind: {n: rewritten.get(s, s) for n, s in named.items()} for kind, named in refs.items()}
                    self._write_refs(repo_type, repo_id, moved)
            write_atomic(repo_dir / "purged.json", _dump(sorted(self.purged(repo_type, repo_id) | doomed)))
            lfs_json = repo_dir / "lfs.json"
            if lfs_json.exists():
                granted = set(json.loads(lfs_json.read_text()))
                if granted & doomed:
                    write_atomic(lfs_json, _dump(sorted(granted - doomed)))
            self._drop_xet_data(repo_type, repo_id, doomed)
            for sha256 in sorted(doomed - self._held_elsewhere(repo_type, repo_id, doomed)):
                self.blob_path(sha256).unlink(missing_ok=True)
            return sorted(doomed)

    def _rewrite_without(
        self, repo_type: str, repo_id: str, refs: dict[str, dict[str, str]], doomed: set[str]
    ) -> dict[str, str]:
        """Write again, without the files whose content is in `doomed`, every commit reachable from `refs` that
        holds one or descends from one that does; old id -> new id. The records are on disk when it returns;
        the refs are the caller's to move."""
        new_ids: dict[str, str] = {}
        done: set[str] = set()
        repo_dir = self._repo_dir(repo_type, repo_id)
        for start in sorted({sha for named in refs.values() for sha in named.values()}):
            stack = [start]
            while stack:  # parents before children, without recursion (histories are long)
                sha = stack[-1]
                if sha in done:
                    stack.pop()
                    continue
                commit = self.commit(repo_type, repo_id, sha)
                waiting = [p for p in commit.parents if p not in done]
                if waiting:
                    stack.extend(waiting)
                    continue
                stack.pop()
                done.add(sha)
                files = {p: e for p, e in commit.files.items() if not (e.lfs and e.sha256 in doomed)}
                parents = tuple(new_ids.get(p, p) for p in commit.parents)
                if len(files) == len(commit.files) and parents == commit.parents:
                    continue
                new = self._make_commit(parents, commit.title, commit.message, commit.author, files, commit.date)
                write_atomic(repo_dir / "commits" / f"{new.id}.json", _dump(new.to_json()))
                new_ids[sha] = new.id
        return new_ids

    def _held_elsewhere(self, repo_type: str, repo_id: str, sha256s: set[str]) -> set[str]:
        """Which of `sha256s` another repository still holds (a commit of its names it, not purged there, or it
        was granted to it): blobs are shared by content, and another repository's data stays."""
        held: set[str] = set()
        for meta in self.list_repos():
            if (meta.repo_type, meta.repo_id) == (repo_type, repo_id):
                continue
            other = self._repo_dir(meta.repo_type, meta.repo_id)
            purged = self.purged(meta.repo_type, meta.repo_id)
            with suppress(FileNotFoundError):
                held |= set(json.loads((other / "lfs.json").read_text())) & sha256s
            for record in (other / "commits").glob("*.json"):
                files = json.loads(record.read_text())["files"].values()
                held |= {e["sha256"] for e in files if e["sha256"] in sha256s and e["sha256"] not in purged}
        return held

    def _drop_xet_data(self, repo_type: str, repo_id: str, doomed: set[str]) -> None:
        """Remove from the repository's Xet storage the chunk data of the files being deleted, so that hf_xet
        can rebuild them no more."""
        try:
            self.xet.drop_files(repo_type, repo_id, doomed)
        except OSError as exc:
            raise StoreError(500, None, f"The Xet storage could not drop a deleted file's data ({exc})") from exc

    # -- refs and commits --------------------------------------------------------------
    def refs(self, repo_type: str, repo_id: str) -> dict[str, dict[str, str]]:
        self._require(repo_type, repo_id)
        data: dict[str, dict[str, str]] = json.loads((self._repo_dir(repo_type, repo_id) / "refs.json").read_text())
        return data

    def _write_refs(self, repo_type: str, repo_id: str, refs: dict[str, dict[str, str]]) -> None:
        write_atomic(self._repo_dir(repo_type, repo_id) / "refs.json", _dump(refs))

    def commit(self, repo_type: str, repo_id: str, sha: str) -> Commit:
        path = self._repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json"
        try:
            return Commit.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise not_found_revision(sha) from None

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> str:
        """The commit sha a branch, tag, `refs/heads/..`, `refs/tags/..` or full sha names."""
        refs = self.refs(repo_type, repo_id)
        if revision.startswith("refs/heads/"):
            sha = refs["branches"].get(revision[len("refs/heads/") :])
        elif revision.startswith("refs/tags/"):
            sha = refs["tags"].get(revision[len("refs/tags/") :])
        else:
            sha = refs["branches"].get(revision) or refs["tags"].get(revision)
            if sha is None and _SHA_PREFIX_RE.match(revision):
                sha = self._commit_of_prefix(repo_type, repo_id, revision)
        if sha is None:
            raise not_found_revision(revision)
        return sha

    def _commit_of_prefix(self, repo_type: str, repo_id: str, prefix: str) -> str | None:
        """The one commit whose id starts with `prefix` (7 to 40 hex digits, as the Hub resolves them); None when
        no commit or several do."""
        commits = self._repo_dir(repo_type, repo_id) / "commits"
        if len(prefix) == 40:
            return prefix if (commits / f"{prefix}.json").exists() else None
        found = [p.stem for p in commits.glob(f"{prefix}*.json") if _SHA_RE.match(p.stem)]
        return found[0] if len(found) == 1 else None

    def history(self, repo_type: str, repo_id: str, sha: str) -> list[Commit]:
        """The commits reachable from `sha`, newest first (first parents only)."""
        out: list[Commit] = []
        current: str | None = sha
        while current is not None:
            commit = self.commit(repo_type, repo_id, current)
            out.append(commit)
            current = commit.parents[0] if commit.parents else None
        return out

    def create_branch(self, repo_type: str, repo_id: str, branch: str, starting_point: str | None) -> None:
        with self._lock:
            branch = check_ref_name(branch, "branch")
            refs = self.refs(repo_type, repo_id)
            if branch in refs["branches"]:
                raise StoreError(409, None, f"Reference already exists: refs/heads/{branch}")
            sha = self.resolve(repo_type, repo_id, starting_point or "main")
            refs["branches"][branch] = sha
            self._write_refs(repo_type, repo_id, refs)

    def delete_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        with self._lock:
            refs = self.refs(repo_type, repo_id)
            if branch == "main":
                raise bad_request("Cannot delete the main branch")
            if branch not in refs["branches"]:
                raise not_found_revision(branch)
            del refs["branches"][branch]
            self._write_refs(repo_type, repo_id, refs)

    def create_tag(self, repo_type: str, repo_id: str, tag: str, revision: str) -> None:
        with self._lock:
            tag = check_ref_name(tag, "tag")
            sha = self.resolve(repo_type, repo_id, revision)
            refs = self.refs(repo_type, repo_id)
            if tag in refs["tags"]:
                raise StoreError(409, None, f"Tag already exists: {tag}")
            refs["tags"][tag] = sha
            self._write_refs(repo_type, repo_id, refs)

    def delete_tag(self, repo_type: str, repo_id: str, tag: str) -> None:
        with self._lock:
            refs = self.refs(repo_type, repo_id)
            if tag not in refs["tags"]:
                raise not_found_revision(tag)
            del refs["tags"][tag]
            self._write_refs(repo_type, repo_id, refs)

    def _make_commit(
        self,
        parents: tuple[str, ...],
        title: str,
        message: str,
        author: str,
        files: dict[str, FileEntry],
        date: str,
    ) -> Commit:
        body = {
            "parents": list(parents),
            "title": title,
            "message": message,
            "author": author,
            "date": date,
            "files": {p: e.to_json() for p, e in sorted(files.items())},
            "nonce": secrets.token_hex(8),
        }
        sha = hashlib.sha1(_dump(body)).hexdigest()
        return Commit(sha, parents, title, message, date, author, files)

    def apply_commit(
        self,
        repo_type: str,
        repo_id: str,
        branch: str,
        ops: list[CommitOp],
        title: str,
        message: str,
        author: str,
        parent_commit: str | None,
    ) -> Commit:
        """Apply `ops` to the head of `branch` as one new commit: all of it lands, or none."""
        xet_files = self._uploaded_through_xet(repo_type, repo_id, ops)  # slow (files are rebuilt): before the lock
        with self._lock:
            refs = self.refs(repo_type, repo_id)
            head = refs["branches"].get(branch)
            if head is None:
                check_ref_name(branch, "branch")  # a name the Hub refuses is a bad request, not a missing branch
                raise not_found_revision(branch)
            if parent_commit is not None and parent_commit != head:
                raise StoreError(
                    412,
                    None,
                    f"A commit has happened since. Please refresh and try again. (parent {parent_commit} "
                    f"is not the head of {branch}, {head})",
                )
            files = dict(self.commit(repo_type, repo_id, head).files)
            pending: dict[str, bytes | Path] = {}
            lfs_objects: set[str] | None = None
            for op in ops:
                if isinstance(op, Delete):
                    prefix = op.path.rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)] if op.folder else [op.path]
                    if not op.folder and op.path not in files:
                        raise StoreError(404, "EntryNotFound", f"A file with this name doesn't exist: {op.path}")
                    for p in doomed:
                        files.pop(p, None)
                    continue
                check_path_in_repo(op.path)
                if any(p.startswith(op.path + "/") for p in files):
                    raise bad_request(f"A folder with this name already exists: {op.path}")
                parents = op.path.split("/")[:-1]
                for i in range(1, len(parents) + 1):
                    if "/".join(parents[:i]) in files:
                        raise bad_request(f"A file with this name already exists: {'/'.join(parents[:i])}")
                if isinstance(op, AddRegular | AddStaged):
                    _check_regular(op)
                if isinstance(op, AddRegular):
                    sha256 = hashlib.sha256(op.content).hexdigest()  # stored below, once the whole commit is valid
                    pending[sha256] = op.content
                    files[op.path] = FileEntry(op.path, len(op.content), sha256, False, git_blob_id(op.content))
                elif isinstance(op, AddStaged):
                    pending[op.sha256] = op.staged
                    files[op.path] = FileEntry(op.path, op.size, op.sha256, False, op.oid)
                else:
                    # An LFS file: uploaded through git-LFS (a blob granted to the repository), or through Xet
                    # (described by a shard in the repository's Xet storage: _uploaded_through_xet).
                    if lfs_objects is None:
                        lfs_objects = self.lfs_objects(repo_type, repo_id)
                    found = xet_files.get(op.sha256)
                    xet_hash: str | None = None
                    if found is not None:
                        size, xet_hash = found.size, found.xet_hash
                    elif self.has_blob(op.sha256) and op.sha256 in lfs_objects:
                        size = self.blob_path(op.sha256).stat().st_size
                    elif (
                        held := next((e for e in files.values() if e.sha256 == op.sha256 and e.xet_hash), None)
                    ) and op.sha256 not in self.purged(repo_type, repo_id):
                        size, xet_hash = held.size, held.xet_hash  # the branch holds it already, from Xet
                    else:
                        raise bad_request(f"LFS object {op.sha256} for {op.path} was never uploaded to {repo_id}")
                    if op.size is not None and op.size != size:
                        raise bad_request(f"LFS object {op.sha256} has {size} bytes, not {op.size}")
                    pointer = lfs_pointer(op.sha256, size)
                    files[op.path] = FileEntry(op.path, size, op.sha256, True, git_blob_id(pointer), xet_hash)
            if crowded := validation.crowded_folder_error(files):
                raise bad_request(crowded)
            kept = {e.sha256 for e in files.values()}
            for sha256, content in pending.items():  # a refused commit leaves no blob behind
                if sha256 not in kept or self.has_blob(sha256):
                    continue
                if isinstance(content, Path):
                    make_folders(self.blob_path(sha256).parent)
                    os.replace(content, self.blob_path(sha256))
                else:
                    self.put_blob(content)
            commit = self._make_commit((head,), title, message, author, files, _now())
            repo_dir = self._repo_dir(repo_type, repo_id)
            purged = self.purged(repo_type, repo_id)
            if revived := purged & {f.sha256 for f in xet_files.values()} & kept:  # uploaded again through Xet
                write_atomic(repo_dir / "purged.json", _dump(sorted(purged - revived)))
            write_atomic(repo_dir / "commits" / f"{commit.id}.json", _dump(commit.to_json()))
            refs["branches"][branch] = commit.id
            self._write_refs(repo_type, repo_id, refs)
            return commit
