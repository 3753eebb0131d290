"""Files the Hub cannot hold are split: the max-shard-size setting, how tensors are grouped into shards, their names
and their index, and the checks a pulled index must pass. Pure.

The names and the index are transformers' (save_pretrained): `<stem>-00001-of-00003.safetensors` and
`<stem>.safetensors.index.json` holding {"metadata": {"total_size": N}, "weight_map": {tensor: shard file}}; a shard
holds at most the limit of tensor bytes (as transformers counts), a tensor larger than the limit alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

DEFAULT_MAX_SHARD_SIZE = 5 * 10**9  # transformers' default ("5GB", decimal)
# The Hub holds files of at most 50 GB (remote_paths.MAX_FILE_SIZE); a shard is its tensors and a header (names,
# dtypes, shapes, offsets: up to 100 MB in safetensors), so a shard of 50 GB of tensors would be refused.
MOST_MAX_SHARD_SIZE = 49 * 10**9
# The one pickled weights file that is split when its tensors take more than max-shard-size, into transformers'
# model-00001-of-0000N.safetensors and model.safetensors.index.json, which from_pretrained loads. PEFT loads an
# adapter from adapter_model.safetensors alone, so an adapter stays whole (the Hub's 50 GB limit still applies);
# pytorch_model-*-of-*.bin shards keep their own split.
SPLIT_WEIGHTS = "pytorch_model.bin"
SPLIT_STEM = "model"
SIZE_EXAMPLE = '"5GB", "500MB", "10GiB" or a number of bytes'
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]{1,15})\s*([A-Za-z]{0,3})\s*\Z")
_DIGITS = 5  # transformers writes 00001-of-00003


def parse_size(value: object) -> int:
    """A number of bytes from 1 to MOST_MAX_SHARD_SIZE: an int, or text as save_pretrained takes it ("5GB",
    "500MB", "10GiB", "123"). ValueError saying what is wanted otherwise."""
    wanted = (
        f"must be a size from 1 byte to 49GB, such as {SIZE_EXAMPLE} (the Hub holds files of at most 50 GB, "
        "and a shard's header comes on top of its tensors)"
    )
    if isinstance(value, bool):
        raise ValueError(wanted)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and (m := _SIZE_RE.match(value)) and m[2].upper() in _UNITS:
        number = int(m[1]) * _UNITS[m[2].upper()]
    else:
        raise ValueError(wanted)
    if not 0 < number <= MOST_MAX_SHARD_SIZE:
        raise ValueError(wanted)
    return number


def group_shards(sizes: Sequence[tuple[str, int]], limit: int) -> list[list[str]]:
    """Tensors (name, bytes), in the order given, in runs of at most `limit` bytes each: a tensor that would take
    the run past the limit starts the next one, so one larger than the limit has a run of its own."""
    groups: list[list[str]] = []
    total = 0
    for name, size in sizes:
        if not groups or (total + size > limit and groups[-1]):
            groups.append([])
            total = 0
        groups[-1].append(name)
        total += size
    return groups or [[]]


def shard_name(stem: str, number: int, count: int) -> str:
    """optimizer, 1, 3 -> optimizer-00001-of-00003.safetensors (as save_pretrained names them)."""
    return f"{stem}-{number:0{_DIGITS}d}-of-{count:0{_DIGITS}d}.safetensors"


def index_name(stem: str) -> str:
    """optimizer -> optimizer.safetensors.index.json."""
    return f"{stem}.safetensors.index.json"


def shard_pattern(stem: str) -> re.Pattern[str]:
    """The names of `stem`'s shards (a path's folder kept: global_step10/..._states-00001-of-00002.safetensors)."""
    return re.compile(rf"^{re.escape(stem)}-(?P<n>[0-9]{{{_DIGITS}}})-of-(?P<of>[0-9]{{{_DIGITS}}})\.safetensors\Z")


def listed_shards(stem: str, paths: Collection[str]) -> tuple[str, ...] | None:
    """The shards of `stem` among `paths`, in order, when they are all there (1 to N of N, one N): None when
    there are none, or some are missing or disagree on N."""
    pattern = shard_pattern(stem)
    found = sorted((int(m["n"]), int(m["of"]), p) for p in paths if (m := pattern.match(p)))
    if not found:
        return None
    count = found[0][1]
    if [(n, of) for n, of, _ in found] != [(n, count) for n in range(1, count + 1)]:
        return None
    return tuple(p for _, _, p in found)


def has_sharded(paths: Collection[str], stem: str) -> bool:
    """Whether `stem`'s tensors are there as an index and all the shards it is split into."""
    return index_name(stem) in paths and listed_shards(stem, paths) is not None


def index_document(weight_map: Mapping[str, str], total_size: int) -> bytes:
    """The index file, as written (its size is what a dry run shows)."""
    return json.dumps({"metadata": {"total_size": total_size}, "weight_map": dict(weight_map)}, indent=2).encode()


def shard_weight_map(groups: Sequence[Sequence[str]], stem: str) -> dict[str, str]:
    """tensor -> shard file (the name alone, beside the index, as transformers writes it)."""
    base = stem.rsplit("/", 1)[-1]
    return {name: shard_name(base, i, len(groups)) for i, group in enumerate(groups, 1) for name in group}


def parse_shard_index(raw: bytes, stem: str) -> tuple[dict[str, str], int]:
    """A pulled index of `stem`'s shards as (tensor -> shard file name, total_size), each shard named as push names
    them beside the index (no folder, no other stem), numbered 1 to N of one N with none left out, every tensor
    named once. ValueError saying what is wrong otherwise."""
    base = stem.rsplit("/", 1)[-1]

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            twice = next(k for k in keys if keys.count(k) > 1)
            raise ValueError(f"it names {twice!r:.80} twice")
        return dict(pairs)

    try:
        data = json.loads(raw, object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError("it is not JSON text") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"it is not valid JSON ({exc.msg})") from exc
    if not isinstance(data, dict) or set(data) != {"metadata", "weight_map"}:
        raise ValueError('it is not {"metadata": ..., "weight_map": ...}')
    metadata, weight_map = data["metadata"], data["weight_map"]
    total = metadata.get("total_size") if isinstance(metadata, dict) else None
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise ValueError("its metadata has no total_size in bytes")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError("its weight_map is not a map of tensor names to shard files")
    pattern = shard_pattern(base)
    for tensor, shard in weight_map.items():
        if not pattern.match(shard):
            raise ValueError(f"it maps {tensor!r:.80} to {shard!r:.80}, not a shard of {base}")
    if listed_shards(base, set(weight_map.values())) is None and weight_map:
        raise ValueError("its shards are not numbered 1 to N of N, or one is missing")
    return dict(weight_map), total
