"""Constant folding through the op registry's NumPy kernels."""

from __future__ import annotations

from typing import Any

import numpy as np

from tgraph.ir import Graph, Node, SymDim, Value
from tgraph.ir.ops import get_op
from tgraph.passes.manager import Pass, PassResult, register


@register("fold-constants")
class FoldConstants(Pass):
    """Evaluate pure nodes whose inputs are all constants and store the results as constants.

    Each result becomes an anonymous initializer named after the value it replaces, so a
    dump keeps its names. Nodes without inputs (``arange``, ``full``) fold when their
    attributes are static; attributes holding symbolic dims (``end=seq``) are never folded.

    Options:
        max_elements: skip a result with more elements than this, unless it is no larger
            than one of its inputs (``permute(weight)`` only re-lays out data that is
            already stored; ``expand`` or ``full`` could materialize far more).
        keep_trainable: never fold a node that reads a trainable initializer, so the
            parameters stay parameters (the ``training`` pipeline sets it).
    """

    def __init__(self, max_elements: int = 1 << 20, keep_trainable: bool = False):
        self.max_elements = int(max_elements)
        self.keep_trainable = bool(keep_trainable)

    def run(self, graph: Graph) -> PassResult:
        folded = 0
        skipped: list[dict[str, str]] = []
        # One forward sweep folds whole chains: a folded result is a constant for its users.
        for node in graph.nodes:
            opdef = get_op(node.op)
            inputs = [v for v in node.inputs if v is not None]
            if not opdef.pure or any(v.const is None for v in inputs):
                continue
            reason = self._why_not(node, inputs)
            if reason is None:
                results, reason = _evaluate(node)
            if reason is not None:
                skipped.append({"node": node.name, "op": node.op, "reason": reason})
                continue
            _replace_with_constants(graph, node, results)
            folded += 1
        return PassResult(folded > 0, {"folded": folded, "skipped": skipped})

    def _why_not(self, node: Node, inputs: list[Value]) -> str | None:
        if self.keep_trainable:
            for v in inputs:
                if v.trainable:
                    return f"reads trainable @{v.name} (keep_trainable)"
        if _has_symdim(tuple(node.attrs.values())):
            return "attributes depend on symbolic dims"
        largest_input = max((v.const.size for v in inputs), default=0)
        for v in node.outputs:
            if any(isinstance(d, SymDim) for d in v.shape):
                return f"result %{v.name} has a symbolic shape"
            size = int(np.prod(v.shape, dtype=np.int64))
            if size > self.max_elements and size > largest_input:
                return f"result %{v.name} has {size} elements > max_elements={self.max_elements}"
        return None


def _has_symdim(x: Any) -> bool:
    if isinstance(x, SymDim):
        return True
    return isinstance(x, tuple) and any(_has_symdim(v) for v in x)


def _evaluate(node: Node) -> tuple[list[np.ndarray], str | None]:
    """Run the node's kernel on its constant inputs; results cast to the recorded dtypes."""
    arrays = [None if v is None else v.const for v in node.inputs]
    try:
        with np.errstate(all="ignore"):  # like the reference backend: inf/nan are values too
            results = get_op(node.op).run(arrays, node.attrs)
    except Exception as e:  # noqa: BLE001 - a kernel that cannot run here is left to run later
        return [], f"kernel failed: {e}"
    out = []
    for v, r in zip(node.outputs, results, strict=True):
        r = np.asarray(r, dtype=v.dtype.numpy)
        if tuple(r.shape) != tuple(v.shape):
            return [], f"kernel gave shape {list(r.shape)} for %{v.name}: {v.type}"
        # A permuted or sliced view becomes its own compact, pre-laid-out array.
        out.append(r if r.flags.c_contiguous else r.copy())
    return out, None


def _replace_with_constants(graph: Graph, node: Node, results: list[np.ndarray]) -> None:
    names = [v.name for v in node.outputs]
    consts = []
    for v, array in zip(node.outputs, results):
        const = graph.add_const(array, v.dtype, hint=f"{v.name}_folded")
        v.replace_all_uses_with(const, graph)
        consts.append(const)
    node.remove()  # frees the names, which the constants take over
    for const, name in zip(consts, names):
        graph.rename(const, name)
