"""A push checks everything that can refuse it before it converts, uploads, creates or commits anything, and a push
of several checkpoints that fails midway says exactly what landed. Every refusal is checked through the Hub's own
listings (repository, refs, commits): nothing changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import push
from huggingface_hub import HfApi
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from hubsync.cli.errors import message_for
from hubsync.core import errors
from hubsync.core.checkpoint import read_checkpoint
from hubsync.core.metadata import HUB_LICENSES, check_license
from hubsync.core.plan import PushOptions, plan_push
from hubsync.core.preflight import RepoFacts, check_plans
from hubsync.localhub import RunningHub


def on_hub(api: HfApi, repo: str) -> Any:
    """Everything a push could change, as the Hub lists it: visibility, branches, tags and every branch's history
    (None: no such repository)."""
    if not api.repo_exists(repo):
        return None
    refs = api.list_repo_refs(repo)
    return {
        "private": api.repo_info(repo).private,
        "branches": {b.name: b.target_commit for b in refs.branches},
        "tags": {t.name: t.target_commit for t in refs.tags},
        "commits": {b.name: [c.commit_id for c in api.list_repo_commits(repo, revision=b.name)] for b in refs.branches},
    }


def refuse_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    def convert(*args: object) -> None:
        raise AssertionError("converted before the refusal")

    monkeypatch.setattr("hubsync.hub.push.convert_weights", convert)


# -- training state and visibility ------------------------------------------------------------------------------------


def test_keep_state_into_a_repo_that_would_be_created_public_is_refused_before_conversion_and_creation(
    bin_run: Path, hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    refuse_conversion(monkeypatch)  # adapter_model.bin would be converted first: the refusal comes before

    refused = push(hub, str(bin_run / "checkpoint-10"), "--repo", "me/open", "--public", "--training-state", "keep")

    assert refused.exit_code == 1
    assert refused.stderr.startswith(
        "Error: me/open would be created public (--public), and --training-state keep would publish"
    )
    assert on_hub(api, "me/open") is None  # not created


def test_keep_state_into_an_existing_public_repo_is_refused_before_conversion_and_nothing_changes(
    bin_run: Path, hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.create_repo("me/open", private=False)
    before = on_hub(api, "me/open")
    refuse_conversion(monkeypatch)

    # --private (the default) is only for a repository that has to be created
    refused = push(hub, str(bin_run / "checkpoint-10"), "--repo", "me/open", "--training-state", "keep")

    assert refused.exit_code == 1 and "--allow-public-state" in refused.stderr
    assert on_hub(api, "me/open") == before


def test_pickled_state_into_a_public_repo_is_refused_even_when_public_state_is_allowed(
    run: Path, hub: RunningHub, api: HfApi
) -> None:
    api.create_repo("me/open", private=False)
    before = on_hub(api, "me/open")
    args = ["--training-state", "keep", "--training-state-format", "pickle", "--allow-public-state"]

    refused = push(hub, str(run), "--repo", "me/open", *args)

    assert refused.exit_code == 1
    assert refused.stderr.startswith("Error: me/open is public, and pickled training state runs code when loaded")
    assert on_hub(api, "me/open") == before
    created = push(hub, str(run), "--repo", "me/new", "--public", *args)
    assert created.exit_code == 1 and created.stderr.startswith("Error: me/new would be created public (--public)")
    assert on_hub(api, "me/new") is None


def test_a_refusal_of_the_last_of_several_checkpoints_comes_before_the_first_is_pushed(
    run: Path, hub: RunningHub, api: HfApi
) -> None:
    first = push(hub, str(run), "--repo", "me/tiny", "--select", "10", "--tag", "t1")
    assert first.exit_code == 0, first.stderr
    before = on_hub(api, "me/tiny")

    refused = push(hub, str(run), "--repo", "me/tiny", "--select", "all", "--tag", "t1")  # t1: for checkpoint-30

    assert refused.exit_code == 1 and "the tag t1 already exists in me/tiny" in refused.stderr
    assert refused.stdout == ""
    assert on_hub(api, "me/tiny") == before  # checkpoint-20 was not pushed either


# -- tags -------------------------------------------------------------------------------------------------------------


def with_other_weights(source: Path, target: Path, file: str) -> Path:
    """A copy of a checkpoint, of the same step, whose `file` holds other numbers."""
    shutil.copytree(source, target)
    if file.endswith(".safetensors"):
        tensors = load_file(target / file)
        save_file({k: v + 1 for k, v in tensors.items()}, target / file, metadata={"format": "pt"})
    else:
        state = torch.load(target / file, weights_only=True)
        for group in state["param_groups"]:
            group["lr"] = group["lr"] * 2
        torch.save(state, target / file)
    return target


def main_index(api: HfApi, repo: str) -> Any:
    return json.loads(Path(api.hf_hub_download(repo, ".hubsync/index.json")).read_text())


@pytest.mark.parametrize(
    "changed",
    [
        "adapter_model.safetensors",  # uploaded as it is: refused before conversion
        "optimizer.pt",  # converted: refused after conversion, before any upload or commit
    ],
)
def test_a_tag_on_the_branch_head_is_not_moved_by_a_second_checkpoint_of_the_same_step(
    run: Path, hub: RunningHub, api: HfApi, tmp_path: Path, changed: str
) -> None:
    # The reproduction: the second push replaced a resumable revision by one without training state,
    # main's index still named the old commit, and only then was the tag refused.
    first = push(hub, str(run / "checkpoint-30"), "--repo", "me/tiny", "--training-state", "keep", "--tag", "t1")
    assert first.exit_code == 0, first.stderr
    before, index = on_hub(api, "me/tiny"), main_index(api, "me/tiny")
    copy = with_other_weights(run / "checkpoint-30", tmp_path / "copy" / "checkpoint-30", changed)

    refused = push(hub, str(copy), "--repo", "me/tiny", "--tag", "t1", "--json")

    assert refused.exit_code == 1
    assert "the tag t1 already exists in me/tiny (it points to the head of checkpoint-30" in refused.stderr
    assert "which this push would replace" in refused.stderr
    assert "results" not in refused.stdout  # nothing was tried: the preflight refused, or the check before commit
    assert on_hub(api, "me/tiny") == before
    assert main_index(api, "me/tiny") == index
    files = {f.path for f in api.list_repo_tree("me/tiny", revision="checkpoint-30")}
    assert {"optimizer.safetensors", "scheduler.safetensors", "rng_state.safetensors"} <= files  # still resumable


def test_a_tag_on_another_commit_is_refused_before_the_commit(run: Path, hub: RunningHub, api: HfApi) -> None:
    assert push(hub, str(run), "--repo", "me/tiny", "--select", "20", "--tag", "v1").exit_code == 0
    before = on_hub(api, "me/tiny")

    refused = push(hub, str(run), "--repo", "me/tiny", "--select", "30", "--tag", "v1")

    assert refused.exit_code == 1
    assert refused.stderr.startswith("Error: the tag v1 already exists in me/tiny (it points to ")
    assert "not to checkpoint-30, which does not exist yet" in refused.stderr
    assert on_hub(api, "me/tiny") == before


def test_a_tag_on_a_branch_that_already_holds_exactly_this_push_is_fine(run: Path, hub: RunningHub, api: HfApi) -> None:
    assert push(hub, str(run), "--repo", "me/tiny", "--training-state", "keep", "--tag", "t1").exit_code == 0
    before = on_hub(api, "me/tiny")

    again = push(hub, str(run), "--repo", "me/tiny", "--training-state", "keep", "--tag", "t1")

    assert again.exit_code == 0, again.stderr
    assert again.stdout.startswith("Already up to date: ")
    assert on_hub(api, "me/tiny") == before


# -- the card's metadata ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "code", "expected"),
    [
        (["--license", "Apache-2.0"], {}, 2, "Error: Invalid value for '--license': license \"Apache-2.0\" is not one "
         "of the licenses the Hub accepts; did you mean apache-2.0? See `"),
        (["--license", "gpl-2.0-or-later"], {}, 2, "did you mean gpl-2.0?"),
        ([], {"HUBSYNC_LICENSE": "made-up"}, 1, "Error: HUBSYNC_LICENSE: license \"made-up\" is not one of the "
         "licenses the Hub accepts (https://hf.co/docs/hub/repositories-licenses). Fix HUBSYNC_LICENSE, or unset it."),
    ],
)  # fmt: skip
def test_a_license_the_hub_does_not_list_is_refused_before_anything(
    run: Path, hub: RunningHub, api: HfApi, args: list[str], env: dict[str, str], code: int, expected: str
) -> None:
    refused = push(hub, str(run), "--repo", "me/tiny", *args, env=env)

    assert refused.exit_code == code
    assert expected in refused.stderr and refused.stderr.count("\n") == 1
    assert on_hub(api, "me/tiny") is None


def test_other_and_listed_licenses_are_taken(run: Path, hub: RunningHub, api: HfApi) -> None:
    assert push(hub, str(run), "--repo", "me/tiny", "--license", "other").exit_code == 0
    assert push(hub, str(run), "--repo", "me/tiny", "--select", "20", "--license", "llama3.1").exit_code == 0
    card = Path(api.hf_hub_download("me/tiny", "README.md", revision="checkpoint-20")).read_text()
    assert "\nlicense: llama3.1\n" in card


@pytest.mark.parametrize(
    ("front_matter", "expected"),
    [
        ("license: [unclosed", "its front matter is not valid YAML"),
        ("- just\n- a list", "its front matter is YAML but not a mapping"),
        ("base_model: {{ base_model }}\ntags: [a, b", "its front matter is not valid YAML"),
    ],
)
def test_a_template_whose_front_matter_is_not_valid_yaml_is_refused_before_anything(
    run: Path, hub: RunningHub, api: HfApi, tmp_path: Path, front_matter: str, expected: str
) -> None:
    template = tmp_path / "project" / "card.md.j2"
    template.write_text(f"---\n{front_matter}\n---\n# {{{{ repo_id }}}}\n")

    refused = push(hub, str(run), "--repo", "me/tiny", "--template", str(template))

    assert refused.exit_code == 1
    assert refused.stderr.startswith("Error: cannot render the card template ")
    assert expected in refused.stderr and "Fix the template, or leave out --template." in refused.stderr
    assert on_hub(api, "me/tiny") is None


@pytest.mark.parametrize(
    ("front_matter", "expected"),
    [
        ("pipeline_tag: text2text-generation", "its pipeline_tag 'text2text-generation' is not one of the Hub's"),
        ("model-index: {name: x}", "its model-index is not of the shape the Hub takes: not a list"),
        (
            "model-index:\n- name: x\n  results:\n  - task: {type: other}\n    metrics: []",
            "result 0 of entry 0 needs a dataset with a name and a type",
        ),
    ],
)
def test_a_template_with_metadata_the_hub_refuses_is_refused_before_anything(
    run: Path, hub: RunningHub, api: HfApi, tmp_path: Path, front_matter: str, expected: str
) -> None:
    """The Hub refuses these at validate-yaml; found by the local Hub validating like huggingface.co, where the push
    used to fail only then, with advice to run it again."""
    template = tmp_path / "card.md.j2"
    template.write_text(f"---\n{front_matter}\n---\n# card\n")

    refused = push(hub, str(run), "--repo", "me/tiny", "--template", str(template))

    assert refused.exit_code == 1
    assert expected in refused.stderr and "Fix the template, or leave out --template." in refused.stderr
    assert on_hub(api, "me/tiny") is None


def test_a_template_that_sets_an_unlisted_license_itself_is_refused(
    run: Path, hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    template = tmp_path / "card.md.j2"
    template.write_text("---\nlicense: Proprietary\n---\n# card\n")

    refused = push(hub, str(run), "--repo", "me/tiny", "--template", str(template))

    assert refused.exit_code == 1 and "'Proprietary' (set in " in refused.stderr
    assert on_hub(api, "me/tiny") is None


@given(st.text(max_size=40))
def test_check_license_takes_exactly_the_hubs_list(value: str) -> None:
    if value in HUB_LICENSES:
        assert check_license(value) == value
    else:
        with pytest.raises(errors.InvalidLicenseError) as refused:
            check_license(value)
        suggestion = refused.value.suggestion
        assert suggestion is None or suggestion in HUB_LICENSES
        assert "\n" not in message_for(refused.value)


# -- the pure check ---------------------------------------------------------------------------------------------------


def test_check_plans_decides_from_the_facts_alone(checkpoint: Path) -> None:
    ckpt = read_checkpoint(checkpoint)
    keep = plan_push(ckpt, PushOptions("me/x", training_state="keep", private=False, tags=("t1",)))
    missing = RepoFacts("http://hub", "me/x", exists=False)
    private = RepoFacts("http://hub", "me/x", exists=True, private=True)
    public = RepoFacts("http://hub", "me/x", exists=True, private=False)
    with pytest.raises(errors.PublicTrainingStateError):
        check_plans([keep], {"me/x": missing})  # would be created public
    with pytest.raises(errors.PublicTrainingStateError):
        check_plans([plan_push(ckpt, PushOptions("me/x", training_state="keep"))], {"me/x": public})
    check_plans([keep], {"me/x": private})  # an existing private repository stays private: --public is moot
    tagged = RepoFacts("http://hub", "me/x", True, True, {"checkpoint-30": "a" * 40}, {"t1": "b" * 40})
    with pytest.raises(errors.TagExistsError, match="points to bbbbbbbbbbbb, not to the head of checkpoint-30"):
        check_plans([keep], {"me/x": tagged})
    at_head = RepoFacts("http://hub", "me/x", True, True, {"checkpoint-30": "a" * 40}, {"t1": "a" * 40})
    check_plans([keep], {"me/x": at_head})


# -- several checkpoints, failing midway ------------------------------------------------------------------------------


def test_a_push_of_several_that_fails_midway_names_what_landed_and_what_did_not(
    run: Path, hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(run.parent.parent)
    hub.server.inject_fault("POST", r"/commit/checkpoint-20$", 400)  # the Hub refuses it: not retried

    failed = push(hub, "out/tiny", "--repo", "me/tiny", "--select", "all")

    assert failed.exit_code == 1
    assert failed.stdout.startswith("Pushed out/tiny/checkpoint-10 -> me/tiny @ checkpoint-10")
    assert failed.stderr.startswith(
        "Error: pushing out/tiny/checkpoint-20 failed (on the Hub: out/tiny/checkpoint-10; not pushed: "
        "out/tiny/checkpoint-20, out/tiny/checkpoint-30; a re-run pushes the rest): the Hub at "
    )
    assert set(on_hub(api, "me/tiny")["branches"]) == {"main", "checkpoint-10"}


def test_a_push_of_several_that_fails_midway_still_prints_json_of_what_landed(
    run: Path, hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(run.parent.parent)
    hub.server.inject_fault("POST", r"/commit/checkpoint-30$", 400)

    failed = push(hub, "out/tiny", "--repo", "me/tiny", "--select", "all", "--json")

    assert failed.exit_code == 1
    out = json.loads(failed.stdout)
    assert [p["revision"] for p in out["plans"]] == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]
    heads = on_hub(api, "me/tiny")["branches"]
    assert [(r["revision"], r["commit"]) for r in out["results"]] == [
        ("checkpoint-10", heads["checkpoint-10"]),
        ("checkpoint-20", heads["checkpoint-20"]),
    ]
    assert out["failed"]["checkpoint"] == "out/tiny/checkpoint-30"
    assert out["failed"]["error"].startswith("Error: the Hub at ")
    assert "on the Hub: out/tiny/checkpoint-10, out/tiny/checkpoint-20; not pushed: out/tiny/checkpoint-30" in (
        failed.stderr
    )


def test_a_commit_that_landed_before_its_index_failed_is_reported_as_landed(
    run: Path, hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(run.parent.parent)
    hub.server.inject_fault("POST", r"/commit/main$", 400)  # main's index commit, after the branch's

    failed = push(hub, "out/tiny/checkpoint-30", "--repo", "me/tiny", "--tag", "t1", "--json")

    assert failed.exit_code == 1
    heads = on_hub(api, "me/tiny")["branches"]
    (result,) = json.loads(failed.stdout)["results"]
    assert (result["revision"], result["commit"], result["complete"]) == (
        "checkpoint-30",
        heads["checkpoint-30"],
        False,
    )
    assert result["tags"] == ["t1"] and {t.name for t in api.list_repo_refs("me/tiny").tags} == {"t1"}
    assert failed.stderr.startswith(
        f"Error: out/tiny/checkpoint-30 landed on checkpoint-30 (commit {heads['checkpoint-30'][:12]}), but then "
    )
    assert "Run the same push again" in failed.stderr and failed.stderr.count("\n") == 1

    again = push(hub, "out/tiny/checkpoint-30", "--repo", "me/tiny", "--tag", "t1", "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["results"][0]["complete"] is True
    assert on_hub(api, "me/tiny")["branches"]["checkpoint-30"] == heads["checkpoint-30"]  # nothing new committed
    index = json.loads(Path(api.hf_hub_download("me/tiny", ".hubsync/index.json")).read_text())
    assert [e["commit"] for e in index["revisions"] if e["revision"] == "checkpoint-30"] == [heads["checkpoint-30"]]


def test_a_visibility_that_cannot_apply_is_said(run: Path, hub: RunningHub, api: HfApi) -> None:
    assert push(hub, str(run), "--repo", "me/tiny", "--public").exit_code == 0
    for args in (["--dry-run"], []):
        result = push(hub, str(run), "--repo", "me/tiny", "--private", *args)
        assert result.exit_code == 0, result.stderr
        assert (
            "Note: me/tiny exists and is public; the visibility --private asks for applies only to a repository "
            "that has to be created." in result.stderr
        )
    assert not api.model_info("me/tiny").private
    quiet = push(hub, str(run), "--repo", "me/tiny")  # the default names no visibility: nothing to say
    assert "Note:" not in quiet.stderr


def test_a_dry_run_waits_little_for_a_busy_hub(run: Path, hub: RunningHub) -> None:
    import time

    hub.server.inject_fault("GET", r"/api/models/me/tiny", 503, times=10, retry_after=60)
    started = time.monotonic()
    result = push(hub, str(run), "--repo", "me/tiny", "--dry-run")
    assert time.monotonic() - started < 20  # the Hub asked for 60 s a retry; a dry run waits at most 2 s a pause
    assert result.exit_code == 0 and "retrying in 2 s" in result.stderr
    assert "not known whether it exists (the Hub answered an error 503)" in result.stdout


# -- what the Hub cannot hold ---------------------------------------------------------------------------------------


def test_a_checkpoint_with_a_folder_the_hub_would_refuse_is_refused_before_the_hub_changes(
    tiny_run: Path, hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    """The Hub refuses a commit with more than 10,000 entries in one folder, but only when it commits: after the
    repository and the branch were made. hubsync refuses it first."""
    checkpoint = tmp_path / "checkpoint-10"
    shutil.copytree(tiny_run / "checkpoint-10", checkpoint)
    (checkpoint / "samples").mkdir()
    for i in range(10_001):
        (checkpoint / "samples" / f"{i}.txt").write_text("x\n")

    refused = push(hub, str(checkpoint), "--repo", "me/crowded")

    assert refused.exit_code == 1
    assert (
        "samples" in refused.stderr and "at most 10,000" in refused.stderr and "Nothing was uploaded" in refused.stderr
    )
    assert on_hub(api, "me/crowded") is None


@given(st.lists(st.sampled_from(["a", "b", "a/x", "a/y", "b/z/w"]), max_size=30), st.integers(0, 3))
def test_crowded_folder_counts_each_folders_direct_entries(paths: list[str], extra: int) -> None:
    from hubsync.core import remote_paths

    many = [f"d/{i}" for i in range(remote_paths.MAX_FOLDER_ENTRIES + extra)]
    files = sorted(set(paths) - {"a", "b"}) + many  # a path is a file or a folder, not both
    found = remote_paths.crowded_folder(files)
    assert (found is not None) == (extra > 0)
    if found is not None:
        assert found == ("d", remote_paths.MAX_FOLDER_ENTRIES + extra)
