"""Reading a checkpoint folder, and the pure push plan (no network, no torch)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from hubsync.core.checkpoint import Checkpoint, CheckpointFile, TrainerState, parse_trainer_state, read_checkpoint
from hubsync.core.errors import CheckpointFileError, InvalidRepoIdError, InvalidRevisionError, NotACheckpointError
from hubsync.core.paths import display_path
from hubsync.core.plan import PushOptions, commit_message, plan_push


def make_checkpoint(**overrides: object) -> Checkpoint:
    fields: dict[str, object] = {
        "path": Path("/nowhere/run/checkpoint-40"),
        "display": "run/checkpoint-40",
        "name": "checkpoint-40",
        "step": 40,
        "files": (CheckpointFile("adapter_model.safetensors", 1000), CheckpointFile("trainer_state.json", 20)),
        "trainer_state": TrainerState(global_step=40, epoch=2.5, latest_eval={"eval_loss": 0.83125}),
    }
    fields.update(overrides)
    return Checkpoint(**fields)  # type: ignore[arg-type]


# -- the plan ---------------------------------------------------------------------------------------------------------


def test_plan_uploads_every_file_to_a_branch_named_after_the_folder() -> None:
    plan = plan_push(make_checkpoint(), PushOptions("me/model", card=None))
    assert plan.revision == "checkpoint-40"
    assert [(u.path_in_repo, u.size) for u in plan.uploads] == [
        ("adapter_model.safetensors", 1000),
        ("trainer_state.json", 20),
    ]
    assert plan.total_bytes == 1020
    assert plan.private is True


def test_commit_message_has_step_epoch_and_eval_loss() -> None:
    assert commit_message(make_checkpoint()) == "hubsync: checkpoint-40 (step 40, epoch 2.50, eval_loss 0.8313)"
    assert commit_message(make_checkpoint(step=None, trainer_state=None)) == "hubsync: checkpoint-40"


def test_commit_description_lists_the_facts_without_local_paths() -> None:
    plan = plan_push(make_checkpoint(), PushOptions("me/model", card=None))
    assert "- eval_loss: 0.8313" in plan.commit_description
    assert "/nowhere" not in plan.commit_description


@pytest.mark.parametrize("repo_id", ["model", "me/", "/model", "me/mo del", "a/b/c", "me/../x", "me/x.git"])
def test_plan_refuses_bad_repo_ids(repo_id: str) -> None:
    with pytest.raises(InvalidRepoIdError):
        plan_push(make_checkpoint(), PushOptions(repo_id, card=None))


@pytest.mark.parametrize("revision", ["a..b", "refs/heads/x", "x/", "a b", "0" * 40, "x.lock", "/x"])
def test_plan_refuses_bad_branch_names(revision: str) -> None:
    with pytest.raises(InvalidRevisionError):
        plan_push(make_checkpoint(), PushOptions("me/model", revision, card=None))


# -- trainer_state.json -----------------------------------------------------------------------------------------------


def test_trainer_state_takes_the_newest_eval_and_loss() -> None:
    state = parse_trainer_state(
        {
            "global_step": 30,
            "epoch": 1.875,
            "best_metric": None,
            "log_history": [
                {"loss": 5.0, "step": 5},
                {"eval_loss": 4.9, "eval_runtime": 0.1, "step": 10},
                {"loss": 4.8, "step": 15},
                {"eval_loss": 4.7, "step": 20},
                "junk",
                {"eval_loss": float("nan")},
            ],
        }
    )
    assert state.global_step == 30 and state.epoch == 1.875
    assert state.latest_eval == {"eval_loss": 4.7}
    assert state.latest_loss == 4.8


@pytest.mark.parametrize("data", [[], "x", {"global_step": "ten"}, {"global_step": -1}, {"log_history": {}}])
def test_trainer_state_that_is_not_one(data: object) -> None:
    with pytest.raises(ValueError):
        parse_trainer_state(data)


# -- reading folders --------------------------------------------------------------------------------------------------


def test_a_real_trainer_checkpoint(tiny_run: Path) -> None:
    ckpt = read_checkpoint(tiny_run / "checkpoint-20")
    assert ckpt.name == "checkpoint-20" and ckpt.step == 20
    assert {f.relpath for f in ckpt.files} == {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.pt",
        "rng_state.pth",
        "scheduler.pt",
        "trainer_state.json",
        "training_args.bin",
    }
    assert ckpt.trainer_state is not None and "eval_loss" in ckpt.trainer_state.latest_eval


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_empty_folder(in_tmp: Path) -> None:
    (in_tmp / "empty").mkdir()
    with pytest.raises(NotACheckpointError, match=r"has no trainer_state\.json"):
        read_checkpoint("empty")


def test_a_file_instead_of_a_folder(in_tmp: Path) -> None:
    (in_tmp / "weights.bin").write_bytes(b"x")
    with pytest.raises(NotACheckpointError, match="a file, not a folder"):
        read_checkpoint("weights.bin")


def test_truncated_trainer_state(in_tmp: Path) -> None:
    folder = in_tmp / "checkpoint-5"
    folder.mkdir()
    (folder / "trainer_state.json").write_text('{"global_step": 5, "log_hi')
    with pytest.raises(CheckpointFileError, match=r"checkpoint-5/trainer_state\.json"):
        read_checkpoint(folder)


def test_deeply_nested_trainer_state(in_tmp: Path) -> None:
    folder = in_tmp / "checkpoint-5"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointFileError):
        read_checkpoint(folder)


def test_step_comes_from_the_folder_name_without_trainer_state(in_tmp: Path) -> None:
    folder = in_tmp / "checkpoint-7"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    assert read_checkpoint(folder).step == 7


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_links_inside_are_kept_and_links_outside_are_skipped(in_tmp: Path) -> None:
    folder = in_tmp / "checkpoint-1"
    (folder / "sub").mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (in_tmp / "outside.txt").write_text("secret")
    os.symlink(in_tmp / "outside.txt", folder / "leak.txt")
    os.symlink(folder / "adapter_config.json", folder / "sub" / "alias.json")
    os.symlink(in_tmp, folder / "dir-link")

    ckpt = read_checkpoint(folder)

    assert {f.relpath for f in ckpt.files} == {"adapter_config.json", "sub/alias.json"}
    assert any(s.startswith("leak.txt") for s in ckpt.skipped)
    assert any(s.startswith("dir-link/") for s in ckpt.skipped)


def test_display_path_never_shows_an_absolute_path(in_tmp: Path) -> None:
    assert display_path(in_tmp / "a" / "b") == "a/b"
    assert display_path(".") == "."
    assert display_path("/somewhere/else/run/checkpoint-1") == "…/run/checkpoint-1"


def test_every_error_has_its_own_message_with_a_next_step() -> None:
    import inspect

    from hubsync.cli.errors import ERROR_MESSAGES, message_for
    from hubsync.core import errors

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.HubsyncError)]
    listed = [exc_type for exc_type, _ in ERROR_MESSAGES]
    for cls in classes:
        assert cls in listed, f"{cls.__name__} has no entry in the CLI's error table"
        params = list(inspect.signature(cls.__init__).parameters)[1:]
        if cls is errors.CheckpointPushError:
            cause = errors.HubUnreachableError("http://hub", "ConnectError")
            instance = cls("run/checkpoint-2", ("run/checkpoint-1",), ("run/checkpoint-2",), cause)
        elif cls is errors.RateLimitedError:
            instance = cls("http://hub", 300, 12.0, 60.0, "me/m")
        elif cls is errors.RetentionError:
            cause = errors.HubUnreachableError("http://hub", "ConnectError")
            instance = cls("me/m", ("checkpoint-2",), 2, cause)
        elif cls is errors.IncompletePushError:
            cause = errors.TagExistsError("http://hub", "it points to abc", repo_id="me/m", revision="v1")
            instance = cls("run/checkpoint-2", "checkpoint-2", "f" * 40, cause, None)
        else:
            instance = cls(*["x/y" for _ in params]) if cls is not errors.HubsyncError else cls("boom")
        text = message_for(instance)
        assert text.startswith("Error: ") and text.endswith(".") and "\n" not in text
    for earlier, later in [(a, b) for i, a in enumerate(listed) for b in listed[i + 1 :]]:
        assert not issubclass(later, earlier), f"{later.__name__} is shadowed by {earlier.__name__}"


def test_a_pickle_whose_shared_references_explode_is_refused_quickly() -> None:
    import pickle
    import time

    from hubsync.core.ghostpickle import load_plain

    bomb: list[object] = []
    for _ in range(60):
        bomb = [bomb, bomb]
    data = pickle.dumps(bomb)
    assert len(data) < 1000
    started = time.monotonic()
    with pytest.raises(pickle.UnpicklingError, match="too large"):
        load_plain(data)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("status", "again"), [(400, False), (422, False), (409, False), (503, True), (None, True)])
def test_a_refusal_of_what_was_sent_does_not_say_that_running_again_helps(status: int | None, again: bool) -> None:
    from hubsync.cli.errors import message_for
    from hubsync.core import errors

    text = message_for(errors.HubError("http://hub", f"{status}: no", "me/m", status=status))
    assert ("Run the command again" in text) is again
    assert ("will fail the same way" in text) is not again


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("x.lock", "'.lock'"),
        ("runs/a.lock/b", "'.lock'"),
        ("HEAD", "HEAD names"),
        ("main", "main holds"),
        (".x", "'.'"),
    ],
)
def test_a_refused_branch_name_says_its_own_reason(name: str, reason: str) -> None:
    from hubsync.core import errors
    from hubsync.core.plan import check_branch_name

    with pytest.raises(errors.InvalidRevisionError) as info:
        check_branch_name(name)
    assert reason in info.value.reason
