"""trainer_state.json and adapter_config.json as anyone might bring them: malformed, truncated, wrong types in
every field, huge or non-finite numbers, deep nesting, huge files, bytes that are not UTF-8, a BOM.

Through the library readers (read_checkpoint, plan_push with its card) and through the CLI (card, push --dry-run),
each either works or fails with a HubsyncError, which the CLI prints as one line (exit 1): never a traceback,
a RecursionError or a MemoryError. The same JSON files coming from a Hub (pull, ls) are handled the same way.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
from click.testing import CliRunner, Result
from huggingface_hub import HfApi
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from hubsync.cli import cli
from hubsync.core.card import CardSettings
from hubsync.core.checkpoint import read_checkpoint
from hubsync.core.errors import HubsyncError
from hubsync.core.plan import PushOptions, plan_push
from hubsync.localhub import RunningHub

EXAMPLES = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
FILES = ["trainer_state.json", "adapter_config.json"]

# Any JSON value, with integers far beyond a float's range and floats that JSON has no spelling for.
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["\ud800", "/home/someone/run", "../../etc/passwd", "", "checkpoint-abc", "LORA", "CAUSAL_LM"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture
def folder(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the real run's last checkpoint, as run/checkpoint-30 under the working directory."""
    monkeypatch.chdir(tmp_path)
    return Path(shutil.copytree(tiny_run / "checkpoint-30", tmp_path / "run" / "checkpoint-30"))


def original(tiny_run: Path, name: str) -> dict[str, Any]:
    """The file as the real run wrote it (the copy in `folder` changes from one example to the next)."""
    return json.loads((tiny_run / "checkpoint-30" / name).read_text())  # type: ignore[no-any-return]


def outcome(what: str) -> None:
    """Counted per test by `pytest --hypothesis-show-statistics`."""
    if currently_in_test_context():
        event(what)


def check_library(folder: Path) -> None:
    """Either the checkpoint reads and plans (its card rendered), or a HubsyncError says why."""
    try:
        plan = plan_push(read_checkpoint(folder), PushOptions("me/tiny", card=CardSettings()))
    except HubsyncError as exc:
        outcome(f"refused: {type(exc).__name__}")
        return
    outcome("worked")
    assert plan.generated["README.md"].decode()  # a card, as UTF-8


def check_cli(folder: Path) -> None:
    for args in (["card", str(folder)], ["push", str(folder), "--repo", "me/tiny", "--dry-run"]):
        assert_clean(CliRunner().invoke(cli, args))


def assert_clean(result: Result, *, name: str | None = None) -> None:
    """Exit 0; or exit 1 with one line on stderr (naming `name` when given); never a traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr
    if result.exit_code != 0:
        assert result.exit_code == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and lines[0].endswith("."), result.stderr
        if name is not None:
            assert name in lines[0], lines[0]


def field_paths(document: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every field of the document, and every field of its first log_history entries."""
    paths: list[tuple[Any, ...]] = [(key,) for key in document]
    for i, entry in enumerate(document.get("log_history", [])[:3]):
        paths += [("log_history", i, key) for key in entry]
    return paths


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = list(document) if isinstance(document, list) else dict(document)
    copy[path[0]] = replaced(document[path[0]], path[1:], value)
    return copy


# -- wrong types and values in every field ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
@EXAMPLES
@given(data=st.data())
def test_any_value_in_any_field(name: str, folder: Path, tiny_run: Path, data: st.DataObject) -> None:
    document = original(tiny_run, name)
    path = data.draw(st.sampled_from(field_paths(document)), label="field")
    value = data.draw(json_values, label="value")
    (folder / name).write_text(json.dumps(replaced(document, path, value)))  # NaN and Infinity as Python writes them

    check_library(folder)
    check_cli(folder)


@pytest.mark.parametrize("name", FILES)
@EXAMPLES
@given(value=json_values)
def test_any_json_document(name: str, folder: Path, value: Any) -> None:
    (folder / name).write_text(json.dumps(value))
    check_library(folder)
    check_cli(folder)


# -- damaged bytes -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
@EXAMPLES
@given(data=st.data())
def test_truncated_or_damaged_bytes(name: str, folder: Path, tiny_run: Path, data: st.DataObject) -> None:
    raw = json.dumps(original(tiny_run, name), indent=2).encode()
    how = data.draw(st.sampled_from(["truncate", "insert", "bom", "latin1", "random"]), label="how")
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="at")]
    elif how == "insert":
        at = data.draw(st.integers(0, len(raw)), label="at")
        raw = raw[:at] + data.draw(st.binary(min_size=1, max_size=8), label="bytes") + raw[at:]
    elif how == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif how == "latin1":
        raw = raw.replace(b'"LORA"', '"LÖRA"'.encode("latin-1")).replace(b'"epoch"', '"époch"'.encode("latin-1"))
    else:
        raw = data.draw(st.binary(max_size=200), label="bytes")
    (folder / name).write_bytes(raw)

    check_library(folder)
    check_cli(folder)


# -- the extremes, once each -------------------------------------------------------------------------------------------

EXTREMES = {
    "nested_100k_lists": "[" * 100_000 + "]" * 100_000,
    "nested_100k_objects": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "deep_inside_a_field": '{"global_step": 1, "log_history": ' + "[" * 50_000 + "]" * 50_000 + "}",
    "a_number_of_5000_digits": '{"global_step": ' + "9" * 5000 + "}",
    "huge_numbers": '{"global_step": 1e400, "epoch": 1e999, "best_metric": -1e400, "r": 1e308}',
    "nan_and_infinity": '{"global_step": NaN, "epoch": Infinity, "best_metric": -Infinity, "lora_alpha": NaN}',
    "a_lone_surrogate": '{"peft_type": "\\ud800", "task_type": "\\udfff", "best_model_checkpoint": "\\ud800"}',
    "nul_and_controls": '{"peft_type": "LO\\u0000RA", "target_modules": ["\\n---\\nevil: yes"]}',
    "empty": "",
    "only_whitespace": " \n\t ",
    "bom_only": "\ufeff",
    "a_list": "[]",
}


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("case", list(EXTREMES))
def test_extreme_documents(name: str, case: str, folder: Path) -> None:
    (folder / name).write_text(EXTREMES[case], encoding="utf-8", errors="surrogatepass")
    check_library(folder)
    for args in (["card", "run/checkpoint-30"], ["push", "run/checkpoint-30", "--repo", "me/tiny", "--dry-run"]):
        result = CliRunner().invoke(cli, args)
        assert_clean(result)
        if result.exit_code:
            assert f"run/checkpoint-30/{name}" in result.stderr or "base model" in result.stderr, result.stderr


@pytest.mark.parametrize("name", FILES)
def test_a_file_over_the_size_limit_is_refused_unread(name: str, folder: Path) -> None:
    """A sparse file of 65 MiB: its size is looked at, its bytes never read."""
    with (folder / name).open("wb") as f:
        f.truncate(65 * 1024 * 1024)
    result = CliRunner().invoke(cli, ["card", "run/checkpoint-30"])
    assert_clean(result, name=f"run/checkpoint-30/{name}")
    assert result.exit_code == 1 and "larger than 64 MiB" in result.stderr


# -- the same files coming from a Hub ----------------------------------------------------------------------------------


def upload(hub: RunningHub, folder: Path, repo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(repo, private=True)
    api.create_branch(repo, branch="checkpoint-30")
    api.upload_folder(repo_id=repo, folder_path=folder, revision="checkpoint-30")


@pytest.mark.parametrize("case", ["nested_100k_lists", "a_number_of_5000_digits", "nan_and_infinity", "empty"])
def test_a_hostile_trainer_state_on_the_hub(
    case: str, folder: Path, hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ls reads trainer_state.json of revisions main's index does not know; pull reads it to name the folder.
    A damaged one names nothing, and is pulled as it is."""
    (folder / "trainer_state.json").write_text(EXTREMES[case])
    upload(hub, folder, "me/hostile-json", monkeypatch)
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}

    listed = CliRunner().invoke(cli, ["ls", "me/hostile-json", "--json"], env=env)
    pulled = CliRunner().invoke(cli, ["pull", "me/hostile-json", "--to", "pulled"], env=env)

    assert_clean(listed)
    assert [r["revision"] for r in json.loads(listed.stdout)] == ["checkpoint-30"]
    assert_clean(pulled)
    assert (Path("pulled/checkpoint-30/trainer_state.json")).read_text() == EXTREMES[case]


def test_a_hostile_index_on_main(folder: Path, hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    upload(hub, folder, "me/hostile-index", monkeypatch)
    HfApi(endpoint=hub.endpoint, token=hub.token).upload_file(
        path_or_fileobj=("[" * 100_000).encode(), path_in_repo=".hubsync/index.json", repo_id="me/hostile-index"
    )
    listed = CliRunner().invoke(
        cli, ["ls", "me/hostile-index"], env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    )
    assert_clean(listed)
    assert "checkpoint-30" in listed.stdout


@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("file_climbs_out", {"file": "../../optimizer.pt"}),
        ("file_absolute", {"file": "/tmp/optimizer.pt"}),
        ("file_is_another_state_file", {"file": "scheduler.pt"}),
        ("file_not_a_string", {"file": ["optimizer.pt"]}),
        ("unknown_tensor", {"tree": {"__tensor__": "no-such-tensor"}}),
        ("object_array", {"tree": {"__ndarray__": "AAAA", "dtype": "O", "shape": [1]}}),
        ("bad_base64", {"tree": {"__bytes__": "***"}}),
        ("bad_float", {"tree": {"__float__": "not a number"}}),
        ("deep_tree", {"tree": "DEEP"}),
    ],
)
def test_a_hostile_pickle_free_state_on_the_hub(
    case: str, change: dict[str, Any], folder: Path, hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """optimizer.json tells pull how to rebuild optimizer.pt. A hostile one writes nothing outside the checkpoint
    (nor any other file), and the pull fails in one line with nothing placed."""
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    pushed = CliRunner().invoke(
        cli, ["push", "run/checkpoint-30", "--repo", "me/state", "--training-state", "keep"], env=env
    )
    assert pushed.exit_code == 0, pushed.stderr
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    document = json.loads(Path(api.hf_hub_download("me/state", "optimizer.json", revision="checkpoint-30")).read_text())
    document.update(change)
    raw = json.dumps(document)
    if change.get("tree") == "DEEP":
        raw = raw.replace('"DEEP"', "[" * 100_000 + "]" * 100_000)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    api.upload_file(
        path_or_fileobj=raw.encode(), path_in_repo="optimizer.json", repo_id="me/state", revision="checkpoint-30"
    )
    (tmp_path / "out").mkdir()

    result = CliRunner().invoke(cli, ["pull", "me/state", "--to", "out/pulled"], env=env)

    assert_clean(result)
    assert result.exit_code == 1 and "optimizer.json" in result.stderr and "pull another revision" in result.stderr
    assert not (tmp_path / "optimizer.pt").exists() and not Path("/tmp/optimizer.pt").exists()
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.name != "pulled"] == []  # no staging left
