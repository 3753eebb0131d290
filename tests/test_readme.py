"""The README's command examples run as written (paths of the examples swapped for a real tiny run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BIN = Path(sys.executable).parent


def sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, re.S)


def run_script(script: str, folder: Path) -> tuple[int, str]:
    """Run a bash script in `folder` with hubsync on PATH; its exit code and its output."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HOME": str(folder / "hf")}
    log = folder / "log.txt"
    with log.open("w") as out:  # a file, not a pipe: the background Hub must not hold a pipe of the test open
        code = subprocess.run(
            ["bash", "-c", script], cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False
        ).returncode
    return code, log.read_text()


def test_the_local_hub_recipe_then_push_ls_and_pull(tiny_run: Path, tmp_path: Path) -> None:
    (recipe,) = [b for b in sh_blocks() if "hubsync localhub --root" in b]
    push_example = next(b for b in sh_blocks() if "hubsync push out/my-run/checkpoint-1000" in b)
    pull_example = next(b for b in sh_blocks() if "hubsync pull me/my-model" in b)
    shutil.copytree(tiny_run, tmp_path / "out" / "my-run")
    lines = recipe.replace("/tmp/hub", str(tmp_path / "hub")).splitlines()
    script = "\n".join(
        [
            "set -e",
            lines[0],
            "trap 'kill $! 2>/dev/null' EXIT",  # the local Hub stops whatever happens
            *lines[1:],
            push_example.splitlines()[0],
            *[line for line in pull_example.splitlines() if line.startswith("hubsync")],
        ]
    ).replace("checkpoint-1000", "checkpoint-30")  # the tiny run's newest checkpoint
    code, output = run_script(script, tmp_path)
    assert code == 0, output
    assert "Pushed out/my-run/checkpoint-30 -> me/my-model @ checkpoint-30" in output
    assert "Already up to date: out/my-run/checkpoint-30" in output
    assert re.search(r"^checkpoint-30 +30 ", output, re.M)  # hubsync ls
    assert (tmp_path / "out" / "my-model" / "checkpoint-30" / "adapter_model.safetensors").exists()


def test_the_watch_and_prune_examples(tmp_path: Path) -> None:
    (recipe,) = [b for b in sh_blocks() if "hubsync localhub --root" in b]
    watch_example = next(b for b in sh_blocks() if "hubsync watch out/my-run" in b)
    prune_example = next(b for b in sh_blocks() if "hubsync prune me/my-model" in b)
    start_hub, *setup = [line for line in recipe.replace("/tmp/hub", str(tmp_path / "hub")).splitlines()]
    training = f"{sys.executable} -m hubsync.tinyrun out/my-run --max-steps 20 --save-steps 10 --step-sleep 0.05"
    script = "\n".join(
        [
            "set -e",
            start_hub,
            "HUB=$!; trap 'kill $HUB 2>/dev/null' EXIT",  # the local Hub stops whatever happens
            *[line for line in setup if not line.startswith("hubsync push")],
            watch_example.replace("python train.py --output_dir out/my-run", training).replace(
                "hubsync watch out/my-run",
                "hubsync watch out/my-run --interval 0.2",  # the tiny run is quick
            ),
            "echo '== before prune'",
            "hubsync ls me/my-model",
            "echo '== prune'",
            prune_example.replace("--keep 3", "--keep 1"),
            "echo '== after prune'",
            "hubsync ls me/my-model",
        ]
    )
    code, output = run_script(script, tmp_path)
    assert code == 0, output
    assert "Done: the run finished; 2 checkpoints on me/my-model." in output
    before, after = output.split("== before prune")[1].split("== after prune")
    assert re.search(r"^checkpoint-10 +10 ", before, re.M) and re.search(r"^checkpoint-20 +20 ", before, re.M)
    assert (
        "Plan (dry run): me/my-model: keep 1, delete 1" in after
        or "Plan (dry run): me/my-model: keep 1, delete 1" in before
    )
    assert "Deleted 1 branch of me/my-model." in before
    assert re.search(r"^checkpoint-20 +20 ", after, re.M) and "checkpoint-10" not in after


def test_the_tag_examples(tiny_run: Path, tmp_path: Path) -> None:
    (recipe,) = [b for b in sh_blocks() if "hubsync localhub --root" in b]
    tag_example = next(b for b in sh_blocks() if "hubsync tag me/my-model" in b)
    shutil.copytree(tiny_run, tmp_path / "out" / "my-run")
    start_hub, *setup = recipe.replace("/tmp/hub", str(tmp_path / "hub")).splitlines()
    create, delete = tag_example.splitlines()
    script = "\n".join(
        [
            "set -e",
            start_hub,
            "HUB=$!; trap 'kill $HUB 2>/dev/null' EXIT",  # the local Hub stops whatever happens
            *setup,  # pushes checkpoint-1000
            "echo '== tag'",
            create,
            create,  # again: a no-op
            "echo '== delete'",
            delete,
            f"if {delete.split('#')[0]}; then exit 3; fi",  # the tag is gone: a second delete fails
        ]
    ).replace("checkpoint-1000", "checkpoint-30")  # the tiny run's newest checkpoint
    code, output = run_script(script, tmp_path)
    assert code == 0, output
    tagged, deleted = output.split("== tag")[1].split("== delete")
    assert re.search(r"^Tagged me/my-model @ checkpoint-30: v1 -> [0-9a-f]{40}$", tagged, re.M), tagged
    assert re.search(r"^Already tagged: v1 in me/my-model points to [0-9a-f]{40}; nothing changed$", tagged, re.M)
    assert re.search(r"^Deleted tag v1 of me/my-model; it pointed to [0-9a-f]{40}$", deleted, re.M), deleted
    assert "has no tag 'v1' (it has no tags), so nothing was deleted" in deleted
