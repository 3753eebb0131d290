"""A tiny real LoRA training run (or full fine-tune), for the demo and the tests.

``train_tiny_lora`` trains a tiny, randomly initialised Llama (built from a
``LlamaConfig`` in code, nothing is downloaded) wrapped with a PEFT LoRA
adapter, using the real ``transformers.Trainer`` on CPU, so that the
``checkpoint-N`` folders it writes are exactly what real users get:
adapter_model.safetensors (or adapter_model.bin), adapter_config.json,
README.md, trainer_state.json, training_args.bin, optimizer.pt, scheduler.pt
and rng_state.pth.

torch / transformers / peft (hubsync's train extra) are imported inside the
functions only, so this module can be imported without them; a function
that needs one raises MissingExtraError when it is not installed.

Command line::

    python -m hubsync.tinyrun OUT_DIR [--max-steps N] [--save-steps N] [--save-total-limit N] [--step-sleep S]
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from hubsync.extras import needs_extra

__all__ = ["BASE_MODEL_ID", "tiny_llama_config", "train_tiny_lora"]

#: What ends up as ``base_model_name_or_path`` in every ``adapter_config.json``.
#: A Hub-style id rather than a local path (a model built from a config has an
#: empty ``name_or_path``, which PEFT would write as ``null``).
BASE_MODEL_ID = "hubsync/tiny-random-llama"

_VOCAB_SIZE = 128
_SEQ_LEN = 32
_N_TRAIN = 64
_N_EVAL = 16

# Warnings the libraries emit during this run that we know about and that say
# nothing useful here.  Anything else is left visible.
TINY_RUN = "the tiny training run (hubsync.tinyrun)"

_KNOWN_NOISE = (
    # peft 0.21 reads model.is_gradient_checkpointing, deprecated in transformers 5.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    # PEFT's save_embedding_layers="auto" check cannot look up
    # BASE_MODEL_ID's config.json (we run with HF_HUB_OFFLINE=1, see below).
    (UserWarning, r"Could not find a config file in "),
    (UserWarning, r"Unable to fetch remote file"),
)


def tiny_llama_config() -> Any:
    """The tiny Llama's configuration; the same every time, so a base model can be rebuilt to load an adapter."""
    with needs_extra(TINY_RUN):
        from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        # No tokenizer: keep the special token ids inside the vocab.
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def _make_examples(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` deterministic causal-LM examples: arithmetic sequences of token ids, which a tiny model can learn."""
    with needs_extra(TINY_RUN):
        import torch

    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, _VOCAB_SIZE, (n, 1), generator=gen)
    strides = torch.randint(1, 4, (n, 1), generator=gen)
    ids = (starts + strides * torch.arange(_SEQ_LEN)) % _VOCAB_SIZE
    return [
        {
            "input_ids": row.clone(),
            "attention_mask": torch.ones_like(row),
            "labels": row.clone(),
        }
        for row in ids
    ]


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Set HF_HUB_OFFLINE=1 for the duration, restoring the previous value.

    On every save PEFT (save_embedding_layers="auto") checks whether the base
    model's config.json exists on the Hub, i.e. it makes a network request for
    ``BASE_MODEL_ID``.  PEFT skips that request when HF_HUB_OFFLINE is set
    (it reads the variable at call time).  Not thread-safe (os.environ).
    """
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def _bin_adapter_callback() -> Any:
    with needs_extra(TINY_RUN):
        from transformers import TrainerCallback

    class BinAdapterCallback(TrainerCallback):
        """Rewrite each checkpoint's adapter as adapter_model.bin (see below)."""

        def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
            if not args.should_save or model is None:
                return control
            ckpt = pathlib.Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                model.save_pretrained(str(ckpt), safe_serialization=False)
                (ckpt / "adapter_model.safetensors").unlink(missing_ok=True)
            return control

    return BinAdapterCallback()


def _slow_callback(seconds: float) -> Any:
    import time

    with needs_extra(TINY_RUN):
        from transformers import TrainerCallback

    class SlowCallback(TrainerCallback):
        """Sleep after every step: a tiny run then takes about as long as a watcher needs to see it."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            time.sleep(seconds)
            return control

    return SlowCallback()


def train_tiny_lora(
    output_dir: str | os.PathLike[str],
    *,
    max_steps: int = 30,
    save_steps: int = 10,
    eval_steps: int | None = 10,
    seed: int = 0,
    safe_serialization: bool = True,
    resume_from_checkpoint: str | None = None,
    save_only_model: bool = False,
    save_total_limit: int | None = None,
    metric_for_best_model: str | None = None,
    greater_is_better: bool | None = None,
    step_sleep: float = 0.0,
    lora: bool = True,
    callbacks: Sequence[Any] = (),
    deepspeed_stage: int | None = None,
) -> pathlib.Path:
    """Run a tiny LoRA fine-tune on CPU and return ``output_dir`` as a Path.

    The real Trainer writes ``output_dir/checkpoint-N`` every ``save_steps``
    steps and at the last step.  With ``safe_serialization=False`` the adapter
    is stored as ``adapter_model.bin`` instead of ``adapter_model.safetensors``,
    like an older PEFT checkpoint.  ``resume_from_checkpoint`` is passed to
    ``trainer.train`` unchanged (a path, or True for the latest checkpoint).
    With ``save_only_model=True`` the checkpoints hold no optimizer.pt,
    scheduler.pt or rng_state.pth (and cannot be resumed from).
    ``save_total_limit``, ``metric_for_best_model`` and ``greater_is_better``
    go to TrainingArguments unchanged (the Trainer then deletes older
    checkpoints, and records ``best_model_checkpoint``).  ``step_sleep``
    seconds are slept after each step, so that a process watching the run
    sees each checkpoint appear.  With ``lora=False`` the whole model is
    trained (a full fine-tune): checkpoints hold model.safetensors and a
    config.json naming ``LlamaForCausalLM``, and no adapter.  ``callbacks``
    go to the Trainer after tinyrun's own (a HubsyncCallback, say).
    With ``deepspeed_stage`` (1, 2 or 3) the run trains under DeepSpeed ZeRO
    on CPU (gloo): launch it with torchrun and DS_ACCELERATOR=cpu, one process
    a rank; checkpoints then hold DeepSpeed's global_stepN/ folder, ``latest``
    and ``zero_to_fp32.py`` instead of optimizer.pt.
    """
    # The tiny run trains on CPU. DeepSpeed, which transformers imports when it is installed (the test extra
    # brings it), would otherwise look for a GPU and print a warning line that it found none.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with needs_extra(TINY_RUN):
        import transformers
        from peft import LoraConfig, get_peft_model
        from transformers import (
            LlamaForCausalLM,
            PrinterCallback,
            Trainer,
            TrainingArguments,
        )

    output_dir = pathlib.Path(output_dir)

    prev_verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        with warnings.catch_warnings(), _hub_offline():
            for category, message in _KNOWN_NOISE:
                warnings.filterwarnings("ignore", message=message, category=category)

            transformers.set_seed(seed)

            config = tiny_llama_config()
            # get_peft_model() copies the model's name_or_path into the LoRA
            # config's base_model_name_or_path (written to adapter_config.json);
            # the model takes it from config.name_or_path when constructed.
            # A from-config model would otherwise have "" and PEFT writes null.
            config.name_or_path = BASE_MODEL_ID
            base_model = LlamaForCausalLM(config)
            base_model.name_or_path = BASE_MODEL_ID

            model = (
                base_model
                if not lora
                else get_peft_model(
                    base_model,
                    LoraConfig(
                        r=4,
                        lora_alpha=8,
                        lora_dropout=0.0,
                        target_modules=["q_proj", "v_proj"],
                        task_type="CAUSAL_LM",
                    ),
                )
            )

            args = TrainingArguments(
                output_dir=str(output_dir),
                max_steps=max_steps,
                save_strategy="steps",
                save_steps=save_steps,
                eval_strategy="steps" if eval_steps else "no",
                eval_steps=eval_steps or None,
                logging_steps=5,
                per_device_train_batch_size=4,
                per_device_eval_batch_size=8,
                learning_rate=1e-3,
                seed=seed,
                data_seed=seed,
                report_to=[],
                use_cpu=True,
                disable_tqdm=True,
                save_only_model=save_only_model,
                save_total_limit=save_total_limit,
                metric_for_best_model=metric_for_best_model,
                greater_is_better=greater_is_better,
                dataloader_num_workers=0,
                deepspeed=_deepspeed_config(deepspeed_stage) if deepspeed_stage else None,
            )

            all_callbacks = []
            if not safe_serialization:
                # transformers 5.x has no TrainingArguments.save_safetensors any
                # more, and Trainer._save() calls PeftModel.save_pretrained()
                # with its default safe_serialization=True: the Trainer cannot
                # be told to write a .bin adapter.  So right after each
                # checkpoint is saved, this on_save callback re-saves the
                # adapter with model.save_pretrained(ckpt,
                # safe_serialization=False) (PEFT then torch.save()s
                # adapter_model.bin) and deletes adapter_model.safetensors, so
                # the folder looks like an older PEFT checkpoint.  Resuming
                # from such a folder works: Trainer/PEFT fall back to
                # adapter_model.bin when there is no safetensors file.
                all_callbacks.append(_bin_adapter_callback())
            if step_sleep > 0:
                all_callbacks.append(_slow_callback(step_sleep))
            all_callbacks.extend(callbacks)

            trainer = Trainer(
                model=model,
                args=args,
                train_dataset=_make_examples(_N_TRAIN, seed),
                eval_dataset=_make_examples(_N_EVAL, seed + 1) if eval_steps else None,
                callbacks=all_callbacks,
            )
            # With disable_tqdm=True the Trainer prints every log dict instead
            # of drawing progress bars; drop that printer to stay quiet.  The
            # logs still go to trainer_state.json's log_history.
            trainer.remove_callback(PrinterCallback)
            trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    finally:
        transformers.logging.set_verbosity(prev_verbosity)

    return output_dir


def _deepspeed_config(stage: int) -> dict[str, Any]:
    """The smallest DeepSpeed config the Trainer takes: ZeRO at `stage`, the rest from TrainingArguments."""
    return {
        "zero_optimization": {"stage": stage},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
    }


def _checkpoint_dirs(output_dir: pathlib.Path) -> list[pathlib.Path]:
    found = []
    for p in output_dir.glob("checkpoint-*"):
        step = p.name.rsplit("-", 1)[-1]
        if p.is_dir() and step.isdigit():
            found.append((int(step), p))
    return [p for _, p in sorted(found)]


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m hubsync.tinyrun",
        description="Run a tiny real LoRA training on CPU and write Trainer checkpoints.",
    )
    parser.add_argument("output_dir", help="where the checkpoint-N folders are written")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--bin", action="store_true", help="save adapters as adapter_model.bin, as older PEFT did")
    parser.add_argument("--save-total-limit", type=int, help="keep only the N newest checkpoints, as the Trainer does")
    parser.add_argument("--best-metric", help="metric_for_best_model, such as eval_loss")
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep after each step")
    parser.add_argument("--full", action="store_true", help="train the whole model, without LoRA (a full fine-tune)")
    parser.add_argument("--no-eval", action="store_true", help="do not evaluate during training")
    parser.add_argument("--resume", help="a checkpoint folder to resume training from")
    parser.add_argument(
        "--deepspeed-stage",
        type=int,
        choices=(1, 2, 3),
        help="train under DeepSpeed ZeRO at this stage (launch with torchrun, DS_ACCELERATOR=cpu)",
    )
    ns = parser.parse_args(argv)

    out = train_tiny_lora(
        ns.output_dir,
        max_steps=ns.max_steps,
        save_steps=ns.save_steps,
        safe_serialization=not ns.bin,
        save_total_limit=ns.save_total_limit,
        metric_for_best_model=ns.best_metric,
        step_sleep=ns.step_sleep,
        lora=not ns.full,
        eval_steps=None if ns.no_eval else 10,
        resume_from_checkpoint=ns.resume,
        deepspeed_stage=ns.deepspeed_stage,
    )
    for p in _checkpoint_dirs(out):
        print(p)
    return 0


if __name__ == "__main__":
    from hubsync.cli.errors import message_for
    from hubsync.core.errors import MissingExtraError

    try:
        raise SystemExit(_main())
    except MissingExtraError as exc:
        raise SystemExit(message_for(exc)) from None
