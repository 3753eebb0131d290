"""`make demo`: the main job end to end, on a tiny real training run and a local Hub, with nothing downloaded:
train, push every checkpoint, list them, pull one back, and resume training from it.

Everything it writes goes under ./demo-out (recreated on each run): the training run and the Hub's storage.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hubsync.extras import needs_extra

DEMO = "the demo (make demo)"
OUT = Path("demo-out")
REPO = "me/tiny-llama-lora"


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _hubsync(*args: str, env: dict[str, str]) -> str:
    """Run the real `hubsync` command as a user would, echoing it and its output."""
    print("$ hubsync " + " ".join(args), flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "hubsync", *args], env=env, text=True, capture_output=True, check=False
    )
    print(done.stdout.rstrip())
    if done.returncode != 0:
        print(done.stderr.rstrip(), file=sys.stderr)
        raise SystemExit(f"demo failed: `hubsync {args[0]}` exited with {done.returncode}")
    return done.stdout


@contextmanager
def _local_hub(root: Path) -> Iterator[dict[str, str]]:
    """Start `hubsync localhub` in the background; yield its HF_ENDPOINT and HF_TOKEN."""
    print(f"$ hubsync localhub --root {root} &", flush=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubsync", "localhub", "--root", str(root)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        settings = {}
        for _ in range(2):
            key, _, value = proc.stdout.readline().strip().partition("=")
            settings[key] = value
        if set(settings) != {"HF_ENDPOINT", "HF_TOKEN"}:
            raise SystemExit("demo failed: the local Hub did not start")
        print(f"    local Hub at {settings['HF_ENDPOINT']}")
        yield settings
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _same_adapter(a: Path, b: Path) -> bool:
    with needs_extra(DEMO):
        from safetensors.torch import load_file

    x, y = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    return x.keys() == y.keys() and all(x[k].equal(y[k]) for k in x)


def main() -> None:
    started = time.monotonic()
    if OUT.exists():
        shutil.rmtree(OUT)
    run_dir = OUT / "run"

    _step("Training a tiny LoRA adapter on a randomly initialised Llama (CPU, transformers Trainer + PEFT)")
    from hubsync.core.checkpoint import list_checkpoints
    from hubsync.tinyrun import train_tiny_lora

    train_tiny_lora(run_dir, max_steps=30, save_steps=10)
    checkpoints = [path for _, path in list_checkpoints(run_dir)]
    for ckpt in checkpoints:
        print(f"    {ckpt}: {', '.join(sorted(p.name for p in ckpt.iterdir()))}")
    latest = checkpoints[-1]

    _step("Starting a local Hub (hubsync localhub)")
    with _local_hub(OUT / "hub") as settings:
        env = {**os.environ, **settings, "HF_HOME": str(OUT / "hf-home")}

        _step(f"Pushing the run's checkpoints to {REPO} (private), training state kept so training can resume")
        _hubsync("push", str(run_dir), "--repo", REPO, "--select", "all", "--training-state", "keep", env=env)

        _step("Pushing the newest again: nothing changed, so no new commit and nothing uploaded")
        _hubsync("push", str(latest), "--repo", REPO, "--training-state", "keep", env=env)

        _step("The checkpoint revisions on the Hub")
        _hubsync("ls", REPO, env=env)

        _step("The repository's refs and the newest revision's history, as huggingface_hub lists them")
        from huggingface_hub import HfApi

        api = HfApi(endpoint=settings["HF_ENDPOINT"], token=settings["HF_TOKEN"])
        refs = api.list_repo_refs(REPO)
        for branch in refs.branches:
            files = [f.path for f in api.list_repo_tree(REPO, revision=branch.name, recursive=True)]
            print(f"    branch {branch.name:<16} {branch.target_commit[:12]}  {len(files)} files")
        for commit in api.list_repo_commits(REPO, revision=latest.name):
            print(f"    commit {commit.commit_id[:12]}  {commit.title}")

        resume_from = checkpoints[-2].name
        _step(f"Pulling {resume_from} back into a fresh folder, every file checked against the Hub's hashes")
        _hubsync("pull", REPO, "--revision", resume_from, "--to", str(OUT / "pulled"), env=env)

    _step(f"Resuming training from the pulled {resume_from} up to step 30")
    pulled = OUT / "pulled" / resume_from
    resumed = train_tiny_lora(OUT / "resumed", max_steps=30, save_steps=10, resume_from_checkpoint=str(pulled))
    same = _same_adapter(resumed / latest.name, latest)
    print(f"    resumed run wrote {resumed / latest.name}")
    print(f"    its adapter equals the uninterrupted run's, bit for bit: {'yes' if same else 'NO'}")
    if not same:
        raise SystemExit("demo failed: the resumed adapter differs from the uninterrupted run's")

    _step(f"Done in {time.monotonic() - started:.0f} s. Look at:")
    print(f"    {run_dir}/        the training run and its checkpoints")
    print(f"    {OUT / 'pulled'}/     the checkpoint pulled back; {OUT / 'resumed'}/ the run resumed from it")
    print(f"    {OUT / 'hub'}/        the local Hub's storage (serve it again: hubsync localhub --root {OUT / 'hub'})")


if __name__ == "__main__":
    from hubsync.cli.errors import message_for
    from hubsync.core.errors import MissingExtraError

    try:
        main()
    except MissingExtraError as exc:
        raise SystemExit(message_for(exc)) from None
