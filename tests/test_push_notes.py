"""Options that a push cannot use on the checkpoint at hand are said to be unused, never ignored silently."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import push
from huggingface_hub import HfApi

from hubsync.localhub import RunningHub


def test_adapter_config_on_a_checkpoint_that_has_its_own_is_said_to_be_unused(
    run: Path, hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    other = tmp_path / "other_adapter_config.json"
    other.write_text(json.dumps({"peft_type": "LORA", "r": 64, "base_model_name_or_path": "someone/else"}))
    result = push(hub, str(run / "checkpoint-30"), "--repo", "me/tiny", "--adapter-config", str(other))
    assert result.exit_code == 0, result.stderr
    assert "--adapter-config is not used" in result.output and "this one is not one" in result.output
    published = json.loads(
        Path(api.hf_hub_download("me/tiny", "adapter_config.json", revision="checkpoint-30")).read_text()
    )
    assert published["r"] != 64  # the checkpoint's own, as it says
