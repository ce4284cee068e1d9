"""The shared rewrite engine: rules of pattern / check / replace.

A fusion pass is a :class:`RewritePass` with a tuple of :class:`Rule`. The engine owns
soundness once for every rule: no interior value of a match may be a graph output or be
read outside the match. It records, per rule, how many sites it rewrote and, for every
site whose pattern matched but which was rejected, why ("why not fused"). New nodes carry
``meta["rule"]`` and ``meta["replaced"]`` (the original nodes they stand for), and the
value that replaces the match root takes the root's name, so a one-node rewrite shows as
one small hunk in the dump diff.

Patterns::

    P.op("add", P.op("matmul", P.var("x"), P.const("w")), P.const("b"))
    P.op("softmax", P.var("s"), axis=-1)            # attribute equals -1
    P.op("mul", P.var("x"), P.scalar(0.5))          # a constant scalar close to 0.5
    P.op("reshape", P.var("x"), shape=lambda s: len(s) == 4, name="split")  # bind the node
    P.op(("tril", "triu"), P.var("m"))              # either op
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tgraph.ir import DType, Graph, Node, Value
from tgraph.ir.ops import get_op
from tgraph.passes.manager import Pass, PassResult

# -- patterns --------------------------------------------------------------------------------


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
        """A constant with one element, close to ``value`` when given; binds the float to ``name``."""
        return _Scalar(value, name, rel_tol)

    @staticmethod
    def op(
        op: str | tuple[str, ...],
        *inputs: Pattern,
        name: str | None = None,
        output: int | None = None,
        **attrs: Any,
    ) -> Pattern:
        """A node of op ``op`` (or one of several) whose inputs match ``inputs``.

        Attribute values are compared for equality, or called when callable. ``name``
        binds the node; ``output`` requires a specific output index of a multi-output node.
        """
        ops = (op,) if isinstance(op, str) else tuple(op)
        return _Op(ops, tuple(inputs), tuple(sorted(attrs.items())), name, output)


class Match(Mapping[str, Any]):
    """The bindings of one match: ``m["x"]`` is a Value, a Node (named op) or a float."""

    def __init__(self, bindings: dict[str, Any], nodes: list[Node], root: Node):
        self._bindings = bindings
        self.nodes = nodes  # every matched node, root included, in graph order
        self.root = root

    def __getitem__(self, key: str) -> Any:
        return self._bindings[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._bindings)

    def __len__(self) -> int:
        return len(self._bindings)


def _match(p: Pattern, v: Value, b: dict[str, Any], nodes: tuple[Node, ...], commutative: bool):
    """Yield (bindings, matched nodes) for every way ``v`` matches ``p``."""
    if isinstance(p, _Var):
        if p.name in b:
            if b[p.name] is v:
                yield b, nodes
        else:
            yield {**b, p.name: v}, nodes
    elif isinstance(p, _Const):
        if v.const is not None and (p.name not in b or b[p.name] is v):
            yield {**b, p.name: v}, nodes
    elif isinstance(p, _Scalar):
        if v.const is None or v.const.size != 1:
            return
        x = float(np.asarray(v.const, dtype=np.float64).reshape(()))
        if p.value is not None and not math.isclose(x, p.value, rel_tol=p.rel_tol, abs_tol=1e-12):
            return
        yield ({**b, p.name: x} if p.name else b), nodes
    elif isinstance(p, _Op):
        node = v.producer
        if node is None or node.op not in p.ops or len(node.inputs) != len(p.inputs):
            return
        if p.output is not None and node.outputs[p.output] is not v:
            return
        if p.name is not None and p.name in b and b[p.name] is not node:
            return
        yield from _match_node(p, node, b, nodes, commutative)


def _attrs_ok(p: _Op, node: Node) -> bool:
    for key, want in p.attrs:
        have = node.attrs.get(key)
        if callable(want) and not isinstance(want, type):
            if not want(have):
                return False
        elif have != want:
            return False
    return True


def _match_node(p: _Op, node: Node, b, nodes, commutative: bool):
    if not _attrs_ok(p, node):
        return
    if p.name is not None:
        b = {**b, p.name: node}
    if node not in nodes:
        nodes = nodes + (node,)
    orders = [node.inputs]
    if commutative and len(node.inputs) == 2 and get_op(node.op).commutative:
        orders.append(node.inputs[::-1])
    for inputs in orders:
        yield from _match_inputs(p.inputs, inputs, b, nodes, commutative)


def _match_inputs(patterns, values, b, nodes, commutative):
    if not patterns:
        yield b, nodes
        return
    first, rest = patterns[0], patterns[1:]
    if values[0] is None:
        return
    for b2, n2 in _match(first, values[0], b, nodes, commutative):
        yield from _match_inputs(rest, values[1:], b2, n2, commutative)


# -- building replacements ---------------------------------------------------------------------


class Builder:
    """Creates replacement nodes just before the match root, tagged with the rule."""

    def __init__(self, graph: Graph, match: Match, rule: str):
        self.graph = graph
        self.match = match
        replaced: list[str] = []
        for n in match.nodes:
            replaced.extend(n.meta.get("replaced") or (n.name,))
        root = match.root
        self.meta = {
            "rule": rule,
            "replaced": tuple(replaced),
            "module": root.meta.get("module", ""),
            "source": root.meta.get("source", ""),
        }
        self.created: list[Node] = []

    def node(self, op: str, inputs: list[Value | None], **attrs: Any) -> Node:
        node = self.graph.create_node(
            op, inputs, attrs, meta=self.meta, names=[f"{op}_fused"], before=self.match.root
        )
        self.created.append(node)
        return node

    def op(self, op: str, *inputs: Value | None, **attrs: Any) -> Value:
        return self.node(op, list(inputs), **attrs).output

    def const(self, value: Any, dtype: DType, hint: str = "c") -> Value:
        return self.graph.add_const(value, dtype, hint=hint)


# -- rules and the engine ------------------------------------------------------------------------

Check = Callable[[Match], str | None]
Replace = Callable[[Builder, Match], Value | list[Value]]


@dataclass(frozen=True)
class Rule:
    """A named rewrite: when ``pattern`` matches and ``check`` returns None, ``replace``.

    ``check`` returns a reason string to reject a site ("bias has rank 2, want 1").
    ``replace`` returns the value(s) standing for the root node's output(s).

    ``exports`` names interior nodes (bound with ``name=``) whose outputs the replacement
    takes over: they may be read outside the match (by nodes after the root), and
    ``replace`` returns, after the root's values, one value per output of each, in order.

    ``quiet=True`` marks a canonicalization whose check only says "not this case" (a
    reshape to another shape is not a no-op reshape): its rejections are not "why not
    fused" records, which would otherwise list every real reshape in the model.
    """

    name: str
    pattern: Pattern
    replace: Replace
    check: Check | None = None
    commutative: bool = True
    exports: tuple[str, ...] = ()
    quiet: bool = False


def _soundness(graph: Graph, m: Match, exports: tuple[str, ...] = ()) -> str | None:
    inside = {id(n) for n in m.nodes}
    outputs = {id(v) for v in graph.outputs}
    exported = {id(m[e]) for e in exports}
    for node in m.nodes:
        if node is m.root:
            continue
        if id(node) in exported:
            reason = _exported_users_follow_root(graph, m, node, inside)
            if reason:
                return reason
            continue
        for v in node.outputs:
            if id(v) in outputs:
                return f"interior value %{v.name} is a graph output"
            for user, _ in v.uses():
                if id(user) not in inside:
                    return f"interior value %{v.name} is also used by %{user.name} ({user.op})"
    return None


def _exported_users_follow_root(graph: Graph, m: Match, node: Node, inside: set[int]):
    # The replacement goes just before the root, so it must come before every outside user.
    before_root: set[int] = set()
    for n in graph.nodes:
        if n is m.root:
            break
        before_root.add(id(n))
    for v in node.outputs:
        for user, _ in v.uses():
            if id(user) not in inside and id(user) in before_root:
                return f"exported value %{v.name} is used by %{user.name} before the match root"
    return None


def _order(graph: Graph, nodes: tuple[Node, ...]) -> list[Node]:
    wanted = {id(n) for n in nodes}
    return [n for n in graph.nodes if id(n) in wanted]


class RewritePass(Pass):
    """A pass made of rules, applied in node order until nothing matches.

    Options:
        max_matches: stop after this many rewrites (used to bisect a bad rewrite).

    After ``run``, ``applied`` lists the sites it rewrote, in order (``{"rule", "node",
    "module", "source"}``): match N of a bisect is ``applied[N - 1]``. It describes the
    last run only; nothing carries over to the next.
    """

    rules: tuple[Rule, ...] = ()
    max_sweeps = 20

    def __init__(self, max_matches: int | None = None):
        self.max_matches = max_matches
        self.applied: list[dict[str, str]] = []

    def run(self, graph: Graph) -> PassResult:
        self.applied = []
        counts = {r.name: 0 for r in self.rules}
        rejected: dict[tuple[str, str], dict[str, str]] = {}
        total = 0
        for _ in range(self.max_sweeps):
            changed = False
            for node in graph.nodes:
                if node.graph is None:
                    continue
                for rule in self.rules:
                    if self.max_matches is not None and total >= self.max_matches:
                        break
                    if self._apply(graph, rule, node, rejected):
                        counts[rule.name] += 1
                        total += 1
                        changed = True
                        break
            if not changed:
                break
        stats = {"matches": counts, "rejected": sorted(rejected.values(), key=_rejection_key)}
        return PassResult(total > 0, stats)

    def _apply(self, graph: Graph, rule: Rule, root: Node, rejected: dict) -> bool:
        pattern = rule.pattern
        if not isinstance(pattern, _Op) or root.op not in pattern.ops:
            return False
        if len(root.inputs) != len(pattern.inputs):  # as _match checks for interior nodes
            return False
        key = (rule.name, root.name)
        reason = None
        for bindings, nodes in _match_node(pattern, root, {}, (), rule.commutative):
            m = Match(bindings, _order(graph, nodes), root)
            reason = _soundness(graph, m, rule.exports) or (rule.check(m) if rule.check else None)
            if reason is None:
                rejected.pop(key, None)
                self.applied.append(_site(rule, root))
                self._rewrite(graph, rule, m)
                return True
        if reason is not None and not rule.quiet:
            rejected[key] = {
                "rule": rule.name,
                "node": root.name,
                "module": root.meta.get("module", ""),
                "reason": reason,
            }
        return False

    def _rewrite(self, graph: Graph, rule: Rule, m: Match) -> None:
        builder = Builder(graph, m, rule.name)
        result = rule.replace(builder, m)
        new_values = [result] if isinstance(result, Value) else list(result)
        root = m.root
        old_values = list(root.outputs) + [v for e in rule.exports for v in m[e].outputs]
        if len(new_values) != len(old_values):
            raise ValueError(
                f"rule {rule.name} returned {len(new_values)} values for {len(old_values)}"
            )
        old_names = [v.name for v in old_values]
        for old, new in zip(old_values, new_values):
            old.replace_all_uses_with(new, graph)
        for node in reversed(m.nodes):
            if node.graph is not None and not node.has_users() and not graph.feeds_output(node):
                node.remove()
        created = {id(v) for n in builder.created for v in n.outputs}
        for name, new in zip(old_names, new_values):
            if id(new) in created and name not in graph._names:
                graph.rename(new, name)


def _site(rule: Rule, root: Node) -> dict[str, str]:
    meta = root.meta
    return {
        "rule": rule.name,
        "node": root.name,
        "module": meta.get("module", ""),
        "source": meta.get("source", ""),
    }


def _rejection_key(r: dict[str, str]) -> tuple[str, str]:
    return (r["rule"], r["node"])
