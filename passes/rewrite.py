"""The shared rewrite engine: rules of pattern / check / replace.

A fusion pass is a :class:`RewritePass` with a tuple of :class:`Rule`; the patterns are
written with :class:`P` (see :mod:`tgraph.passes.pattern`). The engine owns soundness once for
every rule: no interior value of a match may be a graph output or be read outside the
match. It records, per rule, how many sites it rewrote and, for every site whose pattern
matched but which was rejected, why ("why not fused"). New nodes carry ``meta["rule"]``
and ``meta["replaced"]`` (the original nodes they stand for), and the value that replaces
the match root takes the root's name, so a one-node rewrite shows as one small hunk in the
dump diff.

Rules are indexed by the ops at their patterns' roots, so a node meets only the rules that
can match it, in the order the pass lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tgraph.ir import DType, Graph, Node, Value
from tgraph.passes.manager import Pass, PassResult
from tgraph.passes.pattern import Match, P, Pattern, match_node, root_ops

__all__ = ["Builder", "Match", "P", "Pattern", "RewritePass", "Rule"]


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
Site = Callable[[Match], Any]  # the facts replace needs, or a reason string to reject
Replace = Callable[[Builder, Match], Value | list[Value]]


@dataclass(frozen=True)
class Rule:
    """A named rewrite: when ``pattern`` matches and ``check`` returns None, ``replace``.

    ``check`` returns a reason string to reject a site ("bias has rank 2, want 1").
    ``replace`` returns the value(s) standing for the root node's output(s).

    ``site``, when the check and the replacement need the same facts (shapes proven, a
    mask planned), computes them once: it returns a reason string to reject, or anything
    else to accept, which ``replace`` reads as ``m.site``. It runs after ``check``.

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
    site: Site | None = None

    def __post_init__(self) -> None:
        try:
            root_ops(self.pattern)
        except TypeError as e:
            raise TypeError(f"rule {self.name}: {e}") from None


def _verdict(graph: Graph, rule: Rule, m: Match) -> str | None:
    """None when the site may be rewritten (``m.site`` then set), else why not: the engine's
    soundness first, then the rule's ``check``, then its ``site``."""
    reason = _soundness(graph, m, rule.exports) or (rule.check(m) if rule.check else None)
    if reason is None and rule.site is not None:
        site = rule.site(m)
        if isinstance(site, str):
            return site
        m.site = site
    return reason


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


def _index(rules: tuple[Rule, ...]) -> dict[str, list[Rule]]:
    """op -> the rules whose pattern can be rooted at a node of that op, in the pass's order."""
    by_op: dict[str, list[Rule]] = {}
    for rule in rules:
        for op in root_ops(rule.pattern):
            by_op.setdefault(op, []).append(rule)
    return by_op


class RewritePass(Pass):
    """A pass made of rules, applied in node order until nothing matches.

    Each sweep visits every node once and rewrites it with the first of its rules that
    applies. Sweeps repeat until one changes nothing, at most ``max_sweeps`` times; when
    the last allowed sweep still rewrote, the stats say so under ``sweep_limit``.

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
        by_op = _index(self.rules)
        counts = {r.name: 0 for r in self.rules}
        rejected: dict[tuple[str, str], dict[str, str]] = {}
        changed = True
        for _ in range(self.max_sweeps):
            changed = self._sweep(graph, by_op, counts, rejected)
            if not changed:
                break
        stats: dict[str, Any] = {
            "matches": counts,
            "rejected": sorted(rejected.values(), key=_rejection_key),
        }
        if changed:
            stats["sweep_limit"] = (
                f"stopped after {self.max_sweeps} sweeps, the last of which still rewrote: "
                "the graph may hold more matches (do two rules undo each other?)"
            )
        return PassResult(bool(self.applied), stats)

    def _sweep(self, graph: Graph, by_op: dict, counts: dict, rejected: dict) -> bool:
        changed = False
        for node in graph.nodes:
            if node.graph is None:
                continue
            for rule in by_op.get(node.op, ()):
                if self.max_matches is not None and len(self.applied) >= self.max_matches:
                    return changed
                if self._apply(graph, rule, node, rejected):
                    counts[rule.name] += 1
                    changed = True
                    break
        return changed

    def _apply(self, graph: Graph, rule: Rule, root: Node, rejected: dict) -> bool:
        key = (rule.name, root.name)
        reason = None
        for bindings, nodes in match_node(rule.pattern, root, {}, (), rule.commutative):
            m = Match(bindings, _order(graph, nodes), root)
            reason = _verdict(graph, rule, m)
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
            if id(new) in created and not graph.has_name(name):
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
