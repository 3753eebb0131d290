"""`hubsync ls` (tags, size, release, best, branches hubsync did not push) and main's README: hubsync's index,
the released checkpoint, no stale model-index after a prune, and a README someone else wrote kept as theirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.hf_api import RepoFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsync.cli import cli
from hubsync.core.index import (
    LEGACY_FOOTER,
    OWN_MARKER,
    SECTION_BEGIN,
    SECTION_END,
    readme_action,
    render_index_readme,
    update_main_readme,
)
from hubsync.localhub import RunningHub

ENTRY = {"revision": "checkpoint-10", "step": 10, "epoch": 1.0, "metrics": {"eval_loss": 1.5}, "resumable": True}


def hubsync(hub: RunningHub, *args: str):  # type: ignore[no-untyped-def]
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def main_readme(api: HfApi, repo: str = "me/tiny") -> str:
    return Path(api.hf_hub_download(repo, "README.md", force_download=True)).read_text()


# -- main's README, pure --------------------------------------------------------------------------------------------


def update(readme: bytes | None, entries: list[dict[str, object]], has_index: bool = True) -> bytes:
    return update_main_readme(readme, has_index, entries, "me/m", "tags:\n- hubsync", "http://hub/me/m").readme


def test_a_readme_hubsync_wrote_is_hubsyncs_and_one_it_did_not_is_the_users() -> None:
    ours = render_index_readme([ENTRY], "me/m", "tags:\n- hubsync", "http://hub/me/m")
    assert readme_action(None, False) == "create"
    assert readme_action(ours, True) == "rewrite"
    assert readme_action(b"---\nlicense: mit\n---\n# Mine\n", True) == "add section"
    # A README hubsync wrote before the markers: its footer, and main has the index file.
    legacy = b"---\ntags:\n- hubsync\n---\n\n# m\n\n| a |\n\n" + LEGACY_FOOTER.encode() + b"\n"
    assert readme_action(legacy, True) == "rewrite"
    assert readme_action(legacy, False) == "add section"  # no index: someone wrote that sentence by hand
    # Someone's text after hubsync's section makes the README theirs: it is kept from then on.
    theirs = ours + b"\nMy notes.\n"
    assert readme_action(theirs, True) == "update section"
    assert update(theirs, []).endswith(b"<!-- hubsync:index:end -->\n\nMy notes.\n")
    # A README of nothing but metadata gets a section, and stays the user's (its metadata kept) from then on.
    bare = b"---\nlicense: mit\n---\n"
    assert readme_action(update(bare, [ENTRY]), True) == "update section"


def test_markers_in_fenced_code_and_forged_lone_markers_are_left_alone() -> None:
    user = (
        "---\nlicense: mit\nodd: [1, {a: b}]\n---\n# Mine\n\n```\n"
        f"{SECTION_BEGIN}\nnot hubsync's\n{SECTION_END}\n```\n\n{SECTION_BEGIN}\nmy text\n"
    ).encode()
    first = update(user, [ENTRY])
    assert first.startswith(user)  # everything the user wrote, byte for byte, then hubsync's section
    assert first.count(SECTION_BEGIN.encode()) == 3
    second = update(first, [])
    assert second.startswith(user) and b"checkpoint-10" not in second and second.count(b"## Checkpoints") == 1


def test_main_claims_the_results_of_a_released_checkpoint_only_while_the_index_lists_it() -> None:
    from hubsync.core.index import main_front_matter

    card = "base_model: b\nmodel-index:\n- name: m\n  results: []"
    previous = "base_model: b\nmodel-index:\n- name: released\n  results: []"
    assert "name: m" in main_front_matter(card, previous, [ENTRY], releasing=True)
    assert "model-index" not in main_front_matter(card, previous, [ENTRY], releasing=False)
    assert "name: released" in main_front_matter(card, previous, [{**ENTRY, "released": True}], releasing=False)
    assert "model-index" not in main_front_matter(None, previous, [ENTRY], releasing=False)  # a prune of it
    assert main_front_matter(None, "[1, 2]", [], releasing=False) == "[1, 2]"  # not a mapping: as it was


# A README someone else wrote: front matter (any YAML the Hub might hold, or none) and body lines that may forge
# hubsync's markers or fence them in code.
_lines = st.lists(
    st.one_of(
        st.sampled_from([OWN_MARKER, SECTION_BEGIN, SECTION_END, "```", "~~~", "# Title", "", "---", LEGACY_FOOTER]),
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30),
    ),
    max_size=12,
)
_meta = st.dictionaries(
    st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=8),
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.lists(st.text(max_size=5))),
    max_size=4,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meta=st.one_of(st.none(), _meta), lines=_lines)
def test_a_users_readme_keeps_its_text_and_front_matter_and_updates_stay_in_place(
    meta: dict[str, object] | None, lines: list[str]
) -> None:
    front = "" if meta is None else "---\n" + yaml.safe_dump(meta, allow_unicode=True) + "---\n"
    user = (front + "\n".join(lines) + "\n").encode()
    if readme_action(user, True) == "rewrite":
        return  # its body is exactly hubsync's section (forged or not): hubsync's to write
    once = update(user, [ENTRY])
    assert once.startswith(front.encode())
    if meta:
        assert ModelCard(once.decode()).data.to_dict() == ModelCard(user.decode()).data.to_dict()
    # In place: another index, then this one again, gives the same README; no second section appears.
    assert update(update(once, [ENTRY, {**ENTRY, "revision": "checkpoint-20", "step": 20}]), [ENTRY]) == once
    assert update(once, [ENTRY]) == once
    if readme_action(user, True) == "add section":
        assert once.startswith(user.rstrip(b"\n"))  # all of it, then the section at its end


# -- against the local Hub ------------------------------------------------------------------------------------------


@pytest.fixture
def released(best_run: Path, hub: RunningHub, api: HfApi) -> dict[str, str]:
    """Checkpoints 10..40 on me/tiny; 30 again with --release and tag `_v1_` (markup); a branch pushed by hand."""
    result = hubsync(hub, "push", str(best_run), "--select", "all", "--repo", "me/tiny")
    assert result.exit_code == 0, result.stderr
    result = hubsync(hub, "push", str(best_run / "checkpoint-30"), "--repo", "me/tiny", "--release", "--tag", "_v1_")
    assert result.exit_code == 0, result.stderr
    api.create_branch("me/tiny", branch="experiment")
    api.upload_file(path_or_fileobj=b"hello\n", path_in_repo="notes.txt", repo_id="me/tiny", revision="experiment")
    return {b.name: b.target_commit for b in api.list_repo_refs("me/tiny").branches}


def test_ls_shows_tags_size_release_best_and_branches_hubsync_did_not_push(
    released: dict[str, str], hub: RunningHub, api: HfApi
) -> None:
    result = hubsync(hub, "ls", "me/tiny", "--json")
    assert result.exit_code == 0, result.stderr
    rows = {r["revision"]: r for r in json.loads(result.stdout)}
    assert list(rows) == ["checkpoint-10", "checkpoint-20", "checkpoint-30", "checkpoint-40", "experiment"]
    for name, row in rows.items():
        files = api.list_repo_tree("me/tiny", revision=name, recursive=True)
        assert row["size"] == sum(f.size for f in files if isinstance(f, RepoFile))
        assert {"step", "epoch", "metrics", "resumable", "commit", "date"} <= set(row)  # the keys it had
    assert rows["checkpoint-30"]["tags"] == ["_v1_"] and rows["checkpoint-40"]["tags"] == []
    assert [n for n, r in rows.items() if r["released"]] == ["checkpoint-30"]
    assert [n for n, r in rows.items() if r["best"]] == ["checkpoint-10"]
    assert [n for n, r in rows.items() if not r["by_hubsync"]] == ["experiment"]
    assert rows["experiment"]["step"] is None and rows["experiment"]["tags"] == []

    table = hubsync(hub, "ls", "me/tiny")
    assert table.exit_code == 0 and table.stderr == ""
    lines = table.stdout.splitlines()
    assert lines[0] == "main holds the inference files of checkpoint-30 (hubsync push --release)."
    assert lines[1].split()[-5:] == ["size", "tags", "commit", "date", "notes"]
    by_name = {line.split()[0]: line for line in lines[2:]}
    assert by_name["checkpoint-10"].endswith("best")
    assert "_v1_" in by_name["checkpoint-30"] and by_name["checkpoint-30"].endswith("released on main")
    assert by_name["experiment"].endswith("not hubsync's (by hand)")


def test_mains_readme_shows_tags_escaped_and_the_release_and_prune_leaves_no_stale_model_index(
    released: dict[str, str], hub: RunningHub, api: HfApi
) -> None:
    text = main_readme(api)
    card = ModelCard(text)
    assert "`checkpoint-30` (released with `hubsync push --release`)" in card.text
    assert "(on main)" in card.text and "\\_v1\\_" in card.text and " _v1_ " not in card.text
    assert card.data.to_dict().get("model-index")  # main holds checkpoint-30's weights: its results
    assert text.count(SECTION_BEGIN) == 1 and text.count(SECTION_END) == 1

    result = hubsync(hub, "prune", "me/tiny", "--keep", "0", "--keep-storage")
    assert result.exit_code == 0, result.stderr
    branches = {b.name for b in api.list_repo_refs("me/tiny").branches}
    assert branches == {"main", "experiment"}  # a branch hubsync did not push is never pruned
    text = main_readme(api)
    card = ModelCard(text)
    assert "model-index" not in card.data.to_dict()  # no result for a checkpoint whose revision is gone
    assert card.data.base_model == "hubsync/tiny-random-llama"
    assert "checkpoint-" not in card.text and "released with" not in card.text


def test_a_push_into_a_repository_with_a_users_readme_keeps_it(best_run: Path, hub: RunningHub, api: HfApi) -> None:
    api.create_repo("me/adopted")
    front = "---\nlicense: mit\n# a comment the user keeps\ntags: [mine]\nmodel-index: []\n---\n"
    user = front + f"# My model\n\nHand-written.\n\n```\n{SECTION_BEGIN}\n```\n"
    api.upload_file(path_or_fileobj=user.encode(), path_in_repo="README.md", repo_id="me/adopted")

    dry = hubsync(hub, "push", str(best_run / "checkpoint-10"), "--repo", "me/adopted", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert "  readme  main's README.md: someone else wrote it: kept as it is, hubsync's index added" in dry.stdout
    assert main_readme(api, "me/adopted") == user  # a dry run changes nothing

    for step in (10, 20):
        result = hubsync(hub, "push", str(best_run / f"checkpoint-{step}"), "--repo", "me/adopted")
        assert result.exit_code == 0, result.stderr
    text = main_readme(api, "me/adopted")
    assert text.startswith(user)  # the user's front matter (its comment too) and text, byte for byte
    assert text.count("## Checkpoints (hubsync)") == 1 and "[checkpoint-20]" in text and "[checkpoint-10]" in text
    assert ModelCard(text).data.tags == ["mine"]

    dry = hubsync(hub, "push", str(best_run / "checkpoint-30"), "--repo", "me/adopted", "--dry-run", "--json")
    assert json.loads(dry.stdout)["plans"][0]["hub"]["main_readme"] == "update section"

    pruned = hubsync(hub, "prune", "me/adopted", "--keep", "0", "--keep-storage")
    assert pruned.exit_code == 0, pruned.stderr
    text = main_readme(api, "me/adopted")
    assert text.startswith(user) and "[checkpoint-" not in text

    listed = json.loads(hubsync(hub, "ls", "me/adopted", "--json").stdout)
    assert listed == []


def test_a_repository_hubsync_created_says_so_in_a_dry_run(best_run: Path, hub: RunningHub, api: HfApi) -> None:
    dry = hubsync(hub, "push", str(best_run / "checkpoint-10"), "--repo", "me/new", "--dry-run")
    assert dry.exit_code == 0 and "main's README.md: hubsync writes it" in dry.stdout
    assert hubsync(hub, "push", str(best_run / "checkpoint-10"), "--repo", "me/new").exit_code == 0
    dry = hubsync(hub, "push", str(best_run / "checkpoint-20"), "--repo", "me/new", "--dry-run")
    assert "main's README.md: hubsync wrote it: it is written again" in dry.stdout


def test_tag_names_with_markup_are_escaped_in_the_index_and_dropped_from_a_forged_index() -> None:
    from hubsync.core.index import dump_index, parse_index

    hostile = ["<img src=x onerror=alert(1)>", "[v1](https://evil.example)", "*bold*"]
    text = update(None, [{**ENTRY, "tags": hostile}]).decode()
    assert "<img" not in text and "](https://evil" not in text and "*bold*" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "\\*bold\\*" in text
    # Main's index file is anyone's to edit: a tag that is no branch name hubsync could push is left out.
    forged = dump_index([{**ENTRY, "tags": [*hostile, "v1"], "commit": "a" * 40}])
    assert parse_index(forged)[0]["tags"] == ["v1"]
