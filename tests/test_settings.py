"""Push settings: one table, every value checked whatever its source (flag, HUBSYNC_* variable, file), the
sources named in refusals, and no traceback from any text given to any option of any command."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import hub_state, local_hub, push
from huggingface_hub import HfApi
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hubsync.cli import cli
from hubsync.core.config import (
    FALSE,
    MOST_COUNT,
    PUSH_SETTINGS,
    SETTINGS,
    TRUE,
    Count,
    FileConfig,
    Setting,
    resolve_settings,
)
from hubsync.core.errors import SettingError, WiderExposureError
from hubsync.core.plan import check_branch_name, check_tag_name
from hubsync.core.selection import revision_name
from hubsync.localhub import RunningHub

TEXT = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", " ", "Keep", "kep", "{step", "{step}}", "{steps}", "main", "a..b", "me/x", "TRUE", "0", "last:0", "\x00"]
)
FILE_VALUES = TEXT | st.booleans() | st.integers() | st.floats() | st.lists(TEXT | st.integers(), max_size=3)
SOURCES = st.sampled_from(["flag", "variable", "file"])
FILE = FileConfig({}, "hubsync.toml", Path("/project"))


def resolve_from(setting: Setting, source: str, value: Any) -> Any:
    if source == "flag":
        return resolve_settings({setting.name: value}, FileConfig(), {}, names=(setting.name,))
    if source == "variable":
        return resolve_settings({}, FileConfig(), {setting.variable: value}, names=(setting.name,))
    return resolve_settings({}, FileConfig({setting.name: value}, FILE.source, FILE.folder), {}, names=(setting.name,))


def accepted(setting: Setting, value: Any) -> None:
    """What an accepted value must be, by the setting's meaning (not by the table's own check)."""
    if setting.kind is bool:
        assert isinstance(value, bool)
    elif setting.kind is float:  # seconds
        assert isinstance(value, float) and 0 <= value <= 86400
    elif setting.kind is int:  # bytes
        assert isinstance(value, int) and 0 < value <= 49 * 10**9
    elif setting.kind is Count:  # a number of checkpoint revisions; keep: a policy keeps at least 1
        assert value is None or (type(value) is int and setting.least <= value <= MOST_COUNT)
        assert setting.name != "keep" or value is None or value >= 1
    elif setting.choices:
        assert value in setting.choices
    elif setting.name == "revision":
        for step, epoch, run in ((1, 0.5, "run"), (123456, 99.99, "my-run_2")):
            check_branch_name(revision_name(value, step=step, epoch=epoch, run=run, folder="f"))
    elif setting.name == "tags":
        assert all(check_tag_name(t, branch="checkpoint-1000") == t for t in value)
    elif setting.kind is list:
        assert isinstance(value, tuple) and all(isinstance(v, str) and v.strip() and "\x00" not in v for v in value)
    elif value is not None:
        assert isinstance(value, str) and value.strip() and "\x00" not in value


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(PUSH_SETTINGS), SOURCES, st.data())
def test_every_value_is_checked_alike_whatever_its_source(setting: Setting, source: str, data: st.DataObject) -> None:
    value = data.draw(FILE_VALUES if source == "file" else TEXT)
    if source == "flag" and setting.kind is list:
        value = (value,)
    if source == "flag" and setting.kind is bool:
        value = data.draw(st.booleans())
    try:
        resolved = resolve_from(setting, source, value)
    except SettingError as exc:
        named = {"flag": setting.flag, "variable": setting.variable, "file": "hubsync.toml"}[source]
        assert exc.source == named and exc.setting == setting.name
        assert str(exc).startswith((f"{named}: {setting.name} ", f"{named}: {setting.label} "))
        return
    except WiderExposureError as exc:  # only a flag may publish more than the default
        assert source != "flag" and exc.setting == setting.name
        assert exc.source == {"variable": setting.variable, "file": "hubsync.toml"}[source]
        return
    result = resolved[setting.name]
    accepted(setting, result)
    if source == "variable" and setting.kind is bool and value.strip():
        assert result is (value.strip().lower() in TRUE) and value.strip().lower() in TRUE + FALSE
    if source == "variable" and not value.strip():
        assert result == setting.default and resolved.sources[setting.name] == setting.variable  # cleared
    if source == "file" and setting.path and isinstance(value, str):
        assert result == str(Path("/project") / value)  # relative to the file that names it


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["flag", "variable", "file"]), unique=True))
def test_flag_over_variable_over_file_over_default(present: list[str]) -> None:
    setting = SETTINGS["training-state-format"]
    flags = {setting.name: "pickle"} if "flag" in present else {}
    environ = {setting.variable: "safe"} if "variable" in present else {}
    config = FileConfig({setting.name: "pickle"} if "file" in present else {}, "hubsync.toml", Path("."))
    resolved = resolve_settings(flags, config, environ)
    winner = next((s for s in ("flag", "variable", "file") if s in present), "default")
    expected = {"flag": "pickle", "variable": "safe", "file": "pickle", "default": "safe"}[winner]
    assert resolved[setting.name] == expected
    assert (
        resolved.sources[setting.name]
        == {
            "flag": setting.flag,
            "variable": setting.variable,
            "file": "hubsync.toml",
            "default": "default",
        }[winner]
    )


def test_the_readme_configuration_example_pushes_again_and_again(run: Path, hub: RunningHub, api: HfApi) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (example,) = re.findall(r"```toml\n(# hubsync.toml.*?)```", readme, re.S)
    (run / "hubsync.toml").write_text(example)
    (run / "cards").mkdir()
    shutil.copy(Path(__file__).resolve().parent.parent / "templates" / "model_card.md.j2", run / "cards")
    for step in (10, 20, 30):
        result = push(hub, str(run / f"checkpoint-{step}"))
        assert result.exit_code == 0, result.stderr
    assert {b.name for b in api.list_repo_refs("me/my-model").branches} == {
        "main",
        "tiny-step-10",
        "tiny-step-20",
        "tiny-step-30",
    }
    assert api.model_info("me/my-model").private


KEEP = SETTINGS["keep"]


@settings(max_examples=400, deadline=None)
@given(
    SOURCES,
    st.integers()
    | st.integers(min_value=-5, max_value=MOST_COUNT + 5)
    | st.floats()
    | st.booleans()
    | st.text(max_size=25)
    | st.integers(min_value=-(10**30), max_value=10**30).map(str)
    | st.sampled_from(["three", "1.5", "-1", "0", " 3 ", "٣", "+3", "3e2", "0x10", "true", "1_000"]),
)
def test_keep_is_a_whole_number_of_revisions_from_1_whatever_its_source(source: str, value: Any) -> None:
    """keep is a count (not bytes, not seconds): a whole number from 1 (a policy keeps the checkpoint just
    pushed) to MOST_COUNT, as an integer in a file or its ASCII digits in a flag or variable."""
    if source != "file":
        value = str(value)
    text = value.strip() if isinstance(value, str) else None
    if text is not None:
        whole = text.isascii() and text.isdigit() and len(text) <= 19
        expected = int(text) if whole and 1 <= int(text) <= MOST_COUNT else None
    else:
        number = type(value) is int and 1 <= value <= MOST_COUNT
        expected = value if number else None
    if source == "variable" and text == "":
        assert resolve_from(KEEP, source, value)["keep"] is None  # cleared: no policy
        return
    try:
        resolved = resolve_from(KEEP, source, value)
    except SettingError as exc:
        named = {"flag": KEEP.flag, "variable": KEEP.variable, "file": "hubsync.toml"}[source]
        assert expected is None, value
        assert str(exc).startswith(f"{named}: keep must be a whole number from 1 to 1,000,000, such as 3 (")
        assert "keeps at least the checkpoint just pushed" in str(exc)
        assert len(str(exc)) < 400  # a huge integer is not shown whole
        return
    assert resolved["keep"] == expected and type(resolved["keep"]) is int


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ('keep = "three"', 'not "three"'),
        ("keep = -1", "not -1"),
        ("keep = 1.5", "not 1.5"),
        ("keep = true", "not True"),
        ("keep = 0", "not 0"),
        ("keep = 123456789012345678901234567890", 'not "a number of over 19 digits"'),
        ('keep-best = "yes"', 'keep-best must be true or false, not "yes"'),
    ],
)
def test_a_bad_keep_in_the_file_names_the_file_and_pushes_nothing(
    run: Path, hub: RunningHub, api: HfApi, line: str, shown: str
) -> None:
    (run / "hubsync.toml").write_text(line + "\n")
    result = push(hub, str(run), "--repo", "me/tiny", "--select", "all")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: ") and "/tiny/hubsync.toml: " in result.stderr, result.stderr
    assert shown in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not api.repo_exists("me/tiny")


def test_keep_0_as_a_flag_or_variable_is_refused_with_the_reason(run: Path, hub: RunningHub, api: HfApi) -> None:
    result = push(hub, str(run), "--repo", "me/tiny", "--keep", "0")
    assert result.exit_code == 2 and "keeps at least the checkpoint just pushed" in result.stderr
    result = push(hub, str(run), "--repo", "me/tiny", env={"HUBSYNC_KEEP": "0"})
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: HUBSYNC_KEEP: keep must be a whole number from 1 to 1,000,000")
    assert not api.repo_exists("me/tiny")


def test_the_table_and_the_readme_agree() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for setting in PUSH_SETTINGS:
        assert f"| `{setting.name}` | `{setting.flag}" in readme, setting.name
        assert f"`{setting.variable}`" in readme, setting.variable


# The reproductions of the issue, end to end against the local Hub.


@pytest.mark.parametrize(
    ("file", "env", "extra", "message"),
    [
        (
            'training-state = "Keep"\n',
            {},
            [],
            'hubsync.toml: training-state must be drop or keep, not "Keep". Fix it in ',
        ),
        (
            'training-state = "Keep"\nprivate = false\n',
            {},
            ["--public"],
            'hubsync.toml: training-state must be drop or keep, not "Keep"',
        ),
        ("", {"HUBSYNC_TRAINING_STATE": "kep"}, ["--public"], "HUBSYNC_TRAINING_STATE: training-state must be drop"),
        ("", {"HUBSYNC_TRAINING_STATE_FORMAT": "pickel"}, [], "training-state-format must be safe or pickle"),
        ('release = "yes"\n', {}, [], 'release must be true or false, not "yes"'),
        ("", {"HUBSYNC_ALLOW_PUBLIC_STATE": "sure"}, [], 'allow-public-state must be true or false, not "sure"'),
        ('git-commit = "HEAD"\n', {}, [], "git-commit must be a git commit id"),
        ('revision = "{step"\n', {}, [], 'revision "{step" is not valid: braces must pair up'),
        ("", {"HUBSYNC_TAGS": "v1,main"}, [], 'HUBSYNC_TAGS: tag "main" is not valid'),
    ],
)
def test_a_bad_value_from_a_file_or_variable_stops_before_anything(
    run: Path, hub: RunningHub, api: HfApi, file: str, env: dict[str, str], extra: list[str], message: str
) -> None:
    if file:
        (run / "hubsync.toml").write_text(file)
    result = push(hub, str(run), "--repo", "me/tiny", "--select", "all", *extra, env=env)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: ") and message in result.stderr and result.stderr.count("\n") == 1
    assert list(api.list_models(author="me")) == []  # nothing created, nothing uploaded


def test_kept_state_named_in_a_file_is_kept_and_never_raw_pickles(run: Path, hub: RunningHub, api: HfApi) -> None:
    (run / "hubsync.toml").write_text('training-state = "keep"\n')
    assert push(hub, str(run), "--repo", "me/tiny").exit_code == 0
    files = {f.path for f in api.list_repo_tree("me/tiny", revision="checkpoint-30")}
    assert {"optimizer.safetensors", "optimizer.json", "scheduler.json", "training_args.json"} <= files
    assert not files & {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}


def test_per_project_settings_that_used_to_bypass_the_file(run: Path, hub: RunningHub, api: HfApi) -> None:
    (run / "hubsync.toml").write_text(
        'training-state = "keep"\ntraining-state-format = "pickle"\nrelease = true\ngit-commit = "ABCDEF1234567"\n'
    )
    result = push(hub, str(run), "--repo", "me/tiny", "--json")
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)["plans"][0]
    assert plan["training_state_format"] == "pickle" and plan["git_commit"] == "abcdef1234567"
    assert "optimizer.pt" in {f.path for f in api.list_repo_tree("me/tiny", revision="checkpoint-30")}
    assert "adapter_model.safetensors" in {f.path for f in api.list_repo_tree("me/tiny", revision="main")}
    assert "abcdef1234567" in next(iter(api.list_repo_commits("me/tiny", revision="checkpoint-30"))).message


def test_lists_and_files_can_be_cleared(run: Path, hub: RunningHub, api: HfApi) -> None:
    (run / "cards").mkdir()
    (run / "cards" / "card.md.j2").write_text("---\nlicense: mit\n---\nCUSTOM CARD\n")
    (run / "hubsync.toml").write_text('tags = ["nightly"]\ntemplate = "cards/card.md.j2"\ndatasets = ["me/data"]\n')
    plan = json.loads(push(hub, str(run), "--repo", "me/tiny", "--dry-run", "--json").stdout)["plans"][0]
    assert plan["tags"] == ["nightly"]

    for args, env in (
        ([], {"HUBSYNC_TAGS": "", "HUBSYNC_TEMPLATE": "", "HUBSYNC_DATASETS": ""}),
        (["--no-tag", "--no-template", "--no-dataset"], {}),
    ):
        result = push(hub, str(run), "--repo", "me/tiny", "--dry-run", "--json", *args, env=env)
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["plans"][0]["tags"] == []
    assert push(hub, str(run), "--repo", "me/tiny", "--no-tag", "--no-template", "--no-dataset").exit_code == 0
    readme = api.hf_hub_download("me/tiny", "README.md", revision="checkpoint-30")
    text = Path(readme).read_text()
    assert "CUSTOM CARD" not in text and "me/data" not in text
    assert [t.name for t in api.list_repo_refs("me/tiny").tags] == []
    assert push(hub, str(run), "--repo", "me/tiny", "--tag", "v1", "--no-tag").exit_code == 2


def test_a_select_from_the_file_leaves_a_checkpoint_folder_alone(run: Path, hub: RunningHub, api: HfApi) -> None:
    (run / "hubsync.toml").write_text('select = "all"\n')
    assert push(hub, str(run / "checkpoint-20"), "--repo", "me/tiny").exit_code == 0
    assert {b.name for b in api.list_repo_refs("me/tiny").branches} == {"main", "checkpoint-20"}
    assert push(hub, str(run), "--repo", "me/tiny").exit_code == 0
    assert {b.name for b in api.list_repo_refs("me/tiny").branches} == {
        "main",
        *(f"checkpoint-{s}" for s in (10, 20, 30)),
    }


# Any text to any option of any command: one line, exit 1 or 2 (or 0 where the text happens to be valid),
# no traceback, and nothing changed on the Hub.

OPTIONS: dict[str, list[str]] = {
    "push": [
        "--repo",
        "--revision",
        "--select",
        "--tag",
        "--template",
        "--license",
        "--base-model",
        "--dataset",
        "--language",
        "--git-commit",
        "--training-state",
        "--training-state-format",
        "--keep",
        "--endpoint",
        "--token",
        "PATH",
    ],
    "watch": [
        "--repo",
        "--revision",
        "--tag",
        "--keep",
        "--interval",
        "--idle-timeout",
        "--retry-max",
        "--nice",
        "--endpoint",
    ],
    "pull": ["--revision", "--to", "--endpoint", "--token", "REPO"],
    "ls": ["--endpoint", "--token", "REPO"],
    "prune": ["--keep", "--endpoint", "--token", "REPO"],
    "card": ["--repo", "--revision", "--template", "--license", "--base-model", "--dataset", "--language", "PATH"],
    "convert": ["--output", "PATH"],
}
VARIABLES = [s.variable for s in PUSH_SETTINGS] + ["HF_ENDPOINT", "HF_TOKEN"]
ARBITRARY = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30) | st.sampled_from(
    ["", "-", "--", "{step", "{step}}", "main", "..", "/", "me/", "http://localhost:37931x", "1e999", "-1", "nan"]
)


@pytest.fixture(scope="module")
def fuzz_hub(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Iterator[tuple[RunningHub, Path]]:
    work = tmp_path_factory.mktemp("fuzz")
    with local_hub(work / "hub") as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
        run = Path(shutil.copytree(tiny_run, work / "out" / "tiny"))
        done = CliRunner().invoke(cli, ["push", str(run), "--repo", "me/tiny", "--training-state", "keep"], env=env)
        assert done.exit_code == 0, done.output
        yield hub, work


def base_args(command: str, work: Path) -> list[str]:
    run = str(work / "out" / "tiny")
    return {
        "push": [run, "--repo", "me/tiny", "--dry-run"],
        "watch": [str(work / "no-run"), "--repo", "me/tiny", "--idle-timeout", "0", "--interval", "0.05"],
        "pull": ["me/tiny", "--to", str(work / "pulled")],
        "ls": ["me/tiny"],
        "prune": ["me/tiny", "--keep", "1", "--dry-run"],
        "card": [f"{run}/checkpoint-30", "-o", str(work / "card" / "README.md")],
        "convert": [f"{run}/checkpoint-30", "-o", str(work / "converted"), "--force"],
    }[command]


OUTCOMES: Counter[tuple[str, int]] = Counter()


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=st.data())
def test_any_text_to_any_option_of_any_command(
    fuzz_hub: tuple[RunningHub, Path], data: st.DataObject, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, work = fuzz_hub
    monkeypatch.chdir(work)  # a relative --to, -o or PATH that happens to be valid writes there
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    command = data.draw(st.sampled_from(sorted(OPTIONS)))
    option = data.draw(st.sampled_from(OPTIONS[command]))
    value = data.draw(ARBITRARY)
    args = base_args(command, work)
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    if option in ("PATH", "REPO"):
        args[0] = value
    elif option.startswith("HUBSYNC_") or option == "HF_ENDPOINT":
        env[option] = value
    else:
        # A valid --idle-timeout over a second would make this watch wait for its missing run that long.
        assume(option != "--idle-timeout" or not re.fullmatch(r"\s*\+?(\d+\.?\d*|\.\d+)(e\+?\d+)?\s*", value, re.I))
        args += [option, value]
    if command in ("push", "watch", "pull", "ls") and data.draw(st.booleans()):
        variable = data.draw(st.sampled_from(VARIABLES))
        env[variable] = data.draw(ARBITRARY)
        option += f" + {variable}"
    before = hub_state(api)
    result = CliRunner().invoke(cli, [command, *args], env=env)
    OUTCOMES[(f"{command} {option.split(' ')[0]}", result.exit_code)] += 1
    assert result.exit_code in (0, 1, 2), (command, option, value, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (command, option, value)
    assert "Traceback" not in result.output
    if result.exit_code:
        *retries, error = result.stderr.splitlines()  # a retry pause is said on a line of its own
        assert error.startswith("Error: ") and all(r.startswith("Hub: ") for r in retries), (option, result.stderr)
    assert hub_state(api) == before, (command, option, value)


def test_outcomes_of_the_option_fuzz(summary_lines: Any) -> None:
    """The counts `test_any_text_to_any_option_of_any_command` saw (it runs first, in file order)."""
    if not OUTCOMES:
        pytest.skip("the fuzz test did not run in this session")
    by_code: Counter[int] = Counter()
    for (_, code), n in OUTCOMES.items():
        by_code[code] += n
    with summary_lines("option fuzz", "no outcomes") as add:
        add(
            f"{sum(OUTCOMES.values())} runs over {len({k for k, _ in OUTCOMES})} command/option pairs: "
            + ", ".join(f"exit {code}: {n}" for code, n in sorted(by_code.items()))
            + "; no traceback, the Hub unchanged after each"
        )
    assert set(by_code) <= {0, 1, 2}


# What an attacker who wrote the checkpoint, or a typo, could make of the settings.


def test_a_checkpoints_own_configuration_is_never_read(run: Path, hub: RunningHub, api: HfApi, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOKEN-LIKE SECRET\n")
    checkpoint = run / "checkpoint-30"
    (checkpoint / "hubsync.toml").write_text(
        'private = false\ntraining-state = "keep"\nallow-public-state = true\ntemplate = "../../../../secret.txt"\n'
    )
    result = push(hub, str(checkpoint), "--repo", "me/victim")
    assert result.exit_code == 0, result.stderr
    assert api.model_info("me/victim").private
    files = {f.path for f in api.list_repo_tree("me/victim", revision="checkpoint-30")}
    assert not files & {"optimizer.safetensors", "optimizer.pt", "rng_state.pth"}  # the default: state dropped
    assert "hubsync.toml" not in files  # left out, as it was not read
    assert "hubsync.toml (a hubsync configuration" in result.output
    card = Path(api.hf_hub_download("me/victim", "README.md", revision="checkpoint-30")).read_text()
    assert "SECRET" not in card


@pytest.mark.parametrize("template", ["../secret.txt", "/etc/hostname", "cards/../../secret.txt", "link.j2"])
def test_a_template_named_by_a_file_stays_in_that_files_folder(
    run: Path, hub: RunningHub, api: HfApi, template: str
) -> None:
    (run.parent / "secret.txt").write_text("SECRET\n")
    (run / "link.j2").symlink_to(run.parent / "secret.txt")
    (run / "hubsync.toml").write_text(f"template = {json.dumps(template)}\n")
    result = push(hub, str(run), "--repo", "me/tiny")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "template must be a file in the folder of the file that names it" in result.stderr
    assert list(api.list_models(author="me")) == []


def test_a_template_that_never_ends_is_refused(run: Path, hub: RunningHub, api: HfApi) -> None:
    result = push(hub, str(run), "--repo", "me/tiny", "--template", "/dev/zero")
    assert result.exit_code == 1 and "it is a file of the system (/proc, /sys, /dev)" in result.stderr
    os.mkfifo(run.parent / "fifo.j2")  # would block the open itself
    result = push(hub, str(run), "--repo", "me/tiny", "--template", str(run.parent / "fifo.j2"))
    assert result.exit_code == 1 and "it is not a regular file" in result.stderr
    (run.parent / "big.j2").write_bytes(b"x" * (1024 * 1024 + 1))
    result = push(hub, str(run), "--repo", "me/tiny", "--template", str(run.parent / "big.j2"))
    assert result.exit_code == 1 and "it is larger than 1024 KiB" in result.stderr
    assert list(api.list_models(author="me")) == []


@pytest.mark.parametrize(
    ("file", "fragment"),
    [
        (
            'revision = "ckpt-{step}\\n"\n',
            'revision must not be empty or hold a control character, not "ckpt-{step}\\n"',
        ),
        ('languages = ["en\\n"]\n', "language must not be empty or hold a control character"),
        ('base-model = "org/model\\n"\n', "base-model must not be empty or hold a control character"),
        ('git-commit = "abcdef1\\n"\n', "git-commit must not be empty or hold a control character"),
        ('tags = ["v1\\u0085"]\n', "tag must not be empty or hold a control character"),
        ('training-state = "keep"\ntraining_state = "drop"\n', "training-state is set twice"),
    ],
)
def test_values_with_hidden_characters_or_set_twice_are_refused(
    run: Path, hub: RunningHub, api: HfApi, file: str, fragment: str
) -> None:
    (run / "hubsync.toml").write_text(file)
    result = push(hub, str(run), "--repo", "me/tiny")
    assert result.exit_code == 1, result.output
    assert fragment in result.stderr and result.stderr.count("\n") == 1
    assert list(api.list_models(author="me")) == []


def test_a_flag_does_not_hide_a_bad_value_in_the_file(run: Path, hub: RunningHub, api: HfApi) -> None:
    (run / "hubsync.toml").write_text('training-state = "Keep"\n')
    result = push(hub, str(run), "--repo", "me/tiny", "--training-state", "drop")
    assert result.exit_code == 1 and 'training-state must be drop or keep, not "Keep"' in result.stderr
    assert list(api.list_models(author="me")) == []


def test_a_tag_with_a_newline_is_misuse() -> None:
    result = CliRunner().invoke(cli, ["push", "x", "--repo", "me/m", "--tag", "v1\n"])
    assert result.exit_code == 2 and "Invalid value for '--tag'" in result.stderr


def test_several_checkpoints_to_one_branch_are_refused_before_anything(run: Path, hub: RunningHub, api: HfApi) -> None:
    result = push(hub, str(run), "--repo", "me/tiny", "--select", "all", "--revision", "fixed", "--tag", "t1")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "would both go to the branch fixed, each replacing the one before. Put {step} in --revision" in (
        result.stderr
    )
    assert list(api.list_models(author="me")) == []


def test_pickles_hubsync_does_not_convert_are_never_uploaded(run: Path, hub: RunningHub, api: HfApi) -> None:
    checkpoint = run / "checkpoint-30"
    names = (
        "optimizer.bin",
        "random_states_0.pkl",
        "extra/custom.pt",
        "weights.ckpt",
        "payload",
        "evil.pkl ",
        "e.joblib",
    )
    for name in names:
        (checkpoint / name).parent.mkdir(exist_ok=True)
        shutil.copy(checkpoint / "scheduler.pt", checkpoint / name)
    dry = push(hub, str(checkpoint), "--repo", "me/tiny", "--public", "--dry-run")
    assert dry.stdout.count("a pickle that hubsync does not convert: never uploaded") == len(names)
    (checkpoint / "protocol2.dat").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    names += ("protocol2.dat",)
    for state in ("drop", "keep"):
        result = push(hub, str(checkpoint), "--repo", "me/tiny", "--public", "--training-state", state,
                      "--allow-public-state")  # fmt: skip
        assert result.exit_code == 0, result.stderr
        files = {f.path for f in api.list_repo_tree("me/tiny", revision="checkpoint-30", recursive=True)}
        assert not {f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))}, files
        assert not files & {"payload", "evil.pkl ", "e.joblib", "protocol2.dat"}, files
        assert "adapter_model.safetensors" in files


def test_configuration_is_looked_up_within_the_project_only(run: Path, hub: RunningHub, api: HfApi) -> None:
    project = run.parent.parent  # project/out/tiny
    (project / ".git").mkdir()
    (project.parent / "pyproject.toml").write_text('[tool.hubsync]\nrevision = "evil-{step}"\ntags = ["pwned"]\n')
    assert push(hub, str(run), "--repo", "me/tiny").exit_code == 0
    assert {b.name for b in api.list_repo_refs("me/tiny").branches} == {"main", "checkpoint-30"}
    assert api.list_repo_refs("me/tiny").tags == []

    (run / "checkpoint-30" / "hubsync.toml").write_text('revision = "from-checkpoint-{step}"\n')
    for path in (run / "checkpoint-30" / "..", run / "checkpoint-30" / ".." / "checkpoint-30"):
        result = push(hub, str(path), "--repo", "me/tiny", "--dry-run", "--json")
        assert result.exit_code == 0, result.stderr
        assert {p["revision"] for p in json.loads(result.stdout)["plans"]} == {"checkpoint-30"}


def test_a_configuration_file_that_others_may_write_is_not_read(run: Path, hub: RunningHub, api: HfApi) -> None:
    config = run / "hubsync.toml"
    config.write_text('training-state = "keep"\n')
    config.chmod(0o664)  # group-writable, as umask 002 makes it: the user's own file, read
    assert push(hub, str(run), "--repo", "me/tiny", "--dry-run").exit_code == 0
    config.chmod(0o666)
    result = push(hub, str(run), "--repo", "me/tiny")
    assert result.exit_code == 1 and "anyone may write it, so it is not read" in result.stderr
    assert list(api.list_models(author="me")) == []


def test_a_configuration_nested_too_deeply_is_one_line(run: Path, hub: RunningHub) -> None:
    (run / "hubsync.toml").write_text("datasets = " + "[" * 100_000 + "]" * 100_000 + "\n")
    result = push(hub, str(run), "--repo", "me/tiny", "--dry-run")
    assert result.exit_code == 1 and "it is nested too deeply" in result.stderr and result.stderr.count("\n") == 1


def test_a_template_whose_front_matter_is_nested_too_deeply_is_one_line(run: Path, hub: RunningHub) -> None:
    template = run.parent / "deep.j2"
    template.write_text("---\nx: " + "[" * 20_000 + "]" * 20_000 + "\n---\n# card\n")
    for command in (["push", str(run), "--repo", "me/tiny", "--dry-run"], ["card", str(run / "checkpoint-30")]):
        result = CliRunner().invoke(cli, [*command, "--template", str(template)], env={"HF_ENDPOINT": hub.endpoint})
        assert result.exit_code == 1 and "its front matter is nested too deeply" in result.stderr, result.output


def test_checkpoint_folders_and_selections_count_in_ascii_digits_only(run: Path, hub: RunningHub) -> None:
    shutil.copytree(run / "checkpoint-20", run / "checkpoint-\u0663\u0660")  # Arabic-Indic 30
    shutil.copytree(run / "checkpoint-10", run / "checkpoint-\U0001d7d2\U0001d7ce")  # mathematical bold 40
    result = push(hub, str(run), "--repo", "me/tiny", "--select", "all", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    assert [p["checkpoint"].rsplit("/", 1)[-1] for p in json.loads(result.stdout)["plans"]] == [
        "checkpoint-10",
        "checkpoint-20",
        "checkpoint-30",
    ]
    for select in ("\u0663\u0660", "last:\u0663"):
        assert push(hub, str(run), "--repo", "me/tiny", "--select", select, "--dry-run").exit_code == 2


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:99999", "http://[::1", "http://127.0.0.1:1;x", "http://h:1#", "ftp://h"]
)
def test_a_bad_hf_endpoint_is_one_line_before_huggingface_hub_reads_it(url: str) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_ENDPOINT": url}
    done = subprocess.run(
        [sys.executable, "-m", "hubsync", "ls", "me/x"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("Error: bad configuration in HF_ENDPOINT: ") and done.stderr.count("\n") == 1


def test_a_checkpoint_named_with_a_line_break_is_refused(run: Path, hub: RunningHub, api: HfApi) -> None:
    forged = Path(shutil.copytree(run / "checkpoint-30", run.parent / "checkpoint-30\nPushed fake"))
    result = push(hub, str(forged), "--repo", "me/tiny")
    assert result.exit_code == 1 and "its name holds a control character or a line break" in result.stderr
    assert result.stderr.count("\n") == 1 and list(api.list_models(author="me")) == []


@st.composite
def misspelt_variable(draw: st.DrawFn) -> str:
    """A setting's variable with one letter dropped, doubled, changed or two swapped after HUBSYNC_."""
    from hubsync.core.config import OTHER_VARIABLES, PUSH_SETTINGS

    known = {s.variable for s in PUSH_SETTINGS} | OTHER_VARIABLES
    name = draw(st.sampled_from(sorted(s.variable for s in PUSH_SETTINGS)))
    rest = name.removeprefix("HUBSYNC_")
    i = draw(st.integers(0, len(rest) - 1))
    edit = draw(st.sampled_from(["drop", "double", "change", "swap"]))
    if edit == "drop":
        rest = rest[:i] + rest[i + 1 :]
    elif edit == "double":
        rest = rest[:i] + rest[i] + rest[i:]
    elif edit == "change":
        rest = rest[:i] + draw(st.sampled_from("AEIOUSXZ_")) + rest[i + 1 :]
    elif i + 1 < len(rest):
        rest = rest[:i] + rest[i + 1] + rest[i] + rest[i + 2 :]
    typo = "HUBSYNC_" + rest
    assume(typo not in known and len(rest) > 2)
    return typo


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(typo=misspelt_variable())
def test_a_misspelt_variable_is_refused_before_anything_happens(typo: str, run: Path, hub: RunningHub) -> None:
    result = push(hub, str(run), "--repo", "me/typo", "--dry-run", env={typo: "keep"})
    assert result.exit_code == 1, (typo, result.output)
    assert result.stderr.startswith(f"Error: {typo} is not a variable hubsync reads; did you mean HUBSYNC_")
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_a_variable_of_the_users_own_is_left_alone(run: Path, hub: RunningHub) -> None:
    for name in ("HUBSYNC_MY_EXPERIMENT", "HUBSYNC_DEBUG", "HUBSYNC_RUNS_DIR"):
        assert push(hub, str(run), "--repo", "me/mine", "--dry-run", env={name: "x"}).exit_code == 0, name
