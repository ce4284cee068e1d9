"""Dead-node elimination."""

from __future__ import annotations

from tgraph.ir import Graph
from tgraph.ir.ops import get_op
from tgraph.passmanager import Pass, PassResult, register


@register("dce")
class DeadCodeElimination(Pass):
    """Remove pure nodes whose outputs nobody reads, and unused initializers."""

    def run(self, graph: Graph) -> PassResult:
        removed = 0
        # Walking backwards frees a whole dead chain in one sweep.
        for node in reversed(graph.nodes):
            if get_op(node.op).pure and not node.has_users() and not _is_output(graph, node):
                node.remove()
                removed += 1
        dropped = graph.remove_unused_initializers()
        return PassResult(bool(removed or dropped), {"nodes": removed, "initializers": dropped})


def _is_output(graph: Graph, node) -> bool:
    outputs = {id(v) for v in graph.outputs}
    return any(id(v) in outputs for v in node.outputs)
