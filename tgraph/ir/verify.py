"""Structural and type checks of a graph (``Graph.verify()``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .core import IRError, TensorType, Value
from .dims import SymDim

if TYPE_CHECKING:
    from .core import Node
    from .graph import Graph


def _where(node: Node) -> str:
    module = node.meta.get("module")
    return f"{node.op} node %{node.name}" + (f" (from {module})" if module else "")


def _types_agree(a: TensorType, b: TensorType) -> bool:
    return (
        a.dtype == b.dtype
        and len(a.shape) == len(b.shape)
        and all(x == y for x, y in zip(a.shape, b.shape))
    )


def verify(graph: Graph) -> None:
    """Raise IRError naming the first node or value that breaks an invariant."""
    from .ops import get_op

    names: set[str] = set()
    defined: set[int] = set()

    def define(v: Value, what: str) -> None:
        if v.name in names:
            raise IRError(f"graph {graph.name}: value name {v.name!r} is defined twice ({what})")
        names.add(v.name)
        defined.add(id(v))

    for v in graph.inputs:
        if v.const is not None or v.producer is not None:
            raise IRError(f"graph input {v.name} must not be a constant or have a producer")
        define(v, "input")
    for key, v in graph.initializers.items():
        if v.const is None:
            raise IRError(f"initializer {key} has no constant data")
        if key != v.name:
            raise IRError(f"initializer key {key!r} != value name {v.name!r}")
        if tuple(v.const.shape) != tuple(v.shape) or v.const.dtype != v.dtype.numpy:
            raise IRError(
                f"initializer {key}: data {v.const.dtype}{list(v.const.shape)} != type {v.type}"
            )
        define(v, "initializer")

    live_nodes: set[int] = set()
    for node in graph.nodes:
        live_nodes.add(id(node))
        if node.graph is not graph:
            raise IRError(f"{_where(node)} does not point back at graph {graph.name}")
        opdef = get_op(node.op)
        try:
            opdef.check_arity(len(node.inputs))
            if dict(node.attrs) != opdef.normalize_attrs(node.attrs):
                raise IRError(f"attributes {dict(node.attrs)} are not normalized")
        except IRError as e:
            raise IRError(f"{_where(node)}: {e}") from None
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if id(v) not in defined:
                raise IRError(f"{_where(node)}: input {i} (%{v.name}) is not defined before use")
            if (node, i) not in v._uses:
                raise IRError(f"{_where(node)}: use-list of %{v.name} misses input {i}")
        try:
            inferred = opdef.infer_types(node.inputs, node.attrs)
        except IRError as e:
            raise IRError(f"{_where(node)}: {e}") from None
        if len(inferred) != len(node.outputs):
            raise IRError(
                f"{_where(node)}: has {len(node.outputs)} outputs, op gives {len(inferred)}"
            )
        for v, t in zip(node.outputs, inferred):
            if v.producer is not node:
                raise IRError(f"{_where(node)}: output %{v.name} has another producer")
            if not _types_agree(v.type, t):
                raise IRError(f"{_where(node)}: output %{v.name} is {v.type}, inference gives {t}")
            define(v, f"output of {node.op}")

    for v in graph.values():
        for user, i in v._uses:
            if id(user) not in live_nodes:
                raise IRError(f"value %{v.name} is used by {user.op} node that is not in the graph")
            if user.inputs[i] is not v:
                raise IRError(f"value %{v.name}: stale use-list entry for {user.op} input {i}")
    for v in graph.outputs:
        if id(v) not in defined:
            raise IRError(f"graph output %{v.name} is not defined in the graph")
    for v in graph.inputs:
        for d in v.shape:
            if isinstance(d, SymDim) and not d.is_symbol():
                raise IRError(
                    f"graph input {v.name} has dim {d}; input dims must be ints or bare symbols"
                )
