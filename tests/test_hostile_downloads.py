# ruff: noqa: F811  (pytest fixtures imported from test_hostile_remote are parameters here)
"""A hostile Hub serving pull's downloads: a body that goes on past the size the tree lists, a Hub that trickles,
a signal during a download, a listing too large for the disk or of too many files, a file that is also a folder.
Each pull ends in one line (or stops at the first signal), and nothing is placed or left half-written.

The hostile Hub is the proxy of test_hostile_remote.py in front of the local Hub."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_remote import Body, Hostile, hostile, invoke, one_line, pushed  # noqa: F401 (fixtures)

from hubsync.core.errors import HostileListingError, RemoteFileTooLargeError
from hubsync.core.pull import RemoteFile, plan_pull
from hubsync.hub import download
from hubsync.hub.client import MAX_TREE_ENTRIES, HubClient
from hubsync.hub.download import Transfers
from hubsync.localhub import RunningHub

MiB = 2**20
CAP = 50 * MiB  # what the proxy sends at most of an "endless" body: a regression fails, the disk does not fill
REV = "checkpoint-30"


def endless(chunk: int) -> Any:
    def chunks() -> Iterator[bytes]:
        for _ in range(CAP // chunk):
            yield b"{" * chunk

    return chunks


def trickle(seconds: float, most: int) -> Any:
    """One byte every `seconds`, `most` bytes in all: under any per-read timeout."""

    def chunks() -> Iterator[bytes]:
        for _ in range(most):
            time.sleep(seconds)
            yield b"{"

    return chunks


def listed(hub: RunningHub, path: str) -> RemoteFile:
    client = HubClient(hub.endpoint, hub.token)
    commit = client.resolve_commit("me/tiny", REV)
    return next(f for f in client.tree("me/tiny", commit) if f.path == path)


def left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- a body past the listed size --------------------------------------------------------------------------------


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["adapter_config.json", "adapter_model.safetensors"]),
    chunk=st.sampled_from([1024, 65536, MiB]),
    announce=st.booleans(),
)
def test_a_body_past_the_listed_size_is_cut_off_and_nothing_is_placed(
    pushed: Path,
    hub: RunningHub,
    hostile: Hostile,
    tmp_path: Path,
    path: str,
    chunk: int,
    announce: bool,
) -> None:
    size = listed(hub, path).size
    # chunked with no size, or a Content-Length of the whole 50 MiB: refused before a byte is read
    hostile.bodies = {path: Body(endless(chunk), {"Content-Length": str(CAP)})}
    if not announce:
        hostile.bodies[path].headers = {}
    hostile.sent = 0
    target = tmp_path / f"pulled-{chunk}-{announce}"
    started = time.monotonic()
    result = invoke(hostile.endpoint, hub, "pull", "me/tiny", "--revision", REV, "--to", str(target))
    took = time.monotonic() - started
    one_line(result, f'"{path}"', "the revision's tree lists", "read no further")
    assert left_in(target) == [] and took < 20, (left_in(target), took)
    assert hostile.sent < size + 16 * MiB  # what socket buffers held beyond the cut, far below the 50 MiB sent


def test_a_download_writes_no_byte_past_the_listed_size(
    pushed: Path, hub: RunningHub, hostile: Hostile, tmp_path: Path
) -> None:
    remote = listed(hub, "adapter_config.json")
    hostile.bodies = {remote.path: Body(endless(65536))}
    dest = tmp_path / "adapter_config.json"
    client = HubClient(hostile.endpoint, hub.token)
    commit = client.resolve_commit("me/tiny", REV)
    started = time.monotonic()
    with pytest.raises(RemoteFileTooLargeError):
        client.download("me/tiny", commit, remote, dest, Transfers())
    took = time.monotonic() - started
    assert dest.stat().st_size == remote.size  # cut off at the listed size exactly
    print(f"endless body: {dest.stat().st_size} bytes written (listed {remote.size}), stopped in {took:.2f} s")
    assert took < 10


# --- a Hub that trickles, and a signal during a download ------------------------------------------------------------


def test_a_trickling_hub_is_cut_off_at_the_deadline_for_the_size(
    pushed: Path,
    hub: RunningHub,
    hostile: Hostile,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(download, "DOWNLOAD_GRACE_S", 1.0)  # the minute, shortened: the floor rate stays
    size = listed(hub, "adapter_config.json").size
    assert download.download_seconds(size) < 1.2
    # one byte each 0.25 s for 12 s, then the connection closes (before the fix: a size mismatch after 12 s)
    hostile.bodies = {"adapter_config.json": Body(trickle(0.25, 48))}
    target = tmp_path / "pulled"
    started = time.monotonic()
    result = invoke(hostile.endpoint, hub, "pull", "me/tiny", "--revision", REV, "--to", str(target))
    took = time.monotonic() - started
    one_line(result, '"adapter_config.json" too slowly', "of its", "nothing was placed")
    assert left_in(target) == []
    assert took < 6, took
    assert download.download_seconds(10 * 10**9) > 60 * 60  # an honest 10 GB shard at 16 KiB/s has 7 days


def test_the_first_sigterm_ends_a_pull_stuck_on_a_slow_hub(
    pushed: Path,
    hub: RunningHub,
    hostile: Hostile,
    tmp_path: Path,
) -> None:
    hostile.bodies = {"adapter_config.json": Body(trickle(1.0, 60))}  # well inside the deadline for its size
    parent = tmp_path / "pulled"
    env = {
        **os.environ,
        "HF_ENDPOINT": hostile.endpoint,
        "HF_TOKEN": hub.token,
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubsync", "pull", "me/tiny", "--revision", REV, "--to", str(parent)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        waited = time.monotonic()
        while hostile.sent < 2 and proc.poll() is None and time.monotonic() - waited < 60:
            time.sleep(0.1)
        assert proc.poll() is None and hostile.sent >= 2, proc.communicate()
        assert any(p.name.startswith(".hubsync-tmp-pull-") for p in parent.iterdir())  # it is mid-download
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("the first SIGTERM did not end the pull within 10 s")
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    print(f"SIGTERM to exit: {took:.2f} s, exit {proc.returncode}")
    assert took < 4, took
    assert proc.returncode != 0
    assert left_in(parent) == []  # no staging folder, no half-written file


# --- listings that cannot be pulled -----------------------------------------------------------------------------------


def test_a_listing_larger_than_the_free_space_is_refused_before_any_download(
    pushed: Path,
    hub: RunningHub,
    hostile: Hostile,
    tmp_path: Path,
) -> None:
    terabyte = 10**12

    def huge(entries: list[Any]) -> list[Any]:
        return [
            {**e, "size": terabyte, **({"lfs": {**e["lfs"], "size": terabyte}} if e.get("lfs") else {})}
            for e in entries
        ]

    hostile.tree = huge
    target = tmp_path / "pulled"
    result = invoke(hostile.endpoint, hub, "pull", "me/tiny", "--revision", REV, "--to", str(target))
    one_line(result, "TB, more than the", "free where", "Nothing was written", "--to onto another disk")
    assert left_in(target) == []
    fetched = [r for r in hostile.requests if "/resolve/" in r and not r.endswith("/trainer_state.json")]
    assert fetched == []  # nothing downloaded (trainer_state.json is read into memory, with its own bound)


def test_a_listing_of_too_many_files_is_refused(
    pushed: Path,
    hub: RunningHub,
    hostile: Hostile,
    tmp_path: Path,
) -> None:
    hostile.extra_tree_entries = [f"shards/part-{i}.safetensors" for i in range(MAX_TREE_ENTRIES)]
    target = tmp_path / "pulled"
    result = invoke(hostile.endpoint, hub, "pull", "me/tiny", "--revision", REV, "--to", str(target))
    one_line(result, "sent a tree listing for me/tiny at checkpoint-30", f"went on past {MAX_TREE_ENTRIES:,} entries")
    assert left_in(target) == []


def test_a_file_that_is_also_a_folder_is_refused(
    pushed: Path,
    hub: RunningHub,
    hostile: Hostile,
    tmp_path: Path,
) -> None:
    hostile.extra_tree_entries = ["adapter_config.json/x"]
    target = tmp_path / "pulled"
    result = invoke(hostile.endpoint, hub, "pull", "me/tiny", "--revision", REV, "--to", str(target))
    one_line(result, '"adapter_config.json" both as a file and as a folder holding "adapter_config.json/x"')
    assert "Is a directory" not in result.stderr and left_in(target) == []


part = st.text(st.sampled_from("abcxyz019_-."), min_size=1, max_size=6).filter(lambda p: p.strip(".") == p)
paths = st.lists(st.lists(part, min_size=1, max_size=4).map("/".join), min_size=1, max_size=12, unique=True)


def _file(path: str) -> RemoteFile:
    return RemoteFile(path, 1, None, "0" * 40)


@settings(max_examples=300, deadline=None)
@given(paths, st.data())
def test_a_plan_refuses_a_path_listed_as_file_and_folder_or_twice(found: list[str], data: st.DataObject) -> None:
    files = ["adapter_model.safetensors", *found]
    clash = any(p.startswith(q + "/") for p in files for q in files)
    plan = lambda fs: plan_pull("me/x", "c-1", "0" * 40, [_file(p) for p in fs], Path("out"), 1)  # noqa: E731
    if clash:
        with pytest.raises(HostileListingError, match="both as a file and as a folder"):
            plan(files)
    else:
        assert {f.path for f in plan(files).files} == set(files)
        twice = data.draw(st.sampled_from(files))
        with pytest.raises(HostileListingError, match="twice"):
            plan([*files, twice])
