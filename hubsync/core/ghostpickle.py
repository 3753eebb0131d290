"""Read a pickle as plain data without importing or running anything it names.

Every global the pickle names becomes a "ghost" class made on the spot: building one only records its
arguments and state. Nothing from the file is imported, called or executed, whatever it names. The
result is turned into plain data: dicts, lists, strings and numbers; an enum-like object becomes its
value, any other object the dict of its state.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, ClassVar

from .torchfile import BoundedUnpickler, PickleLimits, check_archive, open_archive, read_entry, torch_records

MAX_PICKLE_BYTES = 16 * 1024 * 1024  # a TrainingArguments pickles into about 10 KB


class Ghost:
    """An instance of a class the pickle named; holds what the pickle gave it and nothing else."""

    _ghost_name = "?"
    _ghost_args: tuple[Any, ...]
    _ghost_state: Any

    def __new__(cls, *args: Any, **kwargs: Any) -> Ghost:
        obj = object.__new__(cls)
        obj._ghost_args = args
        obj._ghost_state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._ghost_args = args

    def __setstate__(self, state: Any) -> None:
        self._ghost_state = state


def _ghost_class(module: str, name: str) -> type[Ghost]:
    return type(name, (Ghost,), {"_ghost_name": f"{module}.{name}", "__module__": "hubsync.ghost"})


class _GhostUnpickler(BoundedUnpickler):
    limits: ClassVar[PickleLimits] = PickleLimits(opcodes=1_000_000, containers=200_000)

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._classes: dict[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key == ("copyreg", "_reconstructor"):
            return _reconstructor
        if key not in self._classes:
            self._classes[key] = _ghost_class(module, name)
        return self._classes[key]

    def persistent_load(self, pid: Any) -> Any:
        return {"persistent_id": plain(pid)}


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    if isinstance(cls, type) and issubclass(cls, Ghost):
        return cls(state)
    raise pickle.UnpicklingError("unexpected _reconstructor arguments")


MAX_INT_BITS = 4000 * 3  # well under the 4300 digits Python writes out
MAX_NODES = 200_000  # a TrainingArguments has a few hundred; a pickle whose shared references explode has more


def plain(value: Any) -> Any:
    """Ghosts and containers as JSON-like data, expanded as a tree; UnpicklingError past MAX_NODES or 100 deep."""
    budget = [MAX_NODES]

    def walk(value: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise pickle.UnpicklingError("too large to be a plain record")
        if depth > 100:
            raise pickle.UnpicklingError("nested too deeply")
        if isinstance(value, Ghost):
            state = value._ghost_state
            if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
                state = {**(state[0] or {}), **(state[1] or {})}  # (dict, slots) as __reduce_ex__ gives them
            if isinstance(state, dict):
                return {str(k): walk(v, depth + 1) for k, v in state.items()}
            args = value._ghost_args
            if len(args) == 1:  # an enum member, or a device such as torch.device("cpu")
                return walk(args[0], depth + 1)
            return {"type": value._ghost_name, "args": [walk(a, depth + 1) for a in args]}
        if isinstance(value, dict):
            return {str(walk(k, depth + 1)): walk(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [walk(v, depth + 1) for v in value]
        if isinstance(value, (bytes, bytearray)):
            return f"<{len(value)} bytes>"
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            return "<a very large integer>"  # which str() and json.dumps() refuse to write out
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return repr(value)

    return walk(value, 0)


def load_plain(data: bytes) -> Any:
    """Unpickle `data` into plain data; pickle.UnpicklingError when it is not a pickle, or asks for too much."""
    try:
        return plain(_GhostUnpickler(data).load())
    except RecursionError as exc:
        raise pickle.UnpicklingError("nested too deeply") from exc
    except pickle.UnpicklingError:
        raise
    except (EOFError, AttributeError, IndexError, KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise pickle.UnpicklingError(str(exc)[:200] or type(exc).__name__) from exc


def read_torch_pickle(path: Path) -> Any:
    """The plain data of a torch.save() file (a zip with data.pkl), or of a bare pickle; pickle.UnpicklingError
    when it is neither, or its zip archive is one that readers read differently (hubsync.core.torchfile), or it
    asks for too much; OSError when it cannot be read."""
    with path.open("rb") as f:
        if f.read(4) != b"PK\x03\x04":
            f.seek(0)
            raw = f.read(MAX_PICKLE_BYTES + 1)
            if len(raw) > MAX_PICKLE_BYTES:
                raise pickle.UnpicklingError("the pickle is too large")
            return load_plain(raw)
        try:
            f.seek(0)
            with open_archive(f) as archive:
                entries = check_archive(f, archive)
                prefix = torch_records(archive, entries)
                raw = read_entry(archive, prefix + "data.pkl", MAX_PICKLE_BYTES)
        except (zipfile.BadZipFile, ValueError, EOFError) as exc:  # ArchiveError is a ValueError
            raise pickle.UnpicklingError(f"a damaged zip archive ({exc})") from exc
    return load_plain(raw)
