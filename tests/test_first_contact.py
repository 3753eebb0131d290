"""What a user meets first (issue 14, item 8): a pipe closed early, an unreachable Hub, what --dry-run says."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from hubsync.cli import cli
from hubsync.localhub import RunningHub


def hubsync_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "hubsync", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **(env or {})},
    )


@pytest.mark.parametrize("extra", [(), ("--json",)])
def test_a_reader_that_leaves_ends_the_command_quietly(checkpoint: Path, extra: tuple[str, ...]) -> None:
    """`hubsync push ... --dry-run | head -1`: the reader is gone before hubsync writes; no `Error: Broken pipe`."""
    process = hubsync_process("push", str(checkpoint), "--repo", "me/tiny", "--dry-run", *extra)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader of a real pipe leaves
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 141  # 128 + SIGPIPE, as a shell reports for git or cat
    assert stderr == b""


def test_head_dash_1_of_a_dry_run_through_a_shell(checkpoint: Path) -> None:
    """The issue's own command line, in bash: the first line, and the status of hubsync on its own."""
    command = (
        f"{sys.executable} -m hubsync push {checkpoint} --repo me/tiny --dry-run | head -1; echo ${{PIPESTATUS[0]}}"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=60, check=False)
    first, status = done.stdout.splitlines()
    assert first.startswith("Plan (dry run): ") and status in ("0", "141")  # 0 when all of it fit in the pipe
    assert done.stderr == ""


def free_port() -> int:
    """A loopback port that nobody listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", [["ls", "me/tiny"], ["pull", "me/tiny", "--to", "out"]])
def test_an_unreachable_hub_is_reported_at_once(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    endpoint = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = CliRunner().invoke(cli, [*command, "--endpoint", endpoint], env={"HF_TOKEN": "hf_" + "x" * 20})
    took = time.monotonic() - started
    assert took < 5, f"took {took:.1f} s"
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()  # refused: not retried, so no wait to announce
    assert line.startswith(f"Error: cannot reach the Hub at {endpoint} (ConnectError).")


def test_a_push_to_an_unreachable_hub_is_reported_at_once(checkpoint: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = CliRunner().invoke(
        cli, ["push", str(checkpoint), "--repo", "me/tiny", "--endpoint", endpoint], env={"HF_TOKEN": "hf_" + "x" * 20}
    )
    assert time.monotonic() - started < 5
    assert result.exit_code == 1 and "cannot reach the Hub" in result.stderr


def test_a_busy_hub_is_retried_with_a_visible_line_for_each_wait(hub: RunningHub, api) -> None:  # type: ignore[no-untyped-def]
    api.create_repo("me/busy")
    fault = hub.server.inject_fault("GET", r"/refs$", 503, times=2, retry_after=0.2)
    result = CliRunner().invoke(cli, ["ls", "me/busy"], env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token})
    assert result.exit_code == 0, result.stderr
    assert fault.times == 0
    assert result.stderr.splitlines() == ["Hub: the Hub answered 503; retrying in 0.2 s"] * 2
    assert result.stdout == "me/busy has no checkpoint revisions yet.\n"


# -- a pickle beside its safetensors file ------------------------------------------------------------------------


def both_formats(folder: Path, pickled: str, safetensors: str, *, same: bool) -> Path:
    """Write `pickled` beside the checkpoint's `safetensors` with torch.save, as an older library did: the same
    tensors, or the same names with one value changed (a stale file from another step)."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(folder / safetensors)
    if not same:
        name = sorted(tensors)[0]
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] += 1.0
    torch.save(tensors, folder / pickled)
    return folder


def hub_env(hub: RunningHub) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}


@pytest.fixture
def full_checkpoint(full_run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(full_run / "checkpoint-10", tmp_path / "full" / "checkpoint-10"))


@pytest.mark.parametrize(
    ("which", "pickled", "safetensors"),
    [
        ("adapter", "adapter_model.bin", "adapter_model.safetensors"),
        ("full", "pytorch_model.bin", "model.safetensors"),
    ],
)
def test_a_pickle_that_differs_from_its_safetensors_file_is_refused_before_the_hub_changes(
    which: str, pickled: str, safetensors: str, checkpoint: Path, full_checkpoint: Path, hub: RunningHub, api
) -> None:  # type: ignore[no-untyped-def]
    folder = both_formats(checkpoint if which == "adapter" else full_checkpoint, pickled, safetensors, same=False)
    base = ["--base-model", "hubsync/tiny-random-llama"]
    for extra in (["--dry-run"], []):
        result = CliRunner().invoke(cli, ["push", str(folder), "--repo", "me/both", *base, *extra], env=hub_env(hub))
        assert result.exit_code == 1
        (line,) = result.stderr.splitlines()
        assert line.startswith("Error: ") and "Remove the stale file" in line
        assert f"{folder.name}/{pickled} and {safetensors} hold different weights (the values of " in line
    assert not api.repo_exists("me/both")  # nothing created


def test_a_pickle_that_matches_its_safetensors_file_is_left_out_and_said_so(
    checkpoint: Path, hub: RunningHub, api
) -> None:  # type: ignore[no-untyped-def]
    folder = both_formats(checkpoint, "adapter_model.bin", "adapter_model.safetensors", same=True)
    dry = CliRunner().invoke(cli, ["push", str(folder), "--repo", "me/both", "--dry-run"], env=hub_env(hub))
    assert dry.exit_code == 0, dry.stderr
    assert "  skip    adapter_model.bin  (the safetensors file beside it holds the same tensors)" in dry.stdout
    result = CliRunner().invoke(cli, ["push", str(folder), "--repo", "me/both"], env=hub_env(hub))
    assert result.exit_code == 0, result.stderr
    files = {f.path for f in api.list_repo_tree("me/both", revision="checkpoint-30", recursive=True)}
    assert "adapter_model.safetensors" in files and "adapter_model.bin" not in files


def test_weights_compare_by_bytes_also_for_strided_and_tied_tensors(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from hubsync.convert.compare import weights_difference

    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"t": base.t(), "a": base, "b": base}, tmp_path / "w.bin")  # a transposed view; b is a tied a
    save_file({"t": base.t().contiguous(), "a": base}, tmp_path / "w.safetensors")
    assert weights_difference(tmp_path / "w.bin", tmp_path / "w.safetensors", "w.bin") is None
    save_file({"t": base.t().contiguous() + 1, "a": base}, tmp_path / "w.safetensors")
    assert weights_difference(tmp_path / "w.bin", tmp_path / "w.safetensors", "w.bin") == "the values of t differ"
    save_file({"t": base.t().contiguous(), "a": base.double()}, tmp_path / "w.safetensors")
    assert weights_difference(tmp_path / "w.bin", tmp_path / "w.safetensors", "w.bin") == (
        "a is F32 in one and F64 in the other"
    )
    save_file({"t": base.t().contiguous()}, tmp_path / "w.safetensors")
    assert weights_difference(tmp_path / "w.bin", tmp_path / "w.safetensors", "w.bin") == (
        "a is only in the pickled file"
    )


# -- what --dry-run says -------------------------------------------------------------------------------------------


def dry_run(hub: RunningHub | None, folder: Path, *extra: str, endpoint: str | None = None):  # type: ignore[no-untyped-def]
    env = hub_env(hub) if hub is not None else {"HF_ENDPOINT": endpoint or "", "HF_TOKEN": "hf_" + "x" * 20}
    return CliRunner().invoke(cli, ["push", str(folder), "--repo", "me/tiny", "--dry-run", *extra], env=env)


def test_a_dry_run_says_the_repository_will_be_created_and_how(checkpoint: Path, hub: RunningHub, api) -> None:  # type: ignore[no-untyped-def]
    result = dry_run(hub, checkpoint)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[1] == "  repo    me/tiny will be created, private"
    public = dry_run(hub, checkpoint, "--public")
    assert public.stdout.splitlines()[1] == "  repo    me/tiny will be created, public"
    as_json = json.loads(dry_run(hub, checkpoint, "--json").stdout)["plans"][0]["hub"]
    assert as_json["looked"] is True and as_json["repo_exists"] is False
    assert not api.repo_exists("me/tiny")  # a dry run only looked


def test_a_dry_run_after_a_push_marks_what_the_branch_already_holds(checkpoint: Path, hub: RunningHub, api) -> None:  # type: ignore[no-untyped-def]
    pushed = CliRunner().invoke(cli, ["push", str(checkpoint), "--repo", "me/tiny"], env=hub_env(hub))
    assert pushed.exit_code == 0, pushed.stderr
    (checkpoint / "trainer_state.json").write_text((checkpoint / "trainer_state.json").read_text() + "\n")

    result = dry_run(hub, checkpoint)

    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == "  repo    me/tiny exists (private); branch checkpoint-30 exists"
    on_hub = {f.path for f in api.list_repo_tree("me/tiny", revision="checkpoint-30", recursive=True)}
    same = {line.split()[1] for line in lines if line.startswith("  same    ")}
    upload = {line.split()[1] for line in lines if line.startswith("  upload  ")}
    assert upload == {"trainer_state.json"}  # changed since the push
    assert same == on_hub - {".gitattributes", "trainer_state.json"}  # LFS (safetensors) and regular files alike
    assert "adapter_model.safetensors" in same and "README.md" in same
    assert "  total   1 file to upload, " in result.stdout


def test_a_dry_run_gives_the_real_sizes_of_converted_training_state(checkpoint: Path, hub: RunningHub, api) -> None:  # type: ignore[no-untyped-def]
    result = dry_run(hub, checkpoint, "--training-state", "keep", "--json")
    assert result.exit_code == 0, result.stderr
    planned = {f["path"]: f["size"] for f in json.loads(result.stdout)["plans"][0]["files"]}
    assert all(size > 0 for size in planned.values())
    text = dry_run(hub, checkpoint, "--training-state", "keep").stdout
    assert "about 0 B" not in text and "(converted from optimizer.pt, " in text
    pushed = CliRunner().invoke(
        cli, ["push", str(checkpoint), "--repo", "me/tiny", "--training-state", "keep"], env=hub_env(hub)
    )
    assert pushed.exit_code == 0, pushed.stderr
    sizes = {f.path: f.size for f in api.list_repo_tree("me/tiny", revision="checkpoint-30", recursive=True)}
    state = [p for p in planned if p.startswith(("optimizer.", "scheduler.", "rng_state."))]
    assert len(state) == 6 and {p: planned[p] for p in state} == {p: sizes[p] for p in state}


def test_a_dry_run_lists_what_the_push_deletes_from_the_branch_and_the_push_counts_it(  # type: ignore[no-untyped-def]
    checkpoint: Path, hub: RunningHub, api
) -> None:
    def branch() -> tuple[str, set[str]]:
        head = {b.name: b.target_commit for b in api.list_repo_refs("me/tiny").branches}["checkpoint-30"]
        return head, {f.path for f in api.list_repo_tree("me/tiny", revision=head, recursive=True)}

    kept = CliRunner().invoke(
        cli, ["push", str(checkpoint), "--repo", "me/tiny", "--training-state", "keep"], env=hub_env(hub)
    )
    assert kept.exit_code == 0, kept.stderr
    assert "deleted" not in kept.stdout  # a new branch: nothing to delete
    head, before = branch()

    result = dry_run(hub, checkpoint)  # the default drops training state

    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    planned = {line.split()[1] for line in lines if line.startswith(("  same    ", "  upload  "))}
    doomed = before - planned - {".gitattributes"}
    assert len(doomed) == 7 and "optimizer.safetensors" in doomed and "training_args.json" in doomed
    assert [line for line in lines if line.startswith("  delete  ")] == [
        f"  delete  {path}  (the branch holds it; this push leaves it out)" for path in sorted(doomed)
    ]
    assert "  total   0 files to upload, 0 B; 7 to delete" in lines
    assert (
        "  resume  resumable on the Hub now, not after this push (no optimizer state, scheduler state; "
        "--training-state keep keeps it)"
    ) in lines
    seen = json.loads(dry_run(hub, checkpoint, "--json").stdout)["plans"][0]["hub"]
    assert seen["delete"] == sorted(doomed)
    assert seen["resumable_now"] is True and seen["resumable_after"] is False
    assert branch() == (head, before)  # a dry run only looked
    again = dry_run(hub, checkpoint, "--training-state", "keep")  # the same files: nothing deleted, still resumable
    assert "  delete  " not in again.stdout and "  resume  " not in again.stdout

    pushed = CliRunner().invoke(cli, ["push", str(checkpoint), "--repo", "me/tiny"], env=hub_env(hub))
    assert pushed.exit_code == 0, pushed.stderr
    assert "  deleted: 7 files the branch held (this push leaves them out)" in pushed.stdout.splitlines()
    new_head, after = branch()
    assert before - after == doomed and after <= before
    assert len(api.list_repo_commits("me/tiny", revision=new_head)) == 3  # one commit on top of the kept push

    restored = CliRunner().invoke(
        cli, ["push", str(checkpoint), "--repo", "me/tiny", "--training-state", "keep", "--json"], env=hub_env(hub)
    )
    assert restored.exit_code == 0, restored.stderr
    assert json.loads(restored.stdout)["results"][0]["deleted"] == 0
    dropped = CliRunner().invoke(cli, ["push", str(checkpoint), "--repo", "me/tiny", "--json"], env=hub_env(hub))
    assert json.loads(dropped.stdout)["results"][0]["deleted"] == len(doomed)
    assert branch()[1] == after


def test_a_dry_run_without_the_hub_still_prints_the_plan_and_says_so(checkpoint: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = dry_run(None, checkpoint, endpoint=endpoint)
    assert time.monotonic() - started < 5
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[1] == (
        "  repo    me/tiny: not known whether it exists (the Hub could not be reached); "
        "a push creates it private if missing"
    )
    assert result.stderr == ""
