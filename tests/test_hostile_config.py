"""Configuration and templates as an attacker would write them: a hubsync.toml that came with a downloaded run,
a template that never ends or fills the memory. A file may make a push more private, never less, and every
template renders within bounds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import push
from huggingface_hub import HfApi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsync.core import render
from hubsync.core.render import RenderError, render_file
from hubsync.localhub import RunningHub


@pytest.fixture
def quick_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """One second of CPU instead of five: a template that never ends is refused sooner, the same way."""
    monkeypatch.setattr(render, "MAX_CPU_S", 1)


@pytest.mark.parametrize(
    ("file", "env", "said", "flag"),
    [
        ("private = false\n", {}, "hubsync.toml: private = false: that asks for a public repository", "--public"),
        (
            "",
            {"HUBSYNC_PRIVATE": "no"},
            "HUBSYNC_PRIVATE: it reads as false: that asks for a public repository",
            "--public",
        ),
        (
            "allow-public-state = true\n",
            {},
            "hubsync.toml: allow-public-state = true: that allows training state in a public repository",
            "--allow-public-state",
        ),
        (
            "",
            {"HUBSYNC_ALLOW_PUBLIC_STATE": "1"},
            "HUBSYNC_ALLOW_PUBLIC_STATE: it reads as true: that allows",
            "--allow-public-state",
        ),
    ],
)
def test_a_file_or_variable_never_makes_a_push_less_private(
    run: Path, hub: RunningHub, api: HfApi, file: str, env: dict[str, str], said: str, flag: str
) -> None:
    (run / "hubsync.toml").write_text(file + 'training-state = "keep"\n')
    for extra in ([], ["--dry-run"], ["--private"] if flag == "--public" else ["--no-allow-public-state"]):
        result = push(hub, str(run), "--repo", "me/tiny", *extra, env=env)
        if extra and extra[0] != "--dry-run":
            assert result.exit_code == 0, result.stderr  # the flag decides, whatever the file or variable says
            assert api.model_info("me/tiny").private
            continue
        assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
        assert said in result.stderr and "may make a push more private, never less" in result.stderr
        assert f"Pass {flag} on the command line" in result.stderr
        assert ("or unset HUBSYNC_" if env else "or remove it from …/tiny/hubsync.toml.") in result.stderr
        assert list(api.list_models(author="me")) == []


def test_only_the_public_flag_publishes(run: Path, hub: RunningHub, api: HfApi) -> None:
    (run / "hubsync.toml").write_text("private = false\n")
    assert push(hub, str(run), "--repo", "me/tiny", "--public").exit_code == 0
    assert not api.model_info("me/tiny").private
    (run / "hubsync.toml").write_text("private = true\n")  # more private: always read
    assert push(hub, str(run), "--repo", "me/other").exit_code == 0
    assert api.model_info("me/other").private


# Templates: each case builds or loops far past any card; each must end, in one line, within its bound.
# BIG goes past memory, N past time (a range may hold at most 100000 items).
BUILD = st.sampled_from(
    [
        '{{ "x" * BIG }}',
        "{{ [1] * BIG }}",
        "{{ BIG * 'ab' }}",
        "{{ 7 ** BIG }}",
        '{{ "a".ljust(BIG) }}',
        '{{ "%*d" % (BIG, 1) }}',
        "{{ range(BIG) | list }}",
        "{% for i in range(N) %}{{ 'xyz' * 1000 }}{% endfor %}",
        '{% set ns = namespace(x="ab") %}{% for i in range(64) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}',
        '{% set ns = namespace(x="ab") %}{% for i in range(64) %}{% set ns.x = ns.x + ns.x %}{% endfor %}',
        "{% for a in range(N) %}{% for b in range(N) %}{{ '' }}{% endfor %}{% endfor %}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{{ lipsum(n=N) }}",
    ]
)
AROUND = st.sampled_from(["{}", "{% if true %}{}{% endif %}", "{% for x in [1] %}{}{% endfor %}", "a\n{}\nb"])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(template=BUILD, around=AROUND, big=st.sampled_from([3_000_000_000, 10**12]), prefix=st.text(max_size=20))
def test_a_template_past_its_bounds_ends_and_says_so(
    quick_limits: None, template: str, around: str, big: int, prefix: str
) -> None:
    body = template.replace("BIG", str(big)).replace("N", "100000")
    text = prefix.replace("{", "").replace("%", "") + around.replace("{}", body)
    started = time.monotonic()
    with pytest.raises(RenderError) as refused:
        render_file(text)
    assert time.monotonic() - started < render.MAX_WALL_S
    said = str(refused.value)
    assert "\n" not in said
    assert "templates are bounded to" in said or said.startswith("OverflowError: Range too big"), said


def test_a_template_that_fails_says_how() -> None:
    with pytest.raises(RenderError, match="ZeroDivisionError: division by zero"):
        render_file("{{ 1 / 0 }}")
    assert render_file("{{ x }} {{ y | join(',') }}\n", x="ok", y=[1, 2]) == "ok 1,2\n"


def test_a_hanging_template_from_a_run_folder_is_one_line(
    quick_limits: None, run: Path, hub: RunningHub, api: HfApi
) -> None:
    (run / "card.j2").write_text("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}")
    (run / "hubsync.toml").write_text('template = "card.j2"\n')
    result = push(hub, str(run), "--repo", "me/tiny")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert "cannot render the card template" in result.stderr and "card.j2" in result.stderr
    assert "ran past 1 s of CPU" in result.stderr and "Fix the template, or leave out --template" in result.stderr
    assert list(api.list_models(author="me")) == []


def test_a_template_that_fills_the_memory_is_one_line(run: Path, hub: RunningHub, api: HfApi) -> None:
    template = run.parent / "big.j2"
    template.write_text('{{ "x" * 3000000000 }}')
    result = push(hub, str(run), "--repo", "me/tiny", "--template", str(template), "--dry-run", "--json")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert "an expression builds more than 1024 KiB" in result.stderr
    assert json.loads(result.stdout or "{}").get("plans") in (None, [])
    assert list(api.list_models(author="me")) == []
