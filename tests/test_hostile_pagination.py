"""A Hub whose listings never end, or whose answers trickle: every command ends within seconds in one line.

The hostile Hub is a proxy in front of the local Hub. It sends `Link: <...>; rel="next"` for ever on tree listings
or commit histories (pages of made-up entries, or empty ones), a next link it already sent, or a body a few bytes
at a time. So that the code before the bounds still ends, the proxy gives up after GIVE_UP seconds (the listing
ends, the rest of a body comes at once): a command that is still running then has no bound, and the test fails on
that, not on a time (a loaded machine makes the bounded code slower, never unbounded)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from click.testing import CliRunner, Result
from conftest import hub_state
from hostile_proxy import ProxyHandler, serve
from huggingface_hub import HfApi, constants
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsync.cli import cli
from hubsync.cli.errors import message_for
from hubsync.core.errors import EndlessListingError, HubTooSlowError
from hubsync.core.transient import transient_failure as retryable
from hubsync.hub import client
from hubsync.localhub import RunningHub

GIVE_UP = 60.0  # seconds after which the proxy ends its listings and trickles: unbounded code then finishes


@dataclass
class Hostile:
    endpoint: str = ""
    endless: str = ""  # "tree" or "commits": that listing pages for ever
    page_size: int = 1000  # made-up entries on each page after the first (0: empty pages)
    repeat: bool = False  # the second page names itself as the next page
    next_origin: str = ""  # the first next page is named on this origin (another host), not the proxy's
    trickle: str = ""  # GET answers whose path holds this come a byte every 0.2 s
    pages: int = 0  # pages the proxy sent beyond the first
    started: float = 0.0
    gave_up: bool = False  # the proxy ended a listing or a trickle: the command did not stop on its own


def _fake_entries(kind: str, page: int, size: int) -> list[dict[str, Any]]:
    if kind == "tree":
        return [{"type": "file", "oid": f"{i:040x}", "size": 1, "path": f"pad/{page}/{i}.txt"} for i in range(size)]
    return [
        {"id": f"{page:020x}{i:020x}", "title": "t", "message": "", "date": "2024-01-01T00:00:00Z", "authors": []}
        for i in range(size)
    ]


@pytest.fixture
def hostile(hub: RunningHub) -> Iterator[Hostile]:
    state = Hostile(started=time.monotonic())

    class Proxy(ProxyHandler):
        def _forward(self) -> None:
            body = self.request_body()
            url = urlsplit(self.path)
            page = int(parse_qs(url.query).get("cursor", ["0"])[0])
            giving_up = time.monotonic() - state.started > GIVE_UP
            state.gave_up |= giving_up
            kind = next((k for k in ("tree", "commits") if f"/{k}/" in url.path), "")
            listing = self.command == "GET" and url.path.startswith("/api/") and kind == state.endless
            if listing and page:  # a made-up page, never asked of the local Hub
                state.pages += 1
                entries = _fake_entries(kind, page, state.page_size)
                following = page if state.repeat and page == 1 else page + 1
                link = [] if giving_up else [("Link", f'<{state.endpoint}{url.path}?cursor={following}>; rel="next"')]
                return self.answer(200, [("Content-Type", "application/json"), *link], json.dumps(entries).encode())
            status, headers, data = self.ask_upstream(body)
            extra = []
            if listing and status == 200 and not giving_up:
                extra = [("Link", f'<{state.next_origin or state.endpoint}{url.path}?cursor=1>; rel="next"')]
            trickled = state.trickle and state.trickle in unquote(url.path)
            if trickled and self.command == "GET" and status == 200:
                return self._trickle(headers, data)
            self.answer(status, headers + extra, data)

        def _trickle(self, headers: list[tuple[str, str]], data: bytes) -> None:
            self.send_response(200)
            for key, value in headers:
                if key.lower() not in ("transfer-encoding", "connection", "content-encoding"):
                    self.send_header(key, value)
            self.end_headers()
            try:
                for i, byte in enumerate(data):
                    if time.monotonic() - state.started > GIVE_UP:
                        state.gave_up = True
                        self.wfile.write(data[i:])
                        break
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
            except (BrokenPipeError, ConnectionResetError):
                pass

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _forward

    with serve(Proxy, hub.endpoint) as state.endpoint:
        yield state


def invoke(state: Hostile, hub: RunningHub, *args: str) -> Result:
    state.started, state.gave_up = time.monotonic(), False
    result = CliRunner().invoke(cli, list(args), env={"HF_ENDPOINT": state.endpoint, "HF_TOKEN": hub.token})
    took = time.monotonic() - state.started
    assert not state.gave_up, f"ran {took:.0f} s, until the hostile Hub gave up: no bound stopped it"
    return result


def refused(result: Result, *fragments: str) -> str:
    """Exit 1 on hubsync's own bound (invoke checked that), no traceback, stderr one `Error:` line holding each
    fragment."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.exception, result.output)
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("Hub: ")]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def pushed(run: Path, hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch) -> Path:
    """checkpoint-20 pushed with hubsync (in main's index); checkpoint-30 uploaded by hand, not in the index (ls
    lists its tree)."""
    result = CliRunner().invoke(
        cli,
        ["push", str(run / "checkpoint-20"), "--repo", "me/tiny"],
        env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token},
    )
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the local Hub takes plain LFS uploads
    api.create_branch("me/tiny", branch="checkpoint-30")
    api.upload_folder(repo_id="me/tiny", folder_path=run / "checkpoint-30", revision="checkpoint-30")
    return run


# --- endless listings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [1000, 0], ids=["full-pages", "empty-pages"])
def test_an_endless_tree_listing_is_refused_by_pull_push_and_ls(
    page_size: int, pushed: Path, hub: RunningHub, api: HfApi, hostile: Hostile, tmp_path: Path
) -> None:
    hostile.endless, hostile.page_size = "tree", page_size
    bound = "100,000 entries" if page_size else "1,000 pages"
    before = hub_state(api)
    target = tmp_path / "pulled"
    result = invoke(hostile, hub, "pull", "me/tiny", "--revision", "checkpoint-20", "--to", str(target))
    refused(result, "tree listing for me/tiny at checkpoint-20", bound, "read no further")
    assert not target.exists()
    # an existing branch: its tree is read before anything changes; a new one: the tree of its starting commit
    for checkpoint in ("checkpoint-20", "checkpoint-10"):
        result = invoke(hostile, hub, "push", str(pushed / checkpoint), "--repo", "me/tiny")
        refused(result, "tree listing for me/tiny", bound)
        assert hub_state(api) == before
    result = invoke(hostile, hub, "ls", "me/tiny")
    refused(result, "tree listing for me/tiny at checkpoint-30", bound)
    assert hub_state(api) == before


def test_an_endless_commit_history_is_refused_by_push_and_cut_short_by_ls(
    pushed: Path, hub: RunningHub, api: HfApi, hostile: Hostile
) -> None:
    hostile.endless, hostile.page_size = "commits", 50  # as the real Hub pages them
    before = hub_state(api)
    result = invoke(hostile, hub, "push", str(pushed / "checkpoint-10"), "--repo", "me/tiny")
    refused(result, "commit history for me/tiny at main", "went on past 10,000 entries")
    assert hub_state(api) == before
    # ls needs only the date of each revision's own commit: the first page
    hostile.pages = 0
    result = invoke(hostile, hub, "ls", "me/tiny")
    assert result.exit_code == 0, result.output
    assert "checkpoint-20" in result.output and "checkpoint-30" in result.output
    assert hostile.pages == 0
    assert hub_state(api) == before


@pytest.mark.parametrize("kind", ["tree", "commits"])
def test_a_next_page_sent_twice_is_refused(
    kind: str, pushed: Path, hub: RunningHub, api: HfApi, hostile: Hostile, tmp_path: Path
) -> None:
    hostile.endless, hostile.repeat, hostile.page_size = kind, True, 1
    before = hub_state(api)
    args = ["push", str(pushed / "checkpoint-10"), "--repo", "me/tiny"]
    if kind == "tree":
        args = ["pull", "me/tiny", "--revision", "checkpoint-20", "--to", str(tmp_path / "pulled")]
    result = invoke(hostile, hub, *args)
    refused(result, "one it had already sent (page 2)")
    assert hub_state(api) == before
    assert hostile.pages == 1  # the first made-up page, which names itself as the next


def test_a_next_page_on_another_host_is_refused_and_gets_no_token(
    pushed: Path, hub: RunningHub, api: HfApi, hostile: Hostile, tmp_path: Path
) -> None:
    asked: list[dict[str, str]] = []

    class Sink(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(dict(self.headers.items()))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args: object) -> None:
            pass

    sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        hostile.endless, hostile.next_origin = "tree", f"http://127.0.0.1:{sink.server_address[1]}"
        before = hub_state(api)
        for args in (
            ["pull", "me/tiny", "--revision", "checkpoint-20", "--to", str(tmp_path / "pulled")],
            ["push", str(pushed / "checkpoint-10"), "--repo", "me/tiny"],
        ):
            result = invoke(hostile, hub, *args)
            refused(result, "one on another host (page 1)")
        assert asked == [] and hub_state(api) == before  # the token never left for the other host
    finally:
        sink.shutdown()


# --- answers that trickle -----------------------------------------------------------------------------------------


def test_a_trickling_main_index_is_too_slow_for_ls_and_push(
    pushed: Path, hub: RunningHub, api: HfApi, hostile: Hostile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "ANSWER_DEADLINE", 1.0)
    hostile.trickle = ".hubsync/index.json"
    before = hub_state(api)
    result = invoke(hostile, hub, "ls", "me/tiny")
    refused(result, "is too slow", "me/tiny at main (.hubsync/index.json) took more than 1 s", "Try again later")
    assert hub_state(api) == before
    result = invoke(hostile, hub, "push", str(pushed / "checkpoint-10"), "--repo", "me/tiny")
    refused(result, "is too slow", ".hubsync/index.json", "landed on checkpoint-10")
    main = [c.commit_id for c in api.list_repo_commits("me/tiny")]
    assert main[0] == before[1][0][2][0]  # main's index is untouched


def test_a_trickling_tree_page_is_too_slow(
    pushed: Path, hub: RunningHub, api: HfApi, hostile: Hostile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(client, "ANSWER_DEADLINE", 1.0)
    hostile.trickle = "/api/models/me/tiny/tree/"
    before = hub_state(api)
    target = tmp_path / "pulled"
    result = invoke(hostile, hub, "pull", "me/tiny", "--revision", "checkpoint-20", "--to", str(target))
    refused(result, "is too slow", "(tree listing) took more than 1 s")
    assert not target.exists() and hub_state(api) == before


# --- the messages -------------------------------------------------------------------------------------------------

told = st.sampled_from(["went on past 100,000 entries", "went on past 2,000 pages", "went on past 64 MiB"])


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(what=st.sampled_from(["tree listing", "commit history"]), told=told, revision=st.none() | st.just("main"))
def test_each_refusal_is_one_line_naming_the_repository_and_the_bound(
    what: str, told: str, revision: str | None
) -> None:
    endless = EndlessListingError("http://hub", what, told, "me/tiny", revision)
    line = message_for(endless)
    assert "\n" not in line and f"a {what} for me/tiny" in line and told in line and "another Hub" in line
    assert not retryable(endless)  # a Hub that pages for ever does so again
    slow = HubTooSlowError("http://hub", ".hubsync/index.json", 120.0, "me/tiny", revision)
    line = message_for(slow)
    assert "\n" not in line and "too slow" in line and "120 s" in line and "me/tiny" in line
    assert retryable(slow)  # a watch tries again later
