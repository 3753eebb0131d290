"""The main branch's index of checkpoint revisions: kept as .hubsync/index.json, shown as main's README.md. Pure."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import yaml

from .checkpoint import EVAL_TIMINGS, TrainerState, finite_number, loads_json
from .conversion import is_resumable
from .escape import clean_front_matter
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
    """Main's README.md: the repository's checkpoints, each linked to its revision. `front_matter` may come from
    main's README on the Hub, which anyone with write access may have edited: it is written again by the YAML
    dumper (or replaced, when it is not a YAML mapping)."""
    front_matter = clean_front_matter(front_matter, FALLBACK_FRONT_MATTER)
    metric_names = sorted({m for e in entries for m in (e.get("metrics") or {})})
    rows = [{**e, "url": f"{web_url}/tree/{quote(e['revision'], safe='')}"} for e in entries]
    text = render(
        "index_card.md.j2",
        repo_id=repo_id,
        repo_name=repo_id.split("/")[-1],
        entries=rows,
        metric_names=metric_names,
        front_matter=front_matter,
        adapter=_is_adapter(front_matter),
    )
    return text.encode()


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
