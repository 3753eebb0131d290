"""`hubsync tag`: create and delete tags, end to end with the real huggingface_hub client against the local Hub.
Outcomes are read from the Hub's own listing (HfApi.list_repo_refs), not from what hubsync prints."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import push
from huggingface_hub import HfApi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hubsync
from hubsync.cli import cli
from hubsync.core.errors import HubsyncError, InvalidTagError
from hubsync.core.plan import check_tag_name
from hubsync.localhub import RunningHub

REPO = "me/tagged"


def hubsync_cli(hub: RunningHub, *args: str) -> Result:
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    return CliRunner().invoke(cli, ["tag", *args], env=env, catch_exceptions=False)


def refs(api: HfApi) -> tuple[dict[str, str], dict[str, str]]:
    found = api.list_repo_refs(REPO)
    return {b.name: b.target_commit for b in found.branches}, {t.name: t.target_commit for t in found.tags}


@pytest.fixture
def repo(hub: RunningHub, api: HfApi) -> dict[str, str]:
    """me/tagged with main and two branches, checkpoint-10 and checkpoint-20, each one commit of its own."""
    api.create_repo(REPO, private=True)
    api.upload_file(path_or_fileobj=b"main\n", path_in_repo="notes.txt", repo_id=REPO)
    for branch in ("checkpoint-10", "checkpoint-20"):
        api.create_branch(REPO, branch=branch)
        api.upload_file(path_or_fileobj=branch.encode(), path_in_repo="step.txt", repo_id=REPO, revision=branch)
    branches, tags = refs(api)
    assert tags == {} and len(set(branches.values())) == 3
    return branches


def test_tag_at_a_branch(repo: dict[str, str], hub: RunningHub, api: HfApi) -> None:
    result = hubsync_cli(hub, REPO, "checkpoint-10", "v1")

    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == f"Tagged {REPO} @ checkpoint-10: v1 -> {repo['checkpoint-10']}\n"
    branches, tags = refs(api)
    assert tags == {"v1": repo["checkpoint-10"]}
    assert branches == repo  # no branch moved or appeared


def test_tag_at_a_commit_id_and_at_another_tag(repo: dict[str, str], hub: RunningHub, api: HfApi) -> None:
    first = api.list_repo_commits(REPO, revision="main")[-1].commit_id

    at_commit = hubsync_cli(hub, REPO, first, "root")
    assert at_commit.exit_code == 0, at_commit.stderr
    assert first in at_commit.stdout
    at_tag = hubsync_cli(hub, REPO, "root", "also-root")
    assert at_tag.exit_code == 0, at_tag.stderr

    assert refs(api)[1] == {"root": first, "also-root": first}
    assert refs(api)[0] == repo


def test_creating_a_tag_again_at_the_same_commit_changes_nothing(
    repo: dict[str, str], hub: RunningHub, api: HfApi
) -> None:
    assert hubsync_cli(hub, REPO, "checkpoint-20", "best").exit_code == 0
    before = refs(api)
    # The same commit, named another way: the branch's head commit id.
    again = hubsync_cli(hub, REPO, repo["checkpoint-20"], "best")

    assert again.exit_code == 0, again.stderr
    assert again.stdout == f"Already tagged: best in {REPO} points to {repo['checkpoint-20']}; nothing changed\n"
    assert refs(api) == before


def test_a_tag_never_moves_and_the_refusal_names_the_delete_command(
    repo: dict[str, str], hub: RunningHub, api: HfApi
) -> None:
    assert hubsync_cli(hub, REPO, "checkpoint-10", "v1").exit_code == 0
    before = refs(api)

    moved = hubsync_cli(hub, REPO, "checkpoint-20", "v1")

    assert moved.exit_code == 1
    assert moved.stdout == ""
    assert len(moved.stderr.splitlines()) == 1
    assert "the tag v1 already exists in me/tagged" in moved.stderr
    assert repo["checkpoint-10"][:12] in moved.stderr and "tags never move" in moved.stderr
    assert "delete that tag first: `hubsync tag --delete me/tagged v1`" in moved.stderr
    assert refs(api) == before


def test_a_revision_that_does_not_exist_is_one_clear_line(repo: dict[str, str], hub: RunningHub, api: HfApi) -> None:
    result = hubsync_cli(hub, REPO, "checkpoint-99", "v1")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: no revision 'checkpoint-99' in me/tagged")
    assert len(result.stderr.splitlines()) == 1
    assert refs(api) == (repo, {})


def test_a_tag_named_like_a_branch_of_the_repository_is_refused(
    repo: dict[str, str], hub: RunningHub, api: HfApi
) -> None:
    api.create_branch(REPO, branch="stable")
    before = refs(api)
    result = hubsync_cli(hub, REPO, "checkpoint-10", "stable")

    assert result.exit_code == 1
    assert "'stable' cannot be a tag name (me/tagged has a branch of that name" in result.stderr
    assert refs(api) == before


def dead_endpoint() -> str:
    """An address where nothing listens (a port just freed): any call to a Hub there fails."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def refused(name: str) -> bool:
    try:
        check_tag_name(name, branch="")
    except InvalidTagError:
        return True
    return not name


BAD_NAMES = st.one_of(
    st.sampled_from(
        [
            "main",
            "HEAD",
            "checkpoint-10",
            "checkpoint-7",
            "a" * 40,
            "f" * 40,
            "refs/tags/v1",
            "v1.lock",
            "a..b",
            "-v1",
            ".v1",
            "v1/",
            "v1.",
            "a//b",
            "v 1",
            "v1~",
            "v1^",
            "v:1",
            "v?1",
            "v*1",
            "v[1",
            "v\\1",
            "v@{1",
            "v\x001",
            "v\n1",
            "é",
            "x" * 201,
            "",
        ]
    ),
    st.text(max_size=30).filter(refused),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=BAD_NAMES)
def test_bad_tag_names_are_refused_before_the_hub_is_asked(
    name: str, repo: dict[str, str], hub: RunningHub, api: HfApi
) -> None:
    before = refs(api)
    # Nothing listens at the endpoint: the refusal comes before any call to a Hub.
    offline = CliRunner().invoke(
        cli,
        ["tag", "--endpoint", dead_endpoint(), "--token", hub.token, "--", REPO, "checkpoint-10", name],
        catch_exceptions=False,
    )
    assert offline.exit_code == 1, offline.output
    assert offline.stdout == ""
    assert "cannot be a tag name" in offline.stderr and len(offline.stderr.splitlines()) == 1

    on_the_hub = hubsync_cli(hub, "--", REPO, "checkpoint-10", name)
    assert on_the_hub.exit_code == 1
    assert "cannot be a tag name" in on_the_hub.stderr
    assert refs(api) == before


GOOD_NAMES = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,20}(/[A-Za-z0-9_][A-Za-z0-9._-]{0,10})?\Z").filter(
    lambda n: not refused(n)
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=GOOD_NAMES)
def test_every_name_hubsync_accepts_the_hub_takes_and_gives_back(
    name: str, repo: dict[str, str], hub: RunningHub, api: HfApi
) -> None:
    created = hubsync_cli(hub, "--", REPO, "checkpoint-20", name)
    assert created.exit_code == 0, created.stderr
    assert refs(api)[1] == {name: repo["checkpoint-20"]}

    deleted = hubsync_cli(hub, "--delete", "--", REPO, name)
    assert deleted.exit_code == 0, deleted.stderr
    assert refs(api) == (repo, {})


def test_delete_a_tag(repo: dict[str, str], hub: RunningHub, api: HfApi) -> None:
    assert hubsync_cli(hub, REPO, "checkpoint-10", "v1").exit_code == 0
    assert hubsync_cli(hub, REPO, "checkpoint-20", "v2").exit_code == 0

    result = hubsync_cli(hub, "--delete", REPO, "v1")

    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"Deleted tag v1 of {REPO}; it pointed to {repo['checkpoint-10']}\n"
    assert refs(api) == (repo, {"v2": repo["checkpoint-20"]})


def test_deleting_a_tag_that_does_not_exist_says_so(repo: dict[str, str], hub: RunningHub, api: HfApi) -> None:
    assert hubsync_cli(hub, REPO, "checkpoint-10", "v1").exit_code == 0
    before = refs(api)

    result = hubsync_cli(hub, "--delete", REPO, "nope")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: me/tagged on ")
    assert "has no tag 'nope' (its tags: v1), so nothing was deleted" in result.stderr
    assert refs(api) == before


def test_delete_never_deletes_a_branch(repo: dict[str, str], hub: RunningHub, api: HfApi) -> None:
    result = hubsync_cli(hub, "--delete", REPO, "checkpoint-10")

    assert result.exit_code == 1
    assert "checkpoint-10 is a branch, and `hubsync tag --delete` deletes only tags" in result.stderr
    assert refs(api) == (repo, {})


def test_arguments_that_do_not_fit_are_a_usage_error(repo: dict[str, str], hub: RunningHub) -> None:
    for args in (["--delete", REPO, "checkpoint-10", "v1"], [REPO, "v1"], [REPO, "a", "b", "c"]):
        result = hubsync_cli(hub, *args)
        assert result.exit_code == 2, args
        assert result.stderr.startswith("Error: expected REPO ") and "tag --help`." in result.stderr


def test_the_library_returns_the_change(repo: dict[str, str], hub: RunningHub, api: HfApi) -> None:
    where = {"endpoint": hub.endpoint, "token": hub.token}
    change = hubsync.tag(REPO, "checkpoint-10", "v1", **where)
    assert (change.tag, change.commit, change.changes) == ("v1", repo["checkpoint-10"], True)
    assert hubsync.tag(REPO, "checkpoint-10", "v1", **where).changes is False
    with pytest.raises(HubsyncError):
        hubsync.tag(REPO, "checkpoint-20", "v1", **where)
    gone = hubsync.delete_tag(REPO, "v1", **where)
    assert (gone.action, gone.commit) == ("delete", repo["checkpoint-10"])
    assert change.to_json() == {
        "repo": REPO,
        "tag": "v1",
        "commit": repo["checkpoint-10"],
        "action": "create",
        "changed": True,
        "revision": "checkpoint-10",
    }
    assert refs(api) == (repo, {})


def test_a_push_that_would_move_a_tag_names_the_command_that_deletes_it(run: Path, hub: RunningHub, api: HfApi) -> None:
    assert push(hub, str(run / "checkpoint-10"), "--repo", "me/tiny", "--tag", "v1").exit_code == 0
    refused_push = push(hub, str(run / "checkpoint-20"), "--repo", "me/tiny", "--tag", "v1")

    assert refused_push.exit_code == 1
    assert "delete that tag first: `hubsync tag --delete me/tiny v1`" in refused_push.stderr
    branches = {b.name for b in api.list_repo_refs("me/tiny").branches}
    assert "checkpoint-20" not in branches

    # Doing what it says, then pushing again, moves nothing: the tag is made anew at the new commit.
    deleted = CliRunner().invoke(
        cli,
        ["tag", "--delete", "me/tiny", "v1"],
        env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token},
        catch_exceptions=False,
    )
    assert deleted.exit_code == 0, deleted.stderr
    assert push(hub, str(run / "checkpoint-20"), "--repo", "me/tiny", "--tag", "v1").exit_code == 0
    found = api.list_repo_refs("me/tiny")
    heads = {b.name: b.target_commit for b in found.branches}
    assert {t.name: t.target_commit for t in found.tags} == {"v1": heads["checkpoint-20"]}


def test_json_and_a_repository_that_does_not_exist(repo: dict[str, str], hub: RunningHub, api: HfApi) -> None:
    as_json = hubsync_cli(hub, "--json", REPO, "checkpoint-10", "v1")
    assert as_json.exit_code == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {
        "repo": REPO,
        "tag": "v1",
        "commit": repo["checkpoint-10"],
        "action": "create",
        "changed": True,
        "revision": "checkpoint-10",
    }
    deleted = hubsync_cli(hub, "--json", "--delete", REPO, "v1")
    assert json.loads(deleted.stdout)["action"] == "delete" and refs(api) == (repo, {})

    missing = hubsync_cli(hub, "me/no-such-repo", "main", "v1")
    assert missing.exit_code == 1 and missing.stdout == ""
    assert missing.stderr.startswith("Error: repository me/no-such-repo not found")
