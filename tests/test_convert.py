"""`hubsync convert`: pickled weights to safetensors, without running the pickle, verified, nothing lost."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

import hubsync.convert.writer as writer
from hubsync.cli import cli
from hubsync.convert import convert_checkpoint
from hubsync.core.checkpoint import read_checkpoint
from hubsync.core.conversion import plan_conversion
from hubsync.core.errors import (
    OutputExistsError,
    OutputInsideCheckpointError,
    UnreadableWeightsError,
    UnsafePickleError,
    VerificationError,
)


def convert(folder: Path, out: Path, **kwargs: object) -> list:  # type: ignore[type-arg]
    ckpt = read_checkpoint(folder)
    return convert_checkpoint(ckpt, plan_conversion(ckpt), out, **kwargs)  # type: ignore[arg-type]


def tree_digest(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_same_tensors(converted: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> None:
    assert set(converted) == set(original)
    for name, tensor in original.items():
        got = converted[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        as_bytes = [t.contiguous().reshape(-1).view(torch.uint8).tolist() for t in (got, tensor)]
        assert as_bytes[0] == as_bytes[1], name


def save_checkpoint(folder: Path, state: dict[str, torch.Tensor], name: str = "pytorch_model.bin") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / name)
    (folder / "config.json").write_text("{}")
    return folder


# -- real checkpoints -------------------------------------------------------------------------------------------------


def test_a_bin_adapter_from_the_trainer_loads_in_peft_to_the_same_tensors(bin_run: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    source = bin_run / "checkpoint-10"
    before = tree_digest(source)
    out = tmp_path / "converted"

    (done,) = convert(source, out)

    assert done.target == "adapter_model.safetensors"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "trainer_state.json",
    ]
    original = torch.load(source / "adapter_model.bin", weights_only=True)
    assert_same_tensors(load_file(out / "adapter_model.safetensors"), original)
    assert safe_open(out / "adapter_model.safetensors", "pt").metadata() == {"format": "pt"}
    assert tree_digest(source) == before  # the checkpoint is never modified

    config = json.loads((source / "adapter_config.json").read_text())
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )
    model = PeftModel.from_pretrained(base, out)
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert config["peft_type"] == "LORA"
    assert len(loaded) == len(original)
    for key, value in original.items():
        match = [v for k, v in loaded.items() if k.replace(".default", "") == key]
        assert len(match) == 1 and torch.equal(match[0], value), key


def test_tied_weights_keep_one_name_and_load_in_transformers(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    folder = tmp_path / "full"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    config.save_pretrained(folder)

    (done,) = convert(folder, tmp_path / "out")

    assert done.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    header = safe_open(tmp_path / "out" / "model.safetensors", "pt").metadata()
    assert json.loads(header["hubsync_aliases"]) == {"lm_head.weight": "model.embed_tokens.weight"}
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "out")
    for name, tensor in state.items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


def test_a_sharded_checkpoint_gets_safetensors_shards_and_a_rewritten_index(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    state = LlamaForCausalLM(config).state_dict()
    folder = tmp_path / "sharded"
    folder.mkdir()
    names = list(state)
    shards = {
        "pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
        "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :],
    }
    for shard, keys in shards.items():
        torch.save({k: state[k] for k in keys}, folder / shard)
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map})
    )
    config.save_pretrained(folder)

    done = convert(folder, tmp_path / "out")

    assert [d.target for d in done] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {
        k: v.replace("pytorch_model", "model").replace(".bin", ".safetensors") for k, v in weight_map.items()
    }
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    assert not list((tmp_path / "out").glob("*.bin*"))
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "out")
    for name, tensor in state.items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


# -- crafted state dicts ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype",
    [torch.bfloat16, torch.float16, torch.float32, torch.int8, torch.float64, torch.int64, torch.uint8, torch.bool],
)
def test_every_common_dtype_round_trips_bit_for_bit(tmp_path: Path, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    raw = torch.randint(-100, 100, (7, 5), generator=generator)
    tensor = (
        (raw > 0)
        if dtype == torch.bool
        else raw.to(dtype)
        if not dtype.is_floating_point
        else torch.randn(7, 5, generator=generator).to(dtype)
    )
    state = {"w": tensor, "scalar": tensor[0, 0].clone()}
    folder = save_checkpoint(tmp_path / "ckpt", state)

    convert(folder, tmp_path / "out")

    assert_same_tensors(load_file(tmp_path / "out" / "model.safetensors"), state)


def test_non_contiguous_tensors_and_views_are_written_contiguous(tmp_path: Path) -> None:
    base = torch.arange(600, dtype=torch.float32).reshape(20, 30)
    state = {
        "transposed": base.t(),
        "every_other": base[:, ::2],
        "slice": base[5:9],
        "base": base,
        "empty": torch.zeros(0, 4),
    }
    folder = save_checkpoint(tmp_path / "ckpt", state)

    (done,) = convert(folder, tmp_path / "out")

    assert done.aliases == {}  # views of one storage are different tensors, not aliases
    assert_same_tensors(load_file(tmp_path / "out" / "model.safetensors"), state)


def test_the_portable_copy_is_used_where_copy_file_range_does_not_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"w": torch.randn(64, 64), "t": torch.randn(8, 4).t()}
    folder = save_checkpoint(tmp_path / "ckpt", state)
    monkeypatch.delattr(os, "copy_file_range", raising=False)

    convert(folder, tmp_path / "out")

    assert_same_tensors(load_file(tmp_path / "out" / "model.safetensors"), state)


# -- bad input: refused, named, nothing written -----------------------------------------------------------------------


class WouldRunCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    torch.save({"w": torch.zeros(2), "evil": WouldRunCode(marker)}, folder / "adapter_model.bin")
    (folder / "adapter_config.json").write_text("{}")

    with pytest.raises(UnsafePickleError) as caught:
        convert(folder, tmp_path / "out")

    assert not marker.exists()
    assert caught.value.path.endswith("checkpoint-1/adapter_model.bin")
    assert caught.value.what in ("posix.system", "os.system", "nt.system")
    assert not (tmp_path / "out").exists()


def test_the_cli_names_the_refused_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    torch.save(WouldRunCode(marker), folder / "pytorch_model.bin")

    result = CliRunner().invoke(cli, ["convert", "checkpoint-1"])

    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "refused checkpoint-1/pytorch_model.bin" in result.stderr and "could run code" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    ("case", "content", "reason"),
    [
        ("empty", b"", "the file is empty"),
        ("garbage", b"not a zip at all" * 10, "not a torch.save() zip archive"),
        ("a_list", None, "it holds a list, not a state dict"),
        ("a_dict_of_numbers", None, "not a tensor: not a state dict"),
    ],
)
def test_files_that_are_not_state_dicts(tmp_path: Path, case: str, content: bytes | None, reason: str) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    if content is not None:
        (folder / "pytorch_model.bin").write_bytes(content)
    else:
        torch.save([torch.zeros(1)] if case == "a_list" else {"lr": 0.1}, folder / "pytorch_model.bin")

    with pytest.raises(UnreadableWeightsError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        convert(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_truncated_file(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "ckpt", {"w": torch.randn(100, 100)})
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])

    with pytest.raises(UnreadableWeightsError, match="truncated"):
        convert(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_mismatch_found_by_verification_keeps_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = save_checkpoint(tmp_path / "ckpt", {"a": torch.arange(64.0), "w": torch.arange(256.0)})
    real_copy = writer._copy_range

    def copy_one_byte_off(src, dst, src_offset, dst_offset, count, progress):  # type: ignore[no-untyped-def]
        shift = 1 if count == 256 * 4 else 0  # a bug that reads tensor w from the wrong offset
        real_copy(src, dst, src_offset + shift, dst_offset, count, progress)

    monkeypatch.setattr(writer, "_copy_range", copy_one_byte_off)

    with pytest.raises(VerificationError, match="the bytes of tensor w differ"):
        convert(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hubsync-tmp-")]


def test_an_interrupted_run_leaves_nothing_and_a_rerun_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"w": torch.randn(16, 16)}
    folder = save_checkpoint(tmp_path / "ckpt", state)

    def interrupt(*args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(writer, "verify_header", interrupt)
        with pytest.raises(KeyboardInterrupt):
            convert(folder, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]

    convert(folder, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]
    assert_same_tensors(load_file(tmp_path / "out" / "model.safetensors"), state)


def test_output_rules(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "ckpt", {"w": torch.randn(4)})
    with pytest.raises(OutputInsideCheckpointError):
        convert(folder, folder / "converted")
    (tmp_path / "link").symlink_to(folder)
    with pytest.raises(OutputInsideCheckpointError):  # a link must not lead the output into the checkpoint
        convert(folder, tmp_path / "link" / "converted")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "pytorch_model.bin"]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep me")
    with pytest.raises(OutputExistsError):
        convert(folder, tmp_path / "busy")
    convert(folder, tmp_path / "busy", force=True)
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep me"
    assert (tmp_path / "busy" / "model.safetensors").exists()


def test_cli_default_output_is_beside_the_checkpoint_out_of_the_trainers_rotation(
    bin_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Path(shutil.copytree(bin_run, tmp_path / "run"))
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(cli, ["convert", "run/checkpoint-10"])

    assert result.exit_code == 0, result.stderr
    assert "adapter_model.bin -> adapter_model.safetensors" in result.stdout and "verified" in result.stdout
    assert "Wrote run/safetensors-checkpoint-10" in result.stdout
    assert (run / "safetensors-checkpoint-10" / "adapter_model.safetensors").exists()
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-10"]


def test_cli_with_nothing_to_convert(tiny_run: Path) -> None:
    result = CliRunner().invoke(cli, ["convert", str(tiny_run / "checkpoint-10"), "-o", "unused"])
    assert result.exit_code == 0
    assert "Nothing to convert" in result.stdout
    assert not Path("unused").exists()


def test_a_killed_runs_leftovers_are_removed_but_a_running_ones_are_not(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "ckpt", {"w": torch.randn(4)})
    gone = tmp_path / f".hubsync-tmp-out-p{2**22 + 12345}-abc"  # above Linux's largest pid: no such process
    gone.mkdir()
    running = tmp_path / f".hubsync-tmp-out-p{os.getppid()}-abc"
    running.mkdir()

    convert(folder, tmp_path / "out")

    assert not gone.exists() and running.exists()
