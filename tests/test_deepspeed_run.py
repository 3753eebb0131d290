"""Real DeepSpeed ZeRO-2 and ZeRO-3 runs (2 CPU ranks, gloo) through the local Hub: pushed pickle-free, pulled,
resumed.

DeepSpeed's resume is deterministic here but not equal to an uninterrupted run, so the check is: resuming from
the pulled checkpoint gives, bit for bit, what resuming from the local one gives."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_state import same

from hubsync.cli import cli
from hubsync.localhub import RunningHub

pytestmark = pytest.mark.slow


def _torchrun(out: Path, max_steps: int, resume: Path | None = None, stage: int = 2) -> None:
    """The tiny LoRA run under DeepSpeed ZeRO at `stage` on two CPU processes, checkpoints every 10 steps.

    --standalone lets torchrun pick its own free port (no race between choosing a port and binding it), and gloo
    talks over loopback whatever the host name resolves to. A run whose rank dies by a signal (a launcher or gloo
    failure, seen once on a shared CI machine) is run once more; its output goes to the real stderr, so the CI log
    shows it."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args += ["-m", "hubsync.tinyrun", str(out), "--max-steps", str(max_steps), "--save-steps", "10"]
    args += ["--deepspeed-stage", str(stage), "--no-eval"] + (["--resume", str(resume)] if resume else [])
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env |= {"GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    for attempt in (1, 2):
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode == 0:
            return
        output = done.stdout + done.stderr
        if attempt == 2 or "Signal" not in output:
            break
        shutil.rmtree(out, ignore_errors=True)
        print(f"torchrun failed by a signal, once more:\n{output[:4000]}\n...\n{output[-4000:]}", file=sys.__stderr__)
    raise AssertionError(f"torchrun exited {done.returncode}:\n{output[:4000]}\n...\n{output[-4000:]}")


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zero2") / "run"
    _torchrun(out, 10)
    return out


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zero3") / "run"
    _torchrun(out, 10, stage=3)
    return out


def _cli(hub: RunningHub, *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token})


def test_a_zero2_checkpoint_goes_through_the_hub_pickle_free_and_resumes_the_same(
    zero2_run: Path, hub: RunningHub, api: Any, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    local = zero2_run / "checkpoint-10"
    pushed = _cli(hub, "push", str(local), "--repo", "me/zero2", "--training-state", "keep")
    assert pushed.exit_code == 0, pushed.output
    listed = set(api.list_repo_files("me/zero2", revision="checkpoint-10"))
    state = {p for p in listed if p.startswith("global_step10/")}
    assert state == {
        f"global_step10/{stem}.{ext}"
        for stem in ("mp_rank_00_model_states", *(f"zero_pp_rank_{r}_mp_rank_00_optim_states" for r in (0, 1)))
        for ext in ("json", "safetensors")
    }
    assert {"latest", "zero_to_fp32.py", "rng_state_0.json", "rng_state_1.json"} <= listed
    assert not [p for p in listed if p.endswith((".pt", ".pth", ".bin"))], listed  # no pickle is published

    pulled = tmp_path / "pulled" / "checkpoint-10"  # --to names the folder that receives checkpoint-10/
    result = _cli(hub, "pull", "me/zero2", "--revision", "checkpoint-10", "--to", str(pulled.parent))
    assert result.exit_code == 0, result.output
    assert "DeepSpeed ZeRO-1/2, 2 ranks" in result.output
    again = _cli(hub, "pull", "me/zero2", "--revision", "checkpoint-10", "--to", str(pulled.parent))
    assert again.exit_code == 0 and "Already there" in again.output, again.output  # the rebuilt .pt files match
    for pt in sorted(local.glob("global_step10/*.pt")):
        mine = torch.load(pulled / pt.relative_to(local), weights_only=False)
        theirs = torch.load(pt, weights_only=False)
        assert same(theirs, mine), pt.name

    _torchrun(tmp_path / "from-local", 20, resume=local)
    _torchrun(tmp_path / "from-pulled", 20, resume=pulled)
    a = load_file(tmp_path / "from-local" / "checkpoint-20" / "adapter_model.safetensors")
    b = load_file(tmp_path / "from-pulled" / "checkpoint-20" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], load_file(local / "adapter_model.safetensors")[k]) for k in a)  # it trained on


def test_pulling_deepspeed_state_without_deepspeed_names_the_extra_before_fetching(
    zero2_run: Path, hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pushed = _cli(hub, "push", str(zero2_run / "checkpoint-10"), "--repo", "me/zero2", "--training-state", "keep")
    assert pushed.exit_code == 0, pushed.output
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed now fails, as where it is not installed
    result = _cli(hub, "pull", "me/zero2", "--revision", "checkpoint-10", "--to", str(tmp_path / "pulled"))
    assert result.exit_code == 1
    assert "writes DeepSpeed's state back) needs deepspeed" in result.output
    assert "pip install 'hubsync[deepspeed]'" in result.output
    assert not (tmp_path / "pulled").exists()


def test_a_zero3_checkpoint_goes_through_the_hub_pickle_free_and_resumes_the_same(
    zero3_run: Path, hub: RunningHub, api: Any, tmp_path: Path
) -> None:
    """ZeRO-3 writes one model states file a rank, and pickles its flat fp32 groups as tensors with a Python
    attribute (ds_id): pushed as safetensors + JSON, they come back as tensors with that attribute."""
    import torch
    from safetensors.torch import load_file

    local = zero3_run / "checkpoint-10"
    pushed = _cli(hub, "push", str(local), "--repo", "me/zero3", "--training-state", "keep")
    assert pushed.exit_code == 0, pushed.output
    listed = set(api.list_repo_files("me/zero3", revision="checkpoint-10"))
    assert {p for p in listed if p.startswith("global_step10/")} == {
        f"global_step10/zero_pp_rank_{r}_mp_rank_00_{what}_states.{ext}"
        for r in (0, 1)
        for what in ("model", "optim")
        for ext in ("json", "safetensors")
    }
    assert not [p for p in listed if p.endswith((".pt", ".pth", ".bin"))], listed  # no pickle is published
    listing = _cli(hub, "ls", "me/zero3")
    assert listing.exit_code == 0 and "yes (DeepSpeed ZeRO-3, 2 ranks)" in listing.output, listing.output

    pulled = tmp_path / "pulled" / "checkpoint-10"
    result = _cli(hub, "pull", "me/zero3", "--revision", "checkpoint-10", "--to", str(pulled.parent))
    assert result.exit_code == 0, result.output
    assert "DeepSpeed ZeRO-3, 2 ranks" in result.output
    again = _cli(hub, "pull", "me/zero3", "--revision", "checkpoint-10", "--to", str(pulled.parent))
    assert again.exit_code == 0 and "Already there" in again.output, again.output  # the rebuilt .pt files match
    for pt in sorted(local.glob("global_step10/*.pt")):
        theirs = torch.load(pt, weights_only=False)
        mine = torch.load(pulled / pt.relative_to(local), weights_only=False)
        assert same(theirs, mine), pt.name
    optim = torch.load(pulled / "global_step10/zero_pp_rank_1_mp_rank_00_optim_states.pt", weights_only=False)
    flat = optim["optimizer_state_dict"]["fp32_flat_groups"]
    assert flat and all("ds_id" in vars(t) for t in flat)  # and same() found them equal to the originals'

    _torchrun(tmp_path / "from-local", 20, resume=local, stage=3)
    _torchrun(tmp_path / "from-pulled", 20, resume=pulled, stage=3)
    a = load_file(tmp_path / "from-local" / "checkpoint-20" / "adapter_model.safetensors")
    b = load_file(tmp_path / "from-pulled" / "checkpoint-20" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], load_file(local / "adapter_model.safetensors")[k]) for k in a)  # it trained on
