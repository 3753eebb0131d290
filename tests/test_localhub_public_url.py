"""`hubsync localhub --public-url` (issue 15): HF_ENDPOINT= names the proxy's address, so the address the server
listens on (the one a proxy forwards to; with --port 0 picked at random) is printed on stderr, off the KEY=VALUE
lines that `export $(cat hub.env)` reads."""

from __future__ import annotations

import re
import select
import socket
import subprocess
import sys
from pathlib import Path

from huggingface_hub import HfApi

README = (Path(__file__).parent.parent / "README.md").read_text()


def start(*args: str) -> tuple[subprocess.Popen[str], list[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubsync", "localhub", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    env = [proc.stdout.readline().rstrip("\n") for _ in range(2)]
    # Printed before the settings, so it is there once they are; a server that says nothing fails, not hangs.
    ready, _, _ = select.select([proc.stderr], [], [], 5)
    return proc, env, proc.stderr.readline().rstrip("\n") if ready else ""


def test_with_a_public_url_and_port_0_the_listening_address_is_printed_on_stderr(tmp_path: Path) -> None:
    proc, env, said = start("--root", str(tmp_path / "hub"), "--port", "0", "--public-url", "https://hub.example/")
    try:
        assert all(re.fullmatch(r"[A-Z_]+=\S+", line) for line in env), env  # still `export $(cat hub.env)`
        settings = dict(line.split("=", 1) for line in env)
        assert settings["HF_ENDPOINT"] == "https://hub.example"
        found = re.fullmatch(r"localhub: listening on (http://127\.0\.0\.1:([0-9]+)) \(clients use (\S+)\)", said)
        assert found, said
        assert int(found[2]) > 0 and found[3] == "https://hub.example"
        # What a proxy would forward to: the real server, answering the printed token.
        assert HfApi(endpoint=found[1], token=settings["HF_TOKEN"]).whoami()["name"] == "me"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_the_readme_shows_what_a_public_url_prints(tmp_path: Path) -> None:
    (shown,) = re.findall(r"```text\n\$ (hubsync localhub [^\n]*--public-url[^\n]*)\n(.*?)```", README, re.S)
    command, output = shown
    with socket.socket() as probe:  # a free port in place of the README's 8000
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    args = command.replace("/tmp/hub", str(tmp_path / "hub")).replace("8000", port).split()[2:]
    proc, env, said = start(*args)
    try:
        token = dict(line.split("=", 1) for line in env)["HF_TOKEN"]
        assert [said, *env] == output.replace("8000", port).replace("HF_TOKEN=...", f"HF_TOKEN={token}").splitlines()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_without_a_public_url_hf_endpoint_is_the_listening_address(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubsync", "localhub", "--root", str(tmp_path / "hub")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip() for _ in range(2)]
    proc.terminate()
    _, err = proc.communicate(timeout=10)
    assert lines[0].startswith("HF_ENDPOINT=http://127.0.0.1:")  # the listening address itself
    assert "listening" not in err
