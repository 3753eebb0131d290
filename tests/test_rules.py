"""One rule each: the rules that several parts of hubsync share, tested once, by what each part does with them."""

from __future__ import annotations

import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError
from hypothesis import given
from hypothesis import strategies as st

from hubsync.core.errors import HubError, PermissionDeniedError, RepoNotFoundError
from hubsync.core.transient import NEVER_PASSES, transient_failure, transient_status
from hubsync.hub.client import with_retries

STATUSES = st.integers(min_value=100, max_value=599)


def _http_error(status: int) -> HfHubHTTPError:
    request = httpx2.Request("POST", "http://hub.test/api/models/me/m/commit/main")
    return HfHubHTTPError(f"{status}", response=httpx2.Response(status, request=request))


@given(STATUSES)
def test_a_status_is_transient_by_one_rule(status: int) -> None:
    expected = status in (408, 429) or (status >= 500 and status not in NEVER_PASSES)
    assert transient_status(status) is expected
    # The watch's rule for a failed push is the same rule.
    assert transient_failure(HubError("http://hub.test", "said no", status=status)) is expected


@given(STATUSES)
def test_a_call_is_retried_exactly_when_its_status_is_transient(status: int) -> None:
    calls: list[int] = []

    def call() -> str:
        calls.append(status)
        if len(calls) == 1:
            raise _http_error(status)
        return "done"

    if transient_status(status):
        assert with_retries(call, delays=(0.0,)) == "done" and len(calls) == 2
    else:
        with pytest.raises(HfHubHTTPError):
            with_retries(call, delays=(0.0,))
        assert len(calls) == 1


def test_statuses_that_never_pass_and_errors_of_the_request_are_not_transient() -> None:
    assert not transient_status(None)
    assert not any(transient_status(s) for s in (400, 401, 403, 404, 409, 412, 422, 501, 505, 511))
    assert all(transient_status(s) for s in (408, 429, 500, 502, 503, 504, 520, 599))
    assert not transient_failure(PermissionDeniedError("http://hub.test", "no", status=403))
    assert not transient_failure(RepoNotFoundError("http://hub.test", "gone", status=503))
    assert not transient_failure(ValueError("not a Hub's failure"))
