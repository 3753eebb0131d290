"""The pull plan: which files of a revision to fetch, checked for safety, and where the checkpoint goes. Pure."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import DCP_DOCUMENT_RE, DCP_METADATA, STEP_DIGITS, checkpoint_name, has_weights
from .conversion import STATE_DOCUMENT_RE, is_resumable, pickled_state_name
from .errors import DamagedStateError, HostileListingError, NoCheckpointRevisionError, NotACheckpointRevisionError
from .remote_paths import check_remote_path, shown_remote_path
from .shards import index_name, listed_shards, shard_pattern

# Files of a revision that are the Hub's or hubsync's, not the checkpoint's.
NOT_CHECKPOINT = (".gitattributes", "model.sig")  # model.sig: the revision's signature (core/signing)
NOT_CHECKPOINT_DIRS = (".hubsync/",)
# The most files a revision may list for pull: a checkpoint has a few dozen, a sharded one some thousands.


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files
    git_oid: str  # the git blob id (of the content for regular files)
    xet_hash: str | None = None  # an LFS file the Hub keeps in Xet storage: hf_xet can download it


@dataclass(frozen=True)
class RebuiltFile:
    path: str  # optimizer.pt, rng_state.pth, ...
    document: RemoteFile  # optimizer.json
    tensors: tuple[RemoteFile, ...]  # optimizer.safetensors, or its shards optimizer-00001-of-00002.safetensors ...
    index: RemoteFile | None = None  # optimizer.safetensors.index.json, of the shards

    @property
    def sources(self) -> tuple[RemoteFile, ...]:
        """The files of the revision it is rebuilt from."""
        return (self.document, *self.tensors, *((self.index,) if self.index else ()))


@dataclass(frozen=True)
class RebuiltFolder:
    """An FSDP torch.distributed.checkpoint folder pull writes back (its .metadata and .distcp files) from dcp.json
    and, for each .distcp file, __<rank>_0.safetensors or its shards and their index."""

    folder: str  # pytorch_model_fsdp_0, optimizer_0
    document: RemoteFile  # <folder>/dcp.json
    tensors: tuple[RemoteFile, ...]  # <folder>/__<rank>_0.safetensors, -00001-of-0000N.safetensors, .index.json

    @property
    def ranks(self) -> dict[str, tuple[RemoteFile, ...]]:
        """Each .distcp file (__<rank>_0.distcp) and the files its tensors are in, in order (the index last)."""
        out: dict[str, list[RemoteFile]] = {}
        for t in sorted(self.tensors, key=lambda t: (t.path.endswith(".index.json"), t.path)):
            m = _DCP_TENSORS_RE.match(t.path)
            assert m is not None  # rebuilt_folders takes only those
            out.setdefault(f"{m['stem']}.distcp", []).append(t)
        return {name: tuple(files) for name, files in out.items()}

    @property
    def paths(self) -> tuple[str, ...]:
        """What pull writes: <folder>/.metadata and <folder>/__<rank>_0.distcp."""
        return (f"{self.folder}/{DCP_METADATA}", *(f"{self.folder}/{name}" for name in self.ranks))

    @property
    def like(self) -> dict[str, list[int]]:
        """Each .distcp file -> the sizes of the files its tensors are in (not the index), as encode_dcp's `like`."""
        return {
            name: [t.size for t in files if not t.path.endswith(".index.json")] for name, files in self.ranks.items()
        }


_DCP_TENSORS_RE = re.compile(
    r"^(?P<folder>[^/]+)/(?P<stem>__[0-9]{1,6}_[0-9]{1,6})"
    r"(?:\.safetensors|-[0-9]{5}-of-[0-9]{5}\.safetensors|\.safetensors\.index\.json)\Z"
)


@dataclass(frozen=True)
class PullPlan:
    repo_id: str
    revision: str  # as asked
    commit: str  # what it resolved to
    target: Path  # the checkpoint folder to create
    files: tuple[RemoteFile, ...]
    others: tuple[RemoteFile, ...] = ()  # what the revision lists besides: the Hub's, hubsync's (model.sig)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def rebuilt(self) -> tuple[RebuiltFile, ...]:
        """The training-state files pull writes from their pickle-free form (<name>.json + <name>.safetensors)."""
        by_path = {f.path: f for f in self.files}
        out = []
        for path, document in sorted(by_path.items()):
            stem = path.removesuffix(".json")
            if not STATE_DOCUMENT_RE.match(path):
                continue
            name = pickled_state_name(stem)
            assert name is not None  # STATE_DOCUMENT_RE names only the table's stems
            shards = listed_shards(stem, set(by_path)) or ()
            index = by_path.get(index_name(stem))
            if f"{stem}.safetensors" in by_path:  # shards beside it too: rebuild_state refuses both
                tensors = (by_path[f"{stem}.safetensors"], *(by_path[p] for p in shards))
                out.append(RebuiltFile(name, document, tensors, index))
            elif index is not None:
                out.append(RebuiltFile(name, document, tuple(by_path[p] for p in shards), index))
        return tuple(out)

    @property
    def rebuilt_folders(self) -> tuple[RebuiltFolder, ...]:
        """The FSDP folders pull writes back from their pickle-free form (dcp.json + safetensors)."""
        out = []
        for f in self.files:
            if DCP_DOCUMENT_RE.match(f.path):
                folder = f.path.rsplit("/", 1)[0]
                tensors = tuple(t for t in self.files if (m := _DCP_TENSORS_RE.match(t.path)) and m["folder"] == folder)
                out.append(RebuiltFolder(folder, f, tensors))
        return tuple(out)

    @property
    def written(self) -> tuple[RemoteFile, ...]:
        """The files of the revision that pull places as they are (not those it rebuilds training state from)."""
        sources = {f.path for r in self.rebuilt for f in r.sources}
        sources |= {f.path for r in self.rebuilt_folders for f in (r.document, *r.tensors)}
        return tuple(f for f in self.files if f.path not in sources)

    @property
    def resumable(self) -> bool:
        return is_resumable({f.path for f in self.files})

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "files": [{"path": f.path, "size": f.size} for f in self.files],
            "bytes": self.total_bytes,
            "resumable": self.resumable,
        }


def check_checkpoint_revision(repo_id: str, revision: str, paths: Sequence[str]) -> None:
    """Refuse to pull main (it holds the index of checkpoint revisions) or a revision without weights: what it
    would write is not a checkpoint that training can load or resume from."""
    if revision in ("main", "refs/heads/main"):
        raise NotACheckpointRevisionError(repo_id, revision, "main holds the index of checkpoint revisions")
    if not has_weights(paths):
        raise NotACheckpointRevisionError(repo_id, revision, "it holds no model weights")


def step_of(revision: str) -> int | None:
    """The number a revision's name ends with (checkpoint-1000, run-a/step-1000), None when it ends with none or
    with more digits than a step has."""
    m = re.search(rf"(?<![0-9])({STEP_DIGITS})\Z", revision)
    return int(m.group(1)) if m else None


def check_listing(entries: Sequence[RemoteFile], revision: str) -> None:
    """Refuse a tree listing no checkpoint has, which a Hub could send to make pull fail half-way: a path listed
    twice, or a file listed also as a folder of files (each path already checked on its own)."""
    paths: set[str] = set()
    for e in entries:
        if e.path in paths:
            raise HostileListingError(revision, f"the file {shown_remote_path(e.path)} twice")
        paths.add(e.path)
    for path in paths:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in paths:
                raise HostileListingError(
                    revision,
                    f"{shown_remote_path(folder)} both as a file and as a folder holding {shown_remote_path(path)}",
                )


def check_shards(paths: set[str], revision: str) -> None:
    """Refuse, before anything is fetched, training state whose tensors are split into shards (core/shards) when
    the revision lacks its index or one of its shards, or lists shards that disagree on how many there are: a
    state file's (optimizer.json), or an FSDP folder's .distcp file's (<folder>/__<rank>_0)."""
    stems = {p.removesuffix(".json"): p for p in paths if STATE_DOCUMENT_RE.match(p)}
    dcp = {p.rsplit("/", 1)[0] for p in paths if DCP_DOCUMENT_RE.match(p)}
    for p in paths:
        if (m := _DCP_TENSORS_RE.match(p)) and m["folder"] in dcp:
            stems.setdefault(f"{m['folder']}/{m['stem']}", f"{m['folder']}/{m['stem']}.distcp")
    for stem, path in sorted(stems.items()):
        pattern = shard_pattern(stem)
        listed = [p for p in paths if pattern.match(p)]
        has_index = index_name(stem) in paths
        if (listed or has_index) and (not has_index or listed_shards(stem, paths) is None):
            lacks = "the index of its shards" if not has_index else "one of its shards, or they disagree on how many"
            raise DamagedStateError(path, f"{revision} lacks {lacks}")


def plan_pull(
    repo_id: str, revision: str, commit: str, entries: Sequence[RemoteFile], to: Path, step: int | None
) -> PullPlan:
    """What to fetch (every file of the checkpoint) and where: `to`/checkpoint-<step>. Every path the revision
    lists is checked first, also those pull leaves out: a revision holding any path hubsync refuses is refused."""
    for e in entries:
        check_remote_path(e.path, revision)
    check_listing(entries, revision)
    placed = sorted(
        (e for e in entries if e.path not in NOT_CHECKPOINT and not e.path.startswith(NOT_CHECKPOINT_DIRS)),
        key=lambda e: e.path,
    )
    files, names = tuple(placed), {e.path for e in placed}
    others = tuple(sorted((e for e in entries if e.path not in names), key=lambda e: e.path))
    check_checkpoint_revision(repo_id, revision, [f.path for f in files])
    check_shards({f.path for f in files}, revision)
    name = checkpoint_name(step) if step is not None else re.sub(r"[^A-Za-z0-9._-]", "-", revision)
    return PullPlan(repo_id, revision, commit, to / name, files, others)


def newest_revision(repo_id: str, revisions: Sequence[tuple[str, int | None]]) -> str:
    """The revision a pull without --revision restores: the checkpoint revision with the highest step, among
    (revision, step) pairs ordered by step (as `hubsync ls` lists them)."""
    numbered = [name for name, step in revisions if step is not None]
    if not numbered:
        raise NoCheckpointRevisionError(repo_id)
    return numbered[-1]
