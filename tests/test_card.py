"""Model cards: what they say, that the Hub can read them, and that they publish nothing private."""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import push
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.repocard_data import eval_results_to_model_index

from hubsync.cli import cli
from hubsync.core.card import CardSettings, card_files, loss_plot_svg
from hubsync.core.checkpoint import Checkpoint, CheckpointFile, TrainerState, parse_trainer_state, read_checkpoint
from hubsync.core.errors import BaseModelError, TemplateError
from hubsync.localhub import RunningHub

GOLDEN = Path(__file__).parent / "golden"
VERSIONS = {"transformers": "5.0.0", "peft": "0.21.0"}

LOG_HISTORY: list[dict[str, Any]] = [
    {"step": 5, "epoch": 0.5, "loss": 2.5, "learning_rate": 0.001, "grad_norm": 1.0},
    {"step": 10, "epoch": 1.0, "loss": 2.0, "learning_rate": 0.0009},
    {"step": 10, "epoch": 1.0, "eval_loss": 2.1, "eval_accuracy": 0.5, "eval_runtime": 0.1},
    {"step": 15, "epoch": 1.5, "loss": 1.5},
    {"step": 20, "epoch": 2.0, "loss": 1.25},
    {"step": 20, "epoch": 2.0, "eval_loss": 1.75, "eval_accuracy": 0.625, "eval_runtime": 0.1},
]


def crafted(**changes: Any) -> Checkpoint:
    """A checkpoint with a fixed training record: the input of the golden files."""
    state = parse_trainer_state(
        {
            "global_step": 20,
            "epoch": 2.0,
            "best_metric": 1.75,
            "best_model_checkpoint": "/home/someone/runs/demo/checkpoint-20",
            "log_history": LOG_HISTORY,
            "train_batch_size": 8,
            "max_steps": 20,
            "save_steps": 10,
            "eval_steps": 10,
            "logging_steps": 5,
        }
    )
    fields: dict[str, Any] = {
        "path": Path("/home/someone/runs/demo/checkpoint-20"),
        "display": "demo/checkpoint-20",
        "name": "checkpoint-20",
        "step": 20,
        "files": (CheckpointFile("adapter_model.safetensors", 10),),
        "trainer_state": state,
        "run_name": "demo",
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "adapter_config": {
            "peft_type": "LORA",
            "r": 8,
            "lora_alpha": 16,
            "lora_dropout": 0.05,
            "target_modules": ["q_proj", "v_proj"],
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": "meta-llama/Llama-3.1-8B",
            "peft_version": "0.21.0",
        },
        "training_args": {
            "learning_rate": 0.0002,
            "lr_scheduler_type": "cosine",
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 2,
            "seed": 42,
            "bf16": True,
            "optim": "adamw_torch",
            "output_dir": "/home/someone/runs/demo",
            "hub_token": "hf_secret",
            "distributed_state": {"num_processes": 1},
        },
    }
    fields.update(changes)
    return Checkpoint(**fields)


def render(checkpoint: Checkpoint, **settings: Any) -> dict[str, str]:
    options = CardSettings(versions=VERSIONS, **settings)
    return {k: v.decode() for k, v in card_files(checkpoint, options, "me/demo-lora", "checkpoint-20").items()}


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; rerun with UPDATE_GOLDEN=1 if that is intended"


def test_golden_card_and_plot() -> None:
    files = render(crafted(), license="apache-2.0", datasets=("tatsu-lab/alpaca",), languages=("en",))
    check_golden("card_lora.md", files["README.md"])
    check_golden("training_loss.svg", files["training_loss.svg"])


def test_the_card_parses_as_a_model_card_and_its_model_index_round_trips() -> None:
    text = render(crafted(), license="apache-2.0", datasets=("tatsu-lab/alpaca",))["README.md"]

    card = ModelCard(text)

    assert card.data.base_model == "meta-llama/Llama-3.1-8B"
    assert card.data.base_model_relation == "adapter"
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert card.data.tags == ["peft", "lora", "base_model:adapter:meta-llama/Llama-3.1-8B", "hubsync"]
    results = {(r.metric_type, r.metric_value) for r in card.data.eval_results}
    assert results == {("loss", 1.75), ("accuracy", 0.625)}
    assert {r.dataset_type for r in card.data.eval_results} == {"custom"}  # --dataset is the training data
    name, model_index = card.data.model_name, eval_results_to_model_index(card.data.model_name, card.data.eval_results)
    assert name == "demo-lora"
    assert ModelCard(text).data.to_dict()["model-index"] == model_index


def test_the_results_table_has_every_evaluation_with_its_training_loss() -> None:
    text = render(crafted())["README.md"]
    assert "| 10 | 1.00 | 2.0000 | 2.1000 | 0.5000 |" in text
    assert "| 20 | 2.00 | 1.2500 | 1.7500 | 0.6250 |" in text


def test_nothing_private_is_published() -> None:
    files = render(crafted())
    for text in files.values():
        assert "/home/someone" not in text and "hf_secret" not in text
    assert "so far: 1.7500 (checkpoint-20)." in files["README.md"]  # the best checkpoint, by its name only


def test_a_real_checkpoint_card_names_no_local_path_user_or_host(tiny_run: Path) -> None:
    files = card_files(read_checkpoint(tiny_run / "checkpoint-30"), CardSettings(), "me/tiny", "checkpoint-30")
    text = b"".join(files.values()).decode()
    assert str(tiny_run) not in text and str(Path.home()) not in text
    assert socket.gethostname() not in text
    assert not re.search(rf"\b{re.escape(getpass.getuser())}\b", text)


@pytest.mark.parametrize(
    ("case", "changes", "expected"),
    [
        (
            "no_evaluations",
            {"trainer_state": TrainerState(global_step=5, log_history=({"step": 5, "loss": 2.0},))},
            "No evaluation was logged up to this checkpoint.",
        ),
        ("no_training_args", {"training_args": None}, "The training arguments (`training_args.bin`) were not part"),
        ("no_trainer_state", {"trainer_state": None}, "No evaluation was logged up to this checkpoint."),
        (
            "nan_losses",
            {
                "trainer_state": parse_trainer_state(
                    {
                        "global_step": 2,
                        "log_history": [
                            {"step": 1, "loss": float("nan")},
                            {"step": 2, "eval_loss": float("nan")},
                            {"step": 2, "eval_loss": 1.5},
                        ],
                    }
                )
            },
            "| 2 | – | – | 1.5000 |",
        ),
        (
            "ia3_adapter",
            {
                "adapter_config": {
                    "peft_type": "IA3",
                    "task_type": "SEQ_CLS",
                    "base_model_name_or_path": "google-bert/bert-base-uncased",
                }
            },
            "AutoModelForSequenceClassification",
        ),
    ],
)
def test_missing_or_odd_fields_render_sensibly(case: str, changes: dict[str, Any], expected: str) -> None:
    text = render(crafted(**changes))["README.md"]
    assert expected in text
    assert "None" not in text.split("---", 2)[2]  # no Python None leaks into the body
    ModelCard(text)  # still a valid card


def test_an_intermediate_checkpoint_without_train_runtime_gets_its_table(tiny_run: Path) -> None:
    ckpt = read_checkpoint(tiny_run / "checkpoint-20")
    assert not any("train_runtime" in e for e in ckpt.trainer_state.log_history)  # type: ignore[union-attr]
    text = card_files(ckpt, CardSettings(), "me/tiny", "checkpoint-20")["README.md"].decode()
    assert re.search(r"\| 20 \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|", text)


def test_a_local_base_model_path_is_never_published() -> None:
    local = crafted(adapter_config={"peft_type": "LORA", "base_model_name_or_path": "/home/someone/models/llama"})
    with pytest.raises(BaseModelError):
        render(local)
    text = render(local, base_model="meta-llama/Llama-3.1-8B")["README.md"]
    assert "/home/someone" not in text and "base_model: meta-llama/Llama-3.1-8B" in text
    with pytest.raises(BaseModelError):
        render(crafted(adapter_config={"peft_type": "LORA"}))


def test_a_user_template_gets_the_same_context(tmp_path: Path) -> None:
    template = tmp_path / "card.md.j2"
    template.write_text(
        "---\n{{ front_matter }}\n---\n{{ repo_id }}@{{ revision }} step {{ step }}: "
        "{{ evaluations|length }} evaluations, lr {{ hyperparameters.learning_rate }}\n"
    )
    text = render(crafted(), template=template.read_text(), template_name="card.md.j2")["README.md"]
    assert text.endswith("me/demo-lora@checkpoint-20 step 20: 2 evaluations, lr 0.0002\n")
    with pytest.raises(TemplateError, match=r"card\.md\.j2.*no_such"):
        render(crafted(), template="{{ no_such.field }}", template_name="card.md.j2")


def test_card_command_writes_the_card_and_its_plot(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli, ["card", str(tiny_run / "checkpoint-30"), "-o", "card/README.md", "--repo", "me/tiny"]
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["Wrote card/README.md", "Wrote card/training_loss.svg"]
    assert ModelCard.load(tmp_path / "card" / "README.md").data.base_model == "hubsync/tiny-random-llama"


def test_card_command_with_a_local_base_model_says_what_to_do(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "/m"}))
    result = CliRunner().invoke(cli, ["card", str(folder)])
    assert result.exit_code == 1
    assert "--base-model" in result.stderr and "local path" in result.stderr


def test_the_plot_thins_long_histories_but_keeps_extremes() -> None:
    history = [{"step": i, "loss": 1.0 + (i % 1000 == 0) * 5.0} for i in range(1, 100_001)]
    svg = loss_plot_svg(history, "t")
    assert svg is not None
    points = re.search(r'<polyline points="([^"]+)"', svg)
    assert points is not None
    ys = [float(p.split(",")[1]) for p in points.group(1).split()]
    assert len(ys) <= 1600
    assert len(set(ys)) == 2  # both the spikes and the baseline survive thinning


def test_the_usage_snippet_really_loads_this_adapter_at_this_revision(
    checkpoint: Path, hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    """Publish the tiny base model under its id, push the adapter, then run the card's snippet as a user would."""
    from transformers import LlamaForCausalLM

    from hubsync.tinyrun import BASE_MODEL_ID, tiny_llama_config

    owner_token = hub.server.store.ensure_user(BASE_MODEL_ID.split("/")[0])
    base_dir = tmp_path / "base"
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(base_dir)
    owner = HfApi(endpoint=hub.endpoint, token=owner_token)
    owner.create_repo(BASE_MODEL_ID)
    with pytest.MonkeyPatch.context() as patch:
        import huggingface_hub.constants

        patch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
        owner.upload_folder(repo_id=BASE_MODEL_ID, folder_path=base_dir)
    result = CliRunner().invoke(
        cli, ["push", str(checkpoint), "--repo", "me/tiny"], env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    )
    assert result.exit_code == 0, result.stderr
    card = Path(api.hf_hub_download("me/tiny", "README.md", revision="checkpoint-30", cache_dir=tmp_path / "c"))
    snippet = re.search(r"```python\n(.*?)```", card.read_text(), re.S)
    assert snippet is not None
    check = (
        snippet.group(1) + "import torch\nfrom safetensors.torch import load_file\n"
        "print(sum(1 for n, _ in model.named_parameters() if 'lora_' in n))\n"
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": hub.token,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", check], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip().splitlines()[-1]) == 8  # q_proj and v_proj, A and B, in 2 layers


# -- the card fits the checkpoint (issue 14, item 7) -----------------------------------------------------------------

FULL_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "transformers_version": "5.0.0"}


def full_fine_tune(**config: Any) -> Checkpoint:
    """The crafted checkpoint as a full fine-tune: weights and a config.json naming its class, no adapter."""
    return crafted(
        adapter_config=None,
        model_config={**FULL_CONFIG, **config},
        files=(CheckpointFile("model.safetensors", 10), CheckpointFile("config.json", 10)),
    )


def test_golden_full_fine_tune_card() -> None:
    text = render(full_fine_tune(), base_model="meta-llama/Llama-3.1-8B", license="apache-2.0")["README.md"]
    check_golden("card_full.md", text)
    card = ModelCard(text)
    assert card.data.library_name == "transformers" and card.data.base_model_relation == "finetune"
    assert card.data.pipeline_tag == "text-generation"
    assert "peft" not in text.lower() and "adapter" not in text.lower()
    assert 'AutoModelForCausalLM.from_pretrained("me/demo-lora", revision="checkpoint-20")' in text


@pytest.mark.parametrize(
    ("config", "auto_class", "pipeline_tag"),
    [
        (
            {"architectures": ["BertForSequenceClassification"], "model_type": "bert"},
            "AutoModelForSequenceClassification",
            "text-classification",
        ),
        (
            {"architectures": ["RobertaForTokenClassification"]},
            "AutoModelForTokenClassification",
            "token-classification",
        ),
        ({"architectures": ["BertForQuestionAnswering"]}, "AutoModelForQuestionAnswering", "question-answering"),
        ({"architectures": ["BertForMaskedLM"]}, "AutoModelForMaskedLM", "fill-mask"),
        (
            {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5"},
            "AutoModelForSeq2SeqLM",
            "text-generation",
        ),
        (
            {"architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper"},
            "WhisperForConditionalGeneration",
            None,
        ),
        ({"architectures": ["BertModel"]}, "AutoModel", "feature-extraction"),
    ],
)
def test_a_full_fine_tune_card_loads_its_architecture(
    config: dict[str, Any], auto_class: str, pipeline_tag: str | None
) -> None:
    text = render(full_fine_tune(**config), base_model="google-bert/bert-base-uncased")["README.md"]
    card = ModelCard(text)
    assert card.data.pipeline_tag == pipeline_tag
    assert f'model = {auto_class}.from_pretrained("me/demo-lora", revision="checkpoint-20")' in text
    assert "PeftModel" not in text and card.data.library_name == "transformers"


def test_seq_2_seq_adapters_get_a_pipeline_type_the_hub_still_has() -> None:
    adapter = {"peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM", "base_model_name_or_path": "google-t5/t5-small"}
    text = render(crafted(adapter_config=adapter))["README.md"]
    card = ModelCard(text)
    assert card.data.pipeline_tag == "text-generation" and "text2text-generation" not in text
    assert "AutoModelForSeq2SeqLM" in text


def test_dataset_names_the_training_data_not_the_evaluation_set() -> None:
    text = render(crafted(), datasets=("tatsu-lab/alpaca",))["README.md"]
    card = ModelCard(text)
    assert card.data.datasets == ["tatsu-lab/alpaca"]
    assert {(r.dataset_name, r.dataset_type) for r in card.data.eval_results} == {("evaluation set", "custom")}
    training = text.split("## Training procedure", 1)[1]
    assert "### Training data\n\n- [tatsu-lab/alpaca](https://huggingface.co/datasets/tatsu-lab/alpaca)" in training


def test_the_metrics_of_a_plan_name_the_training_and_the_eval_loss_apart() -> None:
    from hubsync.core.plan import PushOptions, plan_push

    files = (CheckpointFile("adapter_model.safetensors", 10), CheckpointFile("trainer_state.json", 10))
    plan = plan_push(crafted(files=files), PushOptions("me/demo-lora"))
    assert plan.metrics == {"epoch": 2.0, "train_loss": 1.25, "eval_loss": 1.75, "eval_accuracy": 0.625}
    assert plan.index_entry is not None
    assert plan.index_entry["metrics"] == {"eval_accuracy": 0.625, "eval_loss": 1.75, "train_loss": 1.25}


def test_an_index_written_before_metrics_had_one_name_reads_as_eval_metrics() -> None:
    from hubsync.core.index import parse_index

    old = {"version": 1, "revisions": [{"revision": "checkpoint-10", "metrics": {"loss": 2.1, "accuracy": 0.5}}]}
    (entry,) = parse_index(json.dumps(old).encode())
    assert entry["metrics"] == {"eval_loss": 2.1, "eval_accuracy": 0.5}


def test_the_full_fine_tune_snippet_really_loads_it_at_its_revision(
    full_run: Path, hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    """Push a real full fine-tune, then run its card's snippet as a user would: the model and its weights."""
    from hubsync.tinyrun import BASE_MODEL_ID

    folder = full_run / "checkpoint-10"
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    result = CliRunner().invoke(
        cli, ["push", str(folder), "--repo", "me/full", "--base-model", BASE_MODEL_ID, "--revision", "ft-10"], env=env
    )
    assert result.exit_code == 0, result.stderr
    text = Path(api.hf_hub_download("me/full", "README.md", revision="ft-10", cache_dir=tmp_path / "c")).read_text()
    meta = ModelCard(text).data
    assert meta.pipeline_tag == "text-generation" and meta.library_name == "transformers"
    assert meta.base_model_relation == "finetune" and "peft" not in (meta.tags or [])
    snippet = re.search(r"```python\n(.*?)```", text, re.S)
    assert snippet is not None and "PeftModel" not in snippet.group(1)
    check = (
        snippet.group(1) + "import sys\nfrom safetensors.torch import load_file\n"
        f"saved = load_file({str(folder / 'model.safetensors')!r})\n"
        "state = model.state_dict()\n"
        "print(type(model).__name__, all(state[k].equal(v) for k, v in saved.items()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", check],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "LlamaForCausalLM True"


def _with_log(checkpoint: Path, log_history: list[dict[str, object]]) -> None:
    path = checkpoint / "trainer_state.json"
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "log_history": log_history}))


def test_a_long_run_s_card_shows_some_evaluations_evenly_and_says_so(checkpoint: Path) -> None:
    rows = 200_000  # a long run logging an evaluation every step: about 20 MB of trainer_state.json
    _with_log(checkpoint, [{"step": i, "loss": 1 / (i + 1), "eval_loss": 1.0, "epoch": i / 1000} for i in range(rows)])
    result = CliRunner().invoke(cli, ["card", str(checkpoint)])
    assert result.exit_code == 0, result.output
    table = [line for line in result.stdout.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(table) == 100 and table[0].startswith("| 0 |") and table[-1].startswith(f"| {rows - 1} |")
    assert f"The table shows 100 of {rows} evaluations; `trainer_state.json` holds them all." in result.stdout


def test_a_value_too_large_for_any_card_is_one_line_and_nothing_is_created(
    checkpoint: Path, hub: RunningHub, api: HfApi
) -> None:
    _with_log(checkpoint, [{"step": 1, "eval_" + "m" * 600_000: 0.5, "eval_loss": 1.0}])  # shown in several places
    result = push(hub, str(checkpoint), "--repo", "me/huge")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: cannot write model_card.md: ") and result.stderr.count("\n") == 1
    assert "Nothing was uploaded" in result.stderr
    assert not api.repo_exists("me/huge")
