"""Shared fixtures: an isolated environment for every test, a real tiny training run, and a local Hub."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from huggingface_hub import HfApi

from hubsync.cli import cli
from hubsync.localhub import LocalHubServer, RunningHub, running_hub

pytest_plugins = ["pytester"]  # test_localhub_handler_errors runs a test file that meets a bug of the local Hub


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the user's Hugging Face setup, token or endpoint."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for name in ("HF_TOKEN", "HF_ENDPOINT", "HUGGING_FACE_HUB_TOKEN", "HUBSYNC_DEBUG", "HF_HUB_DISABLE_XET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # deepspeed (a test dependency), which transformers imports whenever it is installed, prints a warning to
    # stdout when it finds no GPU, unless told the accelerator: these machines have none.
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Trainer + PEFT run on a tiny random Llama: 30 steps, checkpoints at 10, 20 and 30. Read only."""
    from hubsync.tinyrun import train_tiny_lora

    return train_tiny_lora(tmp_path_factory.mktemp("tiny-run"), max_steps=30, save_steps=10)


@pytest.fixture(scope="session")
def best_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run with checkpoints 10, 20, 30, 40 whose trainer_state names checkpoint-10 the best: the Trainer was
    told that a greater eval_loss is better, so that the best is not also the newest. Read only."""
    from hubsync.tinyrun import train_tiny_lora

    return train_tiny_lora(
        tmp_path_factory.mktemp("best-run"),
        max_steps=40,
        save_steps=10,
        metric_for_best_model="eval_loss",
        greater_is_better=True,
    )


@pytest.fixture(scope="session")
def bin_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Trainer + PEFT run that saved its adapter as adapter_model.bin, as PEFT used to. Read only."""
    from hubsync.tinyrun import train_tiny_lora

    return train_tiny_lora(tmp_path_factory.mktemp("bin-run"), max_steps=10, save_steps=10, safe_serialization=False)


@pytest.fixture(scope="session")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Trainer run that trained the whole tiny Llama, no LoRA (a full fine-tune): one checkpoint at 10."""
    from hubsync.tinyrun import train_tiny_lora

    return train_tiny_lora(tmp_path_factory.mktemp("full-run"), max_steps=10, save_steps=10, lora=False)


@pytest.fixture
def checkpoint(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the run's last checkpoint, free to modify."""
    return Path(shutil.copytree(tiny_run / "checkpoint-30", tmp_path / "run" / "checkpoint-30"))


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run (checkpoints 10, 20, 30), inside a project folder."""
    return Path(shutil.copytree(tiny_run, tmp_path / "project" / "out" / "tiny"))


def push(hub: RunningHub, *args: str, env: dict[str, str] | None = None) -> Result:
    """`hubsync push ARGS` against `hub`, its token and endpoint in the environment (tests import it)."""
    return CliRunner().invoke(
        cli,
        ["push", *args],
        catch_exceptions=False,
        env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token, **(env or {})},
    )


# The local Hub's own bugs (an exception a handler did not expect, answered 500 and retried by the client) fail the
# test that met them: every local Hub a test or fixture starts goes through `local_hub` or `reporting_bugs`, and
# `local_hub_bugs_fail_the_test` checks the live ones after each test (a module's shared Hub included).
_live_hubs: list[LocalHubServer] = []


@contextmanager
def reporting_bugs(server: LocalHubServer) -> Iterator[LocalHubServer]:
    """Check `server` for handler bugs after each test while the block runs, and when it ends."""
    _live_hubs.append(server)
    try:
        yield server
    finally:
        _live_hubs.remove(server)
    server.check_handler_errors()


@contextmanager
def local_hub(root: Path, **options: Any) -> Iterator[RunningHub]:
    """`hubsync.localhub.running_hub(root, **options)` whose handler bugs fail the test that met them (tests use
    it, never running_hub or LocalHubServer alone)."""
    with running_hub(root, **options) as running, reporting_bugs(running.server):
        yield running


@pytest.fixture(autouse=True)
def local_hub_bugs_fail_the_test() -> Iterator[None]:
    """After each test, raise the handler bugs that the local Hubs still running met during it: pytest reports
    them as an error of that test, with each traceback."""
    yield
    for server in list(_live_hubs):
        server.check_handler_errors()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked `xet_and_lfs` runs twice: against a local Hub with Xet storage, as huggingface.co (where
    huggingface_hub uploads and downloads through hf_xet), and against one with git-LFS only, as most self-hosted
    Hubs. Any other test meets a Hub with Xet."""
    if "hub_transfer" in metafunc.fixturenames and metafunc.definition.get_closest_marker("xet_and_lfs"):
        metafunc.parametrize("hub_transfer", ["xet", "lfs"], indirect=True)


@pytest.fixture
def hub_transfer(request: pytest.FixtureRequest) -> str:
    """How the `hub` fixture's local Hub takes files: "xet" (the default) or "lfs" (see pytest_generate_tests)."""
    return str(getattr(request, "param", "xet"))


@pytest.fixture
def hub(tmp_path: Path, hub_transfer: str) -> Iterator[RunningHub]:
    """A local Hub on a free loopback port, user `me`, storing under tmp_path; its handler bugs fail the test."""
    with local_hub(tmp_path / "hub-root", xet=hub_transfer == "xet") as running:
        yield running


@pytest.fixture
def api(hub: RunningHub):  # type: ignore[no-untyped-def]
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub.endpoint, token=hub.token)


SummaryLines = Callable[[str, str], AbstractContextManager[Callable[[str], None]]]


@pytest.fixture
def summary_lines(capsys: pytest.CaptureFixture[str]) -> SummaryLines:
    """`with summary_lines(tag, unfinished) as add:` prints each added line as `[tag] line` when the block ends,
    visible without -s (docs/reliability.md quotes them); `unfinished` when none was added (a failed run)."""

    @contextmanager
    def lines(tag: str, unfinished: str) -> Iterator[Callable[[str], None]]:
        added: list[str] = []
        try:
            yield added.append
        finally:
            with capsys.disabled():
                for line in added or [unfinished]:
                    print(f"\n[{tag}] {line}")

    return lines


def hub_state(api: HfApi) -> Any:
    """The Hub as its own client lists it: the repositories, each one's branches and tags with their commits, and
    main's history. Equal before and after a refusal: nothing on the Hub changed (tests import it)."""
    repos = sorted(m.id for m in api.list_models(author="me"))
    listed = []
    for repo in repos:
        refs = api.list_repo_refs(repo)
        named = sorted((r.name, r.target_commit) for r in (*refs.branches, *refs.tags))
        listed.append((repo, named, [c.commit_id for c in api.list_repo_commits(repo)]))
    return repos, listed


def each_on_the_hub_exactly_once(api: HfApi, repo: str, steps: list[int], other_main_commits: int = 0) -> None:
    """One commit on each checkpoint branch beyond the root it starts from, one index entry each, and one index
    commit on main for each (beyond main's first commit, and `other_main_commits`)."""
    branches = {b.name: b.target_commit for b in api.list_repo_refs(repo).branches}
    assert set(branches) == {"main", *(f"checkpoint-{s}" for s in steps)}
    root = api.list_repo_commits(repo, revision="main")[-1].commit_id
    for step in steps:
        history = [c.commit_id for c in api.list_repo_commits(repo, revision=f"checkpoint-{step}")]
        assert len(history) == 2 and history[-1] == root, (step, history)
    index = json.loads(Path(api.hf_hub_download(repo, ".hubsync/index.json")).read_text())
    assert [e["revision"] for e in index["revisions"]] == [f"checkpoint-{s}" for s in steps]
    assert [e["commit"] for e in index["revisions"]] == [branches[f"checkpoint-{s}"] for s in steps]
    assert len(api.list_repo_commits(repo, revision="main")) == 1 + len(steps) + other_main_commits
