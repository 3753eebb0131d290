"""Only complete checkpoints are pushed, and `resumable` means that the Trainer resumes from the pulled revision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from hubsync.cli import cli
from hubsync.cli.errors import message_for
from hubsync.core import errors
from hubsync.localhub import RunningHub


def run_cli(hub: RunningHub, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(
        cli, list(args), catch_exceptions=False, env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    )


@pytest.fixture
def still_saving(checkpoint: Path) -> Path:
    """checkpoint-30 as the Trainer leaves it mid-save: everything but trainer_state.json, which it writes last."""
    (checkpoint / "trainer_state.json").unlink()
    return checkpoint


@pytest.fixture
def no_weights(checkpoint: Path) -> Path:
    (checkpoint / "adapter_model.safetensors").unlink()
    return checkpoint


@pytest.fixture
def run_still_saving(tiny_run: Path, tmp_path: Path) -> Path:
    """The tiny run whose newest checkpoint, checkpoint-30, has no trainer_state.json yet."""
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    (run / "checkpoint-30" / "trainer_state.json").unlink()
    return run


@pytest.mark.parametrize(
    ("folder", "missing", "next_step"),
    [("still_saving", "trainer_state.json", "wait until the save has finished"), ("no_weights", "model weights", "")],
)
def test_an_incomplete_checkpoint_is_refused_before_the_hub_changes(
    folder: str, missing: str, next_step: str, request: pytest.FixtureRequest, hub: RunningHub, api
) -> None:  # type: ignore[no-untyped-def]
    path = request.getfixturevalue(folder)
    for dry_run in ([], ["--dry-run"]):
        result = run_cli(hub, "push", str(path), "--repo", "me/partial", "--training-state", "keep", *dry_run)
        assert result.exit_code == 1
        assert result.stderr.count("\n") == 1 and result.stdout == ""
        assert f"checkpoint-30 is not a complete checkpoint: it has no {missing}" in result.stderr
        assert next_step in result.stderr
    assert not api.repo_exists("me/partial")


def test_the_incomplete_checkpoint_message_names_the_next_step() -> None:
    IncompleteCheckpointError = errors.IncompleteCheckpointError
    assert "push a checkpoint the trainer saved" in message_for(IncompleteCheckpointError("c", "model weights")).lower()
    text = message_for(IncompleteCheckpointError("c", "trainer_state.json or model weights"))
    assert text.endswith("or push another checkpoint.")


def test_latest_picks_the_newest_complete_checkpoint_and_says_which_it_passed_over(
    run_still_saving: Path, hub: RunningHub, api, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(run_still_saving.parent)
    planned = run_cli(hub, "push", str(run_still_saving), "--repo", "me/run", "--dry-run", "--json")
    assert planned.exit_code == 0, planned.stderr
    data = json.loads(planned.stdout)
    assert [p["checkpoint"] for p in data["plans"]] == ["run/checkpoint-20"]
    assert data["passed_over"] == [{"checkpoint": "run/checkpoint-30", "missing": "trainer_state.json"}]
    assert planned.stderr == "Passed over run/checkpoint-30: it is not complete (no trainer_state.json)\n"

    pushed = run_cli(hub, "push", str(run_still_saving), "--repo", "me/run")

    assert pushed.exit_code == 0, pushed.stderr
    assert "Passed over run/checkpoint-30" in pushed.stderr
    branches = {b.name for b in api.list_repo_refs("me/run").branches}
    assert branches == {"main", "checkpoint-20"}


@pytest.mark.parametrize("select", ["30", "20,30", "best"])
def test_naming_an_incomplete_checkpoint_is_refused(select: str, run_still_saving: Path, hub: RunningHub, api) -> None:  # type: ignore[no-untyped-def]
    state = run_still_saving / "checkpoint-20" / "trainer_state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "best_model_checkpoint": "out/checkpoint-30"}))

    result = run_cli(hub, "push", str(run_still_saving), "--repo", "me/run", "--select", select)

    assert result.exit_code == 1
    assert "checkpoint-30 is not complete: it has no trainer_state.json" in result.stderr
    assert not api.repo_exists("me/run")


@given(
    st.sets(st.integers(0, 50), min_size=1, max_size=8).flatmap(
        lambda steps: st.tuples(st.just(sorted(steps)), st.sets(st.sampled_from(sorted(steps))))
    ),
    st.sampled_from(["latest", "all", "last:2"]),
)
def test_latest_all_and_last_n_take_only_complete_checkpoints(case: tuple[list[int], set[int]], select: str) -> None:
    from hubsync.core.selection import select_complete

    steps, broken = case
    incomplete = {s: "trainer_state.json" for s in broken}
    complete = [s for s in steps if s not in broken]
    if not complete:
        with pytest.raises(errors.SelectionError, match="no checkpoint of the run is complete"):
            select_complete(steps, select, None, incomplete)
        return
    chosen = select_complete(steps, select, None, incomplete)
    expected = {"latest": complete[-1:], "all": complete, "last:2": complete[-2:]}[select]
    assert list(chosen.steps) == expected
    assert set(chosen.passed_over) <= broken and not set(chosen.passed_over) & set(chosen.steps)
    assert all(s in chosen.passed_over for s in broken if s > chosen.steps[0] or select == "all")


def test_resumable_needs_trainer_state_weights_optimizer_and_scheduler() -> None:
    from hubsync.core.checkpoint import missing_parts
    from hubsync.core.conversion import is_resumable, resume_missing

    safe = {"trainer_state.json", "adapter_model.safetensors", "optimizer.json", "optimizer.safetensors"}
    safe |= {"scheduler.json", "scheduler.safetensors"}
    assert is_resumable(safe) and is_resumable(
        {"trainer_state.json", "model.safetensors", "optimizer.pt", "scheduler.pt"}
    )
    assert resume_missing(safe - {"trainer_state.json"}) == ("trainer_state.json",)
    assert resume_missing(safe - {"adapter_model.safetensors"}) == ("model weights",)
    assert resume_missing(safe - {"scheduler.safetensors"}) == ("scheduler state",)  # pull could not rebuild it
    assert missing_parts({"lora/adapter_model.safetensors", "trainer_state.json"}) == ()  # several adapters


def test_a_revision_without_trainer_state_is_not_called_resumable(
    checkpoint: Path, hub: RunningHub, api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A branch pushed by hand (or by an older hubsync) with training state but no trainer_state.json."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # the local Hub has no Xet
    api.create_repo("me/by-hand")
    folder = Path(shutil.copytree(checkpoint, tmp_path / "by-hand"))
    (folder / "trainer_state.json").unlink()
    api.create_branch("me/by-hand", branch="checkpoint-30")
    api.upload_folder(repo_id="me/by-hand", folder_path=folder, revision="checkpoint-30")

    rows = json.loads(run_cli(hub, "ls", "me/by-hand", "--json").stdout)

    assert [(r["revision"], r["resumable"]) for r in rows] == [("checkpoint-30", False)]
    pulled = run_cli(hub, "pull", "me/by-hand", "--revision", "checkpoint-30", "--to", str(tmp_path / "out"))
    assert pulled.exit_code == 0, pulled.stderr
    assert "not resumable: it has no trainer_state.json" in pulled.stdout and "resume:" not in pulled.stdout


@pytest.mark.parametrize("kind", ["pickle-free state", "pickled state", "bin adapter"])
def test_every_revision_called_resumable_resumes_training_after_pull(
    kind: str, tiny_run: Path, bin_run: Path, hub: RunningHub, api, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Push with --training-state keep, check that ls and main's index say resumable, pull into a fresh folder,
    resume with the real Trainer for 10 more steps: the adapter equals, bit for bit, that of a resume from the
    local checkpoint (so the optimizer, scheduler and trainer_state were all restored)."""
    from hubsync.tinyrun import train_tiny_lora

    local = {"pickle-free state": tiny_run / "checkpoint-20", "pickled state": tiny_run / "checkpoint-20"}.get(
        kind, bin_run / "checkpoint-10"
    )
    step = int(local.name.split("-")[1])
    formats = ["--training-state-format", "pickle"] if kind == "pickled state" else []
    pushed = run_cli(hub, "push", str(local), "--repo", "me/resume", "--training-state", "keep", *formats)
    assert pushed.exit_code == 0, pushed.stderr
    rows = json.loads(run_cli(hub, "ls", "me/resume", "--json").stdout)
    assert [(r["revision"], r["resumable"]) for r in rows] == [(local.name, True)]
    index = json.loads(Path(api.hf_hub_download("me/resume", ".hubsync/index.json")).read_text())
    assert [(e["revision"], e["resumable"]) for e in index["revisions"]] == [(local.name, True)]
    pulled = run_cli(hub, "pull", "me/resume", "--to", str(tmp_path / "fresh"), "--json")
    assert pulled.exit_code == 0, pulled.stderr
    assert json.loads(pulled.stdout)["resumable"] is True
    target = tmp_path / "fresh" / local.name

    def resume(source: Path, out: str) -> Path:
        return train_tiny_lora(
            tmp_path / out,
            max_steps=step + 10,
            save_steps=step + 10,
            eval_steps=None,
            resume_from_checkpoint=str(source),
        )

    from_hub, from_disk = resume(target, "resumed-hub"), resume(local, "resumed-disk")

    done = from_hub / f"checkpoint-{step + 10}"
    state = json.loads((done / "trainer_state.json").read_text())
    assert state["global_step"] == step + 10
    assert next(e["step"] for e in state["log_history"] if "loss" in e) == 5  # the pulled history carried on
    a = load_file(done / "adapter_model.safetensors")
    b = load_file(from_disk / f"checkpoint-{step + 10}" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name
