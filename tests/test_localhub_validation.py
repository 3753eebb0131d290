"""The local Hub refuses what huggingface.co refuses, in its words, through the unmodified huggingface_hub client.

Model-card metadata (validate-yaml and a commit that adds the root README.md), regular files that must go through
LFS/Xet, folders of more than 10,000 entries, files over 50 GB, branch and tag names, commit-id prefixes, the card
data model_info returns, and organizations: who may create and write in them.

One server serves the module (the `hub` fixture is overridden) and every test works in repositories of its own.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import huggingface_hub.constants
import pytest
from click.testing import CliRunner
from conftest import local_hub
from huggingface_hub import HfApi
from huggingface_hub.errors import BadRequestError, HfHubHTTPError, RevisionNotFoundError
from huggingface_hub.lfs import UploadInfo, post_lfs_batch_info
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsync.cli.app import cli
from hubsync.core.metadata import HUB_LICENSES
from hubsync.localhub import RunningHub, validation

FIXTURE = [HealthCheck.function_scoped_fixture]
MODEL_INDEX = [
    {
        "name": "tiny",
        "results": [
            {
                "task": {"type": "text-generation", "name": "Text Generation"},
                "dataset": {"type": "wikitext", "name": "WikiText"},
                "metrics": [{"type": "perplexity", "value": 12.5, "name": "Perplexity"}],
            }
        ],
    }
]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """One local Hub for the module: user `me`, member of organization `team`; `closed` is an organization
    without `me`, whose one member is `outsider`."""
    with local_hub(tmp_path_factory.mktemp("validation") / "hub-root", orgs=["team"]) as running:
        running.server.store.ensure_user("outsider")
        running.server.store.create_org("closed", ["outsider"])
        yield running


@pytest.fixture(autouse=True)
def no_xet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)


_serial = itertools.count()


@pytest.fixture
def rid(api: HfApi, request: pytest.FixtureRequest) -> str:
    """A new public repository of `me`, named after the test."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name.removeprefix("test_")).strip("-")[:60]
    repo_id = f"me/{slug}-{next(_serial)}"
    api.create_repo(repo_id)
    return repo_id


@pytest.fixture
def raw(hub: RunningHub) -> Iterator[httpx2.Client]:
    """Plain HTTP for `me`: a client that skips what huggingface_hub checks first (validate-yaml, preupload)."""
    with httpx2.Client(base_url=hub.endpoint, headers={"authorization": f"Bearer {hub.token}"}, timeout=60) as c:
        yield c


@pytest.fixture
def outsider(hub: RunningHub) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=hub.server.store.ensure_user("outsider"))


def head(api: HfApi, repo_id: str, revision: str = "main") -> str:
    sha = api.repo_info(repo_id, revision=revision).sha
    assert sha is not None
    return sha


def raw_commit(raw: httpx2.Client, repo_id: str, lines: list[dict[str, Any]], revision: str = "main") -> Any:
    body = [{"key": "header", "value": {"summary": "raw", "description": ""}}, *lines]
    return raw.post(
        f"/api/models/{repo_id}/commit/{revision}",
        content=b"\n".join(json.dumps(line).encode() for line in body),
        headers={"Content-Type": "application/x-ndjson"},
    )


def file_line(path: str, content: bytes) -> dict[str, Any]:
    return {"key": "file", "value": {"path": path, "encoding": "base64", "content": base64.b64encode(content).decode()}}


def card(meta: dict[str, Any] | str) -> str:
    front = meta if isinstance(meta, str) else json.dumps(meta)  # JSON is YAML
    return f"---\n{front}\n---\n\n# A card\n"


# -- model-card metadata -----------------------------------------------------------------------------------------


@given(license=st.sampled_from(HUB_LICENSES))
@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURE)
def test_validate_yaml_takes_every_listed_license(api: HfApi, license: str) -> None:
    api._validate_yaml(card({"license": license}))
    api._validate_yaml(card({"license": [license, "mit"]}))


@given(license=st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=20))
@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE)
def test_validate_yaml_refuses_any_other_license(api: HfApi, license: str) -> None:
    if license in HUB_LICENSES:
        return
    with pytest.raises(ValueError, match=r'Invalid metadata in README.md.\n- "license" must be one of \[apache-2.0, '):
        api._validate_yaml(card({"license": license}))


def test_validate_yaml_answers_as_the_hub_does(hub: RunningHub) -> None:
    answer = httpx2.post(f"{hub.endpoint}/api/validate-yaml", json={"content": card({"license": "Apache 2"})})
    assert answer.status_code == 400
    body = answer.json()
    assert body["warnings"] == [] and len(body["errors"]) == 1
    assert body["errors"][0]["message"].startswith('"license" must be one of [apache-2.0, mit, ')
    ok = httpx2.post(f"{hub.endpoint}/api/validate-yaml", json={"content": card({"license": "mit"})})
    assert ok.status_code == 200 and ok.json() == {"errors": [], "warnings": []}


def test_text2text_generation_is_no_pipeline_type_any_more(api: HfApi) -> None:
    api._validate_yaml(card({"pipeline_tag": "text-generation"}))
    with pytest.raises(ValueError, match=r'"pipeline_tag" must be one of \[biology, text-classification, '):
        api._validate_yaml(card({"pipeline_tag": "text2text-generation"}))
    assert "text2text-generation" not in validation.PIPELINE_TYPES
    # a dataset card has no pipeline type: the rule is a model's
    api._validate_yaml(card({"pipeline_tag": "text2text-generation"}), repo_type="dataset")


def test_non_mapping_front_matter_is_refused(api: HfApi) -> None:
    with pytest.raises(ValueError, match='"value" must be of type object'):
        api._validate_yaml(card("- a\n- b"))
    api._validate_yaml("# no front matter at all\n")
    api._validate_yaml(card(""))  # empty front matter: nothing to check


def test_a_model_index_of_the_hubs_shape_is_taken(api: HfApi, rid: str) -> None:
    api.upload_file(path_or_fileobj=card({"model-index": MODEL_INDEX}).encode(), path_in_repo="README.md", repo_id=rid)
    data = api.model_info(rid).card_data
    assert data is not None and data.model_name == "tiny"  # the client reads model-index as evaluation results
    (result,) = data.eval_results
    assert (result.task_type, result.dataset_type, result.metric_type, result.metric_value) == (
        "text-generation",
        "wikitext",
        "perplexity",
        12.5,
    )


def _model_index_without(path: list[Any]) -> list[Any]:
    broken = json.loads(json.dumps(MODEL_INDEX))
    target = broken
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return broken  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("model_index", "message"),
    [
        ({"name": "x"}, '"model-index" must be an array'),
        (["x"], '"model-index[0]" must be of type object'),
        (_model_index_without([0, "name"]), '"model-index[0].name" is required'),
        (_model_index_without([0, "results"]), '"model-index[0].results" is required'),
        (_model_index_without([0, "results", 0, "task"]), '"model-index[0].results[0].task" is required'),
        (_model_index_without([0, "results", 0, "task", "type"]), '"model-index[0].results[0].task.type" is required'),
        (_model_index_without([0, "results", 0, "dataset", "name"]), '"model-index[0].results[0].dataset.name" is'),
        (_model_index_without([0, "results", 0, "metrics"]), '"model-index[0].results[0].metrics" is required'),
        (
            _model_index_without([0, "results", 0, "metrics", 0, "value"]),
            r'"model-index\[0\].results\[0\].metrics\[0\].value" is required',
        ),
        (
            [
                {
                    **MODEL_INDEX[0],
                    "results": [{**MODEL_INDEX[0]["results"][0], "dataset": {"type": "a b", "name": "n"}}],
                }
            ],  # type: ignore[dict-item]
            r'"model-index\[0\].results\[0\].dataset.type" with value "a b" fails to match the required pattern',
        ),
    ],
)
def test_a_model_index_of_another_shape_is_refused(api: HfApi, rid: str, model_index: Any, message: str) -> None:
    before = head(api, rid)
    with pytest.raises(ValueError, match=re.escape(message) if "\\" not in message else message):
        api.upload_file(
            path_or_fileobj=card({"model-index": model_index}).encode(), path_in_repo="README.md", repo_id=rid
        )
    assert head(api, rid) == before


@pytest.mark.parametrize(("value", "message"), [(".nan", "must be a number"), ("-.inf", "cannot be infinity")])
def test_a_metric_value_is_a_finite_number(api: HfApi, value: str, message: str) -> None:
    front = (
        "model-index:\n- name: m\n  results:\n  - task: {type: other}\n    dataset: {type: custom, name: eval}\n"
        f"    metrics:\n    - {{type: loss, value: {value}}}"
    )
    with pytest.raises(ValueError, match=re.escape(f'"model-index[0].results[0].metrics[0].value" {message}')):
        api._validate_yaml(card(front))
    api._validate_yaml(card(front.replace(value, "0.5")))


def test_a_commit_that_skips_validate_yaml_is_refused_too(api: HfApi, raw: httpx2.Client, rid: str) -> None:
    """The Hub checks the README of the commit itself; a client that does not ask validate-yaml gains nothing."""
    before = head(api, rid)
    r = raw_commit(raw, rid, [file_line("README.md", card({"license": "gpl-2.0-or-later"}).encode())])
    assert r.status_code == 400
    assert r.json()["error"].startswith('Invalid metadata in README.md.\n- "license" must be one of [apache-2.0, ')
    assert head(api, rid) == before
    # a README in a folder is no model card; a valid root one lands
    assert raw_commit(raw, rid, [file_line("docs/README.md", card({"license": "nope"}).encode())]).status_code == 200
    assert raw_commit(raw, rid, [file_line("README.md", card({"license": "mit"}).encode())]).status_code == 200


# -- files the Hub wants through LFS/Xet, crowded folders, huge files ----------------------------------------------


def test_a_binary_file_over_1_mib_is_refused_as_a_regular_file(api: HfApi, raw: httpx2.Client, rid: str) -> None:
    binary = b"\0\1\2" + bytes(range(256)) * 4200  # just over 1 MiB, NUL bytes in the first 512
    before = head(api, rid)
    r = raw_commit(raw, rid, [file_line("blob.dat", binary)])
    assert r.status_code == 400
    assert "Your push was rejected because it contains binary files" in r.json()["error"]
    assert "blob.dat" in r.json()["error"]
    assert head(api, rid) == before
    # A small binary file is fine as a regular one; the client, told so by preupload, sends the large one via LFS.
    assert raw_commit(raw, rid, [file_line("small.dat", binary[:4096])]).status_code == 200
    api.upload_file(path_or_fileobj=binary, path_in_repo="blob.dat", repo_id=rid)
    (info,) = api.get_paths_info(rid, ["blob.dat"])
    assert info.lfs is not None and info.size == len(binary)


def test_a_text_file_over_10_mib_is_refused_as_a_regular_file(api: HfApi, raw: httpx2.Client, rid: str) -> None:
    text = b"line of text\n" * (10 * 1024 * 1024 // 13 + 2)
    assert len(text) > 10 * 1024 * 1024
    r = raw_commit(raw, rid, [file_line("big.txt", text)])
    assert r.status_code == 400
    assert "Your push was rejected because it contains files larger than 10 MiB" in r.json()["error"]
    # the same text of 2 MiB is a regular file: only binary ones must go through LFS above 1 MiB
    assert raw_commit(raw, rid, [file_line("two.txt", text[: 2 * 1024 * 1024])]).status_code == 200


def test_a_folder_holds_at_most_10000_entries(api: HfApi, raw: httpx2.Client, rid: str) -> None:
    """LFS file lines of one uploaded object make the 10,000 entries cheap to send."""
    weights = b"\0weights" * 64
    api.upload_file(path_or_fileobj=weights, path_in_repo="w/0.safetensors", repo_id=rid)
    (info,) = api.get_paths_info(rid, ["w/0.safetensors"])
    assert info.lfs is not None

    def lfs_lines(numbers: range) -> list[dict[str, Any]]:
        return [
            {"key": "lfsFile", "value": {"path": f"w/{n}.safetensors", "algo": "sha256", "oid": info.lfs.sha256}}
            for n in numbers
        ]

    assert raw_commit(raw, rid, lfs_lines(range(1, 9_999))).status_code == 200  # 9,999 files and a folder in w
    r = raw_commit(raw, rid, [*lfs_lines(range(9_999, 10_001)), file_line("w/sub/x.txt", b"x")])
    assert r.status_code == 400
    assert "Too many files and folders in w (10002)" in r.json()["error"]
    assert raw_commit(raw, rid, lfs_lines(range(9_999, 10_000))).status_code == 200  # the 10,000th entry
    assert len([e for e in api.list_repo_tree(rid, "w")]) == 10_000


def test_a_file_over_50_gb_is_refused_before_any_byte_is_sent(api: HfApi, rid: str, tmp_path: Path) -> None:
    huge = tmp_path / "huge.bin"
    with huge.open("wb") as f:  # sparse: no disk used, and the client reads only 512 bytes before preupload
        f.truncate(validation.MAX_FILE_SIZE + 1)
    before = head(api, rid)
    with pytest.raises(BadRequestError, match="files on the Hub are at most 50 GB"):
        api.upload_file(path_or_fileobj=str(huge), path_in_repo="huge.bin", repo_id=rid)
    assert head(api, rid) == before
    # The LFS batch refuses it too, per object, which the client turns into its error.
    sizes = [validation.MAX_FILE_SIZE + 1, 10]
    infos = [UploadInfo(size=n, sample=b"", sha256=bytes([i]) * 32) for i, n in enumerate(sizes)]
    objects, errors, _ = post_lfs_batch_info(infos, api.token, "model", rid, endpoint=api.endpoint)  # type: ignore[arg-type]
    assert [o["size"] for o in objects if "actions" in o] == [10]
    assert len(errors) == 1 and "at most 50 GB" in errors[0]["error"]["message"]


@pytest.mark.parametrize(
    ("paths", "crowded"),
    [
        ([f"{n}.txt" for n in range(10_000)], None),
        ([f"{n}.txt" for n in range(10_001)], "the repository's root (10001)"),
        ([f"{n}.txt" for n in range(9_999)] + ["a/x", "b/y"], "the repository's root (10001)"),
        ([f"d/{n}/f" for n in range(10_001)], "d (10001)"),
        ([f"d/{n}/f" for n in range(10_000)] + ["e/f"], None),
    ],
)
def test_crowded_folders_count_files_and_folders(paths: list[str], crowded: str | None) -> None:
    error = validation.crowded_folder_error(paths)
    assert (error is None) if crowded is None else (error is not None and crowded in error)


# -- branch and tag names, commit ids ------------------------------------------------------------------------------

GIT = shutil.which("git")


def git_accepts_branch(name: str) -> bool:
    """git's own verdict, as `git branch NAME` applies it: refs/heads/NAME passes check-ref-format, and NAME does
    not start with `-` and is not `HEAD` (git's strbuf_check_branch_ref)."""
    assert GIT is not None
    done = subprocess.run([GIT, "check-ref-format", f"refs/heads/{name}"], capture_output=True, check=False)
    return done.returncode == 0 and not name.startswith("-") and name != "HEAD"


_REF_ALPHABET = st.sampled_from([*"ab-._/@{}~^:?*[]\\ \t\x7féx0", "lock", ".lock", "..", "HEAD"])


@pytest.mark.skipif(GIT is None, reason="git is not installed")
@given(name=st.lists(_REF_ALPHABET, min_size=1, max_size=8).map("".join))
@settings(max_examples=400, deadline=None)
def test_branch_names_follow_git(name: str) -> None:
    """The Hub's branch names are git's, less `@` (git reads it as HEAD), and less the `refs/` names that are no
    branch."""
    expected = git_accepts_branch(name) and name != "@" and not name.startswith("refs/")
    assert (validation.ref_name(name, "branch") is not None) == expected, name


def test_refs_prefixes_of_branches_and_tags() -> None:
    assert validation.ref_name("refs/heads/dev", "branch") == "dev"
    assert validation.ref_name("refs/tags/v1", "tag") == "v1"
    for kind, name in [("branch", "refs/pr/1"), ("branch", "refs/tags/v1"), ("tag", "refs/heads/x"), ("tag", "0" * 40)]:
        assert validation.ref_name(name, kind) is None, name


@pytest.mark.parametrize(
    "bad", ["a..b", "a b", "x.lock", "-dash", ".hidden", "a/.b", "end/", "end.", "@", "a@{1}", "c:d"]
)
def test_create_branch_and_tag_refuse_what_the_hub_refuses(api: HfApi, rid: str, bad: str) -> None:
    with pytest.raises(BadRequestError, match=re.escape(f"Invalid reference for a branch: {bad}")):
        api.create_branch(rid, branch=bad)
    with pytest.raises(BadRequestError, match=re.escape(f"Invalid reference for a tag: {bad}")):
        api.create_tag(rid, tag=bad)
    refs = api.list_repo_refs(rid)
    assert [b.name for b in refs.branches] == ["main"] and refs.tags == []


def test_create_branch_refuses_refs_that_are_no_branch(api: HfApi, rid: str) -> None:
    """huggingface_hub's own test of the Hub (test_create_branch_forbidden_ref_branch_fails)."""
    for bad in ("refs/pr/5", "refs/something/random"):
        with pytest.raises(BadRequestError, match="Invalid reference for a branch"):
            api.create_branch(rid, branch=bad)


def test_unusual_names_git_allows_are_branches(api: HfApi, rid: str) -> None:
    names = ["feature/x.y", "ünïcode", "a@b", "v1.0-rc+1", "a./b"]
    for name in names:
        api.create_branch(rid, branch=name)
        api.create_tag(rid, tag=f"t-{name}")
        assert head(api, rid, name) == head(api, rid)
    refs = api.list_repo_refs(rid)
    assert {b.name for b in refs.branches} == {"main", *names}
    assert {t.name for t in refs.tags} == {f"t-{n}" for n in names}


def test_a_commit_to_a_revision_of_a_bad_name_is_400(api: HfApi, raw: httpx2.Client, rid: str) -> None:
    with pytest.raises(BadRequestError, match=re.escape("Invalid reference for a branch: a..b")):
        api.upload_file(path_or_fileobj=b"x\n", path_in_repo="x.txt", repo_id=rid, revision="a..b")
    assert raw_commit(raw, rid, [file_line("x.txt", b"x\n")], revision="a..b").status_code == 400
    # a good name that is no branch is a missing revision, as before
    with pytest.raises(RevisionNotFoundError):
        api.upload_file(path_or_fileobj=b"x\n", path_in_repo="x.txt", repo_id=rid, revision="not-yet")


def test_commit_ids_resolve_from_7_hex_digits(api: HfApi, hub: RunningHub, rid: str) -> None:
    sha = api.upload_file(path_or_fileobj=b"x\n", path_in_repo="x.txt", repo_id=rid).oid
    for n in (7, 12, 40):
        assert api.repo_info(rid, revision=sha[:n]).sha == sha
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(rid, revision=sha[:6])
    # A prefix two commits share names neither: give the store a second record whose id starts the same.
    commits = hub.server.store.root / "repos" / "models" / rid / "commits"
    twin = sha[:8] + ("0" if sha[8] != "0" else "1") * 32
    shutil.copy(commits / f"{sha}.json", commits / f"{twin}.json")
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(rid, revision=sha[:7])
    assert api.repo_info(rid, revision=sha[:9]).sha == sha


# -- model_info: card data and the tags the Hub derives ------------------------------------------------------------


def test_model_info_serves_the_card_data_of_each_revision(api: HfApi, rid: str) -> None:
    bare = api.model_info(rid)
    assert bare.card_data is None and bare.pipeline_tag is None and bare.library_name is None
    assert bare.tags == ["region:us"]
    adapter = {
        "license": "apache-2.0",
        "base_model": "org/base",
        "base_model_relation": "adapter",
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": ["lora", "hubsync"],
        "datasets": ["org/data"],
    }
    api.upload_file(path_or_fileobj=card(adapter).encode(), path_in_repo="README.md", repo_id=rid)
    api.create_branch(rid, branch="other")
    api.upload_file(
        path_or_fileobj=card({"license": "mit", "base_model": "org/base"}).encode(),
        path_in_repo="README.md",
        repo_id=rid,
        revision="other",
    )
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="adapter_config.json", repo_id=rid, revision="other")

    info = api.model_info(rid)
    assert info.card_data is not None and info.card_data.license == "apache-2.0"
    assert info.card_data.base_model == "org/base"
    assert info.pipeline_tag == "text-generation" and info.library_name == "peft"
    assert info.tags == [
        "lora",
        "hubsync",
        "peft",
        "text-generation",
        "dataset:org/data",
        "base_model:org/base",
        "base_model:adapter:org/base",
        "license:apache-2.0",
        "region:us",
    ]
    other = api.model_info(rid, revision="other")
    assert other.card_data is not None and other.card_data.license == "mit"
    assert other.pipeline_tag is None
    # no relation in the card: an adapter_config.json makes it an adapter, as the Hub infers
    assert other.tags == ["base_model:org/base", "base_model:adapter:org/base", "license:mit", "region:us"]


# -- organizations -------------------------------------------------------------------------------------------------


def test_whoami_lists_the_users_organizations(api: HfApi, outsider: HfApi) -> None:
    assert [org["name"] for org in api.whoami()["orgs"]] == ["team"]
    assert [org["name"] for org in outsider.whoami()["orgs"]] == ["closed"]
    assert all(org["type"] == "org" for org in api.whoami()["orgs"])


def test_members_create_and_write_in_their_organization(api: HfApi) -> None:
    url = api.create_repo("team/members-write")
    assert url.repo_id == "team/members-write"
    api.upload_file(path_or_fileobj=b"x\n", path_in_repo="x.txt", repo_id="team/members-write")
    api.create_branch("team/members-write", branch="dev")
    api.create_tag("team/members-write", tag="v1")
    # the client sends {"name", "organization"}: the organization is the namespace
    assert api.create_repo("team/members-write", exist_ok=True).repo_id == "team/members-write"
    private = api.create_repo("team/members-private", private=True)
    assert api.repo_info(private.repo_id).private


@pytest.mark.parametrize("namespace", ["closed", "nobody-has-this"])
def test_non_members_may_not_create_in_an_organization(api: HfApi, namespace: str) -> None:
    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo(f"{namespace}/not-mine")
    assert info.value.response.status_code == 403
    assert f'You don\'t have the rights to create a model under the namespace "{namespace}"' in str(info.value)


def test_non_members_may_not_write_in_an_organizations_repository(api: HfApi, outsider: HfApi) -> None:
    repo_id = "team/outsiders-out"
    api.create_repo(repo_id)
    api.create_repo(f"{repo_id}-private", private=True)
    before = head(api, repo_id)
    for write in (
        lambda: outsider.upload_file(path_or_fileobj=b"x\n", path_in_repo="x.txt", repo_id=repo_id),
        lambda: outsider.create_branch(repo_id, branch="evil"),
        lambda: outsider.create_tag(repo_id, tag="evil"),
        lambda: outsider.delete_repo(repo_id),
    ):
        with pytest.raises(HfHubHTTPError) as info:
            write()
        assert info.value.response.status_code == 403
    assert head(api, repo_id) == before and head(outsider, repo_id) == before  # outsiders still read it
    with pytest.raises(HfHubHTTPError) as info:
        outsider.repo_info(f"{repo_id}-private")
    assert info.value.response.status_code == 404
    listed = {m.id for m in outsider.list_models(author="team")}
    assert repo_id in listed and f"{repo_id}-private" not in listed
    assert f"{repo_id}-private" in {m.id for m in api.list_models(author="team")}


def test_store_organizations_refuse_users_and_bad_names(tmp_path: Path) -> None:
    from hubsync.localhub import Store
    from hubsync.localhub.store import StoreError

    store = Store(tmp_path / "hub")
    store.ensure_user("me")
    store.create_org("team", ["me", "me"])
    store.create_org("team", ["you"])
    assert store.orgs() == {"team": ["me", "you"]} and store.orgs_of("me") == ["team"]
    assert store.may_write("you", "team") and not store.may_write("them", "team") and store.may_write("me", "me")
    for org, members in [("me", []), ("bad name", []), ("crew", ["team"]), ("crew", ["crew"])]:
        with pytest.raises(StoreError):
            store.create_org(org, members)
    with pytest.raises(StoreError):
        store.ensure_user("team")


def test_localhub_help_names_the_org_option() -> None:
    result = CliRunner().invoke(cli, ["localhub", "--help"])
    assert result.exit_code == 0
    assert "--org NAME" in result.output and "--org my-team" in result.output


def test_hubsync_localhub_org_makes_the_user_a_member(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "hubsync", "localhub", "--root", str(tmp_path / "hub"), "--org", "lab"]
    proc = subprocess.Popen([*command, "--org", "crew"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        settings = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(2))
        api = HfApi(endpoint=settings["HF_ENDPOINT"], token=settings["HF_TOKEN"])
        assert [org["name"] for org in api.whoami()["orgs"]] == ["crew", "lab"]
        assert api.create_repo("lab/model").repo_id == "lab/model"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    refused = CliRunner().invoke(cli, ["localhub", "--root", str(tmp_path / "hub"), "--org", "me"])
    assert refused.exit_code == 2 and "'me' is a user, not an organization" in refused.stderr


@given(name=st.lists(st.sampled_from([*"ab09._-/", "lock", "HEAD", "main"]), min_size=1, max_size=30).map("".join))
@settings(max_examples=300, deadline=None)
def test_every_branch_name_hubsync_accepts_the_hub_accepts(name: str) -> None:
    """hubsync's own check of --revision and --tag names (core.plan) is no looser than the Hub's."""
    from hubsync.core.errors import InvalidRevisionError
    from hubsync.core.plan import check_branch_name

    try:
        check_branch_name(name)
    except InvalidRevisionError:
        return
    assert validation.ref_name(name, "branch") == name
    assert validation.ref_name(name, "tag") == name


def test_the_pipeline_types_hubsync_writes_are_the_hubs() -> None:
    from hubsync.core.card import ARCHITECTURE_HEADS, PIPELINE_TAGS

    written = set(PIPELINE_TAGS.values()) | {tag for _, _, tag in ARCHITECTURE_HEADS if tag is not None}
    assert written <= set(validation.PIPELINE_TYPES)


_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=4),
    st.sampled_from(["custom", "org/data", "a b", "x"]),
)
_METRIC = st.fixed_dictionaries({}, optional={"type": _ANY, "value": _ANY}) | _ANY
_RESULT = (
    st.fixed_dictionaries(
        {},
        optional={
            "task": st.fixed_dictionaries({}, optional={"type": _ANY}) | _ANY,
            "dataset": st.fixed_dictionaries({}, optional={"type": _ANY, "name": _ANY}) | _ANY,
            "metrics": st.lists(_METRIC, max_size=2) | _ANY,
        },
    )
    | _ANY
)
_MODEL = st.fixed_dictionaries({}, optional={"name": _ANY, "results": st.lists(_RESULT, max_size=2) | _ANY}) | _ANY


@given(model_index=st.lists(_MODEL, max_size=2) | _ANY)
@settings(max_examples=400, deadline=None)
def test_hubsync_and_the_local_hub_agree_on_model_index(model_index: Any) -> None:
    """Two rules written apart, hubsync's pre-flight (core.metadata) and the local Hub's: one refuses what the other
    does."""
    from hubsync.core.metadata import model_index_problem

    assert (model_index_problem(model_index) is None) == (validation.model_index_errors(model_index) == [])


# -- hubsync's own pushes, to an organization, on this stricter Hub ------------------------------------------------


def test_hubsync_pushes_a_card_the_hub_takes_to_an_organization(
    hub: RunningHub, api: HfApi, outsider: HfApi, checkpoint: Path
) -> None:
    from conftest import push

    from hubsync.tinyrun import BASE_MODEL_ID

    result = push(hub, str(checkpoint), "--repo", "team/tiny", "--license", "apache-2.0")
    assert result.exit_code == 0, result.output
    info = api.model_info("team/tiny", revision="checkpoint-30")
    assert info.card_data is not None and info.card_data.base_model == BASE_MODEL_ID
    assert info.library_name == "peft" and info.pipeline_tag == "text-generation"
    assert info.tags is not None
    assert {"peft", f"base_model:{BASE_MODEL_ID}", f"base_model:adapter:{BASE_MODEL_ID}", "license:apache-2.0"} <= set(
        info.tags
    )
    # someone outside the organization cannot push there
    refused = push(hub, str(checkpoint), "--repo", "team/tiny", env={"HF_TOKEN": outsider.token})  # type: ignore[dict-item]
    assert refused.exit_code == 1, refused.output
    assert refused.stderr.startswith("Error: the token may not write to team/tiny ") and "(403: " in refused.stderr
