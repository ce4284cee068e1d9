"""Dead-node elimination."""

from __future__ import annotations

from tgraph.ir import Graph
from tgraph.ir.ops import get_op
from tgraph.ir.printer import is_inline
from tgraph.passes.manager import Pass, PassResult, register


@register("dce")
class DeadCodeElimination(Pass):
    """Remove pure nodes whose outputs nobody reads, and unused initializers."""

    def run(self, graph: Graph) -> PassResult:
        removed = 0
        # Walking backwards frees a whole dead chain in one sweep.
        for node in reversed(graph.nodes):
            if get_op(node.op).pure and not node.has_users() and not graph.feeds_output(node):
                node.remove()
                removed += 1
        # Tiny constants print inline at their uses, so dropping an unused one leaves the dump
        # as it was: only the listed ones count as a change the manager can see.
        listed = sum(not is_inline(v) for v in _unused_initializers(graph))
        dropped = graph.remove_unused_initializers()
        return PassResult(bool(removed or listed), {"nodes": removed, "initializers": dropped})


def _unused_initializers(graph: Graph) -> list:
    outputs = {id(v) for v in graph.outputs}
    return [v for v in graph.initializers.values() if not v.uses() and id(v) not in outputs]
