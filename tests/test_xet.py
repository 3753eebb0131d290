"""hubsync asks the endpoint whether it offers Xet, and uploads through plain LFS when it does not."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from conftest import local_hub
from huggingface_hub import HfApi, constants

from hubsync.hub.client import HubClient, _xet


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
