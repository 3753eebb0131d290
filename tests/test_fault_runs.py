"""Pushes and pulls under random Hub faults: each ends complete and verified, or failed with one clear error and
nothing half-done; a re-run without faults always completes.

The faults are the local Hub's (`LocalHubServer.inject_fault`): busy answers (429, 5xx), request bodies and answers
cut off mid-way, delays, a route that keeps failing. Runs are seeded: a failure names its seed, and
`HUBSYNC_FAULT_SEED=<seed>` replays it; `HUBSYNC_FAULT_RUNS=<n>` runs more (50 pushes and 50 pulls by default).
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import SummaryLines

from hubsync.cli import cli as main_cli
from hubsync.cli.errors import message_for
from hubsync.core.checkpoint import Checkpoint, read_checkpoint
from hubsync.core.errors import HubsyncError
from hubsync.core.index import parse_index
from hubsync.core.plan import PushOptions, PushPlan, plan_push
from hubsync.core.pull import plan_pull
from hubsync.files import is_temp
from hubsync.hub.client import HubClient
from hubsync.hub.pull import execute_pull
from hubsync.hub.push import execute_push
from hubsync.localhub import RunningHub
from hubsync.localhub.protocol import Fault

pytestmark = pytest.mark.xet_and_lfs  # each test runs against a Hub with Xet and one with git-LFS only

RUNS = int(os.environ.get("HUBSYNC_FAULT_RUNS", "50"))
SEED = int(os.environ.get("HUBSYNC_FAULT_SEED") or random.SystemRandom().randrange(2**32))
QUICK_RETRIES = (0.01, 0.02, 0.04, 0.08)  # as many attempts as by default, without the waits
REPO = "me/faulty"
BRANCH = "ckpt"

# (method, path regex, whether huggingface_hub's own backoff retries it: a fault there costs at least a second)
PUSH_ROUTES = [
    ("POST", r"^/api/repos/create$", False),
    ("GET", r"^/api/models/me/faulty$", False),
    ("GET", r"/xet-write-token/", False),
    ("GET", r"/refs$", False),
    ("GET", r"/commits/main$", True),
    ("POST", r"/branch/", False),
    ("GET", r"/tree/", True),
    ("POST", r"/preupload/", True),
    ("POST", r"\.git/info/lfs/objects/batch$", True),
    ("PUT", r"^/_lfs/", True),
    ("POST", r"^/_lfs/[0-9a-f]+/verify$", True),
    ("POST", r"/validate-yaml$", False),
    ("POST", r"/commit/ckpt$", False),
    ("POST", r"/commit/main$", False),
    ("HEAD", r"/resolve/", True),
    ("GET", r"/resolve/", True),
]
PULL_ROUTES = [
    ("GET", r"^/api/models/me/faulty/revision/", False),
    ("GET", r"/tree/", True),
    ("HEAD", r"/resolve/", True),  # after one failure, huggingface_hub asks again with its backoff
    ("GET", r"/resolve/", True),
]


@dataclass(frozen=True)
class Injected:
    method: str
    path: str
    kind: str
    times: int
    arg: float

    def inject(self, hub: RunningHub) -> Fault:
        server = hub.server
        if self.kind == "busy":
            return server.inject_fault(self.method, self.path, int(self.arg), self.times, retry_after=0)
        if self.kind == "down":
            return server.inject_fault(self.method, self.path, 500, self.times)
        if self.kind == "refused":
            return server.inject_fault(self.method, self.path, int(self.arg), self.times)
        if self.kind == "cut_request":
            return server.inject_fault(self.method, self.path, cut_request=int(self.arg), times=self.times)
        if self.kind == "cut_response":
            return server.inject_fault(self.method, self.path, cut_response=int(self.arg), times=self.times)
        return server.inject_fault(self.method, self.path, delay=self.arg, times=self.times)


def random_faults(rng: random.Random, routes: list[tuple[str, str, bool]], most: int = 3) -> list[Injected]:
    """One to `most` faults. Where huggingface_hub retries with its own (unconfigurable, seconds-long) backoff, a
    fault fires once; elsewhere hubsync retries (quickly here), and a fault may outlast its five attempts."""
    faults = []
    for _ in range(rng.choice((1, 1, 2, 3)[: most + 1])):
        method, path, slow = rng.choice(routes)
        if slow and rng.random() < 0.5:  # keep the run short: half of these become a delay
            faults.append(Injected(method, path, "delay", 1, rng.uniform(0.01, 0.1)))
            continue
        kind = rng.choice(["busy", "busy", "cut_request", "cut_response", "cut_response", "delay", "down", "refused"])
        times = 1 if slow else rng.choice((1, 1, 2, 3, 6))
        arg: float = {
            "busy": rng.choice((429, 500, 502, 503)),
            "down": 0,
            "refused": rng.choice((400, 403, 404)),
            "cut_request": rng.choice((0, 10, 100, 50_000)),
            "cut_response": rng.choice((0, 1, 20, 1000, 50_000)),
            "delay": rng.uniform(0.01, 0.2),
        }[kind]
        if kind in ("down", "refused"):
            if slow:
                kind, arg = "busy", 503
            else:
                times = 99
        faults.append(Injected(method, path, kind, times, arg))
    return faults


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def expected_files(plan: PushPlan, checkpoint: Checkpoint) -> dict[str, str]:
    """path in repo -> sha256 of what the push should put there (the checkpoint's file, or the generated card)."""
    out = {}
    for upload in plan.uploads:
        assert upload.converted_from is None  # these checkpoints need no conversion
        data = plan.generated[upload.source] if upload.generated else (checkpoint.path / upload.source).read_bytes()
        out[upload.path_in_repo] = sha256(data)
    return out


def branch_files(hub: RunningHub, commit: str) -> dict[str, str]:
    files = hub.server.store.commit("model", REPO, commit).files
    return {path: entry.sha256 for path, entry in files.items() if path != ".gitattributes"}


def head_of(hub: RunningHub, branch: str) -> str | None:
    if hub.server.store.repo("model", REPO) is None:
        return None
    return hub.server.store.refs("model", REPO)["branches"].get(branch)


def clear_message(exc: HubsyncError, hub: RunningHub, tmp_path: Path) -> str:
    message = message_for(exc)
    assert "\n" not in message and message.startswith("Error: ") and message.endswith("."), message
    assert hub.token not in message and str(tmp_path) not in message, message
    return message


@dataclass
class Tally:
    runs: int = 0
    completed: int = 0
    failed_clean: int = 0
    failed_after_commit: int = 0  # the branch got the complete checkpoint, a later step (tag, index) failed
    data_lost: int = 0
    faults_fired: int = 0
    reruns_completed: int = 0

    def line(self, what: str) -> str:
        after = f" (of which {self.failed_after_commit} after the checkpoint's commit landed)" if what == "push" else ""
        return (
            f"{what}: {self.runs} runs under faults (seed {SEED}): {self.completed} completed, "
            f"{self.failed_clean} failed cleanly{after}, {self.data_lost} data lost; "
            f"{self.faults_fired} faults fired; {self.reruns_completed} re-runs without faults completed"
        )


@pytest.fixture
def report(summary_lines: SummaryLines) -> Iterator[Callable[[str], None]]:
    with summary_lines("fault runs", f"unfinished: HUBSYNC_FAULT_SEED={SEED} replays these runs") as add:
        yield add


def fired(hub: RunningHub, faults: list[Fault]) -> int:
    hub.server.clear_faults()
    return sum(1 for f in faults if f.arrived.is_set())


def test_pushes_under_random_faults_complete_or_fail_cleanly(
    tiny_run: Path, hub: RunningHub, tmp_path: Path, report: Callable[[str], None]
) -> None:
    rng = random.Random(SEED)
    checkpoints = [read_checkpoint(tiny_run / f"checkpoint-{step}") for step in (10, 20, 30)]
    plans = [plan_push(c, PushOptions(REPO, revision=BRANCH)) for c in checkpoints]
    expected = [expected_files(p, c) for p, c in zip(plans, checkpoints, strict=True)]
    tally, outcomes = Tally(), Counter[str]()
    current: int | None = None
    started = time.monotonic()
    for run in range(RUNS):
        where = f"push run {run}, seed {SEED} (HUBSYNC_FAULT_SEED={SEED} replays it)"
        chosen = rng.choice([i for i in range(3) if i != current])
        before = head_of(hub, BRANCH) if current is not None else None
        faults = random_faults(rng, PUSH_ROUTES)
        injected = [fault.inject(hub) for fault in faults]
        tally.runs += 1
        try:
            result = execute_push(plans[chosen], checkpoints[chosen], HubClient(hub.endpoint, hub.token, QUICK_RETRIES))
        except HubsyncError as exc:
            clear_message(exc, hub, tmp_path)
            outcomes[type(exc).__name__] += 1
            after = head_of(hub, BRANCH)
            if after == before:
                tally.failed_clean += 1
            elif after is not None and branch_files(hub, after) == expected[chosen]:
                tally.failed_clean += 1
                tally.failed_after_commit += 1
            else:
                tally.data_lost += 1
                pytest.fail(f"{where}: the branch moved to a partial commit; faults {faults}")
            tally.faults_fired += fired(hub, injected)
            result = execute_push(plans[chosen], checkpoints[chosen], HubClient(hub.endpoint, hub.token, QUICK_RETRIES))
            tally.reruns_completed += 1
        else:
            tally.completed += 1
            outcomes["completed"] += 1
            tally.faults_fired += fired(hub, injected)
        head = head_of(hub, BRANCH)
        assert result.commit == head, f"{where}: faults {faults}"
        assert branch_files(hub, head) == expected[chosen], f"{where}: the branch does not hold the checkpoint"
        with hub.server.store.open_blob(index_sha(hub)) as f:
            index = parse_index(f.read())
        assert any(e.get("revision") == BRANCH and e.get("commit") == head for e in index), where
        current = chosen
    report(tally.line("push") + f"; {time.monotonic() - started:.1f} s; errors: {dict(outcomes)}")
    assert tally.completed + tally.failed_clean == RUNS and tally.data_lost == 0
    assert tally.completed > 0 and tally.failed_clean > 0  # the faults did bite, and did not always


def index_sha(hub: RunningHub) -> str:
    main = head_of(hub, "main")
    assert main is not None
    return hub.server.store.commit("model", REPO, main).files[".hubsync/index.json"].sha256


def test_pulls_under_random_faults_complete_or_place_nothing(
    tiny_run: Path, hub: RunningHub, tmp_path: Path, report: Callable[[str], None]
) -> None:
    rng = random.Random(SEED + 1)
    checkpoint = read_checkpoint(tiny_run / "checkpoint-30")
    plan = plan_push(checkpoint, PushOptions(REPO, revision=BRANCH))
    execute_push(plan, checkpoint, HubClient(hub.endpoint, hub.token, QUICK_RETRIES))
    expected = expected_files(plan, checkpoint)
    tally, outcomes = Tally(), Counter[str]()
    started = time.monotonic()

    def pull(to: Path) -> Path:
        client = HubClient(hub.endpoint, hub.token, QUICK_RETRIES)
        commit = client.resolve_commit(REPO, BRANCH)
        return execute_pull(plan_pull(REPO, BRANCH, commit, client.tree(REPO, commit), to, 30), client)

    for run in range(RUNS):
        where = f"pull run {run}, seed {SEED} (HUBSYNC_FAULT_SEED={SEED} replays it)"
        parent = tmp_path / f"pull-{run}"
        faults = random_faults(rng, PULL_ROUTES, most=2)  # nearly all its routes are slow to fail
        injected = [fault.inject(hub) for fault in faults]
        tally.runs += 1
        try:
            target = pull(parent)
        except HubsyncError as exc:
            clear_message(exc, hub, tmp_path)
            outcomes[type(exc).__name__] += 1
            left = sorted(p.name for p in parent.iterdir()) if parent.exists() else []
            if left:
                tally.data_lost += 1
                pytest.fail(f"{where}: a failed pull left {left}; faults {faults}")
            tally.failed_clean += 1
            tally.faults_fired += fired(hub, injected)
            target = pull(parent)
            tally.reruns_completed += 1
        else:
            tally.completed += 1
            outcomes["completed"] += 1
            tally.faults_fired += fired(hub, injected)
        assert [p.name for p in parent.iterdir()] == ["checkpoint-30"], f"{where}: temp files left beside it"
        pulled = {str(p.relative_to(target)): sha256(p.read_bytes()) for p in target.rglob("*") if p.is_file()}
        assert pulled == expected, f"{where}: faults {faults}"
        assert not any(is_temp(p) for p in target.rglob("*"))
    report(tally.line("pull") + f"; {time.monotonic() - started:.1f} s; errors: {dict(outcomes)}")
    assert tally.completed + tally.failed_clean == RUNS and tally.data_lost == 0
    assert tally.completed > 0 and tally.failed_clean > 0


def cli(hub: RunningHub, *args: str) -> Result:
    return CliRunner().invoke(main_cli, list(args), env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token})


def test_a_refused_card_is_one_line(tiny_run: Path, hub: RunningHub) -> None:
    """huggingface_hub puts the Hub's reasons for refusing a card on lines of their own."""
    hub.server.inject_fault("POST", r"/validate-yaml$", 400)

    result = cli(hub, "push", str(tiny_run / "checkpoint-10"), "--repo", REPO)

    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "Invalid metadata in README.md" in result.stderr, result.stderr


def test_a_refused_download_says_what_the_hub_said(tiny_run: Path, hub: RunningHub, tmp_path: Path) -> None:
    """huggingface_hub reports a failed file lookup as a file missing from its local cache; hubsync reports the
    Hub's answer (here: no permission), not a local disk problem."""
    assert cli(hub, "push", str(tiny_run / "checkpoint-10"), "--repo", REPO).exit_code == 0
    if hub.server.xet is None:  # the weights come over HTTP
        hub.server.inject_fault("GET", r"/resolve/[0-9a-f]{40}/adapter_model\.safetensors$", 403, times=99)
    else:  # through hf_xet, with a token the Hub hands out for the commit
        hub.server.inject_fault("GET", r"/xet-read-token/[0-9a-f]{40}$", 403, times=99)

    result = cli(hub, "pull", REPO, "--revision", "checkpoint-10", "--to", str(tmp_path / "pulled"))

    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "403" in result.stderr and "free space" not in result.stderr, (
        result.stderr
    )
    assert not (tmp_path / "pulled").exists() or list((tmp_path / "pulled").iterdir()) == []


def test_a_busy_hub_during_a_download_is_retried(tiny_run: Path, hub: RunningHub, tmp_path: Path) -> None:
    """A file read into memory (one streamed GET, capped) is retried by hubsync while the Hub answers 503."""
    checkpoint = read_checkpoint(tiny_run / "checkpoint-10")
    client = HubClient(hub.endpoint, hub.token, QUICK_RETRIES)
    execute_push(plan_push(checkpoint, PushOptions(REPO, revision=BRANCH)), checkpoint, client)
    fault = hub.server.inject_fault("GET", r"/resolve/ckpt/adapter_config\.json$", 503, times=4, retry_after=0)

    assert (
        client.read_file(REPO, BRANCH, "adapter_config.json") == (checkpoint.path / "adapter_config.json").read_bytes()
    )
    assert fault.times == 0


@pytest.mark.parametrize("route", [r"/commit/ckpt$", r"/commit/main$"])
def test_a_commit_whose_answer_is_lost_is_not_made_twice(tiny_run: Path, hub: RunningHub, route: str) -> None:
    """The commit lands but its answer is cut off: hubsync retries, finds the branch moved (412), sees that it
    already holds the files, and completes without another commit."""
    checkpoint = read_checkpoint(tiny_run / "checkpoint-20")
    plan = plan_push(checkpoint, PushOptions(REPO, revision=BRANCH))
    fault = hub.server.inject_fault("POST", route, cut_response=0)

    result = execute_push(plan, checkpoint, HubClient(hub.endpoint, hub.token, QUICK_RETRIES))

    assert fault.times == 0
    branch = BRANCH if "ckpt" in route else "main"
    head = head_of(hub, branch)
    assert head is not None
    titles = [c.title for c in hub.server.store.history("model", REPO, head)]
    assert len(titles) == len(set(titles)), titles  # each commit once
    assert result.commit == head_of(hub, BRANCH)
    assert branch_files(hub, result.commit) == expected_files(plan, checkpoint)
