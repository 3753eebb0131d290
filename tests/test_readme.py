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
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HOME": str(tmp_path / "hf")}
    log = tmp_path / "log.txt"
    with log.open("w") as out:  # a file, not a pipe: the background Hub must not hold a pipe of the test open
        code = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
        ).returncode
    output = log.read_text()
    assert code == 0, output
    assert "Pushed out/my-run/checkpoint-30 -> me/my-model @ checkpoint-30" in output
    assert "Already up to date: out/my-run/checkpoint-30" in output
    assert re.search(r"^checkpoint-30 +30 ", output, re.M)  # hubsync ls
    assert (tmp_path / "out" / "my-model" / "checkpoint-30" / "adapter_model.safetensors").exists()
