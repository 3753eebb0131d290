"""Training state without pickles: optimizer.pt, scheduler.pt, scaler.pt and rng_state*.pth become
<name>.safetensors (the tensors) and <name>.json (the structure and scalars); pull rebuilds the files.

Reading never runs code from the file (the restricted reader of torchzip). The JSON tree spells what JSON
lacks: {"__tensor__": name}, {"__ndarray__": base64, "dtype", "shape"}, {"__tuple__": [...]},
{"__dict__": [[key, value], ...]} (keys that are not strings), {"__float__": "nan" | "inf" | "-inf"},
{"__bytes__": base64}, {"__set__": [...]} (of numbers and strings), and the objects of objects.ALLOWED_OBJECTS
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
from pathlib import Path
from types import ModuleType
from typing import Any

from hubsync.core.checkpoint import Checkpoint, loads_json
from hubsync.core.conversion import DEEPSPEED_FOLDER, STATE_FILE_RE
from hubsync.core.errors import DamagedStateError, UnrepresentableStateError
from hubsync.core.plan import PushPlan, with_sizes
from hubsync.extras import needs_extra
from hubsync.files import write_file_atomic

from .compare import safetensors_header
from .objects import PickledObject, PickledSet, make_object
from .torchzip import _TORCH_DTYPES, NumpyArray, TensorRef, TorchArchive, read_torch_archive
from .writer import Digest, find_aliases, plan_layout, write_verified

FORMAT = "hubsync-training-state"
_MARKERS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__", "__float__", "__bytes__", "__set__", "__object__")
# The Trainer's state nests a few levels (optimizer: state -> parameter -> moment); far deeper is no state.
MAX_DEPTH = 100
MAX_NODES = 1_000_000  # optimizer state of the largest models has a few hundred thousand entries at most
MAX_INT_BITS = 12_000  # about 3,600 digits: JSON (and str()) write out at most 4,300


def safe_names(source: str) -> tuple[str, str]:
    """optimizer.pt -> (optimizer.json, optimizer.safetensors)."""
    stem = source.rsplit(".", 1)[0]
    return f"{stem}.json", f"{stem}.safetensors"


def encode_state(source: Path, shown: str, out_dir: Path, digest: Digest = lambda path, sha256: None) -> None:
    """Write <stem>.json and <stem>.safetensors for one training-state file, telling `digest` each one's sha256
    (the tensors' hashed as they are read back to verify them); UnrepresentableStateError on a type this format
    cannot hold."""
    archive, kept, document = _state_document(source, shown)
    json_name, tensors_name = safe_names(source.name)
    write_verified(archive, kept, {"format": "pt"}, out_dir / tensors_name, f"{shown} (tensors)", digest=digest)
    write_file_atomic(out_dir / json_name, document)
    digest(out_dir / json_name, hashlib.sha256(document).hexdigest())


def encoded_sizes(source: Path, shown: str) -> tuple[int, int]:
    """The sizes of the <stem>.json and <stem>.safetensors that encode_state writes, exactly, from the pickle's
    structure alone (no tensor bytes are read): what a dry run shows."""
    _archive, kept, document = _state_document(source, shown)
    layout = plan_layout(kept, {"format": "pt"})
    return len(document), len(layout.header) + sum(t.nbytes for t in kept.values())


def measured_plan(plan: PushPlan, checkpoint: Checkpoint) -> PushPlan:
    """`plan` with the exact sizes of the training state's JSON and safetensors files it will convert."""
    sizes = {}
    for source in dict.fromkeys(u.converted_from for u in plan.uploads):
        if source is not None and STATE_FILE_RE.match(source):
            json_name, tensors_name = safe_names(source)
            sizes[json_name], sizes[tensors_name] = encoded_sizes(
                checkpoint.path / source, f"{checkpoint.display}/{source}"
            )
    return with_sizes(plan, sizes) if sizes else plan


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


def decode_tree(value: Any, tensors: dict[str, Any], made: dict[str, Any] | None = None) -> Any:
    """The object a document's tree stands for: tensors from `tensors`, as they are (one tensor a name, however
    often the document refers to it, as the pickle shared it), objects only of objects.ALLOWED_OBJECTS."""
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
            return made[key]
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
            tensors[name] = torch.empty(entry["shape"], dtype=dtype)
            continue
        flat = torch.frombuffer(mapped, dtype=dtype, count=(end - start) // dtype.itemsize, offset=data_start + start)
        tensors[name] = flat.view(entry["shape"])
    return tensors


def rebuild_state(json_path: Path) -> Path:
    """Write the original file (optimizer.pt, ...) beside `json_path` from it and its .safetensors, with torch.

    The document comes from a Hub: DamagedStateError when it is not what push wrote, and it writes only the one
    file its own name says (optimizer.json -> optimizer.pt), never a path the document chooses."""
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

    try:
        tensors = _mapped_tensors(json_path.with_suffix(".safetensors"))
        obj = decode_tree(document["tree"], tensors)
    except (
        OSError,
        KeyError,
        ValueError,
        TypeError,
        IndexError,
        OverflowError,
        RecursionError,
        MemoryError,
    ) as exc:
        raise DamagedStateError(json_path.name, f"{type(exc).__name__}: {exc}"[:200]) from exc
    tmp = target.with_name(f".{target.name}.rebuilding")
    torch.save(obj, tmp)
    tmp.replace(target)
    return Path(target)
