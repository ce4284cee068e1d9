"""One rank's slices of the constants a ``shard`` pass cuts, each cut once."""

from __future__ import annotations

from typing import Any

import numpy as np

from tgraph.ir import Graph, Node, Value
from tgraph.ir.sharding import ShardSpec, ranges


class Slicer:
    """Makes rank ``rank``'s initializers; the same cut of the same constant is shared
    (a tied embedding / LM head, or a bias CSE merged across layers, is held once)."""

    def __init__(self, graph: Graph, rank: int, world: int):
        self.graph, self.rank, self.world = graph, rank, world
        self._made: dict[tuple, Value] = {}
        self.sources: set[str] = set()

    def cut(self, v: Value, kind: str, axis: int, size: int, idx: Any) -> Value:
        """``idx``: per rank, sorted indices along ``axis`` (padded with zeros to ``size``)."""
        pieces = tuple(ranges(np.asarray(i)) for i in idx)
        return self._add(ShardSpec(kind, v.name, axis, size, pieces), v)

    def rank0(self, v: Value) -> Value:
        """A bias that rank 0 adds and the other ranks hold as zeros."""
        n = int(v.shape[0])
        pieces = (((0, n),),) + ((),) * (self.world - 1)
        return self._add(ShardSpec("rank0", v.name, 0, n, pieces), v)

    def offset(self, values: tuple[int, ...], dtype: Any, hint: str) -> Value:
        spec = ShardSpec("offset", "", 0, 1, (), values)
        key = (spec, hint)
        if key not in self._made:
            array = spec.take(None, self.rank, dtype.numpy)
            self._made[key] = self._initializer(array, dtype, hint, spec)
        return self._made[key]

    def _add(self, spec: ShardSpec, v: Value) -> Value:
        key = (spec, v.name)
        if key not in self._made:
            self.sources.add(v.name)
            array = spec.take(v.const, self.rank)
            self._made[key] = self._initializer(array, v.dtype, f"{v.name}.{spec.kind}", spec)
            self._made[key].meta.update({k: x for k, x in v.meta.items() if k == "param"})
        return self._made[key]

    def _initializer(self, array: np.ndarray, dtype: Any, hint: str, spec: ShardSpec) -> Value:
        value = self.graph.add_const(array, dtype, hint=hint)
        value.meta["shard"] = spec.to_meta()
        return value


def rejection(rule: str, node: Node, reason: str) -> dict[str, str]:
    """A "left replicated" record in the shape the why-not-fused report reads."""
    return {
        "rule": rule,
        "node": node.name,
        "module": node.meta.get("module", ""),
        "reason": reason,
    }
