"""The GitHub Action and the workflows: schema-valid, zizmor-clean, no expression inside a script, and the action's
entry step run as GitHub runs it (inputs from publish-run.yml, GITHUB_* set) against the local Hub."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub import HfApi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsync import action
from hubsync.localhub import RunningHub

ROOT = Path(__file__).resolve().parent.parent
ACTION = ROOT / "action.yml"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
BIN = Path(sys.executable).parent
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
GIT_SHA = "0123456789abcdef0123456789abcdef01234567"


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert found, f"{name} is not installed: run `make setup`"
    return found


# --- static checks ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [ACTION, *WORKFLOWS], ids=lambda p: p.name)
def test_validates_against_githubs_schema(path: Path) -> None:
    schema = "vendor.github-actions" if path == ACTION else "vendor.github-workflows"
    done = subprocess.run([tool("check-jsonschema"), "--builtin-schema", schema, str(path)], capture_output=True)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_schema_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    steps:\n      - run: true\n")  # no runs-on
    done = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(bad)], capture_output=True
    )
    assert done.returncode != 0


def test_zizmor_finds_nothing() -> None:
    done = subprocess.run(
        [tool("zizmor"), "--offline", "--no-progress", "--persona", "pedantic", str(ACTION), *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_zizmor_can_fail(tmp_path: Path) -> None:
    """The same command flags a workflow that interpolates an attacker's text into a script."""
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "bad.yml").write_text(
        "on: pull_request_target\npermissions: {}\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
        '      - run: echo "${{ github.event.pull_request.title }}"\n'
    )
    done = subprocess.run(
        [tool("zizmor"), "--offline", "--no-progress", str(workflows / "bad.yml")], capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "template-injection" in done.stdout


def scripts(data: Any) -> list[str]:
    """Every `run:` script in a workflow or action."""
    if isinstance(data, dict):
        found = [data["run"]] if isinstance(data.get("run"), str) else []
        return found + [s for value in data.values() for s in scripts(value)]
    if isinstance(data, list):
        return [s for item in data for s in scripts(item)]
    return []


def uses(data: Any) -> list[str]:
    if isinstance(data, dict):
        found = [data["uses"]] if isinstance(data.get("uses"), str) else []
        return found + [u for value in data.values() for u in uses(value)]
    if isinstance(data, list):
        return [u for item in data for u in uses(item)]
    return []


@pytest.mark.parametrize("path", [ACTION, *WORKFLOWS], ids=lambda p: p.name)
def test_conventions(path: Path) -> None:
    data = load(path)
    runs = scripts(data)
    assert path == ACTION or runs or uses(data)
    for script in runs:
        assert "${{" not in script, f"an expression inside a script of {path.name}: pass it through env:"
    for ref in uses(data):
        assert ref.startswith("./") or re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), f"{ref} is not pinned"
    if path != ACTION:
        assert "permissions" in data, f"{path.name} sets no top-level permissions"
        assert data["permissions"] in ({}, {"contents": "read"})


def test_ci_runs_make_test() -> None:
    ci = load(ROOT / ".github" / "workflows" / "ci.yml")
    assert set(ci[True]) == {"push", "pull_request"}  # YAML 1.1 reads the key `on` as True
    assert [s.strip() for s in scripts(ci)] == ["make test"]


# --- the entry step, as GitHub runs it -------------------------------------------------------------------------------


def evaluate(text: str, context: Mapping[str, Any]) -> str:
    """GitHub's `${{ a.b.c }}` substitution, for the property lookups these files use (anything else fails)."""

    def lookup(match: re.Match[str]) -> str:
        value: Any = context
        for part in match.group(1).split("."):
            assert re.fullmatch(r"[\w-]+", part), f"unsupported expression: {match.group(0)}"
            value = value.get(part, "") if isinstance(value, Mapping) else ""
        return str(value)

    return EXPRESSION.sub(lookup, text)


def action_inputs(with_: Mapping[str, str], context: Mapping[str, Any]) -> dict[str, str]:
    declared = load(ACTION)["inputs"]
    unknown = set(with_) - set(declared)
    assert not unknown, f"publish-run.yml passes inputs the action does not declare: {unknown}"
    values = {name: str(spec.get("default", "")) for name, spec in declared.items()}
    values.update({name: evaluate(str(value), context) for name, value in with_.items()})
    for name, spec in declared.items():
        assert values[name] or not spec.get("required"), f"required input {name} is empty"
    return values


def run_entry_step(inputs: Mapping[str, str], github: Mapping[str, str], tmp_path: Path) -> tuple[int, str, str]:
    """Run action.yml's push step: its env evaluated, its script in bash, GITHUB_* as the runner sets them."""
    step = next(s for s in load(ACTION)["runs"]["steps"] if s.get("id") == "push")
    context = {"inputs": inputs, "steps": {"install": {"outputs": {"python": sys.executable}}}}
    env = {name: evaluate(str(value), context) for name, value in step["env"].items()}
    env |= {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), **github}
    done = subprocess.run(
        [step["shell"], "-c", step["run"]], env=env, cwd=github["GITHUB_WORKSPACE"], capture_output=True, text=True
    )
    return done.returncode, done.stdout, done.stderr


def read_outputs(path: Path) -> dict[str, str]:
    """$GITHUB_OUTPUT as the runner parses it: `name=value` lines and `name<<DELIM` blocks."""
    lines, out = path.read_text().splitlines(), {}
    while lines:
        line = lines.pop(0)
        if "<<" in line:
            name, delimiter = line.split("<<", 1)
            end = lines.index(delimiter)
            out[name], lines = "\n".join(lines[:end]), lines[end + 1 :]
        else:
            name, value = line.split("=", 1)
            out[name] = value
    return out


@pytest.fixture
def github_env(tmp_path: Path, tiny_run: Path, hub: RunningHub) -> dict[str, str]:
    workspace = tmp_path / "workspace"
    shutil.copytree(tiny_run, workspace / "runs" / "run-7", ignore=shutil.ignore_patterns("runs", "*.lock"))
    (tmp_path / "home").mkdir()
    return {
        "GITHUB_ACTIONS": "true",
        "GITHUB_WORKSPACE": str(workspace),
        "GITHUB_REF": "refs/tags/run-7",
        "GITHUB_REF_NAME": "run-7",
        "GITHUB_REF_TYPE": "tag",
        "GITHUB_SHA": GIT_SHA,
        "GITHUB_REPOSITORY": "me/training",
        "GITHUB_SERVER_URL": "https://github.example",
        "GITHUB_RUN_ID": "42",
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        "GITHUB_OUTPUT": str(tmp_path / "output"),
        "RUNNER_TEMP": str(tmp_path / "runner-temp"),
    }


def publish_run_inputs(github: Mapping[str, str], hub: RunningHub, **vars_: str) -> dict[str, str]:
    workflow = load(ROOT / ".github" / "workflows" / "publish-run.yml")
    step = next(s for s in workflow["jobs"]["publish"]["steps"] if s.get("id") == "push")
    context = {
        "github": {"ref_name": github["GITHUB_REF_NAME"], "sha": github["GITHUB_SHA"]},
        "vars": {"HUBSYNC_RUNS_DIR": "runs", "HUBSYNC_REPO": f"{hub.user}/tiny-model", **vars_},
        "secrets": {"HF_TOKEN": hub.token},
    }
    return action_inputs(step["with"], context) | {"endpoint": hub.endpoint}


def test_publish_run_pushes_the_tagged_run(github_env: dict[str, str], hub: RunningHub, tmp_path: Path) -> None:
    inputs = publish_run_inputs(github_env, hub)
    code, stdout, stderr = run_entry_step(inputs, github_env, tmp_path)
    assert code == 0, stderr

    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    repo = f"{hub.user}/tiny-model"
    refs = api.list_repo_refs(repo)
    assert {b.name for b in refs.branches} == {"main", "checkpoint-10", "checkpoint-20", "checkpoint-30"}
    newest = next(b for b in refs.branches if b.name == "checkpoint-30")
    assert [(t.name, t.target_commit) for t in refs.tags] == [("run-7", newest.target_commit)]
    commit = api.list_repo_commits(repo, revision="checkpoint-30")[0]
    assert GIT_SHA in (commit.title + "\n" + (commit.message or ""))
    files = set(api.list_repo_files(repo, revision="checkpoint-30"))
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= files
    assert "optimizer.pt" not in files  # training-state defaults to drop

    outputs = read_outputs(Path(github_env["GITHUB_OUTPUT"]))
    assert outputs["revision"] == "checkpoint-30"
    assert outputs["commit"] == newest.target_commit
    assert outputs["url"].startswith(hub.endpoint) and outputs["url"].endswith("/tree/checkpoint-30")
    assert json.loads(outputs["revisions"]) == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]

    summary = Path(github_env["GITHUB_STEP_SUMMARY"]).read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| `")]
    assert len(rows) == 3
    for row, branch in zip(rows, ["checkpoint-10", "checkpoint-20", "checkpoint-30"], strict=True):
        head = next(b.target_commit for b in refs.branches if b.name == branch)
        assert f"[{branch}](" in row and f"[`{head[:10]}`]" in row
    assert "run-7 |" in rows[-1]
    header = summary.splitlines()[2]
    assert "| eval_loss |" in header and "| train_loss |" in header and "| loss |" not in header  # one name each
    assert GIT_SHA in summary and "https://github.example/me/training/actions/runs/42" in summary
    for text in (stdout, stderr, summary, Path(github_env["GITHUB_OUTPUT"]).read_text()):
        assert hub.token not in text and str(tmp_path) not in text


def test_a_rerun_changes_nothing_and_says_so(github_env: dict[str, str], hub: RunningHub, tmp_path: Path) -> None:
    inputs = publish_run_inputs(github_env, hub)
    assert run_entry_step(inputs, github_env, tmp_path)[0] == 0
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    before = {b.name: b.target_commit for b in api.list_repo_refs(f"{hub.user}/tiny-model").branches}
    code, _, stderr = run_entry_step(inputs, github_env, tmp_path)
    assert code == 0, stderr
    assert {b.name: b.target_commit for b in api.list_repo_refs(f"{hub.user}/tiny-model").branches} == before
    assert Path(github_env["GITHUB_STEP_SUMMARY"]).read_text().count("(unchanged)") == 3


def test_a_missing_run_fails_the_step_with_one_line(
    github_env: dict[str, str], hub: RunningHub, tmp_path: Path
) -> None:
    inputs = publish_run_inputs(github_env, hub, HUBSYNC_RUNS_DIR="elsewhere")
    code, stdout, stderr = run_entry_step(inputs, github_env, tmp_path)
    assert code == 1 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("Error:") and "elsewhere/run-7" in stderr
    assert not Path(github_env["GITHUB_OUTPUT"]).exists()


def test_a_wrong_token_fails_without_showing_it(github_env: dict[str, str], hub: RunningHub, tmp_path: Path) -> None:
    inputs = publish_run_inputs(github_env, hub) | {"token": "hf_wrongTOKENcanary0123456789"}
    code, stdout, stderr = run_entry_step(inputs, github_env, tmp_path)
    assert code == 1
    assert "hf_wrongTOKENcanary0123456789" not in stdout + stderr
    assert "token" in stderr.lower()


# --- the pure parts --------------------------------------------------------------------------------------------------


def test_inputs_become_the_push_options() -> None:
    inputs = action.read_inputs(
        {
            "INPUT_PATH": "runs/run-7",
            "INPUT_REPO": "me/model",
            "INPUT_TAGS": "run-7, best\nv1",
            "INPUT_PRIVATE": "false",
            "INPUT_TRAINING_STATE": "keep",
            "INPUT_RELEASE": "true",
            "INPUT_ALLOW_PUBLIC_STATE": "true",
            "GITHUB_SHA": GIT_SHA,
        }
    )
    assert (inputs.path, inputs.repo) == ("runs/run-7", "me/model")
    assert action.push_arguments(inputs) == {
        "private": False,
        "training_state": "keep",
        "git_commit": GIT_SHA,
        "tags": ["run-7", "best", "v1"],
        "release": True,
        "allow_public_state": True,
    }
    assert action.push_arguments(action.read_inputs({"INPUT_PATH": "r", "INPUT_REPO": "me/m"})) == {"private": True}


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"INPUT_REPO": "me/model"}, "'path' is required"),
        ({"INPUT_PATH": "x", "INPUT_REPO": "me/model", "INPUT_PRIVATE": "maybe"}, "'private' is 'maybe'"),
        ({"INPUT_PATH": "x", "INPUT_REPO": "me/model", "INPUT_TRAINING_STATE": "all"}, "'training-state' is 'all'"),
    ],
)
def test_bad_inputs_are_named(environ: dict[str, str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert action.main(environ=environ) == 1
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1


def test_trusted_publishing_when_no_token_is_given() -> None:
    inputs = action.read_inputs({"INPUT_PATH": "x", "INPUT_REPO": "me/model"})
    github = {"HF_TOKEN": "", "ACTIONS_ID_TOKEN_REQUEST_URL": "https://token.example"}
    assert action.push_environment(inputs, github)["HF_OIDC_RESOURCE"] == "me/model"
    assert "HF_TOKEN" not in action.push_environment(inputs, github)
    with_token = action.push_environment(inputs, {**github, "HF_TOKEN": "hf_x"})
    assert "HF_OIDC_RESOURCE" not in with_token and with_token["HF_TOKEN"] == "hf_x"
    assert "HF_OIDC_RESOURCE" not in action.push_environment(inputs, {"HF_TOKEN": ""})  # no id-token permission


def test_public_state_is_not_allowed_unless_asked() -> None:
    inputs = action.read_inputs(
        {"INPUT_PATH": "r", "INPUT_REPO": "me/m", "INPUT_PRIVATE": "false", "INPUT_TRAINING_STATE": "keep"}
    )
    assert "allow_public_state" not in action.push_arguments(inputs)


def test_no_token_and_no_trusted_publishing_is_one_line_about_the_action(
    github_env: dict[str, str], hub: RunningHub, tmp_path: Path
) -> None:
    inputs = publish_run_inputs(github_env, hub) | {"token": ""}
    code, stdout, stderr = run_entry_step(inputs, github_env, tmp_path)
    assert code == 1 and stdout == ""
    assert stderr.startswith("Error: no token for the Hub: the `token` input is empty") and stderr.count("\n") == 1
    assert "id-token: write" in stderr


def test_outputs_cannot_be_broken_out_of() -> None:
    text = action.output_lines({"revision": "a", "url": "b"}, "EOF1")
    assert text == "revision<<EOF1\na\nEOF1\nurl<<EOF1\nb\nEOF1\n"
    with pytest.raises(action.ActionInputError):
        action.output_lines({"revision": "x\nEOF1\nother=1"}, "EOF1")


def test_summary_cells_are_escaped() -> None:
    plan = {"checkpoint": "runs/a|b/checkpoint-1", "revision": "checkpoint-1", "step": 1, "files": [], "metrics": {}}
    text = action.summary({"plans": [plan], "results": []})
    row = next(line for line in text.splitlines() if line.startswith("| `"))
    assert "a\\|b" in row and "(not pushed)" in row
    assert row.count(" | ") == text.splitlines()[2].count(" | ")


@pytest.mark.parametrize(
    ("github_env", "reason"),
    [
        ({}, "no OIDC id token is available"),
        ({"GITHUB_ACTIONS": "true"}, "Cannot request an OIDC id token from GitHub Actions"),
    ],
)
def test_trusted_publishing_failure_is_one_clear_line(
    checkpoint: Path, hub: RunningHub, monkeypatch: pytest.MonkeyPatch, github_env: dict[str, str], reason: str
) -> None:
    from click.testing import CliRunner

    from hubsync.cli import cli

    monkeypatch.setenv("HF_OIDC_RESOURCE", f"{hub.user}/model")
    for name, value in github_env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(
        cli, ["push", str(checkpoint), "--repo", f"{hub.user}/model", "--endpoint", hub.endpoint]
    )
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: Trusted Publishing (HF_OIDC_RESOURCE)") and reason in result.stderr
    assert "id-token: write" in result.stderr and result.stderr.count("\n") == 1


def test_readme_examples_use_the_actions_inputs() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", readme, re.S)]
    steps = [s for b in blocks for s in (b.get("steps", []) if isinstance(b, dict) else b)]
    ours = [s for s in steps if s.get("uses", "").startswith("<owner>/hubsync@")]
    assert ours, "the README shows no use of the action"
    declared = set(load(ACTION)["inputs"])
    for step in ours:
        assert set(step["with"]) <= declared
        assert {name for name, spec in load(ACTION)["inputs"].items() if spec.get("required")} <= set(step["with"])
    for step in steps:
        ref = step.get("uses", "")
        assert ref.startswith("<owner>/") or re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref)


# --- Trusted Publishing, end to end ----------------------------------------------------------------------------------


@pytest.fixture
def github_oidc(hub: RunningHub) -> Iterator[dict[str, str]]:
    """GitHub's id-token endpoint as a job with `id-token: write` sees it: it mints a token for the audience asked."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from urllib.parse import parse_qs, urlparse

    request_token = "ghs_requestTOKENcanary"
    minted: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            audience = parse_qs(urlparse(self.path).query).get("audience", [""])[0]
            ok = self.headers.get("Authorization") == f"Bearer {request_token}" and audience == hub.endpoint
            body = json.dumps({"value": f"id-token-for-{audience}"} if ok else {"message": "denied"}).encode()
            minted.append(audience)
            self.send_response(200 if ok else 403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield {
            "ACTIONS_ID_TOKEN_REQUEST_URL": f"http://127.0.0.1:{server.server_address[1]}/token?api-version=2.0",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": request_token,
            "id_token": f"id-token-for-{hub.endpoint}",
        }
    finally:
        server.shutdown()
        server.server_close()
    assert minted, "no id token was requested"


def test_trusted_publishing_pushes_without_a_token(
    github_env: dict[str, str], github_oidc: dict[str, str], hub: RunningHub, tmp_path: Path
) -> None:
    repo = f"{hub.user}/tiny-model"
    hub.server.trust_publisher(github_oidc.pop("id_token"), repo)
    inputs = publish_run_inputs(github_env, hub) | {"token": ""}
    code, stdout, stderr = run_entry_step(inputs, github_env | github_oidc, tmp_path)
    assert code == 0, stderr
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    assert "checkpoint-30" in {b.name for b in api.list_repo_refs(repo).branches}
    assert read_outputs(Path(github_env["GITHUB_OUTPUT"]))["revision"] == "checkpoint-30"
    assert "ghs_requestTOKENcanary" not in stdout + stderr and "hf_oidc_" not in stdout + stderr


def test_trusted_publishing_refused_is_one_clear_line(
    github_env: dict[str, str], github_oidc: dict[str, str], hub: RunningHub, tmp_path: Path
) -> None:
    hub.server.trust_publisher(github_oidc.pop("id_token"), f"{hub.user}/another-model")  # not this repository
    inputs = publish_run_inputs(github_env, hub) | {"token": ""}
    code, _stdout, stderr = run_entry_step(inputs, github_env | github_oidc, tmp_path)
    assert code == 1
    assert stderr.startswith("Error:") and stderr.count("\n") == 1
    assert "Trusted Publishing (HF_OIDC_RESOURCE) got no token" in stderr
    assert "No trusted publisher of me/tiny-model" in stderr
    assert not HfApi(endpoint=hub.endpoint, token=hub.token).repo_exists(f"{hub.user}/tiny-model")
    assert not Path(github_env["GITHUB_OUTPUT"]).exists()


def test_an_exchanged_token_writes_to_its_repository_only(hub: RunningHub) -> None:
    from huggingface_hub._oidc import exchange_oidc_token
    from huggingface_hub.errors import HfHubHTTPError

    hub.server.trust_publisher("id-token-x", f"{hub.user}/scoped")
    with pytest.raises(HfHubHTTPError) as refused:
        exchange_oidc_token(subject_token="id-token-y", resource=f"{hub.user}/scoped", endpoint=hub.endpoint)
    assert refused.value.response.status_code == 401
    token = exchange_oidc_token(subject_token="id-token-x", resource=f"{hub.user}/scoped", endpoint=hub.endpoint)
    api = HfApi(endpoint=hub.endpoint, token=token["access_token"])
    api.create_repo(f"{hub.user}/scoped")
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=f"{hub.user}/scoped")
    HfApi(endpoint=hub.endpoint, token=hub.token).create_repo(f"{hub.user}/other")
    for attempt in (
        lambda: api.create_repo(f"{hub.user}/elsewhere"),
        lambda: api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=f"{hub.user}/other"),
    ):
        with pytest.raises(HfHubHTTPError) as denied:
            attempt()
        assert denied.value.response.status_code == 403


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["PRIVATE", "TRAINING_STATE", "RELEASE", "PUBLIC", "ALLOW_PUBLIC_STATE"]))
def test_a_token_put_in_the_wrong_input_is_not_shown(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    token = "hf_" + "WrongInputToken0" * 2
    environ = {"INPUT_PATH": "x", "INPUT_REPO": "me/model", "INPUT_TOKEN": token, f"INPUT_{name}": token}
    assert action.main(environ=environ) == 1
    err = capsys.readouterr().err
    assert token not in err and err.startswith("Error: ") and err.count("\n") == 1


def test_an_unwritable_step_output_is_one_line_after_the_push_landed(
    github_env: dict[str, str], hub: RunningHub, tmp_path: Path
) -> None:
    (tmp_path / "output").mkdir()  # GITHUB_OUTPUT names a folder
    code, stdout, stderr = run_entry_step(publish_run_inputs(github_env, hub), github_env, tmp_path)
    assert code == 1 and "Traceback" not in stderr
    assert stderr.count("\n") == 1 and stderr.startswith("Error: the push landed, but GITHUB_OUTPUT"), stderr
    branches = {
        b.name for b in HfApi(endpoint=hub.endpoint, token=hub.token).list_repo_refs(f"{hub.user}/tiny-model").branches
    }
    assert "checkpoint-30" in branches and "checkpoint-30" in stdout  # the summary says what landed
