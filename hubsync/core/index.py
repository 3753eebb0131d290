"""The main branch's index of checkpoint revisions: kept as .hubsync/index.json, shown as main's README.md. Pure."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import yaml

from .checkpoint import EVAL_TIMINGS, TrainerState, finite_number, loads_json
from .conversion import is_resumable
from .escape import Safe, clean_front_matter, yaml_front_matter
from .layouts import state_layout
from .render import render

INDEX_FILE = ".hubsync/index.json"
FALLBACK_FRONT_MATTER = "tags:\n- hubsync"  # for an index README whose metadata is gone or is not a mapping


TRAIN_LOSS = "train_loss"


def revision_metrics(state: TrainerState | None) -> dict[str, float]:
    """A revision's metrics, each under one name wherever it is shown: `train_loss` (the newest training loss)
    and the newest evaluation's metrics with their Trainer names (`eval_loss`, `eval_accuracy`, ...)."""
    if state is None:
        return {}
    found = {TRAIN_LOSS: state.latest_loss} if state.latest_loss is not None else {}
    return found | {k: v for k, v in state.latest_eval.items() if k not in EVAL_TIMINGS}


def metric_name(name: str) -> str:
    """A metric's name as index entries store it now. Entries written before hubsync named metrics this way
    hold only evaluation metrics, without their eval_ prefix (`loss` was the eval loss): they get it back."""
    return name if name == TRAIN_LOSS or name.startswith("eval_") else f"eval_{name}"


def index_entry(
    revision: str, step: int | None, epoch: float | None, metrics: Mapping[str, float], files: list[str], commit: str
) -> dict[str, Any]:
    """What the index says of one pushed revision."""
    resumable = is_resumable(set(files))
    layout = state_layout(set(files))
    return {
        "revision": revision,
        "step": step,
        "epoch": epoch,
        "metrics": {k: float(f"{v:.6g}") for k, v in sorted(metrics.items())},
        "resumable": resumable,
        **({"layout": layout.describe()} if layout is not None else {}),  # DeepSpeed's, FSDP's: how many ranks
        "commit": commit,
    }


def parse_index(raw: bytes | None) -> list[dict[str, Any]]:
    """The entries of an index file; an absent or unreadable one is an empty index (it is rebuilt by pushes).

    The file is someone else's text (anyone who can write to main, or the Hub itself): each entry keeps only the
    fields hubsync writes, each of the type it writes; an entry whose revision is not a branch name hubsync could
    have pushed to is left out, and so is a field of another type."""
    if raw is None:
        return []
    try:
        data = loads_json(raw)
    except ValueError:
        return []
    entries = data.get("revisions") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return []
    return [e for e in (_checked_entry(e) for e in entries) if e is not None]


_COMMIT = re.compile(r"[0-9a-f]{40}")


def _checked_entry(entry: Any) -> dict[str, Any] | None:
    """An index entry as hubsync writes it (what is missing or of another type: none, no metrics, not resumable),
    or None; metric names of old entries as they are named now."""
    if not isinstance(entry, dict) or not isinstance(entry.get("revision"), str):
        return None
    if not _is_branch_name(entry["revision"]):
        return None
    step, epoch, metrics = entry.get("step"), entry.get("epoch"), entry.get("metrics")
    out: dict[str, Any] = {
        "revision": entry["revision"],
        "step": step if type(step) is int and 0 <= step < 2**63 else None,
        "epoch": epoch if finite_number(epoch) is not None else None,
        "metrics": {},
        "resumable": False,
    }
    if isinstance(metrics, dict):
        out["metrics"] = {
            metric_name(k): v
            for k, v in metrics.items()
            if isinstance(k, str) and len(k) <= 200 and finite_number(v) is not None
        }
    for key in ("resumable", "released", "signed"):
        if isinstance(entry.get(key), bool):
            out[key] = entry[key]
    layout = entry.get("layout")
    if isinstance(layout, str) and re.fullmatch(r"[A-Za-z0-9 ,/()_.-]{1,80}", layout):
        out["layout"] = layout
    if isinstance(entry.get("commit"), str) and _COMMIT.fullmatch(entry["commit"]):
        out["commit"] = entry["commit"]
    tags = entry.get("tags")
    if isinstance(tags, list) and all(isinstance(t, str) for t in tags):
        out["tags"] = [t for t in tags if _is_branch_name(t)]
    return out


def _is_branch_name(name: str) -> bool:
    from .errors import InvalidRevisionError
    from .plan import check_branch_name

    try:
        check_branch_name(name)
    except InvalidRevisionError:
        return False
    return True


def merge_index(entries: list[dict[str, Any]], entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`entries` with `entry` replacing the one of the same revision, ordered by step then revision."""
    merged = [e for e in entries if e["revision"] != entry["revision"]] + [dict(entry)]
    return sorted(merged, key=lambda e: (e.get("step") if isinstance(e.get("step"), int) else -1, e["revision"]))


def dump_index(entries: list[dict[str, Any]]) -> bytes:
    return (json.dumps({"version": 1, "revisions": entries}, indent=2, sort_keys=True) + "\n").encode()


def render_index_readme(entries: list[dict[str, Any]], repo_id: str, front_matter: str, web_url: str) -> bytes:
    """Main's README.md when hubsync writes all of it: metadata, then the index section. `front_matter` may come
    from main's README on the Hub, which anyone with write access may have edited: it is written again by the YAML
    dumper (or replaced, when it is not a YAML mapping)."""
    front_matter = clean_front_matter(front_matter, FALLBACK_FRONT_MATTER)
    section = render_index_section(entries, repo_id, web_url, adapter=_is_adapter(front_matter), own=True)
    return render(
        "index_card.md.j2", front_matter=front_matter, marker=Safe(OWN_MARKER), section=Safe(section)
    ).encode()


def render_index_section(entries: list[dict[str, Any]], repo_id: str, web_url: str, *, adapter: bool, own: bool) -> str:
    """hubsync's index section, from its begin marker line to its end marker line (no newline after it): the
    checkpoints, each linked to its revision, with its tags and whether main holds its inference files. `own`: the
    whole README is hubsync's (a title of the repository's name), else a section under a heading of its own."""
    metric_names = sorted({m for e in entries for m in (e.get("metrics") or {})})
    rows = [{**e, "url": f"{web_url}/tree/{quote(e['revision'], safe='')}"} for e in entries]
    released = next((e for e in entries if e.get("released")), None)
    text = render(
        "index_section.md.j2",
        repo_id=repo_id,
        repo_name=repo_id.split("/")[-1],
        entries=rows,
        metric_names=metric_names,
        adapter=adapter,
        own=own,
        released=released,
    )
    return text.rstrip("\n")


# -- main's README: hubsync's, or someone else's with hubsync's section in it -----------------------------------------

SECTION_BEGIN = "<!-- hubsync:index:begin -->"
SECTION_END = "<!-- hubsync:index:end -->"
OWN_MARKER = "<!-- hubsync:readme -->"  # first in the body of a README that hubsync wrote whole, never in a section
LEGACY_FOOTER = "This index is kept by hubsync: each push updates it."  # READMEs hubsync wrote before the markers


@dataclass(frozen=True)
class ReadmeUpdate:
    """What a push or a prune does with main's README.md, and the README it writes."""

    action: str  # "create" | "rewrite" | "update section" | "add section"
    readme: bytes

    def describe(self) -> str:
        return README_ACTIONS[self.action]


README_ACTIONS = {  # what a dry run says of each
    "create": "hubsync writes it (the index of checkpoints)",
    "rewrite": "hubsync wrote it: it is written again with the index",
    "update section": "someone else wrote it: kept as it is, hubsync's index section in it updated in place",
    "add section": "someone else wrote it: kept as it is, hubsync's index added as a section at its end",
}


def readme_action(readme: bytes | None, has_index: bool) -> str:
    """What updating main's README does, from main's README now (None: there is none) and whether main has
    hubsync's index file: see ReadmeUpdate.action."""
    if readme is None:
        return "create"
    _front, body = _split_readme(readme.decode("utf-8", errors="replace"))
    if _is_hubsync_body(body, has_index):
        return "rewrite"
    return "update section" if _find_section(body) is not None else "add section"


def update_main_readme(
    readme: bytes | None,
    has_index: bool,
    entries: list[dict[str, Any]],
    repo_id: str,
    front_matter: str,
    web_url: str,
) -> ReadmeUpdate:
    """Main's README with `entries` as its index. A README hubsync wrote (its body is hubsync's section alone, or,
    from before the markers, it ends with hubsync's footer and main has the index file) is written again with
    `front_matter`. Any other README is someone else's: its text and its front matter stay byte for byte, and
    hubsync's section replaces the one between its markers (the last begin marker line outside fenced code, and the
    first end marker line after it) or is added at the end."""
    action = readme_action(readme, has_index)
    if action in ("create", "rewrite"):
        return ReadmeUpdate(action, render_index_readme(entries, repo_id, front_matter, web_url))
    assert readme is not None
    text = readme.decode("utf-8", errors="replace")
    front, body = _split_readme(text)
    meta = front_matter_of(readme)
    section = render_index_section(
        entries, repo_id, web_url, adapter=_is_adapter(meta) if meta is not None else True, own=False
    )
    lines = body.split("\n")
    found = _find_section(body)
    if found is None:
        kept = body.rstrip("\n")
        fence = _scan(body)[1]
        if fence is not None:  # a code block left open would hold hubsync's section: it ends where it would
            kept += "\n" + fence
        new_body = (kept + "\n\n" if kept.strip() else "") + section + "\n"
    else:
        begin, end = found
        new_body = "\n".join([*lines[:begin], section, *lines[end + 1 :]])
    return ReadmeUpdate(action, (front + new_body).encode())


def _split_readme(text: str) -> tuple[str, str]:
    """(the front matter with its fences and the line break after them, or ""; the rest)."""
    norm = text.replace("\r\n", "\n")
    if norm.startswith("---\n"):
        end = norm.find("\n---\n", 3)
        if end != -1:
            return norm[: end + 5], norm[end + 5 :]
        if norm.endswith("\n---"):
            return norm + "\n", ""
    return "", norm


def _marker_lines(body: str) -> list[tuple[int, str]]:
    """(line number, marker) of each line that is a marker alone, outside fenced code blocks."""
    return _scan(body)[0]


def _scan(body: str) -> tuple[list[tuple[int, str]], str | None]:
    """The marker lines outside fenced code blocks, and the fence of a code block still open at the end."""
    found = []
    fence: str | None = None
    for i, line in enumerate(body.split("\n")):
        stripped = line.strip()
        opened = re.match(r"(`{3,}|~{3,})", stripped)
        if fence is None and opened:
            fence = opened.group(1)
            continue
        if fence is not None:
            if stripped.startswith(fence) and not stripped[len(fence) :].strip(fence[0] + " "):
                fence = None
            continue
        if line.rstrip() in (SECTION_BEGIN, SECTION_END, OWN_MARKER):
            found.append((i, line.rstrip()))
    return found, fence


def _find_section(body: str) -> tuple[int, int] | None:
    """The line numbers of hubsync's section's begin and end marker: the last begin marker, and the first end
    marker after it (a forged or broken pair earlier in someone's text is left alone); None when there is none."""
    markers = _marker_lines(body)
    begins = [i for i, m in markers if m == SECTION_BEGIN]
    if not begins:
        return None
    ends = [i for i, m in markers if m == SECTION_END and i > begins[-1]]
    return (begins[-1], ends[0]) if ends else None


def _is_hubsync_body(body: str, has_index: bool) -> bool:
    """Whether hubsync wrote the whole body: its own-README marker line, right away its section, nothing else (a
    section hubsync adds to someone's README never has that marker and follows a blank line, so that README stays
    theirs), or a README from before the markers (main has the index, the body ends with the
    footer hubsync wrote and has no marker)."""
    markers = _marker_lines(body)
    lines = body.split("\n")
    filled = [i for i, line in enumerate(lines) if line.strip()]
    if not filled:
        return False
    if [m for _i, m in markers] == [OWN_MARKER, SECTION_BEGIN, SECTION_END]:
        own, begin, end = (i for i, _m in markers)
        return own == filled[0] and begin == own + 1 and end == filled[-1]  # as index_card.md.j2 writes them
    return not markers and has_index and lines[filled[-1]].strip() == LEGACY_FOOTER


def main_front_matter(card: str | None, previous: str | None, entries: list[dict[str, Any]], releasing: bool) -> str:
    """The metadata of a README hubsync writes on main: the checkpoint card's (`card`, on a push) or main's
    README's (`previous`). Its `model-index` (evaluation results the Hub shows for the model on main) is kept only
    while main holds a released checkpoint that the index still lists: the release's own on a --release, the one
    main already has on any other push or prune; without one, main holds no model and claims no results."""
    base = card if card is not None else previous
    meta = _mapping(base)
    if meta is None:
        return base or FALLBACK_FRONT_MATTER
    if not releasing:
        meta.pop("model-index", None)
        held = _mapping(previous) if any(e.get("released") for e in entries) else None
        if held is not None and "model-index" in held:
            meta["model-index"] = held["model-index"]
    try:
        return yaml_front_matter(meta)
    except (yaml.YAMLError, RecursionError, TypeError, ValueError):
        return base or FALLBACK_FRONT_MATTER


def _mapping(front_matter: str | None) -> dict[str, Any] | None:
    if front_matter is None:
        return None
    try:
        meta = yaml.safe_load(front_matter)
    except (yaml.YAMLError, RecursionError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _is_adapter(front_matter: str) -> bool:
    """Whether the card's metadata describes a PEFT adapter (else a model transformers loads by itself)."""
    try:
        meta = yaml.safe_load(front_matter)
    except yaml.YAMLError:
        return True
    return not isinstance(meta, dict) or meta.get("library_name", "peft") == "peft"


def front_matter_of(readme: bytes | None) -> str | None:
    """The YAML metadata of main's README.md, without the `---` fences; None when it has none."""
    if readme is None:
        return None
    text = readme.decode("utf-8", errors="replace").replace("\r\n", "\n")
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---\n", 3)
    if end == -1:
        return None
    return text[4:end]
