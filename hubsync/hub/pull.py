"""Carry out a PullPlan: fetch a revision's files into a staging folder, verify each, then move it into place."""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hubsync.core.checkpoint import checkpoint_step, loads_json, parse_trainer_state
from hubsync.core.conversion import DEEPSPEED_STATE_RE, STATE_DOCUMENT_RE
from hubsync.core.errors import (
    DamagedStateError,
    HubsyncError,
    NotEnoughSpaceError,
    PullTargetExistsError,
    PullVerificationError,
    SignatureError,
)
from hubsync.core.layouts import latest_problem, state_layout
from hubsync.core.paths import display_path
from hubsync.core.pull import PullPlan, RemoteFile, newest_revision, plan_pull, step_of
from hubsync.core.signing import (
    MAX_SIGNATURE_BYTES,
    SIGNATURE_FILE,
    Verifying,
    check_signed_file,
    check_signed_listing,
)
from hubsync.extras import needs_extra
from hubsync.files import git_blob_hasher, hash_file, remove_stale_temps, system_temp_dir, temp_dir
from hubsync.hub.download import DownloadCancelled, Transfers
from hubsync.hub.revisions import RevisionSource

CANCEL_GRACE_S = 2.0  # how long a cancelled pull waits for its downloads to notice, before it cleans up anyway


class PullSource(Protocol):
    """What fetching a planned pull needs from a Hub (HubClient provides it)."""

    def download(self, repo_id: str, commit: str, remote: RemoteFile, dest: Path, transfers: Transfers) -> None: ...


class RevisionPullSource(PullSource, RevisionSource, Protocol):
    """What planning and carrying out the pull of a revision needs: its commit, its listing and files."""

    def resolve_commit(self, repo_id: str, revision: str) -> str: ...


@dataclass(frozen=True)
class PullOutcome:
    """What a pull did: its plan, the checkpoint folder, and whether it was there already (nothing fetched)."""

    plan: PullPlan
    path: Path
    already_there: bool

    def to_json(self) -> dict[str, Any]:
        return {**self.plan.to_json(), "path": display_path(self.path), "already_there": self.already_there}


def plan_revision_pull(hub: RevisionPullSource, repo_id: str, revision: str | None, to: Path | None) -> PullPlan:
    """The plan of pulling `revision` (default: the newest checkpoint revision) into `to` (default:
    out/<repo name>): the revision resolved to one commit, its listing checked, the folder named by its step
    (trainer_state.json's global_step, else the revision's number)."""
    from .revisions import checkpoint_revisions

    if revision is None:
        revision = newest_revision(repo_id, [(r.revision, r.step) for r in checkpoint_revisions(hub, repo_id)])
    commit = hub.resolve_commit(repo_id, revision)
    entries = hub.tree(repo_id, commit, revision)
    step = step_of(revision)
    if any(e.path == "trainer_state.json" for e in entries):
        try:
            state = parse_trainer_state(loads_json(hub.read_file(repo_id, commit, "trainer_state.json") or b""))
            step = state.global_step if state.global_step is not None else step
        except ValueError:
            pass  # a damaged trainer_state.json is pulled as it is; the folder is named by the revision
    target = to if to is not None else Path("out") / repo_id.split("/")[-1]
    return plan_pull(repo_id, revision, commit, entries, target, step)


def pull_revision(
    hub: RevisionPullSource,
    repo_id: str,
    revision: str | None,
    to: Path | None,
    force: bool = False,
    verify: Verifying | None = None,
) -> PullOutcome:
    """Plan the pull, then carry it out unless the folder already holds exactly that revision. With `verify`, the
    revision's signature is checked first, also when the folder holds it already."""
    plan = plan_revision_pull(hub, repo_id, revision, to)
    if already_pulled(plan):
        if verify is not None:
            check_signature_of(hub, plan, verify, fetch_regular=True)
        return PullOutcome(plan, plan.target, True)
    check_target(plan, force)
    return PullOutcome(plan, execute_pull(plan, hub, force=force, verify=verify), False)


def check_signature_of(
    hub: PullSource, plan: PullPlan, verify: Verifying, fetch_regular: bool = False
) -> dict[str, str]:
    """The files the revision's signature covers (path -> sha256), once model.sig (bounded in size) is checked to
    be the expected signer's and to cover exactly the revision's files, with the sha256 the Hub lists for each LFS
    file. A file the Hub keeps in git (not LFS) is listed by its git blob id only: its download is compared with
    the signature later (check_signed_downloads), or now with `fetch_regular` (into a scratch folder)."""
    from hubsync.signing import signed_files

    signature = next((f for f in plan.others if f.path == SIGNATURE_FILE), None)
    if signature is None:
        raise SignatureError(SIGNATURE_FILE, f"is missing: {plan.revision} is not signed")
    if signature.size > MAX_SIGNATURE_BYTES:
        raise SignatureError(SIGNATURE_FILE, f"is {signature.size:,} bytes, more than a signature takes")
    with system_temp_dir("verify") as scratch:
        _fetch_verified(hub, plan, signature, scratch, Transfers())
        signed = signed_files(scratch / SIGNATURE_FILE, verify)
        check_signed_listing(signed, [(f.path, f.sha256) for f in (*plan.files, *plan.others)], plan.revision)
        if fetch_regular:
            regular = tuple(f for f in plan.files if f.sha256 is None)
            for folder in sorted({(scratch / f.path).parent for f in regular}):
                folder.mkdir(parents=True, exist_ok=True)
            for remote in regular:
                _fetch_verified(hub, plan, remote, scratch, Transfers())
            check_signed_downloads(plan, scratch, signed)
    return signed


def check_signed_downloads(plan: PullPlan, staging: Path, signed: Mapping[str, str]) -> None:
    """Compare each downloaded file the Hub keeps in git (its LFS files were compared by their listed sha256,
    which their downloads matched) with the sha256 the signature gives it."""
    for remote in plan.files:
        if remote.sha256 is None:
            check_signed_file(remote.path, hash_file(staging / remote.path, hashlib.sha256())[0], signed)


def check_target(plan: PullPlan, force: bool) -> None:
    """Refuse, before anything is fetched, a target that exists and holds something (unless `force`)."""
    if plan.target.exists() and (not plan.target.is_dir() or any(plan.target.iterdir())) and not force:
        raise PullTargetExistsError(display_path(plan.target))


def check_space(plan: PullPlan) -> None:
    """Refuse, before anything is fetched, a revision whose files take more than the free space where the
    checkpoint goes (a tree listing may claim any size)."""
    where = plan.target.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if plan.total_bytes > free:
        raise NotEnoughSpaceError(display_path(plan.target.parent), plan.total_bytes, free)


def check_rebuild(plan: PullPlan) -> None:
    """Refuse, before anything is fetched, a revision whose training state was pushed pickle-free when torch is
    missing: optimizer.pt & co. are written back with torch.save, and torch is the train extra's."""
    if plan.rebuilt or plan.rebuilt_folders:
        from hubsync.convert.state import load_torch

        names = [r.path for r in plan.rebuilt] + [f"{r.folder}/" for r in plan.rebuilt_folders]
        shown = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
        load_torch(f"pulling {plan.repo_id} @ {plan.revision} (it writes {shown} back from their pickle-free form)")
        if any(DEEPSPEED_STATE_RE.match(name) for name in names):  # they hold a few of DeepSpeed's own objects
            with needs_extra(
                f"pulling {plan.repo_id} @ {plan.revision} (it writes DeepSpeed's state back)", "deepspeed"
            ):
                import deepspeed  # noqa: F401


def already_pulled(plan: PullPlan) -> bool:
    """Whether the target holds exactly what pulling `plan` would write, checked by hash against the Hub's tree:
    each file placed as it is by its sha256 (LFS) or git blob id, and each rebuilt training-state file by
    encoding it again (without loading it) and hashing the result against its pickle-free form on the Hub.
    Only reads; no file more or less."""
    target = plan.target
    if not target.is_dir() or target.is_symlink():
        return False
    found = set()
    for dirpath, _dirnames, filenames in os.walk(target):
        found |= {(Path(dirpath) / name).relative_to(target).as_posix() for name in filenames}
    remade = {r.path for r in plan.rebuilt} | {p for r in plan.rebuilt_folders for p in r.paths}
    if found != {f.path for f in plan.written} | remade:
        return False
    if not all(_matches(target / f.path, f) for f in plan.written):
        return False
    if not plan.rebuilt and not plan.rebuilt_folders:
        return True
    from hubsync.convert.dcp import encode_dcp
    from hubsync.convert.state import encode_state

    with system_temp_dir("pull-check") as scratch:
        for folder in plan.rebuilt_folders:
            out = scratch / folder.folder
            out.mkdir(parents=True)
            try:  # split as the revision's files are (their sizes say where each shard ends)
                written = encode_dcp(target / folder.folder, folder.folder, out, like=folder.like)
            except (HubsyncError, OSError, ValueError):
                return False
            if {f"{folder.folder}/{n}" for n in written} != {r.path for r in (folder.document, *folder.tensors)}:
                return False
            for remote in (folder.document, *folder.tensors):
                if not _matches(out / remote.path.rsplit("/", 1)[1], remote):
                    return False
        for number, rebuilt in enumerate(plan.rebuilt):
            local = target / rebuilt.path
            if local.is_symlink() or not local.is_file():
                return False
            out = scratch / f"state-{number}"
            out.mkdir()
            try:  # split as the revision's files are (their sizes say where each shard ends)
                written = encode_state(local, rebuilt.path, out, like=[t.size for t in rebuilt.tensors])
            except (HubsyncError, OSError, ValueError):
                return False
            listed = {f.path.rsplit("/", 1)[-1]: f for f in rebuilt.sources}
            if set(written) != set(listed) or not all(_matches(out / n, listed[n]) for n in written):
                return False
    return True


def _matches(local: Path, remote: RemoteFile) -> bool:
    """Whether a local file is the one the Hub lists: same size, same sha256 (LFS) or git blob id."""
    if local.is_symlink() or not local.is_file():
        return False
    size = local.stat().st_size
    if size != remote.size:
        return False
    if remote.sha256 is not None:
        return hash_file(local, hashlib.sha256()) == [remote.sha256]
    return hash_file(local, git_blob_hasher(size)) == [remote.git_oid]


def execute_pull(
    plan: PullPlan, hub: PullSource, force: bool = False, workers: int = 8, verify: Verifying | None = None
) -> Path:
    """Download every planned file into a staging folder beside the target, verify each against the tree's
    sha256 (LFS) or git blob id, then rename the folder into place. Nothing is placed unless all is right; a
    signal (KeyboardInterrupt) or a failed file ends every download at once and removes the staging folder.
    With `verify`, the revision's signature is checked before anything is downloaded, and each download against
    it before any training state is rebuilt."""
    check_target(plan, force)
    check_space(plan)
    check_rebuild(plan)
    signed = check_signature_of(hub, plan, verify) if verify is not None else None
    parent = plan.target.parent
    created = [p for p in (parent, *parent.parents) if not p.exists()]  # removed again if nothing is placed
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(parent)
    staging = temp_dir(parent, "pull")
    try:
        for folder in sorted({(staging / f.path).parent for f in plan.files}):
            folder.mkdir(parents=True, exist_ok=True)  # here, not in the downloads (see _fetch_all)
        _fetch_all(lambda f, transfers: _fetch_verified(hub, plan, f, staging, transfers), plan.files, workers)
        if signed is not None:
            check_signed_downloads(plan, staging, signed)
        _check_step(plan, staging, signed is not None)
        _check_latest(plan, staging)
        _rebuild_training_state(plan, staging)
        _place(staging, plan.target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # innermost first: "nothing was placed" leaves no empty out/<repo>/ either
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return plan.target


def _fetch_all(fetch: Callable[[RemoteFile, Transfers], None], files: tuple[RemoteFile, ...], workers: int) -> None:
    """Run `fetch` on every file, `workers` at a time, in daemon threads: a download blocked on a Hub never
    keeps the process alive. The first failure, or an interrupt of the waiting thread, cancels the rest: each
    open connection is shut down and no download starts. Downloads only write files into folders made
    beforehand, so one that notices late cannot bring back a staging folder removed after the cancel."""
    transfers = Transfers()
    pending: queue.SimpleQueue[RemoteFile] = queue.SimpleQueue()
    for f in files:
        pending.put(f)
    failures: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        while not transfers.cancelled.is_set():
            try:
                remote = pending.get_nowait()
            except queue.Empty:
                return
            try:
                fetch(remote, transfers)
            except BaseException as exc:
                with lock:
                    failures.append(exc)
                transfers.cancel()
                return

    threads = [
        threading.Thread(target=work, name=f"hubsync-pull-{i}", daemon=True)
        for i in range(max(1, min(workers, len(files))))
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)  # a join with a timeout lets a signal through to this thread
    except BaseException:
        transfers.cancel()
        end = time.monotonic() + CANCEL_GRACE_S
        for thread in threads:
            thread.join(max(0.0, end - time.monotonic()))
        raise
    if failures:  # what went wrong first, not the cancels it caused
        raise next((f for f in failures if not isinstance(f, DownloadCancelled)), failures[0])


def _check_step(plan: PullPlan, staging: Path, verified: bool) -> None:
    """The folder is named by trainer_state.json's step as the plan read it, before the download: the file as
    downloaded (checked against the tree, and with `verified` against the signature) must say the same, or a Hub
    that served other bytes the first time would name the folder (and Trainer would take it for another step).
    A verified checkpoint-N revision must hold step N: else an older signed revision is served under a newer
    name (a branch moved by someone who has write access, not the key)."""
    path = staging / "trainer_state.json"
    if not path.is_file():
        return
    try:
        step = parse_trainer_state(loads_json(path.read_bytes())).global_step
    except ValueError:
        return  # pulled as it is, as the plan did
    if step is not None and plan.target.name != f"checkpoint-{step}":
        raise PullVerificationError(
            "trainer_state.json", f"says step {step}, not the step the Hub served when the pull was planned"
        )
    named = checkpoint_step(plan.revision.rsplit("/", 1)[-1])  # checkpoint-N, as pushed; not a tag or a commit id
    if verified and step is not None and named is not None and named != step:
        raise SignatureError(
            "trainer_state.json",
            f"is signed for step {step}, and the revision is named {plan.revision}: an older signed revision "
            "under a newer name",
        )


def _check_latest(plan: PullPlan, staging: Path) -> None:
    """DeepSpeed's `latest`, as the Hub served it, names a global_step<N>/ folder of the revision: DeepSpeed
    resumes from the folder it names, unpickling what lies there, wherever that is."""
    paths = frozenset(f.path for f in plan.files)
    layout = state_layout(paths)
    if "latest" not in paths or layout is None or layout.kind != "deepspeed":
        return
    with (staging / "latest").open("rb") as file:
        text = file.read(257)
    problem = "it is larger than a folder's name" if len(text) > 256 else latest_problem(text, paths)
    if problem is not None:
        raise DamagedStateError("latest", problem)


def _rebuild_training_state(plan: PullPlan, staging: Path) -> None:
    """Turn pickle-free training state (<name>.json + <name>.safetensors) back into the files the Trainer loads."""
    for folder in plan.rebuilt_folders:  # FSDP's torch.distributed.checkpoint folders
        from hubsync.convert.dcp import rebuild_dcp

        rebuild_dcp(staging / folder.document.path)
        for remote in (folder.document, *folder.tensors):
            (staging / remote.path).unlink()
    names = {f.path for f in plan.files}
    documents = [n for n in names if n.endswith(".json") and n.removesuffix(".json") + ".safetensors" in names]
    documents = [n for n in documents if n not in {r.document.path for r in plan.rebuilt_folders}]
    if not documents and not plan.rebuilt:
        return
    from hubsync.convert.state import is_state_document, rebuild_state

    for rebuilt in plan.rebuilt:  # optimizer.json & co.: always hubsync's, a damaged one is an error
        rebuild_state(staging / rebuilt.document.path)
        for remote in rebuilt.sources:
            (staging / remote.path).unlink()
    for name in documents:
        if STATE_DOCUMENT_RE.match(name) is None and is_state_document(staging / name):
            rebuild_state(staging / name)  # refuses it: it names a file that is no training state


def _fetch_verified(hub: PullSource, plan: PullPlan, remote: RemoteFile, staging: Path, transfers: Transfers) -> None:
    local = staging / remote.path
    hub.download(plan.repo_id, plan.commit, remote, local, transfers)
    size = local.stat().st_size
    if size != remote.size:
        raise PullVerificationError(remote.path, f"has {size} bytes, the Hub lists {remote.size}")
    if remote.sha256 is not None:
        if hash_file(local, hashlib.sha256()) != [remote.sha256]:
            raise PullVerificationError(remote.path, "does not match the sha256 the Hub lists")
    else:
        if hash_file(local, git_blob_hasher(size)) != [remote.git_oid]:
            raise PullVerificationError(remote.path, "does not match the git blob id the Hub lists")


def _place(staging: Path, target: Path) -> None:
    """Rename the staged folder to the target; an existing target (only with --force) is swapped out first."""
    if not target.exists():
        os.replace(staging, target)
        return
    old = temp_dir(target.parent, "replaced")
    os.replace(target, old / "previous")
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old / "previous", target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
