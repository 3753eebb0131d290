"""The GitHub Action's entry step: hubsync.push from the action's inputs, then a job summary and step outputs.

action.yml passes every input through `env:` as INPUT_<NAME> (never interpolated into a script), and the token
as HF_TOKEN. This module turns them into the library's push options (as `hubsync push` turns its flags), pushes,
and writes what it pushed to $GITHUB_STEP_SUMMARY (Markdown) and $GITHUB_OUTPUT (revision, commit, url of the
newest checkpoint). A failure is the command line's one-line error, and the step fails with exit code 1.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubsync.core.errors import HubsyncError
from hubsync.core.render import render

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off", ""}


class ActionInputError(ValueError):
    """An input of the action that hubsync cannot use; the message names it."""


@dataclass(frozen=True)
class ActionInputs:
    path: str
    repo: str
    select: str = ""
    revision: str = ""
    training_state: str = ""
    tags: tuple[str, ...] = ()
    release: bool = False
    private: bool = True
    endpoint: str = ""
    allow_public_state: bool = False
    git_commit: str = ""  # GITHUB_SHA: the commit the workflow runs for
    sign_keyless: bool = False  # sign: keyless: Sigstore, with the workflow's OIDC identity (id-token: write)


def read_inputs(environ: Mapping[str, str]) -> ActionInputs:
    """The action's inputs from INPUT_* variables (as action.yml sets them) and GITHUB_SHA."""

    def get(name: str) -> str:
        return environ.get(f"INPUT_{name.upper().replace('-', '_')}", "").strip()

    def flag(name: str, default: bool) -> bool:
        value = get(name).lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return default if value == "" else False
        raise ActionInputError(f"input '{name}' is {get(name)!r}; use true or false")

    for required in ("path", "repo"):
        if not get(required):
            raise ActionInputError(f"input '{required}' is required; set it under `with:` in the workflow")
    training_state = get("training-state")
    if training_state not in ("", "drop", "keep"):
        raise ActionInputError(f"input 'training-state' is {training_state!r}; use drop or keep")
    tags = tuple(t.strip() for t in get("tags").replace(",", "\n").splitlines() if t.strip())
    if get("sign") not in ("", "keyless"):
        raise ActionInputError(f"input 'sign' is {get('sign')!r}; use keyless, or leave it empty")
    return ActionInputs(
        path=get("path"),
        repo=get("repo"),
        select=get("select"),
        revision=get("revision"),
        training_state=training_state,
        tags=tags,
        release=flag("release", False),
        private=flag("private", True),
        endpoint=get("endpoint"),
        allow_public_state=flag("allow-public-state", False),
        git_commit=environ.get("GITHUB_SHA", "").strip(),
        sign_keyless=get("sign") == "keyless",
    )


def push_arguments(inputs: ActionInputs) -> dict[str, Any]:
    """hubsync.push's keyword options for `inputs`, as `hubsync push` has them from its flags: an input left
    empty is not given (a HUBSYNC_* variable or the configuration may set it). The token is not among them: it
    travels as HF_TOKEN."""
    given: dict[str, Any] = {
        "select": inputs.select,
        "revision": inputs.revision,
        "training_state": inputs.training_state,
        "git_commit": inputs.git_commit,
        "tags": list(inputs.tags),
        "release": inputs.release,
        "allow_public_state": inputs.allow_public_state,
        "sign_keyless": inputs.sign_keyless,
    }
    return {"private": inputs.private, **{name: value for name, value in given.items() if value}}


def push_environment(inputs: ActionInputs, environ: Mapping[str, str]) -> dict[str, str]:
    """The push's environment. Without a token, and with `permissions: id-token: write` (GitHub then offers an id
    token), authenticate by Trusted Publishing: huggingface_hub exchanges the id token for one scoped to the repo."""
    env = dict(environ)
    if not env.get("HF_TOKEN"):
        env.pop("HF_TOKEN", None)  # an unset secret arrives as an empty string
        if not env.get("HF_OIDC_RESOURCE") and env.get("ACTIONS_ID_TOKEN_REQUEST_URL"):
            env["HF_OIDC_RESOURCE"] = inputs.repo
    if inputs.endpoint:
        env["HF_ENDPOINT"] = inputs.endpoint  # huggingface_hub's token exchange goes to HF_ENDPOINT
    return env


def has_credentials(env: Mapping[str, str]) -> bool:
    """A token, Trusted Publishing, or (on a self-hosted runner) a saved login: huggingface_hub's own lookup."""
    if env.get("HF_TOKEN") or env.get("HF_OIDC_RESOURCE"):
        return True
    from huggingface_hub import get_token

    return get_token() is not None


def summary(report: Mapping[str, Any], server_url: str = "", repository: str = "", run_id: str = "") -> str:
    """The job summary: one row per pushed checkpoint with its revision, commit, files and metrics."""
    results = {r["revision"]: r for r in report.get("results", [])}
    rows = [{"plan": plan, "result": results.get(plan["revision"])} for plan in report.get("plans", [])]
    metric_names = sorted({name for row in rows for name in row["plan"].get("metrics", {}) if name != "epoch"})
    run_url = f"{server_url}/{repository}/actions/runs/{run_id}" if server_url and repository and run_id else ""
    return render("action_summary.md.j2", rows=rows, metric_names=metric_names, run_url=run_url)


def outputs(report: Mapping[str, Any]) -> dict[str, str]:
    """revision, commit and url of the newest checkpoint pushed (the last), and every revision as JSON."""
    results = report.get("results", [])
    if not results:
        return {}
    newest = results[-1]
    return {
        "revision": newest["revision"],
        "commit": newest["commit"],
        "url": newest["url"],
        "revisions": json.dumps([r["revision"] for r in results]),
    }


def output_lines(values: Mapping[str, str], delimiter: str) -> str:
    """$GITHUB_OUTPUT's multi-line form, which no value can break out of (a value holding the delimiter is refused)."""
    lines = []
    for name, value in values.items():
        if delimiter in value:
            raise ActionInputError(f"output '{name}' contains the delimiter")
        lines += [f"{name}<<{delimiter}", value, delimiter]
    return "".join(line + "\n" for line in lines)


def _append(path: str, text: str) -> None:
    if path:
        with Path(path).open("a", encoding="utf-8") as out:
            out.write(text)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        inputs = read_inputs(environ)
    except ActionInputError as exc:  # a value can be the token, put in the wrong input
        from hubsync.cli.output import one_line
        from hubsync.core.secrets import redact

        print(one_line(redact(f"Error: {exc}.", [environ.get("INPUT_TOKEN", "")])), file=sys.stderr)
        return 1
    env = push_environment(inputs, environ)
    if not has_credentials(env):
        print(
            "Error: no token for the Hub: the `token` input is empty (is the secret set, and in the job's "
            "environment?) and the job lacks `permissions: id-token: write` for Trusted Publishing. Pass a "
            "token from a secret, or grant the permission.",
            file=sys.stderr,
        )
        return 1
    _use_environment(env)
    try:
        report = _push(inputs)
    except (HubsyncError, OSError) as exc:
        print(_failure(exc), file=sys.stderr)
        return 1
    text = summary(
        report,
        environ.get("GITHUB_SERVER_URL", ""),
        environ.get("GITHUB_REPOSITORY", ""),
        environ.get("GITHUB_RUN_ID", ""),
    )
    print(text)
    for variable, content in (
        ("GITHUB_STEP_SUMMARY", text),
        ("GITHUB_OUTPUT", output_lines(outputs(report), f"hubsync_{secrets.token_hex(16)}")),
    ):
        try:
            _append(environ.get(variable, ""), content)
        except OSError as exc:
            print(
                f"Error: the push landed, but {variable} could not be written ({exc.strerror or type(exc).__name__})"
                ". Check the runner; the Hub holds what the summary above says.",
                file=sys.stderr,
            )
            return 1
    return 0


def _use_environment(env: Mapping[str, str]) -> None:
    """The push's environment for this process: huggingface_hub reads HF_TOKEN, HF_OIDC_RESOURCE and HF_ENDPOINT
    from it."""
    for name in ("HF_TOKEN", "HF_OIDC_RESOURCE", "HF_ENDPOINT"):
        if name in env:
            os.environ[name] = env[name]
        else:
            os.environ.pop(name, None)


def _push(inputs: ActionInputs) -> dict[str, Any]:
    """Plan, then push, as `hubsync push --json` does; its plans and results as --json prints them."""
    from hubsync.api import plan_push, push
    from hubsync.cli.output import quiet_huggingface_hub
    from hubsync.cli.output import report as say

    quiet_huggingface_hub(show_progress=False)
    job = plan_push(inputs.path, inputs.repo, **push_arguments(inputs))
    results = push(job, endpoint=inputs.endpoint or None, report=say)
    return {**job.to_json(), "results": [r.to_json() for r in results]}


def _failure(exc: HubsyncError | OSError) -> str:
    """The command line's one line for a failure: scrubbed of tokens and local paths."""
    from hubsync.cli.errors import message_for
    from hubsync.cli.output import one_line
    from hubsync.core.paths import display_path

    if isinstance(exc, HubsyncError):
        return one_line(message_for(exc))
    where = f" ({display_path(exc.filename)})" if exc.filename else ""
    return one_line(f"Error: {exc.strerror or type(exc).__name__}{where}. Check the path, then run it again.")


if __name__ == "__main__":
    sys.exit(main())
