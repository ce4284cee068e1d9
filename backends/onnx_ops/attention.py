"""ONNX lowerings of rotary and attention (tgraph/ir/ops/fused.py): ORT's MultiHeadAttention
and Attention kernels where their constraints hold, standard-op subgraphs otherwise."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tgraph.backends.onnx_lowering import MS_DOMAIN
from tgraph.backends.onnx_ops.base import cast, in_type, lowers, reshape, same, scalar, where
from tgraph.backends.onnx_ops.nn import project, weight_t
from tgraph.backends.onnx_ops.shape_ops import slice_axis
from tgraph.ir import DType, TensorType, simplify
from tgraph.ir.dims import DimLike


@lowers("rotary")
def _rotary(ctx, node, x, cos, sin):
    """x*cos + rot(x)*sin. ORT's RotaryEmbedding takes half-width caches and position
    ids, which only fit when cos/sin repeat their halves; ours may be any tensors."""
    xt = in_type(node, 0)
    dim = xt.shape[-1]
    if node.attrs["interleaved"]:  # pairs (x[2i], x[2i+1]) -> (-x[2i+1], x[2i])
        pairs = (*xt.shape[:-1], simplify(dim // 2), 2)
        split = reshape(ctx, x, xt.shape, pairs)
        even = slice_axis(ctx, split, xt.rank, 0, 1)
        odd = slice_axis(ctx, split, xt.rank, 1, 2)
        swapped = ctx.op("Concat", [ctx.op("Neg", [odd]), even], axis=-1)
        rotated = reshape(ctx, swapped, pairs, xt.shape)
    else:
        half = simplify(dim // 2)
        x1 = slice_axis(ctx, x, xt.rank - 1, 0, half)
        x2 = slice_axis(ctx, x, xt.rank - 1, half, dim)
        rotated = ctx.op("Concat", [ctx.op("Neg", [x2]), x1], axis=-1)
    return ctx.op("Add", [ctx.op("Mul", [x, cos]), ctx.op("Mul", [rotated, sin])])


def _neg_inf(ctx, dtype: DType) -> str:
    return scalar(ctx, -np.inf, dtype)


def _causal_keep(ctx, q_len: DimLike, k_len: DimLike) -> str:
    """bool (q_len, k_len), True where key j <= query i (top-left aligned)."""
    zero, one = ctx.dim(0, scalar=True), ctx.dim(1, scalar=True)
    rows = ctx.op("Range", [zero, ctx.dim(q_len, scalar=True), one])
    cols = ctx.op("Range", [zero, ctx.dim(k_len, scalar=True), one])
    return ctx.op("LessOrEqual", [cols, ctx.op("Unsqueeze", [rows, ctx.ints([1])])])


def _mask_to(ctx, mask: str, shape: Sequence[DimLike], q_len, k_len, rank: int) -> str:
    """Broadcast a mask to rank ``rank`` with exact (q_len, k_len) trailing dims, as the
    ORT kernels want (they broadcast batch and head dims only)."""
    if len(shape) == rank and same(shape[-2], q_len) and same(shape[-1], k_len):
        return mask
    return ctx.op("Expand", [mask, ctx.shape((1,) * (rank - 2) + (q_len, k_len))])


def _repeat_kv(ctx, x: str, shape: Sequence[DimLike], rep: int) -> str:
    """(..., Hkv, T, D) -> (..., Hkv*rep, T, D), each head repeated rep times in a row."""
    r = len(shape)
    x = ctx.op("Unsqueeze", [x, ctx.ints([r - 2])])
    x = ctx.op("Expand", [x, ctx.ints([1] * (r - 2) + [rep, 1, 1])])
    have = tuple(shape[:-2]) + (rep,) + tuple(shape[-2:])
    want = tuple(shape[:-3]) + (shape[-3] * rep,) + tuple(shape[-2:])
    return reshape(ctx, x, have, want)


def _attention_core(ctx, q, k, v, mask, qs, ks, mask_type, dtype, scale, causal, rep) -> str:
    """softmax(q k^T * scale + mask) v on (..., H, T, D) tensors, in elementary ops."""
    if rep > 1:
        k, v = _repeat_kv(ctx, k, ks, rep), _repeat_kv(ctx, v, ks, rep)
    r = len(qs)
    k_t = ctx.op("Transpose", [k], perm=list(range(r - 2)) + [r - 1, r - 2])
    scores = ctx.op("MatMul", [q, k_t])
    if scale is None:  # sdpa's default 1/sqrt(head_dim)
        d = qs[-1]
        if isinstance(d, int):
            scale = 1.0 / math.sqrt(d)
        else:
            root = ctx.op("Sqrt", [cast(ctx, ctx.dim(d, scalar=True), dtype)])
            scores = ctx.op("Div", [scores, root])
    if scale is not None:
        scores = ctx.op("Mul", [scores, scalar(ctx, scale, dtype)])
    if causal:
        keep = _causal_keep(ctx, qs[-2], ks[-2])
        scores = where(ctx, keep, scores, _neg_inf(ctx, dtype), dtype)
    if mask and mask_type.dtype is DType.bool:
        scores = where(ctx, mask, scores, _neg_inf(ctx, dtype), dtype)
    elif mask:
        scores = ctx.op("Add", [scores, mask])
    return ctx.op("MatMul", [ctx.op("Softmax", [scores], axis=-1), v])


def _split_heads(ctx, x: str, heads: int) -> str:
    """(B, T, H*D) -> (B, H, T, D)."""
    x = ctx.op("Reshape", [x, ctx.ints([0, 0, heads, -1])])
    return ctx.op("Transpose", [x], perm=[0, 2, 1, 3])


def _heads_shape(shape: Sequence[DimLike], heads: int) -> tuple[DimLike, ...]:
    b, t, hd = shape
    return (b, heads, t, simplify(hd // heads))


def _finite_bias(ctx, mask: str, dtype: DType) -> str:
    """An additive float mask with its most negative finite value raised by one ulp.

    ORT's standard Attention kernel (not the contrib ones) reads a bias of exactly finfo.min
    (Hugging Face's "masked" value) as -inf and gives 0 for a query whose keys are all masked
    (a padded query of a per-query mask, as in DeBERTa). Eager adds finfo.min, which absorbs
    the scores, and gives that row the mean of v. One ulp above finfo.min absorbs the scores
    the same way, so every row matches eager."""
    lowest = np.finfo(dtype.numpy).min
    floor = np.nextafter(lowest, np.zeros((), dtype.numpy))
    return ctx.op("Max", [mask, scalar(ctx, floor, dtype)])


def _additive_bias(ctx, mask: str, mt: TensorType | None, dtype: DType, q_len, k_len) -> str:
    """The mask as the (B|1, H|1, q_len, k_len) additive attention_bias of ORT's contrib
    attention kernels ("" without a mask): bool True = attend becomes 0 / -inf."""
    if not mask:
        return ""
    if mt.dtype is DType.bool:
        mask = where(ctx, mask, scalar(ctx, 0.0, dtype), _neg_inf(ctx, dtype), dtype)
    return _mask_to(ctx, mask, mt.shape, q_len, k_len, 4)


def _multi_head_attention(ctx, attrs, q, k, v, mask, qt, kt, mt) -> str:
    """com.microsoft MultiHeadAttention: bsd layout, as many kv heads as query heads."""
    q_len, k_len = qt.shape[1], kt.shape[1]
    bias = _additive_bias(ctx, mask, mt, qt.dtype, q_len, k_len)
    unidirectional = 0
    if attrs["causal"] and same(q_len, k_len):
        unidirectional = 1  # ORT aligns its causal mask bottom-right: the same when square
    elif attrs["causal"]:
        keep = _causal_keep(ctx, q_len, k_len)
        causal = where(ctx, keep, scalar(ctx, 0.0, qt.dtype), _neg_inf(ctx, qt.dtype), qt.dtype)
        causal = _mask_to(ctx, causal, (q_len, k_len), q_len, k_len, 4)
        bias = ctx.op("Add", [bias, causal]) if bias else causal
    return ctx.op(
        "MultiHeadAttention",
        [q, k, v, "", "", bias],
        domain=MS_DOMAIN,
        num_heads=attrs["num_heads"],
        scale=float(attrs["scale"]),
        unidirectional=unidirectional,
    )


def _onnx_attention(ctx, q, k, v, mask, qt, kt, mt, scale, causal, heads=None, kv_heads=None):
    """The standard Attention op (opset 23): 3-D (with head counts) or 4-D inputs, GQA."""
    q_axis = 1 if qt.rank == 3 else 2
    if mask and mt.dtype is not DType.bool:
        mask = _finite_bias(ctx, mask, mt.dtype)
    if mask:
        mask = _mask_to(ctx, mask, mt.shape, qt.shape[q_axis], kt.shape[q_axis], max(mt.rank, 2))
    return ctx.op(
        "Attention",
        [q, k, v, mask],
        is_causal=int(causal),
        scale=None if scale is None else float(scale),
        q_num_heads=heads,
        kv_num_heads=kv_heads,
    )


def _attention(ctx, a, q, k, v, mask, qt, kt, mt) -> str:
    """The attention op with attributes ``a`` on q, k, v, mask of IR types qt, kt, mt."""
    heads, kv_heads, bsd = a["num_heads"], a["kv_heads"], a["layout"] == "bsd"
    if ctx.fused_kernels and qt.dtype is DType.float32 and bsd and heads == kv_heads:
        if a["scale"] != 0:  # MultiHeadAttention reads scale 0 as "the default"
            return _multi_head_attention(ctx, a, q, k, v, mask, qt, kt, mt)
    if ctx.fused_kernels and qt.dtype in (DType.float32, DType.float16) and a["scale"] > 0:
        counts = (heads, kv_heads) if bsd else (None, None)  # Attention refuses scale <= 0
        return _onnx_attention(ctx, q, k, v, mask, qt, kt, mt, a["scale"], a["causal"], *counts)
    qs, ks = qt.shape, kt.shape
    if bsd:
        qs, ks = _heads_shape(qs, heads), _heads_shape(ks, kv_heads)
        q, k, v = (
            _split_heads(ctx, q, heads),
            _split_heads(ctx, k, kv_heads),
            _split_heads(ctx, v, kv_heads),
        )
    out = _attention_core(
        ctx, q, k, v, mask, qs, ks, mt, qt.dtype, a["scale"], a["causal"], heads // kv_heads
    )
    if not bsd:
        return out
    out = ctx.op("Transpose", [out], perm=[0, 2, 1, 3])
    return ctx.op("Reshape", [out, ctx.ints([0, 0, -1])])


@lowers("attention")
def _attention_op(ctx, node, q, k, v, mask=""):
    mt = in_type(node, 3) if mask else None
    return _attention(ctx, node.attrs, q, k, v, mask, in_type(node, 0), in_type(node, 1), mt)


@lowers("qkv_attention")
def _qkv_attention(ctx, node, x, w, b="", mask=""):
    """com.microsoft Attention (the QKV GEMM and attention in one kernel) when it fits:
    f32, as many kv heads as query heads, a scale other than 0 (which it reads as the default);
    else MatMul(+Add), Split and the attention lowering."""
    a, xt = node.attrs, in_type(node, 0)
    mt = in_type(node, 3) if mask else None
    batch, seq, _ = xt.shape
    fits = xt.dtype is DType.float32 and a["num_heads"] == a["kv_heads"] and a["scale"] != 0
    if ctx.fused_kernels and fits:
        wt = weight_t(ctx, node.inputs[1], w)  # (C, Nq+Nk+Nv), as Attention wants it
        bias = _additive_bias(ctx, mask, mt, xt.dtype, seq, seq)
        return ctx.op(
            "Attention",
            [x, wt, b, "", "", bias],
            domain=MS_DOMAIN,
            num_heads=a["num_heads"],
            qkv_hidden_sizes=list(a["sizes"]),
            scale=float(a["scale"]),
            unidirectional=int(a["causal"]),  # q and k have one length: no alignment issue
        )
    qkv = project(ctx, x, node.inputs[1], w, b)
    q, k, v = ctx.op_n("Split", [qkv, ctx.ints(a["sizes"])], 3, axis=2)
    qt, kt = (TensorType(xt.dtype, (batch, seq, n)) for n in a["sizes"][:2])
    return _attention(ctx, {**a, "layout": "bsd"}, q, k, v, mask, qt, kt, mt)


@lowers("sdpa")
def _sdpa(ctx, node, q, k, v, mask=""):
    a, qt, kt = node.attrs, in_type(node, 0), in_type(node, 1)
    mt = in_type(node, 3) if mask else None
    heads, kv_heads = qt.shape[-3] if qt.rank >= 3 else 1, kt.shape[-3] if kt.rank >= 3 else 1
    same_heads = same(heads, kv_heads)
    grouped = (
        a["gqa"] and isinstance(heads, int) and isinstance(kv_heads, int) and heads % kv_heads == 0
    )
    if (
        ctx.fused_kernels
        and qt.dtype in (DType.float32, DType.float16)
        and qt.rank == 4
        and (same_heads or grouped)
    ):
        return _onnx_attention(ctx, q, k, v, mask, qt, kt, mt, a["scale"], a["causal"])
    rep = heads // kv_heads if grouped and not same_heads else 1
    return _attention_core(
        ctx, q, k, v, mask, qt.shape, kt.shape, mt, qt.dtype, a["scale"], a["causal"], rep
    )
