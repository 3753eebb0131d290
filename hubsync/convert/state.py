"""Training state without pickles: optimizer.pt, scheduler.pt, scaler.pt and rng_state*.pth become
<name>.safetensors (the tensors) and <name>.json (the structure and scalars); pull rebuilds the files.

Reading never runs code from the file (the restricted reader of torchzip). The JSON tree spells what JSON
lacks: {"__tensor__": name} (and "attributes": {name: value} for a tensor pickled with Python attributes, as
DeepSpeed ZeRO-3's flat groups are: objects.tensor_attributes_ok), {"__ndarray__": base64, "dtype", "shape"},
{"__tuple__": [...]}, {"__dict__": [[key, value], ...]} (keys that are not strings),
{"__float__": "nan" | "inf" | "-inf"}, {"__bytes__": base64}, {"__set__": [...]} (of numbers and strings), and the
objects of objects.ALLOWED_OBJECTS
(DeepSpeed's torch.Size, ZeroStageEnum, LossScaler, fragment_address): {"__object__": "module.name", "args": [...]}
for one made by calling its class, {"__object__": "module.name", "state": {attribute: number}} for one made empty
and given attributes. A document naming any other object, or other arguments or attributes, is refused.

Besides the Trainer's files, every pickle of DeepSpeed's global_stepN/ folder (conversion.STATE_FILE_RE) takes
this form, beside it: global_step10/mp_rank_00_model_states.pt -> global_step10/mp_rank_00_model_states.json
and .safetensors.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import mmap
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from hubsync.core.checkpoint import Checkpoint, loads_json
from hubsync.core.conversion import DEEPSPEED_FOLDER, STATE_FILE_RE
from hubsync.core.errors import DamagedStateError, HubLimitError, UnrepresentableStateError
from hubsync.core.plan import PushPlan, Upload
from hubsync.core.remote_paths import MAX_FILE_SIZE
from hubsync.core.shards import (
    DEFAULT_MAX_SHARD_SIZE,
    group_shards,
    index_document,
    index_name,
    parse_shard_index,
    shard_name,
    shard_weight_map,
)
from hubsync.core.torchfile import TORCH_DTYPES as _TORCH_DTYPES
from hubsync.extras import needs_extra
from hubsync.files import write_file_atomic

from .compare import safetensors_header
from .objects import PickledObject, PickledSet, make_object, tensor_attributes_ok
from .torchzip import NumpyArray, TensorRef, TorchArchive, read_torch_archive
from .writer import Digest, find_aliases, plan_layout, write_verified

FORMAT = "hubsync-training-state"
_MARKERS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__", "__float__", "__bytes__", "__set__", "__object__")
# The Trainer's state nests a few levels (optimizer: state -> parameter -> moment); far deeper is no state.
MAX_DEPTH = 100
MAX_NODES = 1_000_000  # optimizer state of the largest models has a few hundred thousand entries at most
MAX_INT_BITS = 12_000  # about 3,600 digits: JSON (and str()) write out at most 4,300


def safe_names(source: str) -> tuple[str, str]:
    """optimizer.pt -> (optimizer.json, optimizer.safetensors): the document, and the tensors when one file holds
    them (else state_files names their shards and index)."""
    stem = source.rsplit(".", 1)[0]
    return f"{stem}.json", f"{stem}.safetensors"


def state_files(source: str, groups: Sequence[Sequence[str]]) -> list[str]:
    """The files that hold a state file's tensors, named as `source` (optimizer.pt): optimizer.safetensors when
    one group holds them all, else one shard a group and the index, as transformers names them."""
    stem = source.rsplit(".", 1)[0]
    if len(groups) <= 1:
        return [f"{stem}.safetensors"]
    return [shard_name(stem, i, len(groups)) for i in range(1, len(groups) + 1)] + [index_name(stem)]


def _tensor_files(
    source: str, kept: dict[str, TensorRef], max_shard_size: int, like: Sequence[int] | None
) -> list[tuple[str, dict[str, TensorRef] | bytes]]:
    """(file name, its tensors or, for the index, its bytes) of a state file's tensors: grouped by max_shard_size,
    or as an earlier encoding whose tensors files had the sizes `like` (ValueError when none does)."""
    if like is not None:
        groups = _groups_like(kept, like)
    else:
        groups = group_shards([(name, t.nbytes) for name, t in kept.items()], max_shard_size)
    names = state_files(source, groups)
    files: list[tuple[str, dict[str, TensorRef] | bytes]] = [
        (name, {n: kept[n] for n in group}) for name, group in zip(names, groups, strict=False)
    ]
    if len(groups) > 1:
        weight_map = shard_weight_map(groups, source.rsplit(".", 1)[0])
        files.append((names[-1], index_document(weight_map, sum(t.nbytes for t in kept.values()))))
    return files


def _groups_like(kept: dict[str, TensorRef], sizes: Sequence[int]) -> list[list[str]]:
    """The runs of `kept` (in order) whose safetensors files take exactly `sizes` bytes (groups_like)."""
    return groups_like(
        list(kept),
        lambda g: len(plan_layout({n: kept[n] for n in g}, {"format": "pt"}).header) + sum(kept[n].nbytes for n in g),
        sizes,
    )


def groups_like(
    order: Sequence[str], file_size: Callable[[Sequence[str]], int], sizes: Sequence[int]
) -> list[list[str]]:
    """The runs of tensors `order` (in order) whose files take exactly `sizes` bytes (`file_size`: a run's file), as
    an earlier encoding wrote them: each added tensor makes a file longer (its header entry alone is longer than
    the padding), so at most one run fits each size. ValueError when the tensors do not fit the sizes."""
    order = list(order)
    if not 0 < len(sizes) <= max(len(order), 1):  # a listing of the Hub's: each shard holds a tensor at least
        raise ValueError("the tensors do not fit the number of files")
    groups: list[list[str]] = []
    start = 0
    for size in sizes:
        end, found = start, None
        while True:
            measured = file_size(order[start:end])
            if measured > size:
                break
            if measured == size:
                found = end
                break
            if end == len(order):
                break
            end += 1
        if found is None:
            raise ValueError("the tensors do not fit the sizes of the files")
        groups.append(order[start:found])
        start = found
    if start != len(order):
        raise ValueError("the tensors do not fit the sizes of the files")
    return groups


def encode_state(
    source: Path,
    shown: str,
    out_dir: Path,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    like: Sequence[int] | None = None,
    digest: Digest = lambda path, sha256: None,
) -> list[str]:
    """Write <stem>.json and the tensors for one training-state file: <stem>.safetensors, or shards of at most
    `max_shard_size` tensor bytes and their index (`like`: in the files an earlier encoding wrote, of those sizes).
    Tells `digest` each file's sha256 (the tensors' hashed as they are read back to verify them). Returns the
    names written; UnrepresentableStateError on a type this format cannot hold."""
    archive, kept, document = _state_document(source, shown)
    files = _tensor_files(source.name, kept, max_shard_size, like)
    for name, content in files:
        if isinstance(content, bytes):
            write_file_atomic(out_dir / name, content)
            digest(out_dir / name, hashlib.sha256(content).hexdigest())
        else:
            write_verified(archive, content, {"format": "pt"}, out_dir / name, f"{shown} (tensors)", digest=digest)
    json_name = safe_names(source.name)[0]
    write_file_atomic(out_dir / json_name, document)
    digest(out_dir / json_name, hashlib.sha256(document).hexdigest())
    return [json_name] + [name for name, _ in files]


def encoded_sizes(source: Path, shown: str, max_shard_size: int = DEFAULT_MAX_SHARD_SIZE) -> dict[str, int]:
    """The files encode_state writes (named as `source`, without its folder) and their sizes, exactly, from the
    pickle's structure alone (no tensor bytes are read): what a dry run shows."""
    _archive, kept, document = _state_document(source, shown)
    sizes = {safe_names(source.name)[0]: len(document)}
    for name, content in _tensor_files(source.name, kept, max_shard_size, None):
        if isinstance(content, bytes):
            sizes[name] = len(content)
        else:
            sizes[name] = len(plan_layout(content, {"format": "pt"}).header) + sum(t.nbytes for t in content.values())
    return sizes


def measured_plan(plan: PushPlan, checkpoint: Checkpoint) -> PushPlan:
    """`plan` with the training state's pickle-free files as they will be converted: their exact sizes, and the
    shards and index of a file whose tensors take more than the plan's max_shard_size."""
    state = [s for s in dict.fromkeys(u.converted_from for u in plan.uploads) if s and STATE_FILE_RE.match(s)]
    if not state:
        return plan
    uploads = [u for u in plan.uploads if u.converted_from not in state]
    for source in state:
        folder = source.rsplit("/", 1)[0] + "/" if "/" in source else ""
        sizes = encoded_sizes(checkpoint.path / source, f"{checkpoint.display}/{source}", plan.max_shard_size)
        for name, size in sizes.items():
            if size > MAX_FILE_SIZE:  # one tensor larger than the Hub holds: no split helps
                reason = f"has a tensor of over {MAX_FILE_SIZE // 1000**3} GB, the most a file on the Hub holds"
                raise HubLimitError(checkpoint.display, source, reason)
            uploads.append(Upload(folder + name, folder + name, size, source))
    return replace(plan, uploads=tuple(sorted(uploads, key=lambda u: u.path_in_repo)))


def _state_document(source: Path, shown: str) -> tuple[TorchArchive, dict[str, TensorRef], bytes]:
    archive = read_torch_archive(source, shown, state=True)
    check_tree(archive.root, shown)
    kept, aliases = find_aliases(archive.tensors)
    name_of = {ref: aliases.get(name, name) for name, ref in archive.tensors.items()}
    tree = _encode(archive.root, name_of, shown)
    document = {"format": FORMAT, "version": 1, "file": source.name, "tree": tree}
    return archive, kept, json.dumps(document, indent=1).encode()


def check_tree(root: Any, shown: str) -> None:
    """Refuse a tree that holds itself, nests more than MAX_DEPTH levels, or unfolds into more than MAX_NODES
    entries, before anything is built from it. A pickle can share one list under many names (memo references),
    so a file of a few hundred bytes can stand for 2^63 entries: each distinct container is walked once, its
    unfolded size and height remembered by identity, and every shared reference counts that size again."""
    measured: dict[int, tuple[int, int]] = {}  # id -> (entries unfolded, levels below)
    on_path: set[int] = set()

    def visit(value: Any, depth: int) -> tuple[int, int]:
        if not isinstance(value, (list, tuple, dict)):
            if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
                raise UnrepresentableStateError(shown, "integer of more than 3,600 digits")
            return 1, 0
        key = id(value)
        if key in on_path:
            raise UnrepresentableStateError(shown, "structure that contains itself")
        if key not in measured:
            if depth > MAX_DEPTH:
                raise UnrepresentableStateError(shown, f"structure nested more than {MAX_DEPTH} levels deep")
            on_path.add(key)
            size, height = 1, 0
            for child in (c for kv in value.items() for c in kv) if isinstance(value, dict) else value:
                child_size, child_height = visit(child, depth + 1)
                size, height = size + child_size, max(height, child_height + 1)
                if size > MAX_NODES:
                    raise UnrepresentableStateError(shown, f"structure of more than {MAX_NODES:,} entries")
            on_path.discard(key)
            measured[key] = (size, height)
        size, height = measured[key]
        if depth + height > MAX_DEPTH:
            raise UnrepresentableStateError(shown, f"structure nested more than {MAX_DEPTH} levels deep")
        return size, height

    visit(root, 0)


def _encode(
    value: Any, name_of: dict[TensorRef, str], shown: str, depth: int = 0, left: list[int] | None = None
) -> Any:
    """The pickle-free form of a state tree. A pickle can share one list under many names (memo references), so a
    file of a few KB can stand for 2^60 entries: the whole tree, sharing unfolded, holds at most MAX_NODES."""
    if depth > MAX_DEPTH:
        raise UnrepresentableStateError(shown, f"structure nested more than {MAX_DEPTH} levels deep")
    left = [MAX_NODES] if left is None else left
    left[0] -= 1
    if left[0] < 0:
        raise UnrepresentableStateError(shown, f"structure of more than {MAX_NODES:,} entries")

    def inner(v: Any) -> Any:
        return _encode(v, name_of, shown, depth + 1, left)

    if isinstance(value, TensorRef):
        if value.attributes:
            return {"__tensor__": name_of[value], "attributes": {k: inner(v) for k, v in value.attributes}}
        return {"__tensor__": name_of[value]}
    if isinstance(value, NumpyArray):
        return {"__ndarray__": base64.b64encode(value.data).decode(), "dtype": value.dtype, "shape": list(value.shape)}
    if isinstance(value, tuple):
        return {"__tuple__": [inner(v) for v in value]}
    if isinstance(value, list):
        return [inner(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in _MARKERS for k in value):
            return {k: inner(v) for k, v in value.items()}
        return {"__dict__": [[inner(k), inner(v)] for k, v in value.items()]}
    if isinstance(value, PickledSet):
        return {"__set__": [inner(v) for v in value.items]}
    if isinstance(value, PickledObject):
        if value.state is None:
            return {"__object__": value.kind.qualname, "args": [inner(v) for v in value.args]}
        return {"__object__": value.kind.qualname, "state": {k: inner(v) for k, v in value.state.items()}}
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise UnrepresentableStateError(shown, "integer of more than 3,600 digits")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise UnrepresentableStateError(shown, type(value).__name__)


def is_state_document(path: Path) -> bool:
    try:
        head = loads_json(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(head, dict) and head.get("format") == FORMAT


def load_torch(feature: str) -> ModuleType:
    """torch, which writes training state back for `feature`; MissingExtraError when it is not installed.

    Only writing needs torch: the Trainer loads optimizer.pt & co. with torch.load, so they have to be what
    torch.save writes (a second writer of that format would be one more to keep in step with torch's). Reading
    (push, convert, the already-pulled check) never imports it."""
    with needs_extra(feature):
        import torch
    return torch


def decode_set(items: list[Any]) -> set[Any]:
    """A set of a document: of numbers and strings only, as the reader admits (PickledSet)."""
    if not all(v is None or type(v) in (bool, int, float, str) for v in items):
        raise ValueError("a set of something other than numbers and strings")
    return set(items)


def with_attributes(tensor: Any, attributes: Any) -> Any:
    """A new tensor object on `tensor`'s storage, given a document's attributes: only those the reader keeps
    (objects.tensor_attributes_ok), and none that torch.Tensor itself has (data, requires_grad, copy_, ...),
    which setting would change or shadow."""
    if not tensor_attributes_ok(attributes) or any(hasattr(type(tensor), k) for k in attributes):
        raise ValueError(f"tensor attributes other than plain values: {str(attributes)[:80]}")
    out = tensor.detach()
    for name, v in attributes.items():
        setattr(out, name, v)
    return out


def decode_tree(value: Any, tensors: dict[str, Any], made: dict[Any, Any] | None = None) -> Any:
    """The object a document's tree stands for: tensors from `tensors`, as they are (one tensor a name, however
    often the document refers to it, as the pickle shared it; one with attributes a name and attributes, on that
    tensor's storage), objects only of objects.ALLOWED_OBJECTS."""
    import numpy as np

    made = {} if made is None else made

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "__tensor__" in value:
            key = value["__tensor__"]
            if key not in made:
                made[key] = tensors[key]
            if "attributes" not in value:
                return made[key]
            attributes = value["attributes"]
            if not isinstance(attributes, dict):  # a name to a value: its keys are never markers
                raise ValueError(f"tensor attributes that are not a mapping: {str(attributes)[:80]}")
            spelled = (key, json.dumps(attributes, sort_keys=True))
            if spelled not in made:
                made[spelled] = with_attributes(made[key], {k: decode(v) for k, v in attributes.items()})
            return made[spelled]
        if "__ndarray__" in value:
            raw = base64.b64decode(value["__ndarray__"], validate=True)
            dtype = np.dtype(value["dtype"])
            if dtype.kind not in "biuf":
                raise ValueError(f"a numpy array of dtype {dtype}")
            return np.frombuffer(raw, dtype=dtype).reshape(value["shape"]).copy()
        if "__tuple__" in value:
            return tuple(decode(v) for v in value["__tuple__"])
        if "__dict__" in value:
            return {decode(k): decode(v) for k, v in value["__dict__"]}
        if "__float__" in value:
            return float(value["__float__"])
        if "__bytes__" in value:
            return base64.b64decode(value["__bytes__"], validate=True)
        if "__set__" in value:
            return decode_set([decode(v) for v in value["__set__"]])
        if "__object__" in value:
            args = tuple(decode(v) for v in value["args"]) if "args" in value else None
            return make_object(value["__object__"], args, decode(value["state"]) if "state" in value else None)
        return {k: decode(v) for k, v in value.items()}

    return decode(value)


def _mapped_tensors(path: Path) -> dict[str, Any]:
    """The tensors of a safetensors file, each a view of a private memory map of it: nothing is read until used,
    and what torch.save then reads comes from the page cache, not from memory of this process (a 4 GB
    optimizer.pt is rebuilt in a few MB). The header is checked as strictly as a pushed file's
    (compare.safetensors_header: known dtypes, offsets spanning shapes, tensors end to end); ValueError if not."""
    with needs_extra("writing training state back from its pickle-free form"):
        import torch

    header, data_start = safetensors_header(path)
    dtypes = {kind.name: getattr(torch, name) for name, kind in _TORCH_DTYPES.items()}
    with path.open("rb") as f:
        # ACCESS_COPY: writable for torch.frombuffer (no read-only warning), yet never written back to the file
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if data_start < f.seek(0, 2) else None
    tensors = {}
    for name, entry in header.items():
        if entry["dtype"] not in dtypes:
            raise ValueError(f"{name} has a dtype torch does not hold: {entry['dtype']}")
        dtype, (start, end) = dtypes[entry["dtype"]], entry["data_offsets"]
        if start == end or mapped is None:
            try:  # no bytes, yet a hostile header may give a shape such as [0, 2**63] that torch cannot make
                tensors[name] = torch.empty(entry["shape"], dtype=dtype)
            except (TypeError, RuntimeError, OverflowError) as exc:
                raise ValueError(f"{name!r:.80} has a shape torch cannot hold") from exc
            continue
        flat = torch.frombuffer(mapped, dtype=dtype, count=(end - start) // dtype.itemsize, offset=data_start + start)
        tensors[name] = flat.view(entry["shape"])
    return tensors


def rebuild_state(json_path: Path) -> Path:
    """Write the original file (optimizer.pt, ...) beside `json_path` from it and its tensors (<stem>.safetensors,
    or the shards its <stem>.safetensors.index.json names), with torch.

    The files come from a Hub: DamagedStateError when they are not what push wrote, and it writes only the one
    file its own name says (optimizer.json -> optimizer.pt), never a path the document or the index chooses."""
    try:
        document = loads_json(json_path.read_bytes())
    except ValueError as exc:
        raise DamagedStateError(json_path.name, str(exc)) from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise DamagedStateError(json_path.name, f"it is not a {FORMAT} document")
    name = document.get("file")
    folder = json_path.parent.name  # DeepSpeed's files are named as they lie in their global_step<N>/ folder
    relative = f"{folder}/{name}" if re.fullmatch(DEEPSPEED_FOLDER, folder) else str(name)
    if not isinstance(name, str) or not STATE_FILE_RE.match(relative) or name.rsplit(".", 1)[0] != json_path.stem:
        raise DamagedStateError(json_path.name, f"it names the file {name!r:.80}, not the one beside it")
    target = json_path.with_name(name)
    with needs_extra(f"writing {name} back from its pickle-free form"):
        import torch
    tensors = load_state_tensors(json_path.with_suffix(".safetensors"), json_path.with_name(index_name(json_path.stem)))
    try:
        obj = decode_tree(document["tree"], tensors)
    except (KeyError, ValueError, TypeError, IndexError, OverflowError, RecursionError, MemoryError) as exc:
        raise DamagedStateError(json_path.name, f"{type(exc).__name__}: {exc}"[:200]) from exc
    tmp = target.with_name(f".{target.name}.rebuilding")
    torch.save(obj, tmp)
    tmp.replace(target)
    return Path(target)


def load_state_tensors(single: Path, index: Path) -> dict[str, Any]:
    """The tensors of a state file in its pickle-free form: `single` (<stem>.safetensors), or the shards that
    `index` (<stem>.safetensors.index.json) names beside it, checked against it: each shard named as push names
    them, every tensor in the shard the index says and in no other, the total size the index's."""
    shown = index.name if index.exists() else single.name
    if single.exists() and index.exists():
        raise DamagedStateError(shown, f"both {single.name} and the index of its shards are there")
    if not index.exists():
        return load_tensor_files([single])
    try:
        weight_map, total = parse_shard_index(index.read_bytes(), index.name.removesuffix(".safetensors.index.json"))
    except (OSError, ValueError) as exc:
        raise DamagedStateError(shown, str(exc)) from exc
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise DamagedStateError(shown, f"its shard {missing[0]} is not there")
    tensors = load_tensor_files([index.parent / s for s in shards], weight_map)
    if set(tensors) != set(weight_map):
        absent = sorted(set(weight_map) - set(tensors))[:1] or sorted(set(tensors) - set(weight_map))[:1]
        raise DamagedStateError(shown, f"the tensor {absent[0]!r:.80} is not where it says")
    if sum(t.nbytes for t in tensors.values()) != total:
        raise DamagedStateError(
            shown, f"its shards hold another number of bytes than its total_size ({str(total)[:20]})"
        )
    return tensors


def load_tensor_files(files: Sequence[Path], weight_map: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The tensors of `files` (safetensors), each name in one file only, and in the file `weight_map` says; each
    a view of a private memory map of its file (_mapped_tensors)."""
    with needs_extra("writing training state back from its pickle-free form"):
        import torch  # noqa: F401

    tensors: dict[str, Any] = {}
    for path in files:
        try:
            found = _mapped_tensors(path)
        except OSError as exc:  # its text would name the file by its absolute path
            raise DamagedStateError(path.name, f"{type(exc).__name__}: {exc.strerror or 'cannot be read'}") from exc
        except (ValueError, MemoryError) as exc:
            raise DamagedStateError(path.name, f"{type(exc).__name__}: {exc}"[:200]) from exc
        for name, tensor in found.items():
            if name in tensors:
                raise DamagedStateError(path.name, f"the tensor {name!r:.80} is also in another shard")
            if weight_map is not None and weight_map.get(name) != path.name:
                raise DamagedStateError(path.name, f"it holds {name!r:.80}, which the index puts elsewhere")
            tensors[name] = tensor
    return tensors
