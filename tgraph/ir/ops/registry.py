"""The one op registry.

Every op the IR knows is an :class:`OpDef`: its attributes (with defaults), how many
inputs it takes, shape/dtype inference, whether it is pure, and a NumPy reference
kernel. The verifier, shape inference, the reference backend, constant folding and
CSE all read this table; generic passes never name ops.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tgraph.ir.core import IRError, TensorType, freeze
from tgraph.ir.dims import SymDim, evaluate

REQUIRED = object()


@dataclass(frozen=True)
class OpDef:
    """An op: name, attributes (name -> default, or REQUIRED), arity, inference and kernel.

    ``infer(*input_types, **attrs)`` returns a TensorType or a list of them;
    ``kernel(*arrays, **attrs)`` returns an array or a tuple of arrays. Absent optional
    inputs are passed as ``None`` to both.
    """

    name: str
    doc: str
    infer: Callable[..., TensorType | Sequence[TensorType]]
    kernel: Callable[..., np.ndarray | Sequence[np.ndarray]]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    min_inputs: int = 1
    max_inputs: int = 1
    pure: bool = True
    commutative: bool = False
    # output index -> input index: that output is the input with some elements replaced (a
    # state update), so a backend may compute it in place in the input's buffer.
    updates: Mapping[int, int] = field(default_factory=dict)

    def normalize_attrs(self, attrs: Mapping[str, Any] | None) -> dict[str, Any]:
        """Attributes with defaults filled in; unknown or missing ones raise IRError."""
        attrs = dict(attrs or {})
        unknown = sorted(set(attrs) - set(self.attrs))
        if unknown:
            raise IRError(
                f"op {self.name}: unknown attribute(s) {unknown}; known: {sorted(self.attrs)}"
            )
        out = {}
        for key, default in self.attrs.items():
            if key in attrs:
                out[key] = freeze(attrs[key])
            elif default is REQUIRED:
                raise IRError(f"op {self.name}: missing required attribute {key!r}")
            else:
                out[key] = freeze(default)
        return out

    def check_arity(self, n: int) -> None:
        if not self.min_inputs <= n <= self.max_inputs:
            want = (
                str(self.min_inputs)
                if self.min_inputs == self.max_inputs
                else f"{self.min_inputs}..{self.max_inputs}"
            )
            raise IRError(f"op {self.name} takes {want} inputs, got {n}")

    def _pad(self, items: list) -> list:
        """Absent trailing optional inputs become None (variadic ops are left alone)."""
        if self.max_inputs <= 8 and len(items) < self.max_inputs:
            items = items + [None] * (self.max_inputs - len(items))
        return items

    def infer_types(self, inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[TensorType]:
        self.check_arity(len(inputs))
        missing = [i for i, v in enumerate(inputs[: self.min_inputs]) if v is None]
        if missing:
            raise IRError(f"op {self.name}: required input {missing[0]} is missing")
        types = self._pad([None if v is None else v.type for v in inputs])
        result = self.infer(*types, **attrs)
        if isinstance(result, TensorType):
            return [result]
        return list(result)

    def run(
        self, arrays: Sequence[np.ndarray | None], attrs: Mapping[str, Any]
    ) -> list[np.ndarray]:
        result = self.kernel(*self._pad(list(arrays)), **attrs)
        if isinstance(result, (np.ndarray, np.generic)):
            return [np.asarray(result)]
        return [np.asarray(r) for r in result]


_REGISTRY: dict[str, OpDef] = {}


def register_op(opdef: OpDef) -> OpDef:
    if opdef.name in _REGISTRY:
        raise IRError(f"op {opdef.name!r} is registered twice")
    _REGISTRY[opdef.name] = opdef
    return opdef


def defop(
    name: str,
    *,
    infer: Callable[..., Any],
    kernel: Callable[..., Any],
    attrs: Mapping[str, Any] | None = None,
    inputs: int | tuple[int, int] = 1,
    pure: bool = True,
    commutative: bool = False,
    updates: Mapping[int, int] | None = None,
    doc: str = "",
) -> OpDef:
    """Register an op. ``inputs`` is a count or a (min, max) range."""
    lo, hi = (inputs, inputs) if isinstance(inputs, int) else inputs
    return register_op(
        OpDef(
            name=name,
            doc=doc,
            infer=infer,
            kernel=kernel,
            attrs=dict(attrs or {}),
            min_inputs=lo,
            max_inputs=hi,
            pure=pure,
            commutative=commutative,
            updates=dict(updates or {}),
        )
    )


def get_op(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise IRError(f"unknown op {name!r}") from None


def has_op(name: str) -> bool:
    return name in _REGISTRY


def all_ops() -> dict[str, OpDef]:
    return dict(sorted(_REGISTRY.items()))


def resolve_attrs(attrs: Mapping[str, Any], bindings: Mapping[str, int]) -> dict[str, Any]:
    """Attributes with every symbolic dim replaced by its value under ``bindings``."""

    def resolve(x: Any) -> Any:
        if isinstance(x, SymDim):
            return evaluate(x, bindings)
        if isinstance(x, tuple):
            return tuple(resolve(v) for v in x)
        return x

    return {k: resolve(v) for k, v in attrs.items()}
