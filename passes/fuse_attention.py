"""Fuse multi-head attention into one ``attention`` op.

Rules, in the order they apply to a site:

- ``sdpa``: sdpa(q, k, v, mask?) -> attention (bhsd).
- ``softmax-attention``: softmax(q @ permute(k) [* c | / c] [+ mask] [where(cond, ., fill)])
  [identity] @ v -> attention (bhsd), with ``causal`` when the mask is proven causal, and
  ``causal`` plus the mask ``rest`` when a boolean mask is ``causal & rest`` (padding).
- ``skip-identity``: attention(identity(x), ...) -> attention(x, ...).
- ``absorb-scale``: attention(q * c, ...) -> attention(q, ...) {scale * c}: q or k, mul or
  div, maybe under a permute.
- ``repeat-kv``: k, v heads repeated by unsqueeze/expand/reshape -> kv_heads below num_heads.
- ``split-merge-heads``: the heads split out of (B, T, H*D) tensors (or a packed qkv
  projection) and merged back after the attention -> one attention {layout=bsd}.

Every fact is proven from shapes, attributes and constant values; a site that matches but
cannot be proven is left alone, with the reason in the pass's ``rejected`` stats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tgraph.ir import DType, Value
from tgraph.passes.manager import register
from tgraph.passes.rewrite import Builder, Match, P, Pattern, RewritePass, Rule

from ._attention_patterns import HEAD_RULES, ID, attention_pattern, opt_id, reattend
from ._mask_forms import CAUSAL_DROP, CAUSAL_KEEP, broadcasts_into, fill_kind, is_causal, tri_form

SWAP = (0, 1, 3, 2)  # k^T


# -- from the written-out mask to (causal, mask) ------------------------------------------------


@dataclass(frozen=True)
class MaskPlan:
    """The fused op's ``causal`` flag and a recipe for its mask input (None: no mask)."""

    causal: bool
    make: Callable[[Builder], Value | None]


def _none(b: Builder) -> None:
    return None


def plan_mask(
    shape: Sequence,
    dtype: DType,
    additive: Value | None,
    cond: Value | None = None,
    keep: bool = True,
    fill: float = -math.inf,
) -> MaskPlan | str:
    """Plan softmax(where(cond, s, fill) + additive) (``keep``) or where(cond, fill, s), for
    scores s of ``shape`` and ``dtype``; ``cond`` and ``additive`` are each optional.

    Returns a :class:`MaskPlan`, or the reason the form cannot be fused exactly.
    """
    for m in (additive, cond):
        if m is not None and not broadcasts_into(m.shape, shape):
            return f"mask %{m.name} {list(m.shape)} does not broadcast to the scores {list(shape)}"
    if cond is None:
        if additive is None:
            return MaskPlan(False, _none)
        form = tri_form(additive)
        if is_causal(additive, shape, CAUSAL_DROP) and fill_kind(form.fill or 0.0, dtype):
            return MaskPlan(True, _none)
        return MaskPlan(False, lambda b: additive)
    kind = fill_kind(fill, dtype)
    if kind is None:
        return f"masked fill value {fill} is neither -inf nor near the {dtype} minimum"
    if is_causal(cond, shape, CAUSAL_KEEP if keep else CAUSAL_DROP):
        if additive is not None and kind != "inf":
            return f"causal fill {fill} with an additive mask: fully masked rows would differ"
        return MaskPlan(True, (lambda b: additive) if additive is not None else _none)
    rest = _causal_and_rest(cond, shape) if keep and kind == "inf" else None
    if rest is not None:  # keep where causal & rest: the causal flag and the mask rest
        plan = plan_mask(shape, dtype, additive, rest, keep, fill)
        return plan if isinstance(plan, str) else MaskPlan(True, plan.make)
    if additive is not None:
        if kind != "inf":
            return f"masked fill {fill} with an additive mask: fully masked rows would differ"
        return MaskPlan(False, lambda b: _where(b, cond, keep, additive, fill))
    if kind == "inf":
        return MaskPlan(False, lambda b: cond if keep else b.op("logical_not", cond))
    return MaskPlan(False, lambda b: _where(b, cond, keep, b.const(0.0, dtype, "zero"), fill))


def _causal_and_rest(cond: Value, shape: Sequence) -> Value | None:
    """``rest`` when ``cond`` is ``causal & rest`` (a padding mask on a causal one), maybe
    behind identities or an expand (the parts broadcast to the scores as the whole did)."""
    node = cond.producer
    while node is not None and node.op in (*ID, "expand"):
        node = node.inputs[0].producer
    if node is None or node.op != "logical_and":
        return None
    for causal, rest in (node.inputs, reversed(node.inputs)):
        if is_causal(causal, shape, CAUSAL_KEEP):
            return rest
    return None


def _where(b: Builder, cond: Value, keep: bool, value: Value, fill: float) -> Value:
    """The additive mask: ``value`` where kept, ``fill`` where masked."""
    f = b.const(fill, value.dtype, "fill")
    return b.op("where", cond, value, f) if keep else b.op("where", cond, f, value)


@dataclass(frozen=True)
class _Site:
    """What a bhsd attention needs: q, k (maybe behind a permute), v, scale, mask plan."""

    q: Value
    k: Value
    k_perm: tuple[int, ...] | None  # k = permute(k, k_perm) when not None
    v: Value
    scale: float
    plan: MaskPlan

    def build(self, b: Builder) -> Value:
        k = self.k if self.k_perm is None else b.op("permute", self.k, perm=self.k_perm)
        mask = self.plan.make(b)
        attrs = dict(
            num_heads=self.q.shape[1],
            kv_heads=k.shape[1],
            scale=self.scale,
            causal=self.plan.causal,
            layout="bhsd",
        )
        return b.op("attention", self.q, k, self.v, *([mask] if mask else []), **attrs)


def _heads_reason(q: Value, k_shape: tuple, v: Value, out: Value) -> str | None:
    """q (B, H, Tq, D), k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) giving ``out``; else why not."""
    if q.rank != 4 or len(k_shape) != 4 or v.rank != 4:
        return f"q, k, v ranks {q.rank}, {len(k_shape)}, {v.rank}; want 4 (B, H, T, D)"
    b, h, tq, d = q.shape
    if not (b == k_shape[0] == v.shape[0]):
        return f"batch dims differ: q {b}, k {k_shape[0]}, v {v.shape[0]}"
    if tuple(k_shape[1:3]) != tuple(v.shape[1:3]) or k_shape[3] != d:
        return f"k {list(k_shape)} does not fit q {list(q.shape)} and v {list(v.shape)}"
    hkv = k_shape[1]
    if not isinstance(h, int) or not isinstance(hkv, int) or h % hkv:
        return f"{h} query heads are not a multiple of {hkv} key/value heads"
    if (out.dtype, tuple(out.shape)) != (q.dtype, (b, h, tq, v.shape[3])):
        return f"output {out.dtype}{list(out.shape)} is not (B, H, Tq, Dv) of q's dtype"
    return None


# -- sdpa ------------------------------------------------------------------------------------


def _sdpa_site(m: Match) -> _Site | str:
    node = m.root
    q, k, v = m["q"], m["k"], m["v"]
    reason = _heads_reason(q, tuple(k.shape), v, node.output)
    if reason:
        return reason
    scale = node.attrs["scale"]
    if scale is None:
        if not isinstance(q.shape[3], int):
            return f"scale is 1/sqrt(head dim) and the head dim {q.shape[3]} is symbolic"
        scale = 1.0 / math.sqrt(q.shape[3])
    shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    mask = m.get("mask")
    if mask is not None and mask.dtype not in (DType.bool, q.dtype):
        return f"mask dtype {mask.dtype} is neither bool nor {q.dtype}"
    if mask is None:
        plan = plan_mask(shape, q.dtype, None)
    elif mask.dtype is DType.bool:
        plan = plan_mask(shape, q.dtype, None, cond=mask, keep=True)
    else:
        plan = plan_mask(shape, q.dtype, mask)
    if isinstance(plan, str):
        return plan
    if node.attrs["causal"]:
        plan = MaskPlan(True, plan.make)
    return _Site(q, k, None, v, float(scale), plan)


# -- the written-out form --------------------------------------------------------------------
#
# softmax(q @ permute(k) [* c | / c] [+ mask] [where(cond, ., fill)]) [identity] @ v: the
# mask added, a boolean cond applied with where (keeping the scores where cond holds, or
# dropping them: where(cond, fill, scores)), or both, the where inside or outside the add.

KEEP, DROP = 0, 1  # the "where" tag


def _where_cond(s: Pattern) -> Pattern:
    cond, fill = P.var("cond"), P.scalar(name="fill")
    return P.either(P.op("where", cond, s, fill), P.op("where", cond, fill, s), tag="where")


def _masked(s: Pattern) -> Pattern:
    """s, s + mask, where(cond, s), where(cond, s + mask), where(cond, s) + mask."""

    def plus(x: Pattern) -> Pattern:
        return P.op("add", x, P.var("mask"))

    return P.either(s, plus(s), _where_cond(s), _where_cond(plus(s)), plus(_where_cond(s)))


QK = P.op("matmul", P.var("q"), P.op("permute", P.var("k"), name="kt"), name="qk")
SCORES = P.either(QK, P.op(("mul", "div"), QK, P.scalar(name="c"), name="scale"))
WRITTEN = P.op("matmul", opt_id(P.op("softmax", _masked(SCORES), name="sm")), P.var("v"))


def _written_site(m: Match) -> _Site | str:
    sm, qk = m["sm"], m["qk"]
    if sm.attrs["axis"] % sm.output.rank != sm.output.rank - 1:
        return f"softmax over axis {sm.attrs['axis']}, not the last"
    if tuple(sm.inputs[0].shape) != tuple(qk.output.shape):
        return f"the mask grows the scores {list(qk.output.shape)} to {list(sm.inputs[0].shape)}"
    k, perm = m["k"], m["kt"].attrs["perm"]
    if len(perm) != 4:
        return f"k^T has rank {len(perm)}, want 4"
    k_perm = tuple(perm[i] for i in SWAP)
    k_shape = tuple(k.shape[i] for i in k_perm)
    reason = _heads_reason(m["q"], k_shape, m["v"], m.root.output)
    if reason:
        return reason
    scale = 1.0
    if "scale" in m:
        if m["scale"].op == "div" and m["c"] == 0:
            return "scores divided by 0"
        scale = m["c"] if m["scale"].op == "mul" else 1.0 / m["c"]
    keep = m.get("where", KEEP) == KEEP
    plan = plan_mask(
        qk.output.shape, qk.output.dtype, m.get("mask"), m.get("cond"), keep, m.get("fill", 0.0)
    )
    if isinstance(plan, str):
        return plan
    k_perm = None if k_perm == (0, 1, 2, 3) else k_perm
    return _Site(m["q"], k, k_perm, m["v"], float(scale), plan)


def _build(b: Builder, m: Match) -> Value:
    return m.site.build(b)


SDPA = Rule(
    "sdpa",
    P.op("sdpa", P.var("q"), P.var("k"), P.var("v"), P.opt(P.var("mask"))),
    _build,
    site=_sdpa_site,
)
SOFTMAX_ATTENTION = Rule("softmax-attention", WRITTEN, _build, site=_written_site)


# -- inputs of a fused attention: identities and scales ----------------------------------------


def _one_of(x: Pattern, inputs: int) -> Pattern:
    """attention with ``x`` as its q, k or v (the first ``inputs`` of them, tried in that
    order); the tag "input" is x's position."""

    def at(i: int) -> Pattern:
        return attention_pattern([x if j == i else P.var(n) for j, n in enumerate("qkv")])

    return P.either(*(at(i) for i in range(inputs)), tag="input")


def _inputs_with(m: Match, x: Value) -> list[Value]:
    ins = list(m["attn"].inputs)
    ins[m["input"]] = x
    return ins


def _skip_replace(b: Builder, m: Match) -> Value:
    return reattend(b, m["attn"], _inputs_with(m, m["x"]))


def _scale_check(m: Match) -> str | None:
    op, x = m["scale"], m["x"]
    if tuple(op.output.shape) != tuple(x.shape):
        return f"the constant grows {list(x.shape)} to {list(op.output.shape)}"
    return "division by 0" if op.op == "div" and m["c"] == 0 else None


def _scale_replace(b: Builder, m: Match) -> Value:
    # (x * c) @ k^T * s == x @ k^T * (s * c); a permute in between moves with x.
    c = m["c"] if m["scale"].op == "mul" else 1.0 / m["c"]
    scale = float(m["attn"].attrs["scale"] * c)
    x = m["x"] if "perm" not in m else b.op("permute", m["x"], perm=m["perm"].attrs["perm"])
    return reattend(b, m["attn"], _inputs_with(m, x), scale=scale)


SCALED = P.op(("mul", "div"), P.var("x"), P.scalar(name="c"), name="scale")
SKIP_IDENTITY = Rule(  # not the mask: one mask is often shared by every layer
    "skip-identity", _one_of(P.op(ID, P.var("x")), 3), _skip_replace
)
ABSORB_SCALE = Rule(
    "absorb-scale",
    _one_of(P.either(SCALED, P.op("permute", SCALED, name="perm")), 2),
    _scale_replace,
    _scale_check,
)


@register("fuse-attention")
class FuseAttention(RewritePass):
    """Fuse sdpa and written-out softmax(q k^T) v into attention (GQA, causal, bsd layout)."""

    rules = (SDPA, SOFTMAX_ATTENTION, SKIP_IDENTITY, ABSORB_SCALE, *HEAD_RULES)
