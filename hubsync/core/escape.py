"""Text from a checkpoint or a Hub, escaped for where it lands: a terminal, Markdown, a code span, Python code in a
fenced block, a link, YAML front matter. Pure.

A value read from a file someone else wrote (a metric name, a training argument, a folder's name, a branch a
Hub lists) may hold markup or control characters. Escaped, it reads the same to a person and does nothing else:
no heading, link, image, HTML tag or entity, emphasis or table cell of its own; no front matter ended early; no
terminal escape sequence run.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import yaml

if TYPE_CHECKING:
    import jinja2

Environment = TypeVar("Environment", bound="jinja2.Environment")

# What a terminal or an editor acts on: C0 controls (tab and newline aside), DEL, C1 controls, the Unicode line
# and paragraph separators, bidirectional overrides and isolates (they reorder what is shown, "Trojan Source"),
# and lone surrogates (a file name that is not UTF-8; printing one raises).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_WHITESPACE = re.compile("\r\n|[\t\n\r]")


def _shown(match: re.Match[str]) -> str:
    """A control character as Python and JSON write it: `\\u001b`."""
    return f"\\u{ord(match.group(0)):04x}"


def safe_text(text: str) -> str:
    """Text for a terminal: every character a terminal acts on, but tab and newline, shown escaped."""
    return _CONTROL.sub(_shown, text)


def one_line(value: Any) -> str:
    """A value as one line of text: numbers as Python writes them, lists and mappings as JSON, whitespace
    breaks as spaces, control characters escaped."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (bool, int, float)) or value is None:
        text = str(value)
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    return safe_text(_WHITESPACE.sub(" ", text))


class Safe(str):
    """Text already escaped for where it lands: the packaged templates print it as it is."""


# Markdown's active ASCII punctuation, escaped wherever it is: `\` and backtick (escapes, code spans), `*` `_` `~`
# (emphasis, strikethrough), `[` `]` (links, images, footnotes), `|` (table cells), `#` (headings), `$` (math),
# `@` (e-mail autolinks). `<` `>` `&` become HTML entities (tags, autolinks, entities): the Hub renders raw HTML.
_MARKDOWN = re.compile(r"[\\`*~\[\]|#$@]|_|://|(?<=www)\.|[<>&]", re.IGNORECASE)
_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}


def markdown_text(value: Any) -> Safe:
    """A value as Markdown inline text (a sentence, a list item, a table cell, a link's label) that renders as
    the value itself."""
    text = one_line(value)

    def escape(match: re.Match[str]) -> str:
        found = match.group(0)
        if found in _ENTITIES:
            return _ENTITIES[found]
        if found == "_":  # between letters or digits an underscore never starts or ends emphasis: keep eval_loss
            i = match.start()
            if 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum():
                return found
        if found == "://":  # `https://` and `www.` would become links (GFM autolinks)
            return "\\://"
        return "\\" + found

    return Safe(_MARKDOWN.sub(escape, text))


def code_span(value: Any, *, in_table: bool = False) -> Safe:
    """A value as an inline code span, fenced by more backticks than it holds. In a table's cell `|` still ends
    the cell (GFM), so there it is written `\\|`."""
    text = one_line(value)
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if not text or text[0] in "` " or text[-1] in "` " else ""
    if in_table:
        text = text.replace("|", "\\|")
    return Safe(f"{fence}{pad}{text}{pad}{fence}")


def python_string(value: Any) -> Safe:
    """A value as a Python string literal, on one line, for code in a fenced block."""
    text = json.dumps(str(value), ensure_ascii=False)  # JSON's escapes are Python's too
    return Safe(_CONTROL.sub(_shown, text))


def python_name(value: Any) -> Safe:
    """A Python identifier (a transformers class name), as it is; anything else is refused."""
    if not isinstance(value, str) or not value.isidentifier() or not value.isascii():
        raise ValueError(f"{value!r} is not a Python name")
    return Safe(value)


def link_target(value: Any) -> Safe:
    """A web address for a Markdown link: http(s) only, with everything Markdown or HTML would read
    percent-encoded. Any other address becomes `#`, a link to nowhere."""
    text = str(value)
    if not re.match(r"https?://", text, re.IGNORECASE):
        return Safe("#")
    return Safe(quote(text, safe=":/?#=&%-._~+,;@"))


def url_path(value: Any) -> Safe:
    """A name (a dataset's, a revision's) as part of a web address's path, percent-encoded."""
    return Safe(quote(str(value), safe="/"))


# -- YAML -----------------------------------------------------------------------------------------------------------

_LINE_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff]")


class _FrontMatterDumper(yaml.SafeDumper):  # type: ignore[misc]
    """PyYAML's safe dumper, writing any text that holds a line break or a control character double-quoted on
    one line (`"a\\n---"`): no value starts a line of its own, so none can end the front matter."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if _LINE_BREAKING.search(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_float(dumper: yaml.SafeDumper, value: float) -> yaml.ScalarNode:
    if math.isfinite(value):
        return dumper.represent_float(value)
    return dumper.represent_none(None)  # the Hub's metadata is JSON: no NaN, no infinity


_FrontMatterDumper.add_representer(str, _represent_str)
_FrontMatterDumper.add_representer(float, _represent_float)


def yaml_front_matter(meta: Mapping[str, Any]) -> Safe:
    """A model card's metadata as YAML, without the --- fences, each value on its own line(s) and indented."""
    text = yaml.dump(
        dict(meta), Dumper=_FrontMatterDumper, sort_keys=False, allow_unicode=True, width=2**31 - 1
    ).strip()
    return Safe(text)


def clean_front_matter(text: str, default: str) -> Safe:
    """Front matter someone else wrote (main's README on the Hub), written again by the YAML dumper when it is a
    mapping; `default` when it is not YAML or not a mapping."""
    try:
        meta = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError):
        meta = None
    if not isinstance(meta, dict) or not meta:
        return Safe(default)
    try:
        return yaml_front_matter(meta)
    except (yaml.YAMLError, RecursionError, TypeError, ValueError):
        return Safe(default)


def finalize(value: Any) -> Any:
    """What the packaged templates print for `{{ value }}`: Markdown text, unless a filter already escaped it
    for where it lands (`code`, `pystr`, `url`, ...)."""
    return value if isinstance(value, Safe) else markdown_text(value)


FILTERS = {
    "md": markdown_text,
    "code": code_span,
    "code_cell": lambda value: code_span(value, in_table=True),
    "pystr": python_string,
    "pyname": python_name,
    "url": link_target,
    "urlpath": url_path,
    "as_json": lambda value: json.dumps(value, ensure_ascii=False, default=str),  # then escaped where it lands
    "raw": Safe,  # a template's author takes the value as it is, markup and all
}


def with_filters(environment: Environment) -> Environment:
    """A Jinja2 environment that has the filters above (user templates use them too)."""
    environment.filters.update(FILTERS)
    return environment
