"""The Graph: inputs, initializers, an ordered node list and outputs.

Only methods here and in ``core.py`` edit use-lists; passes call
:meth:`Value.replace_all_uses_with`, :meth:`Graph.create_node` and :meth:`Node.remove`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .core import IRError, Node, NodeList, TensorType, Value
from .dims import DimLike, SymDim, simplify
from .dtypes import DType


class Graph:
    """A tgraph program: inputs, initializers, an ordered node list and outputs."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.initializers: dict[str, Value] = {}
        self.nodes = NodeList()
        # Opaque, backend-neutral metadata: input/output structure, symbol origins, ...
        self.meta: dict[str, Any] = {}
        self._names: set[str] = set()
        self._counters: dict[str, int] = {}
        self._insert_before: Node | None = None

    # -- naming --------------------------------------------------------------------------------

    def has_name(self, name: str) -> bool:
        """True when a value of this graph (input, initializer or node output) is ``name``."""
        return name in self._names

    def fresh_name(self, hint: str) -> str:
        """A value name not yet used in this graph, derived deterministically from ``hint``."""
        hint = hint or "v"
        if hint not in self._names:
            self._names.add(hint)
            return hint
        n = self._counters.get(hint, 0)
        while True:
            n += 1
            name = f"{hint}_{n}"
            if name not in self._names:
                self._counters[hint] = n
                self._names.add(name)
                return name

    def rename(self, value: Value, name: str) -> None:
        """Give ``value`` a new name (which must be free)."""
        if name == value.name:
            return
        if name in self._names:
            raise IRError(f"value name {name!r} is already used")
        self._names.discard(value.name)
        self._names.add(name)
        if value.const is not None and self.initializers.get(value.name) is value:
            del self.initializers[value.name]
            self.initializers[name] = value
        value.name = name

    # -- building ------------------------------------------------------------------------------

    def add_input(self, name: str, dtype: DType, shape: Sequence[DimLike]) -> Value:
        v = Value(self.fresh_name(name), TensorType(dtype, tuple(simplify(d) for d in shape)))
        self.inputs.append(v)
        return v

    def add_initializer(self, name: str, array: np.ndarray, trainable: bool = False) -> Value:
        """Add a constant. ``name`` is kept exactly (parameter names are part of the contract)."""
        if name in self._names:
            raise IRError(f"initializer name {name!r} is already used")
        array = np.asarray(array)
        v = Value(
            self.fresh_name(name),
            TensorType(DType.from_numpy(array.dtype), tuple(array.shape)),
            const=array,
            trainable=trainable,
        )
        self.initializers[v.name] = v
        return v

    def add_const(
        self, array: np.ndarray | float | int | bool, dtype: DType, hint: str = "c"
    ) -> Value:
        """Add an anonymous constant (a scalar or small tensor made by the frontend or a pass)."""
        array = np.asarray(array, dtype=dtype.numpy)
        array.setflags(write=False)
        v = Value(self.fresh_name(hint), TensorType(dtype, tuple(array.shape)), const=array)
        self.initializers[v.name] = v
        return v

    def create_node(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: Mapping[str, Any] | None = None,
        *,
        names: Sequence[str] | None = None,
        meta: Mapping[str, Any] | None = None,
        types: Sequence[TensorType] | None = None,
        before: Node | None = None,
        after: Node | None = None,
    ) -> Node:
        """Create a node, infer its output types (unless ``types`` is given) and insert it.

        The node goes before ``before``, after ``after``, at the insertion point set by
        :meth:`insertion_point`, or at the end, in that order of preference.
        """
        from .ops import get_op  # the registry imports this module

        opdef = get_op(op)
        node = Node(op, inputs, opdef.normalize_attrs(attrs), meta)
        if types is None:
            types = opdef.infer_types(node.inputs, node.attrs)
        names = list(names or [])
        for i, t in enumerate(types):
            hint = names[i] if i < len(names) else (op if len(types) == 1 else f"{op}.{i}")
            node.outputs.append(Value(self.fresh_name(hint), t, producer=node))
        node.graph = self
        if before is None and after is None:
            before = self._insert_before
        for anchor in (before, after):
            if anchor is not None and anchor.graph is not self:
                raise IRError(
                    f"cannot insert next to node {anchor.name}: it is not in graph {self.name}"
                )
        self.nodes._insert(node, before=before, after=after)
        return node

    def insertion_point(self, before: Node | None) -> _InsertionPoint:
        """``with graph.insertion_point(node):`` makes create_node insert before ``node``."""
        return _InsertionPoint(self, before)

    def _unlink(self, node: Node) -> None:
        self.nodes._unlink(node)
        node.graph = None
        for v in node.outputs:
            self._names.discard(v.name)

    def remove_initializer(self, name: str) -> None:
        """Delete initializer ``name``; refuses while it is read or returned."""
        v = self.initializers[name]
        if v._uses or any(o is v for o in self.outputs):
            raise IRError(f"cannot remove initializer {name!r}: it is still used")
        self._names.discard(name)
        del self.initializers[name]

    def remove_unused_initializers(self) -> int:
        dead = [k for k, v in self.initializers.items() if not v._uses and v not in self.outputs]
        for k in dead:
            self._names.discard(k)
            del self.initializers[k]
        return len(dead)

    # -- inspection ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.nodes)

    def values(self) -> Iterator[Value]:
        yield from self.inputs
        yield from self.initializers.values()
        for node in self.nodes:
            yield from node.outputs

    def feeds_output(self, node: Node) -> bool:
        """True when one of ``node``'s outputs is a graph output."""
        return any(o is v for v in node.outputs for o in self.outputs)

    def op_histogram(self) -> dict[str, int]:
        """Node count per op, sorted by op name."""
        hist: dict[str, int] = {}
        for node in self.nodes:
            hist[node.op] = hist.get(node.op, 0) + 1
        return dict(sorted(hist.items()))

    def symbols(self) -> list[str]:
        """The symbolic dim names of the graph inputs, in first-seen order."""
        seen: dict[str, None] = {}
        for v in self.inputs:
            for d in v.shape:
                if isinstance(d, SymDim):
                    for s in sorted(d.free_symbols()):
                        seen.setdefault(s)
        return list(seen)

    def to_networkx(self):
        """A ``networkx.MultiDiGraph`` with one vertex per node and an edge per value use."""
        import networkx as nx

        g = nx.MultiDiGraph()
        for node in self.nodes:
            g.add_node(node, op=node.op)
        for node in self.nodes:
            for i, v in enumerate(node.inputs):
                if v is not None and v.producer is not None and v.producer.graph is self:
                    g.add_edge(v.producer, node, value=v.name, index=i)
        return g

    def topological_sort(self) -> None:
        """Reorder the node list so every node follows its producers (stable by current order)."""
        import networkx as nx

        order = {node: i for i, node in enumerate(self.nodes)}
        g = self.to_networkx()
        try:
            sorted_nodes = list(nx.lexicographical_topological_sort(g, key=order.__getitem__))
        except nx.NetworkXUnfeasible:
            raise IRError(f"graph {self.name} has a cycle") from None
        self.nodes = NodeList()
        for node in sorted_nodes:
            self.nodes._insert(node)

    def verify(self) -> None:
        from .verify import verify

        verify(self)

    def dump(self, *, provenance: bool = False, contents: bool = True) -> str:
        from .printer import dump

        return dump(self, provenance=provenance, contents=contents)

    def clone(self) -> Graph:
        """A deep copy of the structure; constant arrays are shared (they are never mutated)."""
        g = Graph(self.name)
        g.meta = dict(self.meta)
        vmap: dict[int, Value] = {}

        def copy_value(v: Value, producer: Node | None = None) -> Value:
            nv = Value(v.name, v.type, producer=producer, const=v.const, trainable=v.trainable)
            nv.meta = dict(v.meta)
            g._names.add(v.name)
            vmap[id(v)] = nv
            return nv

        g.inputs = [copy_value(v) for v in self.inputs]
        for k, v in self.initializers.items():
            g.initializers[k] = copy_value(v)
        for node in self.nodes:
            nn_ = Node(node.op, [vmap[id(v)] if v is not None else None for v in node.inputs])
            nn_.attrs = node.attrs
            nn_.meta = dict(node.meta)
            nn_.outputs = [copy_value(v, nn_) for v in node.outputs]
            nn_.graph = g
            g.nodes._insert(nn_)
        g.outputs = [vmap[id(v)] for v in self.outputs]
        g._counters = dict(self._counters)
        return g

    def __repr__(self) -> str:
        return f"Graph({self.name}: {len(self.inputs)} inputs, {len(self.nodes)} nodes)"

    # Pickling goes through a flat description: the linked node list and use-lists would
    # otherwise recurse once per node.
    def __getstate__(self) -> dict[str, Any]:
        def value_state(v: Value) -> tuple:
            return (v.name, v.type, v.trainable, dict(v.meta))

        return {
            "name": self.name,
            "meta": dict(self.meta),
            "inputs": [value_state(v) for v in self.inputs],
            "initializers": [(value_state(v), v.const) for v in self.initializers.values()],
            "nodes": [
                (
                    n.op,
                    [None if v is None else v.name for v in n.inputs],
                    dict(n.attrs),
                    dict(n.meta),
                    [value_state(v) for v in n.outputs],
                )
                for n in self.nodes
            ],
            "outputs": [v.name for v in self.outputs],
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"])
        self.meta = state["meta"]
        values: dict[str, Value] = {}

        def make(st: tuple, producer: Node | None = None, const: np.ndarray | None = None) -> Value:
            name, type_, trainable, meta = st
            v = Value(name, type_, producer=producer, const=const, trainable=trainable)
            v.meta = meta
            self._names.add(name)
            values[name] = v
            return v

        self.inputs = [make(st) for st in state["inputs"]]
        for st, const in state["initializers"]:
            self.initializers[st[0]] = make(st, const=const)
        for op, ins, attrs, meta, outs in state["nodes"]:
            node = Node(op, [None if n is None else values[n] for n in ins], attrs, meta)
            node.outputs = [make(st, producer=node) for st in outs]
            node.graph = self
            self.nodes._insert(node)
        self.outputs = [values[n] for n in state["outputs"]]


class _InsertionPoint:
    def __init__(self, graph: Graph, before: Node | None):
        self.graph = graph
        self.before = before
        self.saved: Node | None = None

    def __enter__(self) -> Graph:
        self.saved = self.graph._insert_before
        self.graph._insert_before = self.before
        return self.graph

    def __exit__(self, *exc: object) -> None:
        self.graph._insert_before = self.saved
