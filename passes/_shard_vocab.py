"""Vocab-parallel token embeddings and LM heads for the ``shard`` pass.

Each rank holds ``Vs = ceil(V / world)`` rows of a (V, C) table: rows ``[r*Vs, r*Vs+Vs)``,
the last rank's padded with zero rows. A tied embedding and LM head share the slice.

    LM head    logits = all_gather(linear(x, W_r, b_r), axis=-1)[..., :V]
    embedding  local = ids - r*Vs;  hit = 0 <= local < Vs
               e = all_reduce(where(hit[..., None], gather(W_r, where(hit, local, 0)), 0))

Only a table gathered by a graph input (token ids) is split; position tables (gathered
by an arange or a constant) and small tables (a token-type table's 2 rows: fewer than
``min_rows``) stay replicated.
"""

from __future__ import annotations

import numpy as np

from tgraph.ir import Graph, Node, Value

from ._shard_slicer import Slicer, rejection

HEAD = "vocab-head"
EMBEDDING = "vocab-embedding"


def shard_vocab(graph: Graph, slicer: Slicer, rejected: list, min_rows: int) -> dict[str, int]:
    """Split every LM head and token embedding of at least ``min_rows`` rows; returns the
    count per rule."""
    counts = {HEAD: 0, EMBEDDING: 0}
    for node in list(graph.nodes):
        if node.op == "linear" and graph.feeds_output(node):
            rule, reason = HEAD, _table_reason(node.inputs[1], slicer.world, min_rows)
        elif node.op == "gather" and node.attrs["axis"] == 0 and node.inputs[0].const is not None:
            rule, reason = EMBEDDING, _table_reason(node.inputs[0], slicer.world, min_rows)
            if reason is None and not any(node.inputs[1] is v for v in graph.inputs):
                reason = "its rows are read by positions or constants, not by token ids"
        else:
            continue
        if reason is not None:
            rejected.append(rejection(rule, node, f"left replicated: {reason}"))
            continue
        (_split_head if rule == HEAD else _split_embedding)(graph, node, slicer)
        counts[rule] += 1
    return counts


def _table_reason(w: Value, world: int, min_rows: int) -> str | None:
    if w.const is None or w.rank != 2:
        return f"%{w.name} is not a constant table"
    if w.shape[0] < max(world, min_rows):
        return f"{w.shape[0]} rows, too few to split (min_rows={min_rows})"
    return None


def _rows(w: Value, slicer: Slicer) -> tuple[int, list[np.ndarray]]:
    """Rows per rank (Vs) and every rank's row indices of a (V, C) table or (V,) bias."""
    v, world = int(w.shape[0]), slicer.world
    per = -(-v // world)
    idx = [np.arange(r * per, min(v, (r + 1) * per)) for r in range(world)]
    return per, idx


def _split_head(graph: Graph, node: Node, slicer: Slicer) -> None:
    x, w, b = (list(node.inputs) + [None])[:3]
    per, idx = _rows(w, slicer)
    inputs = [x, slicer.cut(w, "vocab", 0, per, idx)]
    if b is not None:
        inputs.append(slicer.cut(b, "vocab", 0, per, idx))
    meta = {**node.meta, "rule": HEAD}
    local = graph.create_node("linear", inputs, meta=meta, before=node)
    axis = node.output.rank - 1
    attrs = {"axis": axis, "world": slicer.world}
    out = graph.create_node("all_gather", [local.output], attrs, meta=meta, before=node)
    if per * slicer.world != w.shape[0]:  # drop the last rank's padding rows
        attrs = {"axis": axis, "start": 0, "end": int(w.shape[0]), "step": 1}
        out = graph.create_node("slice", [out.output], attrs, meta=meta, before=node)
    _replace(graph, node, local.output, out.output)


def _split_embedding(graph: Graph, node: Node, slicer: Slicer) -> None:
    table, ids = node.inputs
    per, idx = _rows(table, slicer)
    meta = {**node.meta, "rule": EMBEDDING}

    def op(name: str, *inputs: Value, **attrs) -> Value:
        return graph.create_node(name, inputs, attrs, meta=meta, before=node).output

    starts = tuple(int(i[0]) if len(i) else per * r for r, i in enumerate(idx))
    start = slicer.offset(starts, ids.dtype, f"{table.name}.vocab_start")
    zero = graph.add_const(0, ids.dtype)
    local = op("sub", ids, start)
    hit = op("logical_and", op("ge", local, zero), op("lt", local, graph.add_const(per, ids.dtype)))
    rows = op(
        "gather", slicer.cut(table, "vocab", 0, per, idx), op("where", hit, local, zero), axis=0
    )
    kept = op(
        "where", op("unsqueeze", hit, axes=(ids.rank,)), rows, graph.add_const(0, table.dtype)
    )
    _replace(graph, node, rows, op("all_reduce", kept, world=slicer.world))


def _replace(graph: Graph, node: Node, local: Value, out: Value) -> None:
    name = node.name
    node.output.replace_all_uses_with(out, graph)
    node.remove()
    graph.rename(local, f"{name}_shard")
    graph.rename(out, name)
