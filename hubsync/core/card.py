"""The model card of a checkpoint revision: its context from the training record, its front matter, its loss plot.

Everything here is pure: a Checkpoint and the user's options in, text out. The context is what a
template sees (documented in the README); the packaged template is templates/model_card.md.j2.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import jinja2

from .checkpoint import EVAL_TIMINGS, Checkpoint, finite_number
from .errors import BaseModelError, TemplateError
from .escape import safe_text, yaml_front_matter
from .render import RenderError, render, render_file

PLOT_FILE = "training_loss.svg"
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?\Z")

# The Hub's pipeline types (huggingface.js packages/tasks/src/pipelines.ts). text2text-generation is not one any
# more: in July 2025 the Hub folded it into text-generation (huggingface/huggingface.js#1590, "No more
# text2text"; transformers 5 deleted its Text2TextGenerationPipeline, huggingface/transformers#43256).
PIPELINE_TAGS = {
    "CAUSAL_LM": "text-generation",
    "SEQ_2_SEQ_LM": "text-generation",
    "SEQ_CLS": "text-classification",
    "TOKEN_CLS": "token-classification",
    "QUESTION_ANS": "question-answering",
    "FEATURE_EXTRACTION": "feature-extraction",
}
AUTO_CLASSES = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}
# A full fine-tune's head, read from the end of config.json's `architectures` name: the transformers Auto class
# that loads it and the pipeline type the Hub files it under (None: no pipeline type fits).
ARCHITECTURE_HEADS = (
    ("ForCausalLM", "AutoModelForCausalLM", "text-generation"),
    ("ForSequenceClassification", "AutoModelForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "AutoModelForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "AutoModelForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "AutoModelForMaskedLM", "fill-mask"),
    ("ForMultipleChoice", "AutoModelForMultipleChoice", None),
)
# Encoder-decoder text models whose *ForConditionalGeneration class is a seq2seq language model (others of that
# name read speech or images: Whisper, LLaVA, ...).
TEXT_SEQ2SEQ_MODEL_TYPES = frozenset(
    {"bart", "mbart", "t5", "mt5", "umt5", "longt5", "pegasus", "pegasus_x", "marian", "led", "plbart"}
)
_CLASS_NAME_RE = re.compile(r"^[A-Z][A-Za-z0-9_]{0,99}\Z")

# The hyperparameters a card shows, in this order, by their TrainingArguments names.
HYPERPARAMETERS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "optim",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "num_train_epochs",
    "max_steps",
    "seed",
    "bf16",
    "fp16",
    "gradient_checkpointing",
)
PEFT_NAMES = {
    "LORA": "LoRA",
    "ADALORA": "AdaLoRA",
    "IA3": "IA³",
    "LOHA": "LoHa",
    "LOKR": "LoKr",
    "PREFIX_TUNING": "prefix-tuning",
    "PROMPT_TUNING": "prompt-tuning",
    "P_TUNING": "P-tuning",
}
LORA_FIELDS = (
    "peft_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "bias",
    "task_type",
    "use_rslora",
    "use_dora",
    "modules_to_save",
    "peft_version",
)


@dataclass(frozen=True)
class CardSettings:
    """What the user chooses for cards (flags or configuration)."""

    base_model: str | None = None  # overrides adapter_config's base_model_name_or_path
    license: str | None = None
    datasets: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    versions: Mapping[str, str] = field(default_factory=dict)  # framework versions where hubsync runs
    template: str | None = None  # the text of a user's template, replacing the packaged one
    template_name: str | None = None  # how to name that template in errors


def is_hub_id(name: str) -> bool:
    return bool(_HUB_ID_RE.match(name)) and ".." not in name and not name.startswith((".", "~"))


def resolve_base_model(checkpoint: Checkpoint, override: str | None) -> str:
    """The base model's Hub id: --base-model, else adapter_config's; never a local path."""
    found = (
        override
        or (checkpoint.adapter_config or {}).get("base_model_name_or_path")
        or (checkpoint.model_config or {}).get("_name_or_path")
    )
    if not isinstance(found, str) or not found:
        raise BaseModelError(None)
    if not is_hub_id(found):
        raise BaseModelError("<local path>" if override is None else found)
    return found


def architecture_of(checkpoint: Checkpoint) -> str | None:
    """The model class a full fine-tune's config.json names (`architectures`), when it names one class."""
    names = (checkpoint.model_config or {}).get("architectures")
    if not isinstance(names, list) or not names or not isinstance(names[0], str):
        return None
    return names[0] if _CLASS_NAME_RE.match(names[0]) else None


def full_model_head(checkpoint: Checkpoint) -> tuple[str, str | None] | None:
    """For a full fine-tune (config.json with `architectures`, no adapter): the transformers class that loads it,
    and its pipeline type. An architecture of no known head is loaded by its own class, with no pipeline type."""
    architecture = architecture_of(checkpoint)
    if checkpoint.adapter_config is not None or architecture is None:
        return None
    for suffix, auto_class, pipeline_tag in ARCHITECTURE_HEADS:
        if architecture.endswith(suffix):
            return auto_class, pipeline_tag
    config = checkpoint.model_config or {}
    if architecture.endswith("ForConditionalGeneration") and config.get("model_type") in TEXT_SEQ2SEQ_MODEL_TYPES:
        return "AutoModelForSeq2SeqLM", PIPELINE_TAGS["SEQ_2_SEQ_LM"]
    if architecture.endswith("Model"):
        return "AutoModel", "feature-extraction"
    return architecture, None


@dataclass(frozen=True)
class Evaluation:
    step: int | None
    epoch: float | None
    training_loss: float | None
    validation_loss: float | None
    metrics: Mapping[str, float]  # other eval_* metrics, without the prefix


_EVAL_NOISE = EVAL_TIMINGS | {"eval_loss"}


MAX_CARD_ROWS = 100  # evaluations in the card's table; trainer_state.json holds them all
MAX_CARD_METRICS = 12  # metric columns beside the losses


def spread(rows: Sequence[Evaluation], limit: int) -> list[Evaluation]:
    """At most `limit` of `rows`, evenly spaced, the first and the last among them."""
    if len(rows) <= limit:
        return list(rows)
    last = len(rows) - 1
    return [rows[round(i * last / (limit - 1))] for i in range(limit)]


def evaluations(log_history: Sequence[Mapping[str, Any]]) -> list[Evaluation]:
    """One row per evaluation, with the newest training loss logged at or before it."""
    rows = []
    last_loss: float | None = None
    for entry in log_history:
        loss = finite_number(entry.get("loss"))
        if loss is not None:
            last_loss = loss
        if "eval_loss" not in entry and not any(k.startswith("eval_") and k not in _EVAL_NOISE for k in entry):
            continue
        metrics = {
            k[len("eval_") :]: v
            for k, v in entry.items()
            if k.startswith("eval_") and k not in _EVAL_NOISE and finite_number(v) is not None
        }
        step = entry.get("step")
        rows.append(
            Evaluation(
                step=step if isinstance(step, int) and not isinstance(step, bool) else None,
                epoch=finite_number(entry.get("epoch")),
                training_loss=last_loss,
                validation_loss=finite_number(entry.get("eval_loss")),
                metrics=metrics,
            )
        )
    return rows


def loss_series(log_history: Sequence[Mapping[str, Any]], key: str) -> list[tuple[float, float]]:
    points = []
    for entry in log_history:
        step, value = finite_number(entry.get("step")), finite_number(entry.get(key))
        if step is not None and value is not None:
            points.append((step, value))
    return points


def _plain(value: Any) -> Any:
    """Values as a card shows them: no paths, no objects."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def card_context(checkpoint: Checkpoint, options: CardSettings, repo_id: str, revision: str) -> dict[str, Any]:
    """Everything a card template sees. Documented in the README; keep the names stable."""
    from hubsync import __version__

    base_model = resolve_base_model(checkpoint, options.base_model)
    state = checkpoint.trainer_state
    history = list(state.log_history) if state else []
    adapter = dict(checkpoint.adapter_config or {})
    task_type = adapter.get("task_type") if isinstance(adapter.get("task_type"), str) else None
    pipeline_tag = PIPELINE_TAGS.get(task_type or "")
    auto_class = AUTO_CLASSES.get(task_type or "", "AutoModel")
    peft_type = adapter.get("peft_type") if isinstance(adapter.get("peft_type"), str) else None
    # FSDP's LoRA weights, consolidated, with no adapter_config.json (neither the run folder's nor
    # --adapter-config): an adapter all the same, which PEFT cannot load until the config is published
    configless_adapter = peft_type is None and checkpoint.fsdp_weights == "adapter_model.safetensors"
    full_model = full_model_head(checkpoint)
    if full_model is not None:
        auto_class, pipeline_tag = full_model
    args = checkpoint.training_args or {}
    hyperparameters = {k: _plain(args[k]) for k in HYPERPARAMETERS if k in args and _is_scalar(args[k])}
    total = _total_batch_size(args)
    if total is not None:
        hyperparameters["total_train_batch_size"] = total
    all_rows = evaluations(history)
    rows = spread(all_rows, MAX_CARD_ROWS)  # a long run logs thousands: the card shows some, evenly, and the last
    all_metrics = sorted({name for row in all_rows for name in row.metrics})
    metric_names = all_metrics[:MAX_CARD_METRICS]
    best = None
    if state and state.best_metric is not None:
        best_ckpt = PurePosixPath(state.best_model_checkpoint).name if state.best_model_checkpoint else None
        metric = args.get("metric_for_best_model") if isinstance(args.get("metric_for_best_model"), str) else None
        best = {"metric": state.best_metric, "checkpoint": best_ckpt, "name": metric or "metric"}
    train_loss = loss_series(history, "loss")
    eval_loss = loss_series(history, "eval_loss")
    return {
        "repo_id": repo_id,
        "repo_name": repo_id.split("/")[-1],
        "revision": revision,
        "checkpoint": checkpoint.name,
        "run": checkpoint.run_name,
        "step": checkpoint.step,
        "epoch": state.epoch if state else None,
        "base_model": base_model,
        "pipeline_tag": pipeline_tag,
        "auto_class": auto_class,
        "full_model": full_model is not None,
        "architecture": architecture_of(checkpoint),
        "peft_type": peft_type,
        "peft_name": PEFT_NAMES.get(peft_type or "", peft_type),
        "configless_adapter": configless_adapter,
        "peft": {k: _plain(adapter[k]) for k in LORA_FIELDS if k in adapter},
        "hyperparameters": hyperparameters,
        "trainer": dict(state.settings) if state else {},
        "evaluations": rows,
        "evaluations_total": len(all_rows),
        "metric_names": metric_names,
        "metric_names_total": len(all_metrics),
        "latest_eval": dict(state.latest_eval) if state else {},
        "best": best,
        "plot": PLOT_FILE if train_loss or eval_loss else None,
        "versions": {k: v for k, v in options.versions.items() if peft_type or k != "peft"},  # no adapter: no PEFT
        "peft_version": adapter.get("peft_version"),
        "transformers_version": (checkpoint.model_config or {}).get("transformers_version"),
        "hubsync_version": __version__,
        "git_commit": checkpoint.git_commit,
        "license": options.license,
        "datasets": list(options.datasets),
        "languages": list(options.languages),
        "front_matter": front_matter(
            checkpoint, options, repo_id, base_model, pipeline_tag, peft_type, adapter=configless_adapter
        ),
    }


def _total_batch_size(args: Mapping[str, Any]) -> int | None:
    """Per-device batch size, times gradient accumulation, times processes, as the Trainer counts it."""
    state = args.get("distributed_state")
    factors: list[Any] = [
        args.get("per_device_train_batch_size"),
        args.get("gradient_accumulation_steps"),
        state.get("num_processes", 1) if isinstance(state, dict) else 1,
    ]
    if not all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in factors):
        return None
    return math.prod(int(f) for f in factors)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def front_matter(
    checkpoint: Checkpoint,
    options: CardSettings,
    repo_id: str,
    base_model: str,
    pipeline_tag: str | None,
    peft_type: str | None,
    *,
    adapter: bool = False,  # PEFT weights whose type is unknown (no adapter_config.json)
) -> str:
    """The YAML metadata the Hub reads, without the --- fences."""
    if peft_type or adapter:
        kind = [peft_type.lower()] if peft_type else []
        tags = ["peft", *kind, f"base_model:adapter:{base_model}", "hubsync", *options.tags]
        meta: dict[str, Any] = {"base_model": base_model, "base_model_relation": "adapter", "library_name": "peft"}
    else:
        tags = ["transformers", f"base_model:finetune:{base_model}", "hubsync", *options.tags]
        meta = {"base_model": base_model, "base_model_relation": "finetune", "library_name": "transformers"}
    if pipeline_tag:
        meta["pipeline_tag"] = pipeline_tag
    if options.license:
        meta["license"] = options.license
    if options.datasets:
        meta["datasets"] = list(options.datasets)
    if options.languages:
        meta["language"] = list(options.languages)
    meta["tags"] = list(dict.fromkeys(tags))
    state = checkpoint.trainer_state
    metrics = [
        {
            "type": "loss" if k == "eval_loss" else k[len("eval_") :],
            "value": float(f"{v:.6g}"),
            "name": "Validation loss" if k == "eval_loss" else k[len("eval_") :].replace("_", " ").capitalize(),
        }
        for k, v in sorted((state.latest_eval if state else {}).items())
        if k not in _EVAL_NOISE or k == "eval_loss"
    ]
    if metrics:
        # --dataset names the training data (`datasets` above). The Trainer's eval_dataset goes unnamed in its
        # record, so these results say so rather than credit them to the training data.
        meta["model-index"] = [
            {
                "name": repo_id.split("/")[-1],
                "results": [
                    {
                        "task": {"type": pipeline_tag or "other"},
                        "dataset": {"name": "evaluation set", "type": "custom"},
                        "metrics": metrics,
                    }
                ],
            }
        ]
    return yaml_front_matter(meta)  # by the YAML dumper: a metric name can hold anything, `\n---` too


def render_card(context: Mapping[str, Any], settings: CardSettings) -> str:
    if settings.template is None:
        return render("model_card.md.j2", **context)
    try:
        return render_file(settings.template, **context)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(settings.template_name or "template", f"{exc.message} (line {exc.lineno})") from exc
    except RenderError as exc:  # how the child that renders it failed, or the bound it went past
        raise TemplateError(settings.template_name or "template", str(exc)) from exc
    except Exception as exc:  # a user's template can fail at run time in any way: 1/0, a bad format, ...
        raise TemplateError(settings.template_name or "template", f"{type(exc).__name__}: {exc}") from exc


def card_files(
    checkpoint: Checkpoint,
    settings: CardSettings,
    repo_id: str,
    revision: str,
    context: Mapping[str, Any] | None = None,
) -> dict[str, bytes]:
    """The card (README.md) and its plot, as they are committed beside the checkpoint's files."""
    if context is None:
        context = card_context(checkpoint, settings, repo_id, revision)
    files = {"README.md": render_card(context, settings).encode()}
    if context["plot"]:
        state = checkpoint.trainer_state
        svg = loss_plot_svg(state.log_history if state else (), f"{repo_id} @ {revision}: loss against step")
        if svg is not None:
            files[PLOT_FILE] = svg.encode()
    return files


# -- the plot -------------------------------------------------------------------------------------------------------

_W, _H = 720, 400
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 24, 48
MAX_POINTS = 1500


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most about MAX_POINTS points: per bucket of steps keep the first, lowest, highest and last."""
    if len(points) <= MAX_POINTS:
        return points
    bucket = math.ceil(len(points) / (MAX_POINTS / 4))
    out: list[tuple[float, float]] = []
    for i in range(0, len(points), bucket):
        chunk = points[i : i + bucket]
        keep = {
            0,
            len(chunk) - 1,
            min(range(len(chunk)), key=lambda j: chunk[j][1]),
            max(range(len(chunk)), key=lambda j: chunk[j][1]),
        }
        out.extend(chunk[j] for j in sorted(keep))
    return out


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def loss_plot_svg(log_history: Sequence[Mapping[str, Any]], title: str) -> str | None:
    """Training and validation loss against step, as a standalone SVG; None when nothing was logged."""
    series = [
        ("training loss", "#1f77b4", _thin(loss_series(log_history, "loss"))),
        ("validation loss", "#d62728", _thin(loss_series(log_history, "eval_loss"))),
    ]
    series = [s for s in series if s[2]]
    if not series:
        return None
    xs = [x for _, _, pts in series for x, _ in pts]
    ys = [y for _, _, pts in series for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if not all(math.isfinite(v) for v in (x1 - x0, y1 - y0, (y1 - y0) * 1.1)):
        return None  # values so far apart (1e308 and -1e308) that no axis spans them
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.05 or abs(y0) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def px(x: float) -> float:
        return _LEFT + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return _TOP + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
        'font-family="sans-serif" font-size="12">',
        f"<title>{_escape(title)}</title>",
        f'<rect x="0" y="0" width="{_W}" height="{_H}" fill="white"/>',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>',
    ]
    for t in _ticks(x0, x1):
        parts.append(f'<line x1="{px(t):.1f}" y1="{_TOP + ph}" x2="{px(t):.1f}" y2="{_TOP + ph + 4}" stroke="#888"/>')
        parts.append(f'<text x="{px(t):.1f}" y="{_TOP + ph + 17}" text-anchor="middle">{_fmt(t)}</text>')
    for t in _ticks(y0, y1):
        parts.append(f'<line x1="{_LEFT - 4}" y1="{py(t):.1f}" x2="{_LEFT + pw}" y2="{py(t):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{_LEFT - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    parts.append(f'<text x="{_LEFT + pw / 2}" y="{_H - 10}" text-anchor="middle">step</text>')
    parts.append(
        f'<text x="14" y="{_TOP + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {_TOP + ph / 2})">loss</text>'
    )
    for i, (label, colour, pts) in enumerate(series):
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        if len(pts) <= 60:
            parts.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in pts)
        ly = _TOP + 14 + i * 16
        parts.append(
            f'<line x1="{_LEFT + pw - 130}" y1="{ly - 4}" x2="{_LEFT + pw - 110}" y2="{ly - 4}" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
        parts.append(f'<text x="{_LEFT + pw - 104}" y="{ly}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _escape(text: str) -> str:
    """Text for an SVG (XML) element: no markup, and no control character (XML allows none)."""
    text = safe_text(text).replace("\t", " ").replace("\n", " ")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
