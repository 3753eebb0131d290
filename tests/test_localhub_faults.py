"""The local Hub's injected faults do what they say, seen by the unmodified huggingface_hub client over real HTTP:
a request body cut off mid-upload, an answer cut off mid-body, a delayed answer."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import httpx2
import huggingface_hub.constants
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError

from hubsync.localhub import RunningHub

WEIGHTS = os.urandom(300 * 1024)  # a .safetensors name: an LFS upload, big enough to span many socket writes


@pytest.fixture(autouse=True)
def no_xet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)


@pytest.fixture
def repo(api: HfApi) -> str:
    api.create_repo("me/faults")
    return "me/faults"


def head(api: HfApi, repo: str) -> str:
    return next(b.target_commit for b in api.list_repo_refs(repo).branches if b.name == "main")


def store_leftovers(root: Path) -> list[Path]:
    """Temp files of unfinished uploads anywhere in the store."""
    return list(root.rglob(".upload-*"))


def test_cut_request_breaks_an_lfs_upload_off_and_nothing_of_it_is_kept(
    hub: RunningHub, api: HfApi, repo: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fault = hub.server.inject_fault("PUT", r"^/_lfs/", cut_request=64 * 1024)

    with caplog.at_level(logging.WARNING, logger="huggingface_hub"):
        api.upload_file(path_or_fileobj=WEIGHTS, path_in_repo="model.safetensors", repo_id=repo)

    assert fault.arrived.is_set() and fault.times == 0
    # The client saw the connection break during its PUT and sent the file again (its own backoff).
    assert any("thrown while requesting PUT" in r.getMessage() for r in caplog.records), caplog.text
    # Only the second, whole attempt was taken in (and the small commit body): the cut one was not stored.
    assert len(WEIGHTS) <= hub.server.uploaded_bytes < len(WEIGHTS) + 64 * 1024
    assert store_leftovers(tmp_path / "hub-root") == []
    local = api.hf_hub_download(repo, "model.safetensors", local_dir=tmp_path / "dl")
    assert Path(local).read_bytes() == WEIGHTS


def test_cut_request_on_a_commit_leaves_the_branch_as_it_was(hub: RunningHub, api: HfApi, repo: str) -> None:
    before = head(api, repo)
    hub.server.inject_fault("POST", r"/commit/main$", cut_request=20)

    with pytest.raises(Exception) as info:  # the client does not retry a commit
        api.create_commit(repo, [CommitOperationAdd("a.txt", b"hello\n")], commit_message="add a")

    assert not isinstance(info.value, HfHubHTTPError)  # no answer at all, not an error answer
    assert head(api, repo) == before
    assert "a.txt" not in api.list_repo_files(repo)


def test_cut_response_breaks_a_download_off_and_the_client_resumes(
    hub: RunningHub, api: HfApi, repo: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api.upload_file(path_or_fileobj=WEIGHTS, path_in_repo="model.safetensors", repo_id=repo)
    fault = hub.server.inject_fault("GET", r"/resolve/main/model\.safetensors$", cut_response=100 * 1024)

    with caplog.at_level(logging.WARNING, logger="huggingface_hub"):
        local = api.hf_hub_download(repo, "model.safetensors", local_dir=tmp_path / "dl")

    assert fault.times == 0
    assert any("Trying to resume download" in r.getMessage() for r in caplog.records), caplog.text
    assert Path(local).read_bytes() == WEIGHTS


def test_cut_response_of_a_head_request_sends_nothing(hub: RunningHub, api: HfApi, repo: str) -> None:
    api.upload_file(path_or_fileobj=b"x", path_in_repo="a.txt", repo_id=repo)
    url = hf_hub_url(repo, "a.txt", endpoint=hub.endpoint)
    fault = hub.server.inject_fault("HEAD", r"/resolve/", cut_response=0)

    with pytest.raises(httpx2.RemoteProtocolError, match="without sending a response"):
        get_hf_file_metadata(url, token=hub.token)  # not retried by default: the error comes straight out

    assert fault.times == 0
    assert get_hf_file_metadata(url, token=hub.token).size == 1


def test_cut_response_of_a_commit_loses_the_answer_but_not_the_commit(hub: RunningHub, api: HfApi, repo: str) -> None:
    """The case a careful client must handle: it cannot tell from the failure whether the commit landed."""
    before = head(api, repo)
    hub.server.inject_fault("POST", r"/commit/main$", cut_response=10)

    with pytest.raises(Exception) as info:
        api.create_commit(repo, [CommitOperationAdd("a.txt", b"hello\n")], commit_message="add a")

    assert not isinstance(info.value, HfHubHTTPError)
    assert head(api, repo) != before
    assert "a.txt" in api.list_repo_files(repo)


def test_delay_holds_the_answer_and_then_serves_it(hub: RunningHub, api: HfApi, repo: str) -> None:
    fault = hub.server.inject_fault("GET", r"/refs$", delay=0.6)
    answer: list[str] = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: answer.append(head(api, repo)))
    worker.start()

    assert fault.arrived.wait(5)
    assert worker.is_alive() and not answer  # held up at the server
    worker.join(10)

    assert time.monotonic() - started >= 0.6
    assert answer == [api.repo_info(repo).sha]


def test_a_delay_comes_before_the_fault_it_is_given_with(hub: RunningHub, api: HfApi, repo: str) -> None:
    hub.server.inject_fault("GET", r"/refs$", 503, delay=0.3)
    started = time.monotonic()

    with pytest.raises(HfHubHTTPError) as info:
        api.list_repo_refs(repo)

    assert info.value.response is not None and info.value.response.status_code == 503
    assert time.monotonic() - started >= 0.3


def test_a_fault_is_one_kind(hub: RunningHub) -> None:
    with pytest.raises(ValueError, match="one of"):
        hub.server.inject_fault("GET", "/", 500, cut_response=3)
    with pytest.raises(ValueError, match="one of"):
        hub.server.inject_fault("GET", "/")
