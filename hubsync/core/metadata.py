"""A model card's metadata checked locally as the Hub checks it (POST /api/validate-yaml), before anything is pushed:
a YAML mapping, a `license` and a `pipeline_tag` from the Hub's lists, a `model-index` of the Hub's shape."""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

import yaml

from .errors import InvalidLicenseError, TemplateError

# The license identifiers the Hub accepts in a card's `license`, from its "source of truth": hub-docs,
# docs/hub/repositories-licenses.md (the "region licenses" table), commit 242f4a1 (2026-08). The Hub refuses any
# other value (huggingface_hub issue #4218 quotes its message); `other` wants `license_name` (and a LICENSE file).
HUB_LICENSES: tuple[str, ...] = (
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
    "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0",
    "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1",
    "lgpl-3.0", "isc", "h-research", "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0",
    "odc-by", "odbl", "openmdw-1.0", "openmdw-1.1", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa",
    "unlicense", "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license", "fair-noncommercial-research-license", "llama2",
    "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "grok2-community", "gemma", "unknown", "other",
)  # fmt: skip
_KNOWN = frozenset(HUB_LICENSES)

# The Hub's pipeline types, the only values it takes for a model card's `pipeline_tag`: huggingface.js
# packages/tasks/src/pipelines.ts (PIPELINE_DATA's keys), without text2text-generation, which the Hub folded into
# text-generation in July 2025 (huggingface.js#1590).
PIPELINE_TYPES: tuple[str, ...] = (
    "biology", "text-classification", "token-classification", "table-question-answering", "question-answering",
    "zero-shot-classification", "translation", "summarization", "feature-extraction", "text-generation",
    "fill-mask", "sentence-similarity", "text-to-speech", "text-to-audio", "automatic-speech-recognition",
    "audio-to-audio", "audio-classification", "audio-text-to-text", "voice-activity-detection", "depth-estimation",
    "image-classification", "object-detection", "image-segmentation", "text-to-image", "image-to-text",
    "image-to-image", "image-to-video", "unconditional-image-generation", "video-classification",
    "reinforcement-learning", "robotics", "tabular-classification", "tabular-regression", "tabular-to-text",
    "table-to-text", "multiple-choice", "text-ranking", "text-retrieval", "time-series-forecasting", "text-to-video",
    "image-text-to-text", "visual-question-answering", "document-question-answering",
    "zero-shot-image-classification", "graph-ml", "mask-generation", "zero-shot-object-detection", "text-to-3d",
    "image-to-3d", "image-feature-extraction", "video-text-to-text", "keypoint-detection",
    "visual-document-retrieval", "any-to-any", "other",
)  # fmt: skip
_PIPELINES = frozenset(PIPELINE_TYPES)


def license_problem(value: Any) -> str | None:
    """Why the Hub would refuse this `license` value (a name, or a list of names), or None."""
    names = value if isinstance(value, list) else [value]
    for name in names:
        if not isinstance(name, str) or name not in _KNOWN:
            return f"{name!r} is not one of the Hub's license identifiers"
    return None


def check_license(value: str | None, source: str = "--license or the license setting") -> str | None:
    """A license the Hub accepts, or InvalidLicenseError with the nearest identifier it does accept."""
    if value is None or value in _KNOWN:
        return value
    lowered = value.strip().lower().replace(" ", "-")
    close = [lowered] if lowered in _KNOWN else difflib.get_close_matches(lowered, HUB_LICENSES, n=1, cutoff=0.6)
    raise InvalidLicenseError(value, source, close[0] if close else None)


def check_card_metadata(card: bytes, template: str) -> None:
    """The card's front matter is what the Hub reads as metadata: a YAML mapping whose `license` it knows.
    `template` names where the card came from, for the message."""
    text = card.decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return
    end = text.find("\n---", 3)
    if end < 0:
        raise TemplateError(template, "its front matter (the metadata between --- lines) is not closed by ---")
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError as exc:
        raise TemplateError(template, f"its front matter is not valid YAML ({_yaml_problem(exc)})") from exc
    except RecursionError as exc:
        raise TemplateError(template, "its front matter is nested too deeply") from exc
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise TemplateError(template, "its front matter is YAML but not a mapping of keys to values")
    if "license" in meta and license_problem(meta["license"]) is not None:
        found = meta["license"]
        check_license(found if isinstance(found, str) else repr(found), f"set in {template}")
    if "pipeline_tag" in meta and meta["pipeline_tag"] not in _PIPELINES:
        close = difflib.get_close_matches(str(meta["pipeline_tag"]), PIPELINE_TYPES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise TemplateError(
            template, f"its pipeline_tag {meta['pipeline_tag']!r} is not one of the Hub's pipeline types{hint}"
        )
    if "model-index" in meta and (problem := model_index_problem(meta["model-index"])) is not None:
        raise TemplateError(template, f"its model-index is not of the shape the Hub takes: {problem}")


def model_index_problem(value: Any) -> str | None:
    """What the Hub would refuse in a card's `model-index`, or None: it takes a list of {name, results: [{task:
    {type}, dataset: {type, name}, metrics: [{type, value}]}]} (hub-docs modelcard.md, the fields marked Required),
    a metric's value a finite number or a string."""
    if not isinstance(value, list):
        return "not a list"
    for i, model in enumerate(value):
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            return f"entry {i} needs a name"
        results = model.get("results")
        if not isinstance(results, list):
            return f"entry {i} needs a list of results"
        for j, result in enumerate(results):
            where = f"result {j} of entry {i}"
            if not isinstance(result, dict):
                return f"{where} is not a mapping"
            task, dataset, metrics = result.get("task"), result.get("dataset"), result.get("metrics")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                return f"{where} needs a task with a type"
            if not (
                isinstance(dataset, dict)
                and isinstance(dataset.get("name"), str)
                and isinstance(dataset.get("type"), str)
                and re.fullmatch(r"(?:[\w-]+/)?[\w\-.]+", dataset["type"])
            ):
                return f"{where} needs a dataset with a name and a type (a Hub dataset id)"
            if not isinstance(metrics, list):
                return f"{where} needs a list of metrics"
            for metric in metrics:
                number = metric.get("value") if isinstance(metric, dict) else None
                if (
                    not isinstance(metric, dict)
                    or not isinstance(metric.get("type"), str)
                    or isinstance(number, bool)
                    or not isinstance(number, (int, float, str))
                    or (isinstance(number, float) and not math.isfinite(number))
                ):
                    return f"each metric of {where} needs a type and a value (a finite number or a string)"
    return None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What PyYAML found, and on which line of the card (the front matter starts on its second line)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        return f"line {mark.line + 1}: {exc.problem}" if mark is not None else str(exc.problem)
    return " ".join(str(exc).split())
