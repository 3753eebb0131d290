"""FSDP sharded checkpoints as a hostile author writes them, and their pickle-free form as a hostile Hub serves it.

Each refusal happens before the Hub changes and leaves the checkpoint as it was; what cannot be refused is not
published (a link out of the run folder)."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import hub_state, push
from torch.distributed.checkpoint import metadata as dm
from torch.distributed.checkpoint.filesystem import _StorageInfo

from hubsync.convert.dcp import encode_dcp, read_metadata, rebuild_dcp
from hubsync.core.errors import DamagedStateError, UnreadableWeightsError
from hubsync.localhub import RunningHub

FIXTURE = Path(__file__).parent / "fixtures" / "fsdp-sharded" / "run" / "checkpoint-10"
BASE = ("--base-model", "meta-llama/Llama-3.1-8B-Instruct")


def _tree(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(path.relative_to(folder).as_posix().encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _with_model(tmp_path: Path, state: dict[str, Any]) -> Path:
    """The fixture's checkpoint, its model folder saved by torch.distributed.checkpoint from `state`."""
    import torch.distributed.checkpoint as dcp

    checkpoint = Path(shutil.copytree(FIXTURE, tmp_path / "run" / "checkpoint-10"))
    shutil.rmtree(checkpoint / "pytorch_model_fsdp_0")
    with warnings.catch_warnings():  # "torch.distributed is disabled ...": one process, as meant
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=str(checkpoint / "pytorch_model_fsdp_0"), no_dist=True)
    return checkpoint


def _metadata(tmp_path: Path, metadata: dm.Metadata) -> Path:
    path = tmp_path / ".metadata"
    path.write_bytes(pickle.dumps(metadata))  # pickle memoizes what is shared: a few bytes a name
    return path


_PROPS = dm.TensorProperties(dtype=torch.float32)


def test_a_run_folders_adapter_config_linking_outside_is_not_published(
    hub: RunningHub, api: Any, tmp_path: Path
) -> None:
    secret = tmp_path / "elsewhere" / "config.json"
    secret.parent.mkdir()
    secret.write_text('{"auths": {"registry.example.com": {"auth": "c2VjcmV0OnBhc3N3b3Jk"}}}')
    checkpoint = Path(shutil.copytree(FIXTURE, tmp_path / "run" / "checkpoint-10"))
    (tmp_path / "run" / "adapter_config.json").symlink_to("../elsewhere/config.json")
    result = push(hub, str(checkpoint), "--repo", "me/fsdp", *BASE)
    assert result.exit_code == 0, result.output
    assert "--adapter-config FILE" in result.output  # published without a config, and said so
    local = Path(api.snapshot_download("me/fsdp", revision="checkpoint-10", local_dir=tmp_path / "download"))
    assert not (local / "adapter_config.json").exists()
    assert not [p for p in local.rglob("*") if p.is_file() and b"c2VjcmV0" in p.read_bytes()]


def test_a_metadata_sharing_one_list_of_chunks_under_many_names_is_refused_at_once(tmp_path: Path) -> None:
    """11 KB that would unfold into a million chunk records (a thousand times a thousand): 12 s and 600 MB."""
    chunk = dm.ChunkStorageMetadata(offsets=torch.Size([0]), sizes=torch.Size([1]))
    shared = dm.TensorStorageMetadata(_PROPS, torch.Size([1]), [chunk] * 1000)
    path = _metadata(tmp_path, dm.Metadata({f"t{i}": shared for i in range(1000)}, storage_data={}))
    start = time.monotonic()
    with pytest.raises(UnreadableWeightsError, match="unfolds into more items than its"):
        read_metadata(path, "m/.metadata")
    assert time.monotonic() - start < 2


def test_planner_data_sharing_one_path_under_many_names_is_refused(tmp_path: Path) -> None:
    path_of = tuple(f"p{i}" for i in range(1000))
    metadata = dm.Metadata({}, planner_data={f"k{i}": path_of for i in range(2000)}, storage_data={})
    with pytest.raises(UnreadableWeightsError, match="unfolds into more items than its"):
        read_metadata(_metadata(tmp_path, metadata), "m/.metadata")


def test_a_tensor_of_many_chunks_is_read_in_linear_time(tmp_path: Path) -> None:
    """Each stored chunk found among its tensor's chunks by a lookup, not a scan (62 s for 20,000 chunks)."""
    count = 12_000
    chunks = [dm.ChunkStorageMetadata(offsets=torch.Size([i]), sizes=torch.Size([1])) for i in range(count)]
    storage = {dm.MetadataIndex("w", torch.Size([i])): _StorageInfo("__0_0.distcp", i, 1) for i in range(count)}
    tensor = dm.TensorStorageMetadata(_PROPS, torch.Size([count]), chunks)
    path = _metadata(tmp_path, dm.Metadata({"w": tensor}, storage_data=storage))
    start = time.monotonic()
    assert len(read_metadata(path, "m/.metadata").entries) == count
    assert time.monotonic() - start < 12


def test_entries_that_share_bytes_are_refused_before_the_hub_changes(hub: RunningHub, api: Any, tmp_path: Path) -> None:
    """Many names read from one entry's bytes would publish them as many times (a 64 MB file as terabytes)."""
    checkpoint = _with_model(tmp_path, {"model": {"a": torch.ones(64), "b": torch.full((64,), 2.0)}})
    path = checkpoint / "pytorch_model_fsdp_0" / ".metadata"
    metadata = pickle.loads(path.read_bytes())  # the test's own file
    keys = {k.fqn: k for k in metadata.storage_data}
    metadata.storage_data[keys["model.b"]] = metadata.storage_data[keys["model.a"]]
    path.write_bytes(pickle.dumps(metadata))
    before, tree = hub_state(api), _tree(checkpoint)
    result = push(hub, str(checkpoint), "--repo", "me/fsdp", *BASE)
    assert result.exit_code == 1, result.output
    assert "share bytes of __0_0.distcp" in result.output and "Traceback" not in result.output
    assert hub_state(api) == before and _tree(checkpoint) == tree


def test_a_tensor_named_as_the_safetensors_header_is_refused_before_the_hub_changes(
    hub: RunningHub, api: Any, tmp_path: Path
) -> None:
    checkpoint = _with_model(tmp_path, {"model": {"__metadata__": torch.ones(2)}})
    before, tree = hub_state(api), _tree(checkpoint)
    result = push(hub, str(checkpoint), "--repo", "me/fsdp", *BASE)
    assert result.exit_code == 1, result.output
    assert "a tensor named __metadata__" in result.output and "Traceback" not in result.output
    assert hub_state(api) == before and _tree(checkpoint) == tree


def test_an_adapter_config_that_never_ends_is_refused(hub: RunningHub, api: Any, tmp_path: Path) -> None:
    checkpoint = Path(shutil.copytree(FIXTURE, tmp_path / "run" / "checkpoint-10"))
    before = hub_state(api)
    result = push(hub, str(checkpoint), "--repo", "me/fsdp", "--adapter-config", "/dev/zero", *BASE)
    assert result.exit_code == 1 and "larger than 64 MiB" in result.output, result.output
    assert hub_state(api) == before


@pytest.mark.parametrize(
    ("tensor", "said"),
    [
        (lambda t: t.to(torch.bfloat16), "not the dtype, offset and shape described"),
        (lambda t: t[:1].clone(), "not the dtype, offset and shape described"),
    ],
    ids=["dtype", "shape"],
)
def test_pull_refuses_a_tensor_that_is_not_the_one_described(tmp_path: Path, tensor: Any, said: str) -> None:
    """A hostile Hub's safetensors whose tensor is not what dcp.json describes: DCP would load it cast, or fail
    only when the run resumes."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "pytorch_model_fsdp_0"
    out.mkdir()
    encode_dcp(FIXTURE / "pytorch_model_fsdp_0", "pytorch_model_fsdp_0", out)
    tensors = load_file(out / "__0_0.safetensors")
    first = sorted(tensors)[0]
    save_file({**tensors, first: tensor(tensors[first])}, out / "__0_0.safetensors")
    assert json.loads((out / "dcp.json").read_text())["format"] == "hubsync-dcp"
    with pytest.raises(DamagedStateError, match=said):
        rebuild_dcp(out / "dcp.json")
    assert sorted(p.name for p in out.iterdir()) == ["__0_0.safetensors", "dcp.json"]


def _extra_file(doc: dict[str, Any]) -> None:
    doc["files"]["__7_0.distcp"] = []


def _chunks_outside(doc: dict[str, Any]) -> None:
    for spec in doc["tensors"].values():
        if len(spec["size"]) == 2:
            spec["size"] = [1, 1]


def _no_files(doc: dict[str, Any]) -> None:
    doc["files"] = {}


def _huge(doc: dict[str, Any]) -> None:
    for spec in doc["tensors"].values():
        if len(spec["size"]) == 2:
            spec["size"] = [2**62, 2**62]


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (_extra_file, "it names __7_0.distcp, whose tensors (__7_0.safetensors) the revision does not hold"),
        (_chunks_outside, "do not make the whole tensor of its size"),
        (_no_files, "dcp.json names no __0_0.distcp"),
        (_huge, "do not make the whole tensor of its size"),
    ],
    ids=["a-file-not-there", "chunks-outside", "no-files", "huge-sizes"],
)
def test_pull_refuses_a_dcp_document_that_would_rebuild_metadata_dcp_cannot_load(
    tmp_path: Path, edit: Any, said: str
) -> None:
    """A hostile Hub's dcp.json, consistent in itself, that would rebuild a .metadata hubsync's own reader refuses
    (and DCP fails on only when the run resumes): refused, nothing left, no local path in the message."""
    out = tmp_path / "optimizer_0"
    out.mkdir()
    encode_dcp(FIXTURE / "optimizer_0", "optimizer_0", out)
    doc = json.loads((out / "dcp.json").read_text())
    edit(doc)
    (out / "dcp.json").write_text(json.dumps(doc))
    with pytest.raises(DamagedStateError, match=re.escape(said)) as refused:
        rebuild_dcp(out / "dcp.json")
    assert str(tmp_path) not in str(refused.value) and "/tmp" not in str(refused.value)
    assert sorted(p.name for p in out.iterdir()) == ["__0_0.safetensors", "dcp.json"]


def test_a_file_named_latest_beside_fsdp_state_leaves_it_fsdp() -> None:
    """A stray `latest` (DeepSpeed's name for the newest tag) made an FSDP checkpoint read as DeepSpeed's without
    a global_step folder: not resumable, on push and on ls and pull."""
    from test_fsdp_sharded import FSDP_FILES

    from hubsync.core.conversion import is_resumable
    from hubsync.core.layouts import state_layout

    names = FSDP_FILES | {"latest"}
    assert state_layout(names).describe() == "FSDP sharded state, 1 rank"  # type: ignore[union-attr]
    assert is_resumable(names)


def test_a_distcp_entry_of_a_deflated_pickle_is_refused_unread(tmp_path: Path) -> None:
    """torch.save() stores its records; a deflated data.pkl of 8 KB holds 8 million opcodes (12 s to read), once
    an entry: a .distcp of a thousand such entries would take hours."""
    import io
    import zipfile

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + b"N0" * 500_000 + b"N.")  # None, pop, ...: None
        z.writestr(zipfile.ZipInfo("archive/byteorder"), b"little")
    data = archive.getvalue()
    folder = tmp_path / "optimizer_0"
    folder.mkdir()
    (folder / "__0_0.distcp").write_bytes(data)
    storage = {dm.MetadataIndex("v"): _StorageInfo("__0_0.distcp", 0, len(data))}
    (folder / ".metadata").write_bytes(
        pickle.dumps(dm.Metadata({"v": dm.BytesStorageMetadata()}, storage_data=storage))
    )
    with pytest.raises(UnreadableWeightsError, match=r"'archive/data\.pkl' is compressed, which torch\.save"):
        encode_dcp(folder, "optimizer_0", tmp_path)


@pytest.mark.parametrize("name", ["optimizer_0/dcp.json", "optimizer_0/__0_0.safetensors"])
def test_a_file_under_a_name_hubsync_makes_is_refused_before_the_hub_changes(
    hub: RunningHub, api: Any, tmp_path: Path, name: str
) -> None:
    checkpoint = Path(shutil.copytree(FIXTURE, tmp_path / "run" / "checkpoint-10"))
    (checkpoint / name).write_bytes(b'{"mine": true}')
    before, tree = hub_state(api), _tree(checkpoint)
    result = push(hub, str(checkpoint), "--repo", "me/fsdp", "--training-state", "keep", *BASE)
    assert result.exit_code == 1
    assert f'refused "{name}" in …/run/checkpoint-10: it has the name of the file hubsync makes from' in result.stderr
    assert result.stderr.count("\n") == 1
    assert hub_state(api) == before and _tree(checkpoint) == tree


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda m: {k: "../" + v for k, v in m.items()}, "not a shard of __0_0"),
        (lambda m: {k: "__1_0-" + v.split("-", 1)[1] for k, v in m.items()}, "not a shard of __0_0"),
        (lambda m: {**m, sorted(m)[0]: next(v for v in m.values() if v != m[sorted(m)[0]])}, "puts elsewhere"),
        (None, "total_size"),
    ],
    ids=["outside", "another-rank", "wrong-shard", "total-size"],
)
def test_a_hostile_index_of_a_ranks_shards_is_refused_and_nothing_placed(
    hub: RunningHub, api: Any, tmp_path: Path, change: Any, said: str
) -> None:
    """A Hub serves an index of a .distcp file's shards that names a shard elsewhere, a tensor in another shard
    than the one holding it, or another total size: one line, and nothing of the checkpoint is placed."""
    from click.testing import CliRunner

    from hubsync.cli import cli

    checkpoint = Path(shutil.copytree(FIXTURE, tmp_path / "run" / "checkpoint-10"))
    result = push(
        hub, str(checkpoint), "--repo", "me/fsdp", "--training-state", "keep", "--max-shard-size", "10KB", *BASE
    )
    assert result.exit_code == 0, result.output
    name = "optimizer_0/__0_0.safetensors.index.json"
    index = json.loads(Path(api.hf_hub_download("me/fsdp", name, revision="checkpoint-10")).read_text())
    if change is None:
        index["metadata"]["total_size"] += 4
    else:
        index["weight_map"] = change(index["weight_map"])
    api.upload_file(
        path_or_fileobj=json.dumps(index).encode(), path_in_repo=name, repo_id="me/fsdp", revision="checkpoint-10"
    )
    out = tmp_path / "pulled"
    pulled = CliRunner().invoke(
        cli,
        ["pull", "me/fsdp", "--revision", "checkpoint-10", "--to", str(out)],
        env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token},
    )
    assert pulled.exit_code == 1, pulled.output
    assert said in pulled.output and "Traceback" not in pulled.output, pulled.output
    assert len(pulled.stderr.strip().splitlines()) == 1, pulled.stderr
    assert not (out / "checkpoint-10").exists()
