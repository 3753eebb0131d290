"""`hubsync push` end to end: a real Trainer checkpoint, the real CLI, the real client, the local Hub over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import RepositoryNotFoundError

from hubsync.cli import cli
from hubsync.localhub import RunningHub

pytestmark = pytest.mark.xet_and_lfs  # each test runs against a Hub with Xet and one with git-LFS only


def push(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, ["push", *args], env=env, catch_exceptions=False)


def hub_env(hub: RunningHub) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}


def read_text(api: HfApi, path: str, revision: str = "main") -> str:
    return Path(api.hf_hub_download("me/tiny", path, revision=revision)).read_text()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git_sha1_of(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_push_creates_a_private_repo_and_a_branch_holding_the_checkpoint(
    checkpoint: Path, hub: RunningHub, api: HfApi
) -> None:
    result = push(str(checkpoint), "--repo", "me/tiny", env=hub_env(hub))

    assert result.exit_code == 0, result.stderr
    assert "me/tiny @ checkpoint-30" in result.stdout
    head = api.list_repo_refs("me/tiny").branches
    branch = {b.name: b.target_commit for b in head}
    assert set(branch) == {"main", "checkpoint-30"}
    assert branch["checkpoint-30"] in result.stdout
    tree = {f.path: f for f in api.list_repo_tree("me/tiny", revision="checkpoint-30", recursive=True)}
    training_state = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}
    local = {p.name: p for p in checkpoint.iterdir() if p.name not in training_state | {"README.md"}}
    assert set(tree) == set(local) | {".gitattributes", "README.md", "training_loss.svg"}
    for name, path in local.items():
        entry = tree[name]
        assert entry.size == path.stat().st_size
        if entry.lfs is not None:
            assert entry.lfs.sha256 == sha256_of(path)
        else:
            assert entry.blob_id == git_sha1_of(path)
    assert tree["adapter_model.safetensors"].lfs is not None
    assert api.model_info("me/tiny").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.endpoint, token=False).model_info("me/tiny")


def test_commit_message_names_the_checkpoint_step_epoch_and_eval_loss(
    checkpoint: Path, hub: RunningHub, api: HfApi
) -> None:
    assert push(str(checkpoint), "--repo", "me/tiny", env=hub_env(hub)).exit_code == 0

    commit = api.list_repo_commits("me/tiny", revision="checkpoint-30")[0]
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    eval_loss = [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e][-1]
    assert commit.title == f"hubsync: checkpoint-30 (step 30, epoch {state['epoch']:.2f}, eval_loss {eval_loss:.4f})"
    assert "- step: 30" in commit.message
    assert str(checkpoint) not in commit.message  # no absolute local path is published


def test_pushing_an_unchanged_checkpoint_again_makes_no_commit(checkpoint: Path, hub: RunningHub, api: HfApi) -> None:
    first = push(str(checkpoint), "--repo", "me/tiny", "--json", env=hub_env(hub))
    second = push(str(checkpoint), "--repo", "me/tiny", "--json", env=hub_env(hub))

    one, two = json.loads(first.stdout)["results"][0], json.loads(second.stdout)["results"][0]
    assert one["created"] is True and two["created"] is False
    assert one["commit"] == two["commit"]
    assert len(api.list_repo_commits("me/tiny", revision="checkpoint-30")) == 2  # initial commit + one push


def test_training_state_keep_uploads_what_resuming_needs(checkpoint: Path, hub: RunningHub, api: HfApi) -> None:
    result = push(str(checkpoint), "--repo", "me/tiny", "--training-state", "keep", env=hub_env(hub))

    assert result.exit_code == 0, result.stderr
    files = {f.path for f in api.list_repo_tree("me/tiny", revision="checkpoint-30")}
    # in the pickle-free form: tensors as safetensors, structure as JSON (pull rebuilds the .pt files)
    assert {
        "optimizer.safetensors",
        "optimizer.json",
        "scheduler.json",
        "rng_state.json",
        "training_args.json",
    } <= files
    assert not files & {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}


def test_the_card_replaces_the_placeholder_readme(
    checkpoint: Path, hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    from huggingface_hub import ModelCard

    assert push(str(checkpoint), "--repo", "me/tiny", "--license", "apache-2.0", env=hub_env(hub)).exit_code == 0

    path = api.hf_hub_download("me/tiny", "README.md", revision="checkpoint-30", cache_dir=tmp_path / "cache")
    card = ModelCard.load(path)
    assert card.data.base_model == "hubsync/tiny-random-llama"
    assert card.data.license == "apache-2.0"
    assert "More Information Needed" not in card.text
    assert 'revision="checkpoint-30"' in card.text
    assert "![Training and validation loss against step](training_loss.svg)" in card.text


def test_pushing_a_changed_checkpoint_makes_exactly_one_new_commit(
    checkpoint: Path, hub: RunningHub, api: HfApi
) -> None:
    assert push(str(checkpoint), "--repo", "me/tiny", env=hub_env(hub)).exit_code == 0
    (checkpoint / "extra.txt").write_text("a new file\n")

    assert push(str(checkpoint), "--repo", "me/tiny", env=hub_env(hub)).exit_code == 0

    commits = api.list_repo_commits("me/tiny", revision="checkpoint-30")
    assert len(commits) == 3
    files = {f.path for f in api.list_repo_tree("me/tiny", revision="checkpoint-30")}
    assert "extra.txt" in files


def test_revision_option_names_the_branch(checkpoint: Path, hub: RunningHub, api: HfApi) -> None:
    result = push(str(checkpoint), "--repo", "me/tiny", "--revision", "runs/a/step-30", env=hub_env(hub))

    assert result.exit_code == 0, result.stderr
    assert "runs/a/step-30" in {b.name for b in api.list_repo_refs("me/tiny").branches}


def test_endpoint_and_token_options_override_the_environment(checkpoint: Path, hub: RunningHub, api: HfApi) -> None:
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_wrong_token_123"}
    result = push(str(checkpoint), "--repo", "me/tiny", "--endpoint", hub.endpoint, "--token", hub.token, env=env)

    assert result.exit_code == 0, result.stderr
    assert api.repo_exists("me/tiny")


def test_push_works_with_hf_xet_installed_and_nothing_set(checkpoint: Path, hub: RunningHub) -> None:
    """huggingface_hub alone would upload through Xet, which the local Hub does not offer."""
    from huggingface_hub.utils._runtime import is_xet_available

    assert is_xet_available(), "hf_xet is a dependency of huggingface_hub here; this test needs it"
    assert constants.HF_HUB_DISABLE_XET is False

    result = push(str(checkpoint), "--repo", "me/tiny", env=hub_env(hub))

    assert result.exit_code == 0, result.stderr
    assert constants.HF_HUB_DISABLE_XET is False  # put back after the push


def test_dry_run_prints_the_plan_and_touches_nothing(checkpoint: Path, hub: RunningHub, api: HfApi) -> None:
    before = sorted((p.name, p.stat().st_mtime_ns) for p in checkpoint.iterdir())

    result = push(str(checkpoint), "--repo", "me/tiny", "--dry-run", "--json", env=hub_env(hub))

    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)["plans"][0]
    assert plan["repo"] == "me/tiny" and plan["revision"] == "checkpoint-30"
    dropped = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}
    assert set(plan["dropped"]) == dropped
    kept = {p.name for p in checkpoint.iterdir()} - dropped
    assert {f["path"] for f in plan["files"]} == kept | {"training_loss.svg"}
    assert [f["path"] for f in plan["files"] if f.get("generated")] == ["README.md", "training_loss.svg"]
    assert plan["bytes"] == sum(f["size"] for f in plan["files"])
    assert not api.repo_exists("me/tiny")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in checkpoint.iterdir()) == before


def test_the_checkpoint_folder_is_not_modified(checkpoint: Path, hub: RunningHub) -> None:
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in checkpoint.iterdir()}

    assert push(str(checkpoint), "--repo", "me/tiny", env=hub_env(hub)).exit_code == 0

    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in checkpoint.iterdir()} == before


# -- bad input: one line on stderr naming the problem and the next step, exit 1 (2 for usage), no traceback ----------


def assert_one_clear_line(result, *fragments: str, exit_code: int = 1) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_folder_that_is_not_a_checkpoint(tmp_path: Path, hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")

    result = push("photos", "--repo", "me/tiny", env=hub_env(hub))

    assert_one_clear_line(
        result, "photos is not a checkpoint folder", "Pass a checkpoint-N folder that the Trainer wrote"
    )


def test_a_missing_folder(tmp_path: Path, hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_one_clear_line(push("nowhere", "--repo", "me/tiny", env=hub_env(hub)), "nowhere", "no such folder")


def test_an_absolute_path_outside_the_working_directory_is_not_printed(
    checkpoint: Path, hub: RunningHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    (checkpoint / "trainer_state.json").write_text("{not json")

    result = push(str(checkpoint), "--repo", "me/tiny", env=hub_env(hub))

    assert_one_clear_line(result, "trainer_state.json", "not valid JSON")
    assert str(tmp_path) not in result.stderr


def test_missing_repo_option_is_a_usage_error(checkpoint: Path) -> None:
    result = push(str(checkpoint))
    assert result.exit_code == 2
    assert "--repo" in result.stderr and "Traceback" not in result.stderr


def test_an_invalid_repo_id(checkpoint: Path, hub: RunningHub) -> None:
    result = push(str(checkpoint), "--repo", "tiny", env=hub_env(hub))
    assert_one_clear_line(result, "'--repo'", '"tiny"', "NAMESPACE/NAME", exit_code=2)


def test_an_unreachable_endpoint(checkpoint: Path) -> None:
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_TOKEN": "hf_some_token_1234"}

    result = push(str(checkpoint), "--repo", "me/tiny", env=env)

    assert_one_clear_line(result, f"cannot reach the Hub at http://127.0.0.1:{port}", "--endpoint or HF_ENDPOINT")


def test_a_wrong_token_is_named_but_never_printed(checkpoint: Path, hub: RunningHub) -> None:
    token = "hf_Recognisable0Wrong0Token"
    result = push(str(checkpoint), "--repo", "me/tiny", env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": token})

    assert_one_clear_line(result, "rejected the token", "HF_TOKEN")
    assert token not in result.stdout + result.stderr


def test_no_token_at_all(checkpoint: Path, hub: RunningHub) -> None:
    result = push(str(checkpoint), "--repo", "me/tiny", env={"HF_ENDPOINT": hub.endpoint})
    assert_one_clear_line(result, "no Hugging Face token", "HF_TOKEN")


def test_another_users_namespace(checkpoint: Path, hub: RunningHub) -> None:
    other = hub.server.store.ensure_user("other")
    result = push(str(checkpoint), "--repo", "me/tiny", env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": other})
    assert_one_clear_line(result, "the token may not write to me/tiny", "write access")


def test_hubsync_debug_shows_the_traceback(tmp_path: Path, hub: RunningHub) -> None:
    from hubsync.core.errors import NotACheckpointError

    with pytest.raises(NotACheckpointError):
        push(str(tmp_path / "nowhere"), "--repo", "me/tiny", env={**hub_env(hub), "HUBSYNC_DEBUG": "1"})


@pytest.mark.parametrize("off", ["", "0", "false", "No", " off "])
def test_hubsync_debug_set_false_shows_one_line(tmp_path: Path, hub: RunningHub, off: str) -> None:
    """HUBSYNC_DEBUG=0 reads as every false boolean variable does: one line, no traceback."""
    result = push(str(tmp_path / "nowhere"), "--repo", "me/tiny", env={**hub_env(hub), "HUBSYNC_DEBUG": off})
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert_one_clear_line(result, "nowhere")


def test_pickled_adapter_weights_are_pushed_as_verified_safetensors(
    bin_run: Path, hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    source = bin_run / "checkpoint-10"
    result = push(str(source), "--repo", "me/tiny", "--json", env=hub_env(hub))

    assert result.exit_code == 0, result.stderr
    files = {f["path"]: f for f in json.loads(result.stdout)["plans"][0]["files"]}
    assert files["adapter_model.safetensors"]["converted_from"] == "adapter_model.bin"
    tree = {f.path for f in api.list_repo_tree("me/tiny", revision="checkpoint-10")}
    assert "adapter_model.safetensors" in tree and "adapter_model.bin" not in tree
    pushed = api.hf_hub_download(
        "me/tiny", "adapter_model.safetensors", revision="checkpoint-10", cache_dir=tmp_path / "cache"
    )
    original = torch.load(source / "adapter_model.bin", weights_only=True)
    converted = load_file(pushed)
    assert set(converted) == set(original)
    assert all(torch.equal(converted[k], v) for k, v in original.items())


def test_main_becomes_an_index_of_the_pushed_revisions(
    tiny_run: Path, hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    from huggingface_hub import ModelCard

    for step, state in ((10, "drop"), (20, "keep")):
        result = push(
            str(tiny_run / f"checkpoint-{step}"), "--repo", "me/tiny", "--training-state", state, env=hub_env(hub)
        )
        assert result.exit_code == 0, result.stderr

    index = json.loads(read_text(api, ".hubsync/index.json"))
    entries = {e["revision"]: e for e in index["revisions"]}
    assert list(entries) == ["checkpoint-10", "checkpoint-20"]
    assert entries["checkpoint-10"]["resumable"] is False and entries["checkpoint-20"]["resumable"] is True
    heads = {b.name: b.target_commit for b in api.list_repo_refs("me/tiny").branches}
    assert entries["checkpoint-20"]["commit"] == heads["checkpoint-20"]
    assert set(entries["checkpoint-20"]["metrics"]) == {"train_loss", "eval_loss"}
    card = ModelCard(read_text(api, "README.md"))
    assert "| eval_loss | train_loss |" in card.text and "| loss |" not in card.text
    assert card.data.base_model == "hubsync/tiny-random-llama"
    assert f"[checkpoint-20]({hub.endpoint}/me/tiny/tree/checkpoint-20) | 20 |" in card.text
    # A checkpoint revision holds its own files only, not main's index.
    files = {f.path for f in api.list_repo_tree("me/tiny", revision="checkpoint-20", recursive=True)}
    assert ".hubsync/index.json" not in files

    again = push(str(tiny_run / "checkpoint-20"), "--repo", "me/tiny", "--training-state", "keep", env=hub_env(hub))
    assert again.exit_code == 0
    assert {b.name: b.target_commit for b in api.list_repo_refs("me/tiny").branches} == heads  # nothing new


def test_concurrent_pushes_to_one_branch_both_land(tiny_run: Path, hub: RunningHub, api: HfApi) -> None:
    """Two processes push different checkpoints to the same branch at once: each lands as its own commit."""
    import subprocess
    import sys

    env = {**os.environ, **hub_env(hub)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hubsync",
                "push",
                str(tiny_run / f"checkpoint-{step}"),
                "--repo",
                "me/tiny",
                "--revision",
                "shared",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for step in (10, 20)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    titles = [c.title for c in api.list_repo_commits("me/tiny", revision="shared")]
    assert sorted(t.split(" (")[0] for t in titles[:2]) == ["hubsync: checkpoint-10", "hubsync: checkpoint-20"]
    index = json.loads(read_text(api, ".hubsync/index.json"))
    assert [e["revision"] for e in index["revisions"]] == ["shared"]


def test_a_commit_that_lands_between_reading_the_head_and_committing_is_kept(
    checkpoint: Path, hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 412 path, made certain: another writer commits right after hubsync read the branch head."""
    from huggingface_hub import CommitOperationAdd

    from hubsync.core.checkpoint import read_checkpoint
    from hubsync.core.plan import PushOptions, plan_push
    from hubsync.hub.client import HubClient
    from hubsync.hub.push import execute_push

    class RacingClient(HubClient):
        raced = False

        def commit_files(self, repo_id, branch, files, message, description="", parent_commit=None, **kwargs):  # type: ignore[no-untyped-def]
            if branch == "checkpoint-30" and not self.raced:
                self.raced = True
                with monkeypatch.context() as patch:  # the other writer is a plain huggingface_hub user
                    patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
                    api.create_commit(
                        repo_id,
                        [CommitOperationAdd("other.txt", b"from another writer")],
                        commit_message="another writer",
                        revision=branch,
                    )
            return super().commit_files(repo_id, branch, files, message, description, parent_commit, **kwargs)

    ckpt = read_checkpoint(checkpoint)
    client = RacingClient(hub.endpoint, hub.token)
    result = execute_push(plan_push(ckpt, PushOptions("me/tiny")), ckpt, client)

    assert client.raced
    commits = api.list_repo_commits("me/tiny", revision="checkpoint-30")
    assert [c.title.split(" (")[0] for c in commits[:2]] == ["hubsync: checkpoint-30", "another writer"]
    assert result.commit == commits[0].commit_id and result.created
    files = {f.path for f in api.list_repo_tree("me/tiny", revision="checkpoint-30")}
    assert "adapter_model.safetensors" in files
    assert "other.txt" not in files  # the branch mirrors the checkpoint; the other commit stays in its history


def test_a_reused_branch_holds_only_the_newest_checkpoints_files(tiny_run: Path, hub: RunningHub, api: HfApi) -> None:
    first = push(
        str(tiny_run / "checkpoint-10"),
        "--repo",
        "me/tiny",
        "--revision",
        "latest",
        "--training-state",
        "keep",
        env=hub_env(hub),
    )
    assert first.exit_code == 0, first.stderr
    second = push(str(tiny_run / "checkpoint-30"), "--repo", "me/tiny", "--revision", "latest", env=hub_env(hub))
    assert second.exit_code == 0, second.stderr

    files = {f.path for f in api.list_repo_tree("me/tiny", revision="latest")}
    assert not files & {
        "optimizer.pt",
        "optimizer.json",
        "optimizer.safetensors",
        "rng_state.json",
        "training_args.json",
    }
    remote_state = json.loads(Path(api.hf_hub_download("me/tiny", "trainer_state.json", revision="latest")).read_text())
    assert remote_state["global_step"] == 30


def test_main_is_not_a_checkpoint_revision(checkpoint: Path, hub: RunningHub) -> None:
    result = push(str(checkpoint), "--repo", "me/tiny", "--revision", "main", env=hub_env(hub))
    assert result.exit_code == 2 and "'--revision'" in result.stderr and "main holds the index" in result.stderr


def test_re_pushing_an_unchanged_checkpoint_uploads_nothing(checkpoint: Path, hub: RunningHub) -> None:
    assert push(str(checkpoint), "--repo", "me/tiny", env=hub_env(hub)).exit_code == 0
    before = hub.server.uploaded_bytes
    assert before > 0

    again = push(str(checkpoint), "--repo", "me/tiny", env=hub_env(hub))

    assert again.exit_code == 0 and again.stdout.startswith("Already up to date")
    assert hub.server.uploaded_bytes == before


def test_a_push_that_fails_before_its_commit_leaves_no_empty_branch(
    tiny_run: Path, hub: RunningHub, api: HfApi
) -> None:
    """The branch is made before the commit; when the commit fails, the empty branch is taken away again (it
    would pass for a checkpoint revision), while a branch that already held a checkpoint keeps it."""
    from hubsync.core.checkpoint import read_checkpoint
    from hubsync.core.errors import HubError
    from hubsync.core.plan import PushOptions, plan_push
    from hubsync.hub.client import HubClient
    from hubsync.hub.push import execute_push

    quick = (0.01, 0.01, 0.01, 0.01)
    repo = f"{hub.user}/model"
    checkpoints = [read_checkpoint(tiny_run / f"checkpoint-{step}") for step in (10, 20)]
    execute_push(plan_push(checkpoints[0], PushOptions(repo)), checkpoints[0], HubClient(hub.endpoint, hub.token))
    before = {b.name: b.target_commit for b in api.list_repo_refs(repo).branches}
    for checkpoint, revision in [(checkpoints[1], "checkpoint-20"), (checkpoints[1], "checkpoint-10")]:
        hub.server.inject_fault("POST", r"/commit/checkpoint-", 503, times=5)
        with pytest.raises(HubError):
            plan = plan_push(checkpoint, PushOptions(repo, revision=revision))
            execute_push(plan, checkpoint, HubClient(hub.endpoint, hub.token, quick))
        hub.server.clear_faults()
        assert {b.name: b.target_commit for b in api.list_repo_refs(repo).branches} == before


def test_ls_and_pull_pass_over_an_empty_checkpoint_branch(
    tiny_run: Path, hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    """A push killed between making its branch and committing leaves the branch at the first commit."""
    repo, env = f"{hub.user}/model", {"HF_TOKEN": hub.token, "HF_ENDPOINT": hub.endpoint}
    pushed = CliRunner(env=env).invoke(cli, ["push", str(tiny_run / "checkpoint-10"), "--repo", repo])
    assert pushed.exit_code == 0, pushed.output
    root = api.list_repo_commits(repo)[-1].commit_id
    api.create_branch(repo, branch="checkpoint-99", revision=root)
    listed = CliRunner(env=env).invoke(cli, ["ls", repo, "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["revision"] for r in json.loads(listed.stdout)] == ["checkpoint-10"]
    pulled = CliRunner(env=env).invoke(cli, ["pull", repo, "--to", str(tmp_path / "pulled"), "--json"])
    assert pulled.exit_code == 0, pulled.output
    assert json.loads(pulled.stdout)["revision"] == "checkpoint-10"


def test_hidden_files_are_never_uploaded(checkpoint: Path, hub: RunningHub, api: HfApi) -> None:
    """A .env with a token, .git, editor and OS files: not the Trainer's, never published."""
    (checkpoint / ".env").write_text("HF_TOKEN=hf_secretCANARY\n")
    (checkpoint / ".DS_Store").write_bytes(b"\0\1")
    (checkpoint / ".git").mkdir()
    (checkpoint / ".git" / "config").write_text("[core]\n")
    (checkpoint / "notes.md").write_text("mine\n")
    env = {"HF_TOKEN": hub.token, "HF_ENDPOINT": hub.endpoint}
    dry = CliRunner(env=env).invoke(cli, ["push", str(checkpoint), "--repo", f"{hub.user}/m", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert ".env (hidden: left out)" in dry.stdout and ".git/ (hidden: left out)" in dry.stdout
    pushed = CliRunner(env=env).invoke(cli, ["push", str(checkpoint), "--repo", f"{hub.user}/m"])
    assert pushed.exit_code == 0, pushed.output
    files = set(api.list_repo_files(f"{hub.user}/m", revision="checkpoint-30"))
    assert "notes.md" in files
    assert not {f for f in files if f.startswith(".") and f != ".gitattributes"}
