"""Hostile safetensors headers, hostile training state and two sets of model weights (issue 14): each is one
line naming the file, exit 1, before anything happens on the Hub; never a traceback, never a silent publish."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import push
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsync.localhub import RunningHub

BASE = ["--base-model", "hubsync/tiny-random-llama"]

# -- safetensors files the safetensors library refuses ------------------------------------------------------------


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _build(header: object, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def _first(header: dict[str, Any]) -> str:
    return sorted(k for k in header if k != "__metadata__")[0]


def _with_first(field: str, change: Callable[[Any], Any]) -> Callable[[bytes], bytes]:
    def craft(good: bytes) -> bytes:
        header, body = _split(good)
        entry = header[_first(header)]
        entry[field] = change(entry[field])
        return _build(header, body)

    return craft


def _deep(good: bytes) -> bytes:
    raw = b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    return struct.pack("<Q", len(raw)) + raw


def _trailing(good: bytes) -> bytes:
    return good + b"EXTRA-HIDDEN-PAYLOAD" * 10


def _badmeta(good: bytes) -> bytes:
    header, body = _split(good)
    header["__metadata__"] = {"format": "pt", "x": {"nested": [1, 2]}}
    return _build(header, body)


# One factory per case of the attack (mkpairs.py), named after it.
PAIRS: dict[str, Callable[[bytes], bytes]] = {
    "pair_stroffsets": _with_first("data_offsets", lambda o: [str(x) for x in o]),
    "pair_noneoffsets": _with_first("data_offsets", lambda o: [None, None]),
    "pair_deep": _deep,
    "pair_floatshape": _with_first("shape", lambda s: [float(x) for x in s]),
    "pair_floatoffsets": _with_first("data_offsets", lambda o: [float(x) for x in o]),
    "pair_trailing": _trailing,
    "pair_badmeta": _badmeta,
}


def good_safetensors(pickled: Path) -> bytes:
    import torch
    from safetensors.torch import save

    tensors = torch.load(pickled, weights_only=True)
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})


def hostile_pair(bin_run: Path, root: Path, case: str) -> Path:
    """bin_run's checkpoint (adapter_model.bin) with an adapter_model.safetensors beside it crafted as `case`."""
    folder = Path(shutil.copytree(bin_run / "checkpoint-10", root / case / "checkpoint-10"))
    good = good_safetensors(folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").write_bytes(PAIRS[case](good))
    return folder


@pytest.mark.parametrize("case", sorted(PAIRS))
def test_a_hostile_safetensors_header_is_refused_naming_the_file(case: str, bin_run: Path, tmp_path: Path) -> None:
    from hubsync.convert.compare import check_superseded
    from hubsync.core.checkpoint import read_checkpoint
    from hubsync.core.conversion import plan_conversion
    from hubsync.core.errors import InvalidSafetensorsError

    checkpoint = read_checkpoint(hostile_pair(bin_run, tmp_path, case))
    with pytest.raises(InvalidSafetensorsError) as refused:
        check_superseded(checkpoint, plan_conversion(checkpoint))
    assert refused.value.path == f"{checkpoint.display}/adapter_model.safetensors"


@pytest.mark.parametrize("case", sorted(PAIRS))
def test_a_hostile_safetensors_file_beside_its_pickle_is_never_published(
    case: str, bin_run: Path, tmp_path: Path, hub: RunningHub, api
) -> None:  # type: ignore[no-untyped-def]
    folder = hostile_pair(bin_run, tmp_path, case)
    for extra in (["--dry-run"], []):
        result = push(hub, str(folder), "--repo", "me/pair", *BASE, *extra)
        assert result.exit_code == 1, result.output
        (line,) = result.stderr.splitlines()
        assert line.startswith("Error: ")
        assert f"{folder.name}/adapter_model.safetensors is not a valid safetensors file (" in line
        assert "Save the weights again" in line
    assert not api.repo_exists("me/pair")


def test_a_lone_invalid_safetensors_file_is_not_published(checkpoint: Path, hub: RunningHub, api) -> None:  # type: ignore[no-untyped-def]
    """No .bin beside it, nothing to compare: published as it is, a reader would refuse it, so push does."""
    weights = checkpoint / "adapter_model.safetensors"
    weights.write_bytes(_trailing(weights.read_bytes()))
    for extra in (["--dry-run"], []):
        result = push(hub, str(checkpoint), "--repo", "me/lone", *extra)
        assert result.exit_code == 1
        assert "adapter_model.safetensors is not a valid safetensors file (" in result.stderr
        assert "file not fully covered" in result.stderr
    assert not api.repo_exists("me/lone")


def test_the_header_check_reads_no_torch(bin_run: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(bin_run / "checkpoint-10", tmp_path / "c"))
    (folder / "w.safetensors").write_bytes(good_safetensors(folder / "adapter_model.bin"))
    code = (
        "import sys; from pathlib import Path; from hubsync.convert.compare import safetensors_header; "
        f"header, _ = safetensors_header(Path({str(folder / 'w.safetensors')!r})); "
        "assert header and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# Headers drawn from valid ones and changed a little: the checks of hubsync accept exactly what the library does.
_VALUES = st.one_of(
    st.integers(-4, 300),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.lists(st.integers(0, 300), max_size=3),
)


@st.composite
def _headers(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    names = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=0, max_size=3, unique=True))
    header: dict[str, Any] = {}
    offset = 0
    for name in names:
        dtype = draw(st.sampled_from(["F32", "F16", "I64", "BOOL", "U8"]))
        shape = draw(st.lists(st.integers(0, 4), max_size=2))
        numel = 1
        for d in shape:
            numel *= d
        size = numel * {"F32": 4, "F16": 2, "I64": 8, "BOOL": 1, "U8": 1}[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=2), st.text(max_size=2), max_size=2))
    body = b"\0" * offset
    offsets = {name: header[name]["data_offsets"] for name in names}  # as written, before any change below
    for _ in range(draw(st.integers(0, 2))):
        if not names:
            break
        name = draw(st.sampled_from(names))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
        value = draw(_VALUES)
        if field == "data_offsets" and isinstance(value, list) and draw(st.booleans()):
            value = [offsets[name][0], offsets[name][1] + draw(st.integers(-2, 2))]
        header[name][field] = value
    if draw(st.booleans()):
        body += draw(st.binary(max_size=3))
    if "__metadata__" in header and draw(st.booleans()):
        header["__metadata__"]["k"] = draw(_VALUES)
    return header, body


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_headers())
def test_the_header_checks_agree_with_the_safetensors_library(
    tmp_path: Path, drawn: tuple[dict[str, Any], bytes]
) -> None:
    from safetensors import SafetensorError, safe_open

    from hubsync.convert.compare import _parse_header

    path = tmp_path / "h.safetensors"
    path.write_bytes(_build(*drawn))
    try:
        with safe_open(str(path), framework="numpy"):
            library = True
    except SafetensorError:
        library = False
    try:
        _parse_header(path)
        ours = True
    except ValueError:
        ours = False
    assert ours == library, drawn


# -- training state nested 200,000 levels deep -------------------------------------------------------------------

N = 200_000
STATES = {  # the attack's data.pkl for optimizer.pt (mkstate.py), one per case
    "state_deeplist": b"\x80\x02" + b"]" * N + b"a" * (N - 1) + b".",
    "deepdict2": b"\x80\x02" + b"}" + (b"K\x01}" * N) + (b"s" * N) + b".",
}


def hostile_state(tiny_run: Path, root: Path, case: str) -> Path:
    """tiny_run's checkpoint-30 whose optimizer.pt holds the pickle of `case`, its tensor files kept."""
    folder = Path(shutil.copytree(tiny_run / "checkpoint-30", root / case / "checkpoint-30"))
    source = tiny_run / "checkpoint-30" / "optimizer.pt"
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(folder / "optimizer.pt", "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info, STATES[case] if info.filename.endswith("data.pkl") else zin.read(info.filename))
    return folder


@pytest.mark.parametrize("case", sorted(STATES))
def test_deeply_nested_training_state_is_refused_by_name(case: str, tiny_run: Path, tmp_path: Path) -> None:
    from hubsync.convert.state import encode_state, encoded_sizes
    from hubsync.core.errors import UnrepresentableStateError

    folder = hostile_state(tiny_run, tmp_path, case)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnrepresentableStateError, match="nested more than 100 levels deep"):
        encoded_sizes(folder / "optimizer.pt", "c/optimizer.pt")
    with pytest.raises(UnrepresentableStateError, match="nested more than 100 levels deep") as refused:
        encode_state(folder / "optimizer.pt", "c/optimizer.pt", out)
    assert refused.value.path == "c/optimizer.pt" and not list(out.iterdir())


@pytest.mark.parametrize("case", sorted(STATES))
def test_deeply_nested_training_state_is_one_line_before_the_hub_changes(
    case: str, tiny_run: Path, tmp_path: Path, hub: RunningHub, api
) -> None:  # type: ignore[no-untyped-def]
    folder = hostile_state(tiny_run, tmp_path, case)
    for extra in (["--dry-run"], []):
        result = push(hub, str(folder), "--repo", "me/state", "--training-state", "keep", *extra)
        assert result.exit_code == 1, result.output
        (line,) = result.stderr.splitlines()
        assert line.startswith("Error: ")
        assert f"{folder.name}/optimizer.pt holds a structure nested more than 100 levels deep" in line
    assert not api.repo_exists("me/state")


def _shared(depth: int, container: str) -> bytes:
    """A pickle of a few hundred bytes whose one list (or dict) is shared twice a level: 2^depth entries unfolded."""
    import pickle

    shared: Any = [1] if container == "list" else {"k": 1}
    for _ in range(depth):
        shared = [shared, shared] if container == "list" else {"a": shared, "b": shared}
    return pickle.dumps({"state": {}, "param_groups": [{"x": shared}]}, protocol=2)


@pytest.mark.parametrize("container", ["list", "dict"])
def test_a_tiny_state_file_that_shares_one_list_everywhere_is_refused_at_once(
    container: str, tiny_run: Path, tmp_path: Path, hub: RunningHub, api
) -> None:  # type: ignore[no-untyped-def]
    import time

    STATES[f"shared-{container}"] = _shared(60, container)
    try:
        folder = hostile_state(tiny_run, tmp_path, f"shared-{container}")
    finally:
        del STATES[f"shared-{container}"]
    assert (folder / "optimizer.pt").stat().st_size < 20_000
    started = time.monotonic()
    for extra in (["--dry-run"], []):
        result = push(hub, str(folder), "--repo", "me/state", "--training-state", "keep", *extra)
        assert result.exit_code == 1, result.output
        assert "optimizer.pt holds a structure of more than 1,000,000 entries" in result.stderr
    assert time.monotonic() - started < 60  # it hung for ever: 2^60 entries walked one by one
    assert not api.repo_exists("me/state")


# -- two sets of model weights under different names -------------------------------------------------------------


def two_weight_sets(full_run: Path, root: Path, *, same: bool) -> Path:
    """A full fine-tune's model.safetensors, and beside it a pickled set that would convert to other names
    (pytorch_model-00001-of-00001.bin and its index): the same tensors, or zeros."""
    import torch
    from safetensors.torch import load_file

    folder = Path(shutil.copytree(full_run / "checkpoint-10", root / "full" / "checkpoint-10"))
    tensors = load_file(folder / "model.safetensors")
    if not same:
        tensors = {k: torch.zeros_like(v) for k, v in tensors.items()}
    torch.save(tensors, folder / "pytorch_model-00001-of-00001.bin")
    index = {"metadata": {}, "weight_map": dict.fromkeys(tensors, "pytorch_model-00001-of-00001.bin")}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return folder


def test_a_second_set_of_model_weights_that_differs_is_refused(
    full_run: Path, tmp_path: Path, hub: RunningHub, api
) -> None:  # type: ignore[no-untyped-def]
    folder = two_weight_sets(full_run, tmp_path, same=False)
    for extra in (["--dry-run"], []):
        result = push(hub, str(folder), "--repo", "me/full", *BASE, *extra)
        assert result.exit_code == 1, result.output
        (line,) = result.stderr.splitlines()
        assert line.startswith("Error: ") and "Remove the stale file" in line
        assert (
            f"{folder.name}/pytorch_model-00001-of-00001.bin and model.safetensors hold different weights "
            "(the values of "
        ) in line
    assert not api.repo_exists("me/full")


def test_a_second_set_of_the_same_model_weights_is_left_out(
    full_run: Path, tmp_path: Path, hub: RunningHub, api
) -> None:  # type: ignore[no-untyped-def]
    folder = two_weight_sets(full_run, tmp_path, same=True)
    dry = push(hub, str(folder), "--repo", "me/full", *BASE, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "  skip    pytorch_model-00001-of-00001.bin  (" in dry.stdout
    result = push(hub, str(folder), "--repo", "me/full", *BASE)
    assert result.exit_code == 0, result.output
    files = {f.path for f in api.list_repo_tree("me/full", revision="checkpoint-10", recursive=True)}
    assert "model.safetensors" in files
    assert not files & {
        "model-00001-of-00001.safetensors",
        "model.safetensors.index.json",
        "pytorch_model-00001-of-00001.bin",
        "pytorch_model.bin.index.json",
    }
