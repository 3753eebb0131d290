"""Links in a checkpoint, and file paths from a Hub: nothing outside the checkpoint is uploaded, and nothing a
revision names lands outside the folder pull writes.

A link that leads outside the checkpoint (to a file or a folder, absolute or relative) is never followed: push,
push --dry-run and convert refuse the checkpoint in one line that names the link and what to do. Refusing
rather than skipping: a skipped link could be the weights the user counts on (a checkpoint whose
adapter_model.safetensors is a link would be pushed without its weights), and a followed one could publish any
file of the machine. Links that stay inside are followed; links that lead nowhere are skipped and listed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from huggingface_hub import HfApi

from hubsync.cli import cli
from hubsync.core.errors import UnsafeRemotePathError
from hubsync.core.pull import check_remote_path
from hubsync.localhub import RunningHub

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="symlinks")

SECRET = b"hf_SECRETcanary_outside_the_checkpoint\n"


@pytest.fixture
def ckpt(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """run/checkpoint-30 under the working directory, and a secret file and folder beside the run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "id_rsa").write_bytes(SECRET)
    return Path(shutil.copytree(tiny_run / "checkpoint-30", tmp_path / "run" / "checkpoint-30"))


def env(hub: RunningHub) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}


def one_line(result: Result, *fragments: str) -> str:
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, (result.exception, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def make_link(ckpt: Path, case: str) -> str:
    """Put a link of kind `case` into the checkpoint; return its path relative to the checkpoint."""
    secret_file = ckpt.parent.parent / "private" / "id_rsa"
    if case == "file_absolute":
        (ckpt / "notes.txt").symlink_to(secret_file.resolve())
        return "notes.txt"
    if case == "file_relative":
        (ckpt / "notes.txt").symlink_to(Path("..") / ".." / "private" / "id_rsa")
        return "notes.txt"
    if case == "folder_absolute":
        (ckpt / "extra").symlink_to(secret_file.parent.resolve(), target_is_directory=True)
        return "extra"
    if case == "folder_relative":
        (ckpt / "extra").symlink_to(Path("..") / ".." / "private", target_is_directory=True)
        return "extra"
    if case == "nested_file":
        (ckpt / "tokenizer").mkdir()
        (ckpt / "tokenizer" / "vocab.txt").symlink_to(Path("..") / ".." / ".." / "private" / "id_rsa")
        return "tokenizer/vocab.txt"
    if case == "the_weights":  # weights kept elsewhere, linked in: skipping them would push no weights at all
        moved = ckpt.parent.parent / "private" / "adapter_model.safetensors"
        shutil.move(ckpt / "adapter_model.safetensors", moved)
        (ckpt / "adapter_model.safetensors").symlink_to(moved)
        return "adapter_model.safetensors"
    raise AssertionError(case)


LINK_CASES = ["file_absolute", "file_relative", "folder_absolute", "folder_relative", "nested_file", "the_weights"]


@pytest.mark.parametrize("case", LINK_CASES)
def test_a_link_leading_outside_is_refused_by_every_upload(
    case: str, ckpt: Path, hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    link = make_link(ckpt, case)
    shown = f"run/checkpoint-30/{link}"
    before = sorted((p.relative_to(ckpt), p.is_symlink()) for p in ckpt.rglob("*"))

    for args in (
        ["push", "run/checkpoint-30", "--repo", "me/tiny"],
        ["push", "run/checkpoint-30", "--repo", "me/tiny", "--dry-run"],
        ["push", "run", "--select", "all", "--repo", "me/tiny", "--training-state", "keep"],
        ["convert", "run/checkpoint-30", "-o", "converted"],
    ):
        result = CliRunner().invoke(cli, args, env=env(hub))
        line = one_line(result, shown, "leads outside the checkpoint", "Copy the file into the checkpoint")
        assert str(tmp_path) not in line  # where it leads is shown relative or shortened, never absolute

    assert not api.repo_exists("me/tiny")  # refused while planning: nothing was created or uploaded
    assert not (tmp_path / "converted").exists()
    assert sorted((p.relative_to(ckpt), p.is_symlink()) for p in ckpt.rglob("*")) == before


def test_the_card_does_not_need_what_links_lead_to(ckpt: Path) -> None:
    """The card uploads nothing: a link outside does not stop it, and nothing it leads to is read into it."""
    make_link(ckpt, "file_absolute")
    result = CliRunner().invoke(cli, ["card", "run/checkpoint-30"])
    assert result.exit_code == 0, result.stderr
    assert "SECRETcanary" not in result.stdout


def test_links_inside_are_followed_and_links_to_nowhere_are_skipped(
    ckpt: Path, hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    (ckpt / "sub").mkdir()
    (ckpt / "sub" / "alias.json").symlink_to(Path("..") / "adapter_config.json")
    (ckpt / "gone.txt").symlink_to(tmp_path / "no-such-file")
    (ckpt / "loop.txt").symlink_to(ckpt / "loop.txt")
    (ckpt / "same").symlink_to(ckpt / "sub", target_is_directory=True)  # a folder inside: already uploaded as sub/

    dry = CliRunner().invoke(cli, ["push", "run/checkpoint-30", "--repo", "me/tiny", "--dry-run"], env=env(hub))
    result = CliRunner().invoke(cli, ["push", "run/checkpoint-30", "--repo", "me/tiny"], env=env(hub))

    assert dry.exit_code == 0 and result.exit_code == 0, dry.stderr + result.stderr
    for name in ("gone.txt (a link that leads nowhere)", "loop.txt (a link that leads nowhere)", "same/ (a link"):
        assert name in dry.stdout and name in result.stdout  # said, on a real push too
    tree = {f.path for f in api.list_repo_tree("me/tiny", revision="checkpoint-30", recursive=True)}
    assert "sub/alias.json" in tree
    assert not {"gone.txt", "loop.txt", "same"} & {p.split("/")[0] for p in tree}
    alias = api.hf_hub_download("me/tiny", "sub/alias.json", revision="checkpoint-30", cache_dir=tmp_path / "c")
    assert Path(alias).read_bytes() == (ckpt / "adapter_config.json").read_bytes()


# -- paths from a Hub ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "../evil.py",
        "a/../../evil.py",
        "/etc/passwd",
        "//server/share/x",
        "\\evil.py",
        "a\\..\\..\\evil.py",
        "C:/Windows/evil.dll",
        "c:evil",
        "./x",
        "a/./x",
        "a//x",
        "a/",
        "",
        "nul\x00byte",
        ".git/config",
        ".git/hooks/post-checkout",
        ".GIT/hooks/pre-commit",
        "..",
        ".",
    ],
)
def test_check_remote_path_refuses(path: str) -> None:
    with pytest.raises(UnsafeRemotePathError):
        check_remote_path(path)


@pytest.mark.parametrize("path", ["adapter_config.json", "sub/dir/file.txt", "..hidden", "a..b/c", ".gitattributes2"])
def test_check_remote_path_accepts_ordinary_names(path: str) -> None:
    assert check_remote_path(path) == path


@pytest.mark.parametrize("bad", ["../../escaped.txt", "/tmp/escaped.txt", ".git/hooks/post-checkout"])
def test_pull_refuses_a_revision_that_names_a_path_outside(
    bad: str, ckpt: Path, hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    """A Hub (here: the local one, its store edited behind its back, as a compromised Hub could) lists a file
    whose path leaves the folder: pull refuses before downloading anything, and writes nothing."""
    assert CliRunner().invoke(cli, ["push", "run/checkpoint-30", "--repo", "me/tiny"], env=env(hub)).exit_code == 0
    store = hub.server.store
    sha = store.resolve("model", "me/tiny", "checkpoint-30")
    record = store._repo_dir("model", "me/tiny") / "commits" / f"{sha}.json"
    commit = json.loads(record.read_text())
    commit["files"][bad] = commit["files"]["adapter_config.json"]
    record.write_text(json.dumps(commit))
    assert bad in {f.path for f in api.list_repo_tree("me/tiny", revision="checkpoint-30", recursive=True)}

    result = CliRunner().invoke(cli, ["pull", "me/tiny", "--revision", "checkpoint-30", "--to", "out"], env=env(hub))

    one_line(result, bad.rsplit("/", 1)[-1], "refused: checkpoint-30 holds", "Nothing was written")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()
    assert not os.path.exists("/tmp/escaped.txt")


def test_lies_within_agrees_with_the_folders_once_made(tmp_path: Path) -> None:
    """lies_within(target, ckpt) says, before anything is made, whether the file that a write to `target` makes
    (parents created) lands in ckpt: `new/../run/ckpt/x.md`, whose `new/` does not exist yet, is inside."""
    from hypothesis import example, given, settings
    from hypothesis import strategies as st

    from hubsync.files import lies_within

    base = tmp_path / "base"
    (base / "run" / "ckpt").mkdir(parents=True)
    (base / "link").symlink_to("run")  # relative: the copy below keeps it, pointing into the copy

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from(["new", "..", ".", "run", "ckpt", "link", "other"]), min_size=1, max_size=6))
    @example(["new", "..", "run", "ckpt"])
    @example(["link", "new", "..", "ckpt"])
    def check(parts: list[str]) -> None:
        target = base.joinpath(*parts, "card.md")
        said = lies_within(target, base / "run" / "ckpt")
        made = tmp_path / "made"
        shutil.rmtree(made, ignore_errors=True)
        shutil.copytree(base, made, symlinks=True)  # a scratch copy to make the folders in
        mirror = made.joinpath(*parts, "card.md")
        try:
            mirror.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            return
        lands = Path(os.path.realpath(mirror))
        assert said == lands.is_relative_to((made / "run" / "ckpt").resolve()), parts

    check()
