"""The local Hub reports its own bugs: an exception that a handler did not expect is answered 500 (which clients
retry) and recorded, `check_handler_errors` raises it, and the tests' fixtures fail the test that met it. Injected
faults, deliberate error answers and connections the client breaks are not bugs and are not recorded."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi

from hubsync.localhub import HandlerErrors, RunningHub, Store

CONFTEST = Path(__file__).with_name("conftest.py")


def refs_bug(self: Store, repo_type: str, repo_id: str) -> dict[str, dict[str, str]]:
    """A bug of the local Hub itself (a store method that breaks), not an answer a Hub would give."""
    raise RuntimeError(f"refs of {repo_id} are broken, token {next(iter(self.tokens()))}")


def client(hub: RunningHub) -> httpx2.Client:
    return httpx2.Client(base_url=hub.endpoint, headers={"authorization": f"Bearer {hub.token}"}, timeout=10)


def test_an_unexpected_exception_is_answered_500_recorded_and_raised_once(
    hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.create_repo("me/m")
    monkeypatch.setattr(Store, "refs", refs_bug)
    with client(hub) as c:
        r = c.get("/api/models/me/m/refs")
    assert r.status_code == 500 and r.json() == {"error": "Internal server error"}
    assert hub.token not in r.text

    [error] = hub.server.handler_errors
    assert (error.method, error.path, error.exception_type) == ("GET", "/api/models/me/m/refs", "RuntimeError")
    assert error.message.startswith("refs of me/m are broken")
    assert "in refs_bug" in error.traceback and "RuntimeError: refs of me/m" in error.traceback
    # The innermost line of hubsync, not the test's function that broke the store: the handler that called it.
    assert re.fullmatch(r"hubsync/localhub/[a-z_]+\.py:[0-9]+ in \w+", error.where), error.where
    # What `hubsync localhub` shows of it: no message (it may quote a token or a path).
    assert error.summary == f"RuntimeError at {error.where} (a GET request, answered 500)"

    with pytest.raises(HandlerErrors) as raised:
        hub.server.check_handler_errors()
    assert isinstance(raised.value, AssertionError)
    assert raised.value.errors == [error]
    assert "GET /api/models/me/m/refs: RuntimeError: refs of me/m are broken" in str(raised.value)
    # Reported once: the check forgets what it raised.
    assert hub.server.handler_errors == []
    hub.server.check_handler_errors()


def test_a_bug_in_the_local_hubs_own_code_is_placed_there(
    hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.create_repo("me/m")
    monkeypatch.setattr(Store, "history", lambda self, *args: [])  # a history without the commit itself
    with client(hub) as c:
        assert c.get("/api/models/me/m/tree/main", params={"expand": "true"}).status_code == 500
    [error] = hub.server.handler_errors
    assert error.exception_type == "IndexError"  # raised by the local Hub's own code, where it reads history[0]
    assert re.fullmatch(r"hubsync/localhub/[a-z_]+\.py:[0-9]+ in \w+", error.where), error.where
    with pytest.raises(HandlerErrors):
        hub.server.check_handler_errors()


def test_injected_faults_error_answers_and_broken_connections_are_not_recorded(hub: RunningHub, api: HfApi) -> None:
    api.create_repo("me/m")
    hub.server.inject_fault("GET", r"/refs$", 500)
    hub.server.inject_fault("GET", r"/api/whoami-v2$", cut_response=5)
    with client(hub) as c:
        assert c.get("/api/models/me/m/refs").status_code == 500  # injected
        with pytest.raises(httpx2.TransportError):
            c.get("/api/whoami-v2")  # injected: the answer breaks off
    with client(hub) as c:
        assert c.get("/api/models/me/nothing/refs").status_code == 404
        assert c.get("/api/no-such-route").status_code == 404
        assert c.delete("/api/whoami-v2").status_code == 405
        assert c.post("/api/repos/create", json={"name": "m"}).status_code == 409
        assert c.post("/api/repos/create", content=b"{" * 100).status_code == 400
        assert c.post("/api/validate-yaml", content=b" " * (2 * 1024 * 1024)).status_code == 413
        assert c.get("/me/m/resolve/main/.gitattributes", headers={"range": "bytes=x"}).status_code == 416
        assert c.get("/me/m/resolve/main/nothing.txt").status_code == 404
    assert httpx2.get(f"{hub.endpoint}/api/whoami-v2", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert httpx2.put(f"{hub.endpoint}/_lfs/{'0' * 64}?size=1", content=b"x").status_code == 403

    # A client that resets its connection in the middle of a body: the server's read fails, not its code.
    host, port = hub.server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"POST /api/validate-yaml HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
        time.sleep(0.2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    assert api.whoami()["name"] == "me"
    deadline = time.monotonic() + 10  # until every request's thread is done, the reset one included
    while any(t.name == "localhub-request" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert hub.server.handler_errors == []


# `hubsync localhub` in a process of its own, its store's `refs` broken first (a bug of the local Hub to meet).
LOCALHUB_WITH_A_BUG = """
import sys
from hubsync.localhub.store import Store

def refs(self, repo_type, repo_id):
    raise RuntimeError(f"refs of {repo_id} are broken under {self.root}, token {next(iter(self.tokens()))}")

Store.refs = refs
from hubsync.cli import main
sys.argv = ["hubsync", "localhub", "--root", sys.argv[1], "--token", "hf_canary_0123456789"]
main()
"""


def test_hubsync_localhub_says_each_kind_of_bug_once_and_keeps_serving(tmp_path: Path) -> None:
    """One line on stderr for each kind of bug, without its message, the token or an absolute path; the other
    requests are still served."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCALHUB_WITH_A_BUG, str(tmp_path / "hub")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        settings = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(2))
        headers = {"authorization": f"Bearer {settings['HF_TOKEN']}"}
        with httpx2.Client(base_url=settings["HF_ENDPOINT"], headers=headers, timeout=10) as c:
            assert c.post("/api/repos/create", json={"name": "m"}).status_code == 200
            for _ in range(3):
                assert c.get("/api/models/me/m/refs").status_code == 500
            assert c.get("/api/whoami-v2").json()["name"] == "me"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert re.fullmatch(
        r"localhub: internal error, a bug: RuntimeError at hubsync/localhub/[a-z_]+\.py:[0-9]+ in \w+ "
        r"\(a GET request, answered 500\)",
        lines[0],
    ), lines[0]
    assert "hf_canary" not in err and str(tmp_path) not in err and "broken" not in err


def test_the_fixtures_fail_the_test_that_met_a_bug(pytester: pytest.Pytester) -> None:
    """With the tests' conftest: the test that met a bug errors at its teardown (a module's shared Hub too), the
    tests around it pass."""
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        test_inner="""
import httpx2
import pytest
from conftest import local_hub
from huggingface_hub import HfApi

from hubsync.localhub import Store


def broken(self, repo_type, repo_id):
    raise RuntimeError("a bug of the local Hub")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with local_hub(tmp_path_factory.mktemp("shared") / "root") as running:
        HfApi(endpoint=running.endpoint, token=running.token).create_repo("me/m")
        yield running


def refs(hub):
    return httpx2.get(f"{hub.endpoint}/api/models/me/m/refs", headers={"authorization": f"Bearer {hub.token}"})


def test_meets_a_bug(hub, api, monkeypatch):
    api.create_repo("me/m")
    monkeypatch.setattr(Store, "refs", broken)
    assert refs(hub).status_code == 500


def test_clean(hub, api):
    api.create_repo("me/m")
    assert refs(hub).status_code == 200


def test_shared_meets_a_bug(shared, monkeypatch):
    monkeypatch.setattr(Store, "refs", broken)
    assert refs(shared).status_code == 500


def test_shared_clean(shared):
    assert refs(shared).status_code == 200


def test_a_bug_in_a_block(tmp_path, monkeypatch):
    monkeypatch.setattr(Store, "refs", broken)
    with local_hub(tmp_path / "root") as running:
        HfApi(endpoint=running.endpoint, token=running.token).create_repo("me/m")
        assert refs(running).status_code == 500
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=4, failed=1, errors=2)
    out = result.stdout.str()
    assert "ERROR at teardown of test_meets_a_bug" in out
    assert "ERROR at teardown of test_shared_meets_a_bug" in out
    assert "FAILED test_inner.py::test_a_bug_in_a_block - hubsync.localhub" in out
    assert "RuntimeError: a bug of the local Hub" in out
    assert "test_clean" not in out and "test_shared_clean" not in out
