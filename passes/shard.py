"""Tensor parallelism: cut one rank's graph out of the whole model (Megatron-style)."""

from __future__ import annotations

import heapq
from collections import deque

from tgraph.ir import Graph, Node, Value
from tgraph.passes.manager import Pass, PassResult, register

from ._shard_rules import RULES, Demand, Plan, Reject, chunks
from ._shard_slicer import Slicer, rejection
from ._shard_vocab import shard_vocab

RULE = "column-row"


class _NotABlock(Exception):
    """No linear feeds the linear's input (a norm or lookup comes first): it opens a
    block or stands alone (an LM head, a pooler), so there is nothing to prove or report."""


@register("shard")
class Shard(Pass):
    """Tensor-parallel split for one rank: column/row linears + all_reduce, heads, vocab.

    A block is a closing linear (o_proj, down, fc2) and everything between it and the
    linears that open it (q/k/v or merged qkv, gate/up, fc1). The closing linear's input
    features are cut in ``world`` equal chunks; the cut is carried back through the block
    by the rules in ``_shard_rules`` (elementwise and head-local ops only; attention by
    whole heads, GQA KV heads replicated when fewer than ranks) to the openers' output
    features. A block the rules cannot prove stays replicated, with the reason in
    ``stats["rejected"]``. Then rank ``rank`` keeps its slices of every cut weight:

        opener   linear(x, W[rows_r], b[rows_r])                 (column-parallel)
        closer   all_reduce(linear(h_r, W[:, cols_r], b if rank 0 else 0))  (row-parallel)

    Token embeddings (a table gathered by a graph input) and LM heads (a linear that makes
    a graph output) are vocab-parallel with ``vocab=true``: each rank holds ceil(V/world)
    rows; embeddings look up their rows and all_reduce, LM heads all_gather the logits.
    Norms, position tables and everything outside a block stay replicated.

    Options:
        world: the number of ranks (1: nothing to do).
        rank: the rank whose graph this is (its weights; the graph is the same for all).
        vocab: split token embeddings and LM heads by vocabulary rows (default true).
        min_rows: the fewest rows a vocab-parallel table has (default 64).
    """

    def __init__(self, world: int = 1, rank: int = 0, vocab: bool = True, min_rows: int = 64):
        if not isinstance(world, int) or world < 1:
            raise ValueError(f"shard: world is {world!r}, want a positive int")
        if not isinstance(rank, int) or not 0 <= rank < world:
            raise ValueError(f"shard: rank is {rank!r}, want 0..{world - 1}")
        self.world, self.rank, self.vocab, self.min_rows = world, rank, vocab, min_rows

    def run(self, graph: Graph) -> PassResult:
        if self.world == 1:
            return PassResult(False, {"matches": {RULE: 0}, "rejected": []})
        if graph.meta.get("shard"):
            raise ValueError(f"shard: graph {graph.name} is sharded already")
        rejected: list[dict[str, str]] = []
        slicer = Slicer(graph, self.rank, self.world)
        blocks = self._plan_blocks(graph, rejected)
        for closer, plans in blocks:
            _apply_block(graph, closer, plans, slicer, self.world)
        vocab = shard_vocab(graph, slicer, rejected, self.min_rows) if self.vocab else {}
        for name in sorted(slicer.sources):
            _drop_if_unused(graph, name)
        graph.meta["shard"] = {"world": self.world, "rank": self.rank}
        stats = {"matches": {RULE: len(blocks), **vocab}, "rejected": rejected}
        return PassResult(bool(blocks) or any(vocab.values()), stats)

    def _plan_blocks(self, graph: Graph, rejected: list) -> list[tuple[Node, dict[Node, Plan]]]:
        order = {node: i for i, node in enumerate(graph.nodes)}
        claimed: dict[Node, Node] = {}  # node -> the closer of its block
        blocks = []
        for node in list(graph.nodes):
            if node.op != "linear" or node in claimed:
                continue
            try:
                plans = _plan(graph, node, order, self.world)
                _check_unclaimed(node, plans, claimed)
            except _NotABlock:
                continue
            except Reject as e:
                rejected.append(rejection(RULE, node, f"left replicated: {e}"))
                continue
            for member in [node, *plans]:
                claimed[member] = node
            blocks.append((node, plans))
        return blocks


def _check_unclaimed(closer: Node, plans: dict[Node, Plan], claimed: dict[Node, Node]) -> None:
    for node in plans:
        if node in claimed:
            raise Reject(f"%{node.name} belongs to the block closed by %{claimed[node].name}")


def _plan(graph: Graph, closer: Node, order: dict[Node, int], world: int) -> dict[Node, Plan]:
    """The demand on every node of the block that ``closer`` closes, or Reject."""
    x, w = closer.inputs[0], closer.inputs[1]
    if x.producer is None or x.producer.op == "linear" or not _linear_upstream(x):
        raise _NotABlock
    if w.const is None or w.rank != 2:
        raise Reject(f"weight %{w.name} is not a constant matrix")
    if w.shape[1] % world:
        raise Reject(f"{w.shape[1]} input features do not split over {world} ranks")
    demands = {x: Demand(x.rank - 1, chunks(int(w.shape[1]), world))}
    plans: dict[Node, Plan] = {}
    heap = [(-order[x.producer], x.producer)]
    while heap:
        _, node = heapq.heappop(heap)
        if node in plans:
            continue
        outs = [demands.get(v) for v in node.outputs]
        for v, d in zip(node.outputs, outs):
            if d is None and v.uses():
                raise Reject(f"%{v.name} is read outside the block")
        if node.op not in RULES:
            raise Reject(f"%{node.name} ({node.op}) mixes the split dim")
        plan = RULES[node.op](node, outs, world)
        plans[node] = plan
        for v, d in zip(node.inputs, plan.inputs):
            if v is None or d is None or v.const is not None:
                continue
            if v.producer is None:
                raise Reject(f"input %{v.name} would have to arrive split")
            if v in demands and not demands[v].same(d):
                raise Reject(f"%{v.name} is needed split two ways")
            demands[v] = d
            heapq.heappush(heap, (-order[v.producer], v.producer))
    _check_contained(graph, closer, plans)
    return plans


# Ops that end the search for an opener: what follows them is a new block's input.
_BOUNDARIES = frozenset(
    "layer_norm rms_norm skip_layer_norm skip_rms_norm gather reduce_sum reduce_mean "
    "reduce_max var softmax".split()
)


def _linear_upstream(x: Value, limit: int = 64) -> bool:
    """Whether a linear (or fused qkv projection) feeds ``x`` without a norm, lookup or
    reduction in between: only then is the linear reading ``x`` a block's closer, and a
    failed proof worth reporting (an LM head after a norm is no closer). Breadth first,
    so a mask's subgraph does not use up ``limit`` before the projections are seen."""
    seen, todo = set(), deque([x])
    while todo and len(seen) < limit:
        node = todo.popleft().producer
        if node is None or node in seen or node.op in _BOUNDARIES:
            continue
        if node.op in ("linear", "qkv_attention"):
            return True
        seen.add(node)
        todo.extend(v for v in node.inputs if v is not None and v.const is None)
    return False


def _check_contained(graph: Graph, closer: Node, plans: dict[Node, Plan]) -> None:
    """No value of the block is read outside it or returned: it is only a slice there."""
    for node in plans:
        for v in node.outputs:
            if any(o is v for o in graph.outputs):
                raise Reject(f"%{v.name} is a graph output")
            for user in v.users():
                if user is not closer and user not in plans:
                    raise Reject(f"%{v.name} is also read by %{user.name} ({user.op})")


def _apply_block(
    graph: Graph, closer: Node, plans: dict[Node, Plan], slicer: Slicer, world: int
) -> None:
    """Rebuild the block with rank-local shapes, before the old nodes, then drop those."""
    order = [n for n in graph.nodes if n in plans]
    new: dict[Value, Value] = {}
    renames: list[tuple[Value, str]] = []
    for node in order:
        plan = plans[node]
        inputs = [_local(v, d, new, slicer) for v, d in zip(node.inputs, plan.inputs)]
        rebuilt = graph.create_node(
            node.op, inputs, {**node.attrs, **plan.attrs}, meta=_meta(node), before=node
        )
        for old, v in zip(node.outputs, rebuilt.outputs):
            new[old] = v
            renames.append((v, old.name))
    x, w, b = (list(closer.inputs) + [None])[:3]
    cols = Demand(1, chunks(int(w.shape[1]), world))
    inputs = [new[x], slicer.cut(w, "row", 1, cols.local, cols.idx)]
    if b is not None:
        inputs.append(slicer.rank0(b))
    partial = graph.create_node("linear", inputs, meta=_meta(closer), before=closer)
    reduce = graph.create_node(
        "all_reduce", [partial.output], {"world": world}, meta=_meta(closer), before=closer
    )
    closer.output.replace_all_uses_with(reduce.output, graph)
    renames += [(partial.output, f"{closer.name}_partial"), (reduce.output, closer.name)]
    for node in [closer, *reversed(order)]:
        node.remove()
    for v, name in renames:
        graph.rename(v, name)


def _local(v: Value | None, d: Demand | None, new: dict[Value, Value], slicer: Slicer):
    if v is None or d is None:
        return new.get(v, v)
    if v.const is not None:
        kind = "col" if v.rank <= 2 and d.axis == 0 else "slice"
        return slicer.cut(v, kind, d.axis, d.local, d.idx)
    return new[v]


def _meta(node: Node) -> dict:
    return {**node.meta, "rule": RULE}


def _drop_if_unused(graph: Graph, name: str) -> None:
    """Forget a full weight every rank now holds only slices of (its memory goes with it)."""
    v = graph.initializers.get(name)
    if v is not None and not v.uses() and not any(o is v for o in graph.outputs):
        graph.remove_initializer(name)


def shard_all(graph: Graph, world: int, vocab: bool = True) -> list[Graph]:
    """Every rank's graph (clones of ``graph``), e.g. to simulate the ranks in one process."""
    out = []
    for rank in range(world):
        g = graph.clone()
        Shard(world=world, rank=rank, vocab=vocab).run(g)
        out.append(g)
    return out
