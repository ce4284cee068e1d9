"""Helpers of fuse-attention: the rules that rewrite the heads of a fused attention (GQA
head repeats dropped, head split/merge absorbed into layout bsd). The causal-mask proof is
in ``_mask_forms.py``.
"""

from __future__ import annotations

from collections.abc import Callable

from tgraph.ir import Node, Value, simplify
from tgraph.passes.rewrite import Builder, Match, P, Pattern, Rule

ID = ("identity", "dropout")
HEADS = (0, 2, 1, 3)  # (B, T, H, D) <-> (B, H, T, D)


def opt_id(p: Pattern) -> Pattern:
    """``p``, maybe behind an identity or dropout."""
    return P.either(p, P.op(ID, p))


# -- rewriting a fused attention -----------------------------------------------------------


def attention_pattern(inputs: list[Pattern]) -> Pattern:
    """attention(q, k, v) with its mask, if any, left as it is."""
    return P.op("attention", *inputs, name="attn", other_inputs=True)


def reattend(b: Builder, attn: Node, inputs: list[Value], **changes) -> Value:
    return b.op("attention", *inputs, **{**attn.attrs, **changes})


# -- k, v heads repeated for grouped-query attention ------------------------------------------
#
# reshape(expand(unsqueeze(x, 2), (B, Hkv, n, T, D)), (B, Hkv*n, T, D))
#   == repeat_interleave(x, n, dim=1), the order GQA gives the heads (h -> h // n)


def _repeat(x: str) -> Pattern:
    u = P.op("unsqueeze", P.var(x), name=f"{x}_unsq")
    e = P.op("expand", opt_id(u), name=f"{x}_exp")
    return P.op("reshape", opt_id(e), name=f"{x}_rep")


def _repeat_factor(m: Match, x: str) -> int | str:
    src, unsq, exp, rep = m[x], m[f"{x}_unsq"], m[f"{x}_exp"], m[f"{x}_rep"]
    if src.rank != 4 or tuple(a % 5 for a in unsq.attrs["axes"]) != (2,):
        return f"%{rep.name} is not a head repeat of a rank-4 tensor (unsqueeze at axis 2)"
    b, h, t, d = src.shape
    n = exp.attrs["shape"][2]
    if tuple(exp.output.shape) != (b, h, n, t, d) or not isinstance(n, int):
        return f"expand %{exp.name} {list(exp.output.shape)} is not (B, Hkv, n, T, D)"
    if tuple(rep.output.shape) != (b, simplify(h * n), t, d):
        return f"reshape %{rep.name} {list(rep.output.shape)} does not merge (Hkv, n)"
    return n


def _repeat_check(m: Match) -> str | None:
    attn = m["attn"]
    if attn.attrs["layout"] != "bhsd":
        return "layout is not bhsd"
    nk, nv = _repeat_factor(m, "k"), _repeat_factor(m, "v")
    for n in (nk, nv):
        if isinstance(n, str):
            return n
    if nk != nv:
        return f"k heads repeat {nk} times, v heads {nv} times"
    kv = m["k"].shape[1]
    if m["v"].shape[1] != kv or attn.attrs["num_heads"] % kv:
        return f"{attn.attrs['num_heads']} heads are not a multiple of {kv} kv heads"
    return None


def _repeat_replace(b: Builder, m: Match) -> Value:
    ins = [m["q"], m["k"], m["v"], *m["attn"].inputs[3:]]
    return reattend(b, m["attn"], ins, kv_heads=m["k"].shape[1])


REPEAT_KV = Rule(
    "repeat-kv",
    attention_pattern([P.var("q"), _repeat("k"), _repeat("v")]),
    _repeat_replace,
    _repeat_check,
)


# -- head split and merge: bhsd with the heads split out of (B, T, H*D) tensors -> bsd ------------
#
# reshape(permute(attention(permute(reshape(Xq, (B, T, H, D)), HEADS), ...), HEADS), S)
#   == reshape(attention{bsd}(Xq', Xk', Xv'), S), X' = X viewed as (B, T, H*D)
# and for a packed projection (ViT): q, k, v = gather(permute(reshape(X, (B, T, 3, H, D)),
# (2, 0, 3, 1, 4)), 0 / 1 / 2) -> Xq', Xk', Xv' = split(X', 3 ways on the last axis).

PACKED = (2, 0, 3, 1, 4)  # (B, T, 3, H, D) -> (3, B, H, T, D)


def _split(x: str) -> Pattern:
    return P.op("permute", P.op("reshape", P.var(x), name=f"{x}_split"), perm=HEADS)


def _packed(x: str) -> Pattern:
    packed = P.op("permute", P.op("reshape", P.var("x"), name="x_split"), name="packed")
    return P.op("gather", packed, P.scalar(name=x), axis=0)


def _view(b: Builder, x: Value, shape: tuple) -> Value:
    return x if tuple(x.shape) == tuple(shape) else b.op("reshape", x, shape=shape)


def _bsd_check(m: Match) -> str | None:
    if m["attn"].attrs["layout"] != "bhsd":
        return "layout is not bhsd"
    if "packed" not in m:
        return None  # the attention's own shape checks pin the split shapes
    split = m["x_split"].output
    if m["packed"].attrs["perm"] != PACKED or split.rank != 5 or split.shape[2] != 3:
        return f"%{m['packed'].name} is not a (B, T, 3, H, D) -> (3, B, H, T, D) qkv unpacking"
    if any(m[x] not in (0.0, 1.0, 2.0) for x in ("xq", "xk", "xv")):
        return "q, k, v gather indices are not 0, 1, 2"
    return None


def _bsd_inputs(b: Builder, m: Match) -> list[Value]:
    if "packed" not in m:
        return [_view(b, m[x], _bsd_shape(m[f"{x}_split"].output)) for x in ("xq", "xk", "xv")]
    bb, t, _, h, d = m["x_split"].output.shape
    e = simplify(h * d)
    x = _view(b, m["x"], (bb, t, simplify(3 * e)))
    parts = b.node("split", [x], axis=2, sizes=(e, e, e)).outputs
    return [parts[int(m[x])] for x in ("xq", "xk", "xv")]


def _bsd_shape(split: Value) -> tuple:
    b, t, h, d = split.shape
    return (b, t, simplify(h * d))


def _bsd_replace(b: Builder, m: Match) -> Value:
    ins = [*_bsd_inputs(b, m), *m["attn"].inputs[3:]]
    return _view(b, reattend(b, m["attn"], ins, layout="bsd"), m.root.output.shape)


def _on_heads(heads: Callable[[str], Pattern]) -> Pattern:
    return attention_pattern([heads("xq"), heads("xk"), heads("xv")])


ON_SPLIT_HEADS = P.either(_on_heads(_split), _on_heads(_packed))
SPLIT_MERGE_HEADS = Rule(
    "split-merge-heads",
    # reshape(permute(attention(split or unpacked heads) [identity], HEADS) [identity], S)
    P.op("reshape", opt_id(P.op("permute", opt_id(ON_SPLIT_HEADS), perm=HEADS))),
    _bsd_replace,
    _bsd_check,
)

HEAD_RULES = (REPEAT_KV, SPLIT_MERGE_HEADS)  # rewrite a fused attention's heads
