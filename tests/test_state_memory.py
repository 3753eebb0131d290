"""Rebuilding training state on pull keeps memory flat: optimizer.pt is written by torch.save from tensors that view
a memory map of its .safetensors file, so the process's anonymous memory does not grow with the file."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hubsync.convert.state import encode_state, load_tensor_files, rebuild_state
from hubsync.core.errors import DamagedStateError


def _adamw_state(sizes: list[int]) -> dict[str, object]:
    """A real AdamW state_dict (exp_avg, exp_avg_sq in fp32, a step per parameter) after one step."""
    params = [torch.nn.Parameter(torch.randn(n)) for n in sizes]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    return optimizer.state_dict()


def test_a_rebuilt_adamw_state_loads_equal_to_the_original(tmp_path: Path) -> None:
    original = _adamw_state([1000, 37, 1])
    torch.save(original, tmp_path / "optimizer.pt")
    out = tmp_path / "out"
    out.mkdir()
    encode_state(tmp_path / "optimizer.pt", "optimizer.pt", out)
    loaded = torch.load(rebuild_state(out / "optimizer.json"), weights_only=True)  # in the test only
    assert loaded["param_groups"] == original["param_groups"]
    assert loaded["state"].keys() == original["state"].keys()
    for index, moments in original["state"].items():
        for key, value in moments.items():
            assert torch.equal(loaded["state"][index][key], value), (index, key)


def _rss_anon_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def test_rebuilding_a_300_mb_optimizer_state_keeps_anonymous_memory_flat(tmp_path: Path) -> None:
    state = {"state": {i: {"exp_avg": torch.randn(7_500_000), "exp_avg_sq": torch.rand(7_500_000)} for i in range(5)}}
    state["param_groups"] = [{"lr": 0.1, "params": list(range(5))}]
    torch.save(state, tmp_path / "optimizer.pt")
    del state
    out = tmp_path / "out"
    out.mkdir()
    encode_state(tmp_path / "optimizer.pt", "optimizer.pt", out)
    assert (out / "optimizer.safetensors").stat().st_size > 290_000_000
    # The child says when torch is imported (its baseline), then rebuilds; this process polls its RssAnon.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys, torch
                from pathlib import Path
                from hubsync.convert.state import rebuild_state
                print("ready", flush=True)
                sys.stdin.readline()
                rebuild_state(Path(sys.argv[1]))
                """
            ),
            str(out / "optimizer.json"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline() == "ready\n"
    baseline = _rss_anon_kb(child.pid)
    assert baseline is not None
    child.stdin.write("\n")
    child.stdin.flush()
    peak = baseline
    while child.poll() is None:
        peak = max(peak, _rss_anon_kb(child.pid) or 0)
        time.sleep(0.002)
    assert child.returncode == 0
    assert (out / "optimizer.pt").stat().st_size > 290_000_000
    grown_mb = (peak - baseline) / 1024
    assert grown_mb < 48, f"anonymous memory grew by {grown_mb:.0f} MB while rebuilding a 300 MB file"


def test_the_converted_files_sha256_comes_from_verifying_them_and_is_used_only_while_they_stay_the_same(
    tmp_path: Path,
) -> None:
    import hashlib

    from hubsync.files import KnownDigest, hash_file
    from hubsync.hub.client import _addition

    torch.save(_adamw_state([4096, 3]), tmp_path / "optimizer.pt")
    out = tmp_path / "out"
    out.mkdir()
    digests: dict[Path, KnownDigest] = {}
    encode_state(
        tmp_path / "optimizer.pt", "optimizer.pt", out, digest=lambda p, h: digests.update({p: KnownDigest.seal(p, h)})
    )
    assert set(digests) == {out / "optimizer.json", out / "optimizer.safetensors"}
    for path, known in digests.items():
        assert known.sha256 == hash_file(path, hashlib.sha256())[0]
    tensors = out / "optimizer.safetensors"
    operation = _addition(tensors, "optimizer.safetensors", digests)
    assert operation.upload_info.is_hashed and operation.upload_info.sha256.hex() == digests[tensors].sha256
    tensors.chmod(0o644)
    with tensors.open("r+b") as f:  # changed after hashing: huggingface_hub hashes it itself
        f.seek(-1, 2)
        f.write(b"\x01")
    assert not _addition(tensors, "optimizer.safetensors", digests).upload_info.is_hashed


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=4).map(lambda dims: [0, *dims]), st.permutations(range(5))
)
def test_a_hostile_shape_of_no_bytes_is_a_damaged_file_never_a_crash(shape: list[int], order: list[int]) -> None:
    shape = [shape[i] for i in order if i < len(shape)]  # the zero anywhere
    header = json.dumps(
        {
            "empty": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]},
            "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        }
    ).encode()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "optimizer.safetensors"
        path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
        try:
            tensors = load_tensor_files([path])
        except DamagedStateError as exc:
            said = str(exc)
            assert said.startswith("cannot rebuild the training state from optimizer.safetensors: ValueError: ")
            assert "shape torch cannot hold" in said or "overflow computing buffer size" in said
        else:  # a shape torch can make: an empty tensor of exactly that shape
            assert list(tensors["empty"].shape) == shape and tensors["empty"].numel() == 0
