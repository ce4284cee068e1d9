"""Fuse the QKV projection into the attention it feeds: one qkv_attention node per layer."""

from __future__ import annotations

from tgraph.ir import Value
from tgraph.ir.ops.shapes import norm_axis
from tgraph.passes.manager import register
from tgraph.passes.rewrite import Builder, Match, P, RewritePass, Rule

RULE = "qkv-attention"


def _check(m: Match) -> str | None:
    split, w = m["split"], m["w"]
    rank = split.inputs[0].rank
    if norm_axis(split.attrs["axis"], rank) != rank - 1:
        return f"split axis {split.attrs['axis']} is not the last axis of rank {rank}"
    if len(split.outputs) != 3:
        return f"split has {len(split.outputs)} outputs, want 3 (q, k, v)"
    order = [list(split.outputs).index(v) for v in m.root.inputs[:3]]
    if order != [0, 1, 2]:
        return f"q, k, v are split outputs {tuple(order)}, want (0, 1, 2)"
    sizes = split.attrs["sizes"]
    if not all(isinstance(s, int) for s in sizes):
        return f"split sizes {sizes} are not all static"
    if sum(sizes) != w.shape[0]:
        return f"split sizes {sizes} do not cover the {w.shape[0]} projected features"
    if w.const is None:
        return f"weight %{w.name} is not a constant"
    return None


def _replace(b: Builder, m: Match) -> Value:
    attn = m.root
    inputs = [m["x"], m["w"], m.get("b"), m.get("mask")]
    while inputs[-1] is None:
        inputs.pop()
    attrs = {k: attn.attrs[k] for k in ("num_heads", "kv_heads", "scale", "causal")}
    return b.op("qkv_attention", *inputs, **attrs, sizes=m["split"].attrs["sizes"])


# attention{bsd}(split(linear(x, w, b?)).0/.1/.2, mask?) -> qkv_attention(x, w, b?, mask?)
_LINEAR = P.op("linear", P.var("x"), P.var("w"), P.opt(P.var("b")), name="linear")
_QKV = [P.op("split", _LINEAR, name="split") for _ in range(3)]
QKV_ATTENTION = Rule(
    name=RULE,
    pattern=P.op("attention", *_QKV, P.opt(P.var("mask")), layout="bsd"),
    check=_check,
    replace=_replace,
    commutative=False,
)


@register("fuse-qkv-attention")
class FuseQKVAttention(RewritePass):
    """Fuse attention{bsd} of split(linear(x, W, b)) into qkv_attention(x, W, b, mask).

    The split must be on the last axis with three outputs read, in order, as q, k and v
    by this attention only (the engine proves the split and linear have no other reader).
    The weight must be a constant; it is not rewritten, so the pass suits training too.
    """

    rules = (QKV_ATTENTION,)
