"""No token, absolute local path, user name or host name leaves the machine, and no token reaches a terminal.

A recognisable token (the local Hub's own token for `me`, so that pushes succeed) and a checkpoint whose files
carry it and the machine's paths the way the Trainer and PEFT write them (training_args.bin's hub_token and
output_dir, trainer_state.json's best_model_checkpoint, adapter_config.json's local base model path) go
through every command, succeeding and failing. Then stdout, stderr, the log records, HUBSYNC_DEBUG tracebacks,
the --json output, and everything the Hub stored (files of every revision, commit titles and messages) are
searched for them.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from conftest import local_hub, push
from huggingface_hub import HfApi
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hubsync.cli import cli
from hubsync.core.errors import HubsyncError
from hubsync.hub.client import HubClient
from hubsync.localhub import RunningHub

CANARY = "hf_SECRETcanary0a1b2c3d4e5f60718293"
WRONG = "hf_SECRETcanaryWRONG00000000000000"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[RunningHub]:
    """Overrides conftest's: a local Hub whose user `me` has the canary token."""
    with local_hub(tmp_path / "hub-root", token=CANARY) as running:
        yield running


@pytest.fixture
def leaky(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real run's last checkpoint, with what real runs put into it: the token in training_args.bin (as
    TrainingArguments(hub_token=...) keeps it), absolute paths in output_dir and best_model_checkpoint, and the
    base model loaded from a local folder."""
    monkeypatch.chdir(tmp_path)
    ckpt = Path(shutil.copytree(tiny_run / "checkpoint-30", tmp_path / "run" / "checkpoint-30"))
    args = torch.load(ckpt / "training_args.bin", weights_only=False)  # written by the real run: trusted
    args.hub_token = CANARY
    args.output_dir = str(ckpt.parent)
    torch.save(args, ckpt / "training_args.bin")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    state["best_model_checkpoint"] = str(ckpt)
    state["best_metric"] = 4.5
    (ckpt / "trainer_state.json").write_text(json.dumps(state, indent=2))
    adapter = json.loads((ckpt / "adapter_config.json").read_text())
    adapter["base_model_name_or_path"] = str(tmp_path / "models" / "tiny-llama")
    (ckpt / "adapter_config.json").write_text(json.dumps(adapter, indent=2))
    return ckpt


def forbidden(tmp_path: Path) -> list[str]:
    """What must never be published: the token, and what names this machine and its user."""
    return [CANARY, WRONG, str(tmp_path), str(Path.home()) + "/", str(tmp_path.resolve())]


def words_of_the_machine() -> list[re.Pattern[str]]:
    names = {getpass.getuser(), socket.gethostname()}
    return [re.compile(rf"(?<![\w.-]){re.escape(n)}(?![\w-])") for n in names if n]


def cli_env(hub: RunningHub, token: str = CANARY, **extra: str) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": token, **extra}


def invoke(*args: str, env: dict[str, str]) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def assert_no_token(result: Result | subprocess.CompletedProcess[str]) -> str:
    out = result.stdout + result.stderr
    assert CANARY not in out and WRONG not in out and "SECRETcanary" not in out, out
    return out


# -- what the terminal and the logs show -----------------------------------------------------------------------------


def test_commands_that_succeed_never_show_the_token(
    leaky: Path, hub: RunningHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    base = ("--base-model", "hubsync/tiny-random-llama")
    runs = [
        invoke("push", "run/checkpoint-30", "--repo", "me/tiny", *base, "--training-state", "keep", env=cli_env(hub)),
        invoke("push", "run/checkpoint-30", "--repo", "me/tiny", *base, "--json", env=cli_env(hub)),
        invoke("push", "run/checkpoint-30", "--repo", "me/tiny", *base, "--dry-run", env=cli_env(hub)),
        invoke("push", "run/checkpoint-30", "--repo", "me/tiny", *base, "--dry-run", "--json", env=cli_env(hub)),
        invoke("push", "run/checkpoint-30", "--repo", "me/flag", *base, "--token", CANARY, env=cli_env(hub, token="")),
        invoke("ls", "me/tiny", env=cli_env(hub)),
        invoke("ls", "me/tiny", "--json", env=cli_env(hub)),
        invoke("pull", "me/tiny", "--to", "pulled", env=cli_env(hub)),
        invoke("pull", "me/tiny", "--to", "pulled2", "--json", "--token", CANARY, env=cli_env(hub, token="")),
        invoke("card", "run/checkpoint-30", *base, env=cli_env(hub)),
    ]
    for result in runs:
        assert result.exit_code == 0, result.stderr
        out = assert_no_token(result)
        assert str(tmp_path) not in out, out
    assert CANARY not in caplog.text  # debug logs of the libraries name local paths, but never the token


@pytest.fixture
def others_repo(hub: RunningHub) -> str:
    """A public repository of another user, `other`."""
    token = hub.server.store.ensure_user("other", "hf_other_users_token_1")
    HfApi(endpoint=hub.endpoint, token=token).create_repo("other/theirs")
    return "other/theirs"


def failures(hub: RunningHub, unreachable: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    ckpt = ["push", "run/checkpoint-30", "--base-model", "hubsync/tiny-random-llama"]
    return {
        "wrong_token_401": ([*ckpt, "--repo", "me/tiny"], cli_env(hub, token=WRONG)),
        "wrong_token_flag_401": ([*ckpt, "--repo", "me/tiny", "--token", WRONG], cli_env(hub, token="")),
        "others_repo_403": ([*ckpt, "--repo", "other/theirs"], cli_env(hub)),
        "server_500": ([*ckpt, "--repo", "me/tiny"], cli_env(hub)),
        "unreachable": ([*ckpt, "--repo", "me/tiny"], cli_env(hub) | {"HF_ENDPOINT": unreachable}),
        "pull_wrong_token": (["pull", "me/tiny", "--to", "p"], cli_env(hub, token=WRONG)),
        "ls_private_of_another": (["ls", "other/private"], cli_env(hub)),
    }


@pytest.fixture
def unreachable() -> str:
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _fail_next_commits(hub: RunningHub) -> None:
    hub.server.inject_fault("POST", r"/commit/", 500, times=5, retry_after=0)


@pytest.mark.parametrize(
    "case",
    [
        "wrong_token_401",
        "wrong_token_flag_401",
        "others_repo_403",
        "server_500",
        "unreachable",
        "pull_wrong_token",
        "ls_private_of_another",
    ],
)
def test_failed_requests_never_show_the_token(
    case: str,
    leaky: Path,
    hub: RunningHub,
    others_repo: str,
    unreachable: str,
    no_waiting: None,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    HfApi(endpoint=hub.endpoint, token="hf_other_users_token_1").create_repo("other/private", private=True)
    args, env = failures(hub, unreachable)[case]
    if case == "server_500":
        _fail_next_commits(hub)

    result = invoke(*args, env=env)

    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.exception, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len([line for line in lines if not line.startswith("Hub: ")]) == 1, result.stderr  # and retry lines
    out = assert_no_token(result)
    assert str(tmp_path) not in out
    assert CANARY not in caplog.text and WRONG not in caplog.text


@pytest.fixture
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry an unreachable Hub without the pauses between attempts (1 + 2 + 4 + 8 s)."""
    monkeypatch.setattr(HubClient.__init__, "__defaults__", (None, None, (0.0, 0.0, 0.0, 0.0), None))


@pytest.mark.parametrize("case", ["wrong_token_401", "others_repo_403", "server_500", "unreachable"])
def test_hubsync_debug_tracebacks_never_show_the_token(
    case: str, leaky: Path, hub: RunningHub, others_repo: str, unreachable: str, no_waiting: None
) -> None:
    """HUBSYNC_DEBUG=1 lets the error out: the traceback Python prints, every chained exception in it, has no
    token."""
    args, env = failures(hub, unreachable)[case]
    if case == "server_500":
        _fail_next_commits(hub)
    result = invoke(*args, env={**env, "HUBSYNC_DEBUG": "1"})
    assert isinstance(result.exception, HubsyncError), result.exception
    printed = "".join(traceback.format_exception(result.exception))
    assert "Traceback" in printed and "SECRETcanary" not in printed, printed


def test_hubsync_debug_in_a_real_process(leaky: Path, hub: RunningHub) -> None:
    args, env = failures(hub, "")["wrong_token_401"]
    done = subprocess.run(
        [sys.executable, "-m", "hubsync", *args],
        env={**os.environ, **env, "HUBSYNC_DEBUG": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "TokenRejectedError" in done.stderr  # what debug mode is for
    assert_no_token(done)


# -- what is published -----------------------------------------------------------------------------------------------


def test_nothing_published_names_the_token_the_machine_or_its_user(
    leaky: Path, hub: RunningHub, tmp_path: Path
) -> None:
    for state in ("keep", "drop"):
        result = invoke(
            "push",
            "run",
            "--repo",
            f"me/{state}",
            "--base-model",
            "hubsync/tiny-random-llama",
            "--training-state",
            state,
            "--tag",
            "v1",
            "--release",
            env=cli_env(hub),
        )
        assert result.exit_code == 0, result.stderr
    api = HfApi(endpoint=hub.endpoint, token=CANARY)
    published: dict[str, bytes] = {}
    for repo in ("me/keep", "me/drop"):
        refs = api.list_repo_refs(repo)
        for ref in [*refs.branches, *refs.tags]:
            for commit in api.list_repo_commits(repo, revision=ref.target_commit):
                published[f"{repo}@{commit.commit_id} message"] = (commit.title + "\n" + commit.message).encode()
            for entry in api.list_repo_tree(repo, revision=ref.target_commit, recursive=True):
                if hasattr(entry, "blob_id"):
                    path = api.hf_hub_download(repo, entry.path, revision=ref.target_commit, cache_dir=tmp_path / "c")
                    published[f"{repo}@{ref.name}:{entry.path}"] = Path(path).read_bytes()
    # What the fixture planted is in the checkpoint, so the search below can find it:
    assert CANARY.encode() in (leaky / "training_args.bin").read_bytes()
    assert str(leaky).encode() in (leaky / "trainer_state.json").read_bytes()
    assert any(name.endswith(":training_args.json") for name in published)
    assert any(name.endswith(":trainer_state.json") for name in published)

    for name, data in published.items():
        for secret in forbidden(tmp_path):
            assert secret.encode() not in data, (name, secret)
        if name.endswith((".json", ".md", ".svg", "message", ".gitattributes")):
            text = data.decode()
            for word in words_of_the_machine():
                assert not word.search(text), (name, word.pattern)
    state = json.loads(published["me/keep@checkpoint-30:trainer_state.json"])
    assert state["best_model_checkpoint"] == "checkpoint-30"
    adapter = json.loads(published["me/keep@checkpoint-30:adapter_config.json"])
    assert adapter["base_model_name_or_path"] == "hubsync/tiny-random-llama"  # loadable from the Hub, not a path
    args = json.loads(published["me/keep@checkpoint-30:training_args.json"])
    assert "hub_token" not in args and "output_dir" not in args and args["learning_rate"] == 1e-3
    # The whole store (blobs and commit records; its tokens.json holds the token by design) has none of it.
    root = Path(hub.server.store.root)
    for blob in [*(root / "blobs").rglob("*"), *(root / "repos").rglob("*.json")]:
        if blob.is_file():
            assert CANARY.encode() not in blob.read_bytes(), blob
            assert str(tmp_path).encode() not in blob.read_bytes(), blob


# -- scrubbed by value: wherever a secret sits in whichever JSON file ------------------------------------------------

SECRETS = st.sampled_from(
    [
        "hf_" + "Qx7" * 10,
        "api_org_" + "Zk4" * 9,
        "ghp_" + "Ab1" * 12,
        "github_pat_11" + "Cd2_" * 10,
        "sk-proj-" + "Ef3" * 10,
        "AKIA" + "GH4IJ5KL6MN7OP8Q",
        "xoxb-1234-5678-" + "Rs9" * 6,
        "npm_" + "Tu5v" * 9,
        "pypi-AgEIcHlwaS5vcmc" + "Wx6" * 14,
        "sk_live_" + "Yz7" * 8,
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "ya29." + "a0AfH6SM" * 4,
    ]
)
KEYS = st.sampled_from(["note", "env", "extra", "HF_TOKEN", "x", "command", "0", "eos_token"])
WRAPS = st.sampled_from(["{}", "HF_TOKEN={}", "export TOKEN='{}'", "Bearer {}", "a {} b", "--token={} --x"])


def _placed(secret: str, keys: list[str], wrap: str, as_key: bool) -> Any:
    """A JSON value holding `secret` at the end of `keys` (a list level for a digit), inside a longer text, or
    as a key."""
    value: Any = {wrap.format(secret): 1} if as_key else wrap.format(secret)
    for key in reversed(keys):
        value = [value] if key.isdigit() else {"pad_token": "<pad>", key: value}
    return value


@settings(max_examples=300, deadline=None)
@given(SECRETS, st.lists(KEYS, max_size=6), WRAPS, st.booleans(), st.booleans())
def test_a_token_is_scrubbed_wherever_it_sits(
    secret: str, keys: list[str], wrap: str, as_key: bool, known: bool
) -> None:
    from hubsync.core.secrets import Identity, scrubbed_json

    who = Identity(home="/home/alice", runs=("/home/alice/proj/out/run",), user="alice", host="box7",
                   tokens=(secret,) if known else ())  # fmt: skip
    raw = json.dumps({"model_type": "llama", "data": _placed(secret, keys, wrap, as_key)}).encode()
    clean = scrubbed_json("tokenizer_config.json", raw, who)
    assert clean is not None and secret.encode() not in clean and secret[4:].encode() not in clean
    assert json.loads(clean)["model_type"] == "llama"
    assert scrubbed_json("config.json", json.dumps({"a": [1, {"b": "plain words"}]}).encode(), who) is None


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["/home/alice/proj/out/run", "/home/alice", "box7", "box7.lab.example.org"]),
    st.sampled_from(["{}", "{}/checkpoint-30", "runs/Jan01_12-00-00_{}", "{}/runs/May02_box7", "cd {}/x && go"]),
    st.lists(KEYS, max_size=4),
)
def test_paths_and_names_of_the_machine_are_scrubbed(where: str, wrap: str, keys: list[str]) -> None:
    from hubsync.core.secrets import Identity, scrubbed_json

    who = Identity(home="/home/alice", runs=("/home/alice/proj/out/run",), user="alice", host="box7.lab.example.org")
    text = wrap.format(where)
    assume("/" in text or text == where)  # a bare word is left alone in a longer text: it may be a vocabulary's
    clean = scrubbed_json(
        "trainer_state.json", json.dumps({"d": _placed(where, keys, "{}", False), "w": text}).encode(), who
    )
    assert clean is not None
    assert b"/home/alice" not in clean and b"box7" not in clean and b"alice" not in clean, clean


@pytest.fixture
def secretive(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The run's last checkpoint with secrets where real runs and careless scripts leave them: the host name in
    logging_dir (transformers 4.x: runs/<date>_<hostname>), absolute paths in tokenizer_config.json and in a
    nested config.json field, a token inside a value in trainer_state.json."""
    monkeypatch.chdir(tmp_path)
    ckpt = Path(shutil.copytree(tiny_run / "checkpoint-30", tmp_path / "run" / "checkpoint-30"))
    args = torch.load(ckpt / "training_args.bin", weights_only=False)  # written by the real run: trusted
    args.logging_dir = f"runs/Jan01_12-00-00_{socket.gethostname()}"
    args.run_name = f"HF_TOKEN={CANARY} python train.py"
    torch.save(args, ckpt / "training_args.bin")
    tokenizer = {"model_max_length": 64, "name_or_path": str(tmp_path / "models" / "tok"), "eos_token": "</s>"}
    (ckpt / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    config = {"model_type": "llama", "extra": {"deep": [{"cache": str(Path.home() / ".cache" / "x")}]}}
    (ckpt / "config.json").write_text(json.dumps(config))
    state = json.loads((ckpt / "trainer_state.json").read_text())
    state["trial_params"] = {"command": f"wandb login {'ab12' * 10}; export GH=ghp_{'Ab1' * 12}"}
    (ckpt / "trainer_state.json").write_text(json.dumps(state, indent=2))
    (ckpt / "generation_config.json").write_text('{"max_new_tokens": 8}\n')  # nothing to scrub
    return ckpt


def test_every_published_json_is_scrubbed_and_the_checkpoint_left_alone(
    secretive: Path, hub: RunningHub, tmp_path: Path
) -> None:
    before = {p.name: p.read_bytes() for p in secretive.iterdir() if p.is_file()}
    result = invoke("push", "run/checkpoint-30", "--repo", "me/s", "--base-model", "hubsync/tiny-random-llama",
                    "--training-state", "keep", env=cli_env(hub))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    api = HfApi(endpoint=hub.endpoint, token=CANARY)
    names = [f.path for f in api.list_repo_tree("me/s", revision="checkpoint-30", recursive=True)]
    published = {
        n: Path(api.hf_hub_download("me/s", n, revision="checkpoint-30", cache_dir=tmp_path / "c")).read_bytes()
        for n in names
        if n.endswith(".json")
    }
    assert {"training_args.json", "tokenizer_config.json", "config.json", "trainer_state.json"} <= set(published)
    for name, data in published.items():
        text = data.decode()
        for secret in [*forbidden(tmp_path), str(Path.home() / ".cache"), "ab12" * 10, "ghp_"]:
            assert secret not in text, (name, secret)
        host = re.escape(socket.gethostname())
        assert not re.search(rf"(?<![A-Za-z0-9]){host}(?![A-Za-z0-9])", text), name
    assert socket.gethostname() not in json.loads(published["training_args.json"]).get("logging_dir", "")
    assert json.loads(published["tokenizer_config.json"])["eos_token"] == "</s>"
    assert json.loads(published["config.json"])["extra"]["deep"][0]["cache"] == "~/.cache/x"
    assert published["generation_config.json"] == before["generation_config.json"]  # nothing scrubbed: same bytes
    assert {p.name: p.read_bytes() for p in secretive.iterdir() if p.is_file()} == before  # never modified


# -- a Hub that quotes the Authorization header in its errors ---------------------------------------------------------

LOCAL_TOKEN = "Zq9-local-secret-777"  # shaped like no service's token: only knowing it takes it out


@pytest.fixture
def echoing_hub() -> Iterator[str]:
    """A Hub that refuses every request, quoting the header it got, in its body and its X-Error-Message."""

    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            said = f"bad request, your headers: Authorization: {self.headers.get('Authorization')}"
            body = json.dumps({"error": said}).encode()
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Error-Message", said)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("given", ["--token", "saved", "HF_TOKEN"])
@pytest.mark.parametrize("debug", [False, True])
def test_a_hub_quoting_the_authorization_header_never_shows_the_token(
    given: str, debug: bool, leaky: Path, echoing_hub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    saved = tmp_path / "saved-token"
    saved.write_text(LOCAL_TOKEN)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(saved if given == "saved" else tmp_path / "none"))
    env = {"HF_ENDPOINT": echoing_hub, **({"HF_TOKEN": LOCAL_TOKEN} if given == "HF_TOKEN" else {})}
    env |= {"HUBSYNC_DEBUG": "1"} if debug else {}
    flag = ["--token", LOCAL_TOKEN] if given == "--token" else []
    commands = [
        ["push", "run/checkpoint-30", "--repo", "me/x", "--base-model", "hubsync/tiny-random-llama"],
        ["pull", "me/x", "--revision", "checkpoint-30", "--to", "p"],
        ["ls", "me/x"],
        ["prune", "me/x", "--keep", "1"],
    ]
    for command in commands:
        result = CliRunner().invoke(cli, [*command, *flag], env=env)
        assert result.exit_code != 0, (command, result.output)
        shown = result.output
        if debug and result.exception is not None and not isinstance(result.exception, SystemExit):
            shown += "".join(traceback.format_exception(result.exception))
        elif not debug:
            assert result.exit_code == 1 and "403" in result.stderr, (command, result.stderr)
        assert LOCAL_TOKEN not in shown and "secret-777" not in shown, (command, shown)


SECRET_KEYS = st.sampled_from(
    [
        "password",
        "hub_token",
        "HF_TOKEN",
        "api_key",
        "apikey",
        "secret",
        "client_secret",
        "db_passwd",
        "token",
        "github_token",
        "aws_access_key_id",
        "private_key",
        "credentials",
    ]
)
HARMLESS = {"pad_token": "<pad>", "eos_token": "</s>", "wandb_project": "my-run", "push_to_hub_token": "<HUB_TOKEN>"}


@settings(max_examples=150, deadline=None)
@given(SECRET_KEYS, st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=30))
def test_a_value_under_a_secret_name_is_scrubbed_however_short(key: str, value: str) -> None:
    from hubsync.core.secrets import Identity, scrubbed_json

    assume(value.strip() and not re.fullmatch(r"<[A-Z_]+>", value))
    who = Identity(home="/home/alice", runs=(), user="alice", host="box7")
    raw = json.dumps({"model_type": "llama", "nested": [{key: value}], **HARMLESS}).encode()
    clean = json.loads(scrubbed_json("training_args.json", raw, who) or raw)
    assert clean["nested"][0][key] == "<redacted>"
    assert {k: clean[k] for k in HARMLESS} == HARMLESS  # a tokenizer's tokens, a project's name, a placeholder


@settings(max_examples=150, deadline=None)
@given(
    st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+=!%-@/"), min_size=6),
    st.sampled_from(
        [
            "https://alice:{}@internal.example/x",
            "git clone https://bot:{}@git.example/r.git",
            "AWS_SECRET_ACCESS_KEY={}",
            "export DB_PASSWORD='{}'",
            "HF_TOKEN: {}",
            "MY_API_KEY={} python train.py",
            "redis://:{}@cache:6379",
            "aws_secret_access_key={}",
            "db_passphrase: '{} and more words'",
        ]
    ),
    st.lists(KEYS, max_size=3),
)
def test_a_secret_is_scrubbed_by_where_it_sits_whatever_it_looks_like(secret: str, wrap: str, keys: list[str]) -> None:
    from hubsync.core.secrets import Identity, scrubbed_json

    who = Identity(home="/home/alice", runs=(), user="alice", host="box7")
    text = wrap.format(secret)
    raw = json.dumps({"model_type": "llama", "data": _placed(secret, keys, wrap, as_key=False)}).encode()
    clean = scrubbed_json("training_args.json", raw, who)
    assert clean is not None and json.dumps(secret).strip('"').encode() not in clean, (text, clean)
    chat = '{% set eos_token = "</s>" %}{{ bos_token }}'  # a chat template's words are left as they are
    kept = json.dumps({"chat_template": chat, "pad_token": "<pad>"}).encode()
    assert scrubbed_json("tokenizer_config.json", kept, who) is None


@pytest.mark.parametrize("at", [0, 8 * 2**20 - 10, 40 * 2**20])  # the start, across two pieces, deep inside
def test_a_json_too_large_to_scrub_that_holds_a_token_is_refused(
    checkpoint: Path, hub: RunningHub, api: HfApi, at: int
) -> None:
    big = checkpoint / "tokenizer_extra.json"
    filler = b'{"v": "' + b"a" * (65 * 2**20) + b'"}'
    token = b" hf_" + b"Zq8" * 12 + b" "  # inside a longer text, as in a command line
    big.write_bytes(filler[: at + 7] + token + filler[at + 7 :])
    result = push(hub, str(checkpoint), "--repo", "me/big")
    assert result.exit_code == 1 and result.stderr.startswith(
        'Error: refused "tokenizer_extra.json": it holds something shaped like a token, and it is larger'
    )
    assert not api.repo_exists("me/big")
    big.write_bytes(filler)  # no token: published as it is
    assert push(hub, str(checkpoint), "--repo", "me/big", "--dry-run").exit_code == 0


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.txt", "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY\n"),
        ("deploy.yaml", "hf: {token}\n"),  # the token in use, whatever its shape
        ("run.sh", "huggingface-cli login --token hf_" + "Kp3" * 12 + "\n"),
        ("extra.safetensors", None),  # a token in the header's metadata
    ],
)
def test_a_file_published_byte_for_byte_that_holds_a_token_is_refused(
    checkpoint: Path, hub: RunningHub, api: HfApi, name: str, content: str | None
) -> None:
    if content is None:
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(2)}, str(checkpoint / name), metadata={"note": "ghp_" + "Ab1" * 12})
    else:
        (checkpoint / name).write_text(content.format(token=hub.token))
    for args in (["--dry-run"], ["--public"]):
        result = push(hub, str(checkpoint), "--repo", "me/leak", *args)
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith(f'Error: refused "{name}": it holds something shaped like a token')
        assert hub.token not in result.output
    assert not api.repo_exists("me/leak")


def test_a_token_in_a_name_the_card_shows_is_scrubbed_from_the_card(
    checkpoint: Path, hub: RunningHub, api: HfApi
) -> None:
    secret = "hf_" + "Mn4" * 12
    path = checkpoint / "trainer_state.json"
    state = json.loads(path.read_text())
    state["log_history"].append({"step": 30, f"eval_{secret}": 0.5, "eval_loss": 1.0})
    path.write_text(json.dumps(state))
    result = push(hub, str(checkpoint), "--repo", "me/card")
    assert result.exit_code == 0, result.output
    for name in ("README.md", "trainer_state.json"):
        published = Path(api.hf_hub_download("me/card", name, revision="checkpoint-30")).read_text()
        assert secret not in published and "<redacted>" in published, name


@pytest.mark.parametrize("unit", ["TOKEN", "secret", "password: ", "PASSWORD=", "https://u:", "://a:", "a:"])
def test_scrubbing_takes_linear_time_on_repeated_secret_words(unit: str) -> None:
    """A published text of a secret's name said 40,000 times (as a trainer_state.json's trial_name can hold) is
    scrubbed in one pass: with nested repetitions in the patterns, 'TOKEN' * 40000 took hours. The guard is a
    hang bound, not a speed target: linear code takes about a second here."""
    from hubsync.core.secrets import redact

    done: list[str] = []
    worker = threading.Thread(target=lambda: done.append(redact(unit * 40_000)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert done, f"scrubbing {unit!r} * 40000 ran past 60 s"
    assert "hunter2" not in redact(unit * 3 + "DB_PASSWORD=hunter22 " + unit * 3)


@settings(max_examples=200, deadline=None)
@given(
    before=st.text(alphabet="=: _TOKENPASWRD'\"\n", max_size=30),  # nothing the value is made of
    name=st.sampled_from(["HF_TOKEN", "DB_PASSWORD", "api_key", "AWS_SECRET_ACCESS_KEY", "my_credentials"]),
    gap=st.sampled_from(["=", ": ", " = ", ":"]),
    value=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789!#%&", min_size=8, max_size=20),
)
def test_a_value_assigned_to_a_secret_name_never_survives_scrubbing(
    before: str, name: str, gap: str, value: str
) -> None:
    from hubsync.core.secrets import redact

    text = f"{before} {name}{gap}{value}\n"
    assert value not in redact(text), text


_SECRET_PIECES = [
    "hf_" + "a1" * 12,
    "ghp_" + "B" * 36,
    "sk-proj-" + "x" * 24,
    "AKIA" + "A" * 16,
    "Authorization: Bearer abcdefgh1234",
    "https://user:hunter2@example.com/x",
    "DB_PASSWORD=swordfish",
    "api_key: 'abcdefgh'",
    "WANDB_API_KEY=" + "0" * 40,
    "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
    "eyJabcdefghij.eyJabcdefghij.abcdefghijk",
]
_NOISE = st.text(alphabet=st.characters(codec="latin-1"), max_size=300)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_NOISE, st.sampled_from(_SECRET_PIECES)), max_size=8), st.integers(0, 20_000))
def test_the_clue_scan_finds_what_redact_finds(parts: list[str], padding: int) -> None:
    """holds_token looks only around clues; it must agree with redact on the whole text (large files use it)."""
    from hubsync.core.secrets import holds_token, redact

    text = ("\x00" * padding).join(parts)
    assert holds_token(text) == (redact(text) != text)
