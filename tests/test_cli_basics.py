"""The command line as a newcomer meets it: help, version, lazy imports, `hubsync localhub` (the packaged wheel:
test_install.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import HfApi

from hubsync.cli import cli


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.stdout
    assert f"hubsync {command}" in result.stdout


def test_python_dash_m_and_version() -> None:
    done = subprocess.run([sys.executable, "-m", "hubsync", "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert done.stdout.startswith("hubsync, version ")


def test_help_and_localhub_do_not_import_torch_transformers_or_peft() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from hubsync.cli import cli\n"
        "import hubsync.localhub, hubsync.localhub.server, hubsync.core.plan, hubsync.hub.client\n"
        "assert CliRunner().invoke(cli, ['--help']).exit_code == 0\n"
        "assert CliRunner().invoke(cli, ['localhub', '--help']).exit_code == 0\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _start_localhub(root: Path, *extra: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubsync", "localhub", "--root", str(root), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip() for _ in range(2)]
    return proc, dict(line.split("=", 1) for line in lines)


def test_localhub_prints_settings_for_eval_and_keeps_everything_across_restarts(tmp_path: Path) -> None:
    proc, settings = _start_localhub(tmp_path / "hub")
    try:
        assert set(settings) == {"HF_ENDPOINT", "HF_TOKEN"}
        assert settings["HF_ENDPOINT"].startswith("http://127.0.0.1:")
        api = HfApi(endpoint=settings["HF_ENDPOINT"], token=settings["HF_TOKEN"])
        api.create_repo("me/kept", private=True)
        api.create_branch("me/kept", branch="b")
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0

    proc, again = _start_localhub(tmp_path / "hub")
    try:
        assert again["HF_TOKEN"] == settings["HF_TOKEN"]  # the generated token is stored under --root
        api = HfApi(endpoint=again["HF_ENDPOINT"], token=again["HF_TOKEN"])
        assert {b.name for b in api.list_repo_refs("me/kept").branches} == {"main", "b"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_localhub_accepts_a_given_user_and_token(tmp_path: Path) -> None:
    proc, settings = _start_localhub(tmp_path / "hub", "--user", "alice", "--token", "hf_alice_token_123")
    try:
        assert settings["HF_TOKEN"] == "hf_alice_token_123"
        assert HfApi(endpoint=settings["HF_ENDPOINT"], token="hf_alice_token_123").whoami()["name"] == "alice"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_localhub_on_a_busy_port_is_a_usage_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli, ["localhub", "--root", str(tmp_path / "hub"), "--port", str(port)])
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
