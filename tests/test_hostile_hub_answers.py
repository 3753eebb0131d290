"""A Hub that answers with the wrong shapes (refs, repository info, trees, commits): every command says so in one
line, without a traceback, and changes nothing. The hostile Hub is a proxy in front of the local Hub that rewrites
one kind of answer."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import hub_state
from hostile_proxy import ProxyHandler, serve
from huggingface_hub import HfApi

from hubsync.cli import cli
from hubsync.localhub import RunningHub

Rewrite = Callable[[str, Any], Any]  # (request path, the real answer as JSON) -> the answer to send (or its bytes)


def _refs(change: Callable[[dict[str, Any]], Any]) -> Rewrite:
    return lambda path, body: change(body) if path.split("?")[0].endswith("/refs") else body


def _tree(change: Callable[[Any], Any]) -> Rewrite:
    return lambda path, body: change(body) if "/tree/" in path else body


def _set(items: Callable[[Any], list[dict[str, Any]]], key: str, value: Any) -> Callable[[Any], Any]:
    """Set `key` (KeyError: remove it) in each item of an answer."""

    def change(body: Any) -> Any:
        for item in items(body):
            if value is KeyError:
                item.pop(key, None)
            else:
                item[key] = value
        return body

    return change


def _each_ref(key: str, value: Any) -> Rewrite:
    return _refs(_set(lambda body: body.get("branches", []) + body.get("tags", []), key, value))


def _each_entry(key: str, value: Any) -> Rewrite:
    return _tree(_set(lambda body: body, key, value))


def _info(change: Callable[[dict[str, Any]], Any]) -> Rewrite:
    info = re.compile(r"^/api/models/[^/]+/[^/]+(/revision/[^/?]+)?(\?.*)?$")
    return lambda path, body: change(body) if info.match(path) else body


def _deep(depth: int) -> bytes:
    """JSON nested deeper than Python's json module can write (or read without care)."""
    return b'{"branches": ' + b"[" * depth + b"]" * depth + b', "tags": [], "converts": [], "pullRequests": []}'


REWRITES: dict[str, Rewrite] = {
    "refs: commit is a number": _each_ref("targetCommit", 12345),
    "refs: commit missing": _each_ref("targetCommit", KeyError),
    "refs: commit is not a commit id": _each_ref("targetCommit", "../../etc"),
    "refs: a list": _refs(lambda body: [1, 2, 3]),
    "refs: null lists": _refs(lambda body: {"branches": None, "tags": None, "converts": [], "pullRequests": []}),
    "refs: nested 50000 deep": _refs(lambda body: _deep(50000)),
    "info: a list": _info(lambda body: []),
    "info: sha null": _info(lambda body: {**body, "sha": None}),
    "tree: oid missing": _each_entry("oid", KeyError),
    "tree: size is a word": _each_entry("size", "big"),
    "tree: a mapping": _tree(lambda body: {"a": 1}),
    "commits: date null": lambda path, body: (
        [{**c, "date": None} for c in body] if "/commits/" in path and isinstance(body, list) else body
    ),
}


@pytest.fixture
def hostile(hub: RunningHub) -> Iterator[tuple[str, dict[str, Rewrite | None]]]:
    """A proxy endpoint in front of `hub`; set `mode["rewrite"]` to the rewrite it applies."""
    mode: dict[str, Rewrite | None] = {"rewrite": None}

    class Proxy(ProxyHandler):
        def _forward(self) -> None:
            status, headers, data = self.ask_upstream(self.request_body())
            rewrite = mode["rewrite"]
            if rewrite is not None and "json" in dict(headers).get("Content-Type", "") and data:
                changed = rewrite(self.path, json.loads(data))
                data = changed if isinstance(changed, bytes) else json.dumps(changed).encode()
            self.answer(status, headers, data)

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _forward

    with serve(Proxy, hub.endpoint) as endpoint:
        yield endpoint, mode


COMMANDS = {
    "push --dry-run": lambda run, tmp: ["push", str(run), "--repo", "me/tiny", "--dry-run", "--training-state", "keep"],
    "push": lambda run, tmp: ["push", str(run), "--repo", "me/tiny", "--training-state", "keep", "--tag", "t1"],
    "ls": lambda run, tmp: ["ls", "me/tiny"],
    "prune": lambda run, tmp: ["prune", "me/tiny", "--keep", "0", "--dry-run"],
    "pull": lambda run, tmp: ["pull", "me/tiny", "--to", str(tmp / "pulled")],
}


@pytest.mark.parametrize("rewrite", sorted(REWRITES))
def test_a_hub_answer_of_the_wrong_shape_is_one_line_and_changes_nothing(
    run: Path, hub: RunningHub, api: HfApi, hostile: tuple[str, dict[str, Rewrite | None]], rewrite: str, tmp_path: Path
) -> None:
    endpoint, mode = hostile
    env = {"HF_ENDPOINT": endpoint, "HF_TOKEN": hub.token}
    pushed = CliRunner().invoke(cli, ["push", str(run / "checkpoint-20"), "--repo", "me/tiny"], env=env)
    assert pushed.exit_code == 0, pushed.stderr
    before = hub_state(api)
    mode["rewrite"] = REWRITES[rewrite]
    outcomes = {}
    for name, args in COMMANDS.items():
        result = CliRunner().invoke(cli, args(run, tmp_path), env=env)
        outcomes[name] = result.exit_code
        assert result.exit_code in (0, 1), (name, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (name, result.exception)
        assert "Traceback" not in result.output
        if result.exit_code:
            *retries, error = result.stderr.splitlines()
            assert error.startswith("Error: ") and all(r.startswith("Hub: ") for r in retries), (name, result.stderr)
            assert hub_state(api) == before, name  # the honest listing: a refusal changed nothing
        before = hub_state(api)
    assert any(outcomes.values()), outcomes  # the rewrite reached at least one command and it refused
