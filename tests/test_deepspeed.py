"""DeepSpeed ZeRO checkpoints: their layout read from names, and their pickles admitted only from a fixed table."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubsync.convert.state import rebuild_state
from hubsync.convert.torchzip import read_torch_archive
from hubsync.core.conversion import is_resumable, is_training_state, resume_missing
from hubsync.core.errors import DamagedStateError, UnsafePickleError
from hubsync.core.layouts import state_layout

ZERO2 = {
    "adapter_model.safetensors",
    "trainer_state.json",
    "scheduler.pt",
    "latest",
    "zero_to_fp32.py",
    "global_step10/mp_rank_00_model_states.pt",
    "global_step10/zero_pp_rank_0_mp_rank_00_optim_states.pt",
    "global_step10/zero_pp_rank_1_mp_rank_00_optim_states.pt",
}


def test_a_zero2_checkpoint_is_resumable_with_two_ranks() -> None:
    layout = state_layout(ZERO2)
    assert layout is not None and layout.describe() == "DeepSpeed ZeRO-1/2, 2 ranks"
    assert is_resumable(ZERO2)


def test_a_zero2_checkpoint_in_the_pickle_free_form_is_resumable() -> None:
    safe = {p for p in ZERO2 if not p.startswith("global_step")}
    for p in ZERO2 - safe:
        safe |= {p.removesuffix(".pt") + ".json", p.removesuffix(".pt") + ".safetensors"}
    assert is_resumable(safe)


@pytest.mark.parametrize(
    ("gone", "said"),
    [
        ("latest", "DeepSpeed `latest` file"),
        ("global_step10/zero_pp_rank_0_mp_rank_00_optim_states.pt", "DeepSpeed ZeRO optimizer state of rank 0"),
        ("global_step10/mp_rank_00_model_states.pt", "DeepSpeed model states (mp_rank_00_model_states.pt)"),
    ],
)
def test_what_deepspeed_resume_lacks_is_named(gone: str, said: str) -> None:
    assert said in resume_missing(ZERO2 - {gone})


@settings(max_examples=200, deadline=None)
@given(
    ranks=st.integers(1, 12),
    data=st.data(),
    rng=st.booleans(),
)
def test_a_rank_whose_shard_is_gone_is_named_not_counted_away(ranks: int, data: st.DataObject, rng: bool) -> None:
    """Whichever optimizer shards are gone, the run's size is read from every file that names a rank (its RNG
    state, ZeRO-3's model states), and each missing shard is named: never a smaller run that reads as whole."""
    stage3 = data.draw(st.booleans(), label="zero3")
    files = {"latest", "trainer_state.json", "scheduler.pt", "adapter_model.safetensors"}
    if not stage3:
        files.add("global_step10/mp_rank_00_model_states.pt")
    for r in range(ranks):
        files.add(f"global_step10/zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
        if stage3:
            files.add(f"global_step10/zero_pp_rank_{r}_mp_rank_00_model_states.pt")
        if rng or not stage3:
            files.add(f"rng_state_{r}.pth")
    gone = data.draw(st.sets(st.integers(0, ranks - 1), max_size=ranks), label="gone")
    files -= {f"global_step10/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in gone}
    layout = state_layout(files)
    assert layout is not None and layout.ranks == ranks
    assert is_resumable(files) == (not gone)
    missing = resume_missing(files)
    assert all(f"DeepSpeed ZeRO optimizer state of rank {r}" in missing for r in gone if len(gone) < ranks)


def test_a_zero2_checkpoint_missing_a_ranks_shard_is_not_resumable() -> None:
    """What a new user saw: rank 1's shard gone, its RNG state there; this is a 2-rank run lacking a shard."""
    files = ZERO2 - {"global_step10/zero_pp_rank_1_mp_rank_00_optim_states.pt"} | {"rng_state_0.pth", "rng_state_1.pth"}
    layout = state_layout(files)
    assert layout is not None and layout.describe() == "DeepSpeed ZeRO-1/2, 2 ranks"
    assert "DeepSpeed ZeRO optimizer state of rank 1" in resume_missing(files)
    assert not is_resumable(files)


def test_deepspeed_state_and_script_are_training_state() -> None:
    assert all(is_training_state(p) for p in ZERO2 - {"adapter_model.safetensors", "trainer_state.json"})


def _torch_zip(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "global_step10" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/version", "3\n")
    path.write_bytes(buf.getvalue())
    return path


def test_a_deepspeed_like_pickle_with_another_global_is_refused(tmp_path: Path) -> None:
    # what LossScaler's pickle looks like, naming os.system instead
    data = b"\x80\x02}q\x00X\x0b\x00\x00\x00loss_scalerq\x01cos\nsystem\nq\x02)\x81q\x03}q\x04bs."
    with pytest.raises(UnsafePickleError):
        read_torch_archive(_torch_zip(tmp_path, data), "x.pt", state=True)


def test_an_allowed_object_is_read_as_a_record(tmp_path: Path) -> None:
    data = (
        b"\x80\x02}q\x00X\x0b\x00\x00\x00loss_scalerq\x01cdeepspeed.runtime.fp16.loss_scaler\nLossScaler\n"
        b"q\x02)\x81q\x03}q\x04X\x09\x00\x00\x00cur_scaleq\x05G?\xf0\x00\x00\x00\x00\x00\x00sbs."
    )
    root = read_torch_archive(_torch_zip(tmp_path, data), "x.pt", state=True).root
    assert root["loss_scaler"].state == {"cur_scale": 1.0}


@pytest.mark.parametrize(
    "obj",
    [
        {"__object__": "os.system", "args": ["true"]},
        {"__object__": "deepspeed.runtime.fp16.loss_scaler.LossScaler", "state": {"__class__": 1}},
        {"__object__": "torch.Size", "args": ["not ints"]},
        {"__set__": [[1]]},
    ],
)
def test_a_document_naming_anything_else_is_refused(tmp_path: Path, obj: object) -> None:
    folder = tmp_path / "global_step10"
    folder.mkdir()
    name = "zero_pp_rank_0_mp_rank_00_optim_states"
    (folder / f"{name}.json").write_text(
        json.dumps({"format": "hubsync-training-state", "version": 1, "file": f"{name}.pt", "tree": {"x": obj}})
    )
    from safetensors.numpy import save_file

    save_file({}, str(folder / f"{name}.safetensors"))
    with pytest.raises(DamagedStateError):
        rebuild_state(folder / f"{name}.json")
    assert not (folder / f"{name}.pt").exists()
