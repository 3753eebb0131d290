"""DeepSpeed ZeRO checkpoints: their layout read from names, and their pickles admitted only from a fixed table
(objects, and tensors with plain Python attributes)."""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubsync.convert.state import rebuild_state
from hubsync.convert.torchzip import read_torch_archive
from hubsync.core.conversion import is_resumable, is_training_state, resume_missing
from hubsync.core.errors import DamagedStateError, UnsafePickleError
from hubsync.core.layouts import latest_problem, state_layout

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


# -- tensors with Python attributes (DeepSpeed ZeRO-3's fp32 flat groups) --------------------------------------

_REBUILD_V2 = b"ctorch._utils\n_rebuild_tensor_v2\n"
_TENSOR = b"ctorch\nTensor\n"


def _from_type_v2(state: bytes, func: bytes = _REBUILD_V2, new_type: bytes = _TENSOR) -> bytes:
    """A protocol-2 pickle of {"x": tensor} as torch.save writes one with Python attributes (ZeRO-3's
    optim_states): _rebuild_from_type_v2(func, new_type, (storage, 0, (2,), (1,), True, OrderedDict()), state),
    with `state` the opcodes that push the attributes."""
    storage = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQ"
    args = b"(" + storage + b"K\x00K\x02\x85K\x01\x85\x88ccollections\nOrderedDict\n)Rt"
    return (
        b"\x80\x02}X\x01\x00\x00\x00xctorch._tensor\n_rebuild_from_type_v2\n("
        + func
        + new_type
        + args
        + state
        + b"tRs."
    )


def _state_zip(tmp_path: Path, data: bytes) -> Path:
    """A torch.save() archive of `data` with the one storage _from_type_v2 names (two float32)."""
    path = tmp_path / "global_step10" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/data/0", b"\x00\x00\x80\x3f\x00\x00\x00\x40")  # 1.0, 2.0
        z.writestr("archive/version", "3\n")
    return path


_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.floats(),
    st.text(st.characters(codec="utf-8"), max_size=20),
)
_PLAIN_VALUE = st.one_of(_SCALAR, st.lists(_SCALAR, max_size=4), st.lists(_SCALAR, max_size=4).map(tuple))
_NAME = st.from_regex(r"ds_[a-z0-9_]{1,12}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(attributes=st.dictionaries(_NAME, _PLAIN_VALUE, min_size=1, max_size=5))
def test_a_tensor_with_plain_attributes_is_kept_with_them_and_comes_back_with_them(attributes: dict) -> None:  # type: ignore[type-arg]
    import tempfile

    import torch
    from test_state import same

    from hubsync.convert.state import encode_state, rebuild_state

    with tempfile.TemporaryDirectory() as tmp:
        source = _state_zip(Path(tmp), _from_type_v2(pickle.dumps(attributes, protocol=2)[2:-1]))
        ref = read_torch_archive(source, "x.pt", state=True).root["x"]
        assert same(dict(ref.attributes), attributes) and ref.shape == (2,)
        out = Path(tmp) / "out" / "global_step10"
        out.mkdir(parents=True)
        encode_state(source, "x.pt", out)
        rebuilt = torch.load(rebuild_state(out / "zero_pp_rank_0_mp_rank_00_optim_states.json"), weights_only=False)
        assert same(rebuilt, torch.load(source, weights_only=False))  # values and attributes
        assert type(rebuilt["x"]) is torch.Tensor and same(vars(rebuilt["x"]), attributes)


def _pushed(value: Any) -> bytes:
    return pickle.dumps(value, protocol=2)[2:-1]


def _state_with(name: str, value: bytes) -> bytes:
    return b"}X" + len(name.encode()).to_bytes(4, "little") + name.encode() + value + b"s"


_REFUSED_STATES = st.one_of(
    # an attribute holding an object the reader otherwise admits, a nested container, or bytes
    st.sampled_from(
        [
            _state_with("ds_shape", b"ctorch\nSize\nK\x02K\x04\x86\x85R"),
            _state_with("ds_x", _pushed({1, 2})),
            _state_with("ds_x", _pushed({"a": 1})),
            _state_with("ds_x", _pushed([[1]])),
            _state_with("ds_x", _pushed(b"raw")),
            _state_with("ds_x", b"ccollections\nOrderedDict\n)R"),
            _pushed(({"ds_id": "1"}, {"slot": 1})),  # (dict, slots): what a class with __slots__ writes
            _pushed(None),
            _pushed(["ds_id"]),
            _pushed({1: "x"}),
            b"ccollections\nOrderedDict\n)RX\x05\x00\x00\x00ds_idX\x01\x00\x00\x001s",
        ]
    ),
    # a dunder or non-identifier attribute name
    st.one_of(
        st.sampled_from(["__class__", "__dict__", "__setstate__", "__reduce__", "__x"]),
        st.from_regex(r"__[a-z]{1,8}__", fullmatch=True),
        st.text(max_size=8).filter(lambda n: not n.isidentifier()),
    ).map(lambda n: _state_with(n, b"K\x01")),
)


@settings(max_examples=80, deadline=None)
@given(state=_REFUSED_STATES)
def test_a_tensor_with_attributes_other_than_plain_values_is_refused_by_name(state: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        source = _state_zip(Path(tmp), _from_type_v2(state))
        with pytest.raises(UnsafePickleError, match=re.escape("torch._tensor._rebuild_from_type_v2 with attributes")):
            read_torch_archive(source, "x.pt", state=True)


@pytest.mark.parametrize(
    ("func", "new_type", "named"),
    [
        # a subclass of Tensor (by name: never imported), or another object the reader admits in its place
        (_REBUILD_V2, b"ctorch.nn.parameter\nParameter\n", "torch.nn.parameter.Parameter"),
        (_REBUILD_V2, b"ctorch\nFloatStorage\n", "_rebuild_from_type_v2 of a type other than torch.Tensor"),
        (_REBUILD_V2, b"ccollections\nOrderedDict\n", "_rebuild_from_type_v2 of a type other than torch.Tensor"),
        (_REBUILD_V2, b"ctorch\nSize\n", "_rebuild_from_type_v2 of a type other than torch.Tensor"),
        (_REBUILD_V2, b"N", "_rebuild_from_type_v2 of a type other than torch.Tensor"),
        # another rebuild function
        (b"ctorch._utils\n_rebuild_tensor_v3\n", _TENSOR, "_rebuild_from_type_v2 of something other than"),
        (b"ctorch._utils\n_rebuild_parameter\n", _TENSOR, "_rebuild_from_type_v2 of something other than"),
        (b"ccollections\nOrderedDict\n", _TENSOR, "_rebuild_from_type_v2 of something other than"),
        (b"cos\nsystem\n", _TENSOR, "os.system"),
    ],
)
def test_rebuild_from_type_of_another_type_or_function_is_refused_by_name(
    func: bytes, new_type: bytes, named: str, tmp_path: Path
) -> None:
    source = _state_zip(tmp_path, _from_type_v2(_pushed({"ds_id": "2_20"}), func=func, new_type=new_type))
    with pytest.raises(UnsafePickleError, match=re.escape(named)):
        read_torch_archive(source, "x.pt", state=True)


def test_a_weights_file_of_tensors_with_attributes_is_refused_by_name(tmp_path: Path) -> None:
    source = _state_zip(tmp_path, _from_type_v2(_pushed({"ds_id": "2_20"})))
    with pytest.raises(UnsafePickleError, match=re.escape("torch._tensor._rebuild_from_type_v2")):
        read_torch_archive(source, "x.pt")  # the weights reader: a tensor's attributes have no place in safetensors


@pytest.mark.parametrize(
    "attributes",
    [
        {"__class__": "x"},
        {"__dict__": {}},
        {"not a name": 1},
        {"requires_grad": True},  # torch.Tensor's own: setting it changes the tensor
        {"data": 1},
        {"copy_": 1},  # a method: it would be shadowed
        {"ds_x": {"__object__": "torch.Size", "args": [{"__tuple__": [2]}]}},
        {"ds_x": {"a": 1}},
        {"ds_x": [[1]]},
        {"ds_x": {"__bytes__": "AA=="}},
        [["ds_id", "1"]],
        "ds_id",
    ],
)
def test_a_document_giving_a_tensor_other_attributes_is_refused(tmp_path: Path, attributes: object) -> None:
    folder = tmp_path / "global_step10"
    folder.mkdir()
    name = "zero_pp_rank_0_mp_rank_00_optim_states"
    tree = {"x": {"__tensor__": "t0", "attributes": attributes}}
    (folder / f"{name}.json").write_text(
        json.dumps({"format": "hubsync-training-state", "version": 1, "file": f"{name}.pt", "tree": tree})
    )
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"t0": np.zeros(2, dtype=np.float32)}, str(folder / f"{name}.safetensors"))
    with pytest.raises(DamagedStateError):
        rebuild_state(folder / f"{name}.json")
    assert not (folder / f"{name}.pt").exists()


def test_a_tensor_of_a_document_reads_with_and_without_attributes_on_one_storage(tmp_path: Path) -> None:
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    folder = tmp_path / "global_step10"
    folder.mkdir()
    name = "zero_pp_rank_0_mp_rank_00_optim_states"
    tree = {"x": {"__tensor__": "t0"}, "y": {"__tensor__": "t0", "attributes": {"ds_id": "2_20"}}}
    (folder / f"{name}.json").write_text(
        json.dumps({"format": "hubsync-training-state", "version": 1, "file": f"{name}.pt", "tree": tree})
    )
    save_file({"t0": np.ones(2, dtype=np.float32)}, str(folder / f"{name}.safetensors"))
    rebuilt = torch.load(rebuild_state(folder / f"{name}.json"), weights_only=False)
    assert vars(rebuilt["x"]) == {} and vars(rebuilt["y"]) == {"ds_id": "2_20"}
    assert rebuilt["x"].data_ptr() == rebuilt["y"].data_ptr()  # one tensor's storage, as the pickle shared it


@settings(max_examples=300, deadline=None)
@given(text=st.binary(max_size=40) | st.sampled_from([b"global_step10", b"global_step10\n", b"global_step20"]))
def test_latest_is_accepted_only_naming_a_folder_the_revision_holds(text: bytes) -> None:
    """DeepSpeed resumes from (and unpickles) whatever folder `latest` names: from a Hub, only global_step<N> of
    the revision itself passes (`/tmp/evil`, `../x`, `global_step10/../..` do not)."""
    problem = latest_problem(text, ZERO2)
    assert (problem is None) == (text.strip() == b"global_step10")


def test_a_hub_serving_a_latest_that_leads_elsewhere_is_refused_on_pull(
    checkpoint: Path, hub: Any, api: Any, tmp_path: Path
) -> None:
    """A revision whose `latest` names a folder outside it: pull refuses it and places nothing, before DeepSpeed
    could ever resume from it."""
    from click.testing import CliRunner

    from hubsync.cli import cli

    api.create_repo("me/ds", private=True)
    api.create_branch("me/ds", branch="checkpoint-10")
    files = {
        "adapter_model.safetensors": checkpoint / "adapter_model.safetensors",
        "adapter_config.json": checkpoint / "adapter_config.json",
        "trainer_state.json": checkpoint / "trainer_state.json",
        "latest": b"/tmp/evil\n",
        "global_step10/mp_rank_00_model_states.json": b"{}",
    }
    for path, data in files.items():
        api.upload_file(
            path_or_fileobj=data if isinstance(data, bytes) else str(data),
            path_in_repo=path,
            repo_id="me/ds",
            revision="checkpoint-10",
        )
    result = CliRunner().invoke(
        cli,
        ["pull", "me/ds", "--revision", "checkpoint-10", "--to", str(tmp_path / "pulled")],
        env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token},
    )
    assert result.exit_code == 1, result.output
    assert (
        "training state from latest: it says" in result.output and "not the name of a global_step<N>" in result.output
    )
    assert not (tmp_path / "pulled").exists() or not any((tmp_path / "pulled").iterdir())
