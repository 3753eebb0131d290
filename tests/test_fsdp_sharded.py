"""A real FSDP2 SHARDED_STATE_DICT checkpoint (tests/fixtures/fsdp-sharded, made on a GPU: its README says how).

Its torch.distributed.checkpoint folders (pytorch_model_fsdp_0/, optimizer_0/: a `.metadata` pickle and one
`__<rank>_0.distcp` a rank) are pushed pickle-free (dcp.json + __<rank>_0.safetensors) and written back by pull,
where torch.distributed.checkpoint loads from them what it loads from the fixture's."""

from __future__ import annotations

import contextlib
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from conftest import push
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_state import same
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from hubsync.cli import cli
from hubsync.convert.dcp import encode_dcp, read_metadata, rebuild_dcp
from hubsync.core.errors import HubsyncError, UnreadableWeightsError
from hubsync.localhub import RunningHub

FIXTURE = Path(__file__).parent / "fixtures" / "fsdp-sharded" / "run" / "checkpoint-10"
MODEL_METADATA = FIXTURE / "pytorch_model_fsdp_0" / ".metadata"
OPTIMIZER_METADATA = FIXTURE / "optimizer_0" / ".metadata"
BASE = ("--base-model", "meta-llama/Llama-3.1-8B-Instruct")  # make_run.py names it in the model config only


def _cli(hub: RunningHub, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(
        cli, list(args), catch_exceptions=False, env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    )


def dcp_state(folder: Path, tmp_path: Path) -> Any:
    """What torch.distributed.checkpoint loads from a folder, on CPU without a process group."""
    out = tmp_path / f"loaded-{len(list(tmp_path.glob('loaded-*')))}.pt"
    dcp_to_torch_save(folder, out)
    return torch.load(out, weights_only=False)


def test_the_metadata_is_read_without_running_it() -> None:
    model = read_metadata(MODEL_METADATA, "model/.metadata")
    assert len(model.tensors) == 8 and not model.values
    assert {e.file for e in model.entries} == {"__0_0.distcp"}
    spec = model.tensors["model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    assert spec["dtype"] == "float32" and spec["size"] == [8, 64]
    optimizer = read_metadata(OPTIMIZER_METADATA, "optimizer/.metadata")
    assert "optimizer.param_groups.0.lr" in optimizer.values
    assert optimizer.storage_meta is not None and "checkpoint_id" not in optimizer.storage_meta  # a local path


class _Foreign:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("ran",))


@pytest.mark.parametrize(
    "payload",
    [pickle.dumps(_Foreign()), pickle.dumps({"a": 1}), b"", pickle.dumps(b"x" * 10)[:-1], b"\x80\x04garbage"],
    ids=["foreign-class", "not-metadata", "empty", "truncated", "garbage"],
)
def test_a_hostile_metadata_is_refused(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / ".metadata"
    path.write_bytes(payload)
    with pytest.raises(UnreadableWeightsError, match=r"cannot read the weights in m/\.metadata"):
        read_metadata(path, "m/.metadata")


def test_a_metadata_naming_another_class_is_refused(tmp_path: Path) -> None:
    data = OPTIMIZER_METADATA.read_bytes().replace(b"\x8c\x0bStorageMeta", b"\x8c\x0bsubprocess_")
    path = tmp_path / ".metadata"
    path.write_bytes(data)
    with pytest.raises(UnreadableWeightsError, match="subprocess_"):
        read_metadata(path, "m/.metadata")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 14923), flip=st.integers(0, 14923), byte=st.integers(0, 255))
def test_a_damaged_metadata_is_refused_or_read_never_run(tmp_path: Path, cut: int, flip: int, byte: int) -> None:
    data = bytearray(OPTIMIZER_METADATA.read_bytes())
    data[flip % len(data)] = byte
    path = tmp_path / ".metadata"
    for candidate in (bytes(data[:cut]), bytes(data)):
        path.write_bytes(candidate)
        with contextlib.suppress(HubsyncError):  # refused, or read: anything else fails the test
            read_metadata(path, "m/.metadata")


def test_a_folder_rebuilt_from_its_pickle_free_form_loads_the_same(tmp_path: Path) -> None:
    for name in ("pytorch_model_fsdp_0", "optimizer_0"):
        out = tmp_path / name
        out.mkdir()
        assert encode_dcp(FIXTURE / name, name, out) == ["dcp.json", "__0_0.safetensors"]
        rebuild_dcp(out / "dcp.json")
        assert same(dcp_state(FIXTURE / name, tmp_path), dcp_state(out, tmp_path))


def test_an_fsdp_sharded_checkpoint_round_trips_pickle_free(hub: RunningHub, api: Any, tmp_path: Path) -> None:
    checkpoint = Path(shutil.copytree(FIXTURE, tmp_path / "run" / "checkpoint-10"))
    result = push(hub, str(checkpoint), "--repo", "me/fsdp", "--training-state", "keep", *BASE, "--json")
    assert result.exit_code == 0, result.output
    published = set(api.list_repo_files("me/fsdp", revision="checkpoint-10"))
    tree = [f for f in api.list_repo_tree("me/fsdp", revision="checkpoint-10", recursive=True) if hasattr(f, "size")]
    pushed = json.loads(result.stdout)["results"][0]
    # what the push reports is what the Hub holds (the converted files measured, not the dry run's estimates)
    assert pushed["bytes"] == sum(f.size for f in tree if f.path != ".gitattributes"), (pushed, tree)
    assert {"pytorch_model_fsdp_0/dcp.json", "optimizer_0/__0_0.safetensors", "scheduler.json"} <= published
    assert not [p for p in published if p.endswith((".distcp", ".metadata", ".pt", ".pth", ".bin"))]
    listed = _cli(hub, "ls", "me/fsdp")
    assert listed.exit_code == 0 and "yes (FSDP sharded state, 1 rank)" in listed.output, listed.output
    result = _cli(hub, "pull", "me/fsdp", "--revision", "checkpoint-10", "--to", str(tmp_path / "pulled"))
    assert result.exit_code == 0, result.output
    assert "optimizer state: FSDP sharded state, 1 rank" in result.output and "resume: Trainer.train" in result.output
    pulled = tmp_path / "pulled" / "checkpoint-10"
    for name in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (pulled / name).iterdir()) == [".metadata", "__0_0.distcp"]
        assert same(dcp_state(FIXTURE / name, tmp_path), dcp_state(pulled / name, tmp_path))
    again = _cli(hub, "pull", "me/fsdp", "--revision", "checkpoint-10", "--to", str(tmp_path / "pulled"))
    assert again.exit_code == 0 and "Already there" in again.output


def test_dcp_files_count_as_pickles_whatever_a_zip_reader_says() -> None:
    from hubsync.core.checkpoint import looks_pickled
    from hubsync.core.conversion import PICKLE_SUFFIXES

    distcp = FIXTURE / "optimizer_0" / "__0_0.distcp"
    assert distcp.read_bytes()[:4] == b"PK\x03\x04"  # torch.save() archives laid end to end
    assert distcp.name.endswith(PICKLE_SUFFIXES) or looks_pickled(distcp)


def test_the_metadata_file_is_not_left_out_for_its_name() -> None:
    from hubsync.core.checkpoint import read_checkpoint

    names = {f.relpath for f in read_checkpoint(FIXTURE).files}
    assert {"pytorch_model_fsdp_0/.metadata", "optimizer_0/.metadata"} <= names


FSDP_FILES = {
    "trainer_state.json",
    "scheduler.pt",
    "rng_state.pth",
    "pytorch_model_fsdp_0/.metadata",
    "pytorch_model_fsdp_0/__0_0.distcp",
    "optimizer_0/.metadata",
    "optimizer_0/__0_0.distcp",
}


def _pickle_free(names: set[str]) -> set[str]:
    out = set()
    for n in names:
        if n.endswith(".metadata"):
            out.add(n.replace(".metadata", "dcp.json"))
        elif n.endswith(".distcp"):
            out.add(n.replace(".distcp", ".safetensors"))
        elif n.endswith((".pt", ".pth")):
            stem = n.rsplit(".", 1)[0]
            out |= {f"{stem}.json", f"{stem}.safetensors"}
        else:
            out.add(n)
    return out


@pytest.mark.parametrize("form", ["as written", "pickle-free"])
def test_an_fsdp_checkpoint_is_resumable_with_its_ranks(form: str) -> None:
    from hubsync.core.conversion import is_resumable, resume_missing
    from hubsync.core.layouts import state_layout

    names = FSDP_FILES if form == "as written" else _pickle_free(FSDP_FILES)
    layout = state_layout(names)
    assert layout is not None and layout.describe() == "FSDP sharded state, 1 rank"
    assert is_resumable(names)
    two = names | {n.replace("__0_0", "__1_0") for n in names if "__0_0" in n}
    assert state_layout(two).describe() == "FSDP sharded state, 2 ranks"  # type: ignore[union-attr]
    assert resume_missing(two - {"optimizer_0/__1_0.distcp", "optimizer_0/__1_0.safetensors"}) == (
        "FSDP optimizer state of rank 1",
    )


@pytest.mark.parametrize(
    ("gone", "said"),
    [
        ("optimizer_0/", "FSDP optimizer state (optimizer_0/)"),
        ("optimizer_0/.metadata", "FSDP optimizer state's metadata (optimizer_0/.metadata)"),
        ("scheduler.pt", "scheduler state"),
        ("pytorch_model_fsdp_0/", "model weights"),
    ],
)
def test_what_an_fsdp_resume_lacks_is_named(gone: str, said: str) -> None:
    from hubsync.core.conversion import resume_missing

    assert said in resume_missing({n for n in FSDP_FILES if not n.startswith(gone)})


def _base_model() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(  # make_run.py's
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def _lora_config(folder: Path) -> Path:
    from peft import LoraConfig

    config = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    config.base_model_name_or_path = str(folder / "a" / "local" / "path")  # what a run beside the base model writes
    config.save_pretrained(str(folder))
    return folder / "adapter_config.json"


def test_the_lora_weights_are_published_loadable_with_the_run_folders_config(
    hub: RunningHub, api: Any, tmp_path: Path
) -> None:
    from peft import PeftModel

    checkpoint = Path(shutil.copytree(FIXTURE, tmp_path / "run" / "checkpoint-10"))
    _lora_config(tmp_path / "run")
    result = push(hub, str(checkpoint), "--repo", "me/fsdp", *BASE)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    published = set(api.list_repo_files("me/fsdp", revision="checkpoint-10"))
    assert {"adapter_model.safetensors", "adapter_config.json"} <= published
    assert not [p for p in published if p.startswith(("pytorch_model_fsdp_0/", "optimizer_0/"))]  # state dropped
    local = Path(api.snapshot_download("me/fsdp", revision="checkpoint-10", local_dir=tmp_path / "download"))
    config = (local / "adapter_config.json").read_text()
    assert '"base_model_name_or_path": "meta-llama/Llama-3.1-8B-Instruct"' in config and str(tmp_path) not in config
    model = PeftModel.from_pretrained(_base_model(), str(local))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    expected = dcp_state(FIXTURE / "pytorch_model_fsdp_0", tmp_path)["model"]
    assert len(loaded) == len(expected) == 8
    for key, tensor in expected.items():  # base_model....lora_A.weight -> base_model....lora_A.default.weight
        assert torch.equal(loaded[key.replace(".weight", ".default.weight")], tensor)


def test_lora_weights_without_a_config_are_published_with_a_warning(hub: RunningHub, api: Any, tmp_path: Path) -> None:
    checkpoint = Path(shutil.copytree(FIXTURE, tmp_path / "run" / "checkpoint-10"))
    result = push(hub, str(checkpoint), "--repo", "me/fsdp", *BASE)
    assert result.exit_code == 0, result.output
    assert "warning: adapter_model.safetensors is published without adapter_config.json" in result.output
    assert "--adapter-config FILE" in result.output
    assert "adapter_config.json" not in set(api.list_repo_files("me/fsdp", revision="checkpoint-10"))
    from huggingface_hub import ModelCard

    card = ModelCard(Path(api.hf_hub_download("me/fsdp", "README.md", revision="checkpoint-10")).read_text())  # adapter
    assert card.data.library_name == "peft" and card.data.base_model_relation == "adapter"
    assert "from_pretrained" not in card.text and "PEFT cannot load it yet" in card.text
    config = _lora_config(tmp_path / "elsewhere")
    again = push(hub, str(checkpoint), "--repo", "me/fsdp", "--adapter-config", str(config), *BASE)
    assert again.exit_code == 0 and "warning" not in again.output, again.output
    assert "adapter_config.json" in set(api.list_repo_files("me/fsdp", revision="checkpoint-10"))
    card = ModelCard(Path(api.hf_hub_download("me/fsdp", "README.md", revision="checkpoint-10")).read_text())
    assert "PeftModel.from_pretrained" in card.text and "cannot load" not in card.text


def _saved(folder: Path, state: dict[str, Any]) -> Path:
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # "torch.distributed is disabled ...": one process, as meant
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    return folder


def test_a_value_of_a_foreign_class_in_a_distcp_is_refused(tmp_path: Path) -> None:
    import datetime

    from hubsync.core.errors import UnsafePickleError

    folder = _saved(tmp_path / "optimizer_0", {"t": torch.ones(3), "bad": datetime.timedelta(days=1)})
    with pytest.raises(UnsafePickleError, match=r"datetime\.timedelta"):
        encode_dcp(folder, "optimizer_0", tmp_path)


def test_a_dcp_folder_of_tensors_and_values_round_trips(tmp_path: Path) -> None:
    state = {
        "w": torch.arange(12, dtype=torch.bfloat16).reshape(3, 4),
        "step": torch.tensor(7),
        "groups": [{"lr": 0.1, "betas": (0.9, 0.99), "name": "a"}],
        "flag": True,
    }
    folder = _saved(tmp_path / "optimizer_0", state)
    out = tmp_path / "out" / "optimizer_0"
    out.mkdir(parents=True)
    encode_dcp(folder, "optimizer_0", out)
    assert not list(out.glob("*.distcp"))
    rebuild_dcp(out / "dcp.json")
    assert same(dcp_state(folder, tmp_path), dcp_state(out, tmp_path))


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda d: d["files"].update({"../evil.distcp": d["files"].pop("__0_0.distcp")}), "evil"),
        (lambda d: d.update(format="other"), "not a hubsync-dcp document"),
        (lambda d: next(iter(d["tensors"].values())).update(dtype="complex64"), "complex64"),
        (lambda d: d["files"]["__0_0.distcp"][0].update(fqn="unknown"), "no described name"),
    ],
    ids=["path", "format", "dtype", "name"],
)
def test_a_damaged_document_is_refused_by_pull(tmp_path: Path, change: Any, said: str) -> None:
    import json

    from hubsync.core.errors import DamagedStateError

    out = tmp_path / "optimizer_0"
    out.mkdir()
    encode_dcp(FIXTURE / "optimizer_0", "optimizer_0", out)
    document = json.loads((out / "dcp.json").read_text())
    change(document)
    (out / "dcp.json").write_text(json.dumps(document))
    with pytest.raises(DamagedStateError, match=said):
        rebuild_dcp(out / "dcp.json")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["__0_0.safetensors", "dcp.json"]


def test_a_model_sharded_over_two_ranks_is_consolidated_whole(tmp_path: Path) -> None:
    """Two ranks' row chunks (FSDP's Shard(0)), written by pull's rebuild from a document: DCP loads the whole
    tensor from them, and the consolidated file holds it under the state dict's own name."""
    import json

    from safetensors.torch import load_file, save_file

    from hubsync.convert.dcp import consolidate_dcp
    from hubsync.core.layouts import state_layout

    full = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    spec = {"dtype": "float32", "requires_grad": False, "pin_memory": False, "memory_format": "contiguous_format"}
    chunks = [{"offsets": [0, 0], "sizes": [2, 3]}, {"offsets": [2, 0], "sizes": [2, 3]}]
    document = {
        "format": "hubsync-dcp",
        "version": 1,
        "tensors": {"model.w": {**spec, "size": [4, 3], "chunks": chunks}},
        "values": [],
        "planner_data": {"model.w": ["model", "w"]},
        "storage_meta": None,
        "dcp_version": "1.0.0",
        "files": {
            f"__{rank}_0.distcp": [
                {"fqn": "model.w", "index": 0, "offset": [2 * rank, 0], "tensor": f"model.w@{2 * rank},0"}
            ]
            for rank in (0, 1)
        },
    }
    folder = tmp_path / "pytorch_model_fsdp_0"
    folder.mkdir()
    (folder / "dcp.json").write_text(json.dumps(document))
    for rank in (0, 1):
        save_file({f"model.w@{2 * rank},0": full[2 * rank : 2 * rank + 2].clone()}, folder / f"__{rank}_0.safetensors")
    rebuild_dcp(folder / "dcp.json")
    assert torch.equal(dcp_state(folder, tmp_path)["model"]["w"], full)
    names = {f"pytorch_model_fsdp_0/{p.name}" for p in folder.iterdir()}
    assert state_layout(names).describe() == "FSDP sharded state, 2 ranks"  # type: ignore[union-attr]
    for name in ("dcp.json", "__0_0.safetensors", "__1_0.safetensors"):
        (folder / name).unlink()
    assert consolidate_dcp(folder, "pytorch_model_fsdp_0", tmp_path / "model.safetensors") == ["model.safetensors"]
    assert torch.equal(load_file(tmp_path / "model.safetensors")["w"], full)


def test_values_that_unfold_into_too_much_together_are_refused(tmp_path: Path) -> None:
    """Each value a pickle sharing one list under many names: within the limit alone, over it together."""
    from hubsync.core.errors import UnrepresentableStateError

    shared = [[0] * 600] * 1000  # about 600,000 entries unfolded, from a few KB
    folder = _saved(tmp_path / "optimizer_0", {"t": torch.ones(1), "a": shared, "b": shared})
    with pytest.raises(UnrepresentableStateError, match="more than 1,000,000 entries"):
        encode_dcp(folder, "optimizer_0", tmp_path)


# --- --max-shard-size: each .distcp file's tensors, and the consolidated model, in shards -------------------------

SHARDED = ("--training-state", "keep", "--max-shard-size", "10KB")


def _shards_of(paths: set[str], stem: str) -> list[str]:
    from hubsync.core.shards import listed_shards

    return list(listed_shards(stem, paths) or ())


def test_fsdp_state_over_the_max_shard_size_is_pushed_in_shards_and_pulled_whole(
    hub: RunningHub, api: Any, tmp_path: Path
) -> None:
    checkpoint = Path(shutil.copytree(FIXTURE, tmp_path / "run" / "checkpoint-10"))
    dry = push(hub, str(checkpoint), "--repo", "me/fsdp", *SHARDED, *BASE, "--dry-run")
    assert dry.exit_code == 0, dry.output
    result = push(hub, str(checkpoint), "--repo", "me/fsdp", *SHARDED, *BASE, "--json")
    assert result.exit_code == 0, result.output
    published = set(api.list_repo_files("me/fsdp", revision="checkpoint-10"))
    shards = _shards_of(published, "optimizer_0/__0_0")
    assert len(shards) >= 2 and "optimizer_0/__0_0.safetensors.index.json" in published, published
    assert "optimizer_0/__0_0.safetensors" not in published
    index_path = api.hf_hub_download("me/fsdp", "optimizer_0/__0_0.safetensors.index.json", revision="checkpoint-10")
    index = json.loads(Path(index_path).read_text())
    assert sorted(set(index["weight_map"].values())) == [s.rsplit("/", 1)[1] for s in shards]
    assert "adapter_model.safetensors" in published  # PEFT loads no shards: the adapter stays whole
    assert not [p for p in published if p.startswith("adapter_model-")]
    for path in [*shards, "optimizer_0/__0_0.safetensors.index.json", "adapter_model.safetensors"]:
        assert f"  upload  {path}  (" in dry.output, dry.output  # the dry run lists what is pushed
    tree = [f for f in api.list_repo_tree("me/fsdp", revision="checkpoint-10", recursive=True) if hasattr(f, "size")]
    pushed = json.loads(result.stdout)["results"][0]
    assert pushed["bytes"] == sum(f.size for f in tree if f.path != ".gitattributes")
    listed = _cli(hub, "ls", "me/fsdp")
    assert listed.exit_code == 0 and "yes (FSDP sharded state, 1 rank)" in listed.output, listed.output
    pulled_to = tmp_path / "pulled"
    pulled = _cli(hub, "pull", "me/fsdp", "--revision", "checkpoint-10", "--to", str(pulled_to))
    assert pulled.exit_code == 0, pulled.output
    assert "resume: Trainer.train" in pulled.output
    here = pulled_to / "checkpoint-10"
    for name in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (here / name).iterdir()) == [".metadata", "__0_0.distcp"]
        assert same(dcp_state(FIXTURE / name, tmp_path), dcp_state(here / name, tmp_path))
    again = _cli(hub, "pull", "me/fsdp", "--revision", "checkpoint-10", "--to", str(pulled_to))
    assert again.exit_code == 0 and "Already there" in again.output, again.output


def test_the_plan_measures_the_shards_encode_dcp_writes(tmp_path: Path) -> None:
    from hubsync.convert.dcp import encoded_dcp_sizes

    for limit in (1, 3_000, 10_000, 5 * 10**9):
        out = tmp_path / f"out-{limit}"
        out.mkdir()
        written = encode_dcp(FIXTURE / "optimizer_0", "optimizer_0", out, limit)
        sizes = encoded_dcp_sizes(FIXTURE / "optimizer_0", "optimizer_0", limit)
        assert written == ["dcp.json", *sizes]
        assert sizes == {name: (out / name).stat().st_size for name in sizes}
        if limit == 5 * 10**9:
            assert list(sizes) == ["__0_0.safetensors"]  # as before: one file a rank
        rebuild_dcp(out / "dcp.json")
        assert same(dcp_state(FIXTURE / "optimizer_0", tmp_path), dcp_state(out, tmp_path))


def _sharded_optimizer(tmp_path: Path) -> Path:
    out = tmp_path / "optimizer_0"
    out.mkdir()
    encode_dcp(FIXTURE / "optimizer_0", "optimizer_0", out, 10_000)
    assert (out / "__0_0.safetensors.index.json").exists()
    return out


def _index(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "__0_0.safetensors.index.json").read_text())


def _move_one(folder: Path, *, keep: bool) -> None:
    """The first tensor of shard 1 written into shard 2 as well (`keep`) or only (not `keep`), the index unchanged."""
    from safetensors.torch import load_file, save_file

    names = sorted(p.name for p in folder.glob("__0_0-*.safetensors"))
    first, second = load_file(folder / names[0]), load_file(folder / names[1])
    key = sorted(first)[0]
    second[key] = first[key]
    if not keep:
        del first[key]
        save_file(first, folder / names[0], metadata={"format": "pt"})
    save_file(second, folder / names[1], metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (
            lambda f: (f / "__0_0.safetensors.index.json").write_text(
                json.dumps({**_index(f), "weight_map": {k: "../" + v for k, v in _index(f)["weight_map"].items()}})
            ),
            "not a shard of __0_0",
        ),
        (lambda f: _move_one(f, keep=True), "also in another shard"),
        (lambda f: _move_one(f, keep=False), "which the index puts elsewhere"),
        (
            lambda f: (f / "__0_0.safetensors.index.json").write_text(
                json.dumps({**_index(f), "metadata": {"total_size": _index(f)["metadata"]["total_size"] + 4}})
            ),
            "another number of bytes than its total_size",
        ),
        (lambda f: next(f.glob("__0_0-00002-*.safetensors")).unlink(), "is not there"),
        (lambda f: shutil.copy(next(f.glob("__0_0-00001-*.safetensors")), f / "__0_0.safetensors"), "both"),
        (lambda f: shutil.copy(next(f.glob("__0_0-00001-*.safetensors")), f / "__1_0.safetensors"), "no __1_0"),
    ],
    ids=["outside", "twice", "elsewhere", "total-size", "missing", "both", "unnamed-rank"],
)
def test_damaged_shards_of_a_distcp_file_are_refused_by_pull(tmp_path: Path, damage: Any, said: str) -> None:
    from hubsync.core.errors import DamagedStateError

    folder = _sharded_optimizer(tmp_path)
    damage(folder)
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(DamagedStateError, match=said):
        rebuild_dcp(folder / "dcp.json")
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written


def test_the_layout_takes_a_ranks_shards_with_their_index_only() -> None:
    from hubsync.core.conversion import is_resumable
    from hubsync.core.layouts import state_layout

    names = _pickle_free(FSDP_FILES) - {"optimizer_0/__0_0.safetensors"}
    shards = {f"optimizer_0/__0_0-0000{i}-of-00002.safetensors" for i in (1, 2)}
    index = "optimizer_0/__0_0.safetensors.index.json"
    assert state_layout(names | shards | {index}).describe() == "FSDP sharded state, 1 rank"  # type: ignore[union-attr]
    assert is_resumable(names | shards | {index})
    assert not is_resumable(names | shards)  # no index
    assert not is_resumable(names | {index, "optimizer_0/__0_0-00001-of-00002.safetensors"})  # a shard missing
    for other in ("optimizer_0/__0_0-1-of-2.safetensors", "optimizer_0/__0_0.index.json", "optimizer_0/x.safetensors"):
        assert not is_resumable(names | {other})


def _full_model_checkpoint(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The fixture's checkpoint with a full fine-tune's model folder: a tiny Llama's weights, saved by DCP."""
    torch.manual_seed(0)
    model = _base_model()
    model.config.tie_word_embeddings = False
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    checkpoint = Path(shutil.copytree(FIXTURE, tmp_path / "run" / "checkpoint-10"))
    shutil.rmtree(checkpoint / "pytorch_model_fsdp_0")
    _saved(checkpoint / "pytorch_model_fsdp_0", {"model": weights})
    model.config.save_pretrained(str(checkpoint))
    return checkpoint, weights


def test_a_full_model_over_the_max_shard_size_is_consolidated_in_shards_transformers_loads(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    from hubsync.convert.dcp import consolidate_dcp, consolidated_sizes

    checkpoint, weights = _full_model_checkpoint(tmp_path)
    folder, out = checkpoint / "pytorch_model_fsdp_0", tmp_path / "published"
    out.mkdir()
    shutil.copy(checkpoint / "config.json", out / "config.json")
    limit = 100_000
    written = consolidate_dcp(folder, "pytorch_model_fsdp_0", out / "model.safetensors", limit)
    assert written[-1] == "model.safetensors.index.json" and len(written) >= 3
    assert written[:-1] == [f"model-{i:05d}-of-{len(written) - 1:05d}.safetensors" for i in range(1, len(written))]
    assert not (out / "model.safetensors").exists()
    assert consolidated_sizes(folder, "pytorch_model_fsdp_0", "model.safetensors", limit) == {
        n: (out / n).stat().st_size for n in written
    }
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(weights)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in weights.values())
    loaded = LlamaForCausalLM.from_pretrained(str(out)).state_dict()
    assert set(loaded) == set(weights)
    for key, tensor in weights.items():
        assert torch.equal(loaded[key], tensor), key
    whole = tmp_path / "whole"
    whole.mkdir()  # the default limit: one file, as before
    assert consolidate_dcp(folder, "pytorch_model_fsdp_0", whole / "model.safetensors") == ["model.safetensors"]
    adapter = tmp_path / "adapter"
    adapter.mkdir()  # an adapter is never split: PEFT loads adapter_model.safetensors alone
    assert consolidate_dcp(folder, "m", adapter / "adapter_model.safetensors", 1) == ["adapter_model.safetensors"]


def test_a_full_model_pushed_over_the_max_shard_size_is_published_in_shards(
    hub: RunningHub, api: Any, tmp_path: Path
) -> None:
    from transformers import LlamaForCausalLM

    checkpoint, weights = _full_model_checkpoint(tmp_path)
    args = (str(checkpoint), "--repo", "me/full", "--max-shard-size", "100KB", *BASE)
    dry = push(hub, *args, "--dry-run")
    assert dry.exit_code == 0, dry.output
    result = push(hub, *args)
    assert result.exit_code == 0, result.output
    published = set(api.list_repo_files("me/full", revision="checkpoint-10"))
    shards = _shards_of(published, "model")
    assert len(shards) >= 2 and "model.safetensors.index.json" in published and "model.safetensors" not in published
    for path in [*shards, "model.safetensors.index.json"]:
        assert f"  upload  {path}  (" in dry.output, dry.output
    local = api.snapshot_download("me/full", revision="checkpoint-10", local_dir=tmp_path / "download")
    loaded = LlamaForCausalLM.from_pretrained(local).state_dict()
    assert all(torch.equal(loaded[k], t) for k, t in weights.items())


def test_consolidated_weights_the_hub_cannot_hold_are_refused_before_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Hub's 50 GB limit, scaled down to the fixture's size: an adapter over it is refused (it is never split),
    as is a full model's tensor over it (no split helps), from the measured plan, before any conversion."""
    import hubsync.convert as convert
    from hubsync.core.checkpoint import read_checkpoint
    from hubsync.core.errors import HubLimitError
    from hubsync.core.plan import PushOptions, plan_push

    monkeypatch.setattr(convert, "MAX_FILE_SIZE", 10_000)
    lora = read_checkpoint(FIXTURE)
    plan = plan_push(lora, PushOptions("me/fsdp", card=None, max_shard_size=1_000))
    with pytest.raises(HubLimitError, match=r"adapter_model\.safetensors"):
        convert.measured_push(plan, lora)
    full = read_checkpoint(_full_model_checkpoint(tmp_path)[0])
    plan = plan_push(full, PushOptions("me/full", card=None, max_shard_size=1_000))
    with pytest.raises(HubLimitError, match="has a tensor of over"):
        convert.measured_push(plan, full)
    monkeypatch.setattr(convert, "MAX_FILE_SIZE", 10**9)
    measured = convert.measured_push(plan, full)
    assert "model.safetensors.index.json" in {u.path_in_repo for u in measured.uploads}


@settings(max_examples=200, deadline=None)
@given(
    ranks=st.lists(
        st.tuples(st.integers(1, 4), st.booleans(), st.sets(st.integers(1, 4), max_size=2)), min_size=1, max_size=3
    )
)
def test_sharded_ranks_count_with_their_index_and_every_shard(ranks: list[tuple[int, bool, set[int]]]) -> None:
    """Each rank's optimizer tensors in `count` shards (1: one file), with or without their index, some shards
    missing: the revision is resumable exactly when every rank is whole, and pull refuses before fetching a rank
    whose index or shards are not all there."""
    from hubsync.core.conversion import is_resumable
    from hubsync.core.errors import DamagedStateError
    from hubsync.core.pull import check_shards

    names = {n for n in _pickle_free(FSDP_FILES) if not n.startswith("optimizer_0/__")}
    names |= {n.replace("__0_0", f"__{r}_0") for r in range(len(ranks)) for n in names if "__0_0" in n}
    whole, broken = True, False  # broken: some files of a rank, not all
    for rank, (count, indexed, gone) in enumerate(ranks):
        stem = f"optimizer_0/__{rank}_0"
        if count == 1:
            names.add(f"{stem}.safetensors")
            continue
        shards = {f"{stem}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1) if i not in gone}
        names |= shards | ({f"{stem}.safetensors.index.json"} if indexed else set())
        complete = indexed and len(shards) == count
        whole, broken = whole and complete, broken or (not complete and (indexed or bool(shards)))
    assert is_resumable(names) == whole
    if not broken:
        check_shards(names, "r")
    else:
        with pytest.raises(DamagedStateError, match="r lacks"):
            check_shards(names, "r")
