"""The library face: `import hubsync`. The README's Python examples run as written against the local Hub, and the
functions raise, print nothing, and resolve their options as the commands do."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hubsync
from hubsync.localhub import RunningHub

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def python_blocks() -> list[str]:
    section = README.split("## From Python: `import hubsync`")[1].split("\n## ")[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def run_python(code: str, folder: Path, hub: RunningHub) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token, "HF_HOME": str(folder / "hf")}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_readme_examples_run_and_their_outcome_shows_through_the_hubs_own_client(
    tiny_run: Path, tmp_path: Path, hub: RunningHub, api: HfApi
) -> None:
    examples, resume = python_blocks()
    shutil.copytree(tiny_run, tmp_path / "out" / "my-run")
    done = run_python(examples.replace("checkpoint-1000", "checkpoint-30"), tmp_path, hub)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    branches = {b.name: b.target_commit for b in api.list_repo_refs("me/my-model").branches}
    # push: every checkpoint, with its training state; the newest's commit printed is the Hub's
    assert lines[0] == f"checkpoint-30 {branches['checkpoint-30']}"
    assert "optimizer.safetensors" in api.list_repo_files("me/my-model", revision="checkpoint-30")
    # plan_push: the checkpoint's uploads, training state dropped (the default), nothing new on the Hub
    assert lines[1].startswith("checkpoint-30 [") and "'adapter_model.safetensors'" in lines[1]
    assert "'optimizer.pt'" in lines[1].split("]")[1]
    # list_revisions, then prune to the newest
    assert [line.split()[0] for line in lines[2:5]] == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]
    assert lines[5].startswith("deleted: ")
    assert set(ast.literal_eval(lines[5].removeprefix("deleted: "))) == {"checkpoint-10", "checkpoint-20"}
    assert set(branches) == {"main", "checkpoint-30"}  # as the Hub lists them after the prune
    assert lines[6].startswith("cannot pull: ") and "me/no-such-model" in lines[6]
    assert done.stderr == ""  # the library printed nothing of its own, and no progress bar

    # trainer.train(resume_from_checkpoint=hubsync.pull(...)): the real Trainer resumes from the pulled folder
    shutil.rmtree(tmp_path / "out" / "my-run")
    trainer = (
        "import hubsync\n"
        "from hubsync.tinyrun import train_tiny_lora\n"
        "class Trainer:  # the README's `trainer`: the tiny run's real Trainer, trained on to step 40\n"
        "    def train(self, resume_from_checkpoint):\n"
        "        train_tiny_lora('resumed', max_steps=40, resume_from_checkpoint=str(resume_from_checkpoint))\n"
        "trainer = Trainer()\n"
    )
    done = run_python(trainer + resume, tmp_path, hub)
    assert done.returncode == 0, done.stderr
    pulled = tmp_path / "out" / "my-model" / "checkpoint-30"
    assert (pulled / "optimizer.pt").is_file()  # rebuilt from its pickle-free form
    state = json.loads((tmp_path / "resumed" / "checkpoint-40" / "trainer_state.json").read_text())
    assert state["global_step"] == 40
    assert not (tmp_path / "resumed" / "checkpoint-10").exists()  # it resumed at 30, not from scratch


def test_import_hubsync_is_light_and_names_its_api() -> None:
    code = (
        "import sys, hubsync\n"
        "names = ('torch', 'transformers', 'peft', 'huggingface_hub', 'jinja2')\n"
        "heavy = sorted(m for m in names if m in sys.modules)\n"
        "print(heavy, callable(hubsync.push), hubsync.errors.HubsyncError.__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("]")[0] == "["
    assert done.stdout.strip().endswith("True HubsyncError")
    assert (ROOT / "hubsync" / "py.typed").is_file()
    for name in hubsync.__all__:
        assert getattr(hubsync, name) is not None, name
    with pytest.raises(AttributeError):
        hubsync.no_such_function  # noqa: B018


def test_no_public_name_is_shadowed_by_a_subpackage() -> None:
    """`hubsync.X` must stay the API's X after any hubsync module is imported (a function named like a subpackage
    turns into that subpackage once something imports it)."""
    import pkgutil

    subpackages = {m.name for m in pkgutil.iter_modules(hubsync.__path__)}
    assert not subpackages & set(hubsync.__all__)
    code = "import hubsync.convert, hubsync.api, hubsync; print(callable(hubsync.convert_checkpoint))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"


def test_hubsync_errors_names_every_error() -> None:
    import inspect

    import hubsync.errors
    from hubsync.core import errors

    defined = {n for n, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.HubsyncError)}
    assert defined == set(hubsync.errors.__all__)


def test_a_refusal_raises_and_prints_nothing(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(hubsync.errors.MissingRepoError):
        hubsync.plan_push(checkpoint)
    with pytest.raises(hubsync.errors.SettingError) as bad:
        hubsync.plan_push(checkpoint, "me/model", training_state="kept")
    assert bad.value.source == "training_state="
    with pytest.raises(hubsync.errors.SettingError) as bad:
        hubsync.plan_push(checkpoint, "not a repo")
    assert bad.value.source == "repo_id="
    with pytest.raises(TypeError, match="trainig_state"):
        hubsync.plan_push(checkpoint, "me/model", trainig_state="keep")
    with pytest.raises(hubsync.errors.SelectionError):
        hubsync.plan_push(checkpoint, "me/model", select="all")  # a checkpoint folder, not a run
    assert capsys.readouterr() == ("", "")


def test_plan_push_of_a_run_folder_selects_as_the_command_does(run: Path) -> None:
    job = hubsync.plan_push(run, "me/model", select="last:2", tags=["v1"])
    assert [p.revision for p in job.plans] == ["checkpoint-20", "checkpoint-30"]
    assert [p.tags for p in job.plans] == [(), ("v1",)]  # the newest checkpoint's commit only
    assert hubsync.plan_push(run, "me/model").plans[-1].revision == "checkpoint-30"  # latest by default


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    argument=st.sampled_from([None, "drop", "keep"]),
    variable=st.sampled_from([None, "drop", "keep"]),
    in_file=st.sampled_from([None, "drop", "keep"]),
)
def test_a_keyword_beats_its_variable_which_beats_the_file(
    run: Path, monkeypatch: pytest.MonkeyPatch, argument: str | None, variable: str | None, in_file: str | None
) -> None:
    config = run / "hubsync.toml"
    config.write_text(f'training-state = "{in_file}"\n' if in_file else "")
    if variable is None:
        monkeypatch.delenv("HUBSYNC_TRAINING_STATE", raising=False)
    else:
        monkeypatch.setenv("HUBSYNC_TRAINING_STATE", variable)
    plan = hubsync.plan_push(run / "checkpoint-30", "me/model", training_state=argument).plans[0]
    expected = argument or variable or in_file or "drop"
    assert plan.training_state == expected
    assert ("optimizer.pt" in plan.dropped) == (expected == "drop")


# --- what moved out of the command line, tested without a Hub -------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=12), st.one_of(st.none(), st.integers(0, 10**6))), max_size=8))
def test_pull_without_a_revision_takes_the_last_numbered_one(revisions: list[tuple[str, int | None]]) -> None:
    from hubsync.core.pull import newest_revision

    numbered = [name for name, step in revisions if step is not None]
    if not numbered:
        with pytest.raises(hubsync.errors.NoCheckpointRevisionError):
            newest_revision("me/model", revisions)
    else:
        assert newest_revision("me/model", revisions) == numbered[-1]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(select=st.sampled_from(["latest", "all", "best", "last:1", "last:2", "last:9", "10", "20,30", "40", "10,40"]))
def test_run_folder_selection_picks_from_the_folder(run: Path, select: str) -> None:
    from hubsync.core.runs import choose_targets, project_folder

    assert project_folder(run) == run and project_folder(run / "checkpoint-10") == run
    expected = {
        "latest": [30],
        "all": [10, 20, 30],
        "last:1": [30],
        "last:2": [20, 30],
        "last:9": [10, 20, 30],
        "10": [10],
        "20,30": [20, 30],
    }
    if select in expected:
        chosen = choose_targets(run, select, select_given=True).folders
        assert [int(p.name.split("-")[1]) for p in chosen] == expected[select]
    else:  # no best checkpoint is recorded in the tiny run; no checkpoint-40
        with pytest.raises(hubsync.errors.SelectionError):
            choose_targets(run, select, select_given=True)
    # a selection that came from a variable or a file is for runs: a checkpoint folder is pushed as it is
    assert choose_targets(run / "checkpoint-20", select, select_given=False).folders == (run / "checkpoint-20",)


def test_write_card_writes_whole_files_and_never_into_the_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()}
    written = hubsync.write_card(checkpoint, tmp_path / "card" / "README.md", "me/model", license="mit")
    assert written[0] == tmp_path / "card" / "README.md"
    text = written[0].read_text()
    assert text.startswith("---\n") and "license: mit" in text and "me/model" in text
    assert all(p.parent == tmp_path / "card" for p in written)
    with pytest.raises(hubsync.errors.OutputInsideCheckpointError):
        hubsync.write_card(checkpoint, checkpoint / "README.md")
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()} == before


@settings(max_examples=60, deadline=None)
@given(
    keep=st.one_of(
        st.none(), st.booleans(), st.integers(max_value=-1), st.floats(), st.text(max_size=5), st.lists(st.integers())
    ),
    keep_best=st.one_of(st.booleans(), st.integers(), st.text(max_size=3)),
)
def test_prune_refuses_a_bad_keep_before_it_asks_the_hub(keep: object, keep_best: object) -> None:
    """A value that is not a whole number of 0 or more is a SettingError naming keep=, raised before any Hub call
    (the endpoint here answers nothing: reaching it would be a HubUnreachableError)."""
    with pytest.raises(hubsync.errors.SettingError) as refused:
        hubsync.prune("me/model", keep, keep_best=keep_best, endpoint="http://127.0.0.1:9", token="hf_x")  # type: ignore[arg-type]
    assert str(refused.value).startswith(("keep=", "keep_best="))
    assert "\n" not in str(refused.value)


NOT_BOOL = st.one_of(st.none(), st.integers(), st.text(max_size=6), st.floats(allow_nan=False))
NOWHERE = {"endpoint": "http://127.0.0.1:9", "token": "hf_x"}  # reaching it would be a HubUnreachableError


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=NOT_BOOL)
def test_a_flag_that_is_not_a_bool_is_refused_before_anything_happens(
    value: object, checkpoint: Path, tmp_path: Path
) -> None:
    """force="false" must not force: every flag of the API takes True or False only, checked before the Hub is
    asked or a file is touched."""
    mine = tmp_path / "pulls" / "checkpoint-10" / "mine.txt"
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.write_text("keep me")
    calls = [
        lambda: hubsync.pull("me/model", "checkpoint-10", tmp_path / "pulls", force=value, **NOWHERE),
        lambda: hubsync.pull_checkpoint("me/model", to=tmp_path / "pulls", progress_bars=value, **NOWHERE),
        lambda: hubsync.prune("me/model", keep=1, dry_run=value, **NOWHERE),
        lambda: hubsync.prune("me/model", keep=1, keep_tagged=value, **NOWHERE),
        lambda: hubsync.convert_checkpoint(checkpoint, tmp_path / "converted", force=value),
        lambda: hubsync.push(checkpoint, "me/model", progress_bars=value, **NOWHERE),
    ]
    for call in calls:
        with pytest.raises(hubsync.errors.SettingError, match=r"^\w+= must be True or False"):
            call()  # type: ignore[no-untyped-call]
    assert mine.read_text() == "keep me" and not (tmp_path / "converted").exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(["interval", "idle_timeout", "retry_max"]),
    value=st.one_of(st.integers(max_value=0), st.floats(max_value=0), st.just(float("nan")), st.text(max_size=3)),
)
def test_a_watch_with_bad_timing_is_refused_when_made_not_hours_later(name: str, value: object, run: Path) -> None:
    with pytest.raises(hubsync.errors.SettingError, match=f"^{name}= must be a number of seconds above 0"):
        hubsync.watcher(run, "me/model", **{name: value}, **NOWHERE)  # type: ignore[arg-type]


def test_a_push_of_a_job_takes_no_other_repository_and_no_options(checkpoint: Path) -> None:
    job = hubsync.plan_push(checkpoint, "me/model")
    with pytest.raises(hubsync.errors.SettingError, match=r"^repo_id= must be the PushJob's repository"):
        hubsync.push(job, "me/other", **NOWHERE)
    with pytest.raises(TypeError, match="bogus"):
        hubsync.push(job, bogus=1, **NOWHERE)


def test_a_pull_into_a_checkpoint_folder_is_refused(run: Path) -> None:
    """It would change the user's checkpoint, and the next push of it would publish the pulled one inside."""
    for into in (run / "checkpoint-20", run / "checkpoint-20" / "sub"):
        with pytest.raises(hubsync.errors.OutputInsideCheckpointError):
            hubsync.pull("me/model", "checkpoint-10", into, **NOWHERE)
    assert not (run / "checkpoint-20" / "checkpoint-10").exists() and not (run / "checkpoint-20" / "sub").exists()


def test_a_token_given_in_the_wrong_argument_is_not_quoted_by_the_refusal(checkpoint: Path) -> None:
    token = "hf_" + "Secr3tTokenValue" * 3
    refusals = [
        lambda: hubsync.pull(token, token=token),
        lambda: hubsync.list_revisions(token, token=token),
        lambda: hubsync.plan_push(checkpoint, "me/model", revision=token + "!", token=token),
        lambda: hubsync.plan_push(checkpoint, "me/model", tags=[token + " x"]),
        lambda: hubsync.prune("me/model", keep=token, token=token),  # type: ignore[arg-type]
    ]
    for refusal in refusals:
        with pytest.raises(hubsync.errors.HubsyncError) as refused:
            refusal()  # type: ignore[no-untyped-call]
        assert token not in str(refused.value) and "<redacted>" in str(refused.value)


def test_a_branch_named_like_a_tag_is_refused_before_the_hub_changes(
    run: Path, hub: RunningHub, api: HfApi, capfd: pytest.CaptureFixture[str]
) -> None:
    """Pulling the name would get the branch, not the tagged release."""
    env = {"endpoint": hub.endpoint, "token": hub.token}
    hubsync.push(run / "checkpoint-10", "me/model", tags=["v1"], **env)
    hubsync.push(run / "checkpoint-10", "me/model", **env)  # unchanged: no commit, and no notice printed
    refs = api.list_repo_refs("me/model")
    with pytest.raises(hubsync.errors.BranchNamedLikeTagError, match="v1"):
        hubsync.push(run / "checkpoint-20", "me/model", revision="v1", **env)
    assert api.list_repo_refs("me/model") == refs
    assert capfd.readouterr() == ("", "")


def test_a_path_the_system_refuses_is_a_local_file_error_showing_the_path_as_given(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pulls").write_text("a file, not a folder")
    with pytest.raises(hubsync.errors.LocalFileError) as refused:
        hubsync.write_card(run / "checkpoint-10", "x" * 5000 + ".md")
    assert str(tmp_path) not in str(refused.value) and len(str(refused.value)) < 300
    with pytest.raises(hubsync.errors.SettingError, match="NUL"):
        hubsync.pull("me/model", to="pulls\0x", **NOWHERE)
    with pytest.raises(hubsync.errors.TemplateError, match="file of the system"):
        hubsync.render_card(run / "checkpoint-10", template="/proc/self/environ")
