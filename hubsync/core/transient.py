"""Which failures of a Hub may pass if one waits: the one rule that a call's retries and a watch's share."""

from __future__ import annotations

from hubsync.core.errors import CommitConflictError, HubError, HubTooSlowError, HubUnreachableError, XetStorageError

# 5xx says the server failed, not the request, but for these: the server says it will never do it (501 Not
# Implemented, 505 HTTP Version Not Supported) or that a proxy wants a login (511), which waiting will not give.
NEVER_PASSES = frozenset({501, 505, 511})


def transient_status(status: int | None) -> bool:
    """Whether a Hub's HTTP status says "try again later": 408 (request timeout), 429 (too many requests), or a
    server error (5xx) other than those in NEVER_PASSES. A 4xx otherwise would only be refused again."""
    if status is None:
        return False
    return status in (408, 429) or (500 <= status <= 599 and status not in NEVER_PASSES)


def transient_failure(exc: BaseException) -> bool:
    """Whether a HubsyncError is one of a Hub that may pass (an outage, a timeout, a transient status, a branch
    that kept moving), not of the request. A HubError's subclasses otherwise (refused token, missing repository,
    an answer no Hub sends, ...) would happen again. A single call's retries (hub/client.py with_retries) apply
    transient_status to the raw answer before it becomes a HubsyncError."""
    if isinstance(exc, (HubUnreachableError, HubTooSlowError, CommitConflictError)):
        return True
    if isinstance(exc, XetStorageError):  # a storage that is down or cut a transfer off may come back
        return exc.kind in ("unreachable", "broken", "busy")
    return type(exc) is HubError and transient_status(exc.status)


def xet_storage_busy(text: str) -> bool:
    """Whether hf_xet failed because another process has its local storage open: hf_xet's `local://` storage
    (the local Hub's) keeps an index that one process at a time may open, so two transfers at once to one
    repository from two processes meet this; the other's transfer ends, and waiting passes it."""
    return "Database already open" in text
