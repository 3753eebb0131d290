"""Which distributed training layout a checkpoint's optimizer state has (DeepSpeed ZeRO, ...), from file names. Pure.

The Trainer writes optimizer.pt when one process holds the optimizer; a distributed engine writes its own files,
one a rank. `state_layout` names the engine, how many ranks the state is split into, and what its resume lacks.
FSDP's SHARDED_STATE_DICT (torch.distributed.checkpoint folders pytorch_model_fsdp_0/ and optimizer_0/) is the
other function in _LAYOUTS.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

from .shards import has_sharded

_DS_FILE_RE = re.compile(
    r"^(?P<tag>global_step[0-9]{1,12})/(?P<name>(?:bf16_)?(?:zero_pp_rank_(?P<rank>[0-9]{1,6})_)?"
    r"mp_rank_(?P<mp>[0-9]{2,6})_(?P<what>model|optim)_states)\.(?:pt|json|safetensors)\Z"
)
# the Trainer's RNG state, one file a process
_RNG_FILE_RE = re.compile(r"^rng_state_(?P<rank>[0-9]{1,6})\.(?:pth|json|safetensors)\Z")


@dataclass(frozen=True)
class StateLayout:
    kind: str  # "deepspeed"
    label: str  # what a person reads: "DeepSpeed ZeRO-1/2"
    ranks: int  # the data parallel processes the state is split into; resuming takes as many
    missing: tuple[str, ...] = ()  # what its resume needs and the files lack, in the words of a sentence
    reshards: bool = False  # whether its engine loads it into another number of ranks (DCP does; ZeRO does not)

    def describe(self) -> str:
        """`DeepSpeed ZeRO-1/2, 2 ranks`."""
        return f"{self.label}, {self.ranks} rank{'s' if self.ranks != 1 else ''}"

    def how_to_resume(self) -> str:
        """What a person resuming from it needs to know of the number of processes."""
        if self.reshards:
            return "resume with as many processes (torch.distributed.checkpoint can also load it into another number)"
        return "resume with as many processes"


def has_state_file(paths: Collection[str], pickle_name: str) -> bool:
    """Whether a torch.save() file is there, as itself or in hubsync's pickle-free form (<stem>.json beside
    <stem>.safetensors, or beside the index of its shards and every shard)."""
    stem = pickle_name.rsplit(".", 1)[0]
    return pickle_name in paths or (
        f"{stem}.json" in paths and (f"{stem}.safetensors" in paths or has_sharded(paths, stem))
    )


def _deepspeed(paths: Collection[str]) -> StateLayout | None:
    """DeepSpeed's engine state (DeepSpeedEngine.load_checkpoint): `latest` names the global_step<N>/ folder that
    holds mp_rank_00_model_states.pt (ZeRO-3: one zero_pp_rank_<r>_mp_rank_00_model_states.pt a rank) and one
    ZeRO optimizer shard a rank, zero_pp_rank_<r>_mp_rank_00_optim_states.pt (bf16_ in front with bf16)."""
    found = [m for p in paths if (m := _DS_FILE_RE.match(p))]
    if not found and "latest" not in paths:
        return None
    tags = sorted({m["tag"] for m in found}, key=lambda t: int(t.removeprefix("global_step")))
    tag = tags[-1] if tags else None  # the Trainer saves one a checkpoint; `latest` names the newest
    names = {m["name"]: m for m in found if m["tag"] == tag}
    optim = {int(m["rank"]) for m in names.values() if m["what"] == "optim" and m["rank"] and m["mp"] == "00"}
    # Every file that names its rank counts: a rank whose optimizer shard is gone still left its model states
    # (ZeRO-3) and its RNG state, so the shards it lacks are named rather than the run read as smaller.
    model = {int(m["rank"]) for m in names.values() if m["what"] == "model" and m["rank"] is not None}
    rng = {int(m["rank"]) for p in paths if (m := _RNG_FILE_RE.match(p))}
    ranks = max(optim | model | rng) + 1 if optim | model | rng else 0
    zero3 = bool(model)  # ZeRO-3 writes the model states one a rank
    missing = [] if "latest" in paths else ["DeepSpeed `latest` file"]
    if tag is None:
        missing.append("DeepSpeed global_step folder")
    else:

        def lacks(name: str) -> bool:
            return not has_state_file(paths, f"{tag}/{name}.pt")

        prefix = "bf16_" if any(n.startswith("bf16_") for n in names) else ""
        if not zero3 and lacks("mp_rank_00_model_states"):
            missing.append("DeepSpeed model states (mp_rank_00_model_states.pt)")
        if not optim:
            missing.append("DeepSpeed ZeRO optimizer state")
        for rank in range(ranks):
            if lacks(f"{prefix}zero_pp_rank_{rank}_mp_rank_00_optim_states"):
                missing.append(f"DeepSpeed ZeRO optimizer state of rank {rank}")
            if zero3 and lacks(f"zero_pp_rank_{rank}_mp_rank_00_model_states"):
                missing.append(f"DeepSpeed model states of rank {rank}")
    label = "DeepSpeed ZeRO-3" if zero3 else "DeepSpeed ZeRO-1/2"  # stages 1 and 2 write the same names
    return StateLayout("deepspeed", label, ranks, tuple(missing))


_LATEST_RE = re.compile(rb"\s*(global_step[0-9]{1,12})\s*\Z")


def latest_problem(text: bytes, paths: Collection[str]) -> str | None:
    """What is wrong with DeepSpeed's `latest` file of a revision (`text`, its bytes), or None. DeepSpeed loads
    `<checkpoint>/<its text, stripped>/mp_rank_00_model_states.pt` with torch.load(weights_only=False): anything
    but the name of a global_step<N>/ folder the revision holds would point a resume at a pickle elsewhere."""
    found = _LATEST_RE.match(text)
    if found is None:
        return f"it says {text[:40]!r}, not the name of a global_step<N> folder"
    tag = found[1].decode()
    if not any(p.startswith(f"{tag}/") for p in paths):
        return f"it names {tag}/, which the revision does not hold"
    return None


_FSDP_FILE_RE = re.compile(
    r"^(?P<folder>(?P<what>pytorch_model_fsdp|optimizer)_(?P<n>[0-9]{1,6}))/"
    r"(?:\.metadata|dcp\.json|__(?P<rank>[0-9]{1,6})_0"
    r"(?:\.distcp|\.safetensors|\.safetensors\.index\.json|(?P<shard>-[0-9]{5}-of-[0-9]{5}\.safetensors)))\Z"
)


def _fsdp(paths: Collection[str]) -> StateLayout | None:
    """FSDP's SHARDED_STATE_DICT (accelerate's save_fsdp_model / save_fsdp_optimizer under the Trainer): the
    folders pytorch_model_fsdp_0/ and optimizer_0/, each torch.distributed.checkpoint's `.metadata` and one
    `__<rank>_0.distcp` a rank, or hubsync's pickle-free form of them (dcp.json and __<rank>_0.safetensors, or its
    shards __<rank>_0-00001-of-0000N.safetensors and their index __<rank>_0.safetensors.index.json: a rank is
    there with its index and all the shards it names, core/shards)."""
    matched = [m for p in paths if (m := _FSDP_FILE_RE.match(p))]
    if not matched:
        return None
    listed = set(paths)
    found = [  # a shard says nothing alone: its index does, when every shard it is split into is there
        m
        for m in matched
        if not m["shard"]
        and (not m[0].endswith(".index.json") or has_sharded(listed, m[0].removesuffix(".safetensors.index.json")))
    ]
    ranks_of: dict[str, set[int]] = {}
    described: set[str] = set()
    for m in found:
        ranks_of.setdefault(m["folder"], set())
        if m["rank"] is None:
            described.add(m["folder"])
        else:
            ranks_of[m["folder"]].add(int(m["rank"]))
    ranks = max((max(r) + 1 for r in ranks_of.values() if r), default=0)
    missing = []
    for folder, what in (("pytorch_model_fsdp_0", "FSDP model state"), ("optimizer_0", "FSDP optimizer state")):
        if folder not in ranks_of:
            missing.append(f"{what} ({folder}/)")
            continue
        if folder not in described:
            missing.append(f"{what}'s metadata ({folder}/.metadata)")
        missing += [f"{what} of rank {r}" for r in range(ranks) if r not in ranks_of[folder]]
    return StateLayout("fsdp", "FSDP sharded state", ranks, tuple(missing), reshards=True)


# FSDP's first: its files' names are its own, while DeepSpeed's `latest` is a name any folder may hold.
_LAYOUTS: tuple[Callable[[Collection[str]], StateLayout | None], ...] = (_fsdp, _deepspeed)


def state_layout(paths: Collection[str]) -> StateLayout | None:
    """The distributed layout of a checkpoint's optimizer state, from its file names (a folder's or a
    revision's); None when its optimizer state is the Trainer's own optimizer.pt, or there is none."""
    for layout in _LAYOUTS:
        if (found := layout(paths)) is not None:
            return found
    return None
