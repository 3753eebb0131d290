"""hubsync asks the endpoint whether it offers Xet (plain LFS when it does not), names failures of the Xet storage
for what they are, within seconds, hands hf_xet only the files that changed, and says how many bytes a push sent.

The local Hub serves Xet through the real hf_xet (local:// storage); tests point its `xet_cas_url` at tiny storage
stand-ins that fail, and a proxy in front of it plays a busy, refusing or Xet-less token route and notes what each
commit hands to huggingface_hub."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest
from click.testing import CliRunner
from conftest import local_hub
from hostile_proxy import ProxyHandler, serve
from huggingface_hub import HfApi, constants

from hubsync.cli import cli
from hubsync.cli.errors import message_for
from hubsync.core.pull import RemoteFile
from hubsync.core.transient import transient_failure
from hubsync.errors import HubError, PermissionDeniedError, RepoNotFoundError, TokenRejectedError, XetStorageError
from hubsync.hub import client as client_module
from hubsync.hub.client import XET_LIMITS, HubClient, _xet, xet_config
from hubsync.hub.push import changed_files, local_hashes
from hubsync.localhub import RunningHub


class XetTokenHandler(BaseHTTPRequestHandler):
    """Answers only the write-token route, the way huggingface.co does; the local Hub cannot serve this."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        if "/xet-write-token/" in self.path and self.headers.get("Authorization") == "Bearer hf_xet_user_token":
            self.send_response(200)
            self.send_header("X-Xet-Cas-Url", "https://cas.example")
            self.send_header("X-Xet-Access-Token", "xet-token")
            self.send_header("X-Xet-Token-Expiration", "4102444800")
        else:
            self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def xet_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), XetTokenHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_endpoint_that_hands_out_xet_tokens_keeps_xet(xet_endpoint: str) -> None:
    client = HubClient(xet_endpoint, "hf_xet_user_token")
    assert client.offers_xet("me/model", "checkpoint-10") is True
    assert XetTokenHandler.seen[-1] == "/api/models/me/model/xet-write-token/checkpoint-10"


def test_a_branch_name_with_a_slash_is_quoted_in_the_probe(xet_endpoint: str) -> None:
    assert HubClient(xet_endpoint, "hf_xet_user_token").offers_xet("me/model", "runs/a")
    assert XetTokenHandler.seen[-1].endswith("/xet-write-token/runs%2Fa")


def test_the_local_hub_offers_xet_unless_told_not_to(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for xet in (True, False):
        with local_hub(tmp_path / str(xet), xet=xet) as hub:
            HfApi(endpoint=hub.endpoint, token=hub.token).create_repo("me/model")
            assert HubClient(hub.endpoint, hub.token).offers_xet("me/model", "main") is xet


def test_xet_switch_restores_the_setting_even_on_error() -> None:
    assert constants.HF_HUB_DISABLE_XET is False
    with pytest.raises(RuntimeError), _xet(enabled=False):
        assert constants.HF_HUB_DISABLE_XET is True
        raise RuntimeError("boom")
    assert constants.HF_HUB_DISABLE_XET is False


def test_a_user_who_disabled_xet_keeps_it_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with _xet(enabled=True):
        assert constants.HF_HUB_DISABLE_XET is True


# -- a Hub that offers Xet: the local Hub behind a proxy that answers the Xet token routes, as huggingface.co does --


class XetHub(ProxyHandler):
    """The local Hub behind a proxy that changes its Xet token routes: answers `first` statuses in turn (0: the
    local Hub's answer), 404 when not `offers_xet` (a Hub without Xet), the expiry moved by `shift` seconds;
    notes the paths of each preupload (the files a commit hands to huggingface_hub), by revision."""

    offers_xet: ClassVar[bool] = True
    shift: ClassVar[int] = 0
    first: ClassVar[list[int]] = []
    token_asks: ClassVar[int] = 0
    preuploads: ClassVar[list[tuple[str, list[str]]]] = []

    def do_GET(self) -> None:
        if not re.search(r"/xet-(write|read)-token/", self.path):
            return self.forward()
        type(self).token_asks += 1
        status = self.first.pop(0) if self.first else 0
        if status or not self.offers_xet:
            return self.answer(status or 404, [], b"")
        status, headers, body = self.ask_upstream(b"")
        if status == 200 and self.shift:
            answer = json.loads(body)
            answer["exp"] += self.shift
            body = json.dumps(answer).encode()
            headers = [(k, str(answer["exp"]) if k.lower() == "x-xet-token-expiration" else v) for k, v in headers]
        self.answer(status, headers, body)

    def forward(self) -> None:
        body = self.request_body()
        if "/preupload/" in self.path:
            self.preuploads.append((self.path.rsplit("/", 1)[1], [f["path"] for f in json.loads(body)["files"]]))
        self.answer(*self.ask_upstream(body))

    do_POST = do_PUT = do_DELETE = do_HEAD = forward


@dataclass
class XetStandIn:
    endpoint: str
    token: str
    handler: type[XetHub]
    hub: RunningHub  # hub.server.xet_cas_url: the storage its token routes hand out instead of its own


@pytest.fixture
def xet_hub(hub: RunningHub) -> Iterator[XetStandIn]:
    handler = cast(type[XetHub], type("XetHubHere", (XetHub,), {"first": [], "preuploads": []}))
    with serve(handler, hub.endpoint) as endpoint:
        yield XetStandIn(endpoint, hub.token, handler, hub)


@contextmanager
def storage_server(behaviour: str) -> Iterator[str]:
    """A stand-in Xet storage (casUrl) that fails: "401" answers 401 to everything, "500" a server error, "cut"
    closes every connection it takes without an answer, "hang" never answers, "closed" is a port nobody listens on."""
    if behaviour == "closed":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        yield f"http://127.0.0.1:{port}"
        return

    released = threading.Event()

    class Storage(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def fail(self) -> None:
            if behaviour == "hang":
                released.wait(60)
                return
            if behaviour == "cut":
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.send_response(int(behaviour))
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = do_HEAD = fail

    server = ThreadingHTTPServer(("127.0.0.1", 0), Storage)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        released.set()
        server.shutdown()
        server.server_close()


def weights(tmp_path: Path, name: str = "model.safetensors", size: int = 2_000_000) -> Path:
    path = tmp_path / "files" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def fast(endpoint: str, token: str) -> HubClient:
    return HubClient(endpoint, token, retry_delays=(0.01, 0.01, 0.01, 0.01))


# -- the probe --


def test_a_busy_probe_is_asked_again_and_its_answer_kept(xet_hub: XetStandIn, api: HfApi) -> None:
    api.create_repo("me/model")
    xet_hub.handler.first = [503, 429]
    client = fast(xet_hub.endpoint, xet_hub.token)

    assert client.offers_xet("me/model", "main") is True
    assert client.offers_xet("me/model", "main") is True
    assert xet_hub.handler.token_asks == 3  # twice busy, then the answer, remembered


def test_a_probe_that_stays_busy_fails_as_the_hub_and_is_not_remembered(xet_hub: XetStandIn, api: HfApi) -> None:
    api.create_repo("me/model")
    xet_hub.handler.first = [503] * 5
    client = fast(xet_hub.endpoint, xet_hub.token)

    with pytest.raises(HubError) as failed:
        client.offers_xet("me/model", "main")
    assert failed.value.status == 503
    assert client.offers_xet("me/model", "main") is True  # no LFS for the rest of the run for one outage


@pytest.mark.parametrize(("status", "error"), [(401, TokenRejectedError), (403, PermissionDeniedError)])
def test_a_refused_probe_is_raised(xet_hub: XetStandIn, status: int, error: type[HubError]) -> None:
    xet_hub.handler.first = [status]
    with pytest.raises(error):
        fast(xet_hub.endpoint, xet_hub.token).offers_xet("me/model", "main")


def test_a_missing_repository_is_not_a_hub_without_xet(xet_hub: XetStandIn) -> None:
    with pytest.raises(RepoNotFoundError):  # the route is there: the repository is not (nothing remembered)
        fast(xet_hub.endpoint, xet_hub.token).offers_xet("me/nothing", "main")


def test_a_hub_without_the_route_takes_plain_lfs(xet_hub: XetStandIn) -> None:
    xet_hub.handler.offers_xet = False
    assert fast(xet_hub.endpoint, xet_hub.token).offers_xet("me/model", "main") is False


def test_an_expired_token_is_named_at_once(xet_hub: XetStandIn) -> None:
    HfApi(endpoint=xet_hub.endpoint, token=xet_hub.token).create_repo("me/model")
    xet_hub.handler.shift = -2 * 86400  # a token the Hub hands out, expired two days ago
    with pytest.raises(XetStorageError) as failed:
        fast(xet_hub.endpoint, xet_hub.token).offers_xet("me/model", "main")
    assert failed.value.kind == "expired"
    line = message_for(failed.value)
    assert "already expired" in line and "clock" in line
    assert "local://" not in line and "hub-root" not in line


# -- failures of the Xet storage: named for what failed, within seconds --


@pytest.mark.parametrize(
    ("behaviour", "kind", "said"),
    [
        ("closed", "unreachable", "cannot reach the Xet storage"),
        ("401", "refused", "refused its upload token"),
        ("cut", "broken", "broke off the upload"),
        ("500", "broken", "broke off the upload (it answered 500)"),
    ],
)
def test_a_failing_xet_storage_is_named_within_seconds(
    xet_hub: XetStandIn, api: HfApi, tmp_path: Path, behaviour: str, kind: str, said: str
) -> None:
    api.create_repo("me/model")
    client = fast(xet_hub.endpoint, xet_hub.token)
    with storage_server(behaviour) as cas:
        xet_hub.hub.server.xet_cas_url = cas
        start = time.monotonic()
        with pytest.raises(XetStorageError) as failed:
            client.commit_files("me/model", "main", [(weights(tmp_path), "model.safetensors")], "add")
        took = time.monotonic() - start
    print(f"[xet {behaviour}] failed in {took:.1f} s")
    assert took < 30
    assert failed.value.kind == kind
    line = message_for(failed.value)
    assert said in line and cas in line and "\n" not in line
    assert "cannot reach the Hub" not in line and xet_hub.token not in line
    assert api.list_repo_commits("me/model")[0].title == "initial commit"  # nothing committed


def test_a_storage_that_never_answers_is_given_up_on(
    xet_hub: XetStandIn, api: HfApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "XET_STALL_SECONDS", 3.0)  # 60 s in earnest
    api.create_repo("me/model")
    with storage_server("hang") as cas:
        xet_hub.hub.server.xet_cas_url = cas
        start = time.monotonic()
        with pytest.raises(XetStorageError) as failed:
            fast(xet_hub.endpoint, xet_hub.token).commit_files(
                "me/model", "main", [(weights(tmp_path), "model.safetensors")], "add"
            )
        took = time.monotonic() - start
    print(f"[xet hang] failed in {took:.1f} s")
    assert failed.value.kind == "broken" and took < 15
    assert "no byte read or sent for 3 s" in message_for(failed.value)


def test_hf_xet_uploads_to_the_storage_hubsync_was_handed_and_checked(
    xet_hub: XetStandIn, api: HfApi, tmp_path: Path
) -> None:
    api.create_repo("me/model")
    client = fast(xet_hub.endpoint, xet_hub.token)
    assert client.offers_xet("me/model", "main")  # the local Hub's own storage
    with storage_server("closed") as elsewhere:
        xet_hub.hub.server.xet_cas_url = elsewhere  # what the token route names from now on, to hf_xet too
        done = client.commit_files("me/model", "main", [(weights(tmp_path), "model.safetensors")], "add")
    assert done.created and done.xet


def test_storage_a_hub_may_not_name_is_refused(xet_hub: XetStandIn, api: HfApi) -> None:
    api.create_repo("me/model")
    xet_hub.hub.server.xet_cas_url = "ftp://cas.example/storage"
    with pytest.raises(HubError, match="Xet token answer is not what a Hub sends"):
        fast(xet_hub.endpoint, xet_hub.token).offers_xet("me/model", "main")


def test_a_token_that_expires_during_the_run_is_named_so(xet_hub: XetStandIn, api: HfApi, tmp_path: Path) -> None:
    api.create_repo("me/model")
    client = fast(xet_hub.endpoint, xet_hub.token)
    with storage_server("401") as cas:  # as a storage refuses an expired token
        xet_hub.hub.server.xet_cas_url = cas
        assert client.offers_xet("me/model", "main")  # a token valid for an hour
        xet_hub.handler.shift = -2 * 86400  # from now on the Hub hands out tokens expired two days ago
        start = time.monotonic()
        with pytest.raises(XetStorageError) as failed:
            client.commit_files("me/model", "main", [(weights(tmp_path), "model.safetensors")], "add")
        took = time.monotonic() - start
    print(f"[xet expired] failed in {took:.1f} s")
    assert failed.value.kind == "expired" and took < 30
    assert "have already expired" in message_for(failed.value)


def test_storage_that_is_down_may_come_back_for_a_watch_a_refusal_does_not() -> None:
    def failure(kind: str) -> XetStorageError:
        return XetStorageError("http://hub", "http://cas", kind, "why", "me/model", "main")

    assert [transient_failure(failure(k)) for k in ("unreachable", "broken", "refused", "expired")] == [
        True,
        True,
        False,
        False,
    ]


def test_a_local_storage_that_fails_never_shows_its_folder(xet_hub: XetStandIn, api: HfApi, tmp_path: Path) -> None:
    api.create_repo("me/model")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where hf_xet wants its folder")
    xet_hub.hub.server.xet_cas_url = f"local://{blocker}"
    with pytest.raises(XetStorageError) as failed:
        fast(xet_hub.endpoint, xet_hub.token).commit_files("me/model", "main", [(weights(tmp_path), "m.bin")], "add")
    assert failed.value.storage == "a local folder"
    line = message_for(failed.value)
    print(f"[xet local] {line}")
    assert "(a local folder)" in line and str(tmp_path) not in line
    assert str(tmp_path) not in str(failed.value.__cause__)  # nor in the traceback HUBSYNC_DEBUG shows


def test_a_token_route_that_fails_under_hf_xet_is_the_hubs(xet_hub: XetStandIn, api: HfApi, tmp_path: Path) -> None:
    api.create_repo("me/model")
    xet_hub.handler.first = [0] + [401] * 9  # the probe is answered, hf_xet's own asks for a token refused
    with storage_server("500") as cas, pytest.raises(TokenRejectedError) as failed:
        xet_hub.hub.server.xet_cas_url = cas  # storage that needs a token (local:// takes none)
        fast(xet_hub.endpoint, xet_hub.token).commit_files("me/model", "main", [(weights(tmp_path), "m.bin")], "add")
    assert "Xet token route" in failed.value.detail


def test_a_push_whose_xet_storage_does_not_answer_says_so_in_one_line(
    checkpoint: Path, xet_hub: XetStandIn, tmp_path: Path
) -> None:
    with storage_server("closed") as cas:
        xet_hub.hub.server.xet_cas_url = cas
        start = time.monotonic()
        result = CliRunner().invoke(
            cli,
            ["push", str(checkpoint), "--repo", "me/tiny"],
            env={"HF_ENDPOINT": xet_hub.endpoint, "HF_TOKEN": xet_hub.token},
            catch_exceptions=False,
        )
        took = time.monotonic() - start
    print(f"[xet closed] hubsync push failed in {took:.1f} s: {result.stderr.strip()}")
    assert result.exit_code == 1
    assert took < 30
    assert result.stderr.startswith(f"Error: cannot reach the Xet storage ({cas}) that the Hub at")
    assert result.stderr.count("\n") == 1 and xet_hub.token not in result.stderr


def test_xet_limits_bound_hf_xets_retries_unless_the_user_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    config = xet_config()
    assert config.get("client.retry_max_attempts") == XET_LIMITS["client.retry_max_attempts"]
    assert config.get("client.retry_max_duration") == XET_LIMITS["client.retry_max_duration"]
    monkeypatch.setenv("HF_XET_CLIENT_RETRY_MAX_ATTEMPTS", "7")  # read when a commit runs, not at import
    assert xet_config().get("client.retry_max_attempts") == 7


# -- what each push sent; unchanged files never handed to huggingface_hub --


def push_json(stand_in: XetStandIn, checkpoint: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(
        cli,
        ["push", str(checkpoint), "--repo", "me/tiny", "--json", *args],
        env={"HF_ENDPOINT": stand_in.endpoint, "HF_TOKEN": stand_in.token},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    return cast(dict[str, Any], json.loads(result.stdout)["results"][0])


def test_a_push_says_what_it_sent_after_xets_deduplication(checkpoint: Path, xet_hub: XetStandIn) -> None:
    xet_hub.handler.offers_xet = False  # plain LFS first: what LFS sends, to compare
    lfs = push_json(xet_hub, checkpoint, "--revision", "lfs")
    lfs_again = push_json(xet_hub, checkpoint, "--revision", "lfs-again")  # the same files, another branch
    assert lfs["via_xet"] is False and lfs_again["via_xet"] is False
    assert lfs["sent_bytes"] == lfs["checkpoint_bytes"]  # every file new to the repository
    assert lfs_again["sent_bytes"] < lfs["sent_bytes"]  # the LFS objects are there: only the regular files

    xet_hub.handler.offers_xet = True
    first = push_json(xet_hub, checkpoint, "--revision", "first")  # a repository whose Xet storage is still empty
    again = push_json(xet_hub, checkpoint, "--revision", "again")
    size = first["checkpoint_bytes"]
    print(
        f"[xet sent] LFS {lfs['sent_bytes']} then {lfs_again['sent_bytes']} of {size}; "
        f"Xet {first['sent_bytes']} then {again['sent_bytes']} of {size}"
    )
    assert first["via_xet"] is True and again["via_xet"] is True
    assert 0.5 * size < first["sent_bytes"] <= 1.05 * size
    # Only the regular files again (their README names its revision): Xet's storage held the weights already.
    assert abs(again["sent_bytes"] - lfs_again["sent_bytes"]) < 0.01 * size


def test_a_commit_of_files_xet_storage_holds_sends_nothing(xet_hub: XetStandIn, tmp_path: Path) -> None:
    client = HubClient(xet_hub.endpoint, xet_hub.token)
    client.ensure_repo("me/model", private=True)
    client.ensure_branch("me/model", "again")
    model = weights(tmp_path, size=3_000_000)

    first = client.commit_files("me/model", "main", [(model, "model.safetensors")], "add")
    again = client.commit_files("me/model", "again", [(model, "model.safetensors")], "add")

    print(f"[xet sent] {first.sent_bytes} then {again.sent_bytes} of {model.stat().st_size}")
    assert first.xet and again.xet and first.created and again.created
    assert 0.99 * 3_000_000 <= (first.sent_bytes or 0) <= 1.01 * 3_000_000  # random bytes: nothing to deduplicate
    assert again.sent_bytes is not None and again.sent_bytes < 0.01 * 3_000_000


def test_the_human_output_says_what_was_sent(checkpoint: Path, xet_hub: XetStandIn) -> None:
    def push(*args: str) -> str:
        env = {"HF_ENDPOINT": xet_hub.endpoint, "HF_TOKEN": xet_hub.token}
        result = CliRunner().invoke(cli, ["push", str(checkpoint), "--repo", "me/tiny", *args], env=env)
        assert result.exit_code == 0, result.stderr
        return result.stdout

    assert re.search(
        r"^  sent:   [\d.]+ KB of [\d.]+ KB \(through Xet(; the Hub already held [\d.]+ [KMG]?B)?\)$", push(), re.M
    )
    xet_hub.handler.offers_xet = False
    lfs = push("--revision", "lfs")
    assert re.search(r"^  sent:   [\d.]+ KB of [\d.]+ KB( \(the Hub already held [\d.]+ [KMG]?B\))?$", lfs, re.M)


@pytest.mark.parametrize("offers_xet", [True, False], ids=["xet", "lfs"])
def test_a_partly_changed_push_hands_over_only_what_changed(
    checkpoint: Path, xet_hub: XetStandIn, offers_xet: bool
) -> None:
    xet_hub.handler.offers_xet = offers_xet
    first = push_json(xet_hub, checkpoint)
    handed = [paths for revision, paths in xet_hub.handler.preuploads if revision == "checkpoint-30"]
    assert "adapter_model.safetensors" in handed[-1]
    state = checkpoint / "trainer_state.json"
    state.write_text(state.read_text().replace("\n", "\n ", 1))  # the same run, one file rewritten

    second = push_json(xet_hub, checkpoint)

    assert second["created"] is True
    handed = [paths for revision, paths in xet_hub.handler.preuploads if revision == "checkpoint-30"]
    assert handed[-1] == ["trainer_state.json"]
    assert second["sent_bytes"] == state.stat().st_size < first["sent_bytes"]
    assert second["via_xet"] is False  # a regular file: hf_xet was not even started


def test_unchanged_files_are_left_out_before_huggingface_hub_sees_them(tmp_path: Path) -> None:
    same = weights(tmp_path, "same.safetensors", 1000)
    other = weights(tmp_path, "other.safetensors", 1000)
    held = [
        RemoteFile("same.safetensors", 1000, local_hashes(same).sha256, "ignored"),
        RemoteFile("other.safetensors", 1000, "0" * 64, "ignored"),
        RemoteFile("config.json", 2, None, local_hashes(b"{}").git_oid),
    ]
    files = [(same, "same.safetensors"), (other, "other.safetensors"), (b"{}", "config.json"), (b"[]", "new.json")]

    assert changed_files(files, held) == [(other, "other.safetensors"), (b"[]", "new.json")]
