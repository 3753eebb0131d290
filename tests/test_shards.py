"""Files the Hub cannot hold are split (--max-shard-size): training state and weights pushed as shards with an
index, pulled back whole; a hostile index is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from hubsync.cli import cli
from hubsync.core.config import SETTINGS, FileConfig, resolve_settings
from hubsync.core.errors import SettingError
from hubsync.core.shards import group_shards, parse_shard_index, parse_size
from hubsync.localhub import RunningHub

LIMIT = "2KB"  # the tiny run's optimizer.pt holds some 7 KB of tensors: four shards
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def run_cli(hub: RunningHub, *args: str) -> Result:
    return CliRunner().invoke(
        cli, list(args), catch_exceptions=False, env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    )


# -- the setting ------------------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 60_000), st.sampled_from(sorted(UNITS)), st.sampled_from(["", " "]), st.booleans())
def test_a_size_is_read_as_save_pretrained_reads_it(number: int, unit: str, space: str, lower: bool) -> None:
    text = f"{number}{space}{unit.lower() if lower else unit}"
    expected = number * UNITS[unit]
    if 0 < expected <= 49 * 10**9:
        assert parse_size(text) == expected
    else:
        with pytest.raises(ValueError, match="from 1 byte to 49GB, such as"):
            parse_size(text)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=12), st.integers(), st.floats(), st.booleans(), st.none(), st.lists(st.integers())))
def test_any_value_of_max_shard_size_is_a_size_or_one_clear_error(value: Any) -> None:
    setting = SETTINGS["max-shard-size"]
    for given_as, resolve in (
        ("hubsync.toml", lambda: resolve_settings({}, FileConfig({setting.name: value}, "hubsync.toml"), {})),
        ("HUBSYNC_MAX_SHARD_SIZE", lambda: resolve_settings({}, FileConfig(), {setting.variable: str(value)})),
    ):
        try:
            got = resolve()[setting.name]
        except SettingError as exc:
            assert str(exc).startswith(f"{given_as}: max-shard-size must be a size from 1 byte to 49GB, such as")
            assert '"5GB"' in str(exc)
            continue
        assert isinstance(got, int) and 0 < got <= 49 * 10**9
        if given_as == "HUBSYNC_MAX_SHARD_SIZE" and not str(value).strip():
            assert got == 5 * 10**9  # an empty variable is the default


def test_max_shard_size_defaults_to_transformers_5gb_and_a_bad_flag_is_misuse(hub: RunningHub, tmp_path: Path) -> None:
    assert resolve_settings({}, FileConfig(), {})["max-shard-size"] == 5 * 10**9
    result = run_cli(hub, "push", str(tmp_path), "--repo", "me/x", "--max-shard-size", "0")
    assert result.exit_code == 2
    assert "max-shard-size must be a size from 1 byte to 49GB, such as" in result.stderr


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 100), max_size=30), st.integers(1, 120))
def test_shards_keep_the_order_and_the_limit(sizes: list[int], limit: int) -> None:
    named = [(f"t{i}", s) for i, s in enumerate(sizes)]
    groups = group_shards(named, limit)
    assert [n for g in groups for n in g] == [n for n, _ in named]
    of = dict(named)
    for group in groups:
        assert sum(of[n] for n in group) <= limit or len(group) == 1  # a tensor over the limit is alone


# -- training state, pushed split and pulled whole --------------------------------------------------------------------


@pytest.fixture
def pushed(tiny_run: Path, hub: RunningHub) -> Path:
    """checkpoint-20 of the tiny run on the local Hub, its training state kept pickle-free in shards of 2 KB."""
    result = run_cli(
        hub,
        "push",
        str(tiny_run / "checkpoint-20"),
        "--repo",
        "me/tiny",
        "--training-state",
        "keep",
        "--max-shard-size",
        LIMIT,
    )
    assert result.exit_code == 0, result.stderr
    return tiny_run / "checkpoint-20"


def test_optimizer_state_is_pushed_in_shards_and_pulled_whole(
    pushed: Path, hub: RunningHub, api, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    on_hub = {f.path: f.size for f in api.list_repo_tree("me/tiny", revision="checkpoint-20")}
    shards = sorted(p for p in on_hub if p.startswith("optimizer-"))
    assert len(shards) > 1 and shards == [
        f"optimizer-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)
    ]
    assert {"optimizer.json", "optimizer.safetensors.index.json"} <= set(on_hub)
    assert not set(on_hub) & {"optimizer.pt", "optimizer.safetensors", "scheduler.pt", "rng_state.pth"}
    index = json.loads(
        Path(api.hf_hub_download("me/tiny", "optimizer.safetensors.index.json", revision="checkpoint-20")).read_bytes()
    )
    assert set(index) == {"metadata", "weight_map"} and set(index["weight_map"].values()) == set(shards)
    total = 0
    for shard in shards:
        tensors = load_file(api.hf_hub_download("me/tiny", shard, revision="checkpoint-20"))
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        assert size <= 2000 or len(tensors) == 1
        assert all(index["weight_map"][n] == shard for n in tensors)
        total += size
    assert index["metadata"]["total_size"] == total

    dry = run_cli(
        hub,
        "push",
        str(pushed),
        "--repo",
        "me/tiny",
        "--training-state",
        "keep",
        "--max-shard-size",
        LIMIT,
        "--dry-run",
        "--json",
    )
    assert dry.exit_code == 0, dry.stderr
    planned = {f["path"]: f["size"] for f in json.loads(dry.stdout)["plans"][0]["files"]}
    assert {p: s for p, s in planned.items() if p.startswith("optimizer")} == {
        p: s for p, s in on_hub.items() if p.startswith("optimizer")
    }  # a dry run's sizes are the pushed files' own

    ls = run_cli(hub, "ls", "me/tiny", "--json")
    assert ls.exit_code == 0 and json.loads(ls.stdout)[0]["resumable"] is True

    args = ("pull", "me/tiny", "--revision", "checkpoint-20", "--to", str(tmp_path / "out"))
    pulled = run_cli(hub, *args, "--json")
    assert pulled.exit_code == 0, pulled.stderr
    assert json.loads(pulled.stdout)["resumable"] is True
    target = tmp_path / "out" / "checkpoint-20"
    assert not [p.name for p in target.iterdir() if p.name.startswith("optimizer") and p.name != "optimizer.pt"]
    original = torch.load(pushed / "optimizer.pt", weights_only=True)
    rebuilt = torch.load(target / "optimizer.pt", weights_only=True)
    assert str(rebuilt) == str(original)  # same structure, keys, order and values
    again = run_cli(hub, *args)
    assert again.exit_code == 0 and again.stdout.startswith("Already there"), again.stdout + again.stderr


def test_training_resumes_from_state_pulled_from_shards(pushed: Path, hub: RunningHub, tmp_path: Path) -> None:
    from hubsync.tinyrun import train_tiny_lora

    pulled = run_cli(hub, "pull", "me/tiny", "--revision", "checkpoint-20", "--to", str(tmp_path / "fresh"))
    assert pulled.exit_code == 0, pulled.stderr
    from_hub = train_tiny_lora(
        tmp_path / "resume-hub",
        max_steps=30,
        save_steps=30,
        resume_from_checkpoint=str(tmp_path / "fresh" / "checkpoint-20"),
    )
    from_disk = train_tiny_lora(
        tmp_path / "resume-disk", max_steps=30, save_steps=30, resume_from_checkpoint=str(pushed)
    )
    a = load_file(from_hub / "checkpoint-30" / "adapter_model.safetensors")
    b = load_file(from_disk / "checkpoint-30" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _index(api, path: str = "optimizer.safetensors.index.json") -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return json.loads(Path(api.hf_hub_download("me/tiny", path, revision="checkpoint-20")).read_bytes())


def _put(api, path: str, data: bytes) -> None:  # type: ignore[no-untyped-def]
    api.upload_file(path_or_fileobj=data, path_in_repo=path, repo_id="me/tiny", revision="checkpoint-20")


@pytest.mark.parametrize(
    "damage", ["a path", "a tensor in two shards", "a tensor twice in the index", "a missing shard", "a wrong total"]
)
def test_a_hostile_index_is_refused_and_nothing_is_placed(
    damage: str, pushed: Path, hub: RunningHub, api, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    index = _index(api)
    shards = sorted(set(index["weight_map"].values()))
    if damage == "a path":
        name = next(iter(index["weight_map"]))
        index["weight_map"][name] = f"../{index['weight_map'][name]}"
        _put(api, "optimizer.safetensors.index.json", json.dumps(index).encode())
    elif damage == "a tensor in two shards":  # the last shard also holds a tensor of the first
        first = load_file(api.hf_hub_download("me/tiny", shards[0], revision="checkpoint-20"))
        last = load_file(api.hf_hub_download("me/tiny", shards[-1], revision="checkpoint-20"))
        name = next(iter(first))
        save_file({**last, name: first[name]}, tmp_path / "last.safetensors", {"format": "pt"})
        _put(api, shards[-1], (tmp_path / "last.safetensors").read_bytes())
    elif damage == "a tensor twice in the index":
        name, shard = next(iter(index["weight_map"].items()))
        other = next(s for s in shards if s != shard)
        text = json.dumps(index)
        _put(
            api,
            "optimizer.safetensors.index.json",
            text.replace('"weight_map": {', f'"weight_map": {{"{name}": "{other}", ', 1).encode(),
        )
    elif damage == "a missing shard":
        api.delete_file(shards[-1], "me/tiny", revision="checkpoint-20")
    else:
        index["metadata"]["total_size"] += 4
        _put(api, "optimizer.safetensors.index.json", json.dumps(index).encode())

    result = run_cli(hub, "pull", "me/tiny", "--revision", "checkpoint-20", "--to", str(tmp_path / "out"))

    assert result.exit_code == 1, result.stdout
    assert result.stderr.startswith("Error: cannot rebuild the training state from "), result.stderr
    assert "optimizer" in result.stderr and "Nothing was placed" in result.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_pulled_index_is_checked_before_it_is_used() -> None:
    good = {
        "metadata": {"total_size": 8},
        "weight_map": {"a": "s-00001-of-00002.safetensors", "b": "s-00002-of-00002.safetensors"},
    }
    assert parse_shard_index(json.dumps(good).encode(), "s") == (good["weight_map"], 8)
    for bad in (
        {**good, "weight_map": {"a": "/etc/s-00001-of-00001.safetensors"}},
        {**good, "weight_map": {"a": "sub/s-00001-of-00001.safetensors"}},
        {**good, "weight_map": {"a": "t-00001-of-00001.safetensors"}},
        {**good, "weight_map": {"a": "s-00001-of-00002.safetensors"}},  # shard 2 is left out
        {**good, "metadata": {"total_size": -1}},
        {**good, "metadata": {}},
        {**good, "extra": 1},
        [],
    ):
        with pytest.raises(ValueError):
            parse_shard_index(json.dumps(bad).encode(), "s")


# -- weights ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def bin_model(full_run: Path, tmp_path: Path) -> Path:
    """The full fine-tune's checkpoint with its weights as pytorch_model.bin, as transformers used to save them."""
    folder = Path(shutil.copytree(full_run / "checkpoint-10", tmp_path / "run" / "checkpoint-10"))
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_pickled_model_weights_over_the_limit_are_pushed_in_shards_that_transformers_loads(
    bin_model: Path, hub: RunningHub, api: Any, tmp_path: Path
) -> None:
    from transformers import LlamaForCausalLM

    args = ("push", str(bin_model), "--repo", "me/full", "--max-shard-size", "10KB", "--base-model", "me/tiny-llama")
    dry = run_cli(hub, *args, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    planned = {f["path"]: f["size"] for f in json.loads(dry.stdout)["plans"][0]["files"]}
    result = run_cli(hub, *args)
    assert result.exit_code == 0, result.stderr

    on_hub = {f.path: f.size for f in api.list_repo_tree("me/full", revision="checkpoint-10")}
    shards = sorted(p for p in on_hub if p.startswith("model-"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert "model.safetensors.index.json" in on_hub
    assert not set(on_hub) & {"model.safetensors", "pytorch_model.bin"}
    assert {p: s for p, s in planned.items() if p.startswith("model")} == {
        p: s for p, s in on_hub.items() if p.startswith("model")
    }  # a dry run's sizes are the pushed files' own
    for shard in shards:
        tensors = load_file(api.hf_hub_download("me/full", shard, revision="checkpoint-10"))
        assert sum(t.numel() * t.element_size() for t in tensors.values()) <= 10_000 or len(tensors) == 1

    local = api.snapshot_download("me/full", revision="checkpoint-10", local_dir=tmp_path / "dl")
    reloaded = LlamaForCausalLM.from_pretrained(local).state_dict()
    original = torch.load(bin_model / "pytorch_model.bin", weights_only=True)
    assert original
    for name, tensor in original.items():
        assert torch.equal(reloaded[name], tensor), name


def test_a_pickled_adapter_stays_one_file_that_peft_loads(bin_run: Path, hub: RunningHub, api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    from hubsync.tinyrun import tiny_llama_config

    result = run_cli(hub, "push", str(bin_run / "checkpoint-10"), "--repo", "me/lora", "--max-shard-size", "1KB")
    assert result.exit_code == 0, result.stderr
    on_hub = {f.path for f in api.list_repo_tree("me/lora", revision="checkpoint-10")}
    assert "adapter_model.safetensors" in on_hub and not [p for p in on_hub if "-of-" in p or "index" in p]
    local = api.snapshot_download("me/lora", revision="checkpoint-10", local_dir=tmp_path / "dl")
    model = PeftModel.from_pretrained(LlamaForCausalLM(tiny_llama_config()), local)
    original = torch.load(bin_run / "checkpoint-10" / "adapter_model.bin", weights_only=True)
    loaded = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    assert original and all(torch.equal(loaded[k], v) for k, v in original.items())


# -- the sharded form counts, by name alone ----------------------------------------------------------------------------

BASE = {
    "trainer_state.json",
    "adapter_model.safetensors",
    "adapter_config.json",
    "scheduler.json",
    "scheduler.safetensors",
}
SHARDED = {
    "optimizer.json",
    "optimizer.safetensors.index.json",
    "optimizer-00001-of-00002.safetensors",
    "optimizer-00002-of-00002.safetensors",
}


def test_ls_and_pull_count_state_in_shards_only_when_every_shard_and_the_index_are_there() -> None:
    from hubsync.core.conversion import is_training_state, resume_missing
    from hubsync.core.layouts import has_state_file, state_layout

    assert resume_missing(BASE | SHARDED) == ()
    assert resume_missing(BASE | SHARDED - {"optimizer-00002-of-00002.safetensors"}) == ("optimizer state",)
    assert resume_missing(BASE | SHARDED - {"optimizer.safetensors.index.json"}) == ("optimizer state",)
    assert resume_missing(BASE | SHARDED - {"optimizer.json"}) == ("optimizer state",)
    assert all(is_training_state(p) for p in SHARDED)  # dropped with the training state, never released
    deepspeed = {
        "latest",
        "global_step10/mp_rank_00_model_states.json",
        "global_step10/mp_rank_00_model_states.safetensors",
        "global_step10/zero_pp_rank_0_mp_rank_00_optim_states.json",
        "global_step10/zero_pp_rank_0_mp_rank_00_optim_states.safetensors.index.json",
        "global_step10/zero_pp_rank_0_mp_rank_00_optim_states-00001-of-00001.safetensors",
    }
    assert has_state_file(deepspeed, "global_step10/zero_pp_rank_0_mp_rank_00_optim_states.pt")
    layout = state_layout(deepspeed)
    assert layout is not None and layout.missing == () and layout.ranks == 1


@pytest.mark.parametrize(
    ("left_out", "added", "lacks"),
    [
        ({"optimizer.safetensors.index.json"}, set(), "the index of its shards"),
        ({"optimizer-00001-of-00002.safetensors"}, set(), "one of its shards"),
        (set(), {"optimizer-00003-of-00003.safetensors"}, "one of its shards"),
    ],
)
def test_a_listing_without_every_shard_is_refused_before_anything_is_fetched(
    left_out: set[str], added: set[str], lacks: str, tmp_path: Path
) -> None:
    from hubsync.core.errors import DamagedStateError
    from hubsync.core.pull import RemoteFile, plan_pull

    entries = [RemoteFile(p, 1, None, "0" * 40) for p in sorted(BASE | SHARDED - left_out | added)]
    with pytest.raises(DamagedStateError, match=lacks):
        plan_pull("me/x", "checkpoint-10", "0" * 40, entries, tmp_path, 10)
    plan = plan_pull(
        "me/x",
        "checkpoint-10",
        "0" * 40,
        [RemoteFile(p, 1, None, "0" * 40) for p in sorted(BASE | SHARDED)],
        tmp_path,
        10,
    )
    (rebuilt,) = [r for r in plan.rebuilt if r.path == "optimizer.pt"]
    assert [t.path for t in rebuilt.tensors] == sorted(p for p in SHARDED if "-of-" in p)
    assert not {f.path for f in plan.written} & SHARDED


def test_convert_splits_pytorch_model_bin_over_the_limit_as_save_pretrained_does(
    bin_model: Path, tmp_path: Path
) -> None:
    from transformers import LlamaForCausalLM

    out = tmp_path / "converted"
    result = CliRunner().invoke(cli, ["convert", str(bin_model), "-o", str(out), "--max-shard-size", "20KB"])
    assert result.exit_code == 0, result.stderr
    shards = sorted(p.name for p in out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    assert f"pytorch_model.bin -> {shards[0]}: " in result.stdout
    reloaded = LlamaForCausalLM.from_pretrained(out).state_dict()
    for name, tensor in torch.load(bin_model / "pytorch_model.bin", weights_only=True).items():
        assert torch.equal(reloaded[name], tensor), name
    bad = CliRunner().invoke(cli, ["convert", str(bin_model), "-o", str(tmp_path / "x"), "--max-shard-size", "60GB"])
    assert bad.exit_code == 2 and "max-shard-size must be a size from 1 byte to 49GB" in bad.stderr


def test_the_largest_shard_size_leaves_room_for_the_header_under_the_hubs_50_gb() -> None:
    assert parse_size("49GB") == 49 * 10**9
    for too_big in ("50GB", 49 * 10**9 + 1, "46GiB"):
        with pytest.raises(ValueError, match=r"to 49GB, .*at most 50 GB, and a shard's header"):
            parse_size(too_big)
