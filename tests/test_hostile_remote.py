"""A hostile Hub or repository: file paths that must never be placed or handled, files served larger than hubsync
reads into memory, and a main index of any shape. Each command ends in one line; nothing is placed or changed.

The hostile Hub is a proxy in front of the local Hub that adds entries to tree listings and replaces the bodies
of chosen downloads; main's index is committed by the real client, as anyone who can write to main could."""

from __future__ import annotations

import json
import shutil
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from click.testing import CliRunner, Result
from conftest import hub_state, push
from hostile_proxy import ProxyHandler, serve
from huggingface_hub import HfApi, constants
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsync.cli import cli
from hubsync.core.errors import UnsafeRemotePathError
from hubsync.core.index import dump_index, index_entry, merge_index, parse_index, render_index_readme
from hubsync.core.remote_paths import (
    ACTED_ON_NAMES,
    MAX_PART_BYTES,
    check_remote_path,
    remote_path_problem,
    shown_remote_path,
)
from hubsync.localhub import RunningHub

MiB = 2**20
DEEP_PATH = "a/" * 2000 + "x.json"


# --- the rule, on its own -----------------------------------------------------------------------------------------

ordinary_part = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789_-"), min_size=1, max_size=20)
ordinary_path = st.lists(ordinary_part, min_size=1, max_size=4).map("/".join)


def _case_variants(name: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(name, upper, strict=True))
    )


acted_on = st.sampled_from(sorted(ACTED_ON_NAMES)).flatmap(_case_variants)
hostile_part = st.one_of(
    acted_on,  # .git, .GIT, .Gitmodules, .envrc, ... as a folder or a file
    acted_on.map(lambda n: n + "."),  # Windows drops the dot: .git. is .git
    acted_on.map(lambda n: n + " "),
    st.sampled_from(["git~1", "GIT~1", "gitmod~2"]),  # NTFS short names
    st.sampled_from(["..", ".", ""]),
    st.sampled_from(["con", "NUL", "aux.json", "com1.txt", "LPT9", "conout$"]),
    st.builds(lambda a, b: a + b + a, ordinary_part, st.sampled_from(list('\\<>:"|?*'))),
    st.builds(lambda a, c: a + c, ordinary_part, st.characters(categories=["Cc", "Cf", "Zl", "Zp"])),
    st.integers(MAX_PART_BYTES + 1, MAX_PART_BYTES + 300).map(lambda n: "é" * (n // 2 + 1)),
)


@st.composite
def hostile_path(draw: st.DrawFn) -> str:
    """An ordinary path with one hostile part at any depth, or a path that is absolute, too deep or too long."""
    kind = draw(st.sampled_from(["part", "absolute", "deep", "long"]))
    parts = draw(st.lists(ordinary_part, min_size=0, max_size=3))
    if kind == "part":
        parts.insert(draw(st.integers(0, len(parts))), draw(hostile_part))
        if draw(st.booleans()):
            parts.append("config")
        return "/".join(parts)
    if kind == "absolute":
        return draw(st.sampled_from(["/", "C:/", "\\\\server\\share/", "c:"])) + "/".join(parts or ["x"])
    if kind == "deep":
        return "a/" * draw(st.integers(32, 3000)) + "x"
    return "/".join(["b" * 200] * draw(st.integers(6, 40)))


@settings(max_examples=400, deadline=None)
@given(hostile_path())
def test_every_hostile_path_is_refused_with_a_one_line_reason(path: str) -> None:
    reason = remote_path_problem(path)
    assert reason is not None, path
    with pytest.raises(UnsafeRemotePathError) as caught:
        check_remote_path(path, "checkpoint-30")
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


@settings(max_examples=300, deadline=None)
@given(ordinary_path, st.sampled_from(["", ".json", ".safetensors", ".gitattributes", ".gitignore"]))
def test_ordinary_paths_and_gitattributes_are_accepted(path: str, suffix: str) -> None:
    name = path + suffix if suffix != ".gitattributes" else f"{path}/.gitattributes"
    assert remote_path_problem(name) is None
    assert remote_path_problem(".gitattributes") is None


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300) | st.lists(st.text(max_size=12), max_size=8).map("/".join))
def test_whatever_a_path_holds_an_accepted_one_stays_inside_and_is_never_acted_on(path: str) -> None:
    if remote_path_problem(path) is not None:
        assert "\n" not in shown_remote_path(path) and len(shown_remote_path(path)) < 100
        return
    parts = path.split("/")
    assert all(p not in ("", ".", "..") and len(p.encode()) <= MAX_PART_BYTES for p in parts)
    assert all(unicodedata.normalize("NFC", p).casefold().rstrip(". ") not in ACTED_ON_NAMES for p in parts)
    assert all(c.isprintable() and c not in '\\:<>"|?*' for c in path)


# --- a hostile Hub ------------------------------------------------------------------------------------------------


@dataclass
class Body:
    """What the hostile Hub sends for a file instead of its content."""

    chunks: Callable[[], Iterator[bytes]]
    headers: dict[str, str] = field(default_factory=dict)  # sent as they are; none: chunked, no size announced


@dataclass
class Hostile:
    endpoint: str
    extra_tree_entries: list[str] = field(default_factory=list)  # paths added to every tree listing
    bodies: dict[str, Body] = field(default_factory=dict)  # path in repo -> what its download sends
    sent: int = 0  # bytes of replaced bodies the proxy managed to send
    tree: Callable[[list[Any]], list[Any]] | None = None  # rewrites every tree listing (after extra_tree_entries)
    requests: list[str] = field(default_factory=list)  # "GET /path" of each request, in order


def _ones(total: int, chunk: int = MiB) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        for start in range(0, total, chunk):
            yield b"1" * min(chunk, total - start)

    return chunks


@pytest.fixture
def hostile(hub: RunningHub) -> Iterator[Hostile]:
    state = Hostile("")

    class Proxy(ProxyHandler):
        def _replaced(self) -> Body | None:
            path = unquote(urlsplit(self.path).path)
            if "/resolve/" not in path:
                return None
            in_repo = path.split("/resolve/", 1)[1].split("/", 1)[-1]
            return state.bodies.get(in_repo)

        def _forward(self) -> None:
            state.requests.append(f"{self.command} {unquote(urlsplit(self.path).path)}")
            status, headers, data = self.ask_upstream(self.request_body())
            replaced = self._replaced()
            if replaced is not None and status == 200:
                return self._send_replaced(headers, replaced)
            if (state.extra_tree_entries or state.tree) and "/tree/" in self.path and status == 200:
                entries = json.loads(data)
                template = next(e for e in entries if e["type"] == "file")
                entries += [{**template, "path": p} for p in state.extra_tree_entries]
                data = json.dumps(state.tree(entries) if state.tree else entries).encode()
            self.answer(status, headers, data)

        def _send_replaced(self, headers: list[tuple[str, str]], replaced: Body) -> None:
            self.send_response(200)
            for key, value in headers:
                if key.lower() not in ("content-length", "transfer-encoding", "connection", "x-linked-size"):
                    self.send_header(key, value)
            for key, value in replaced.headers.items():
                self.send_header(key, value)
            chunked = "Content-Length" not in replaced.headers
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            if self.command == "HEAD":
                return
            try:
                for chunk in replaced.chunks():
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                    state.sent += len(chunk)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _forward

    with serve(Proxy, hub.endpoint) as state.endpoint:
        yield state


def invoke(endpoint: str, hub: RunningHub, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"HF_ENDPOINT": endpoint, "HF_TOKEN": hub.token})


def one_line(result: Result, *fragments: str) -> str:
    """A refusal: exit 1, no traceback, stderr one `Error:` line holding each fragment."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.exception, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def clean(result: Result) -> None:
    """Exit 0, or a one-line refusal: never a traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    if result.exit_code:
        one_line(result)


@pytest.fixture
def pushed(run: Path, hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch) -> Path:
    """checkpoint-20 pushed with hubsync (in main's index); checkpoint-30's files uploaded by hand to a branch of
    that name, as a person (or an attacker with write access) can: not in the index, so ls and pull read it."""
    result = invoke(hub.endpoint, hub, "push", str(run / "checkpoint-20"), "--repo", "me/tiny")
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the local Hub takes plain LFS uploads
    api.create_branch("me/tiny", branch="checkpoint-30")
    api.upload_folder(
        repo_id="me/tiny",
        folder_path=run / "checkpoint-30",
        revision="checkpoint-30",
        allow_patterns=["*.json", "*.safetensors"],
    )
    return run


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=hostile_path())
def test_pull_refuses_a_revision_holding_a_hostile_path_and_places_nothing(
    path: str, pushed: Path, hub: RunningHub, api: HfApi, hostile: Hostile, tmp_path: Path
) -> None:
    hostile.extra_tree_entries = [path]
    target = tmp_path / "pulled"
    result = invoke(hostile.endpoint, hub, "pull", "me/tiny", "--revision", "checkpoint-30", "--to", str(target))
    one_line(result, "refused: checkpoint-30 holds the path", "Nothing was written")
    assert not target.exists()


def test_names_git_or_the_shell_act_on_are_refused_at_any_depth(
    pushed: Path, hub: RunningHub, hostile: Hostile, tmp_path: Path
) -> None:
    for path in ("sub/.git/config", ".GIT/config", ".Git", "sub/.gitmodules", "a/.envrc", ".hg/hgrc", "x/.git."):
        hostile.extra_tree_entries = [path]
        result = invoke(hostile.endpoint, hub, "pull", "me/tiny", "--revision", "checkpoint-30", "--to", str(tmp_path))
        one_line(result, "refused: checkpoint-30 holds the path", "Nothing was written")
        assert not (tmp_path / "checkpoint-30").exists()


def test_the_hubs_gitattributes_is_quietly_left_out(pushed: Path, hub: RunningHub, api: HfApi, tmp_path: Path) -> None:
    listed = {f.path for f in api.list_repo_tree("me/tiny", revision="checkpoint-30", recursive=True)}
    assert ".gitattributes" in listed
    result = invoke(hub.endpoint, hub, "pull", "me/tiny", "--revision", "checkpoint-30", "--to", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "checkpoint-30" / ".gitattributes").exists()
    assert (tmp_path / "checkpoint-30" / "adapter_config.json").is_file()


def test_a_2000_deep_remote_path_is_one_line_for_every_command(
    pushed: Path, hub: RunningHub, api: HfApi, hostile: Hostile, tmp_path: Path
) -> None:
    hostile.extra_tree_entries = [DEEP_PATH]
    before = hub_state(api)

    pulled = invoke(hostile.endpoint, hub, "pull", "me/tiny", "--revision", "checkpoint-30", "--to", str(tmp_path))
    line = one_line(pulled, "refused: checkpoint-30 holds the path", "levels deep")
    assert len(line) < 500
    assert not (tmp_path / "checkpoint-30").exists()

    listed = invoke(hostile.endpoint, hub, "ls", "me/tiny", "--json")
    assert listed.exit_code == 0, listed.output
    assert {r["revision"]: r["resumable"] for r in json.loads(listed.stdout)}["checkpoint-30"] is False

    # push's view of a branch: it would delete the path from the branch, which no Hub client can ask for
    pushing = invoke(hostile.endpoint, hub, "push", str(pushed / "checkpoint-30"), "--repo", "me/tiny")
    one_line(pushing, "refused: checkpoint-30 holds the path", "Nothing was written or changed")
    assert hub_state(api) == before

    for args in (["pull", "me/tiny", "--to", str(tmp_path)], ["prune", "me/tiny", "--keep", "0", "--dry-run"]):
        clean(invoke(hostile.endpoint, hub, *args))
    assert hub_state(api) == before


# --- files read from a Hub into memory ----------------------------------------------------------------------------

SERVED = {
    # the size is announced and too large: refused before a byte of the body is read
    "announced 100 MiB": Body(_ones(100 * MiB), {"Content-Length": str(100 * MiB)}),
    "X-Linked-Size 100 MiB": Body(_ones(100 * MiB), {"X-Linked-Size": str(100 * MiB)}),
    # a small size announced, far more sent (chunked: no transport limit): cut off at the announced size
    "announces 1 KiB, sends 200 MiB": Body(_ones(200 * MiB), {"X-Linked-Size": "1024"}),
    # nothing announced, no end: cut off at the 64 MiB bound
    "announces nothing, sends 200 MiB": Body(_ones(200 * MiB)),
}


def test_a_trainer_state_served_too_large_is_cut_off(
    pushed: Path, hub: RunningHub, api: HfApi, hostile: Hostile, tmp_path: Path
) -> None:
    before = hub_state(api)
    for case, body in SERVED.items():
        hostile.bodies["trainer_state.json"] = body
        hostile.sent = 0
        pulled = invoke(hostile.endpoint, hub, "pull", "me/tiny", "--revision", "checkpoint-30", "--to", str(tmp_path))
        one_line(pulled, '"trainer_state.json"', "read no further")
        assert not (tmp_path / "checkpoint-30").exists(), case
        limit = 64 * MiB if case.startswith("announces nothing") else 1024
        assert hostile.sent < limit + 16 * MiB, case  # what the socket buffers held beyond the cut

        listed = invoke(hostile.endpoint, hub, "ls", "me/tiny", "--json")
        assert listed.exit_code == 0, listed.output  # checkpoint-30 is listed, without what its state would say
        assert "checkpoint-30" in [r["revision"] for r in json.loads(listed.stdout)]
    assert hub_state(api) == before


# --- main's index, of any shape -----------------------------------------------------------------------------------

json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
)
entry_shape = st.fixed_dictionaries(
    {
        "revision": st.sampled_from(["checkpoint-10", "checkpoint-20", "run/x"])
        | st.sampled_from(["../x", "main", "x\n# Verified", "\x1b[2J", "a" * 300])
        | json_value
    },
    optional={
        "step": st.integers() | json_value,
        "epoch": st.floats() | json_value,
        "metrics": st.dictionaries(st.text(max_size=8), json_value | st.floats(), max_size=4) | json_value,
        "resumable": json_value,
        "commit": st.just("a" * 40) | json_value,
        "tags": st.lists(st.text(max_size=8) | json_value, max_size=3) | json_value,
        "released": json_value,
    },
)
index_shape = st.one_of(
    st.fixed_dictionaries({"version": json_value, "revisions": st.lists(entry_shape | json_value, max_size=6)}),
    json_value,
)


@settings(max_examples=400, deadline=None)
@given(index_shape)
def test_an_index_of_any_shape_reads_merges_renders_and_writes(data: Any) -> None:
    """What push does with main's index after its branch commit landed, and prune before it drops entries."""
    entries = parse_index(json.dumps(data).encode())
    merged = merge_index(entries, index_entry("checkpoint-30", 30, 1.0, {"train_loss": 0.5}, ["x.json"], "b" * 40))
    readme = render_index_readme(merged, "me/tiny", "tags:\n- hubsync", "http://hub/me/tiny").decode()
    assert parse_index(dump_index(merged)) == merged
    assert "\n# Verified" not in readme


HOSTILE_INDEXES = {
    "metrics a list": json.dumps({"revisions": [{"revision": "checkpoint-10", "metrics": [1, "x"], "step": 10}]}),
    "metrics of text": json.dumps({"revisions": [{"revision": "checkpoint-10", "metrics": {"eval_loss": "low"}}]}),
    "epoch a word, step a list": json.dumps({"revisions": [{"revision": "checkpoint-10", "epoch": "x", "step": [1]}]}),
    "revision names that are no branch": json.dumps(
        {"revisions": [{"revision": r} for r in ("../../x", "main", "x\n# Verified by HF", "\x1b[2J", "")]}
    ),
    "nested 900 deep": '{"revisions": [{"revision": "checkpoint-10", "tags": ' + "[" * 900 + "]" * 900 + "}]}",
    "not UTF-8": b'{"revisions": [{"revision": "checkpoint-\xff"}]}'.decode("latin-1"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_INDEXES))
def test_a_hostile_main_index_after_the_branch_commit(
    case: str, pushed: Path, hub: RunningHub, api: HfApi, hostile: Hostile
) -> None:
    raw = HOSTILE_INDEXES[case].encode("latin-1" if case == "not UTF-8" else "utf-8")
    api.upload_file(path_or_fileobj=raw, path_in_repo=".hubsync/index.json", repo_id="me/tiny")

    result = invoke(hub.endpoint, hub, "push", str(pushed / "checkpoint-30"), "--repo", "me/tiny")
    assert result.exit_code == 0, result.output  # the index is read for what it holds of hubsync's, and rebuilt
    index = json.loads(Path(api.hf_hub_download("me/tiny", ".hubsync/index.json")).read_text())
    assert "checkpoint-30" in [e["revision"] for e in index["revisions"]]
    for args in (["ls", "me/tiny"], ["prune", "me/tiny", "--keep", "1"]):
        clean(invoke(hub.endpoint, hub, *args))


def test_a_main_index_served_too_large_says_the_commit_landed(
    pushed: Path, hub: RunningHub, api: HfApi, hostile: Hostile
) -> None:
    hostile.bodies[".hubsync/index.json"] = Body(_ones(100 * MiB), {"Content-Length": str(100 * MiB)})
    result = invoke(hostile.endpoint, hub, "push", str(pushed / "checkpoint-30"), "--repo", "me/tiny")
    one_line(result, "landed on checkpoint-30", ".hubsync/index.json", "Run the same push again")
    assert api.list_repo_refs("me/tiny").branches  # the branch commit is there
    for args in (["ls", "me/tiny"], ["prune", "me/tiny", "--keep", "0"]):
        clean(invoke(hostile.endpoint, hub, *args))


# --- the same rule on the way out: push never publishes what pull would refuse -----------------------------------


def _local_name(name: str) -> bool:
    """A name this machine's file system holds, that push does not leave out as hidden."""
    return bool(name) and name not in ("..", ".") and not name.startswith(".") and "/" not in name and "\0" not in name


local_hostile_name = hostile_part.filter(lambda n: _local_name(n) and len(n.encode("utf-8", "surrogatepass")) <= 255)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=local_hostile_name, folder=st.booleans())
def test_push_refuses_a_file_pull_would_refuse_before_the_hub_changes(
    hub: RunningHub, api: HfApi, checkpoint: Path, tmp_path: Path, name: str, folder: bool
) -> None:
    work = tmp_path / "work"  # one fresh copy per example: hypothesis reuses the function's fixtures
    shutil.rmtree(work, ignore_errors=True)
    ckpt = Path(shutil.copytree(checkpoint, work / "run" / "checkpoint-30"))
    target = ckpt / name / "notes.txt" if folder else ckpt / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("a note\n")

    result = push(hub, str(ckpt), "--repo", "me/names")

    assert result.exit_code == 1, result.output
    assert "refused" in result.stderr and "could not be pulled back" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert all(c.isprintable() or c == "\n" for c in result.stderr)
    assert not api.repo_exists("me/names")
