"""The one place that talks to a Hub: builds huggingface_hub calls and turns their failures into HubsyncErrors."""

from __future__ import annotations

import contextvars
import json
import os
import random
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urljoin

import httpx2
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    _commit_api,
    constants,
    get_session,
    get_token,
    hf_hub_url,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    OfflineModeIsEnabled,
    OIDCError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import LFSFileInfo
from huggingface_hub.utils import _xet as hf_xet_glue
from huggingface_hub.utils._datetime import parse_datetime
from huggingface_hub.utils._headers import build_hf_headers
from huggingface_hub.utils._http import hf_raise_for_status, parse_ratelimit_headers
from huggingface_hub.utils._runtime import is_xet_available
from huggingface_hub.utils._xet import XetConnectionInfo, parse_xet_connection_info_from_headers

from hubsync import __version__
from hubsync.core import errors
from hubsync.core.checkpoint import MAX_JSON_BYTES, loads_json
from hubsync.core.config import DEFAULT_MAX_WAIT, check_endpoint, is_loopback_url, is_token_text
from hubsync.core.preflight import RepoFacts
from hubsync.core.prune import StoredFile
from hubsync.core.pull import RemoteFile
from hubsync.core.remote_paths import check_remote_path
from hubsync.core.secrets import redact, saved_tokens
from hubsync.core.transient import transient_status, xet_storage_busy
from hubsync.files import KnownDigest
from hubsync.hub.download import (
    DownloadCancelled,
    Transfers,
    XetAccess,
    download_seconds,
    fetch_over_http,
    fetch_over_xet,
)

DEFAULT_ENDPOINT = "https://huggingface.co"
_XET_SWITCH = threading.Lock()
_COMMIT_ID = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)  # then give up: five attempts in all
MAX_RETRY_AFTER = 60.0
MAX_REMOTE_READ_BYTES = MAX_JSON_BYTES  # a file read from a Hub into memory: the bound of a local JSON file
# httpx's timeouts count each read on its own (and huggingface_hub sets none on its API calls), so a Hub that
# sends a byte every few seconds would never be done: a whole answer, and a whole listing, have a deadline.
ANSWER_DEADLINE = 120.0  # seconds for one answer read whole: a file read into memory, one page of a listing
LISTING_DEADLINE = 600.0  # seconds for every page of one listing together
# A listing is paged by `Link: <...>; rel="next"`, which a Hub may send for ever: what hubsync reads of one.
MAX_LISTING_PAGES = 1_000  # the real Hub sends 1,000 tree entries a page (50 with expand), 50 commits
MAX_TREE_ENTRIES = 100_000  # a checkpoint revision holds tens of files; the real Hub allows 10,000 a folder
MAX_COMMITS = 10_000  # main's history: about one commit a push
MAX_STORED_FILES = 1_000_000  # a repository's LFS files: about ten a checkpoint pushed
_FILE_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
MAX_LISTING_BYTES = MAX_JSON_BYTES
# hf_xet's own retries (5 attempts from a 3 s pause, for up to 360 s, 60 s to connect, 300 s a read) let a Xet
# storage that does not answer hold a push for over five minutes (332 s seen), and then the failure read as the
# Hub's. Bounded here for the hf_xet session of each commit, unless the user set the HF_XET_* variable herself.
XET_LIMITS: dict[str, int | timedelta] = {
    "client.retry_max_attempts": 3,
    "client.retry_base_delay": timedelta(seconds=1),
    "client.retry_max_duration": timedelta(seconds=20),
    "client.connect_timeout": timedelta(seconds=10),
    "client.read_timeout": timedelta(seconds=30),
    "client.max_xorb_grant_attempts": 2,
}
XET_CHECK_SECONDS = 3.0  # after a failed transfer: whether the storage takes connections at all
# A storage that takes connections and never answers is retried at 30 s a read, request after request (245 s seen
# for a 2 MB file): an upload in which hf_xet neither reads nor sends a byte for this long is stopped.
XET_STALL_SECONDS = 60.0
T = TypeVar("T")


RetryReporter = Callable[[str, float], None]  # (what went wrong, seconds until the next try): the CLI prints it
RateLimitReporter = Callable[[float], None]  # seconds of a wait the Hub's rate limit asks for: the CLI prints it
RATE_LIMIT_JITTER = (0.2, 1.0)  # seconds added to the Hub's reset time: clocks differ, and clients in step collide


class RateLimitTooLong(Exception):
    """The Hub's rate limit asks for a longer wait than a call may spend (`max_wait`, in total): no retry.
    HubClient turns it into errors.RateLimitedError."""

    def __init__(self, asked: int, waited: float, max_wait: float, answer: Exception) -> None:
        super().__init__(f"rate-limited by the Hub for {asked} s, over the {max_wait:g} s allowed")
        self.asked = asked
        self.waited = waited
        self.max_wait = max_wait
        self.answer = answer


class RateLimitAnswer(Exception):
    """A rate-limited answer (`rate_limit_reset` not None), or a busy one naming a Retry-After, raised as it arrives
    while with_retries runs a call.
    huggingface_hub retries some requests itself (preupload, LFS batch and verify, Xet tokens, paged reads): it
    would wait as long as the Hub asks, five times, without a word and past any bound. Raised from the session's
    response hook, this ends its retries (it retries only network errors), so that with_retries waits, says so,
    and keeps to max_wait, for those calls as for the others."""

    def __init__(self, response: httpx2.Response) -> None:
        super().__init__(f"rate-limited by the Hub ({response.request.method} {response.request.url.path})")
        self.response = response


_WAITS_FOR_RATE_LIMITS: contextvars.ContextVar[bool] = contextvars.ContextVar("hubsync_rate_limits", default=False)


def _rate_limit_hook(response: httpx2.Response) -> None:
    """huggingface_hub's shared session's response hook: a no-op but inside with_retries (in the thread that
    runs it: huggingface_hub's own worker threads, for LFS uploads, keep its own waits)."""
    if not _WAITS_FOR_RATE_LIMITS.get():
        return
    if rate_limit_reset(response) is not None:
        raise RateLimitAnswer(response)
    if transient_status(response.status_code) and "Retry-After" in response.headers:
        raise RateLimitAnswer(response)  # huggingface_hub would sleep it out in full: with_retries bounds it


def _hook_rate_limits() -> None:
    """Put _rate_limit_hook on huggingface_hub's session (made anew after set_client_factory or close_session)."""
    hooks = get_session().event_hooks["response"]
    if _rate_limit_hook not in hooks:
        hooks.append(_rate_limit_hook)


def _unwrapped_answer(call: Callable[[], T]) -> T:
    """`call()`, with a RateLimitAnswer that huggingface_hub wrapped (its LFS upload raises `RuntimeError("Error
    while uploading ...")` from whatever stopped it) raised as itself, for with_retries to wait out."""
    try:
        return call()
    except RuntimeError as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, RateLimitAnswer):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from exc


def rate_limit_reset(response: httpx2.Response) -> int | None:
    """The seconds until the Hub's rate-limit window resets, when `response` is a 429 that says the window is
    used up (`RateLimit: "api";r=0;t=<seconds>`, hub-docs docs/hub/rate-limits.md, often without Retry-After);
    None otherwise. Read as huggingface_hub reads it (its parse_ratelimit_headers, used by its http_backoff)."""
    if response.status_code != 429:
        return None
    info = parse_ratelimit_headers(response.headers)
    return info.reset_in_seconds if info is not None and info.remaining == 0 else None


def with_retries(
    call: Callable[[], T],
    delays: Sequence[float] = RETRY_DELAYS,
    on_retry: RetryReporter | None = None,
    max_pause: float = MAX_RETRY_AFTER,
    *,
    max_wait: float = DEFAULT_MAX_WAIT,
    on_rate_limit: RateLimitReporter | None = None,
) -> T:
    """Run `call`, again after a pause when the Hub is busy or slow (429, 5xx, timeouts, dropped connections).

    huggingface_hub retries uploads and paged reads itself, but not commits, refs, branches, tags or repository
    creation. A server's Retry-After is honoured (up to `max_pause`). A connection that is refused (or a host that
    does not resolve) is not a busy Hub: nobody listens there, and waiting 16 s would only hide that, so it is
    raised at once. Every pause is reported to `on_retry` first, so that a person sees why nothing happens.

    A 429 whose RateLimit header says the window is used up is no failure: the Hub says when it serves again. It
    is waited out (its reset time and a little jitter, reported to `on_rate_limit`) without using up an attempt
    of `delays`, for at most `max_wait` seconds in all; a wait that would go past that raises RateLimitTooLong
    at once."""
    attempt = 0
    waited = 0.0
    _hook_rate_limits()
    while True:
        waits = _WAITS_FOR_RATE_LIMITS.set(True)
        try:
            return _unwrapped_answer(call)
        except (HfHubHTTPError, RateLimitAnswer) as exc:
            response = exc.response
            if response is None or not transient_status(response.status_code):
                raise
            asked = rate_limit_reset(response)
            if asked is not None:
                left = max_wait - waited
                if asked > left or left <= 0:
                    raise RateLimitTooLong(asked, waited, max_wait, exc) from exc
                pause = min(asked + random.uniform(*RATE_LIMIT_JITTER), left)
                if on_rate_limit is not None:
                    on_rate_limit(pause)
                time.sleep(pause)
                waited += pause
                continue
            if attempt == len(delays):
                if isinstance(exc, RateLimitAnswer):  # raised by the hook in place of huggingface_hub's own error
                    raise HfHubHTTPError(str(exc), response=response) from exc
                raise
            wait = _retry_after(response.headers.get("Retry-After"))
            reason = f"the Hub answered {response.status_code}"
        except httpx2.ConnectError:
            raise
        except httpx2.TransportError as exc:
            if attempt == len(delays):
                raise
            wait, reason = None, _transport_reason(exc)
        except errors.XetStorageError as exc:
            if exc.kind != "busy" or attempt == len(delays):
                raise
            wait, reason = None, "the Xet storage is busy with another transfer"
        finally:
            _WAITS_FOR_RATE_LIMITS.reset(waits)
        pause = min(wait if wait is not None else delays[attempt] * random.uniform(0.8, 1.2), max_pause)
        attempt += 1
        if on_retry is not None:
            on_retry(reason, pause)
        time.sleep(pause)


def _transport_reason(exc: httpx2.TransportError) -> str:
    if isinstance(exc, httpx2.TimeoutException):
        return "the Hub did not answer in time"
    return "the connection broke"


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return None  # an HTTP date: rare enough to treat as unknown


@dataclass
class RateLimitPauses:
    """The seconds a call has waited for the Hub's rate limit: not the Hub's slowness, so not in its deadline."""

    seconds: float = 0.0


@dataclass(frozen=True)
class CommitResult:
    oid: str
    url: str
    created: bool  # False when the Hub already held exactly these files and no commit was made
    # The bytes this commit sent: the regular files in the commit, plus what went to LFS (files the Hub lacked)
    # or to Xet storage (after Xet's deduplication). None when huggingface_hub did not let hubsync count them.
    sent_bytes: int | None = 0
    xet: bool = False  # uploaded through Xet


def resolve_endpoint(endpoint: str | None) -> str:
    """--endpoint, else HF_ENDPOINT as it is now (huggingface_hub only reads it at import), else the Hub."""
    source = "--endpoint" if endpoint else "HF_ENDPOINT"
    url = endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    try:
        return check_endpoint(url)
    except ValueError as exc:
        raise errors.ConfigError(source, f"{json.dumps(url)} {exc}") from exc


class HubClient:
    """A Hub at one endpoint, with one token (None: huggingface_hub's own lookup, HF_TOKEN first)."""

    def __init__(
        self,
        endpoint: str | None = None,
        token: str | None = None,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        on_retry: RetryReporter | None = None,
        max_pause: float = MAX_RETRY_AFTER,  # the longest pause after a failure, whatever the Hub's Retry-After says
        *,
        max_wait: float = DEFAULT_MAX_WAIT,  # the longest one call waits out the Hub's rate limit, in all
        on_rate_limit: RateLimitReporter | None = None,
    ) -> None:
        self.endpoint = resolve_endpoint(endpoint)
        for source, raw in (("--token", token), ("HF_TOKEN", os.environ.get("HF_TOKEN"))):
            value = (raw or "").replace("\r", "").replace("\n", "").strip()  # as huggingface_hub cleans it
            if (value or (raw is not None and source == "--token")) and not is_token_text(value):
                raise errors.ConfigError(source, "the token is empty, or holds spaces or characters a token never has")
        self._token = token
        self.retry_delays = retry_delays
        self.on_retry = on_retry
        self.max_pause = max_pause
        self.max_wait = max_wait
        self.on_rate_limit = on_rate_limit
        self.api = HfApi(endpoint=self.endpoint, token=token, library_name="hubsync", library_version=__version__)
        # What one process learns once per repository: each is a round trip to a remote Hub.
        self._private: dict[str, bool] = {}
        self._xet: dict[str, XetConnectionInfo | None] = {}  # None: no Xet there, plain LFS
        self._root_commit: dict[str, str] = {}
        # A commit never changes: its history and what its LFS files are, once a process (a prune reads every
        # commit of every remaining ref when it plans, and again just before it deletes).
        self._histories: dict[tuple[str, str], list[str]] = {}
        self._stored: dict[tuple[str, str], set[str]] = {}

    def _call(
        self,
        call: Callable[[], T],
        repo_id: str | None = None,
        revision: str | None = None,
        paused: RateLimitPauses | None = None,
    ) -> T:
        """One Hub call: retried when the Hub is busy, its failure translated to a HubsyncError. Its waits for the
        Hub's rate limit are added to `paused`, for a call whose deadline they must not use up."""

        def rate_limited(pause: float) -> None:
            if paused is not None:
                paused.seconds += pause
            if self.on_rate_limit is not None:
                self.on_rate_limit(pause)

        with self._errors(repo_id, revision):
            return with_retries(
                call,
                self.retry_delays,
                self.on_retry,
                self.max_pause,
                max_wait=self.max_wait,
                on_rate_limit=rate_limited,
            )

    @property
    def token(self) -> str | None:
        with self._errors():
            return self._token or get_token()  # with HF_OIDC_RESOURCE set: a Trusted Publishing exchange

    @contextmanager
    def _errors(self, repo_id: str | None = None, revision: str | None = None) -> Iterator[None]:
        """Translate what huggingface_hub and the network raise into hubsync's errors."""
        where: dict[str, Any] = {"repo_id": repo_id, "revision": revision}
        try:
            try:
                yield
            except Exception as exc:  # a Hub may quote the Authorization header: no token in any traceback
                _redact_in_place(exc, self._known_tokens())
                raise
        except RateLimitTooLong as exc:
            raise errors.RateLimitedError(self.endpoint, exc.asked, exc.waited, exc.max_wait, **where) from exc
        except OIDCError as exc:
            raise errors.TrustedPublishingError(self.endpoint, str(exc).split(". ")[0], **where) from exc
        except RevisionNotFoundError as exc:
            raise errors.RevisionNotFoundError(self.endpoint, self._said(exc), **where) from exc
        except RepositoryNotFoundError as exc:
            raise errors.RepoNotFoundError(self.endpoint, self._said(exc), **where) from exc
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if exc.response is not None and exc.response.request.url.path.endswith("/oauth/token"):
                raise errors.TrustedPublishingError(self.endpoint, self._said(exc), **where) from exc
            if status == 401:
                raise errors.TokenRejectedError(self.endpoint, self._said(exc), **where) from exc
            if status == 403:
                raise errors.PermissionDeniedError(self.endpoint, self._said(exc), **where) from exc
            if status == 412:
                raise errors.CommitConflictError(self.endpoint, self._said(exc), **where) from exc
            if (  # a file the revision's tree lists, whose content the Hub says is not there: deleted for good
                status == 404
                and exc.response is not None
                and exc.response.headers.get("X-Error-Code") == "EntryNotFound"
                and "/resolve/" in exc.response.request.url.path
            ):
                raise errors.RemoteFileGoneError(self.endpoint, self._said(exc), **where) from exc
            if status == 404:  # a 404 that names no repository or revision: no Hub route answered
                raise errors.NotAHubError(self.endpoint, self._said(exc), **where) from exc
            raise errors.HubError(self.endpoint, self._said(exc), **where, status=status) from exc
        except (httpx2.TransportError, OfflineModeIsEnabled, ConnectionError) as exc:
            raise errors.HubUnreachableError(self.endpoint, type(exc).__name__, **where) from exc
        except ValueError as exc:  # e.g. huggingface_hub's own checks of what it is asked to send, one a line
            raise errors.HubError(self.endpoint, " ".join(str(exc).split()), **where) from exc
        except (KeyError, TypeError, AttributeError, RecursionError) as exc:  # an answer of the wrong shape
            detail = f"its answer is not what a Hub sends ({type(exc).__name__})"
            raise errors.HubError(self.endpoint, detail, **where) from exc

    def _known_tokens(self) -> list[str]:
        """The tokens this client may send: --token, HF_TOKEN and the saved login (read, never exchanged)."""
        return [t for t in (self._token, *saved_tokens()) if t]

    def _said(self, exc: HfHubHTTPError) -> str:
        return redact(_server_message(exc), self._known_tokens())

    def require_token(self) -> None:
        if not self.token:
            detail = f"no Hugging Face token for {self.endpoint}: pass token=, set HF_TOKEN, or run `hf auth login`"
            raise errors.TokenMissingError(self.endpoint, detail)

    def ensure_repo(self, repo_id: str, private: bool) -> bool:
        """Create the repository when it is missing (an existing one is left as it is); whether it is private."""
        if repo_id not in self._private:
            self._call(lambda: self.api.create_repo(repo_id, private=private, exist_ok=True), repo_id)
            info = self._call(lambda: self.api.repo_info(repo_id), repo_id)
            self._private[repo_id] = bool(info.private)
        return self._private[repo_id]

    def repo_facts(self, repo_id: str) -> RepoFacts:
        """Whether the repository exists, whether it is private, its branches and tags: read only, for the checks
        a push makes before it changes anything."""
        try:
            info = self._call(lambda: self.api.repo_info(repo_id), repo_id)
        except errors.RepoNotFoundError:
            return RepoFacts(self.endpoint, repo_id, exists=False)
        self._private[repo_id] = bool(info.private)
        branches, tags = self.refs(repo_id)
        return RepoFacts(self.endpoint, repo_id, True, bool(info.private), branches, tags)

    def refs(self, repo_id: str) -> tuple[dict[str, str], dict[str, str]]:
        """The repository's branches and tags, each name -> commit."""
        refs = self._call(lambda: self.api.list_repo_refs(repo_id), repo_id)
        with self._errors(repo_id):
            found = [{r.name: r.target_commit for r in kind} for kind in (refs.branches, refs.tags)]
        for named in found:
            if not all(isinstance(n, str) and isinstance(c, str) and _COMMIT_ID.fullmatch(c) for n, c in named.items()):
                raise self._malformed("refs", repo_id)
        return found[0], found[1]

    def branch_head(self, repo_id: str, branch: str) -> str | None:
        return self.refs(repo_id)[0].get(branch)

    def ensure_branch(self, repo_id: str, branch: str) -> bool:
        """Create `branch` when missing, from main's first commit: a checkpoint revision then holds only its
        own files, not main's index or whatever else main has gathered since. Whether it was created."""
        if branch in self.refs(repo_id)[0]:
            return False
        if repo_id not in self._root_commit:
            commits = self._commits(repo_id, "main")
            self._root_commit[repo_id] = commits[-1][0]
        root = self._root_commit[repo_id]
        self._call(
            lambda: self.api.create_branch(repo_id, branch=branch, revision=root, exist_ok=True), repo_id, branch
        )
        return True

    def delete_branch(self, repo_id: str, branch: str) -> bool:
        """Delete a branch (never main); False when it was already gone."""
        if branch == "main":
            raise ValueError("main is never deleted")
        try:
            self._call(lambda: self.api.delete_branch(repo_id, branch=branch), repo_id, branch)
        except errors.RevisionNotFoundError:
            return False
        return True

    def ensure_tag(self, repo_id: str, tag: str, commit: str) -> None:
        """Tag `commit`; a tag already there is fine, one on another commit is an error (tags never move)."""
        existing = self.refs(repo_id)[1].get(tag)
        if existing == commit:
            return
        if existing is not None:
            raise errors.TagExistsError(self.endpoint, f"it points to {existing[:12]}", repo_id=repo_id, revision=tag)
        self._call(lambda: self.api.create_tag(repo_id, tag=tag, revision=commit), repo_id, tag)

    def delete_tag(self, repo_id: str, tag: str) -> bool:
        """Delete a tag, through the Hub's route for tags (a branch of that name stays); False when it was
        already gone."""
        try:
            self._call(lambda: self.api.delete_tag(repo_id, tag=tag), repo_id, tag)
        except errors.RevisionNotFoundError:
            return False
        return True

    def offers_xet(self, repo_id: str, revision: str) -> bool:
        """Whether this endpoint hands out Xet write tokens; a Hub without Xet (404: no such route) takes plain LFS
        uploads. A busy Hub (429, 5xx, a timeout) is asked again as any call is; any other failure is raised, and
        only an answer is remembered for the rest of the run. XetStorageError when the token handed out has
        already expired (a clock that is off, or a broken Hub): hf_xet would go on with it and fail later, if at
        all, for another reason."""
        return self._xet_info(repo_id, revision) is not None

    def _xet_info(self, repo_id: str, revision: str) -> XetConnectionInfo | None:
        if not is_xet_available():
            return None
        if repo_id in self._xet:
            return self._xet[repo_id]
        url = f"{self.endpoint}/api/models/{repo_id}/xet-write-token/{quote(revision, safe='')}"
        headers = build_hf_headers(token=self.token, library_name="hubsync", library_version=__version__)

        def probe() -> XetConnectionInfo | None:
            timeout = float(constants.HF_HUB_DOWNLOAD_TIMEOUT)
            deadline = time.monotonic() + ANSWER_DEADLINE  # as every answer read whole: a trickle is given up on
            with get_session().stream("GET", url, headers=headers, timeout=timeout) as streamed:
                body = bytearray()
                for chunk in streamed.iter_bytes():
                    body += chunk
                    if len(body) > 65536:
                        raise self._malformed("Xet token", repo_id)
                    if time.monotonic() > deadline:
                        raise errors.HubTooSlowError(self.endpoint, "Xet token", ANSWER_DEADLINE, repo_id, revision)
                response = httpx2.Response(
                    streamed.status_code, headers=streamed.headers, content=bytes(body), request=streamed.request
                )
            if response.status_code == 404 and response.headers.get("X-Error-Code") not in _NAMED_MISSING:
                return None  # a Hub without the route (the real Hub has it for every repository it can see)
            hf_raise_for_status(response)
            found = parse_xet_connection_info_from_headers(response.headers) or _xet_info_of_body(response)
            if found is None or not _storage_allowed(found.endpoint, self.endpoint):
                raise self._malformed("Xet token", repo_id)  # a remote Hub naming local:// storage included
            return found

        info = self._call(probe, repo_id, revision)
        if info is not None and info.expiration_unix_epoch <= time.time():
            ago = int(time.time() - info.expiration_unix_epoch)
            raise errors.XetStorageError(
                self.endpoint,
                _storage_name(info.endpoint),
                "expired",
                f"it expired {ago} s before it was handed out",
                repo_id,
                revision,
            )
        self._xet[repo_id] = info
        return info

    def commit_files(
        self,
        repo_id: str,
        branch: str,
        files: Sequence[tuple[Path | bytes, str]],
        message: str,
        description: str = "",
        parent_commit: str | None = None,
        delete: Sequence[str] = (),
        digests: Mapping[Path, KnownDigest] | None = None,
    ) -> CommitResult:
        """Upload `(local file or bytes, path in repo)` pairs to `branch`, whose head is `parent_commit`, and
        delete the paths in `delete`, as one commit. CommitConflictError when the branch has moved since;
        XetStorageError when the Xet storage the Hub hands out fails. Nothing to add or delete: no commit.
        A file of `digests` that is still the one hashed is given its sha256, so huggingface_hub (LFS) and hf_xet
        do not hash it again."""
        if not files and not delete and parent_commit is not None:
            return CommitResult(parent_commit, f"{self.web_url(repo_id)}/commit/{parent_commit}", created=False)
        xet_info = self._xet_info(repo_id, branch)

        def commit() -> tuple[Any, _Sent]:
            operations: list[Any] = [_addition(src, dest, digests or {}) for src, dest in files]
            operations += [CommitOperationDelete(path_in_repo=path) for path in delete]
            with _xet(xet_info is not None, operations, xet_info.endpoint if xet_info else None) as sent:
                try:
                    info = self.api.create_commit(
                        repo_id,
                        operations,
                        commit_message=message,
                        commit_description=description,
                        revision=branch,
                        parent_commit=parent_commit,
                    )
                except Exception as exc:
                    if xet_info is not None and sent.in_xet:  # raised while hf_xet ran: its storage's failure
                        # its text may name the storage's token, or its folder (HUBSYNC_DEBUG shows the cause)
                        secrets = [*self._known_tokens(), xet_info.access_token]
                        if not xet_info.endpoint.startswith(("http://", "https://")):
                            secrets.append(xet_info.endpoint.split("://", 1)[-1])
                        _redact_in_place(exc, secrets)
                        if sent.stalled is not None:
                            detail = f"no byte read or sent for {sent.stalled:g} s"
                            storage = _storage_name(xet_info.endpoint)
                            raise errors.XetStorageError(
                                self.endpoint, storage, "broken", detail, repo_id, branch
                            ) from exc
                        raise self._xet_failure(exc, xet_info, repo_id, branch) from exc
                    raise
            return info, sent

        info, sent = self._call(commit, repo_id, branch)
        created = info.oid != parent_commit
        return CommitResult(
            oid=info.oid, url=info.commit_url, created=created, sent_bytes=sent.total() if created else 0, xet=sent.xet
        )

    def _xet_failure(self, exc: BaseException, info: XetConnectionInfo, repo_id: str, revision: str) -> Exception:
        """The HubsyncError for what hf_xet raised. hf_xet 1.8 raises a ConnectionError for nearly everything
        (its text names the HTTP status and the URL), XetAuthenticationError (a PermissionError) for some refusals:
        its text is read, never shown (it holds the storage's URL). A failure of the Hub's own token route (which
        hf_xet calls to refresh its token) is the Hub's."""
        text = str(exc)
        found = re.search(r"\((\d{3}) [^)]*\)", text)
        status = int(found.group(1)) if found else None
        where: dict[str, Any] = {"repo_id": repo_id, "revision": revision}
        if xet_storage_busy(text):
            return errors.XetStorageError(
                self.endpoint, _storage_name(info.endpoint), "busy", "another transfer has it open", **where
            )
        if re.search(r"/xet-(?:write|read)-token", text):
            detail = f"{status}: its Xet token route, asked by hf_xet" if status else "its Xet token route failed"
            if status == 401:
                return errors.TokenRejectedError(self.endpoint, detail, **where)
            if status == 403:
                return errors.PermissionDeniedError(self.endpoint, detail, **where)
            return errors.HubError(self.endpoint, detail, **where, status=status)
        storage = _storage_name(info.endpoint)

        def failed(kind: str, detail: str) -> Exception:
            return errors.XetStorageError(self.endpoint, storage, kind, detail, **where, status=status)

        if status in (401, 403) or isinstance(exc, PermissionError):
            self._xet.pop(repo_id, None)  # asked again: a token that expired meanwhile is said to be so
            try:
                self._xet_info(repo_id, revision)
            except errors.XetStorageError as expired:
                return expired
            except errors.HubsyncError:
                pass  # the refusal is what failed first
            return failed("refused", f"it answered {status}" if status else "authentication failed")
        if status is not None:
            return failed("broken", f"it answered {status}")
        if not info.endpoint.startswith(("http://", "https://")):
            return failed("broken", type(exc).__name__)
        why = _unreachable(info.endpoint)
        if why is not None:
            return failed("unreachable", why)
        return failed("broken", "the connection broke" if "timed out" not in text.lower() else "it did not answer")

    def read_file(self, repo_id: str, revision: str, path: str, limit: int = MAX_REMOTE_READ_BYTES) -> bytes | None:
        """A file of a revision, read into memory, or None when the revision has no such file. At most `limit`
        bytes (the 64 MiB hubsync reads of a local JSON file): a larger size announced by the Hub is refused
        before anything is read, and a Hub that sends more than it announced (or than `limit`) is cut off."""
        url = hf_hub_url(repo_id, path, revision=revision, endpoint=self.endpoint)
        try:
            return self._call(lambda: self._read_capped(url, path, limit, repo_id, revision), repo_id, revision)
        except errors.HubError as exc:
            if isinstance(exc.__cause__, RemoteEntryNotFoundError):
                return None
            raise

    def _read_capped(self, url: str, path: str, limit: int, repo_id: str, revision: str) -> bytes:
        def too_large(size: int | None, announced: int | None) -> errors.HubError:
            return errors.RemoteFileTooLargeError(
                self.endpoint, path, limit, repo_id, revision, size=size, announced=announced
            )

        def too_slow() -> errors.HubError:
            return errors.HubTooSlowError(self.endpoint, path, ANSWER_DEADLINE, repo_id, revision)

        deadline = time.monotonic() + ANSWER_DEADLINE
        return self._get_bounded(url, None, limit, deadline, too_large, too_slow)[0]

    def _get_bounded(
        self,
        url: str,
        params: dict[str, Any] | None,
        limit: int,
        deadline: float,
        too_large: Callable[[int | None, int | None], errors.HubError],
        too_slow: Callable[[], errors.HubError],
    ) -> tuple[bytes, str | None]:
        """One GET read whole into memory, and the next page its `Link` header names (absolute), if any. At most
        `limit` bytes (`too_large(size announced, None)` before reading, `too_large(None, announced)` when the
        answer goes on past `limit` or past its announced size), done by `deadline` (time.monotonic) or
        `too_slow()`: each read's timeout alone lets a Hub trickle for ever."""
        headers = build_hf_headers(token=self.token, library_name="hubsync", library_version=__version__)
        timeout = max(min(float(constants.HF_HUB_DOWNLOAD_TIMEOUT), deadline - time.monotonic()), 0.1)
        with get_session().stream(
            "GET", url, params=params, headers=headers, follow_redirects=True, timeout=timeout
        ) as response:
            if response.status_code >= 400:  # the explanation, read with a bound of its own
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > 65536 or time.monotonic() > deadline:
                        break
                hf_raise_for_status(
                    httpx2.Response(
                        response.status_code, headers=response.headers, content=body[:65536], request=response.request
                    )
                )
            announced = _announced_size(response.headers)
            if announced is not None and announced > limit:
                raise too_large(announced, None)
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > (limit if announced is None else announced):
                    raise too_large(None, announced)
                if time.monotonic() > deadline:
                    raise too_slow()
            following = response.links.get("next", {}).get("url")
            return bytes(data), urljoin(str(response.url), following) if following else None

    def _listing(
        self,
        url: str,
        params: dict[str, Any] | None,
        what: str,
        most: int,
        repo_id: str,
        revision: str | None,
        enough: int | None = None,
    ) -> list[Any]:
        """Every entry of a paged listing (`what`, for messages), or its first `enough`. EndlessListingError when
        it goes on past `most` entries, MAX_LISTING_PAGES pages or MAX_LISTING_BYTES, or names as the next page
        one it already sent; HubTooSlowError when a page takes over ANSWER_DEADLINE, or all over LISTING_DEADLINE."""
        start = time.monotonic()
        paused = RateLimitPauses()  # waits for the Hub's rate limit: they move the deadline of the whole listing
        seen = {str(httpx2.URL(url, params=params))}
        entries: list[Any] = []
        read = 0

        def endless(told: str) -> errors.HubError:
            return errors.EndlessListingError(self.endpoint, what, told, repo_id, revision)

        def page(at: str, query: dict[str, Any] | None) -> tuple[bytes, str | None]:
            end = start + paused.seconds + LISTING_DEADLINE
            deadline = min(time.monotonic() + ANSWER_DEADLINE, end)
            seconds = ANSWER_DEADLINE if deadline < end else LISTING_DEADLINE
            return self._get_bounded(
                at,
                query,
                MAX_LISTING_BYTES - read,
                deadline,
                lambda *_: endless(f"went on past {MAX_LISTING_BYTES // 2**20} MiB"),
                lambda: errors.HubTooSlowError(self.endpoint, what, seconds, repo_id, revision),
            )

        at, query = url, params
        for pages in range(1, MAX_LISTING_PAGES + 1):
            body, following = self._call(partial(page, at, query), repo_id, revision, paused)
            read += len(body)
            with self._errors(repo_id, revision):
                found = loads_json(body)
            if not isinstance(found, list):
                raise self._malformed(what, repo_id)
            entries += found
            if enough is not None and len(entries) >= enough:
                return entries[:enough]
            if len(entries) > most:
                raise endless(f"went on past {most:,} entries")
            if following is None:
                return entries
            if following in seen:
                raise endless(f"named as its next page one it had already sent (page {pages})")
            if _origin(following) != _origin(self.endpoint):  # the token goes with every page: never elsewhere
                raise endless(f"named as its next page one on another host (page {pages})")
            seen.add(following)
            at, query = following, None
        raise endless(f"went on past {MAX_LISTING_PAGES:,} pages")

    def _commits(self, repo_id: str, revision: str, newest: int | None = None) -> list[tuple[str, str]]:
        """(commit id, ISO date) of a revision's history, newest first: all of it, or the `newest` few."""
        url = f"{self.endpoint}/api/models/{repo_id}/commits/{quote(revision, safe='')}"
        found = self._listing(url, None, "commit history", MAX_COMMITS, repo_id, revision, enough=newest)
        with self._errors(repo_id, revision):
            return [(str(c["id"]), parse_datetime(c["date"]).isoformat()) for c in found]

    def resolve_commit(self, repo_id: str, revision: str) -> str:
        """The commit a branch, tag or commit id names."""
        info = self._call(lambda: self.api.repo_info(repo_id, revision=revision), repo_id, revision)
        return str(info.sha)

    def tree(self, repo_id: str, commit: str, revision: str | None = None) -> list[RemoteFile]:
        """Every file of a commit (of `revision`, for messages), with its size and hashes as the Hub lists them.
        UnsafeRemotePathError for a path that hubsync never places or handles (core/remote_paths.py)."""
        url = f"{self.endpoint}/api/models/{repo_id}/tree/{quote(commit, safe='')}"
        params = {"recursive": "true", "expand": "false"}
        found = self._listing(url, params, "tree listing", MAX_TREE_ENTRIES, repo_id, revision or commit[:12])
        with self._errors(repo_id):
            files = [
                RemoteFile(e["path"], e["size"], e["lfs"]["oid"] if e.get("lfs") else None, e["oid"], e.get("xetHash"))
                for e in found
                if e["type"] == "file"
            ]
        for f in files:
            if not (
                isinstance(f.path, str)
                and isinstance(f.size, int)
                and not isinstance(f.size, bool)
                and f.size >= 0
                and (f.sha256 is None or (isinstance(f.sha256, str) and _SHA256.fullmatch(f.sha256)))
                and isinstance(f.git_oid, str)
                and (f.xet_hash is None or (isinstance(f.xet_hash, str) and _SHA256.fullmatch(f.xet_hash)))
            ):
                raise self._malformed("tree", repo_id)
        for f in files:
            check_remote_path(f.path, revision or commit[:12])
        return files

    def history(self, repo_id: str, revision: str) -> list[str]:
        """The commit ids of a revision's history, newest first (asked once for a commit id: it never changes)."""
        if (repo_id, revision) in self._histories:
            return self._histories[repo_id, revision]
        found = [commit for commit, _date in self._commits(repo_id, revision)]
        if _COMMIT_ID.fullmatch(revision):
            self._histories[repo_id, revision] = found
        return found

    def pull_request_heads(self, repo_id: str) -> set[str]:
        """The head commits of the repository's pull requests (refs/pr/N): refs a prune must keep the files of,
        though list_repo_refs leaves them out unless asked (a conversion bot's safetensors PR, say)."""
        refs = self._call(lambda: self.api.list_repo_refs(repo_id, include_pull_requests=True), repo_id)
        with self._errors(repo_id):
            heads = {str(r.target_commit) for r in refs.pull_requests or []}
        if not all(_COMMIT_ID.fullmatch(c) for c in heads):
            raise self._malformed("refs", repo_id)
        return heads

    def stored_sha256s(self, repo_id: str, commit: str) -> set[str]:
        """The sha256 of every LFS file of a commit, and the git id of its pointer, whatever its path (a prune must
        see every file it keeps, including ones hubsync would never place; a listing that names a held file by
        another sha256 still names it by its pointer's id)."""
        if (repo_id, commit) in self._stored:
            return self._stored[repo_id, commit]
        url = f"{self.endpoint}/api/models/{repo_id}/tree/{quote(commit, safe='')}"
        params = {"recursive": "true", "expand": "false"}
        found = self._listing(url, params, "tree listing", MAX_TREE_ENTRIES, repo_id, commit[:12])
        with self._errors(repo_id):
            lfs = [e for e in found if e["type"] == "file" and e.get("lfs")]
            shas = {e["lfs"]["oid"] for e in lfs}
            oids = {e["oid"] for e in lfs}
        if not all(isinstance(sha, str) and _SHA256.fullmatch(sha) for sha in shas):
            raise self._malformed("tree", repo_id)
        held = shas | {oid for oid in oids if isinstance(oid, str) and _FILE_OID.fullmatch(oid)}
        if _COMMIT_ID.fullmatch(commit):
            self._stored[repo_id, commit] = held
        return held

    def stored_files(self, repo_id: str) -> list[StoredFile]:
        """Every file of the repository's LFS and Xet storage, as the Hub lists them (HfApi.list_lfs_files): what
        it counts as used storage, including the files of deleted branches' commits."""
        url = f"{self.endpoint}/api/models/{repo_id}/lfs-files"
        found = self._listing(url, None, "LFS file listing", MAX_STORED_FILES, repo_id, None)
        with self._errors(repo_id):
            files = [StoredFile(e["fileOid"], e["oid"], e["size"], e.get("filename")) for e in found]
        for f in files:
            if not (
                isinstance(f.file_oid, str)
                and _FILE_OID.fullmatch(f.file_oid)
                and isinstance(f.sha256, str)
                and _SHA256.fullmatch(f.sha256)
                and type(f.size) is int
                and f.size >= 0
                and (f.filename is None or isinstance(f.filename, str))
            ):
                raise self._malformed("LFS file listing", repo_id)
        return files

    def delete_stored_files(self, repo_id: str, files: Sequence[StoredFile]) -> None:
        """Permanently delete files of the repository's storage (HfApi.permanently_delete_lfs_files), rewriting
        the history that still names one, as the Hub recommends."""
        if not files:
            return
        infos = [
            LFSFileInfo(
                fileOid=f.file_oid,
                filename=f.filename or "",
                oid=f.sha256,
                pushedAt="1970-01-01T00:00:00Z",
                size=f.size,
            )
            for f in files
        ]
        self._call(lambda: self.api.permanently_delete_lfs_files(repo_id, infos, rewrite_history=True), repo_id)

    def used_storage(self, repo_id: str) -> int | None:
        """The bytes the Hub says the repository stores (model_info's usedStorage); None when it does not say."""
        info = self._call(lambda: self.api.model_info(repo_id, expand=["usedStorage"]), repo_id)
        used = getattr(info, "used_storage", None)
        return used if type(used) is int and used >= 0 else None

    def download(self, repo_id: str, commit: str, remote: RemoteFile, dest: Path, transfers: Transfers) -> None:
        """Fetch one file of a commit to `dest`, within a deadline for its size (hub/download.py), retried when
        the Hub is busy: through hf_xet when the Hub keeps it in Xet storage (as huggingface_hub downloads it),
        else over HTTP, never more bytes than its tree lists."""
        headers = build_hf_headers(token=self.token, library_name="hubsync", library_version=__version__)
        deadline = time.monotonic() + download_seconds(remote.size)
        where = (self.endpoint, repo_id, commit[:12])
        paused = RateLimitPauses()  # waits for the Hub's rate limit move the deadline: they are no slow download
        if remote.xet_hash is not None and is_xet_available() and not constants.HF_HUB_DISABLE_XET:

            def over_xet() -> None:
                storage = self.xet_read_access(repo_id, commit)
                try:
                    fetch_over_xet(storage, remote, dest, deadline + paused.seconds, transfers, where)
                except (errors.HubsyncError, DownloadCancelled, HfHubHTTPError, httpx2.TransportError):
                    raise
                except Exception as exc:  # hf_xet's own: a chunk it could not fetch or decode
                    secrets = [*self._known_tokens(), storage.token, storage.cas_url.split("://", 1)[-1]]
                    _redact_in_place(exc, secrets)
                    name = _storage_name(storage.cas_url)
                    raise errors.XetStorageError(
                        self.endpoint, name, "unreadable", type(exc).__name__, repo_id, commit[:12]
                    ) from exc

            self._call(over_xet, repo_id, commit, paused)
            return
        url = hf_hub_url(repo_id, remote.path, revision=commit, endpoint=self.endpoint)
        self._call(
            lambda: fetch_over_http(url, headers, remote, dest, deadline + paused.seconds, transfers, where),
            repo_id,
            commit,
            paused,
        )

    def xet_read_access(self, repo_id: str, commit: str) -> XetAccess:
        """A token to read the commit's files from the Hub's Xet storage, and that storage's address, asked of the
        Hub by hubsync itself (hf_xet is given both, never the Hub's route): a Hub's answer names where hf_xet
        goes, and one that named a `local://` folder would have it read from this machine's disk. Only a Hub on
        this machine (loopback) may name local storage; any other, an https address (or http, as the Hub is)."""
        url = f"{self.endpoint}/api/models/{repo_id}/xet-read-token/{quote(commit, safe='')}"
        body = self._get_bounded(
            url,
            None,
            65536,
            time.monotonic() + ANSWER_DEADLINE,
            lambda *_: self._malformed("xet-read-token", repo_id),
            lambda: errors.HubTooSlowError(self.endpoint, "xet-read-token", ANSWER_DEADLINE, repo_id, commit[:12]),
        )[0]
        with self._errors(repo_id, commit):
            answer = loads_json(body)
            token, expiry, cas_url = answer["accessToken"], answer["exp"], answer["casUrl"]
        if not (
            isinstance(token, str)
            and is_token_text(token)
            and isinstance(expiry, int)
            and not isinstance(expiry, bool)
            and 0 <= expiry < 2**63  # hf_xet takes a 64-bit time
            and isinstance(cas_url, str)
            and _storage_allowed(cas_url, self.endpoint)
        ):
            raise self._malformed("xet-read-token", repo_id)
        return XetAccess(cas_url, token, expiry)

    def commit_dates(self, repo_id: str, revision: str, newest: int | None = None) -> list[tuple[str, str]]:
        """(commit id, ISO date) of a revision's history, newest first: all of it, or the `newest` few (read from
        as few pages as hold them)."""
        return self._commits(repo_id, revision, newest)

    def _malformed(self, what: str, repo_id: str) -> errors.HubError:
        return errors.HubError(self.endpoint, f"its {what} answer is not what a Hub sends", repo_id=repo_id)

    def web_url(self, repo_id: str, revision: str | None = None) -> str:
        url = f"{self.endpoint}/{repo_id}"
        return f"{url}/tree/{quote(revision, safe='')}" if revision else url


_NAMED_MISSING = ("RepoNotFound", "RevisionNotFound")  # a 404 of a Hub that has the route


@dataclass
class _Sent:
    """What one commit sends, counted while huggingface_hub carries it out (see _xet)."""

    operations: Sequence[Any]
    owner: int = field(default_factory=threading.get_ident)
    lfs: int = 0
    xet: bool = False
    in_xet: bool = False  # hf_xet is at work (from its upload commit's start to its successful end)
    stored: int = 0  # what hf_xet's upload commits sent, read from each as it ends
    counted: bool = True
    stalled: float | None = None  # the seconds an upload went without progress before it was stopped
    lock: threading.Lock = field(default_factory=threading.Lock)  # huggingface_hub uploads LFS files on threads

    def total(self) -> int | None:
        """Regular files (sent inside the commit, unless huggingface_hub found them unchanged), LFS uploads, and
        what hf_xet's upload commits sent over the network (after deduplication and compression)."""
        if not self.counted:
            return None
        try:
            regular = sum(
                int(op.upload_info.size)
                for op in self.operations
                if getattr(op, "_upload_mode", None) == "regular"
                and not (op._remote_oid is not None and op._remote_oid == op._local_oid)
            )
        except Exception:  # a huggingface_hub or hf_xet that keeps these otherwise: not counted rather than wrong
            return None
        return regular + self.lfs + self.stored


class _RecordedUpload:
    """hf_xet's upload commit as huggingface_hub enters it, telling _Sent when hf_xet works and is done, and
    stopped (abort, from a watching thread) when it makes no progress for XET_STALL_SECONDS."""

    def __init__(self, commit: Any, sent: _Sent) -> None:
        self._commit = commit
        self._sent = sent
        self._done = threading.Event()
        threading.Thread(target=self._watch, args=(XET_STALL_SECONDS,), daemon=True).start()

    def _watch(self, stall: float) -> None:
        last, since = None, time.monotonic()
        while not self._done.wait(min(1.0, stall / 4)):
            try:
                report = self._commit.progress()
                now = (report.total_bytes_completed, report.total_transfer_bytes_completed)
            except Exception:
                return  # an hf_xet that reports otherwise: its own timeouts only
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > stall:
                self._sent.stalled = stall
                with suppress(Exception):
                    self._commit.abort()
                return

    def __enter__(self) -> Any:
        return self._commit.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        try:
            done = self._commit.__exit__(*exc)
        finally:
            self._done.set()
        if exc[0] is None:
            self._sent.in_xet = False
            try:
                self._sent.stored += int(self._commit.progress().total_transfer_bytes_completed)
            except Exception:  # an hf_xet that reports otherwise: not counted rather than wrong
                self._sent.counted = False
        # Let go of it now: while it lives, hf_xet keeps its storage open, and a local:// storage (the local
        # Hub's) takes one process at a time, which the Hub's own check of the commit needs next.
        self._commit = None
        return done


class _RecordedSession:
    """The hf_xet session huggingface_hub gets for one of hubsync's commits: one made with XET_LIMITS, whose
    upload commits are kept to read what they sent."""

    def __init__(self, session: Any, sent: _Sent, storage: str | None) -> None:
        self._session = session
        self._sent = sent
        self._storage = storage

    def new_upload_commit(self, **kwargs: Any) -> Any:
        self._sent.in_xet = self._sent.xet = True
        if self._storage is not None:
            kwargs.setdefault("endpoint", self._storage)
        return _RecordedUpload(self._session.new_upload_commit(**kwargs), self._sent)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def _addition(source: Path | bytes, dest: str, digests: Mapping[Path, KnownDigest]) -> Any:
    """The CommitOperationAdd of one file: it reads only the first 512 bytes; its sha256 is read lazily, when the
    upload asks for it, unless it is known here."""
    operation = CommitOperationAdd(path_in_repo=dest, path_or_fileobj=source)
    if isinstance(source, Path) and (known := digests.get(source)) is not None and known.holds(source):
        operation.upload_info.sha256 = bytes.fromhex(known.sha256)
    return operation


def xet_config() -> Any:
    """hf_xet's settings for hubsync's uploads: its own (HF_XET_* variables read now), with XET_LIMITS for those
    the user left unset."""
    import hf_xet

    config = hf_xet.XetConfig()
    ours = {k: v for k, v in XET_LIMITS.items() if "HF_XET_" + k.replace(".", "_").upper() not in os.environ}
    return config.with_config(ours) if ours else config


def _storage_allowed(cas_url: str, endpoint: str) -> bool:
    """Whether a Hub at `endpoint` may send hf_xet to the Xet storage at `cas_url`."""
    scheme, _, rest = cas_url.partition("://")
    hub = httpx2.URL(endpoint)
    if scheme == "local":
        return is_loopback_url(endpoint) and rest.startswith("/")
    try:
        storage = httpx2.URL(cas_url)
    except httpx2.InvalidURL:
        return False
    return bool(storage.host) and storage.scheme in ("https", hub.scheme)


@contextmanager
def _xet(enabled: bool, operations: Sequence[Any] = (), storage: str | None = None) -> Iterator[_Sent]:
    """Let huggingface_hub use Xet for uploads only when the endpoint offers it (it reads this at call time), and
    count what the commit of `operations` sends.

    huggingface_hub drops hf_xet's commit report, and passes hf_xet a progress callback only while progress bars
    show; it takes its hf_xet session from `utils._xet.get_xet_session` at each upload, and LFS uploads go through
    `_commit_api.lfs_upload`. Both are replaced while this commit runs (under _XET_SWITCH: one commit at a time),
    and answer for this commit only: the session for the thread that commits (huggingface_hub calls it there), the
    LFS count for these operations (it uploads on worker threads); any other caller gets huggingface_hub's own.
    That session is a fresh one with XET_LIMITS (cheap: hf_xet's runtime starts with its first upload); the bytes
    are read from its upload commits' progress once they are done, which counts what went over the network after
    deduplication, with or without progress bars. Where huggingface_hub no longer has these names, the commit
    goes on with its defaults and what it sent is not counted (None). `storage` (the casUrl hubsync was handed
    and checked) is the one hf_xet uploads to, whatever a later answer of the token route names."""
    with _XET_SWITCH:
        sent = _Sent(operations)
        before = constants.HF_HUB_DISABLE_XET
        constants.HF_HUB_DISABLE_XET = before or not enabled
        own_session = getattr(hf_xet_glue, "get_xet_session", None)
        own_upload = getattr(_commit_api, "lfs_upload", None)
        if own_session is None or own_upload is None:
            sent.counted = False
        ours = {id(op) for op in operations}
        sessions: weakref.WeakSet[_RecordedSession] = weakref.WeakSet()  # held by huggingface_hub while it uploads

        def get_xet_session() -> Any:
            if threading.get_ident() != sent.owner:
                return own_session()  # type: ignore[misc]
            import hf_xet

            # A new one each time, let go of with huggingface_hub's upload (see _RecordedUpload.__exit__).
            session = _RecordedSession(hf_xet.XetSession(xet_config()), sent, storage)
            sessions.add(session)
            return session

        def lfs_upload(*args: Any, **kwargs: Any) -> Any:
            done = own_upload(*args, **kwargs)  # type: ignore[misc]
            operation = kwargs.get("operation", args[0] if args else None)
            if id(operation) in ours:
                with sent.lock:
                    sent.lfs += operation.upload_info.size  # type: ignore[union-attr]
            return done

        if own_session is not None and own_upload is not None:
            setattr(hf_xet_glue, "get_xet_session", get_xet_session)  # noqa: B010 (names huggingface_hub hides)
            setattr(_commit_api, "lfs_upload", lfs_upload)  # noqa: B010
        try:
            yield sent
        except KeyboardInterrupt:
            for session in list(sessions):
                with suppress(Exception):
                    session.sigint_abort()
            raise
        finally:
            constants.HF_HUB_DISABLE_XET = before
            if own_session is not None and own_upload is not None:
                setattr(hf_xet_glue, "get_xet_session", own_session)  # noqa: B010
                setattr(_commit_api, "lfs_upload", own_upload)  # noqa: B010


def _xet_info_of_body(response: Any) -> XetConnectionInfo | None:
    """The Xet connection a token route's JSON answer gives (`{accessToken, exp, casUrl}`), for a Hub that sends
    it only there."""
    try:
        body = response.json()
        if isinstance(body, dict):
            token, exp, cas = body.get("accessToken"), body.get("exp"), body.get("casUrl")
            if isinstance(token, str) and isinstance(cas, str) and isinstance(exp, int) and not isinstance(exp, bool):
                return XetConnectionInfo(access_token=token, expiration_unix_epoch=exp, endpoint=cas)
    except ValueError:
        pass
    return None


def _storage_name(cas_url: str) -> str:
    """A Xet storage's address as people may read it: scheme and host of a URL, never a local folder's path."""
    if cas_url.startswith(("http://", "https://")):
        with suppress(Exception):
            parsed = httpx2.URL(cas_url)
            port = f":{parsed.port}" if parsed.port else ""
            return f"{parsed.scheme}://{parsed.host}{port}"
    return "a local folder"


def _unreachable(cas_url: str) -> str | None:
    """Why a Xet storage takes no connection (refused, no such host, no answer), or None when it does."""
    try:
        parsed = httpx2.URL(cas_url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        with socket.create_connection((parsed.host, port), timeout=XET_CHECK_SECONDS):
            return None
    except ConnectionRefusedError:
        return "connection refused"
    except socket.gaierror:
        return "its host name does not resolve"
    except TimeoutError:
        return f"no answer in {XET_CHECK_SECONDS:g} s"
    except OSError as exc:
        return type(exc).__name__


def _announced_size(headers: Any) -> int | None:
    """The size a download's answer announces (the smallest, when it announces several), None when none. A
    compressed answer's Content-Length counts compressed bytes, not the file's: only X-Linked-Size counts then."""
    sizes = []
    encoded = headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
    for name in ("X-Linked-Size",) if encoded else ("Content-Length", "X-Linked-Size"):
        value = headers.get(name)
        if value is not None:
            try:
                sizes.append(max(int(value), 0))
            except ValueError:
                continue
    return min(sizes) if sizes else None


def _server_message(exc: HfHubHTTPError) -> str:
    """The Hub's own explanation of a failed request, without the request id noise."""
    response = exc.response
    if response is not None:
        message = response.headers.get("X-Error-Message")
        if not message:
            try:
                body = response.json()
                message = body.get("error") if isinstance(body, dict) else None
            except (ValueError, httpx2.ResponseNotRead):
                message = None
        if message:
            return f"{response.status_code}: {message}"
        return f"{response.status_code}: {response.reason_phrase}"
    return str(exc).splitlines()[0]


def _redact_in_place(exc: BaseException, tokens: list[str]) -> None:
    """Take tokens out of an exception's text and of the causes it chains, as they would show in a traceback."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        with suppress(AttributeError, TypeError):
            current.args = tuple(redact(a, tokens) if isinstance(a, str) else a for a in current.args)
        if isinstance(getattr(current, "server_message", None), str):
            with suppress(AttributeError):
                current.server_message = redact(current.server_message, tokens)  # type: ignore[attr-defined]
        current = current.__cause__ or current.__context__


def _origin(url: str) -> tuple[str, str, int | None]:
    """A URL's scheme, host and port: where a request with the token may go."""
    parsed = httpx2.URL(url)
    return parsed.scheme, parsed.host.lower(), parsed.port
