"""Fold the rotary ops on ``cache_attention``'s q and k into the op, as position tables."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tgraph.ir import Graph, Node, Value
from tgraph.passes._position_tables import position_table
from tgraph.passes.manager import Pass, PassResult, register

_HEADS_FIRST = (0, 2, 1, 3)  # (B, T, H, D) <-> (B, H, T, D)


@dataclass
class _Rotary:
    """One rotated input of cache_attention: reshape([permute](rotary(x, cos, sin)))."""

    x: Value  # the unrotated heads, (B, H, T, D) or (B, T, H, D)
    heads_first: bool
    rotary_dim: int  # R: the first R dims of each head are rotated
    interleaved: bool  # the rotary op's form: pairs (2i, 2i+1), or halves (rotate-half)
    cos: Value
    sin: Value
    flat: Node  # the reshape to (B, T, H*D) that cache_attention reads


@register("fold-cache-rotary")
class FoldCacheRotary(Pass):
    """Fold rotary(x, cos, sin) on cache_attention's q and k into it, as cos/sin tables by position.

    A site folds when q and k are each reshape([permute](rotary(x, cos, sin))) (or the partial
    form concat(rotary(x[..., :R]), x[..., R:])), both with the same cos/sin, and cos/sin are
    a function of the position past_len + arange(seq) only (its slot: see
    tgraph/ir/ops/cache.py), proven by evaluating their subgraph on positions 0..P-1 and
    checking it on random positions of another shape. The tables hold P rows, P = the
    ``max_positions`` option or the step graph's ``generation.max_length``. ``stats["skipped"]``
    says why a site was not folded; the rotary ops left behind are removed by dce.
    """

    def __init__(self, max_positions: int = 0):
        self.max_positions = int(max_positions)

    def run(self, graph: Graph) -> PassResult:
        limit = self.max_positions or int(graph.meta.get("generation", {}).get("max_length", 0))
        tables: dict[tuple[int, int], tuple[Value, Value]] = {}
        folded, skipped = 0, []
        for node in graph.nodes:
            if node.op != "cache_attention" or (len(node.inputs) > 7 and node.inputs[7]):
                continue
            sites, reason = _sites(node)
            if reason is None and not limit:
                reason = "no position limit: set max_positions (no generation.max_length)"
            if reason is None:
                reason = _tables(graph, node, sites, limit, tables)
            if reason is not None:
                skipped.append({"node": node.name, "reason": reason})
                continue
            _fold(graph, node, sites, tables[id(sites[0].cos), id(sites[0].sin)])
            folded += 1
        return PassResult(folded > 0, {"folded": folded, "skipped": skipped})


def _sites(node: Node) -> tuple[list[_Rotary], str | None]:
    a, head = node.attrs, node.inputs[3].shape[3]
    sites = []
    for i, heads in ((0, a["num_heads"]), (1, a["kv_heads"])):
        site = _match(node.inputs[i], heads, head)
        if isinstance(site, str):
            return [], f"{'qk'[i]}: {site}"
        sites.append(site)
    q, k = sites
    if (q.cos, q.sin, q.rotary_dim, q.interleaved) != (k.cos, k.sin, k.rotary_dim, k.interleaved):
        return [], "q and k are rotated with different cos/sin, widths or forms"
    return sites, None


def _match(v: Value, heads: int, head: int) -> _Rotary | str:
    flat = v.producer
    if flat is None or flat.op != "reshape":
        return f"%{v.name} is not a reshape of rotated heads"
    y = flat.inputs[0]
    if y.rank != 4 or tuple(y.shape[:2]) != tuple(v.shape[:2]) or y.shape[2:] != (heads, head):
        return f"%{y.name} {list(y.shape)} is not %{v.name} split into {heads} heads of {head}"
    heads_first = y.producer is not None and y.producer.op == "permute"
    if heads_first:
        if tuple(y.producer.attrs["perm"]) != _HEADS_FIRST:
            return f"permute %{y.name} is not (0, 2, 1, 3)"
        y = y.producer.inputs[0]
    rot, x, r = _rotated(y, head)
    if isinstance(rot, str):
        return rot
    cos, sin = rot.inputs[1], rot.inputs[2]
    seq_axis = 2 if heads_first else 1
    for t in (cos, sin):  # broadcast over heads, one row per (batch, token)
        if t.rank != 4 or t.shape[3 - seq_axis] != 1 or t.shape[seq_axis] != x.shape[seq_axis]:
            return f"cos/sin %{t.name} {list(t.shape)} is not one row per token"
    return _Rotary(x, heads_first, r, rot.attrs["interleaved"], cos, sin, flat)


def _rotated(y: Value, head: int) -> tuple[Node | str, Value | None, int]:
    """rotary(x) over the whole head, or concat(rotary(x[..., :R]), x[..., R:])."""
    p = y.producer
    if p is not None and p.op == "rotary":
        return p, p.inputs[0], head
    if p is None or p.op != "concat" or len(p.inputs) != 2 or p.attrs["axis"] % 4 != 3:
        return f"%{y.name} is not a rotary (or rotary + pass-through concat)", None, 0
    rot, rest = (v.producer for v in p.inputs)
    if rot is None or rot.op != "rotary" or rest is None or rest.op != "slice":
        return f"concat %{y.name} is not rotary(x[..., :R]) + x[..., R:]", None, 0
    part = rot.inputs[0].producer
    if part is None or part.op != "slice" or part.inputs[0] is not rest.inputs[0]:
        return f"concat %{y.name}: the rotated and kept parts are not slices of one x", None, 0
    r = rot.inputs[0].shape[3]
    for s, want in ((part, (0, r)), (rest, (r, head))):
        a = s.attrs
        if a["axis"] % 4 != 3 or (a["start"], a["end"], a["step"]) != (*want, 1):
            return f"slice %{s.name} is not x[..., {want[0]}:{want[1]}]", None, 0
    return rot, part.inputs[0], r


def _tables(graph, node, sites, limit, tables) -> str | None:
    """The (P, R/2) cos/sin tables of a site, built once per cos/sin pair: the frequencies
    that the full-width cos/sin hold twice, as cat(f, f) (rotate-half) or f repeated
    pairwise (interleaved)."""
    site = sites[0]
    key = (id(site.cos), id(site.sin))
    if key in tables:
        return None
    seq = node.inputs[0].shape[1]
    halves = []
    for t in (site.cos, site.sin):
        table = position_table(graph, t, node.inputs[5], seq, limit, site.heads_first)
        if isinstance(table, str):
            return f"%{t.name}: {table}"
        r = table.shape[1]
        if site.interleaved:
            f, twice = table[:, 0::2], table[:, 1::2]
            form = "the table's pairs differ (not interleaved rotary's f repeated pairwise)"
        else:
            f, twice = table[:, : r // 2], table[:, r // 2 :]
            form = "the table's halves differ (not rotate-half's cat(f, f))"
        if r % 2 or not np.array_equal(f, twice):
            return f"%{t.name}: {form}"
        halves.append(f)
    names = ("rotary_cos_table", "rotary_sin_table")
    tables[key] = tuple(graph.add_const(h, site.cos.dtype, hint=n) for h, n in zip(halves, names))
    return None


def _fold(graph: Graph, node: Node, sites: list[_Rotary], tables: tuple[Value, Value]) -> None:
    flat_inputs = []
    for s in sites:
        x = s.x
        if s.heads_first:
            x = graph.create_node("permute", [x], {"perm": _HEADS_FIRST}, before=node).output
        shape = s.flat.attrs["shape"]
        flat_inputs.append(graph.create_node("reshape", [x], {"shape": shape}, before=node).output)
    inputs = [*flat_inputs, *node.inputs[2:7], *tables]
    meta = {**node.meta, "rule": "fold-cache-rotary"}
    attrs = {**node.attrs, "rotary_interleaved": sites[0].interleaved}
    new = graph.create_node("cache_attention", inputs, attrs, meta=meta, before=node)
    names = [v.name for v in node.outputs]
    for old, out in zip(node.outputs, new.outputs):
        out.meta = dict(old.meta)
        old.replace_all_uses_with(out, graph)
    node.remove()
    for out, name in zip(new.outputs, names):
        graph.rename(out, name)
