"""Values and nodes of the tgraph IR (the Graph that holds them is in ``graph.py``).

The IR is functional (no in-place ops) and in SSA form: each :class:`Value` is
produced by one :class:`Node`, or is a graph input, or is an initializer (it has
``const``). Only methods here edit use-lists; passes call
:meth:`Value.replace_all_uses_with`, :meth:`Graph.create_node` and
:meth:`Node.remove`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .dims import DimLike, SymDim, simplify
from .dtypes import DType

if TYPE_CHECKING:
    from .graph import Graph


class IRError(Exception):
    """A malformed graph or an illegal edit."""


class TensorType(NamedTuple):
    """The static type of a value: element type and (possibly symbolic) shape."""

    dtype: DType
    shape: tuple[DimLike, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


def freeze(x: Any) -> Any:
    """Make an attribute value immutable: lists become tuples, dicts become sorted tuples."""
    if isinstance(x, (list, tuple)):
        return tuple(freeze(v) for v in x)
    if isinstance(x, dict):
        return tuple(sorted((k, freeze(v)) for k, v in x.items()))
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (SymDim, DType, str, int, float, bool)) or x is None:
        return simplify(x) if isinstance(x, SymDim) else x
    raise IRError(f"attribute value {x!r} of type {type(x).__name__} is not a plain value")


class Value:
    """An SSA value: a graph input, an initializer (``const`` set) or a node output."""

    __slots__ = ("name", "type", "producer", "const", "trainable", "_uses", "meta")

    def __init__(
        self,
        name: str,
        type: TensorType,
        *,
        producer: Node | None = None,
        const: np.ndarray | None = None,
        trainable: bool = False,
    ):
        self.name = name
        self.type = type
        self.producer = producer
        self.const = const
        self.trainable = trainable
        self._uses: list[tuple[Node, int]] = []
        self.meta: dict[str, Any] = {}

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def shape(self) -> tuple[DimLike, ...]:
        return self.type.shape

    @property
    def rank(self) -> int:
        return len(self.type.shape)

    @property
    def is_const(self) -> bool:
        return self.const is not None

    def uses(self) -> tuple[tuple[Node, int], ...]:
        """A snapshot of ``(node, input_index)`` pairs that read this value."""
        return tuple(self._uses)

    def users(self) -> list[Node]:
        """Distinct nodes that read this value, in use order."""
        seen: dict[int, Node] = {}
        for node, _ in self._uses:
            seen.setdefault(id(node), node)
        return list(seen.values())

    def replace_all_uses_with(self, other: Value, graph: Graph | None = None) -> None:
        """Point every user (and, given ``graph``, every graph output) at ``other``."""
        if other is self:
            return
        for node, index in self.uses():
            node.replace_input(index, other)
        if graph is not None:
            graph.outputs = [other if v is self else v for v in graph.outputs]

    def __repr__(self) -> str:
        return f"Value({self.name}: {self.type})"


class Node:
    """One operation. ``op`` names an entry of the op registry."""

    __slots__ = ("op", "_inputs", "outputs", "attrs", "meta", "graph", "_prev", "_next")

    def __init__(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ):
        self.op = op
        self._inputs: list[Value | None] = []
        self.outputs: list[Value] = []
        self.attrs: Mapping[str, Any] = MappingProxyType(
            {k: freeze(v) for k, v in sorted((attrs or {}).items())}
        )
        self.meta: dict[str, Any] = dict(meta or {})
        self.graph: Graph | None = None
        self._prev: Node | None = None
        self._next: Node | None = None
        for v in inputs:
            self._append_input(v)

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    def _append_input(self, v: Value | None) -> None:
        if v is not None:
            v._uses.append((self, len(self._inputs)))
        self._inputs.append(v)

    def replace_input(self, index: int, new: Value | None) -> None:
        old = self._inputs[index]
        if old is not None:
            old._uses.remove((self, index))
        if new is not None:
            new._uses.append((self, index))
        self._inputs[index] = new

    def _detach_inputs(self) -> None:
        for i in range(len(self._inputs)):
            self.replace_input(i, None)

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise IRError(f"node {self.name} has {len(self.outputs)} outputs, not one")
        return self.outputs[0]

    @property
    def name(self) -> str:
        return self.outputs[0].name if self.outputs else f"<{self.op}>"

    def has_users(self) -> bool:
        return any(v._uses for v in self.outputs)

    def remove(self) -> None:
        """Delete this node from its graph. Refuses while any output is still read."""
        if self.graph is None:
            raise IRError(f"node {self.name} is not in a graph")
        for v in self.outputs:
            if v._uses:
                users = ", ".join(n.name for n in v.users())
                raise IRError(
                    f"cannot remove {self.op} node {self.name}: {v.name} is used by {users}"
                )
            if any(o is v for o in self.graph.outputs):
                raise IRError(
                    f"cannot remove {self.op} node {self.name}: {v.name} is a graph output"
                )
        self.graph._unlink(self)
        self._detach_inputs()

    def __repr__(self) -> str:
        ins = ", ".join(v.name if v is not None else "None" for v in self._inputs)
        return f"Node({self.op}({ins}) -> {[v.name for v in self.outputs]})"


class NodeList:
    """A doubly linked list of nodes that tolerates removal and insertion while iterating."""

    def __init__(self) -> None:
        self._head: Node | None = None
        self._tail: Node | None = None
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Node]:
        node = self._head
        while node is not None:
            nxt = node._next
            if node.graph is not None:
                yield node
                nxt = node._next  # re-read: nodes inserted after `node` are visited
            node = nxt

    def __reversed__(self) -> Iterator[Node]:
        node = self._tail
        while node is not None:
            prev = node._prev
            if node.graph is not None:
                yield node
                prev = node._prev
            node = prev

    def _insert(self, node: Node, before: Node | None = None, after: Node | None = None) -> None:
        if before is not None:
            after = before._prev
            nxt = before
        elif after is not None:
            nxt = after._next
        else:
            after, nxt = self._tail, None
        node._prev, node._next = after, nxt
        if after is None:
            self._head = node
        else:
            after._next = node
        if nxt is None:
            self._tail = node
        else:
            nxt._prev = node
        self._len += 1

    def _unlink(self, node: Node) -> None:
        # Keep node._next so an iterator standing on `node` can move on.
        if node._prev is None:
            self._head = node._next
        else:
            node._prev._next = node._next
        if node._next is None:
            self._tail = node._prev
        else:
            node._next._prev = node._prev
        self._len -= 1
