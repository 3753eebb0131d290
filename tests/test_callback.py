"""hubsync.HubsyncCallback inside the real Trainer (hubsync.tinyrun), pushing to the local Hub: every checkpoint
lands exactly once, through an outage, through save_total_limit's rotation and across a restart; only the main
process pushes; a bad option is refused before anything happens."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import each_on_the_hub_exactly_once
from huggingface_hub import HfApi

import hubsync
from hubsync.core.errors import ConfigError, HubsyncError, MissingRepoError, SettingError, TokenMissingError
from hubsync.core.paths import display_path
from hubsync.hub import staging
from hubsync.localhub import RunningHub
from hubsync.tinyrun import train_tiny_lora

REPO = "me/trained"
README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.fixture
def on_hub(hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> RunningHub:
    """The local Hub as the environment's Hub (HF_ENDPOINT, HF_TOKEN), as a training script would have it."""
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    return hub


def assert_each_on_the_hub_exactly_once(api: HfApi, steps: list[int], other_main_commits: int = 0) -> None:
    each_on_the_hub_exactly_once(api, REPO, steps, other_main_commits)


def recorded(run: Path) -> list[int]:
    data = json.loads((run / ".hubsync" / "watch.json").read_text())
    return [p["step"] for r in data["records"] if r["repo"] == REPO for p in r["pushed"]]


def test_every_checkpoint_is_pushed_once_though_save_total_limit_deletes_them_and_a_restart_pushes_none_twice(
    on_hub: RunningHub, api: HfApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hubsync")
    run = tmp_path / "out" / "run"
    callback = hubsync.HubsyncCallback(REPO, training_state="keep")  # the default worker: a child process
    train_tiny_lora(run, max_steps=30, save_steps=10, save_total_limit=1, callbacks=[callback])
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-30"]  # the Trainer deleted 10 and 20
    assert callback.pending == [] and callback.wait(0)
    assert_each_on_the_hub_exactly_once(api, [10, 20, 30])
    assert "optimizer.safetensors" in api.list_repo_files(REPO, revision="checkpoint-10")  # training_state="keep"
    assert recorded(run) == [10, 20, 30]
    assert not list(staging.staged_dir(run).iterdir())  # each staged copy removed once pushed
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "hubsync: pushed checkpoint-30 to me/trained @ checkpoint-30" in caplog.messages
    heads = {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}

    # A run that stopped before it removed a staged copy of a pushed checkpoint, then resumed to step 40.
    staging.stage(run / "checkpoint-30", staging.staged_dir(run))
    again = hubsync.HubsyncCallback(REPO, training_state="keep", worker="thread")
    train_tiny_lora(
        run, max_steps=40, save_steps=10, save_total_limit=1, resume_from_checkpoint=True, callbacks=[again]
    )
    assert_each_on_the_hub_exactly_once(api, [10, 20, 30, 40])
    now = {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}
    assert {k: now[k] for k in heads if k != "main"} == {k: v for k, v in heads.items() if k != "main"}
    assert recorded(run) == [10, 20, 30, 40]
    assert again.pending == []


class Outage:
    """A TrainerCallback-like hook: when checkpoint-20 is saved, the Hub refuses the next commits with 503."""

    def __init__(self, hub: RunningHub) -> None:
        self.hub = hub

    def __call__(self) -> Any:
        from transformers import TrainerCallback

        hub = self.hub

        class HubOutage(TrainerCallback):
            def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                if state.global_step == 20:  # three pushes of the watch, each tried three times by the client
                    hub.server.inject_fault("POST", r"/commit/", 503, times=9, retry_after=0)
                return control

        return HubOutage()


def test_a_hub_outage_in_the_middle_of_training_delays_the_pushes_and_drops_none(
    on_hub: RunningHub, api: HfApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hubsync")
    run = tmp_path / "run"
    callback = hubsync.HubsyncCallback(REPO, worker="thread", interval=0.2, retry_max=1.0)
    started = time.monotonic()
    train_tiny_lora(run, max_steps=30, save_steps=10, step_sleep=0.05, callbacks=[Outage(on_hub)(), callback])
    assert_each_on_the_hub_exactly_once(api, [10, 20, 30])
    failed = [m for m in caplog.messages if "failed" in m]
    assert failed and all("503" in m and "trying again" in m for m in failed), caplog.messages
    assert not any("not pushed" in m for m in caplog.messages)
    assert time.monotonic() - started < 60


def test_the_end_of_training_waits_at_most_wait_seconds_then_says_what_is_left(
    on_hub: RunningHub, api: HfApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    on_hub.server.inject_fault("POST", r"/commit/", 503, times=10**6, retry_after=0)  # down for the whole run
    run = tmp_path / "run"
    callback = hubsync.HubsyncCallback(REPO, wait=1.0, retry_max=1.0)
    train_tiny_lora(run, max_steps=20, save_steps=10, save_total_limit=1, callbacks=[callback])
    assert callback.pending == [10, 20]  # kept, staged, for the next run
    left = [r.getMessage() for r in caplog.records if "not pushed" in r.getMessage()]
    staged = display_path(staging.staged_dir(run))
    assert left == [
        "hubsync: 2 checkpoint(s) not pushed to me/trained after 1 s (checkpoint-10, checkpoint-20): they stay "
        f"in {staged}, pushed by the next training run of {display_path(run)} with HubsyncCallback, or by "
        f"`hubsync push {staged} --repo {REPO} --select all`"
    ]
    assert on_hub.token not in caplog.text and str(tmp_path) not in caplog.text
    # nothing pushed: the repository not even made (its worker at nice 19 on a busy machine), or only main
    assert not api.repo_exists(REPO) or [b.name for b in api.list_repo_refs(REPO).branches] == ["main"]

    on_hub.server.clear_faults()  # the Hub is back: the next run pushes what was left, then its own
    again = hubsync.HubsyncCallback(REPO)
    train_tiny_lora(run, max_steps=30, save_steps=10, resume_from_checkpoint=True, callbacks=[again])
    assert_each_on_the_hub_exactly_once(api, [10, 20, 30])


def test_a_process_other_than_the_main_one_pushes_nothing(
    on_hub: RunningHub, api: HfApi, tiny_run: Path, tmp_path: Path
) -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    args = TrainingArguments(output_dir=str(run), use_cpu=True, report_to=[])
    state = TrainerState(global_step=10, is_world_process_zero=False, is_local_process_zero=False)
    callback = hubsync.HubsyncCallback(REPO)
    control = TrainerControl()
    assert callback.on_train_begin(args, state, control) is control
    assert callback.on_save(args, state, control) is control
    callback.on_train_end(args, state, control)
    assert callback.pending == [] and callback.wait(0)
    assert not (run / ".hubsync").exists()
    assert not api.repo_exists(REPO)


@pytest.mark.parametrize(
    ("repo", "options", "error"),
    [
        (REPO, {"training_state": "sometimes"}, ConfigError),
        (REPO, {"revision": "bad..name"}, HubsyncError),
        (None, {}, MissingRepoError),
        (REPO, {"no_such_option": 1}, TypeError),
        (REPO, {"worker": "fork"}, SettingError),
        (REPO, {"wait": "10"}, SettingError),
        (REPO, {"interval": float("nan")}, SettingError),
        (REPO, {"select": "best"}, TypeError),
    ],
)
def test_a_bad_option_is_refused_when_the_callback_is_made(
    on_hub: RunningHub, api: HfApi, repo: str | None, options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        hubsync.HubsyncCallback(repo, **options)
    assert not api.repo_exists(REPO)


def test_no_token_is_refused_when_the_callback_is_made(
    hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    with pytest.raises(TokenMissingError):
        hubsync.HubsyncCallback(REPO)
    assert not api.repo_exists(REPO)


def test_the_readmes_callback_example_runs_with_the_real_trainer(tmp_path: Path, hub: RunningHub, api: HfApi) -> None:
    section = README.split("## From inside training: `HubsyncCallback`")[1].split("\n## ")[0]
    (example,) = re.findall(r"```python\n(.*?)```", section, re.S)
    trainer = (
        "from hubsync.tinyrun import train_tiny_lora\n"
        "model = args = train_dataset = None\n"
        "class Trainer:  # the README's: the tiny run's real Trainer, its checkpoints rotated by save_total_limit\n"
        "    def __init__(self, callbacks, **kwargs):\n"
        "        self.callbacks = callbacks\n"
        "    def train(self):\n"
        "        train_tiny_lora('out/my-run', max_steps=20, save_steps=10, save_total_limit=1,"
        " callbacks=self.callbacks)\n"
    )
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    done = subprocess.run(
        [sys.executable, "-c", trainer + example], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"
    assert done.stderr == ""  # the callback printed nothing of its own, and no progress bar
    branches = {b.name for b in api.list_repo_refs("me/my-model").branches}
    assert branches == {"main", "checkpoint-10", "checkpoint-20"}
    assert "optimizer.safetensors" in api.list_repo_files("me/my-model", revision="checkpoint-20")


def test_a_link_in_the_staging_folders_is_refused_before_training_and_nothing_outside_is_touched(
    on_hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    """A link at <run>/.hubsync/staged/<run> would have the worker push, then delete, checkpoints elsewhere."""
    from hubsync.core.errors import WatchStateError

    elsewhere = tmp_path / "precious" / "checkpoint-5"
    elsewhere.mkdir(parents=True)
    (elsewhere / "PRECIOUS.txt").write_text("mine")
    run = tmp_path / "out" / "run"
    (run / ".hubsync" / "staged").mkdir(parents=True)
    (run / ".hubsync" / "staged" / "run").symlink_to(tmp_path / "precious")
    with pytest.raises(WatchStateError, match="a link or a file"):
        train_tiny_lora(run, max_steps=10, save_steps=10, callbacks=[hubsync.HubsyncCallback(REPO)])
    assert (elsewhere / "PRECIOUS.txt").read_text() == "mine" and not api.repo_exists(REPO)


def test_a_file_where_a_staged_copy_goes_does_not_make_the_checkpoint_skipped(
    on_hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    run = tmp_path / "out" / "run"
    staging.staged_dir(run).mkdir(parents=True)
    (staging.staged_dir(run) / "checkpoint-10").write_text("not a checkpoint")
    callback = hubsync.HubsyncCallback(REPO, worker="thread")
    train_tiny_lora(run, max_steps=20, save_steps=10, callbacks=[callback])
    assert callback.pending == []
    assert_each_on_the_hub_exactly_once(api, [10, 20])


def test_a_run_trained_again_from_scratch_into_the_same_folder_pushes_its_own_checkpoints(
    on_hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    """The record holds the first run's pushes of the same steps; the second run's checkpoints are others and are
    pushed (a new commit on each branch), not taken for pushed."""
    run = tmp_path / "out" / "run"
    train_tiny_lora(run, max_steps=20, save_steps=10, callbacks=[hubsync.HubsyncCallback(REPO, worker="thread")])
    first = {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}
    shutil.rmtree(run / "checkpoint-10")
    shutil.rmtree(run / "checkpoint-20")
    callback = hubsync.HubsyncCallback(REPO, worker="thread")
    train_tiny_lora(run, max_steps=20, save_steps=10, seed=7, callbacks=[callback])
    assert callback.pending == []
    second = {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}
    assert all(second[f"checkpoint-{s}"] != first[f"checkpoint-{s}"] for s in (10, 20)), (first, second)
    assert recorded(run) == [10, 20]
