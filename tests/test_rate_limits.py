"""Rate limits as huggingface.co sends them: a 429 with `RateLimit: "api";r=0;t=<seconds until the window resets>`
and `RateLimit-Policy`, without Retry-After (hub-docs docs/hub/rate-limits.md). Every Hub call hubsync makes waits
as it says and goes on, saying so on stderr; a wait longer than the max-wait setting fails at once, naming it.
Through the real client, over real HTTP, against the local Hub's `rate_limit` fault."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from click.testing import CliRunner, Result
from conftest import each_on_the_hub_exactly_once, local_hub
from huggingface_hub import HfApi
from huggingface_hub.utils import parse_ratelimit_headers
from hypothesis import given, settings
from hypothesis import strategies as st

import hubsync
from hubsync.cli import cli
from hubsync.core.config import DEFAULT_MAX_WAIT, SETTINGS, FileConfig, resolve_settings
from hubsync.core.errors import RateLimitedError, SettingError
from hubsync.hub.client import HubClient
from hubsync.localhub import RunningHub

WAITED = re.compile(r"rate-limited by the Hub, waiting (\d+) s")
SETTING = SETTINGS["max-wait"]


def run_cli(hub: RunningHub, *args: str, env: dict[str, str] | None = None) -> tuple[Result, float]:
    start = time.monotonic()
    result = CliRunner().invoke(
        cli, list(args), env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token, **(env or {})}
    )
    return result, time.monotonic() - start


def waits_said(result: Result) -> list[int]:
    """The rate-limit waits a command said on stderr, in seconds (each line exactly the wording)."""
    lines = [line for line in result.stderr.splitlines() if "rate-limited" in line and not line.startswith("Error: ")]
    assert all(WAITED.fullmatch(line) for line in lines), result.stderr
    assert "rate-limited" not in result.stdout
    return [int(WAITED.fullmatch(line).group(1)) for line in lines]  # type: ignore[union-attr]


def assert_failed_fast(result: Result, took: float, asked: int, bound: str, flag: str = "--max-wait") -> None:
    """One line that names the rate limit, the seconds asked and the setting to raise; no wait before it."""
    assert result.exit_code == 1, result.output
    assert took < 8, took
    assert result.stderr.count("\n") == 1, result.stderr
    line = result.stderr
    assert line.startswith("Error: rate-limited by the Hub at ") and f"asks to wait {asked} s" in line, line
    assert f"longer than {flag} allows ({bound} s)" in line and "Raise --max-wait (or HUBSYNC_MAX_WAIT" in line, line


# -- the local Hub's fault: what huggingface.co sends -----------------------------------------------------------------


def test_the_fault_answers_429_with_the_ratelimit_headers_and_no_retry_after(hub: RunningHub, api: HfApi) -> None:
    fault = hub.server.inject_fault("GET", r"^/api/whoami-v2$", rate_limit=2)

    answer = httpx2.get(f"{hub.endpoint}/api/whoami-v2", headers={"authorization": f"Bearer {hub.token}"})

    assert fault.times == 0 and answer.status_code == 429
    assert answer.headers["RateLimit"] == '"api";r=0;t=2'
    assert answer.headers["RateLimit-Policy"] == '"fixed window";"api";q=500;w=300'
    assert "Retry-After" not in answer.headers
    info = parse_ratelimit_headers(answer.headers)  # as huggingface_hub reads it
    assert info is not None and (info.remaining, info.reset_in_seconds, info.limit, info.window_seconds) == (
        0,
        2,
        500,
        300,
    )
    assert api.whoami()["name"] == "me"  # once only


def test_huggingface_hubs_own_listing_waits_the_window_out(hub: RunningHub, api: HfApi) -> None:
    """The comparison of the issue: huggingface_hub's paged listing (its http_backoff) sits the window out."""
    api.create_repo("me/listed")
    fault = hub.server.inject_fault("GET", r"/commits/main$", rate_limit=1)
    start = time.monotonic()
    assert len(api.list_repo_commits("me/listed")) == 1
    assert fault.times == 0 and time.monotonic() - start >= 1


# -- push: each call, also those huggingface_hub does not retry -------------------------------------------------------

PUSH_CALLS = {
    "create_repo": ("POST", r"^/api/repos/create$"),
    "refs": ("GET", r"^/api/models/me/limited/refs$"),
    "create_branch": ("POST", r"^/api/models/me/limited/branch/checkpoint-30$"),
    "commit": ("POST", r"^/api/models/me/limited/commit/checkpoint-30$"),
    "index_commit": ("POST", r"^/api/models/me/limited/commit/main$"),
    "create_tag": ("POST", r"^/api/models/me/limited/tag/"),
    "preupload": ("POST", r"/preupload/checkpoint-30$"),  # huggingface_hub would wait itself, silently
}


@pytest.mark.parametrize("call", sorted(PUSH_CALLS))
def test_a_push_waits_out_a_rate_limit_on_each_call(call: str, checkpoint: Path, hub: RunningHub, api: HfApi) -> None:
    method, path = PUSH_CALLS[call]
    fault = hub.server.inject_fault(method, path, rate_limit=2)

    result, took = run_cli(hub, "push", str(checkpoint), "--repo", "me/limited", "--tag", "v1")

    assert result.exit_code == 0, result.output
    assert fault.times == 0  # the call met the rate limit
    assert waits_said(result) == [3] and took >= 2  # 2 s and a little jitter (under a second), said rounded up
    assert "retrying" not in result.stderr  # not reported as a failure
    refs = api.list_repo_refs("me/limited")
    branch = next(b.target_commit for b in refs.branches if b.name == "checkpoint-30")
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", branch)]
    assert len(api.list_repo_commits("me/limited", revision="checkpoint-30")) == 2  # committed once


def test_a_push_asked_to_wait_longer_than_max_wait_fails_at_once(checkpoint: Path, hub: RunningHub) -> None:
    hub.server.inject_fault(*PUSH_CALLS["commit"], rate_limit=30)

    result, took = run_cli(hub, "push", str(checkpoint), "--repo", "me/limited", "--max-wait", "5")

    assert_failed_fast(result, took, 30, "5")
    assert "me/limited at checkpoint-30" in result.stderr


def test_a_call_that_huggingface_hub_retries_itself_keeps_to_max_wait_too(checkpoint: Path, hub: RunningHub) -> None:
    """huggingface_hub would wait t + 1 s five times over on a preupload, saying nothing; hubsync's bound holds."""
    hub.server.inject_fault(*PUSH_CALLS["preupload"], rate_limit=40, times=10)

    result, took = run_cli(hub, "push", str(checkpoint), "--repo", "me/limited", "--max-wait", "5")

    assert_failed_fast(result, took, 40, "5")


def test_the_default_bound_is_600_s_and_the_variable_and_the_file_set_it(checkpoint: Path, hub: RunningHub) -> None:
    assert DEFAULT_MAX_WAIT == 600 and SETTING.default == 600
    hub.server.inject_fault(*PUSH_CALLS["create_repo"], rate_limit=601)
    result, took = run_cli(hub, "push", str(checkpoint), "--repo", "me/limited")
    assert_failed_fast(result, took, 601, "600")

    hub.server.inject_fault(*PUSH_CALLS["create_repo"], rate_limit=3)
    result, took = run_cli(hub, "push", str(checkpoint), "--repo", "me/limited", env={"HUBSYNC_MAX_WAIT": "2"})
    assert_failed_fast(result, took, 3, "2")

    (checkpoint.parent / "hubsync.toml").write_text("max-wait = 1.5\n")  # the run folder's configuration
    hub.server.inject_fault(*PUSH_CALLS["create_repo"], rate_limit=3)
    result, took = run_cli(hub, "push", str(checkpoint), "--repo", "me/limited")
    assert_failed_fast(result, took, 3, "1.5")

    hub.server.inject_fault(*PUSH_CALLS["create_repo"], rate_limit=1)  # the flag over the file
    result, took = run_cli(hub, "push", str(checkpoint), "--repo", "me/limited", "--max-wait", "9")
    assert result.exit_code == 0 and waits_said(result) == [2], result.output


# -- one call's waits: bounded in all, and not taken from the retries meant for outages -----------------------------


def test_rate_limit_waits_use_up_no_retry_attempt(hub: RunningHub, api: HfApi) -> None:
    api.create_repo("me/client")
    said: list[float] = []
    client = HubClient(hub.endpoint, hub.token, retry_delays=(0.01,), on_rate_limit=said.append)  # two attempts
    fault = hub.server.inject_fault("GET", r"/refs$", rate_limit=0, times=4)

    assert client.refs("me/client")[0].keys() == {"main"}

    assert fault.times == 0 and len(said) == 4 and all(0.2 <= s <= 1.0 for s in said)
    hub.server.inject_fault("GET", r"/refs$", status=503, times=2, retry_after=0)  # an outage still has its two
    with pytest.raises(hubsync.errors.HubError, match="503"):
        client.refs("me/client")


def test_the_waits_of_one_call_are_bounded_in_all(hub: RunningHub, api: HfApi) -> None:
    api.create_repo("me/client")
    said: list[float] = []
    client = HubClient(hub.endpoint, hub.token, max_wait=3, on_rate_limit=said.append)
    hub.server.inject_fault("GET", r"/refs$", rate_limit=2, times=2)

    start = time.monotonic()
    with pytest.raises(RateLimitedError) as info:
        client.refs("me/client")

    assert len(said) == 1 and 2.2 <= said[0] <= 3 and time.monotonic() - start < 4
    err = info.value
    assert (err.asked, err.max_wait, err.status, err.repo_id) == (2, 3, 429, "me/client") and err.waited == said[0]
    assert f"asks to wait 2 s more, after {said[0]:.0f} s" in str(err) and "max_wait=" in str(err)


# -- ls, pull, prune ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_hub(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Iterator[tuple[RunningHub, Path]]:
    work = tmp_path_factory.mktemp("rate-limits")
    with local_hub(work / "hub") as hub:
        run = Path(shutil.copytree(tiny_run, work / "out" / "tiny"))
        done, _ = run_cli(hub, "push", str(run), "--select", "all", "--repo", "me/tiny")
        assert done.exit_code == 0, done.output
        yield hub, work


@pytest.fixture
def pushed(module_hub: tuple[RunningHub, Path]) -> Iterator[tuple[RunningHub, Path]]:
    """A local Hub holding me/tiny with checkpoints 10, 20, 30 (for ls and pull: read only), each test's faults
    cleared after it."""
    yield module_hub
    module_hub[0].server.clear_faults()


READS = {
    "refs": ("GET", r"^/api/models/me/tiny/refs$"),
    "commits": ("GET", r"^/api/models/me/tiny/commits/"),  # hubsync's own paged listing
    "read_file": ("GET", r"^/me/tiny/resolve/main/\.hubsync/index\.json$"),  # hubsync's own GET
}


@pytest.mark.parametrize("call", sorted(READS))
def test_ls_waits_out_a_rate_limit(call: str, pushed: tuple[RunningHub, Path]) -> None:
    hub, _ = pushed
    fault = hub.server.inject_fault(*READS[call], rate_limit=2)

    result, took = run_cli(hub, "ls", "me/tiny", "--json")

    assert result.exit_code == 0, result.output
    assert fault.times == 0 and waits_said(result) == [3] and took >= 2
    assert [r["step"] for r in json.loads(result.stdout)] == [10, 20, 30]


PULLS = {
    "revision": ("GET", r"^/api/models/me/tiny/revision/"),
    "tree": ("GET", r"^/api/models/me/tiny/tree/"),
    "download": ("GET", r"^/me/tiny/resolve/[0-9a-f]{40}/adapter_config\.json$"),  # hubsync's own, over HTTP
    "xet_token": ("GET", r"^/api/models/me/tiny/xet-read-token/"),  # for the weights, read through hf_xet
}


@pytest.mark.parametrize("call", sorted(PULLS))
def test_pull_waits_out_a_rate_limit(call: str, pushed: tuple[RunningHub, Path], tmp_path: Path) -> None:
    hub, work = pushed
    fault = hub.server.inject_fault(*PULLS[call], rate_limit=2)

    result, took = run_cli(hub, "pull", "me/tiny", "--revision", "checkpoint-20", "--to", str(tmp_path / "pulled"))

    assert result.exit_code == 0, result.output
    assert fault.times == 0 and waits_said(result) == [3] and took >= 2
    pulled = tmp_path / "pulled" / "checkpoint-20"
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (pulled / name).read_bytes() == (work / "out" / "tiny" / "checkpoint-20" / name).read_bytes()


@pytest.mark.parametrize("route", [PULLS["download"], PULLS["tree"]])
def test_a_wait_for_the_rate_limit_is_not_taken_from_a_downloads_or_a_listings_deadline(
    route: tuple[str, str], pushed: tuple[RunningHub, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download has a deadline for its size, a listing one for all its pages: a wait the Hub asks for is not
    the Hub being slow (with the real deadlines, a minute and more, a 5-minute window would fail the same way)."""
    from hubsync.hub import client, download

    monkeypatch.setattr(download, "DOWNLOAD_GRACE_S", 1.0)  # the minute, shortened
    monkeypatch.setattr(client, "LISTING_DEADLINE", 1.0)
    hub, _ = pushed
    fault = hub.server.inject_fault(*route, rate_limit=2)

    result, _ = run_cli(hub, "pull", "me/tiny", "--revision", "checkpoint-10", "--to", str(tmp_path / "pulled"))

    assert result.exit_code == 0, result.output
    assert fault.times == 0 and waits_said(result) == [3]


@pytest.mark.parametrize(
    ("command", "route"),
    [
        (["ls", "me/tiny"], READS["commits"]),
        (["pull", "me/tiny", "--revision", "checkpoint-10"], PULLS["download"]),
        (["prune", "me/tiny", "--keep", "1", "--dry-run"], READS["refs"]),
    ],
)
def test_reads_asked_to_wait_longer_than_max_wait_fail_at_once(
    command: list[str], route: tuple[str, str], pushed: tuple[RunningHub, Path], tmp_path: Path
) -> None:
    hub, _ = pushed
    fault = hub.server.inject_fault(*route, rate_limit=45)
    to = ["--to", str(tmp_path / "pulled")] if command[0] == "pull" else []

    result, took = run_cli(hub, *command, *to, "--max-wait", "4")

    assert fault.times == 0
    assert_failed_fast(result, took, 45, "4")
    assert not (tmp_path / "pulled").exists() or not any((tmp_path / "pulled").iterdir())


def test_ls_reads_max_wait_from_the_current_folders_configuration(
    pushed: tuple[RunningHub, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, _ = pushed
    (tmp_path / "hubsync.toml").write_text("max-wait = 1\n")
    monkeypatch.chdir(tmp_path)
    hub.server.inject_fault(*READS["refs"], rate_limit=2)
    result, took = run_cli(hub, "ls", "me/tiny")
    assert_failed_fast(result, took, 2, "1")


@pytest.mark.parametrize(
    "route",
    [("DELETE", r"^/api/models/me/pruned/branch/checkpoint-10$"), ("POST", r"^/api/models/me/pruned/commit/main$")],
)
def test_prune_waits_out_a_rate_limit(route: tuple[str, str], run: Path, hub: RunningHub, api: HfApi) -> None:
    done, _ = run_cli(hub, "push", str(run), "--select", "all", "--repo", "me/pruned")
    assert done.exit_code == 0, done.output
    fault = hub.server.inject_fault(*route, rate_limit=2)

    result, took = run_cli(hub, "prune", "me/pruned", "--keep", "1")

    assert result.exit_code == 0, result.output
    assert fault.times == 0 and waits_said(result) == [3] and took >= 2
    assert {b.name for b in api.list_repo_refs("me/pruned").branches} == {"main", "checkpoint-30"}


# -- watch: a pause, not a failed push --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "route",
    [
        ("POST", r"^/api/models/me/watched/commit/checkpoint-20$"),
        ("POST", r"^/api/models/me/watched/commit/main$"),  # after checkpoint-10's commit landed
        ("POST", r"/preupload/checkpoint-10$"),
    ],
)
def test_a_watch_pauses_for_a_rate_limit_and_pushes_everything_once(
    route: tuple[str, str], run: Path, hub: RunningHub, api: HfApi
) -> None:
    fault = hub.server.inject_fault(*route, rate_limit=2)
    args = ["watch", str(run), "--repo", "me/watched", "--interval", "0.1", "--retry-max", "0.1", "--nice", "0"]

    result, took = run_cli(hub, *args)

    assert result.exit_code == 0, result.output
    assert fault.times == 0 and waits_said(result) == [3] and took >= 2
    assert "Hub unavailable" not in result.stderr and "retrying" not in result.stderr  # no failure
    assert result.stdout.endswith("Done: the run finished; 3 checkpoints on me/watched.\n")
    each_on_the_hub_exactly_once(api, "me/watched", [10, 20, 30])


def test_a_watch_asked_to_wait_longer_than_max_wait_fails_at_once(run: Path, hub: RunningHub) -> None:
    hub.server.inject_fault("POST", r"^/api/models/me/watched/commit/checkpoint-10$", rate_limit=30)
    args = ["watch", str(run), "--repo", "me/watched", "--interval", "0.1", "--nice", "0", "--max-wait", "3"]

    result, took = run_cli(hub, *args)

    assert_failed_fast(result, took, 30, "3")


def test_a_watch_keeps_its_rate_limit_pauses_within_max_wait_in_all(run: Path, hub: RunningHub) -> None:
    """Pauses for rate limits in a row (no call succeeding between them) add up to at most max-wait."""
    hub.server.inject_fault("GET", r"^/api/models/me/watched/refs$", rate_limit=0, times=10**6)
    args = ["watch", str(run), "--repo", "me/watched", "--interval", "0.1", "--nice", "0", "--max-wait", "2"]

    result, took = run_cli(hub, *args)

    assert result.exit_code == 1 and took < 8, result.output
    waits = waits_said(result)
    assert len(waits) >= 2 and "more, after 2 s" in result.stderr.splitlines()[-1], result.stderr


# -- the library ---------------------------------------------------------------------------------------------------


def test_the_library_takes_max_wait(pushed: tuple[RunningHub, Path], tmp_path: Path) -> None:
    hub, work = pushed
    events: list[Any] = []
    hub.server.inject_fault(*READS["refs"], rate_limit=1)
    revisions = hubsync.list_revisions("me/tiny", endpoint=hub.endpoint, token=hub.token, report=events.append)
    assert len(revisions) == 3
    assert [type(e).__name__ for e in events] == ["RateLimited"] and 1.2 <= events[0].pause <= 2

    hub.server.inject_fault(*PULLS["download"], rate_limit=9)
    with pytest.raises(RateLimitedError) as info:
        hubsync.pull("me/tiny", "checkpoint-10", tmp_path, endpoint=hub.endpoint, token=hub.token, max_wait=2)
    assert (info.value.asked, info.value.max_wait) == (9, 2)
    hub.server.clear_faults()

    hub.server.inject_fault("POST", r"^/api/repos/create$", rate_limit=7)  # a push option, as push's others
    source = work / "out" / "tiny" / "checkpoint-10"
    with pytest.raises(RateLimitedError) as info:
        hubsync.push(source, "me/library", endpoint=hub.endpoint, token=hub.token, max_wait=1.5)
    assert (info.value.asked, info.value.max_wait, info.value.repo_id) == (7, 1.5, "me/library")
    hub.server.clear_faults()

    with pytest.raises(SettingError, match=r"^max_wait= must be a number of seconds"):
        hubsync.list_revisions("me/tiny", endpoint=hub.endpoint, token=hub.token, max_wait=-1)
    with pytest.raises(SettingError, match=r"^max_wait= must be a number of seconds"):
        hubsync.plan_prune("me/tiny", 1, endpoint=hub.endpoint, token=hub.token, max_wait="soon")
    run = tmp_path / "run"
    with pytest.raises(SettingError, match=r"^max_wait= must be a number of seconds"):
        hubsync.watcher(run, "me/tiny", endpoint=hub.endpoint, token=hub.token, max_wait=float("inf"))


# -- the setting's values ------------------------------------------------------------------------------------------

VALUES = (
    st.text(max_size=12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.booleans()
    | st.sampled_from(["600", " 1.5 ", "0", "86400", "86401", "-0.1", "1e3", "1e999", "nan", "inf", "1_0", "", "0x10"])
    | st.lists(st.integers(), max_size=2)
)


def parsed(value: object) -> float | None:
    """What the value means as seconds, when it is one the setting takes (independent of the table's check)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 86400 else None


@settings(max_examples=400, deadline=None)
@given(VALUES, st.sampled_from(["flag", "variable", "file", "keyword"]))
def test_max_wait_takes_seconds_from_0_to_a_day_whatever_its_source(value: object, source: str) -> None:
    if source in ("flag", "variable") and not isinstance(value, str):
        value = json.dumps(value)  # what a command line or an environment carries: text
    flags = {"max-wait": value} if source in ("flag", "keyword") else {}
    environ = {SETTING.variable: value} if source == "variable" else {}
    config = FileConfig({"max-wait": value} if source == "file" else {}, "hubsync.toml", Path("."))
    label = (lambda s: "max_wait=") if source == "keyword" else None
    named = {"flag": "--max-wait", "variable": "HUBSYNC_MAX_WAIT", "file": "hubsync.toml", "keyword": "max_wait="}
    try:
        resolved = resolve_settings(flags, config, environ, names=("max-wait",), label=label)
    except SettingError as exc:
        assert parsed(value) is None, value
        assert exc.source == named[source] and exc.setting == "max-wait"
        return
    if source == "variable" and isinstance(value, str) and not value.strip():
        assert resolved["max-wait"] == 600  # cleared: the default
        return
    assert resolved["max-wait"] == parsed(value) and isinstance(resolved["max-wait"], float), value


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["ls", "pull", "prune", "push", "watch"]),
    VALUES.filter(lambda v: parsed(v) is None and "\x00" not in str(v)),
)
def test_a_bad_max_wait_is_refused_before_the_hub_is_asked(command: str, value: object) -> None:
    text = value if isinstance(value, str) else json.dumps(value)
    if text.startswith("-"):
        text = f" {text}"  # not taken for an option
    extra = {"prune": ["--keep", "1"], "push": ["."], "watch": ["."]}.get(command, [])
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_test"}  # nobody listens there
    repo = ["me/x"] if command in ("ls", "pull", "prune") else []
    flag = CliRunner().invoke(cli, [command, *extra, *repo, "--max-wait", text], env=env)
    assert flag.exit_code == 2, flag.output
    assert "Invalid value for '--max-wait': max-wait must be a number of seconds" in flag.stderr
    if not text.strip():
        return  # an empty variable clears the setting
    variable = CliRunner().invoke(cli, [command, *extra, *repo], env={**env, "HUBSYNC_MAX_WAIT": text})
    assert variable.exit_code == 1, variable.output
    assert variable.stderr.startswith("Error: HUBSYNC_MAX_WAIT: max-wait must be a number of seconds"), variable.stderr
