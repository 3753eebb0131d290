"""A dry run refuses the pickled weights a push would refuse (issue 15): the same read-only checks as conversion
(the archive rule, the restricted pickle, the tensor bounds), with the same one line, before the Hub changes."""

from __future__ import annotations

import io
import shutil
import struct
import time
import warnings
import zipfile
from pathlib import Path

import pytest
from conftest import push
from huggingface_hub import HfApi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsync.convert import check_weights, convert_weights
from hubsync.core.checkpoint import read_checkpoint
from hubsync.core.conversion import plan_conversion
from hubsync.core.errors import HubsyncError
from hubsync.localhub import RunningHub

BASE = ["--base-model", "hubsync/tiny-random-llama"]


def _entries(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        warnings.simplefilter("ignore")  # "Duplicate name": what the test means to write
        for name, body in entries:
            z.writestr(name, body)
    return buf.getvalue()


def duplicate_entry(good: bytes, which: int = 0, before: bool = False, fill: int = 0x7F) -> bytes:
    """One storage entry twice, other bytes in one of them: torch (miniz) takes the last, a local-header reader
    the first."""
    entries = _entries(good)
    storages = [i for i, (name, _) in enumerate(entries) if "/data/" in name]
    at = storages[which % len(storages)]
    name, body = entries[at]
    entries.insert(at if before else at + 1, (name, bytes([fill]) * len(body)))
    return _zip(entries)


def _s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _ints(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(b"\x8a\x08" + v.to_bytes(8, "little") for v in values) + b"t"


def strided(shape: tuple[int, ...], stride: tuple[int, ...], numel: int = 1) -> bytes:
    """A state dict of one float tensor over `numel` floats of storage, read through `stride`."""
    pkl = b"\x80\x02}" + _s("w") + b"ctorch._utils\n_rebuild_tensor_v2\n((" + _s("storage")
    pkl += b"ctorch\nFloatStorage\n" + _s("0") + _s("cpu") + b"J" + struct.pack("<i", numel) + b"tQJ\x00\x00\x00\x00"
    pkl += _ints(shape) + _ints(stride) + b"\x89ccollections\nOrderedDict\n)RtRs."
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", bytes(4 * numel))
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def stride_zero() -> bytes:
    """One float of storage read as 2^42 floats through a stride of 0: a conversion would write 16 TiB."""
    return strided((1 << 42,), (0,))


def hostile_bin(bin_run: Path, root: Path, make: str) -> Path:
    folder = Path(shutil.copytree(bin_run / "checkpoint-10", root / "run" / "checkpoint-10"))
    weights = folder / "adapter_model.bin"
    weights.write_bytes(duplicate_entry(weights.read_bytes()) if make == "duplicate_entry" else stride_zero())
    return folder


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("duplicate_entry", "adapter_model/data/0' twice (readers would disagree"),
        ("stride_zero", "tensor w has more elements than its storage holds (a stride of 0"),
    ],
)
def test_a_dry_run_refuses_the_weights_a_push_refuses_with_the_same_line(
    case: str, said: str, bin_run: Path, tmp_path: Path, hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    hostile_bin(bin_run, tmp_path, case)
    lines = []
    for extra in (["--dry-run"], []):
        started = time.monotonic()
        result = push(hub, "run/checkpoint-10", "--repo", "me/hostile", *BASE, *extra)
        assert time.monotonic() - started < 10
        assert result.exit_code == 1, result.output
        assert result.stdout == ""  # no plan printed: nothing says "about 51.5 KB"
        (line,) = result.stderr.splitlines()
        assert line.startswith("Error: cannot convert run/checkpoint-10/adapter_model.bin: ") and said in line
        lines.append(line)
    assert lines[0] == lines[1]
    assert not api.repo_exists("me/hostile")
    assert not (tmp_path / "run" / "checkpoint-10" / "adapter_model.safetensors").exists()


def test_a_dry_run_of_good_pickled_weights_still_prints_the_plan(bin_run: Path, hub: RunningHub, api: HfApi) -> None:
    result = push(hub, str(bin_run / "checkpoint-10"), "--repo", "me/good", *BASE, "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "adapter_model.safetensors  (converted from adapter_model.bin" in result.stdout
    assert not api.repo_exists("me/good")


@st.composite
def hostile_weights(draw: st.DrawFn, good: bytes) -> bytes:
    if draw(st.booleans()):
        return duplicate_entry(good, draw(st.integers(0, 20)), draw(st.booleans()), draw(st.integers(0, 255)))
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(0, 1 << 40)) for _ in range(ndim))
    stride = tuple(draw(st.sampled_from([0, 1, 2, 3, 1 << 20, (1 << 63) - 1])) for _ in range(ndim))
    return strided(shape, stride, draw(st.integers(1, 16)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_check_refuses_exactly_what_conversion_refuses_and_writes_nothing(
    data: st.DataObject, bin_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("drawn")
    folder = Path(shutil.copytree(bin_run / "checkpoint-10", root / "checkpoint-10"))
    weights = folder / "adapter_model.bin"
    weights.write_bytes(data.draw(hostile_weights((bin_run / "checkpoint-10" / "adapter_model.bin").read_bytes())))
    checkpoint = read_checkpoint(folder)
    plan = plan_conversion(checkpoint)
    before = sorted(p.name for p in folder.iterdir())
    checked = converted = None
    try:
        check_weights(checkpoint, plan)
    except HubsyncError as exc:
        checked = str(exc)
    assert sorted(p.name for p in folder.iterdir()) == before
    out = root / "out"
    out.mkdir()
    try:
        convert_weights(checkpoint, plan, out)
    except HubsyncError as exc:
        converted = str(exc)
    assert checked == converted
    if checked is not None:
        assert list(out.iterdir()) == []  # conversion refused before it wrote, as the check did
