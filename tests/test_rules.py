"""One rule each: the rules that several parts of hubsync share, tested once, by what each part does with them."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx2
import huggingface_hub
import pytest
from click.testing import CliRunner
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError
from hypothesis import given
from hypothesis import strategies as st

from hubsync.cli import cli
from hubsync.core.checkpoint import MAX_STEP, checkpoint_name, checkpoint_step, list_checkpoints, parse_trainer_state
from hubsync.core.conversion import (
    STATE_DOCUMENT_RE,
    STATE_FILE_RE,
    TRAINING_STATE_FILES,
    StateFile,
    is_training_state,
    pickled_state_name,
)
from hubsync.core.errors import HubError, InvalidRepoIdError, InvalidTagError, PermissionDeniedError, RepoNotFoundError
from hubsync.core.index import INDEX_FILE, dump_index, index_entry, parse_index
from hubsync.core.plan import check_repo_id, check_tag_name
from hubsync.core.prune import plan_prune
from hubsync.core.pull import RemoteFile, step_of
from hubsync.core.repo_id import is_repo_id
from hubsync.core.selection import best_step_of
from hubsync.core.transient import NEVER_PASSES, transient_failure, transient_status
from hubsync.files import git_blob_hasher, git_blob_id
from hubsync.hub.client import CommitResult, HubClient, with_retries
from hubsync.hub.prune import PruneTarget, execute_prune, prune_inputs
from hubsync.hub.pull import plan_revision_pull
from hubsync.hub.push import local_hashes
from hubsync.localhub import RunningHub
from hubsync.localhub.store import StoreError, check_repo_name

STATUSES = st.integers(min_value=100, max_value=599)


def _http_error(status: int) -> HfHubHTTPError:
    request = httpx2.Request("POST", "http://hub.test/api/models/me/m/commit/main")
    return HfHubHTTPError(f"{status}", response=httpx2.Response(status, request=request))


@given(STATUSES)
def test_a_status_is_transient_by_one_rule(status: int) -> None:
    expected = status in (408, 429) or (status >= 500 and status not in NEVER_PASSES)
    assert transient_status(status) is expected
    # The watch's rule for a failed push is the same rule.
    assert transient_failure(HubError("http://hub.test", "said no", status=status)) is expected


@given(STATUSES)
def test_a_call_is_retried_exactly_when_its_status_is_transient(status: int) -> None:
    calls: list[int] = []

    def call() -> str:
        calls.append(status)
        if len(calls) == 1:
            raise _http_error(status)
        return "done"

    if transient_status(status):
        assert with_retries(call, delays=(0.0,)) == "done" and len(calls) == 2
    else:
        with pytest.raises(HfHubHTTPError):
            with_retries(call, delays=(0.0,))
        assert len(calls) == 1


def test_statuses_that_never_pass_and_errors_of_the_request_are_not_transient() -> None:
    assert not transient_status(None)
    assert not any(transient_status(s) for s in (400, 401, 403, 404, 409, 412, 422, 501, 505, 511))
    assert all(transient_status(s) for s in (408, 429, 500, 502, 503, 504, 520, 599))
    assert not transient_failure(PermissionDeniedError("http://hub.test", "no", status=403))
    assert not transient_failure(RepoNotFoundError("http://hub.test", "gone", status=503))
    assert not transient_failure(ValueError("not a Hub's failure"))


# The checkpoint-N name: one pattern, one parser, one writer.
STEPS = st.integers(min_value=0, max_value=MAX_STEP)


@given(STEPS)
def test_a_step_and_its_checkpoint_name_round_trip(step: int) -> None:
    assert checkpoint_step(checkpoint_name(step)) == step
    assert best_step_of(f"out/run/{checkpoint_name(step)}") == step
    assert step_of(f"run-a/{checkpoint_name(step)}") == step


@given(st.text(max_size=30) | st.from_regex(r"checkpoint-[0-9]{1,40}", fullmatch=True))
def test_only_a_checkpoint_name_has_a_step(name: str) -> None:
    step = checkpoint_step(name)
    digits = name.removeprefix("checkpoint-")
    is_name = name.startswith("checkpoint-") and digits.isascii() and digits.isdigit() and len(digits) <= 18
    assert (step is not None) is is_name
    if step is not None:
        assert step == int(digits) and 0 <= step <= MAX_STEP


@given(st.integers(min_value=MAX_STEP + 1) | st.integers(max_value=-1))
def test_a_step_out_of_range_has_no_checkpoint_name(step: int) -> None:
    with pytest.raises(ValueError, match="not a step number"):
        checkpoint_name(step)


def test_a_name_with_thousands_of_digits_is_not_a_checkpoint(tmp_path: Path) -> None:
    huge = "9" * 5000  # int() of it raises past 4,300 digits
    assert checkpoint_step(f"checkpoint-{huge}") is None and step_of(f"checkpoint-{huge}") is None
    assert best_step_of(f"out/checkpoint-{huge}") is None
    (tmp_path / "checkpoint-7").mkdir()
    (tmp_path / f"checkpoint-{'9' * 19}").mkdir()
    assert [step for step, _ in list_checkpoints(tmp_path)] == [7]
    with pytest.raises(InvalidTagError):
        check_tag_name("checkpoint-12", "checkpoint-7")


def test_a_huge_global_step_is_a_damaged_trainer_state() -> None:
    with pytest.raises(ValueError, match="more than 18 digits"):
        parse_trainer_state({"global_step": 10**30})
    assert parse_trainer_state({"global_step": MAX_STEP}).global_step == MAX_STEP


def test_a_pulled_revision_whose_global_step_is_huge_is_named_by_its_branch(
    tiny_run: Path, hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # the local Hub has no Xet
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo("me/hostile")
    api.create_branch("me/hostile", branch="checkpoint-5")
    source = tiny_run / "checkpoint-10"
    operations = [
        CommitOperationAdd(name, source / name) for name in ("adapter_model.safetensors", "adapter_config.json")
    ]
    state = b'{"global_step": ' + b"9" * 400 + b"}"  # a folder of that name: "File name too long"
    operations.append(CommitOperationAdd("trainer_state.json", state))
    api.create_commit("me/hostile", operations, commit_message="hostile", revision="checkpoint-5")

    plan = plan_revision_pull(HubClient(hub.endpoint, hub.token), "me/hostile", "checkpoint-5", tmp_path / "to")

    assert plan.target == tmp_path / "to" / "checkpoint-5"


# Training-state file names: one table, from which every pattern is derived.
@pytest.mark.parametrize("entry", TRAINING_STATE_FILES, ids=lambda f: f.stem)
def test_every_training_state_file_of_the_table_is_known_in_both_forms(entry: StateFile) -> None:
    stems = [entry.stem, *([f"{entry.stem}_3"] if entry.per_process else [])]
    for stem in stems:
        pickled = f"{stem}{entry.suffix}"
        assert STATE_FILE_RE.match(pickled) and is_training_state(pickled)
        assert STATE_DOCUMENT_RE.match(f"{stem}.json") and is_training_state(f"{stem}.safetensors")
        assert pickled_state_name(stem) == pickled
    assert pickled_state_name(f"{entry.stem}_3") == (f"{entry.stem}_3{entry.suffix}" if entry.per_process else None)


def test_the_trainers_own_state_files_are_those_of_the_table(tiny_run: Path) -> None:
    names = {p.name for p in (tiny_run / "checkpoint-20").iterdir()}
    pickled = {n for n in names if STATE_FILE_RE.match(n)}
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth"} <= pickled
    assert {n for n in names if is_training_state(n)} == pickled | {"training_args.bin"}
    assert not any(STATE_FILE_RE.match(n) for n in ("optimizer.pth", "rng_state.pt", "model.pt", "rng_state_x.pth"))


# The repository id and the git blob id: one definition each, for hubsync and its local Hub alike.
REPO_PARTS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}", fullmatch=True) | st.text(max_size=8)


@given(REPO_PARTS, REPO_PARTS)
def test_the_local_hub_and_the_library_agree_on_a_repo_id(namespace: str, name: str) -> None:
    repo_id = f"{namespace}/{name}"
    try:
        check_repo_id(repo_id)
        library = True
    except InvalidRepoIdError:
        library = False
    try:
        local_hub = check_repo_name(repo_id) == (namespace, name)
    except StoreError:
        local_hub = False
    assert library is local_hub is is_repo_id(repo_id)


@given(st.binary(max_size=2000))
def test_a_git_blob_id_is_gits(data: bytes) -> None:
    expected = hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()
    assert git_blob_id(data) == expected
    hasher = git_blob_hasher(len(data))
    hasher.update(data)
    assert hasher.hexdigest() == expected


def test_the_local_hub_lists_the_git_blob_id_that_push_computes(
    hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo("me/blobs")
    small, large = tmp_path / "notes.txt", tmp_path / "weights.safetensors"
    small.write_bytes(b"hello\n" * 100)
    large.write_bytes(bytes(range(256)) * 64)
    api.create_commit(
        "me/blobs", [CommitOperationAdd(p.name, p) for p in (small, large)], commit_message="files", revision="main"
    )
    listed = {f.path: f for f in HubClient(hub.endpoint, hub.token).tree("me/blobs", "main")}
    assert listed["notes.txt"].git_oid == local_hashes(small).git_oid == git_blob_id(small.read_bytes())
    assert listed["weights.safetensors"].sha256 == local_hashes(large).sha256  # LFS: its id is the pointer's


# "Already on the Hub": one rule, for `hubsync push` and for a watch restarted without its record.
def _history(api: HfApi, repo_id: str) -> dict[str, list[str]]:
    return {
        b.name: [c.commit_id for c in api.list_repo_commits(repo_id, revision=b.name)]
        for b in api.list_repo_refs(repo_id).branches
    }


def test_an_unchanged_push_uploads_nothing_and_commits_nothing_by_push_or_watch(
    tiny_run: Path, hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    push = ["push", "run", "--repo", "me/again", "--select", "all", "--training-state", "keep", "--json"]
    first = CliRunner().invoke(cli, push, env=env)
    assert first.exit_code == 0, first.stderr
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    before = _history(api, "me/again")
    assert set(before) == {"main", "checkpoint-10", "checkpoint-20", "checkpoint-30"}
    converted: list[Path] = []  # what the push converts (the training state, to its pickle-free form)
    monkeypatch.setattr("hubsync.hub.push.encode_state", lambda source, *rest: converted.append(source))

    again = CliRunner().invoke(cli, push, env=env)
    assert again.exit_code == 0, again.stderr
    assert [r["created"] for r in json.loads(again.stdout)["results"]] == [False, False, False]
    assert _history(api, "me/again") == before and converted == []

    watch = ["watch", "run", "--repo", "me/again", "--training-state", "keep", "--interval", "0.05", "--nice", "0"]
    watched = CliRunner().invoke(cli, [*watch, "--json"], env=env)  # no record: it asks the Hub
    assert watched.exit_code == 0, watched.stderr
    summary = json.loads(watched.stdout)
    assert [(p["step"], p["created"]) for p in summary["pushed"]] == [(10, False), (20, False), (30, False)]
    assert _history(api, "me/again") == before

    monkeypatch.undo()
    # A changed file is pushed: the rule says "unchanged", not "pushed once".
    (run / "checkpoint-30" / "notes.txt").write_text("added by hand\n")
    changed = CliRunner().invoke(cli, ["push", str(run / "checkpoint-30"), *push[2:4], *push[6:8]], env=env)
    assert changed.exit_code == 0, changed.stderr
    after = _history(api, "me/again")
    assert len(after["checkpoint-30"]) == len(before["checkpoint-30"]) + 1


# Effects take Protocols: a small Hub of its own, in memory, that records what it is asked, stands in for HubClient.
class RecordingHub:
    """A repository in memory implementing PruneTarget (hub/prune.py): branches -> {path: bytes}, one commit each."""

    endpoint = "http://fake.test"

    def __init__(self, branches: dict[str, dict[str, bytes]]) -> None:
        self.files = branches
        self.heads = {name: f"{i + 1:040x}" for i, name in enumerate(branches)}
        self.calls: list[tuple[str, ...]] = []

    def require_token(self) -> None:
        self.calls.append(("require_token",))

    def refs(self, repo_id: str) -> tuple[dict[str, str], dict[str, str]]:
        self.calls.append(("refs", repo_id))
        return dict(self.heads), {}

    def _branch_of(self, revision: str) -> str:
        return next((b for b, c in self.heads.items() if c == revision), revision)

    def read_file(self, repo_id: str, revision: str, path: str) -> bytes | None:
        self.calls.append(("read_file", revision, path))
        return self.files[self._branch_of(revision)].get(path)

    def tree(self, repo_id: str, commit: str, revision: str | None = None) -> list[RemoteFile]:
        self.calls.append(("tree", commit))
        files = self.files[self._branch_of(commit)]
        return [RemoteFile(p, len(d), None, git_blob_id(d)) for p, d in sorted(files.items())]

    def commit_dates(self, repo_id: str, revision: str, newest: int | None = None) -> list[tuple[str, str]]:
        return [(revision, "2026-01-01T00:00:00+00:00")]

    def delete_branch(self, repo_id: str, branch: str) -> bool:
        self.calls.append(("delete_branch", branch))
        del self.files[branch], self.heads[branch]
        return True

    def branch_head(self, repo_id: str, branch: str) -> str | None:
        return self.heads.get(branch)

    def commit_files(
        self,
        repo_id: str,
        branch: str,
        files: Any,
        message: str,
        description: str = "",
        parent_commit: str | None = None,
        delete: Sequence[str] = (),
        digests: Any = None,
    ) -> CommitResult:
        assert parent_commit == self.heads[branch]
        self.calls.append(("commit_files", branch, message))
        for source, path in files:
            self.files[branch][path] = source if isinstance(source, bytes) else Path(source).read_bytes()
        self.heads[branch] = f"{int(self.heads[branch], 16) + 100:040x}"
        return CommitResult(self.heads[branch], f"{self.endpoint}/commit/{self.heads[branch]}", True)

    def web_url(self, repo_id: str, revision: str | None = None) -> str:
        return f"{self.endpoint}/{repo_id}"


def test_a_prune_is_planned_and_carried_out_through_the_protocol_alone() -> None:
    checkpoint = {"adapter_model.safetensors": b"w", "adapter_config.json": b"{}"}
    entries = [
        {**index_entry(checkpoint_name(s), s, None, {}, list(checkpoint), commit=f"{i + 2:040x}"), "tags": []}
        for i, s in enumerate((10, 20, 30))
    ]
    hub: PruneTarget = RecordingHub(
        {"main": {INDEX_FILE: dump_index(entries)}, **{checkpoint_name(s): dict(checkpoint) for s in (10, 20, 30)}}
    )
    assert isinstance(hub, RecordingHub)

    found = prune_inputs(hub, "me/fake")
    plan = plan_prune("me/fake", found.revisions, keep=1, tags=found.tags, best_step=found.best_step)
    assert [d.revision for d in plan.delete] == ["checkpoint-20", "checkpoint-10"]
    assert not any(call[0] in ("delete_branch", "commit_files") for call in hub.calls)  # planning only reads

    result = execute_prune(plan, hub)

    assert result.deleted == ("checkpoint-20", "checkpoint-10")
    changes = [c for c in hub.calls if c[0] in ("require_token", "delete_branch", "commit_files")]
    assert changes == [
        ("require_token",),
        ("delete_branch", "checkpoint-20"),
        ("delete_branch", "checkpoint-10"),
        ("commit_files", "main", "hubsync: prune checkpoint-10, checkpoint-20"),
    ]
    assert [e["revision"] for e in parse_index(hub.files["main"][INDEX_FILE])] == ["checkpoint-30"]
    assert result.index_commit == hub.heads["main"]
