"""The pattern language of the rewrite engine (:mod:`tgraph.passes.rewrite`) and how it matches.

Patterns::

    P.op("add", P.op("matmul", P.var("x"), P.const("w")), P.const("b"))
    P.op("softmax", P.var("s"), axis=-1)            # attribute equals -1
    P.op("mul", P.var("x"), P.scalar(0.5))          # a constant scalar close to 0.5
    P.op("reshape", P.var("x"), shape=lambda s: len(s) == 4, name="split")  # bind the node
    P.op(("tril", "triu"), P.var("m"))              # either op
    P.op("sdpa", P.var("q"), P.var("k"), P.var("v"), P.opt(P.var("mask")))  # mask or none
    P.op("attention", P.var("q"), P.var("k"), P.var("v"), other_inputs=True)  # more unmatched
    P.either(s, P.op("identity", s), tag="wrapped")  # the first that matches; m["wrapped"]: 0/1

Matching enumerates every way a value matches, depth first, in the order written:
alternatives of ``P.either`` first to last, then commutative operands as written before
swapped. A rule takes the first match that passes its checks, so the order is part of the
rule. A rule's pattern is rooted at ``P.op`` (or ``P.either`` of them): the engine indexes
rules by the ops at their roots.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tgraph.ir import Node, Value
from tgraph.ir.ops import get_op


class Pattern:
    """Base class; use the constructors on :class:`P`."""


@dataclass(frozen=True)
class _Var(Pattern):
    name: str


@dataclass(frozen=True)
class _Const(Pattern):
    name: str


@dataclass(frozen=True)
class _Scalar(Pattern):
    value: float | None
    name: str | None
    rel_tol: float


@dataclass(frozen=True)
class _Op(Pattern):
    ops: tuple[str, ...]
    inputs: tuple[Pattern, ...]
    attrs: tuple[tuple[str, Any], ...]
    name: str | None
    output: int | None
    other_inputs: bool  # the node may have inputs after ``inputs``; they are not matched
    required: int  # the node has at least this many inputs: up to the last non-optional one


@dataclass(frozen=True)
class _Optional(Pattern):
    pattern: Pattern


@dataclass(frozen=True)
class _Either(Pattern):
    alternatives: tuple[Pattern, ...]
    tag: str | None


def _checked(p: object, where: str) -> Pattern:
    if not isinstance(p, Pattern):
        raise TypeError(f"{where} takes patterns (P.var, P.op, ...), got {p!r}")
    return p


class P:
    """Pattern constructors."""

    @staticmethod
    def var(name: str) -> Pattern:
        """Any value; the same name twice must be the same value."""
        return _Var(name)

    @staticmethod
    def const(name: str) -> Pattern:
        """A constant (initializer) value."""
        return _Const(name)

    @staticmethod
    def scalar(
        value: float | None = None, name: str | None = None, rel_tol: float = 1e-6
    ) -> Pattern:
        """A constant with one element, close to ``value`` when given; binds the float to
        ``name``."""
        return _Scalar(value, name, rel_tol)

    @staticmethod
    def op(
        op: str | tuple[str, ...],
        *inputs: Pattern,
        name: str | None = None,
        output: int | None = None,
        other_inputs: bool = False,
        **attrs: Any,
    ) -> Pattern:
        """A node of op ``op`` (or one of several) whose inputs match ``inputs``.

        Attribute values are compared for equality, or called when callable. ``name``
        binds the node; ``output`` requires a specific output index of a multi-output node.
        An input may be ``P.opt(...)``: absent (None, or past the node's last input) or
        matching. ``other_inputs=True`` allows inputs after the listed ones, unmatched.
        """
        ops = (op,) if isinstance(op, str) else tuple(op)
        ins = tuple(_checked(p, f"P.op({ops[0]!r})") for p in inputs)
        required = max(
            (i + 1 for i, p in enumerate(ins) if not isinstance(p, _Optional)), default=0
        )
        return _Op(ops, ins, tuple(sorted(attrs.items())), name, output, other_inputs, required)

    @staticmethod
    def opt(pattern: Pattern) -> Pattern:
        """An optional input of ``P.op``: absent, or matching ``pattern`` (whose names are
        then bound; ``m.get(name)`` is None when it is absent)."""
        if isinstance(_checked(pattern, "P.opt"), _Optional):
            raise TypeError("P.opt(P.opt(...)): an input is optional once")
        return _Optional(pattern)

    @staticmethod
    def either(*alternatives: Pattern, tag: str | None = None) -> Pattern:
        """The first of ``alternatives`` that matches (all are tried, in order, until a match
        passes the rule's checks); ``tag`` binds the index of the one that matched."""
        if len(alternatives) < 2:
            raise TypeError("P.either takes two or more alternatives")
        for p in alternatives:
            if isinstance(_checked(p, "P.either"), _Optional):
                raise TypeError("P.opt is an input of P.op, not an alternative of P.either")
        return _Either(tuple(alternatives), tag)


def root_ops(p: Pattern) -> tuple[str, ...]:
    """The ops a node matching ``p`` can have, in order (the engine's index keys)."""
    if isinstance(p, _Op):
        return p.ops
    if isinstance(p, _Either):
        ops = [op for alt in p.alternatives for op in root_ops(alt)]
        return tuple(dict.fromkeys(ops))
    raise TypeError(f"a rule's pattern must be P.op or P.either of P.op at its root, not {p}")


class Match(Mapping[str, Any]):
    """The bindings of one match: ``m["x"]`` is a Value, a Node (named op), a float (named
    scalar) or an int (an ``either`` tag). ``site`` is what the rule's ``site`` returned."""

    def __init__(self, bindings: dict[str, Any], nodes: list[Node], root: Node):
        self._bindings = bindings
        self.nodes = nodes  # every matched node, root included, in graph order
        self.root = root
        self.site: Any = None

    def __getitem__(self, key: str) -> Any:
        return self._bindings[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._bindings)

    def __len__(self) -> int:
        return len(self._bindings)


Found = Iterator[tuple[dict[str, Any], tuple[Node, ...]]]  # (bindings, matched nodes)


def match_value(
    p: Pattern, v: Value, b: dict[str, Any], nodes: tuple[Node, ...], comm: bool
) -> Found:
    """Every way ``v`` matches ``p`` given the bindings ``b`` so far."""
    if isinstance(p, _Either):
        for i, alt in enumerate(p.alternatives):
            tagged = _tagged(p, i, b)
            if tagged is not None:
                yield from match_value(alt, v, tagged, nodes, comm)
    elif isinstance(p, _Var):
        if p.name in b:
            if b[p.name] is v:
                yield b, nodes
        else:
            yield {**b, p.name: v}, nodes
    elif isinstance(p, _Const):
        if v.const is not None and (p.name not in b or b[p.name] is v):
            yield {**b, p.name: v}, nodes
    elif isinstance(p, _Scalar):
        x = _scalar(p, v)
        if x is not None:
            yield ({**b, p.name: x} if p.name else b), nodes
    elif isinstance(p, _Op):
        node = v.producer
        if node is None or (p.output is not None and node.outputs[p.output] is not v):
            return
        yield from match_node(p, node, b, nodes, comm)


def match_node(
    p: Pattern, node: Node, b: dict[str, Any], nodes: tuple[Node, ...], comm: bool
) -> Found:
    """Every way ``node`` matches the op pattern ``p`` (or an ``either`` of them)."""
    if isinstance(p, _Either):
        for i, alt in enumerate(p.alternatives):
            tagged = _tagged(p, i, b)
            if tagged is not None:
                yield from match_node(alt, node, tagged, nodes, comm)
        return
    assert isinstance(p, _Op), p  # root_ops rejects rules rooted elsewhere
    n = len(node.inputs)
    if node.op not in p.ops or n < p.required or (n > len(p.inputs) and not p.other_inputs):
        return
    if p.name is not None and p.name in b and b[p.name] is not node:
        return
    if not _attrs_ok(p, node):
        return
    if p.name is not None:
        b = {**b, p.name: node}
    if node not in nodes:
        nodes = nodes + (node,)
    orders = [node.inputs]
    if comm and n == 2 and get_op(node.op).commutative:
        orders.append(node.inputs[::-1])
    for inputs in orders:
        yield from _match_inputs(p.inputs, inputs, b, nodes, comm)


def _tagged(p: _Either, index: int, b: dict[str, Any]) -> dict[str, Any] | None:
    if p.tag is None:
        return b
    if p.tag in b:
        return b if b[p.tag] == index else None
    return {**b, p.tag: index}


def _scalar(p: _Scalar, v: Value) -> float | None:
    if v.const is None or v.const.size != 1:
        return None
    x = float(np.asarray(v.const, dtype=np.float64).reshape(()))
    if p.value is not None and not math.isclose(x, p.value, rel_tol=p.rel_tol, abs_tol=1e-12):
        return None
    return x


def _attrs_ok(p: _Op, node: Node) -> bool:
    for key, want in p.attrs:
        have = node.attrs.get(key)
        if callable(want) and not isinstance(want, type):
            if not want(have):
                return False
        elif have != want:
            return False
    return True


def _match_inputs(patterns, values, b, nodes, comm) -> Found:
    # Inputs past the node's last one are absent, like None; other_inputs leaves extra ones.
    if not patterns:
        yield b, nodes
        return
    first, rest = patterns[0], patterns[1:]
    v = values[0] if values else None
    if isinstance(first, _Optional):
        if v is None:
            yield from _match_inputs(rest, values[1:], b, nodes, comm)
            return
        first = first.pattern
    elif v is None:
        return
    for b2, n2 in match_value(first, v, b, nodes, comm):
        yield from _match_inputs(rest, values[1:], b2, n2, comm)
