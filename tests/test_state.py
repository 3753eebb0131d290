"""Pickle-free training state: every state the Trainer saves round-trips through safetensors + JSON."""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from hubsync.convert.state import encode_state, is_state_document, rebuild_state, safe_names
from hubsync.core.errors import UnrepresentableStateError, UnsafePickleError


def round_trip(obj: object, name: str, tmp_path: Path) -> object:
    source = tmp_path / "src" / name
    source.parent.mkdir(exist_ok=True)
    torch.save(obj, source)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    encode_state(source, name, out)
    json_name, tensors_name = safe_names(name)
    assert is_state_document(out / json_name) and (out / tensors_name).exists()
    return torch.load(rebuild_state(out / json_name), weights_only=False)


def same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and (a.dtype, a.shape) == (b.dtype, b.shape)
            and torch.equal(a, b)
            and same(vars(a), vars(b))  # Python attributes: DeepSpeed ZeRO-3's ds_id
        )
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a).__module__.startswith("deepspeed."):  # LossScaler, fragment_address: equal by their attributes
        return type(a) is type(b) and same(vars(a), vars(b))
    return type(a) is type(b) and (a == b or (a != a and b != b))  # NaN equals NaN here


def optimizer_state(kind: str) -> dict:  # type: ignore[type-arg]
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    groups = [{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.5}]
    opt = torch.optim.AdamW(groups, lr=0.01) if kind == "adamw" else torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    for _ in range(3):
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
    return opt.state_dict()


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_optimizer_states_with_several_parameter_groups(kind: str, tmp_path: Path) -> None:
    state = optimizer_state(kind)
    assert same(round_trip(state, "optimizer.pt", tmp_path), state)


def test_rng_state_with_cpu_cuda_numpy_and_python(tmp_path: Path) -> None:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cpu": torch.get_rng_state(),
        "cuda": [torch.get_rng_state()[:816].clone(), torch.get_rng_state()[:816].clone()],  # one state a device
    }
    back = round_trip(state, "rng_state_1.pth", tmp_path)
    assert same(back, state)
    random.setstate(back["python"])  # type: ignore[index]
    np.random.set_state(back["numpy"])  # type: ignore[index]


def test_generic_structures_and_odd_scalars(tmp_path: Path) -> None:
    state = {
        "nested": [{"a": (1, 2.5, None, True), 3: "int key"}, OrderedDict(x=torch.zeros(2, 3).t())],
        "floats": [float("inf"), float("-inf"), float("nan")],
        "__tensor__": "a key that looks like a marker",
        "bytes": b"\x00\x01",
        "shared": [torch.ones(2)] * 2,
    }
    back = round_trip(state, "scaler.pt", tmp_path)
    assert same(back, {**state, "nested": [state["nested"][0], dict(state["nested"][1])]})


def test_a_state_that_cannot_be_represented_is_refused_by_file_and_type(tmp_path: Path) -> None:
    with pytest.raises(UnrepresentableStateError) as caught:
        round_trip({"numpy": np.zeros(2, dtype=np.complex64)}, "rng_state.pth", tmp_path)
    assert (caught.value.path == "rng_state.pth" and "complex" in caught.value.what) or "c8" in caught.value.what


def test_an_unknown_class_is_refused_without_running_it(tmp_path: Path) -> None:
    with pytest.raises(UnsafePickleError) as caught:
        round_trip({"frozen": frozenset({1})}, "scheduler.pt", tmp_path)
    assert caught.value.path == "scheduler.pt" and caught.value.what.endswith("frozenset")


def test_a_document_referring_to_one_tensor_many_times_rebuilds_it_once(tmp_path: Path) -> None:
    """A Hub's optimizer.json naming one 4 MiB tensor 100,000 times asked for 400 GB when each reference was a
    copy; the rebuilt file shares the one tensor, as a pickle shares an object, and stays small."""
    import resource

    from safetensors.torch import save_file

    save_file({"t0": torch.zeros(1 << 20)}, str(tmp_path / "optimizer.safetensors"))
    tree = {"state": [{"__tensor__": "t0"}] * 100_000, "param_groups": []}
    (tmp_path / "optimizer.json").write_text(
        json.dumps({"format": "hubsync-training-state", "version": 1, "file": "optimizer.pt", "tree": tree})
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rebuilt = rebuild_state(tmp_path / "optimizer.json")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert rebuilt.stat().st_size < 16 * 2**20 and grown_mib < 512
    loaded = torch.load(rebuilt, weights_only=True)
    assert len(loaded["state"]) == 100_000 and loaded["state"][0] is loaded["state"][-1]
