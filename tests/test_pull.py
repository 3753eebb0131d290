"""`hubsync pull` and `hubsync ls`: a revision comes back whole and verified, and training resumes from it."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from hubsync.cli import cli
from hubsync.core.errors import UnsafeRemotePathError
from hubsync.core.pull import RemoteFile, plan_pull
from hubsync.localhub import RunningHub
from hubsync.localhub.xet_storage import XORB_NAME

pytestmark = pytest.mark.xet_and_lfs  # each test runs against a Hub with Xet and one with git-LFS only


def run_cli(hub: RunningHub, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(
        cli, list(args), catch_exceptions=False, env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    )


@pytest.fixture
def pushed(tiny_run: Path, hub: RunningHub) -> Path:
    """The tiny run's checkpoints on the local Hub: 10 without training state, 20 and 30 with it."""
    assert run_cli(hub, "push", str(tiny_run / "checkpoint-10"), "--repo", "me/tiny").exit_code == 0
    for step in (20, 30):  # 20 in the pickle-free format, 30 with its pickles as they are
        formats = ["--training-state-format", "pickle"] if step == 30 else []
        result = run_cli(
            hub, "push", str(tiny_run / f"checkpoint-{step}"), "--repo", "me/tiny", "--training-state", "keep", *formats
        )
        assert result.exit_code == 0, result.stderr
    return tiny_run


def test_pull_restores_the_newest_checkpoint_byte_for_byte(
    pushed: Path, hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    result = run_cli(hub, "pull", "me/tiny")

    assert result.exit_code == 0, result.stderr
    target = tmp_path / "out" / "tiny" / "checkpoint-30"
    assert "-> out/tiny/checkpoint-30" in result.stdout and "resume_from_checkpoint" in result.stdout
    local = pushed / "checkpoint-30"
    for name in (
        "adapter_model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        "training_args.bin",
        "adapter_config.json",
    ):
        assert (target / name).read_bytes() == (local / name).read_bytes(), name
    assert not (target / ".cache").exists() and not (target / ".gitattributes").exists()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".hubsync-tmp")]


def test_pull_a_revision_without_training_state_says_so(pushed: Path, hub: RunningHub, tmp_path: Path) -> None:
    result = run_cli(hub, "pull", "me/tiny", "--revision", "checkpoint-10", "--to", str(tmp_path / "x"), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["resumable"] is False and data["path"].endswith("x/checkpoint-10")
    assert not (tmp_path / "x" / "checkpoint-10" / "optimizer.pt").exists()

    text = run_cli(hub, "pull", "me/tiny", "--revision", "checkpoint-10", "--to", str(tmp_path / "y"))
    assert "not resumable: it has no optimizer state or scheduler state" in text.stdout


def test_pull_by_tag_and_by_commit(pushed: Path, hub: RunningHub, api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    commit = {b.name: b.target_commit for b in api.list_repo_refs("me/tiny").branches}["checkpoint-20"]
    api.create_tag("me/tiny", tag="good", revision=commit)
    for revision in ("good", commit):
        result = run_cli(hub, "pull", "me/tiny", "--revision", revision, "--to", str(tmp_path / revision), "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["commit"] == commit
        assert (tmp_path / revision / "checkpoint-20" / "optimizer.pt").exists()


def test_an_existing_checkpoint_folder_is_kept_unless_forced(pushed: Path, hub: RunningHub, tmp_path: Path) -> None:
    target = tmp_path / "out" / "checkpoint-30"
    target.mkdir(parents=True)
    (target / "mine.txt").write_text("precious")

    refused = run_cli(hub, "pull", "me/tiny", "--to", str(tmp_path / "out"))
    assert refused.exit_code == 1 and "--force" in refused.stderr and "--to" in refused.stderr
    assert (target / "mine.txt").read_text() == "precious"

    forced = run_cli(hub, "pull", "me/tiny", "--to", str(tmp_path / "out"), "--force")
    assert forced.exit_code == 0, forced.stderr
    assert not (target / "mine.txt").exists() and (target / "optimizer.pt").exists()


def test_a_corrupted_download_fails_and_places_nothing(pushed: Path, hub: RunningHub, api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    info = api.get_paths_info("me/tiny", ["optimizer.pt"], revision="checkpoint-30")[0]
    if info.xet_hash is None:  # a git-LFS file: its blob
        stored = [hub.server.store.blob_path(info.lfs.sha256)]
    else:  # a Xet file: the chunk data (xorbs) of the repository's Xet storage
        assert hub.server.xet is not None
        xorbs = hub.server.xet.folder("model", "me/tiny") / "xet" / "xorbs" / "xorbs"
        stored = [p for p in xorbs.iterdir() if XORB_NAME.fullmatch(p.name)]
    for path in stored:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, other bytes: only a hash check sees it
        path.write_bytes(bytes(data))

    result = run_cli(hub, "pull", "me/tiny", "--to", str(tmp_path / "out"))

    assert result.exit_code == 1
    if info.xet_hash is None:
        assert "optimizer.pt does not match the sha256 the Hub lists" in result.stderr
    else:  # whichever file meets the damage first: a hash that does not match, or chunks Xet cannot decode
        assert "does not match the sha256 the Hub lists" in result.stderr or "Xet storage" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_interrupted_pull_leaves_nothing(
    pushed: Path, hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hubsync.hub.client import HubClient

    real = HubClient.download
    calls = []

    def interrupted(self, repo_id, commit, remote, dest, transfers):  # type: ignore[no-untyped-def]
        calls.append(remote.path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, repo_id, commit, remote, dest, transfers)

    monkeypatch.setattr(HubClient, "download", interrupted)
    result = CliRunner().invoke(
        cli,
        ["pull", "me/tiny", "--to", str(tmp_path / "out")],
        env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token},
    )
    assert result.exit_code == 130
    assert not (tmp_path / "out").exists()  # the folder pull made for it is gone too

    monkeypatch.setattr(HubClient, "download", real)
    assert run_cli(hub, "pull", "me/tiny", "--to", str(tmp_path / "out")).exit_code == 0


@pytest.mark.parametrize("path", ["../evil.py", "/etc/passwd", "a/../../b", "C:/x", "a\\..\\b", "./x"])
def test_remote_paths_that_leave_the_folder_are_refused(path: str, tmp_path: Path) -> None:
    files = [RemoteFile("adapter_config.json", 2, None, "0" * 40), RemoteFile(path, 1, None, "0" * 40)]
    with pytest.raises(UnsafeRemotePathError):
        plan_pull("me/x", "main", "0" * 40, files, tmp_path, 1)


def test_pulled_pickles_are_never_loaded(tiny_run: Path, hub: RunningHub, tmp_path: Path) -> None:
    """hubsync only hashes what it pulls: a hostile optimizer.pt on the Hub does not run during a pull."""
    marker = tmp_path / "MARKER"

    class Hostile:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    ckpt = Path(shutil.copytree(tiny_run / "checkpoint-30", tmp_path / "run" / "checkpoint-30"))
    torch.save({"state": Hostile()}, ckpt / "optimizer.pt")
    refused = run_cli(hub, "push", str(ckpt), "--repo", "me/evil", "--training-state", "keep")
    assert refused.exit_code == 1 and "optimizer.pt" in refused.stderr and "could run code" in refused.stderr
    assert not marker.exists()  # the pickle-free format reads it without running it, and refuses it
    pushed = run_cli(
        hub, "push", str(ckpt), "--repo", "me/evil", "--training-state", "keep", "--training-state-format", "pickle"
    )
    assert pushed.exit_code == 0, pushed.stderr

    result = run_cli(hub, "pull", "me/evil", "--to", str(tmp_path / "pulled"))

    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "pulled" / "checkpoint-30" / "optimizer.pt").exists()
    assert not marker.exists()


def test_ls_lists_checkpoint_revisions(pushed: Path, hub: RunningHub) -> None:
    result = run_cli(hub, "ls", "me/tiny", "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["revision"], r["step"], r["resumable"]) for r in rows] == [
        ("checkpoint-10", 10, False),
        ("checkpoint-20", 20, True),
        ("checkpoint-30", 30, True),
    ]
    assert all(len(r["commit"]) == 40 and r["date"] for r in rows)
    # One metric, one name: the training loss and the eval loss are never both called `loss`.
    assert all(set(r["metrics"]) == {"train_loss", "eval_loss"} for r in rows)

    text = run_cli(hub, "ls", "me/tiny").stdout.splitlines()
    assert text[0].split() == [
        *["revision", "step", "epoch", "eval_loss", "train_loss", "resumable"],
        *["signed", "size", "tags", "commit", "date", "notes"],
    ]
    assert text[1].split()[:2] == ["checkpoint-10", "10"] and "no" in text[1].split()
    assert all(r["tags"] == [] and r["by_hubsync"] and not r["released"] and r["size"] > 0 for r in rows)


def test_pull_from_a_repository_without_checkpoints(hub: RunningHub, api) -> None:  # type: ignore[no-untyped-def]
    api.create_repo("me/empty")
    result = run_cli(hub, "pull", "me/empty")
    assert result.exit_code == 1 and "no checkpoint revision" in result.stderr and "hubsync ls" in result.stderr


def test_training_resumes_from_a_pulled_checkpoint_bit_for_bit(hub: RunningHub, tmp_path: Path) -> None:
    """Train 30 steps saving at 20; push checkpoint-20 with its state; pull it into a fresh folder; resume to
    step 30. The adapter equals, bit for bit, that of a resume from the local checkpoint-20."""
    from hubsync.tinyrun import train_tiny_lora

    run = train_tiny_lora(tmp_path / "run", max_steps=30, save_steps=20, eval_steps=None)
    local = run / "checkpoint-20"
    pushed = run_cli(hub, "push", str(local), "--repo", "me/resume", "--training-state", "keep")
    assert pushed.exit_code == 0, pushed.stderr
    pulled = run_cli(hub, "pull", "me/resume", "--revision", "checkpoint-20", "--to", str(tmp_path / "fresh"))
    assert pulled.exit_code == 0, pulled.stderr

    from_hub = train_tiny_lora(
        tmp_path / "resume-hub",
        max_steps=30,
        save_steps=20,
        eval_steps=None,
        resume_from_checkpoint=str(tmp_path / "fresh" / "checkpoint-20"),
    )
    from_disk = train_tiny_lora(
        tmp_path / "resume-disk", max_steps=30, save_steps=20, eval_steps=None, resume_from_checkpoint=str(local)
    )

    a = load_file(from_hub / "checkpoint-30" / "adapter_model.safetensors")
    b = load_file(from_disk / "checkpoint-30" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name
    first = load_file(local / "adapter_model.safetensors")
    assert any(not torch.equal(a[n], first[n]) for n in a)  # training did move the adapter on


def test_pickle_free_state_is_rebuilt_on_pull(pushed: Path, hub: RunningHub, api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    on_hub = {f.path for f in api.list_repo_tree("me/tiny", revision="checkpoint-20")}
    assert {
        "optimizer.json",
        "optimizer.safetensors",
        "scheduler.json",
        "rng_state.json",
        "training_args.json",
    } <= on_hub
    assert not on_hub & {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}  # no pickle on the Hub
    args = json.loads(Path(api.hf_hub_download("me/tiny", "training_args.json", revision="checkpoint-20")).read_text())
    assert args["learning_rate"] == 0.001 and "output_dir" not in args and "hub_token" not in args

    result = run_cli(hub, "pull", "me/tiny", "--revision", "checkpoint-20", "--to", str(tmp_path), "--json")

    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["resumable"] is True
    target = tmp_path / "checkpoint-20"
    names = {p.name for p in target.iterdir()}
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.json"} <= names
    assert not names & {"optimizer.json", "optimizer.safetensors", "rng_state.json"}
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        original = torch.load(pushed / "checkpoint-20" / name, weights_only=False)
        rebuilt = torch.load(target / name, weights_only=False)
        assert str(rebuilt) == str(original), name  # same structure, keys, order and values


def test_pickles_go_only_into_private_repositories(pushed: Path, hub: RunningHub) -> None:
    result = run_cli(
        hub,
        "push",
        str(pushed / "checkpoint-30"),
        "--repo",
        "me/open",
        "--public",
        "--training-state",
        "keep",
        "--training-state-format",
        "pickle",
        "--allow-public-state",
    )
    assert result.exit_code == 1 and "only into private repositories" in result.stderr


def test_pulling_main_is_refused_and_points_at_ls(pushed: Path, hub: RunningHub, api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for revision in ("main", "refs/heads/main"):
        result = run_cli(hub, "pull", "me/tiny", "--revision", revision, "--to", str(tmp_path / "out"))
        assert result.exit_code == 1 and result.stdout == ""
        assert f"me/tiny @ {revision} is not a checkpoint revision: main holds the index" in result.stderr
        assert "`hubsync ls me/tiny`" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_pulling_a_revision_without_weights_is_refused(
    pushed: Path, hub: RunningHub, api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # the local Hub has no Xet
    api.create_branch("me/tiny", branch="notes")
    api.upload_file(path_or_fileobj=b"just notes\n", path_in_repo="notes.txt", repo_id="me/tiny", revision="notes")
    main = {b.name: b.target_commit for b in api.list_repo_refs("me/tiny").branches}["main"]
    for revision in ("notes", main[:12]):  # main by its commit id: the index, not a checkpoint
        result = run_cli(hub, "pull", "me/tiny", "--revision", revision, "--to", str(tmp_path / "out"))
        assert result.exit_code == 1
        assert f"me/tiny @ {revision} is not a checkpoint revision: it holds no model weights" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("step", [10, 20, 30])  # no training state; pickle-free state rebuilt; pickles
def test_pulling_again_into_the_same_folder_changes_nothing(
    step: int, pushed: Path, hub: RunningHub, tmp_path: Path
) -> None:
    args = ("pull", "me/tiny", "--revision", f"checkpoint-{step}", "--to", str(tmp_path / "out"))
    assert run_cli(hub, *args).exit_code == 0
    target = tmp_path / "out" / f"checkpoint-{step}"
    before = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}

    again = run_cli(hub, *args)

    assert again.exit_code == 0, again.stderr
    assert again.stdout.startswith(f"Already there: me/tiny @ checkpoint-{step} (")
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == before
    data = json.loads(run_cli(hub, *args, "--json").stdout)
    assert data["already_there"] is True and data["path"].endswith(f"out/checkpoint-{step}")

    (target / "extra.txt").write_text("mine")  # a file more: not what the revision holds
    assert run_cli(hub, *args).exit_code == 1
    (target / "extra.txt").unlink()
    state = target / "trainer_state.json"
    state.write_bytes(state.read_bytes().replace(b'"global_step"', b'"global_step" '))  # other bytes
    refused = run_cli(hub, *args)
    assert refused.exit_code == 1 and "--force" in refused.stderr
    assert run_cli(hub, *args, "--force").exit_code == 0
    assert run_cli(hub, *args).stdout.startswith("Already there")


def test_a_changed_rebuilt_state_file_is_not_already_there(pushed: Path, hub: RunningHub, tmp_path: Path) -> None:
    args = ("pull", "me/tiny", "--revision", "checkpoint-20", "--to", str(tmp_path / "out"))
    assert run_cli(hub, *args).exit_code == 0
    scheduler = tmp_path / "out" / "checkpoint-20" / "scheduler.pt"
    state = torch.load(scheduler, weights_only=True)
    state["last_epoch"] += 1
    torch.save(state, scheduler)

    assert run_cli(hub, *args).exit_code == 1


def test_a_commit_id_as_ls_prints_it_pulls(pushed: Path, hub: RunningHub, api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    row = run_cli(hub, "ls", "me/tiny").stdout.splitlines()[2].split()
    assert row[0] == "checkpoint-20"
    short = next(cell for cell in row if len(cell) == 12 and all(c in "0123456789abcdef" for c in cell))

    result = run_cli(hub, "pull", "me/tiny", "--revision", short, "--to", str(tmp_path / "out"), "--json")

    assert result.exit_code == 0, result.stderr
    commit = {b.name: b.target_commit for b in api.list_repo_refs("me/tiny").branches}["checkpoint-20"]
    assert json.loads(result.stdout)["commit"] == commit
    assert (tmp_path / "out" / "checkpoint-20" / "optimizer.pt").exists()


def test_a_pull_downloads_as_huggingface_hub_does_through_xet_when_the_hub_keeps_the_file_there(
    pushed: Path,
    hub: RunningHub,
    api,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    """With Xet, hf_xet fetches the chunks from the Xet storage: the Hub's plain downloads of those files may all
    be refused and the pull still completes; without (a Hub with git-LFS only, or HF_HUB_DISABLE_XET), every
    file comes over HTTP. Both give the same files."""
    import huggingface_hub.constants

    files = [f for f in api.list_repo_tree("me/tiny", revision="checkpoint-20", recursive=True) if f.lfs]
    assert files
    xet_files = [f for f in files if getattr(f, "xet_hash", None)]
    assert bool(xet_files) == (hub.server.xet is not None)
    for f in xet_files:  # hf_xet never asks for them here
        hub.server.inject_fault("GET", rf"/resolve/[0-9a-f]{{40}}/{re.escape(f.path)}$", 403, times=99)
    assert run_cli(hub, "pull", "me/tiny", "--revision", "checkpoint-20", "--to", str(tmp_path / "a")).exit_code == 0
    hub.server.clear_faults()

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    for f in xet_files:  # now they come over HTTP: refused, the pull fails
        hub.server.inject_fault("GET", rf"/resolve/[0-9a-f]{{40}}/{re.escape(f.path)}$", 403, times=99)
    refused = run_cli(hub, "pull", "me/tiny", "--revision", "checkpoint-20", "--to", str(tmp_path / "r"))
    assert refused.exit_code == (1 if xet_files else 0)
    hub.server.clear_faults()
    assert run_cli(hub, "pull", "me/tiny", "--revision", "checkpoint-20", "--to", str(tmp_path / "b")).exit_code == 0
    pulled = [
        sorted((p.relative_to(d), p.read_bytes()) for p in d.rglob("*") if p.is_file())
        for d in (tmp_path / "a", tmp_path / "b")
    ]
    assert pulled[0] == pulled[1] and len(pulled[0]) > len(files)


@pytest.mark.parametrize(
    ("cas_url", "endpoint", "allowed"),
    [
        ("https://cas-server.xethub.hf.co", "https://huggingface.co", True),
        ("http://cas.internal:8080", "http://hub.internal", True),
        ("http://cas.example", "https://huggingface.co", False),  # a Hub on https never sends hf_xet to plain http
        ("local:///srv/hub/xet", "http://127.0.0.1:8000", True),  # the local Hub, on this machine
        ("local:///home/someone", "https://huggingface.co", False),  # a remote Hub may not name this machine's disk
        ("local:///srv/x", "http://hub.example", False),
        ("local://relative/x", "http://127.0.0.1:8000", False),
        ("file:///etc", "http://127.0.0.1:8000", False),
        ("https://", "https://huggingface.co", False),
    ],
)
def test_a_hub_may_send_hf_xet_only_to_storage_it_could_own(cas_url: str, endpoint: str, allowed: bool) -> None:
    from hubsync.hub.client import _storage_allowed

    assert _storage_allowed(cas_url, endpoint) is allowed
