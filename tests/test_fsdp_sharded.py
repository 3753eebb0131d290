"""A real FSDP2 SHARDED_STATE_DICT checkpoint (tests/fixtures/fsdp-sharded, made on a GPU: its README says how).

hubsync does not read torch.distributed.checkpoint folders yet: their `.distcp` files hold torch.save() archives
(pickles) and the checkpoint holds no weights in a loadable form, so a push is refused, before the Hub changes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from conftest import push

from hubsync.localhub import RunningHub

FIXTURE = Path(__file__).parent / "fixtures" / "fsdp-sharded" / "run" / "checkpoint-10"


def test_an_fsdp_sharded_checkpoint_is_refused_before_the_hub_changes(
    hub: RunningHub, api: Any, tmp_path: Path
) -> None:
    checkpoint = Path(shutil.copytree(FIXTURE, tmp_path / "run" / "checkpoint-10"))
    result = push(hub, str(checkpoint), "--repo", "me/fsdp", "--training-state", "keep")
    assert result.exit_code == 1
    assert "is not a complete checkpoint: it has no model weights" in result.output
    assert [r.id for r in api.list_models(author="me")] == []


def test_dcp_files_count_as_pickles_whatever_a_zip_reader_says() -> None:
    from hubsync.core.checkpoint import looks_pickled
    from hubsync.core.conversion import PICKLE_SUFFIXES

    distcp = FIXTURE / "optimizer_0" / "__0_0.distcp"
    assert distcp.read_bytes()[:4] == b"PK\x03\x04"  # torch.save() archives laid end to end
    assert distcp.name.endswith(PICKLE_SUFFIXES) or looks_pickled(distcp)
