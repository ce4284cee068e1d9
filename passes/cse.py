"""Common-subexpression elimination."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from typing import Any

from tgraph.ir import Graph, IRError, Node, Value
from tgraph.ir.ops import get_op
from tgraph.ir.printer import is_inline
from tgraph.passes.manager import Pass, PassResult, register


@register("cse")
class CommonSubexpressionElimination(Pass):
    """Merge pure nodes with the same op, inputs and attributes, and equal small constants.

    Two pure nodes that read the same values (or equal anonymous constants) with equal
    attributes compute the same result: the later one's readers move to the earlier one.
    Anonymous constants with the same dtype, shape and bytes are merged as well. Named
    initializers (parameters, buffers) are never merged, even when equal: they may be
    trained separately. The constants left unused are ``dce``'s to drop.

    Options:
        max_const_elements: constants larger than this are compared by identity only.
    """

    def __init__(self, max_const_elements: int = 1024):
        self.max_const_elements = int(max_const_elements)

    def run(self, graph: Graph) -> PassResult:
        output_names = [v.name for v in graph.outputs]
        consts = self._merge_constants(graph)
        nodes = self._merge_nodes(graph)
        _restore_output_names(graph, output_names)
        return PassResult(bool(consts or nodes), {"nodes": nodes, "constants": consts})

    def _mergeable(self, v: Value) -> bool:
        """An anonymous, small constant (not a parameter, buffer or exported tensor)."""
        return (
            v.const is not None
            and not v.trainable
            and v.meta.get("param") is None
            and v.const.size <= self.max_const_elements
        )

    def _const_key(self, v: Value) -> tuple:
        return ("const", v.dtype, tuple(v.shape), v.const.tobytes())

    def _merge_constants(self, graph: Graph) -> int:
        """Point readers of equal listed constants at one of them; returns how many moved.

        Constants small enough to print inline are left alone: moving their readers would
        not show in the dump, and node keys compare them by content anyway.
        """
        outputs = {id(v) for v in graph.outputs}
        keep: dict[tuple, Value] = {}
        merged = 0
        for name in sorted(graph.initializers):
            v = graph.initializers[name]
            if not self._mergeable(v) or is_inline(v):
                continue
            if not v.uses() and id(v) not in outputs:
                continue
            first = keep.setdefault(self._const_key(v), v)
            if first is not v:
                v.replace_all_uses_with(first, graph)
                merged += 1
        return merged

    def _merge_nodes(self, graph: Graph) -> int:
        seen: dict[Hashable, Node] = {}
        merged = 0
        # In node order: the kept node comes first, so it dominates every reader of the other.
        for node in graph.nodes:
            opdef = get_op(node.op)
            if not opdef.pure:
                continue
            key = self._node_key(node, opdef.commutative)
            first = seen.setdefault(key, node)
            if first is node or _types(first) != _types(node):
                continue
            for old, new in zip(node.outputs, first.outputs):
                old.replace_all_uses_with(new, graph)
            node.remove()
            merged += 1
        return merged

    def _node_key(self, node: Node, commutative: bool) -> Hashable:
        inputs = tuple(self._input_key(v) for v in node.inputs)
        if commutative and len(inputs) == 2:
            inputs = frozenset(Counter(inputs).items())  # add(a, b) == add(b, a)
        attrs = tuple((k, _typed(v)) for k, v in sorted(node.attrs.items()))
        return (node.op, inputs, attrs)

    def _input_key(self, v: Value | None) -> Hashable:
        if v is None:
            return None
        if self._mergeable(v):
            return self._const_key(v)
        return ("value", v)  # a Value hashes by identity


def _typed(x: Any) -> Hashable:
    """An attribute value with its type, so 1, 1.0 and True stay distinct keys."""
    if isinstance(x, tuple):
        return tuple(_typed(v) for v in x)
    return (type(x).__name__, x)


def _types(node: Node) -> list:
    return [v.type for v in node.outputs]


def _restore_output_names(graph: Graph, names: list[str]) -> None:
    """A graph output that now reads an earlier node's value gives that value its name.

    ``logits`` stays ``logits``. Inputs, initializers and values returned twice keep theirs.
    """
    for v, name in zip(graph.outputs, names):
        if v.name == name or v.producer is None or graph.outputs.count(v) > 1:
            continue
        try:
            graph.rename(v, name)
        except IRError:  # the name is taken (by a value that still lives): keep the old one
            pass
