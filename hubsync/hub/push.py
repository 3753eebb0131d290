"""Carry out a PushPlan against a Hub client that is passed in."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hubsync.convert import convert_weights
from hubsync.convert.compare import check_superseded
from hubsync.convert.dcp import consolidate_dcp, encode_dcp
from hubsync.convert.state import encode_state
from hubsync.core.checkpoint import DCP_METADATA_RE, Checkpoint
from hubsync.core.conversion import STATE_FILE_RE
from hubsync.core.errors import CommitConflictError, HubError, HubsyncError, IncompletePushError, RepoNotFoundError
from hubsync.core.index import (
    INDEX_FILE,
    dump_index,
    front_matter_of,
    main_front_matter,
    merge_index,
    parse_index,
    update_main_readme,
)
from hubsync.core.plan import PushPlan, branch_deletions, with_sizes
from hubsync.core.preflight import RepoFacts, check_plans, check_tags, check_visibility
from hubsync.core.pull import RemoteFile
from hubsync.core.signing import SIGNATURE_FILE
from hubsync.core.watch import LocalHashes, holds_exactly, same_content
from hubsync.files import KnownDigest, git_blob_hasher, git_blob_id, hash_file, system_temp_dir

from .client import CommitResult

CONFLICT_RETRIES = 8
Files = Sequence[tuple[Path | bytes, str]]
T = TypeVar("T")


class IndexTarget(Protocol):
    """What keeping main's index needs from a Hub (HubClient provides it): read it, commit it."""

    def branch_head(self, repo_id: str, branch: str) -> str | None: ...
    def read_file(self, repo_id: str, revision: str, path: str) -> bytes | None: ...
    def commit_files(
        self,
        repo_id: str,
        branch: str,
        files: Any,
        message: str,
        description: str = "",
        parent_commit: str | None = None,
        delete: Sequence[str] = (),
        digests: Mapping[Path, KnownDigest] | None = None,
    ) -> CommitResult: ...
    def web_url(self, repo_id: str, revision: str | None = None) -> str: ...


class PushTarget(IndexTarget, Protocol):
    """What executing a push needs from a Hub (HubClient provides it)."""

    def require_token(self) -> None: ...
    def repo_facts(self, repo_id: str) -> RepoFacts: ...
    def ensure_repo(self, repo_id: str, private: bool) -> bool: ...
    def ensure_branch(self, repo_id: str, branch: str) -> bool: ...
    def delete_branch(self, repo_id: str, branch: str) -> bool: ...
    def ensure_tag(self, repo_id: str, tag: str, commit: str) -> None: ...
    def tree(self, repo_id: str, commit: str, revision: str | None = None) -> list[RemoteFile]: ...


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    revision: str
    commit: str
    commit_url: str
    url: str
    created: bool
    files: int
    bytes: int
    tags: tuple[str, ...]
    released: bool
    complete: bool = True  # False: the commit landed, but its tags or main's index did not all follow
    deleted: int = 0  # files of an earlier push that the commit deleted from the branch
    sent_bytes: int | None = 0  # what the commit sent (after Xet's deduplication); None: not counted
    xet: bool = False  # sent through Xet storage

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "commit_url": self.commit_url,
            "url": self.url,
            "created": self.created,
            "files": self.files,
            "bytes": self.bytes,
            "tags": list(self.tags),
            "released": self.released,
            "complete": self.complete,
            "deleted": self.deleted,
            "sent_bytes": self.sent_bytes,
            "checkpoint_bytes": self.bytes,
            "via_xet": self.xet,
        }


def preflight(hub: PushTarget, pushes: Sequence[tuple[PushPlan, Checkpoint]]) -> dict[str, RepoFacts]:
    """Everything that can refuse these pushes at the Hub, for every one of them, before anything is converted,
    uploaded, created or committed: one read-only look at each repository (does it exist, is it private, its
    branches and tags). A --tag that already names the branch's head also needs the branch to hold exactly the
    files whose content is known before conversion; the converted ones are compared just before the commit."""
    hub.require_token()
    facts = {repo_id: hub.repo_facts(repo_id) for repo_id in dict.fromkeys(plan.repo_id for plan, _ in pushes)}
    check_plans([plan for plan, _ in pushes], facts)
    for plan, checkpoint in pushes:
        known: dict[str, Path | bytes] = {
            u.path_in_repo: plan.generated[u.path_in_repo] if u.generated else checkpoint.path / u.source
            for u in plan.uploads
            if not u.converted_from
        }
        _check_tags(hub, plan, facts[plan.repo_id], known)
    return facts


def _check_tags(hub: PushTarget, plan: PushPlan, repo: RepoFacts, local: Mapping[str, Path | bytes]) -> None:
    """check_tags, with whether the branch's head already holds the planned paths and `local`'s contents (only
    looked at when a tag exists and names that head)."""
    check_tags(plan, repo)
    head = repo.branches.get(plan.revision)
    if head is None or not any(repo.tags.get(tag) == head for tag in plan.tags):
        return
    paths = [u.path_in_repo for u in plan.uploads]
    hashes = {path: local_hashes(source) for path, source in local.items()}
    check_tags(
        plan, repo, unchanged=holds_exactly(hub.tree(plan.repo_id, head, plan.revision), paths, hashes, indexed=True)
    )


def local_hashes(source: Path | bytes) -> LocalHashes:
    """sha256 and git blob id of a file (in one read) or of bytes: what the Hub's tree lists for it."""
    if isinstance(source, bytes):
        return LocalHashes(len(source), hashlib.sha256(source).hexdigest(), git_blob_id(source))
    size = source.stat().st_size
    sha256, git = hash_file(source, hashlib.sha256(), git_blob_hasher(size))
    return LocalHashes(size, sha256, git)


def already_pushed(plan: PushPlan, checkpoint: Checkpoint, hub: PushTarget) -> PushResult | None:
    """The push of `plan` as the Hub already holds it (its tags applied now), or None when pushing would change
    something: the branch's head holds exactly the planned paths, each file uploaded as it is or generated with the
    same content (converted ones are derived from those), and main's index already says of this revision what the
    push would write (or the plan writes no index). The one rule of `hubsync push` and of a watch restarted without
    its record: an unchanged push converts, uploads and commits nothing. A --release is always carried out."""
    if plan.release:
        return None
    try:
        head = hub.branch_head(plan.repo_id, plan.revision)
    except RepoNotFoundError:  # not created yet: the push creates it
        return None
    if head is None:
        return None
    known: dict[str, Path | bytes] = {
        u.path_in_repo: plan.generated[u.path_in_repo] if u.generated else checkpoint.path / u.source
        for u in plan.uploads
        if not u.converted_from
    }
    remote = hub.tree(plan.repo_id, head, plan.revision)
    paths = [u.path_in_repo for u in plan.uploads] + ([SIGNATURE_FILE] if plan.signing else [])
    if not holds_exactly(remote, list(dict.fromkeys(paths)), _LazyHashes(known), indexed=True):
        return None
    if plan.index_entry is not None:
        entry = {**plan.index_entry, "commit": head, "tags": list(plan.tags)}
        try:
            index = parse_index(hub.read_file(plan.repo_id, "main", INDEX_FILE))
        except HubError:  # the push itself then commits nothing to the branch, and says what main's index lacks
            return None
        if not any({k: v for k, v in e.items() if k != "released"} == entry for e in index):
            return None
    for tag in plan.tags:
        hub.ensure_tag(plan.repo_id, tag, head)
    return PushResult(
        repo_id=plan.repo_id,
        revision=plan.revision,
        commit=head,
        commit_url=f"{hub.web_url(plan.repo_id)}/commit/{head}",
        url=hub.web_url(plan.repo_id, plan.revision),
        created=False,
        files=len(plan.uploads),
        bytes=plan.total_bytes,
        tags=plan.tags,
        released=False,
    )


class _LazyHashes(Mapping[str, LocalHashes]):
    """local_hashes of each source, computed when holds_exactly first asks (it stops at the first difference)."""

    def __init__(self, sources: Mapping[str, Path | bytes]) -> None:
        self._sources = sources
        self._done: dict[str, LocalHashes] = {}

    def __getitem__(self, path: str) -> LocalHashes:
        if path not in self._done:
            self._done[path] = local_hashes(self._sources[path])
        return self._done[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)


def execute_push(plan: PushPlan, checkpoint: Checkpoint, hub: PushTarget, checked: bool = False) -> PushResult:
    """Check what the Hub must allow (preflight, unless `checked` says it was just done); when the Hub already holds
    this push (already_pushed), apply its tags and stop there. Else convert pickled weights and training state
    (verified) into a temp folder, make sure the repository exists, commit the planned files to the branch in one
    commit, tag it, and record it in main's index. A refusal, or a file that cannot be converted, leaves the Hub as
    it was."""
    if not checked:
        preflight(hub, [(plan, checkpoint)])
    with system_temp_dir("push") as staging:  # entered first: it removes what killed pushes left behind
        done = already_pushed(plan, checkpoint, hub)
        if done is not None:
            return done
        check_superseded(checkpoint, plan.conversion)  # a .bin left out must say what its safetensors file says
        if plan.conversion.conversions:
            convert_weights(checkpoint, plan.conversion, staging, max_shard_size=plan.max_shard_size)
        made: set[tuple[str, bool]] = set()  # (source, consolidated weights): each conversion once
        digests: dict[Path, KnownDigest] = {}  # converted state's sha256, hashed while verifying it

        def sealed(path: Path, sha256: str) -> None:
            digests[path] = KnownDigest.seal(path, sha256)

        for upload in plan.uploads:
            source = upload.converted_from
            # FSDP's model folder consolidated: the weights (or their shards) lie outside the folder they come from
            weights = DCP_METADATA_RE.match(source or "") is not None and "/" not in upload.path_in_repo
            if source is None or (source, weights) in made:
                continue
            made.add((source, weights))
            if STATE_FILE_RE.match(source):
                (staging / source).parent.mkdir(parents=True, exist_ok=True)  # global_step<N>/ of DeepSpeed
                shown, out = f"{checkpoint.display}/{source}", (staging / source).parent
                encode_state(checkpoint.path / source, shown, out, plan.max_shard_size, digest=sealed)
            elif DCP_METADATA_RE.match(source):  # FSDP's folder: its .distcp files too, or its consolidated weights
                folder = source.rsplit("/", 1)[0]
                shown = f"{checkpoint.display}/{folder}"
                if weights:
                    target = staging / (checkpoint.fsdp_weights or upload.path_in_repo)
                    consolidate_dcp(checkpoint.path / folder, shown, target, plan.max_shard_size)
                else:
                    (staging / folder).mkdir(parents=True, exist_ok=True)
                    encode_dcp(checkpoint.path / folder, shown, staging / folder, plan.max_shard_size)
        for path, data in plan.generated.items():
            (staging / path).parent.mkdir(parents=True, exist_ok=True)
            (staging / path).write_bytes(data)
        files = {
            u.path_in_repo: (staging if u.converted_from or u.generated else checkpoint.path) / u.source
            for u in plan.uploads
        }
        plan = with_sizes(plan, {path: source.stat().st_size for path, source in files.items()})  # not estimates
        if plan.signing is not None:  # over exactly what the commit holds, converted and generated files too
            from hubsync.signing import sign_files

            files[SIGNATURE_FILE] = sign_files(files, staging, plan.signing)
        if plan.tags:  # the converted files too, now that they exist; the Hub may also have moved meanwhile
            _check_tags(hub, plan, hub.repo_facts(plan.repo_id), files)
        private = hub.ensure_repo(plan.repo_id, private=plan.private)
        # Checked before anything happened; again in case someone made it public, or created it, since.
        check_visibility(plan, private)
        return _push(plan, files, hub, digests)


def _push(
    plan: PushPlan, files: dict[str, Path], hub: PushTarget, digests: Mapping[Path, KnownDigest] | None = None
) -> PushResult:
    created = hub.ensure_branch(plan.repo_id, plan.revision)
    start = hub.branch_head(plan.repo_id, plan.revision) if created else None
    try:
        result, deleted = _commit_to_head(
            hub,
            plan.repo_id,
            plan.revision,
            [(src, dest) for dest, src in files.items()],
            plan.commit_message,
            plan.commit_description,
            digests,
        )
    except BaseException:
        # The empty branch this push made would look like a checkpoint revision: take it away again, unless
        # another push has committed to it meanwhile.
        with suppress(Exception):
            if created and hub.branch_head(plan.repo_id, plan.revision) == start:
                hub.delete_branch(plan.repo_id, plan.revision)
        raise
    landed = PushResult(
        repo_id=plan.repo_id,
        revision=plan.revision,
        commit=result.oid,
        commit_url=result.url,
        url=hub.web_url(plan.repo_id, plan.revision),
        created=result.created,
        files=len(plan.uploads),
        bytes=plan.total_bytes,
        tags=(),
        released=False,
        complete=False,
        deleted=deleted,
        sent_bytes=result.sent_bytes,
        xet=result.xet,
    )
    try:
        for tag in plan.tags:
            hub.ensure_tag(plan.repo_id, tag, result.oid)
            landed = replace(landed, tags=(*landed.tags, tag))
        if plan.index_entry is not None:
            released = [(files[path], path) for path in plan.release]
            _update_index(hub, plan, {**plan.index_entry, "commit": result.oid, "tags": list(plan.tags)}, released)
    except HubsyncError as exc:  # the commit is on the Hub: say so, with what it has
        raise IncompletePushError(plan.checkpoint, plan.revision, result.oid, exc, landed) from exc
    return replace(landed, released=bool(plan.release), complete=True)


def _commit_to_head(
    hub: PushTarget,
    repo_id: str,
    branch: str,
    files: Files,
    message: str,
    description: str = "",
    digests: Mapping[Path, KnownDigest] | None = None,
) -> tuple[CommitResult, int]:
    """Make the branch hold exactly `files` (and .gitattributes), in one commit on top of its current head; the
    commit and how many files of the branch it deleted. When another push moved the head meanwhile (412), plan
    the deletions again against the new head and commit again: concurrent pushes all land in the branch's
    history, and the last one is its tree."""

    def commit() -> tuple[CommitResult, int]:
        head = hub.branch_head(repo_id, branch)
        held = hub.tree(repo_id, head, branch) if head else []
        delete = branch_deletions([f.path for f in held], [dest for _, dest in files])
        changed = changed_files(files, held)
        result = hub.commit_files(
            repo_id, branch, changed, message, description, parent_commit=head, delete=delete, digests=digests
        )
        return result, len(delete) if result.created else 0

    return retry_conflicts(commit)


def changed_files(files: Files, held: Sequence[RemoteFile]) -> Files:
    """The files whose content the branch (whose files are `held`) does not already hold at their path. The others
    are never handed to huggingface_hub: with Xet it gives every LFS file of a commit to hf_xet (which reads and
    chunks it) before it drops the unchanged ones. Only a file of the same size as the one held is read to compare
    (sha256 for an LFS file, the git blob id for the others, as the tree lists them)."""
    by_path = {f.path: f for f in held}
    changed: list[tuple[Path | bytes, str]] = []
    for source, dest in files:
        theirs = by_path.get(dest)
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        if theirs is None or theirs.size != size or not same_content(theirs, local_hashes(source)):
            changed.append((source, dest))
    return changed


def retry_conflicts(commit: Callable[[], T]) -> T:
    """Run `commit` (which reads a branch head and commits on top of it) again while the branch keeps moving
    under it (412), up to CONFLICT_RETRIES times, with short random pauses."""
    for attempt in range(CONFLICT_RETRIES):
        try:
            return commit()
        except CommitConflictError:
            if attempt == CONFLICT_RETRIES - 1:
                raise
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
    raise AssertionError("unreachable")


def _update_index(hub: PushTarget, plan: PushPlan, entry: dict[str, Any], released: Files) -> None:
    """Record the revision in main's index (.hubsync/index.json and README.md), with the released inference
    files when --release; nothing is committed when main already says all that."""
    assert plan.front_matter is not None
    front_matter = plan.front_matter

    def commit() -> None:
        nonlocal entry
        head = hub.branch_head(plan.repo_id, "main")
        entries = parse_index(hub.read_file(plan.repo_id, head or "main", INDEX_FILE))
        if released:
            entries = [{**e, "released": False} for e in entries]
            entry = {**entry, "released": True}
        merged = merge_index(entries, entry)
        if merged == entries and not released:
            return  # main already lists this revision at this commit; its README may describe a newer one
        readme = _main_readme(hub, plan.repo_id, head, merged, front_matter, bool(released))
        files: Files = [(dump_index(merged), INDEX_FILE), (readme, "README.md"), *released]
        if released and head is not None:  # main may hold these weights already, from an earlier release
            files = changed_files(files, hub.tree(plan.repo_id, head, "main"))
        message = f"hubsync: {'release' if released else 'index'} {plan.revision}"
        hub.commit_files(plan.repo_id, "main", files, message, parent_commit=head)  # no change: no commit

    retry_conflicts(commit)


def _main_readme(
    hub: IndexTarget,
    repo_id: str,
    head: str | None,
    entries: list[dict[str, Any]],
    card_front_matter: str | None,
    releasing: bool,
) -> bytes:
    """Main's README.md listing `entries`: written whole when hubsync wrote it (or there is none), else the
    user's README with hubsync's section updated in it (core/index.py, update_main_readme)."""
    existing = hub.read_file(repo_id, head, "README.md") if head is not None else None
    previous = front_matter_of(existing)
    front_matter = main_front_matter(card_front_matter, previous, entries, releasing)
    has_index = head is not None and hub.read_file(repo_id, head, INDEX_FILE) is not None
    return update_main_readme(existing, has_index, entries, repo_id, front_matter, hub.web_url(repo_id)).readme


def drop_from_index(hub: IndexTarget, repo_id: str, branches: Callable[[], Collection[str]]) -> CommitResult | None:
    """Make main's index (.hubsync/index.json and its README.md) list only revisions that `branches()` still
    names, in one commit; None when main has no index or it lists nothing that is gone."""

    def commit() -> CommitResult | None:
        head = hub.branch_head(repo_id, "main")
        raw = hub.read_file(repo_id, head or "main", INDEX_FILE)
        if head is None or raw is None:
            return None
        entries = parse_index(raw)
        existing = set(branches())
        kept = [e for e in entries if e["revision"] in existing]
        if len(kept) == len(entries):
            return None
        readme = _main_readme(hub, repo_id, head, kept, None, False)
        gone_all = [e["revision"] for e in entries if e["revision"] not in existing]
        gone = ", ".join(gone_all[:5]) + (f" and {len(gone_all) - 5} more" if len(gone_all) > 5 else "")
        files: list[tuple[Path | bytes, str]] = [(dump_index(kept), INDEX_FILE), (readme, "README.md")]
        return hub.commit_files(repo_id, "main", files, f"hubsync: prune {gone}", parent_commit=head)

    return retry_conflicts(commit)
