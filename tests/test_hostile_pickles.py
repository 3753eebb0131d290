"""Hostile pickles in every pickle file hubsync reads, through every command that meets them.

Each payload would run code when unpickled (a test below proves it: plain `pickle.loads` creates the marker
file). Put in place of adapter_model.bin, pytorch_model.bin, a pytorch_model shard, optimizer.pt, scheduler.pt,
rng_state.pth or training_args.bin, as a torch.save() zip archive and as a raw (legacy) pickle, and run through
convert, card, push (--dry-run, --training-state keep and drop, --training-state-format pickle) and pull, the
marker never appears; where hubsync refuses, it says so in one line that names the file and the next step.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import pickle
import shutil
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import torch
from click.testing import CliRunner, Result
from conftest import local_hub
from huggingface_hub import HfApi

from hubsync.cli import cli
from hubsync.localhub import RunningHub

# -- payloads: each runs `touch MARKER` (or the like) when unpickled ---------------------------------------------


def _by_reduce(call: Callable[..., Any], *args: Any) -> bytes:
    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (call, args)

    return pickle.dumps(Payload(), protocol=2)


def _payloads(marker: Path) -> dict[str, bytes]:
    m = str(marker)
    touch = f"open({m!r}, 'w').close()"
    inner = _by_reduce(exec, touch)
    return {
        # __reduce__ to os.system: GLOBAL posix.system + REDUCE
        "reduce_os_system": _by_reduce(os.system, f"touch '{m}'"),
        # builtins.exec of Python source
        "reduce_exec": _by_reduce(exec, touch),
        # another module's function: subprocess.call(["touch", marker])
        "reduce_subprocess": _by_reduce(subprocess.call, ["touch", m]),
        # protocol 0 INST: instantiates os.system with the arguments after MARK
        "inst_opcode": b"(S'touch " + m.encode() + b"'\nios\nsystem\n.",
        # protocol 1 OBJ: MARK, the callable, its arguments, OBJ
        "obj_opcode": b"(cos\nsystem\nS'touch " + m.encode() + b"'\no.",
        # protocol 4 STACK_GLOBAL builtins.exec
        "stack_global_exec": b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93"
        + b"\x8c"
        + bytes([len(touch)])
        + touch.encode()
        + b"\x85R.",
        # a Python 2 module name that the standard unpickler maps to builtins
        "py2_builtin_eval": b'c__builtin__\neval\n(S"' + f"__import__('os').system('touch {m}')".encode() + b'"\ntR.',
        # a gadget in an allowed-looking package: numpy's test helper that exec()s a string
        "numpy_runstring": b'cnumpy.testing._private.utils\nrunstring\n(S"' + touch.encode() + b'"\n}tR.',
        # a pickle that unpickles another one
        "nested_pickle_loads": b"cpickle\nloads\n(C" + bytes([len(inner)]) + inner + b"tR.",
        # what torch.save() writes for a state dict with one hostile value among real tensors
        "inside_state_dict": b"",  # made by torch.save below
    }


PAYLOAD_KINDS = list(_payloads(Path("/m")))
CONTAINERS = ["torch_zip", "raw_pickle"]


class _WouldRunCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch '{self.marker}'",))


def hostile_file(kind: str, container: str, marker: Path) -> bytes:
    if kind == "inside_state_dict":
        buf = io.BytesIO()
        state = {"w": torch.zeros(3), "evil": _WouldRunCode(marker)}
        torch.save(state, buf, _use_new_zipfile_serialization=container == "torch_zip")
        return buf.getvalue()
    data = _payloads(marker)[kind]
    if container == "raw_pickle":
        return data
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:  # the layout torch.save() writes
        archive.writestr("archive/data.pkl", data)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
    return buf.getvalue()


@pytest.mark.parametrize("kind", PAYLOAD_KINDS)
def test_each_payload_really_runs_code_when_unpickled(kind: str, tmp_path: Path) -> None:
    """What makes the other tests mean something: an ordinary unpickler runs every one of these payloads."""
    for container in CONTAINERS:
        marker = tmp_path / f"MARKER-{container}"
        data = hostile_file(kind, container, marker)
        if kind == "inside_state_dict":
            torch.load(io.BytesIO(data), weights_only=False)
        elif container == "torch_zip":
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                pickle.loads(archive.read("archive/data.pkl"))
        else:
            pickle.loads(data)
        assert marker.exists(), (kind, container)


# -- the checkpoints -------------------------------------------------------------------------------------------------

WEIGHT_FILES = ["adapter_model.bin", "pytorch_model.bin", "pytorch_model-00001-of-00002.bin"]
STATE_FILES = ["optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth", "rng_state_1.pth"]
ALL_FILES = [*WEIGHT_FILES, *STATE_FILES, "training_args.bin"]
CASES = list(itertools.product(ALL_FILES, PAYLOAD_KINDS, CONTAINERS))


@pytest.fixture(scope="module")
def module_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    with local_hub(tmp_path_factory.mktemp("hostile-hub") / "root") as running:
        yield running


_repos = itertools.count()


def hostile_checkpoint(tiny_run: Path, root: Path, name: str, data: bytes) -> Path:
    """A copy of the real run's last checkpoint, with `name` holding `data` (and what makes it the file hubsync
    reads: no safetensors twin for pickled weights, the other shard and the index for a shard)."""
    ckpt = Path(shutil.copytree(tiny_run / "checkpoint-30", root / "run" / "checkpoint-30"))
    if name == "adapter_model.bin":
        (ckpt / "adapter_model.safetensors").unlink()
    if name.startswith("pytorch_model-"):
        torch.save({"b": torch.ones(2)}, ckpt / "pytorch_model-00002-of-00002.bin")
        index = {"metadata": {}, "weight_map": {"a": name, "b": "pytorch_model-00002-of-00002.bin"}}
        (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (ckpt / name).write_bytes(data)
    return ckpt


def run(hub: RunningHub, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token})


def assert_works(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr


def assert_refused(result: Result, shown: str) -> None:
    """Exit 1, one line on stderr that names the file (relative) and says what to do next; no traceback."""
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, (result.exception, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("Error: ") and lines[0].endswith("."), lines[0]
    assert shown in lines[0], lines[0]
    assert "could run code" in lines[0] or "Check that the file is complete" in lines[0], lines[0]


@pytest.mark.parametrize(("name", "kind", "container"), CASES)
def test_a_hostile_pickle_never_runs(
    name: str,
    kind: str,
    container: str,
    tiny_run: Path,
    module_hub: RunningHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    data = hostile_file(kind, container, marker)
    ckpt = hostile_checkpoint(tiny_run, tmp_path, name, data)
    folder, shown = "run/checkpoint-30", f"run/checkpoint-30/{name}"
    repo = f"me/hostile-{next(_repos)}"
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    hub = module_hub

    # Every command that opens the file: those that need its contents refuse it, the others carry on.
    card = run(hub, "card", folder)
    dry = run(hub, "push", folder, "--repo", repo, "--dry-run", "--training-state", "keep")
    assert_works(card)
    if name in STATE_FILES or name in WEIGHT_FILES:  # the dry run reads what the push converts, as the push would
        assert_refused(dry, shown)
    else:
        assert_works(dry)
    if name in WEIGHT_FILES:
        assert_refused(run(hub, "convert", folder, "-o", "converted"), shown)
        assert not (tmp_path / "converted").exists()
        assert_refused(run(hub, "push", folder, "--repo", repo), shown)
    elif name in STATE_FILES:
        assert_refused(run(hub, "push", folder, "--repo", repo, "--training-state", "keep"), shown)
        assert_works(run(hub, "convert", folder, "-o", "converted"))  # nothing to convert; state never copied
        if (kind, container) == ("inside_state_dict", "torch_zip"):  # pushes that do not open it: once per file
            assert_works(run(hub, "push", folder, "--repo", repo, "--training-state", "drop"))
            assert_works(
                run(
                    hub, "push", folder, "--repo", repo, "--training-state", "keep", "--training-state-format", "pickle"
                )
            )
    else:  # training_args.bin is read as plain data by every command, and never refuses a push
        assert_works(run(hub, "convert", folder, "-o", "converted"))
        kept = run(hub, "push", folder, "--repo", repo, "--training-state", "keep", "--json")
        assert_works(kept)
        assert "training_args.bin" not in {f["path"] for f in json.loads(kept.stdout)["plans"][0]["files"]}

    assert not marker.exists()
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before  # the checkpoint is never modified
    if name in (*WEIGHT_FILES, *STATE_FILES) and (kind, container) != ("inside_state_dict", "torch_zip"):
        assert not HfApi(endpoint=hub.endpoint, token=hub.token).repo_exists(repo)  # refused before the Hub


@pytest.mark.parametrize("container", CONTAINERS)
def test_pulling_a_revision_of_hostile_pickles_runs_none(
    container: str, tiny_run: Path, module_hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revision that someone pushed by hand, with every pickle file hostile: pull only downloads and hashes
    them, so nothing runs, and the files land byte for byte."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    ckpt = Path(shutil.copytree(tiny_run / "checkpoint-30", tmp_path / "src" / "checkpoint-30"))
    for name, kind in zip(ALL_FILES, itertools.cycle(PAYLOAD_KINDS), strict=False):
        (ckpt / name).write_bytes(hostile_file(kind, container, marker))
    repo = f"me/hostile-pull-{container.replace('_', '-')}"
    api = HfApi(endpoint=module_hub.endpoint, token=module_hub.token)
    api.create_repo(repo, private=True)
    api.create_branch(repo, branch="checkpoint-30")
    api.upload_folder(repo_id=repo, folder_path=ckpt, revision="checkpoint-30")

    result = run(module_hub, "pull", repo, "--to", "pulled")

    assert_works(result)
    pulled = tmp_path / "pulled" / "checkpoint-30"
    for name in ALL_FILES:
        assert (pulled / name).read_bytes() == (ckpt / name).read_bytes(), name
    assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [("torch", "float32"), ("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict"), ("numpy", "dtype")],
)
def test_a_pickle_cannot_change_the_readers_own_objects(module: str, name: str, tmp_path: Path) -> None:
    """BUILD on an allowed global would set attributes on the stand-in that every later read in the process
    shares (a hostile file could change how the next file is read). It is refused as malformed."""
    from hubsync.convert.torchzip import read_torch_archive
    from hubsync.core.errors import UnreadableWeightsError

    poison = (
        f"c{module}\n{name}\n".encode()
        + b"}X\x05\x00\x00\x00dtypeX\x06\x00\x00\x00poisonsX\x05\x00\x00\x00buildK\x01sb."
    )
    with zipfile.ZipFile(tmp_path / "poison.bin", "w") as archive:
        archive.writestr("archive/data.pkl", poison)
        archive.writestr("archive/version", "3\n")  # torch refuses an archive without one
    for state in (True,) if module == "numpy" else (False, True):  # numpy: training state only
        with pytest.raises(UnreadableWeightsError, match="change one of the reader's own objects"):
            read_torch_archive(tmp_path / "poison.bin", "poison.bin", state=state)

    torch.save({"w": torch.arange(4, dtype=torch.float32)}, tmp_path / "fine.bin")
    archive = read_torch_archive(tmp_path / "fine.bin", "fine.bin")
    assert archive.tensors["w"].dtype.name == "F32" and archive.tensors["w"].shape == (4,)
