"""`hubsync push` options: selecting checkpoints, revision patterns, tags, --release, training state,
configuration files and variables, retries when the Hub fails, and quiet output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import push
from huggingface_hub import HfApi

from hubsync.cli import cli
from hubsync.localhub import RunningHub


def branches(api: HfApi, repo: str = "me/tiny") -> set[str]:
    return {b.name for b in api.list_repo_refs(repo).branches} - {"main"}


def test_a_run_folder_pushes_its_latest_checkpoint(run: Path, hub: RunningHub, api: HfApi) -> None:
    result = push(hub, str(run), "--repo", "me/tiny")
    assert result.exit_code == 0, result.stderr
    assert branches(api) == {"checkpoint-30"}


@pytest.mark.parametrize(
    ("select", "expected"),
    [("all", {10, 20, 30}), ("last:2", {20, 30}), ("10,30", {10, 30}), ("latest", {30})],
)
def test_select(run: Path, hub: RunningHub, api: HfApi, select: str, expected: set[int]) -> None:
    result = push(hub, str(run), "--repo", "me/tiny", "--select", select, "--json")
    assert result.exit_code == 0, result.stderr
    assert branches(api) == {f"checkpoint-{s}" for s in expected}
    assert [r["revision"] for r in json.loads(result.stdout)["results"]] == [
        f"checkpoint-{s}" for s in sorted(expected)
    ]


def test_select_best_follows_trainer_state(run: Path, hub: RunningHub, api: HfApi) -> None:
    state_file = run / "checkpoint-30" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["best_model_checkpoint"] = "/somewhere/else/out/tiny/checkpoint-20"
    state_file.write_text(json.dumps(state))

    assert push(hub, str(run), "--repo", "me/tiny", "--select", "best").exit_code == 0
    assert branches(api) == {"checkpoint-20"}


@pytest.mark.parametrize(
    ("select", "fragment"),
    [("best", "names no best checkpoint"), ("40", "no checkpoint-40 in the run")],
)
def test_bad_selections_say_what_exists(run: Path, hub: RunningHub, select: str, fragment: str) -> None:
    result = push(hub, str(run), "--repo", "me/tiny", "--select", select)
    assert result.exit_code == 1
    assert fragment in result.stderr and "--select" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_malformed_selection_is_misuse(run: Path, hub: RunningHub) -> None:
    result = push(hub, str(run), "--repo", "me/tiny", "--select", "newest")
    assert result.exit_code == 2
    assert "Invalid value for '--select'" in result.stderr and "use latest, best" in result.stderr


def test_revision_pattern_placeholders(run: Path, hub: RunningHub, api: HfApi) -> None:
    result = push(hub, str(run), "--repo", "me/tiny", "--select", "10", "--revision", "{run}/step-{step}-ep{epoch}")
    assert result.exit_code == 0, result.stderr
    assert branches(api) == {"tiny/step-10-ep0.62"}
    bad = push(hub, str(run), "--repo", "me/tiny", "--revision", "{steps}")
    assert bad.exit_code == 2 and "unknown placeholder {steps}" in bad.stderr


def test_tags_name_the_new_commit_and_never_move(run: Path, hub: RunningHub, api: HfApi) -> None:
    first = push(hub, str(run), "--repo", "me/tiny", "--select", "20", "--tag", "v1", "--tag", "good", "--json")
    assert first.exit_code == 0, first.stderr
    commit = json.loads(first.stdout)["results"][0]["commit"]
    refs = api.list_repo_refs("me/tiny")
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": commit, "good": commit}

    again = push(hub, str(run), "--repo", "me/tiny", "--select", "20", "--tag", "v1")
    assert again.exit_code == 0  # the same commit: nothing to do

    other = push(hub, str(run), "--repo", "me/tiny", "--select", "30", "--tag", "v1")
    assert other.exit_code == 1
    assert "the tag v1 already exists" in other.stderr and "tags never move" in other.stderr
    assert "checkpoint-30" not in branches(api)  # refused before anything was pushed


def test_release_publishes_inference_files_on_main(run: Path, hub: RunningHub, api: HfApi, tmp_path: Path) -> None:
    result = push(hub, str(run), "--repo", "me/tiny", "--release", "--training-state", "keep")
    assert result.exit_code == 0, result.stderr

    main = {f.path for f in api.list_repo_tree("me/tiny", recursive=True)}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", ".hubsync/index.json"} <= main
    assert not main & {
        "optimizer.safetensors",
        "optimizer.json",
        "trainer_state.json",
        "training_args.json",
        "training_loss.svg",
    }
    index = json.loads(Path(api.hf_hub_download("me/tiny", ".hubsync/index.json")).read_text())
    assert [(e["revision"], e["released"]) for e in index["revisions"]] == [("checkpoint-30", True)]
    branch_weights = api.get_paths_info("me/tiny", ["adapter_model.safetensors"], revision="checkpoint-30")[0]
    main_weights = api.get_paths_info("me/tiny", ["adapter_model.safetensors"])[0]
    assert branch_weights.lfs.sha256 == main_weights.lfs.sha256  # type: ignore[union-attr]


def test_training_state_in_a_public_repository_needs_explicit_consent(run: Path, hub: RunningHub, api: HfApi) -> None:
    refused = push(hub, str(run), "--repo", "me/open", "--public", "--training-state", "keep")
    assert refused.exit_code == 1
    assert "--allow-public-state" in refused.stderr
    assert not api.repo_exists("me/open")  # refused before the repository was created

    allowed = push(hub, str(run), "--repo", "me/open", "--public", "--training-state", "keep", "--allow-public-state")
    assert allowed.exit_code == 0, allowed.stderr
    files = {f.path for f in api.list_repo_tree("me/open", revision="checkpoint-30")}
    assert "optimizer.safetensors" in files


def test_configuration_file_then_variables_then_flags(run: Path, hub: RunningHub, api: HfApi) -> None:
    (run.parent / "hubsync.toml").write_text('repo = "me/from-file"\ntraining-state = "keep"\ntags = ["cfg"]\n')

    assert push(hub, str(run)).exit_code == 0
    assert "optimizer.safetensors" in {f.path for f in api.list_repo_tree("me/from-file", revision="checkpoint-30")}
    assert {t.name for t in api.list_repo_refs("me/from-file").tags} == {"cfg"}

    assert push(hub, str(run), env={"HUBSYNC_REPO": "me/from-env", "HUBSYNC_TRAINING_STATE": "drop"}).exit_code == 0
    assert "optimizer.safetensors" not in {f.path for f in api.list_repo_tree("me/from-env", revision="checkpoint-30")}

    assert push(hub, str(run), "--repo", "me/from-flag", env={"HUBSYNC_REPO": "me/from-env"}).exit_code == 0
    assert api.repo_exists("me/from-flag")


def test_pyproject_tool_hubsync_and_a_bad_setting(run: Path, hub: RunningHub, api: HfApi) -> None:
    project = run.parent.parent.parent
    (project / ".git").mkdir()  # a training project's work tree: pyproject.toml is looked up to its root
    (project / "pyproject.toml").write_text('[project]\nname = "trainer"\n\n[tool.hubsync]\nrepo = "me/pyproj"\n')
    assert push(hub, str(run)).exit_code == 0
    assert api.repo_exists("me/pyproj")

    (project / "pyproject.toml").write_text('[tool.hubsync]\nrepository = "me/typo"\n')
    result = push(hub, str(run))
    assert result.exit_code == 1
    assert "unknown setting 'repository'" in result.stderr and "pyproject.toml" in result.stderr


def test_missing_repo_everywhere_is_a_usage_error(run: Path, hub: RunningHub) -> None:
    result = push(hub, str(run))
    assert result.exit_code == 2 and "--repo" in result.stderr


def test_busy_hub_answers_are_retried_honouring_retry_after(run: Path, hub: RunningHub, api: HfApi) -> None:
    hub.server.inject_fault("POST", r"/commit/", 503, times=2, retry_after=0)
    hub.server.inject_fault("POST", r"/api/repos/create", 429, times=1, retry_after=0)
    hub.server.inject_fault("GET", r"/refs$", 502, times=1, retry_after=0)

    result = push(hub, str(run), "--repo", "me/tiny")

    assert result.exit_code == 0, result.stderr
    assert branches(api) == {"checkpoint-30"}


def test_a_push_that_finally_fails_says_which_checkpoint_and_a_rerun_completes(
    run: Path, hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(run.parent.parent)
    hub.server.inject_fault("POST", r"/commit/checkpoint-20$", 500, times=5, retry_after=0)

    failed = push(hub, str(run), "--repo", "me/tiny", "--select", "all")

    assert failed.exit_code == 1
    *retries, error = failed.stderr.splitlines()
    assert retries == ["Hub: the Hub answered 500; retrying in 0 s"] * 4  # each wait said, then the error
    assert error.startswith("Error: pushing out/tiny/checkpoint-20 failed (on the Hub: out/tiny/checkpoint-10;")
    heads = {b.name: b.target_commit for b in api.list_repo_refs("me/tiny").branches}
    assert "checkpoint-20" not in heads  # the branch this push made for it is taken away again
    assert "checkpoint-30" not in heads

    again = push(hub, str(run), "--repo", "me/tiny", "--select", "all", "--json")
    assert again.exit_code == 0, again.stderr
    created = [r["created"] for r in json.loads(again.stdout)["results"]]
    assert created == [False, True, True]


def test_output_is_quiet_off_a_terminal(run: Path, hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(run.parent.parent)
    first = push(hub, str(run), "--repo", "me/tiny")
    again = push(hub, str(run), "--repo", "me/tiny")
    assert first.stderr == "" and again.stderr == ""  # no progress bars, no library notices
    assert again.stdout.startswith("Already up to date: out/tiny/checkpoint-30")


def test_select_on_a_missing_folder_says_it_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["push", "runs/run-8", "--select", "all", "--repo", "me/m", "--dry-run"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: runs/run-8 is not a checkpoint folder: no such folder")


@pytest.mark.parametrize(
    ("tag", "reason"),
    [
        ("bad tag", "use letters, digits"),
        ("main", "a branch has"),
        ("checkpoint-30", "a branch has"),
        ("checkpoint-7", "a branch"),
    ],
)
def test_a_tag_that_cannot_be_one_is_named_as_a_tag(checkpoint: Path, tag: str, reason: str) -> None:
    result = CliRunner().invoke(cli, ["push", str(checkpoint), "--repo", "me/m", "--tag", tag, "--dry-run"])
    assert result.exit_code == 2, result.output
    assert f"Error: Invalid value for '--tag': tag {json.dumps(tag)} is not valid: " in result.stderr
    assert reason in result.stderr and "Traceback" not in result.output
