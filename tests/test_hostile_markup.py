"""Markup and terminal escapes from a checkpoint or a Hub (issue 15, items 8 and 9).

A value someone else wrote (a metric name, an adapter_config field, a training argument, a folder's or a file's
name, a branch a Hub lists, a Hub's error text) lands in the card and main's index escaped for where it lands,
and reads there as itself; on the terminal every command shows its control characters escaped.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hostile_proxy import ProxyHandler, serve
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from huggingface_hub.repocard import metadata_load
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from markdown_it.token import Token
from test_card import LOG_HISTORY, VERSIONS, crafted

from hubsync.cli import cli
from hubsync.core.card import CardSettings, card_files
from hubsync.core.checkpoint import parse_trainer_state
from hubsync.core.escape import one_line
from hubsync.core.index import OWN_MARKER, SECTION_BEGIN, SECTION_END, render_index_readme
from hubsync.localhub import RunningHub

# -- hostile text ---------------------------------------------------------------------------------------------------

# What a terminal acts on: C0 (but tab and newline), DEL, C1, bidirectional overrides and isolates.
TERMINAL_CONTROLS = [chr(c) for c in range(0x20) if c not in (9, 10)] + ["\x7f"]
TERMINAL_CONTROLS += [chr(c) for c in range(0x80, 0xA0)] + [
    chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))
]
UNSAFE_ON_A_TERMINAL = re.compile("[" + re.escape("".join(TERMINAL_CONTROLS)) + "]")
SEQUENCES = ["\x1b[31m", "\x1b[2J\x1b[H", "\x1b]8;;https://evil.example\x07", "\x9b2J", "\r", "\u202e"]
MARKUP = [
    "# Verified by [Hugging Face](https://evil.example/login)",
    "<script>alert(1)</script>",
    '<iframe src="https://evil.example">',
    '<img src=x onerror="alert(1)">',
    "![x](https://evil.example/x.png)",
    "&lt;b&gt; &amp; &#x3C;",
    "*bold* _em_ ~~gone~~ `code` ``` $x$",
    "| a | b |",
    "\n---\n",
    "\n# heading\n",
    "\n\n- item\n",
    "https://evil.example www.evil.example a@evil.example",
    "[ref]: https://evil.example",
    "\\",
]
hostile_text = st.lists(
    st.one_of(
        st.sampled_from(MARKUP),
        st.sampled_from(SEQUENCES),
        st.sampled_from(TERMINAL_CONTROLS),
        st.text(alphabet=string.ascii_letters + string.punctuation + " \n\té€", max_size=6),
    ),
    min_size=1,
    max_size=5,
).map("".join)


def assert_terminal_safe(result: Result) -> None:
    for stream in (result.stdout, result.stderr):
        found = UNSAFE_ON_A_TERMINAL.search(stream)
        assert found is None, f"{found.group(0)!r} reached the terminal in {stream!r}"


# -- Markdown, as the Hub would read it ----------------------------------------------------------------------------

MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])


def body_tokens(readme: str) -> list[Token]:
    """The card below its front matter, as a CommonMark + GFM tables parser reads it; inline tokens flattened."""
    body = ModelCard(readme).text
    out = []
    for token in MD.parse(body):
        out.append(token)
        out.extend(token.children or [])
    return out


def shown_text(tokens: list[Token]) -> str:
    """What a person reads: text and code, each inline run on its own line."""
    lines = []
    for token in tokens:
        if token.type == "inline":
            lines.append("".join(c.content for c in token.children or [] if c.type in ("text", "code_inline")))
    return "\n".join(lines)


def headings(tokens: list[Token]) -> list[str]:
    return [tokens[i + 1].content for i, token in enumerate(tokens) if token.type == "heading_open"]


def spaced(text: str) -> str:
    return " ".join(text.split(" "))  # runs of spaces as one: what a browser shows


def assert_inert(tokens: list[Token], allowed_links: Callable[[str], bool]) -> None:
    kinds = {t.type for t in tokens}
    assert not kinds & {"html_block", "html_inline"}, "raw HTML in the card"
    assert not kinds & {"em_open", "strong_open", "s_open"}, "emphasis from a value"
    for token in tokens:
        if token.type == "link_open":
            assert allowed_links(str(token.attrs["href"])), token.attrs
        if token.type == "image":
            assert token.attrs["src"] == "training_loss.svg", token.attrs


def card_of(value: str) -> str:
    """The card of a checkpoint whose record holds `value` in every field a card shows from it."""
    history = [dict(e) for e in LOG_HISTORY]
    history[2]["eval_" + value] = 0.25
    history[-1]["eval_" + value] = 0.5
    state = parse_trainer_state(
        {"global_step": 20, "epoch": 2.0, "best_metric": 0.5, "best_model_checkpoint": value, "log_history": history}
    )
    base = crafted()
    checkpoint = dataclasses.replace(
        base,
        name=value,
        run_name=value,
        trainer_state=state,
        adapter_config={**(base.adapter_config or {}), "target_modules": [value, "v_proj"], "bias": value},
        training_args={**(base.training_args or {}), "lr_scheduler_type": value, "metric_for_best_model": value},
    )
    return card_files(checkpoint, CardSettings(versions=VERSIONS), "me/demo", "checkpoint-20")["README.md"].decode()


HEADINGS = headings(body_tokens(card_of("x")))


@settings(max_examples=60, deadline=None)
@given(value=hostile_text)
def test_a_value_from_the_checkpoint_reads_as_itself_in_the_card_and_does_nothing_else(value: str) -> None:
    readme = card_of(value)
    # Front matter: the YAML dumper's, ended where the card's own --- is; the metric name round-trips.
    meta = ModelCard(readme).data.to_dict()
    assert meta is not None and meta["library_name"] == "peft"
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert value in {m["type"] for m in metrics}
    assert ModelCard(readme).text.startswith("\n# demo")
    # Body: no HTML, no emphasis, no link but the base model's, no heading or table cell of the value's own.
    tokens = body_tokens(readme)
    assert_inert(tokens, lambda href: href == "https://huggingface.co/meta-llama/Llama-3.1-8B")
    assert len(headings(tokens)) == len(HEADINGS)
    header_cells = [t for t in tokens if t.type == "th_open"]
    assert len(header_cells) == 6  # step, epoch, training loss, validation loss, accuracy, the value
    assert [t.info for t in tokens if t.type == "fence"] == ["python"]  # the usage snippet, closed by the template
    # And each place shows the value itself, as one line (Markdown trims the spaces a line or a cell ends with).
    assert spaced(shown_text(tokens)).count(spaced(one_line(value)).strip()) >= 5  # run, metric, bias, ...


def test_a_fake_verified_heading_with_a_phishing_link_is_plain_text() -> None:
    value = "x\n# Verified by [Hugging Face](https://evil.example/login) <img src=x onerror=alert(1)>"
    readme = card_of(value)
    tokens = body_tokens(readme)
    assert_inert(tokens, lambda href: "evil" not in href)
    assert not any("Verified" in heading for heading in headings(tokens))
    assert "x # Verified by [Hugging Face](https://evil.example/login) <img src=x onerror=alert(1)>" in shown_text(
        tokens
    )


@settings(max_examples=60, deadline=None)
@given(revision=hostile_text, metric=hostile_text, hub_meta=st.one_of(hostile_text, st.just("a: 1\n---\n<script>")))
def test_main_s_index_escapes_revisions_metrics_and_the_hub_s_front_matter(
    revision: str, metric: str, hub_meta: str
) -> None:
    entries = [
        {"revision": revision, "step": 10, "epoch": 1.0, "metrics": {metric: 0.5}, "resumable": True, "commit": "c"},
        {"revision": "checkpoint-20", "step": 20, "epoch": 2.0, "metrics": {}, "resumable": False, "commit": "d"},
    ]
    web = "http://127.0.0.1:1/me/demo"
    readme = render_index_readme(entries, "me/demo", hub_meta, web).decode()
    meta = ModelCard(readme).data.to_dict()
    assert isinstance(meta, dict)  # a mapping: the Hub's own or the fallback
    markers = [t for t in body_tokens(readme) if t.type == "html_block"]
    assert [t.content.strip() for t in markers] == [OWN_MARKER, SECTION_BEGIN, SECTION_END]  # hubsync's own, alone
    tokens = [t for t in body_tokens(readme) if t.type != "html_block"]
    assert_inert(tokens, lambda href: href.startswith(web + "/tree/"))
    assert len([t for t in tokens if t.type == "link_open"]) == 2  # one a revision
    assert len([t for t in tokens if t.type == "tr_open"]) == 3  # the header and two revisions
    assert len([t for t in tokens if t.type == "th_open"]) == 6
    shown = spaced(shown_text(tokens))
    assert spaced(one_line(revision)).strip() in shown and spaced(one_line(metric)).strip() in shown


# -- item 9: a record of the wrong shape -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(best=json_values)
def test_a_best_model_checkpoint_of_any_shape_gives_a_sane_card(best: Any) -> None:
    state = parse_trainer_state(
        {"global_step": 20, "best_metric": 0.5, "best_model_checkpoint": best, "log_history": LOG_HISTORY}
    )
    checkpoint = dataclasses.replace(crafted(), trainer_state=state)
    readme = card_files(checkpoint, CardSettings(versions=VERSIONS), "me/demo", "checkpoint-20")["README.md"]
    assert b"Best metric so far: 0.5000" in readme


@pytest.mark.parametrize("metadata", ['"abc"', "[1, 2]", "5", "true", "[[1, 2]]", '{"total_size": "x", "7": 1}'])
def test_a_weights_index_whose_metadata_is_not_a_mapping_converts(checkpoint: Path, metadata: str) -> None:
    import torch

    torch.save({"w": torch.zeros(2)}, checkpoint / "pytorch_model.bin")
    index = {"metadata": json.loads(metadata), "weight_map": {"w": "pytorch_model.bin"}}
    (checkpoint / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    result = CliRunner().invoke(cli, ["convert", str(checkpoint), "--output", str(checkpoint.parent / "converted")])
    assert result.exit_code == 0, result.output
    written = json.loads((checkpoint.parent / "converted" / "model.safetensors.index.json").read_text())
    assert written["metadata"]["total_size"] == 8 and written["weight_map"] == {"w": "model.safetensors"}


# -- the terminal ----------------------------------------------------------------------------------------------------


def invoke(hub: RunningHub, *args: str, endpoint: str | None = None) -> Result:
    env = {"HF_ENDPOINT": endpoint or hub.endpoint, "HF_TOKEN": hub.token}
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code in (0, 1), (args, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
    assert_terminal_safe(result)
    return result


names = hostile_text.map(lambda s: s.replace("/", "").replace("\x00", "")[:60]).filter(lambda s: s.strip(". ") != "")
EVERY_CONTROL = "".join(c for c in TERMINAL_CONTROLS if c != "\x00") + "".join(SEQUENCES).replace("/", "")


def hostile_checkpoint(tiny_run: Path, folder: Path, name: str, metric: str) -> Path:
    """A copy of the tiny run's last checkpoint in a run folder named `run-NAME`, holding a file named
    `notes-NAME.txt` and an evaluation metric named `eval_METRIC`."""
    ckpt = Path(shutil.copytree(tiny_run / "checkpoint-30", folder / f"run-{name}" / "checkpoint-30"))
    (ckpt / f"notes-{name}.txt").write_text("notes")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    state["log_history"].append({"step": 30, "epoch": state["epoch"], "eval_" + metric: 0.5, "eval_loss": 1.0})
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    return ckpt


def test_every_command_prints_control_characters_from_files_and_records_escaped(
    tiny_run: Path, hub: RunningHub, tmp_path: Path
) -> None:
    """A run folder, a file and a metric named with every control character a terminal acts on (ESC sequences,
    C1, bidi overrides): push (dry run and real), ls, prune, card, pull and watch show them escaped. The card on
    the Hub, read by the real client, names the metric as it was."""
    metric = EVERY_CONTROL + "# Verified by [Hugging Face](https://evil.example/login) <script>x</script>"
    ckpt = hostile_checkpoint(tiny_run, tmp_path, EVERY_CONTROL, metric)
    invoke(hub, "push", str(ckpt), "--repo", "me/hostile", "--dry-run")
    invoke(hub, "push", str(ckpt), "--repo", "me/hostile")  # the local Hub refuses such a path, as the Hub does
    (ckpt / f"notes-{EVERY_CONTROL}.txt").unlink()
    pushed = invoke(hub, "push", str(ckpt), "--repo", "me/hostile")
    assert pushed.exit_code == 0, pushed.stderr
    assert "\\u001b[31m" in invoke(hub, "ls", "me/hostile").stdout  # the metric's name, escaped
    invoke(hub, "prune", "me/hostile", "--keep", "0", "--dry-run")
    assert invoke(hub, "card", str(ckpt), "--repo", "me/hostile", "--output", str(tmp_path / "card.md")).exit_code == 0
    invoke(hub, "card", str(ckpt), "--output", str(tmp_path / "card.md"))  # refused: the run's name is no repo name
    pulled = invoke(hub, "pull", "me/hostile", "--revision", "checkpoint-30", "--to", str(tmp_path / "pulled"))
    assert pulled.exit_code == 0, pulled.stderr
    watched = invoke(hub, "watch", str(ckpt.parent), "--repo", "me/hostile-watch", "--interval", "0.1")
    assert watched.exit_code == 0, watched.stderr
    readme = hf_hub_download(
        "me/hostile", "README.md", revision="checkpoint-30", endpoint=hub.endpoint, token=hub.token
    )
    metrics = metadata_load(Path(readme))["model-index"][0]["results"][0]["metrics"]  # type: ignore[index]
    assert metric in {m["type"] for m in metrics}


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names, metric=hostile_text)
def test_a_dry_run_prints_any_file_and_metric_name_escaped(
    tiny_run: Path, hub: RunningHub, tmp_path_factory: pytest.TempPathFactory, name: str, metric: str
) -> None:
    ckpt = hostile_checkpoint(tiny_run, tmp_path_factory.mktemp("names"), name, metric)
    invoke(hub, "push", str(ckpt), "--repo", "me/hostile", "--dry-run")


@pytest.fixture
def hostile_hub(hub: RunningHub) -> Iterator[tuple[str, dict[str, Any]]]:
    """A proxy in front of `hub` that renames every branch it lists (`mode["branch"]`) or answers the refs
    listing with an error whose text is `mode["error"]`."""
    mode: dict[str, Any] = {"branch": None, "error": None}

    class Proxy(ProxyHandler):
        def _forward(self) -> None:
            body = self.request_body()
            is_refs = self.path.split("?")[0].endswith("/refs")
            if is_refs and mode["error"] is not None:
                error = json.dumps({"error": mode["error"]}).encode()
                return self.answer(400, [("Content-Type", "application/json")], error)
            status, headers, data = self.ask_upstream(body)
            if is_refs and mode["branch"] is not None and status == 200:
                refs = json.loads(data)
                for ref in refs["branches"]:
                    if ref["name"] != "main":
                        ref["name"] = ref["name"] + mode["branch"]
                data = json.dumps(refs).encode()
            return self.answer(status, headers, data)

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _forward

    with serve(Proxy, hub.endpoint) as endpoint:
        yield endpoint, mode


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=hostile_text)
def test_branch_names_and_error_text_from_a_hub_are_printed_escaped(
    checkpoint: Path, hub: RunningHub, hostile_hub: tuple[str, dict[str, Any]], text: str
) -> None:
    endpoint, mode = hostile_hub
    if not HfApi(endpoint=hub.endpoint, token=hub.token).repo_exists("me/tiny"):
        assert invoke(hub, "push", str(checkpoint), "--repo", "me/tiny").exit_code == 0
    mode.update(branch=text, error=None)
    invoke(hub, "ls", "me/tiny", endpoint=endpoint)
    invoke(hub, "prune", "me/tiny", "--keep", "0", "--dry-run", endpoint=endpoint)
    mode.update(branch=None, error=text)
    for args in (["ls", "me/tiny"], ["prune", "me/tiny", "--keep", "0", "--dry-run"], ["pull", "me/tiny"]):
        failed = invoke(hub, *args, endpoint=endpoint)
        assert failed.exit_code == 1 and failed.stderr.startswith("Error: "), (args, failed.stderr)


@settings(max_examples=8, deadline=None)
@given(
    value=st.sampled_from(["<script>alert(1)</script>", "# Verified by [HF](https://evil.example)", "<img onerror=x>"])
)
def test_a_users_template_escapes_values_unless_told_raw(value: str) -> None:
    from hubsync.core.render import render_file

    escaped, raw = render_file("{{ value }}\n{{ value|raw }}", value=value).split("\n")

    tokens = [t for block in MD.parse(escaped) for t in (block, *(block.children or []))]
    assert_inert(tokens, allowed_links=lambda href: False)
    assert not headings(tokens)
    assert spaced(shown_text(tokens)) == spaced(value)  # it reads as itself
    assert raw == value
