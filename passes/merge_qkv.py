"""Merge sibling linears that read the same input into one linear and a split."""

from __future__ import annotations

import numpy as np

from tgraph.ir import Graph, Node, Value
from tgraph.passes.manager import Pass, PassResult, register

RULE = "merge-linears"


@register("merge-qkv")
class MergeQKV(Pass):
    """Merge linears sharing an input (q/k/v, gate/up) into one linear followed by a split.

    linear(x, Wq, bq), linear(x, Wk, bk), linear(x, Wv, bv)
        -> split(linear(x, cat(Wq, Wk, Wv), cat(bq, bk, bv)), sizes=(q, k, v))

    A linear without a bias gets a zero bias in the merged one (exact). The merged linear
    goes where the first of its group was, so every user still follows its producer.

    Options:
        min_group: merge groups of at least this many linears (default 2).
        keep_trainable: never merge trainable parameters (the training pipeline).
    """

    def __init__(self, min_group: int = 2, keep_trainable: bool = False):
        if min_group < 2:
            raise ValueError(f"merge-qkv: min_group is {min_group}, want at least 2")
        self.min_group = min_group
        self.keep_trainable = keep_trainable

    def run(self, graph: Graph) -> PassResult:
        rejected: list[dict[str, str]] = []
        groups = 0
        merged = 0
        for x in list(graph.values()):
            group = self._group(x, rejected)
            if len(group) >= self.min_group:
                _merge(graph, x, group)
                groups += 1
                merged += len(group)
            elif len(group) > 1:
                for node in group:
                    reason = f"only {len(group)} linears to merge, min_group={self.min_group}"
                    rejected.append(_rejection(node, reason))
        stats = {"merged": merged, "matches": {RULE: groups}, "rejected": rejected}
        return PassResult(groups > 0, stats)

    def _group(self, x: Value, rejected: list[dict[str, str]]) -> list[Node]:
        """The linears reading ``x`` that can merge; records why the others cannot."""
        linears = [n for n in x.users() if n.op == "linear" and n.inputs[0] is x]
        if len(linears) < 2:
            return []
        group = []
        for node in linears:
            reason = self._why_not(node, linears[0])
            if reason is None:
                group.append(node)
            else:
                rejected.append(_rejection(node, reason))
        return group

    def _why_not(self, node: Node, first: Node) -> str | None:
        w, b = node.inputs[1], _bias(node)
        if w.const is None:
            return f"weight %{w.name} is not a constant"
        if b is not None and b.const is None:
            return f"bias %{b.name} is not a constant"
        if self.keep_trainable and (w.trainable or (b is not None and b.trainable)):
            return "weights are trainable parameters (keep_trainable=true)"
        w0 = first.inputs[1]
        if w.dtype != w0.dtype or (b is not None and b.dtype != w.dtype):
            return f"dtype {w.dtype} differs from the group's {w0.dtype}"
        if w.shape[1] != w0.shape[1]:
            return f"in_features {w.shape[1]} differs from the group's {w0.shape[1]}"
        return None


def _bias(node: Node) -> Value | None:
    return node.inputs[2] if len(node.inputs) > 2 else None


def _merge(graph: Graph, x: Value, group: list[Node]) -> None:
    """Replace ``group`` (in graph order) by one linear and a split placed at the first."""
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    group = sorted(group, key=lambda n: order[id(n)])
    first = group[0]
    weights = [n.inputs[1] for n in group]
    sizes = [int(w.shape[0]) for w in weights]
    dtype = weights[0].dtype
    w = graph.add_const(
        np.concatenate([v.const for v in weights], axis=0), dtype, hint=f"{weights[0].name}+merged"
    )
    bias = None
    if any(_bias(n) is not None for n in group):
        parts = [
            _bias(n).const if _bias(n) is not None else np.zeros(size, dtype.numpy)
            for n, size in zip(group, sizes)
        ]
        hint = f"{(_bias(first) or weights[0]).name}+merged"
        bias = graph.add_const(np.concatenate(parts), dtype, hint=hint)
    meta = {
        "rule": RULE,
        "replaced": tuple(n.name for n in group),
        "module": first.meta.get("module", ""),
        "source": first.meta.get("source", ""),
    }
    names = [n.name for n in group]
    inputs = [x, w] if bias is None else [x, w, bias]
    linear = graph.create_node(
        "linear", inputs, meta=meta, names=[f"{first.name}_merged"], before=first
    )
    axis = linear.output.rank - 1
    split = graph.create_node(
        "split", [linear.output], {"axis": axis, "sizes": tuple(sizes)}, meta=meta, before=first
    )
    for node, new in zip(group, split.outputs):
        node.output.replace_all_uses_with(new, graph)
        node.remove()
    # The split's outputs take the merged linears' names, so their users read the same.
    for name, new in zip(names, split.outputs):
        graph.rename(new, name)


def _rejection(node: Node, reason: str) -> dict[str, str]:
    return {
        "rule": RULE,
        "node": node.name,
        "module": node.meta.get("module", ""),
        "reason": reason,
    }
