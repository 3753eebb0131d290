"""`hubsync convert`: convert a checkpoint's pickled weights to safetensors (hubsync.convert), print what it wrote."""

from __future__ import annotations

import click

from .app import cli
from .options import bad_flag_values
from .output import echo, progress, size


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(file_okay=False, path_type=str),
    help="Folder for the converted files [default: safetensors-<checkpoint name>, beside the checkpoint].",
)
@click.option("--force", is_flag=True, help="Replace files in an output folder that is not empty.")
@click.option(
    "--max-shard-size",
    metavar="SIZE",
    callback=bad_flag_values,
    help='Split pytorch_model.bin into model-0000x-of-0000N.safetensors shards of at most SIZE ("5GB", '
    '"500MB", "10GiB" or bytes) with an index [default: HUBSYNC_MAX_SHARD_SIZE, else hubsync.toml, else 5GB].',
)
def convert(checkpoint: str, output: str | None, force: bool, max_shard_size: int | None) -> None:
    """Convert a checkpoint's pickled weights to safetensors, verified bit for bit.

    adapter_model.bin becomes adapter_model.safetensors, pytorch_model.bin model.safetensors, and
    pytorch_model-0000x-of-0000N.bin shards model-0000x-of-0000N.safetensors with a rewritten index; a
    pytorch_model.bin over --max-shard-size becomes shards of it, with an index, as save_pretrained writes.
    Configs and tokenizer files are copied beside them; training state is not. The pickles are read
    without running any code from them, and the checkpoint folder is never modified.

    \b
    Example:
      hubsync convert out/my-run/checkpoint-1000
    """
    from hubsync.api import conversion_size, convert_checkpoint
    from hubsync.core.paths import display_path

    with progress(conversion_size(checkpoint), "Converting") as advance:
        done = convert_checkpoint(checkpoint, output, force=force, progress=advance, max_shard_size=max_shard_size)
    if done.output is None:
        from hubsync.core.checkpoint import read_checkpoint

        shown = read_checkpoint(checkpoint).display
        echo(f"Nothing to convert: {shown} holds no pickled weights (adapter_model.bin, pytorch_model*.bin).")
        return
    for converted in done.files:
        aliases = f", {len(converted.aliases)} tied names recorded as aliases" if converted.aliases else ""
        echo(
            f"{converted.source} -> {converted.target}: {converted.tensors} tensors, "
            f"{size(converted.bytes)}, verified{aliases}"
        )
    echo(f"Wrote {display_path(done.output)}")
