"""Fetch one file of a revision to disk, bounded: never more bytes than its tree lists, never longer than a
deadline for its size, and ended at once (every open connection shut down) when the pull is cancelled."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx2
from huggingface_hub import constants, get_session
from huggingface_hub.utils._http import _is_same_or_hub_host, hf_raise_for_status

from hubsync.core import errors
from hubsync.core.pull import RemoteFile

# The time a download may take: a minute, then at least 16 KiB/s. A slow but honest link passes: eight files at
# once (pull's workers) over 1 Mbit/s still get 16 KiB/s each; a 1 GB shard may take up to 17 hours. A Hub that
# trickles (a byte every few seconds, under the per-read timeout) is cut off instead of holding pull forever.
DOWNLOAD_GRACE_S = 60.0
DOWNLOAD_FLOOR_BYTES_PER_S = 16 * 1024
MAX_REDIRECTS = 20  # huggingface_hub's bound
ERROR_BODY_BYTES = 65536


def download_seconds(size: int) -> float:
    return DOWNLOAD_GRACE_S + size / DOWNLOAD_FLOOR_BYTES_PER_S


class DownloadCancelled(Exception):
    """The pull was cancelled (a signal, or another file failed): not a Hub fault, never retried."""


class Transfers:
    """The downloads of one pull in flight. `cancel()` shuts down each open connection, so a read blocked on a
    slow Hub returns at once instead of waiting out its timeout, and no new download starts."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._aborts: list[Callable[[], object]] = []

    def cancel(self) -> None:
        self.cancelled.set()
        with self._lock:
            for sock in self._sockets:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            aborts = list(self._aborts)
        for abort in aborts:
            with suppress(Exception):
                abort()

    @contextmanager
    def aborting(self, abort: Callable[[], object]) -> Iterator[None]:
        """While the block runs, `cancel()` also calls `abort` (which stops a transfer that is no socket of ours,
        such as hf_xet's)."""
        with self._lock:
            self._aborts.append(abort)
        try:
            if self.cancelled.is_set():
                abort()
            yield
        finally:
            with self._lock:
                self._aborts.remove(abort)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise DownloadCancelled

    @contextmanager
    def open(self, response: httpx2.Response) -> Iterator[None]:
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is None:
            yield
            return
        with self._lock:
            self._sockets.add(sock)
        try:
            if self.cancelled.is_set():
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            yield
        finally:
            with self._lock:
                self._sockets.discard(sock)


def fetch_over_http(
    url: str,
    headers: dict[str, str],
    remote: RemoteFile,
    dest: Path,
    deadline: float,
    transfers: Transfers,
    where: tuple[str, str, str],  # (endpoint, repo_id, revision), for messages
) -> None:
    """GET `url` into `dest` (created or truncated; its folder must exist). Redirects are followed as
    huggingface_hub follows them: the authorization header goes only to the same origin or a known Hub host,
    never to a CDN. Cut off as soon as the body goes past `remote.size` (nothing more is written) or time passes
    `deadline` (time.monotonic()). Transport errors are raised as they are, for the caller's retries."""
    transfers.check()
    endpoint, repo_id, revision = where
    started = deadline - download_seconds(remote.size)  # when the first try began (retries share the deadline)
    if time.monotonic() > deadline:
        took = round(time.monotonic() - started)
        raise errors.DownloadTooSlowError(endpoint, remote.path, remote.size, 0, took, repo_id, revision)
    headers = {**headers, "Accept-Encoding": "identity"}
    session = get_session()
    for _ in range(MAX_REDIRECTS + 1):
        request = session.build_request("GET", url, headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT)
        try:
            response = session.send(request, stream=True, follow_redirects=False)
        except httpx2.TransportError:
            transfers.check()
            raise
        try:
            with transfers.open(response):
                if response.has_redirect_location:
                    target = urljoin(url, response.headers["Location"])
                    if not _is_same_or_hub_host(url, target):
                        headers.pop("authorization", None)  # a signed CDN link: the token stays on the Hub
                    url = target
                    continue
                if response.status_code >= 400:
                    _raise_for_status(response)
                _write_capped(response, remote, dest, deadline, transfers, where, started)
                return
        except httpx2.TransportError:
            transfers.check()  # a connection shut down by cancel() is the cancel, not a Hub fault
            raise
        finally:
            response.close()
    raise httpx2.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")


@dataclass(frozen=True)
class XetAccess:
    """Where a Hub keeps its Xet storage, and a token to read from it until `expiry` (Unix seconds)."""

    cas_url: str
    token: str
    expiry: int


def fetch_over_xet(
    storage: XetAccess,
    remote: RemoteFile,
    dest: Path,
    deadline: float,
    transfers: Transfers,
    where: tuple[str, str, str],
) -> None:
    """Download a Xet-backed file into `dest` through hf_xet, as huggingface_hub does when the Hub lists a Xet
    hash, from `storage` (asked of the Hub by the caller). A cancelled pull, or the deadline passing, aborts it.
    hf_xet's own failures are raised as they are, for the caller's translation; the caller checks the file's size
    and sha256, as after an HTTP download."""
    import hf_xet
    from huggingface_hub.utils._xet import get_xet_session

    transfers.check()
    endpoint, repo_id, revision = where
    started = deadline - download_seconds(remote.size)
    group = get_xet_session().new_file_download_group(  # type: ignore[no-untyped-call]
        endpoint=storage.cas_url, token=storage.token, token_expiry_unix_secs=storage.expiry
    )
    late = threading.Event()

    def too_late() -> None:
        late.set()
        group.abort()

    timer = threading.Timer(max(deadline - time.monotonic(), 0.0), too_late)
    timer.daemon = True
    try:
        with transfers.aborting(group.abort):
            timer.start()
            group.start_download_file(hf_xet.XetFileInfo(remote.xet_hash, remote.size), str(dest))
            group.wait_to_finish()  # hf_xet downloads only while this waits
    except Exception as exc:
        transfers.check()  # aborted by cancel(): the cancel, not a failure of the storage
        if late.is_set():
            done = dest.stat().st_size if dest.exists() else 0
            took = round(time.monotonic() - started)
            raise errors.DownloadTooSlowError(
                endpoint, remote.path, remote.size, done, took, repo_id, revision
            ) from exc
        raise
    finally:
        timer.cancel()


def _write_capped(
    response: httpx2.Response,
    remote: RemoteFile,
    dest: Path,
    deadline: float,
    transfers: Transfers,
    where: tuple[str, str, str],
    started: float,
) -> None:
    endpoint, repo_id, revision = where
    announced = _content_length(response)
    if announced is not None and announced > remote.size:
        raise errors.RemoteFileTooLargeError(
            endpoint, remote.path, remote.size, repo_id, revision, size=announced, listed=True
        )
    written = 0
    with open(dest, "wb") as out:  # never creates folders: a staging folder removed by a cancel stays removed
        for chunk in response.iter_bytes():
            transfers.check()
            room = remote.size - written
            if len(chunk) > room:
                out.write(chunk[:room])  # what the tree lists, and not a byte more
                raise errors.RemoteFileTooLargeError(endpoint, remote.path, remote.size, repo_id, revision, listed=True)
            out.write(chunk)
            written += len(chunk)
            now = time.monotonic()
            if now > deadline and written < remote.size:
                raise errors.DownloadTooSlowError(
                    endpoint, remote.path, remote.size, written, round(now - started), repo_id, revision
                )


def _content_length(response: httpx2.Response) -> int | None:
    encoded = response.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
    value = response.headers.get("Content-Length")
    if encoded or value is None:
        return None
    try:
        return max(int(value), 0)
    except ValueError:
        return None


def _raise_for_status(response: httpx2.Response) -> None:
    """The Hub's explanation of a failed download, read with a bound of its own, raised as huggingface_hub would."""
    body = b""
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > ERROR_BODY_BYTES:
            break
    hf_raise_for_status(
        httpx2.Response(
            response.status_code, headers=response.headers, content=body[:ERROR_BODY_BYTES], request=response.request
        )
    )
