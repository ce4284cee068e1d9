"""How a split of an op's output reaches its inputs (the ``shard`` pass's legality proof).

A :class:`Demand` says which slice of one axis of a value each rank holds: per rank, the
sorted indices into the full axis. A rule maps the demand on a node's outputs to demands
on its inputs, or raises :class:`Reject` with the reason the split cannot pass the op.
Only ops that keep the split dim local are here: elementwise ops (a broadcast operand
stays replicated, a full-size constant is sliced), reshapes that split or merge heads,
permutes, unsqueezes and broadcasts (repeat_kv), concat / slice along another axis
(rotate_half), rotary over a non-last axis, attention split by whole heads (GQA: each rank's
query heads find their KV heads locally, replicated when there are fewer KV heads than
ranks), splits (merged q/k/v, gate/up), and linears whose output features are split (the
openers). Anything else mixes the split dim and ends the proof.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tgraph.ir import Node, Value
from tgraph.ir.dims import format_shape


class Reject(Exception):
    """A split cannot pass this op; the message says why."""


@dataclass(frozen=True)
class Demand:
    """Rank r holds ``idx[r]`` (sorted indices) of ``axis``; every rank holds as many."""

    axis: int
    idx: tuple[np.ndarray, ...]

    @property
    def local(self) -> int:
        return len(self.idx[0])

    def same(self, other: Demand) -> bool:
        return self.axis == other.axis and all(
            np.array_equal(a, b) for a, b in zip(self.idx, other.idx)
        )


@dataclass
class Plan:
    """Per input: its demand (None: read whole, replicated); attributes the split changes."""

    inputs: list[Demand | None]
    attrs: dict[str, Any] = field(default_factory=dict)


def chunks(n: int, world: int) -> tuple[np.ndarray, ...]:
    """``n`` features in ``world`` contiguous equal chunks."""
    size = n // world
    return tuple(np.arange(r * size, (r + 1) * size) for r in range(world))


def _uniform(idx: Sequence[np.ndarray], what: str) -> tuple[np.ndarray, ...]:
    if len({len(i) for i in idx}) != 1:
        raise Reject(f"{what} would differ in size between ranks")
    return tuple(idx)


def _expand(units: np.ndarray, size: int) -> np.ndarray:
    """Unit indices to element indices: units [1, 3] of size 2 -> [2, 3, 6, 7]."""
    return (units[:, None] * size + np.arange(size)).reshape(-1)


def _broadcast(v: Value | None, out_rank: int, d: Demand) -> Demand | None:
    """The demand on an elementwise operand: None where it broadcasts along the split axis."""
    if v is None:
        return None
    axis = d.axis - (out_rank - v.rank)
    if axis < 0 or v.shape[axis] == 1:
        return None
    return Demand(axis, d.idx)


def _elementwise(node: Node, outs: list[Demand | None], world: int) -> Plan:
    d = outs[0]
    return Plan([_broadcast(v, node.output.rank, d) for v in node.inputs])


def _permute(node: Node, outs: list[Demand | None], world: int) -> Plan:
    d = outs[0]
    return Plan([Demand(node.attrs["perm"][d.axis], d.idx)])


def _expand_op(node: Node, outs: list[Demand | None], world: int) -> Plan:
    """A broadcast (repeat_kv's copies of each KV head): a size-1 input axis stays whole."""
    d, x = outs[0], node.inputs[0]
    shape = list(node.attrs["shape"])
    shape[d.axis] = d.local
    axis = d.axis - (node.output.rank - x.rank)
    whole = axis < 0 or x.shape[axis] == 1
    return Plan([None if whole else Demand(axis, d.idx)], {"shape": tuple(shape)})


def _unsqueeze(node: Node, outs: list[Demand | None], world: int) -> Plan:
    d, rank = outs[0], node.output.rank
    added = {a % rank for a in node.attrs["axes"]}
    if d.axis in added:
        raise Reject("the split axis is a new size-1 axis")
    return Plan([Demand(d.axis - sum(a < d.axis for a in added), d.idx)])


def _along_other_axis(node: Node, outs: list[Demand | None], world: int) -> Plan:
    """concat / slice along an axis that is not the split one (rotate_half's halves)."""
    d = outs[0]
    if node.attrs["axis"] % node.output.rank == d.axis:
        raise Reject(f"{node.op} works along the split axis")
    return Plan([d] * len(node.inputs))


def _reshape(node: Node, outs: list[Demand | None], world: int) -> Plan:
    """(B, T, H*D) <-> (B, T, H, D): the split moves between whole heads and features."""
    d, x = outs[0], node.inputs[0]
    src, dst = tuple(x.shape), tuple(node.output.shape)
    shape = list(node.attrs["shape"])
    shape[d.axis] = d.local
    lead = 0
    while lead < min(len(src), len(dst)) and src[lead] == dst[lead]:
        lead += 1
    tail = 0
    while tail < min(len(src), len(dst)) - lead and src[-1 - tail] == dst[-1 - tail]:
        tail += 1
    if d.axis < lead:
        return Plan([Demand(d.axis, d.idx)], {"shape": tuple(shape)})
    if d.axis >= len(dst) - tail:
        return Plan([Demand(d.axis - len(dst) + len(src), d.idx)], {"shape": tuple(shape)})
    mid_src, mid_dst = src[lead : len(src) - tail], dst[lead : len(dst) - tail]
    if not all(isinstance(n, int) for n in (*mid_src, *mid_dst)):
        raise Reject(
            f"reshape {format_shape(src)} -> {format_shape(dst)} regroups symbolic dims around the split"
        )
    out_coord = np.indices(mid_dst).reshape(len(mid_dst), -1)[d.axis - lead]
    in_coords = np.indices(mid_src).reshape(len(mid_src), -1)
    masks = [np.isin(out_coord, i) for i in d.idx]
    for axis, coord in enumerate(in_coords):
        idx = [np.unique(coord[m]) for m in masks]
        if all(np.array_equal(np.isin(coord, i), m) for i, m in zip(idx, masks)):
            demand = Demand(lead + axis, _uniform(idx, "the reshaped split"))
            return Plan([demand], {"shape": tuple(shape)})
    raise Reject(
        f"reshape {format_shape(src)} -> {format_shape(dst)} spreads the split over two axes"
    )


def _rotary(node: Node, outs: list[Demand | None], world: int) -> Plan:
    d = outs[0]
    if d.axis == node.output.rank - 1:
        raise Reject("rotary mixes the last dim, which is the split one")
    x, cos, sin = node.inputs
    if _broadcast(cos, x.rank, d) is not None or _broadcast(sin, x.rank, d) is not None:
        raise Reject("rotary's cos/sin vary along the split axis")
    return Plan([d, None, None])


def _whole_heads(d: Demand, unit: int, heads: int, world: int) -> tuple[np.ndarray, ...]:
    out = tuple(np.unique(i // unit) for i in d.idx)
    if not all(np.array_equal(_expand(h, unit), i) for h, i in zip(out, d.idx)):
        raise Reject(f"{heads} heads do not split over {world} ranks")
    return out


def _kv_heads(q: Sequence[np.ndarray], heads: int, kv_heads: int) -> tuple[np.ndarray, ...]:
    """Each rank's KV heads: those its query heads read (replicated when kv < ranks)."""
    group = heads // kv_heads
    kv = _uniform([np.unique(h // group) for h in q], "the KV heads")
    nq, nkv = len(q[0]), len(kv[0])
    local_group = nq // nkv if nq % nkv == 0 else 0
    for h, k in zip(q, kv):
        if not local_group or not np.array_equal(k[np.arange(nq) // local_group], h // group):
            raise Reject(f"a rank's {nq} query heads do not map onto its {nkv} KV heads")
    return kv


def _mask(mask: Value | None, heads: tuple[np.ndarray, ...]) -> Demand | None:
    if mask is None or mask.rank < 3 or mask.shape[-3] == 1:
        return None
    return Demand(mask.rank - 3, heads)


def _attention(node: Node, outs: list[Demand | None], world: int) -> Plan:
    d, a = outs[0], node.attrs
    q, k, v, mask = (list(node.inputs) + [None])[:4]
    heads, kvh = a["num_heads"], a["kv_heads"]
    if a["layout"] == "bsd":
        if d.axis != 2:
            raise Reject("attention output is split along a non-head axis")
        qh = _whole_heads(d, node.output.shape[2] // heads, heads, world)
        kv = _kv_heads(qh, heads, kvh)
        demands = [
            Demand(2, tuple(_expand(h, q.shape[2] // heads) for h in qh)),
            Demand(2, tuple(_expand(h, k.shape[2] // kvh) for h in kv)),
            Demand(2, tuple(_expand(h, v.shape[2] // kvh) for h in kv)),
        ]
    else:
        if d.axis != 1:
            raise Reject("attention output is split along a non-head axis")
        qh, kv = d.idx, _kv_heads(d.idx, heads, kvh)
        demands = [Demand(1, qh), Demand(1, kv), Demand(1, kv)]
    plan = demands + ([_mask(mask, qh)] if len(node.inputs) > 3 else [])
    return Plan(plan, {"num_heads": len(qh[0]), "kv_heads": len(kv[0])})


def _sdpa(node: Node, outs: list[Demand | None], world: int) -> Plan:
    """Unfused-pipeline attention, (..., H, T, D): split by the head axis."""
    d = outs[0]
    q, k, v, mask = (list(node.inputs) + [None])[:4]
    if d.axis != node.output.rank - 3:
        raise Reject("sdpa output is split along a non-head axis")
    heads, kvh = int(q.shape[-3]), int(k.shape[-3])
    kv = _kv_heads(d.idx, heads, kvh) if kvh != heads else d.idx
    plan = [d, Demand(k.rank - 3, kv), Demand(v.rank - 3, kv)]
    return Plan(plan + ([_mask(mask, d.idx)] if len(node.inputs) > 3 else []))


def _qkv_attention(node: Node, outs: list[Demand | None], world: int) -> Plan:
    """The fused projection + attention opens a block: its weight rows follow the heads."""
    d, a = outs[0], node.attrs
    heads, kvh = a["num_heads"], a["kv_heads"]
    nq, nk, nv = a["sizes"]
    if d.axis != 2:
        raise Reject("attention output is split along a non-head axis")
    _constant_weight(node)
    qh = _whole_heads(d, nv // kvh, heads, world)
    kv = _kv_heads(qh, heads, kvh)
    parts = [
        [_expand(h, nq // heads) for h in qh],
        [nq + _expand(h, nk // kvh) for h in kv],
        [nq + nk + _expand(h, nv // kvh) for h in kv],
    ]
    rows = tuple(np.concatenate(p) for p in zip(*parts))
    sizes = tuple(len(p[0]) for p in parts)
    plan: list[Demand | None] = [None, Demand(0, rows)]
    if len(node.inputs) > 2:
        plan.append(Demand(0, rows))  # the bias (None inputs are skipped)
    if len(node.inputs) > 3:
        plan.append(_mask(node.inputs[3], qh))
    attrs = {"num_heads": len(qh[0]), "kv_heads": len(kv[0]), "sizes": sizes}
    return Plan(plan, attrs)


def _split(node: Node, outs: list[Demand | None], world: int) -> Plan:
    axis = node.attrs["axis"] % node.inputs[0].rank
    if any(d is None for d in outs):
        raise Reject("a piece of the split is not read inside the block")
    if all(d.axis != axis for d in outs):
        if not all(d.same(outs[0]) for d in outs):
            raise Reject("the split's pieces are split differently")
        return Plan([outs[0]])
    if any(d.axis != axis for d in outs):
        raise Reject("the split's pieces are split along different axes")
    offsets = np.cumsum((0,) + tuple(node.attrs["sizes"]))
    idx = tuple(np.concatenate([o + d.idx[r] for o, d in zip(offsets, outs)]) for r in range(world))
    return Plan([Demand(axis, idx)], {"sizes": tuple(d.local for d in outs)})


def _constant_weight(node: Node) -> None:
    w = node.inputs[1]
    if w.const is None:
        raise Reject(f"weight %{w.name} is not a constant")


def _linear(node: Node, outs: list[Demand | None], world: int) -> Plan:
    """An opener: column-parallel, the rank computes its output features."""
    d = outs[0]
    _constant_weight(node)
    if d.axis != node.output.rank - 1:
        return Plan([d] + [None] * (len(node.inputs) - 1))  # rows are independent
    return Plan([None] + [Demand(0, d.idx)] * (len(node.inputs) - 1))


_ELEMENTWISE = (
    "neg abs exp log sqrt rsqrt reciprocal tanh erf sigmoid relu silu sin cos floor gelu "
    "identity dropout cast clamp add sub mul div maximum minimum pow where bias_gelu"
).split()

RULES: dict[str, Callable[[Node, list[Demand | None], int], Plan]] = {
    **{op: _elementwise for op in _ELEMENTWISE},
    "permute": _permute,
    "reshape": _reshape,
    "expand": _expand_op,
    "unsqueeze": _unsqueeze,
    "concat": _along_other_axis,
    "slice": _along_other_axis,
    "rotary": _rotary,
    "attention": _attention,
    "sdpa": _sdpa,
    "qkv_attention": _qkv_attention,
    "split": _split,
    "linear": _linear,
}
