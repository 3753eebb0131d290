"""Carry out a PullPlan: fetch a revision's files into a staging folder, verify each, then move it into place."""

from __future__ import annotations

import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from hubsync.core.conversion import STATE_DOCUMENT_RE
from hubsync.core.errors import PullTargetExistsError, PullVerificationError
from hubsync.core.paths import display_path
from hubsync.core.pull import PullPlan, RemoteFile
from hubsync.files import hash_file, remove_stale_temps, temp_dir


class PullSource(Protocol):
    def download(self, repo_id: str, commit: str, path: str, local_dir: Path) -> Path: ...


def check_target(plan: PullPlan, force: bool) -> None:
    """Refuse, before anything is fetched, a target that exists and holds something (unless `force`)."""
    if plan.target.exists() and (not plan.target.is_dir() or any(plan.target.iterdir())) and not force:
        raise PullTargetExistsError(display_path(plan.target))


def execute_pull(plan: PullPlan, hub: PullSource, force: bool = False, workers: int = 8) -> Path:
    """Download every planned file into a staging folder beside the target, verify each against the tree's
    sha256 (LFS) or git blob id, then rename the folder into place. Nothing is placed unless all is right."""
    check_target(plan, force)
    parent = plan.target.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(parent)
    staging = temp_dir(parent, "pull")
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(plan.files)))) as pool:
            for _ in pool.map(lambda f: _fetch_verified(hub, plan, f, staging), plan.files):
                pass
        shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
        _rebuild_training_state(plan, staging)
        _place(staging, plan.target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return plan.target


def _rebuild_training_state(plan: PullPlan, staging: Path) -> None:
    """Turn pickle-free training state (<name>.json + <name>.safetensors) back into the files the Trainer loads."""
    names = {f.path for f in plan.files}
    documents = [n for n in names if n.endswith(".json") and n.removesuffix(".json") + ".safetensors" in names]
    if not documents:
        return
    from hubsync.convert.state import is_state_document, rebuild_state

    for name in documents:
        document = staging / name
        # optimizer.json & co. are always hubsync's: a damaged one is an error, not a file to pass on as it is.
        if STATE_DOCUMENT_RE.match(name) or is_state_document(document):
            rebuild_state(document)
            document.unlink()
            document.with_suffix(".safetensors").unlink()


def _fetch_verified(hub: PullSource, plan: PullPlan, remote: RemoteFile, staging: Path) -> None:
    local = hub.download(plan.repo_id, plan.commit, remote.path, staging)
    if Path(os.path.abspath(local)) != Path(os.path.abspath(staging / remote.path)):
        raise PullVerificationError(remote.path, "was written somewhere else than asked")
    size = local.stat().st_size
    if size != remote.size:
        raise PullVerificationError(remote.path, f"has {size} bytes, the Hub lists {remote.size}")
    if remote.sha256 is not None:
        if hash_file(local, hashlib.sha256()) != [remote.sha256]:
            raise PullVerificationError(remote.path, "does not match the sha256 the Hub lists")
    else:
        if hash_file(local, hashlib.sha1(b"blob %d\0" % size)) != [remote.git_oid]:
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
