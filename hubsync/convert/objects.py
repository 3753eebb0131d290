"""The few objects other than containers that training-state pickles hold (DeepSpeed's), as inert records.

One fixed table, ALLOWED_OBJECTS, names each (module, name) a pickle may build and what it may be built from:
the reader (torchzip) answers exactly these globals with records that only hold their arguments and state, and
pull's rebuild re-creates the real objects from exactly these. Nothing a file or a document names is imported,
called or looked up elsewhere: a name outside the table is refused on both sides. Pure: no torch, no DeepSpeed.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from hubsync.extras import needs_extra

_SCALARS = (bool, int, float)


def _int_tuple(args: tuple[Any, ...]) -> bool:
    return (
        len(args) == 1
        and isinstance(args[0], tuple)
        and all(type(v) is int and 0 <= v < 1 << 63 for v in args[0])
        and len(args[0]) <= 64
    )


def _zero_stage(args: tuple[Any, ...]) -> bool:
    return len(args) == 1 and type(args[0]) is int and 0 <= args[0] <= 3


@dataclass(frozen=True)
class ObjectKind:
    """How a pickle builds one allowed object: `called` with checked arguments (REDUCE: torch.Size((4, 32)),
    ZeroStageEnum(2)), or made empty and given attributes (NEWOBJ with no arguments, then BUILD with a dict:
    LossScaler, fragment_address), each attribute one of `fields`, a bool, int or float."""

    module: str
    name: str
    args: Callable[[tuple[Any, ...]], bool] | None = None  # called: whether its arguments are allowed
    fields: frozenset[str] = frozenset()  # made empty: the attributes it may be given

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def check_args(self, args: tuple[Any, ...]) -> None:
        if self.args is None or not self.args(args):
            raise pickle.UnpicklingError(f"unexpected arguments to {self.qualname}")

    def check_state(self, state: Any) -> None:
        if (
            self.args is not None
            or not isinstance(state, dict)
            or not set(state) <= self.fields
            or not all(type(v) in _SCALARS for v in state.values())
        ):
            raise pickle.UnpicklingError(f"unexpected state of {self.qualname}")


# Each entry was met in a real checkpoint (DeepSpeed 0.19, ZeRO-2, transformers' Trainer) and holds plain data.
ALLOWED_OBJECTS: dict[str, ObjectKind] = {
    kind.qualname: kind
    for kind in (
        ObjectKind("torch", "Size", args=_int_tuple),  # mp_rank_*_model_states.pt: param_shapes
        ObjectKind("deepspeed.runtime.zero.config", "ZeroStageEnum", args=_zero_stage),  # optim_states: zero_stage
        ObjectKind("deepspeed.runtime.fp16.loss_scaler", "LossScaler", fields=frozenset({"cur_scale", "dynamic"})),
        ObjectKind("deepspeed.utils.tensor_fragment", "fragment_address", fields=frozenset({"numel", "start"})),
    )
}


MAX_TENSOR_ATTRIBUTES = 64
_PLAIN = (type(None), bool, int, float, str)


def tensor_attributes_ok(attributes: Any) -> bool:
    """Whether a tensor's Python attributes are ones hubsync keeps (torch._tensor._rebuild_from_type_v2's state:
    DeepSpeed ZeRO-3 gives its flat fp32 groups {'ds_id': '2_20'}): a dict of at most MAX_TENSOR_ATTRIBUTES, each
    named by an identifier that is not a dunder, each value None, a bool, int, float or str, or a tuple or list of
    them. The one rule for the reader (a pickle) and for pull (a document)."""
    return (
        type(attributes) is dict
        and len(attributes) <= MAX_TENSOR_ATTRIBUTES
        and all(type(k) is str and k.isidentifier() and not k.startswith("__") for k in attributes)
        and all(
            type(v) in _PLAIN or (type(v) in (tuple, list) and all(type(x) in _PLAIN for x in v))
            for v in attributes.values()
        )
    )


class PickledObject:
    """An allowed object as its pickle describes it: its kind, the arguments it is called with, or the attributes
    it is given. Nothing is imported or called; a second BUILD, or one on a called object, is refused."""

    __slots__ = ("args", "kind", "state")

    def __init__(self, kind: ObjectKind, args: tuple[Any, ...] = ()) -> None:
        self.kind, self.args = kind, args
        self.state: dict[str, Any] | None = None if kind.args is not None else {}

    def __setstate__(self, state: Any) -> None:
        if self.state:
            raise pickle.UnpicklingError(f"the state of {self.kind.qualname} is set twice")
        self.kind.check_state(state)
        self.state = dict(state)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PickledObject) and (self.kind, self.args, self.state) == (
            other.kind,
            other.args,
            other.state,
        )

    __hash__: ClassVar[None] = None  # type: ignore[assignment]


class PickledSet:
    """A set as its pickle gives it (builtins.set(list)), of scalars and strings; its items are never hashed here."""

    __slots__ = ("items",)

    def __init__(self, items: Any = ()) -> None:
        if not isinstance(items, (list, tuple)) or not all(v is None or type(v) in (*_SCALARS, str) for v in items):
            raise pickle.UnpicklingError("a set of something other than numbers and strings")
        self.items = list(items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PickledSet) and self.items == other.items

    __hash__: ClassVar[None] = None  # type: ignore[assignment]


def make_object(qualname: Any, args: tuple[Any, ...] | None, state: Any) -> Any:
    """The real object a record stands for, for pull to write back with torch.save: only a kind of
    ALLOWED_OBJECTS, from the arguments or attributes that kind allows (ValueError otherwise). The class is
    imported from the table's own module name, never from the document's."""
    kind = ALLOWED_OBJECTS.get(qualname) if isinstance(qualname, str) else None
    if kind is None:
        raise ValueError(f"an object of a kind that hubsync does not rebuild: {str(qualname)[:80]!r}")
    try:
        if kind.args is not None:
            kind.check_args(tuple(args or ()))
        else:
            kind.check_state(state)
    except pickle.UnpicklingError as exc:
        raise ValueError(str(exc)) from exc
    with needs_extra(f"writing {kind.qualname} back", "deepspeed" if kind.module.startswith("deepspeed") else "train"):
        cls = getattr(importlib.import_module(kind.module), kind.name)
    if kind.args is not None:
        return cls(*(args or ()))
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj
