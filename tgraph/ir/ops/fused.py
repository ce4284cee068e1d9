"""Fused ops that passes create: attention (alone or with its QKV projection), rotary,
skip-norms, bias+GELU.

Each has a NumPy kernel written from its definition (not from the ops it replaces), so
the reference interpreter checks every fusion against an independent formula.
"""

from __future__ import annotations

import numpy as np

from tgraph.ir.core import IRError, TensorType
from tgraph.ir.dtypes import DType
from tgraph.ir.ops.elementwise import _gelu
from tgraph.ir.ops.nn import _layer_norm_kernel, _norm_infer, _rms_norm_kernel
from tgraph.ir.ops.registry import REQUIRED, defop
from tgraph.ir.ops.shapes import broadcast_shapes

# -- attention -------------------------------------------------------------------------------
#
# layout "bhsd": q (B, H, Tq, D), k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) -> (B, H, Tq, Dv)
# layout "bsd":  q (B, Tq, H*D), k (B, Tk, Hkv*D), v (B, Tk, Hkv*Dv)    -> (B, Tq, H*Dv)
# mask: additive float, or bool (True = attend), broadcastable to (B, H, Tq, Tk).
# causal: query i attends to keys j <= i (top-left aligned, like torch's sdpa).


def _attention_infer(q, k, v, mask, num_heads, kv_heads, scale, causal, layout) -> TensorType:
    if num_heads % kv_heads:
        raise IRError(f"attention: num_heads {num_heads} is not a multiple of kv_heads {kv_heads}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise IRError(f"attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    if mask is not None and mask.dtype not in (DType.bool, q.dtype):
        raise IRError(f"attention: mask dtype {mask.dtype} is neither bool nor {q.dtype}")
    if layout == "bhsd":
        if q.rank != 4 or k.rank != 4 or v.rank != 4:
            raise IRError("attention (bhsd): q, k, v must have rank 4")
        if q.shape[1] != num_heads or k.shape[1] != kv_heads:
            raise IRError(
                f"attention (bhsd): head dims {q.shape[1]}, {k.shape[1]} != {num_heads}, {kv_heads}"
            )
        return TensorType(q.dtype, (q.shape[0], num_heads, q.shape[2], v.shape[3]))
    if layout == "bsd":
        if q.rank != 3 or k.rank != 3 or v.rank != 3:
            raise IRError("attention (bsd): q, k, v must have rank 3")
        if q.shape[2] % num_heads or k.shape[2] % kv_heads or v.shape[2] % kv_heads:
            raise IRError("attention (bsd): hidden sizes are not multiples of the head counts")
        dv = v.shape[2] // kv_heads
        return TensorType(q.dtype, (q.shape[0], q.shape[1], num_heads * dv))
    raise IRError(f"attention: unknown layout {layout!r}; want 'bhsd' or 'bsd'")


def _split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    b, t, hd = x.shape
    return x.reshape(b, t, heads, hd // heads).transpose(0, 2, 1, 3)  # (B, H, T, D)


def attention_reference(q, k, v, mask, num_heads, kv_heads, scale, causal, layout):
    """softmax(q @ k^T * scale + mask) @ v in float64, per the layout rules above."""
    if layout == "bsd":
        q, k, v = _split_heads(q, num_heads), _split_heads(k, kv_heads), _split_heads(v, kv_heads)
    dtype = q.dtype
    if kv_heads != num_heads:
        k = np.repeat(k, num_heads // kv_heads, axis=1)
        v = np.repeat(v, num_heads // kv_heads, axis=1)
    scores = np.matmul(q.astype(np.float64), np.swapaxes(k, -1, -2).astype(np.float64)) * scale
    if causal:
        tq, tk = scores.shape[-2:]
        scores = np.where(np.tril(np.ones((tq, tk), dtype=bool)), scores, -np.inf)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + mask
    scores = scores - np.max(scores, axis=-1, keepdims=True)
    p = np.exp(scores)
    out = np.matmul(p / np.sum(p, axis=-1, keepdims=True), v.astype(np.float64)).astype(dtype)
    if layout == "bsd":
        b, h, t, d = out.shape
        out = out.transpose(0, 2, 1, 3).reshape(b, t, h * d)
    return out


defop(
    "attention",
    infer=_attention_infer,
    kernel=attention_reference,
    attrs={
        "num_heads": REQUIRED,
        "kv_heads": REQUIRED,
        "scale": REQUIRED,
        "causal": False,
        "layout": "bhsd",
    },
    inputs=(3, 4),
    doc="Fused multi-head attention softmax(q k^T * scale + mask) v (GQA when kv_heads < num_heads).",
)

# -- attention with its QKV projection ---------------------------------------------------------
#
# qkv_attention(x, w, b?, mask?) {sizes=(Nq, Nk, Nv)}
#   == attention{layout=bsd}(split(linear(x, w, b), sizes, axis=-1), mask)
# x (B, T, C), w (Nq+Nk+Nv, C) in linear's (out, in) layout, b (Nq+Nk+Nv,) -> (B, T, H*Dv),
# with H = num_heads and Dv = Nv / kv_heads.


def _qkv_attention_infer(x, w, b, mask, num_heads, kv_heads, scale, causal, sizes):
    if len(sizes) != 3 or not all(isinstance(n, int) and n > 0 for n in sizes):
        raise IRError(f"qkv_attention: sizes {sizes} must be three positive ints (Nq, Nk, Nv)")
    if x.rank != 3 or w.rank != 2:
        raise IRError(f"qkv_attention: x has rank {x.rank} and w rank {w.rank}, want 3 and 2")
    if x.dtype != w.dtype or (b is not None and b.dtype != x.dtype):
        raise IRError("qkv_attention: x, w and b dtypes differ")
    n = sum(sizes)
    if tuple(w.shape) != (n, x.shape[2]):
        raise IRError(f"qkv_attention: w shape {w.shape} != ({n}, {x.shape[2]}) for sizes {sizes}")
    if b is not None and tuple(b.shape) != (n,):
        raise IRError(f"qkv_attention: b shape {b.shape} != ({n},)")
    nq, nk, nv = sizes
    if nq % num_heads or nk % kv_heads or nq // num_heads != nk // kv_heads:
        raise IRError(
            f"qkv_attention: Nq {nq} / {num_heads} heads and Nk {nk} / {kv_heads} heads "
            "do not give one head size"
        )
    q, k, v = (TensorType(x.dtype, (x.shape[0], x.shape[1], s)) for s in sizes)
    return _attention_infer(q, k, v, mask, num_heads, kv_heads, scale, causal, layout="bsd")


def _qkv_attention_kernel(x, w, b, mask, num_heads, kv_heads, scale, causal, sizes):
    qkv = np.matmul(x.astype(np.float64), w.T.astype(np.float64))  # (B, T, Nq+Nk+Nv)
    if b is not None:
        qkv = qkv + b
    qkv = qkv.astype(x.dtype)
    q, k, v = np.split(qkv, np.cumsum(sizes)[:2], axis=-1)
    return attention_reference(q, k, v, mask, num_heads, kv_heads, scale, causal, layout="bsd")


defop(
    "qkv_attention",
    infer=_qkv_attention_infer,
    kernel=_qkv_attention_kernel,
    attrs={
        "num_heads": REQUIRED,
        "kv_heads": REQUIRED,
        "scale": REQUIRED,
        "causal": False,
        "sizes": REQUIRED,
    },
    inputs=(2, 4),
    doc="Attention (bsd) of the q, k, v split from one projection x @ w.T + b (sizes Nq, Nk, Nv).",
)

# -- rotary ----------------------------------------------------------------------------------


def _rotary_infer(x, cos, sin, *, interleaved=False) -> TensorType:
    shape = broadcast_shapes(x.shape, cos.shape, sin.shape, op="rotary")
    if tuple(shape) != tuple(x.shape):
        raise IRError(f"rotary: cos/sin {cos.shape} do not broadcast to x {x.shape}")
    if x.dtype != cos.dtype or x.dtype != sin.dtype:
        raise IRError("rotary: x, cos and sin dtypes differ")
    return x


def rotate_pairs(x: np.ndarray, interleaved: bool) -> np.ndarray:
    """The partner of each element that rotary multiplies by sin: cat(-x2, x1) over the halves
    x1, x2 of the last dim (rotate-half), or (-x[2i+1], x[2i]) at (2i, 2i+1) (interleaved)."""
    if interleaved:
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = -x[..., 1::2], x[..., 0::2]
        return out
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _rotary_kernel(x, cos, sin, *, interleaved=False):
    return (x * cos + rotate_pairs(x, interleaved) * sin).astype(x.dtype)


defop(
    "rotary",
    infer=_rotary_infer,
    kernel=_rotary_kernel,
    attrs={"interleaved": False},
    inputs=3,
    doc="Rotary embedding over the last dim: x*cos + rot(x)*sin, rot(x) = cat(-x2, x1) over "
    "its halves (rotate-half, Llama), or the pairs (x[2i], x[2i+1]) -> (-x[2i+1], x[2i]) "
    "(interleaved, GPT-J); cos/sin are full width (each frequency twice).",
)

# -- residual add + normalization --------------------------------------------------------------


def _skip_norm_infer(x, skip, *params, axis, eps) -> list[TensorType]:
    shape = broadcast_shapes(x.shape, skip.shape, op="skip_norm")
    if tuple(shape) != tuple(x.shape):
        raise IRError(f"skip_norm: residual {skip.shape} does not broadcast to {x.shape}")
    out = _norm_infer(x, *params, axis=axis, eps=eps)
    return [out, out]


defop(
    "skip_layer_norm",
    infer=_skip_norm_infer,
    kernel=lambda x, skip, w, b, axis, eps: (
        _layer_norm_kernel(x + skip, w, b, axis, eps),
        (x + skip).astype(x.dtype),
    ),
    attrs={"axis": -1, "eps": 1e-5},
    inputs=(2, 4),
    doc="s = x + skip; outputs (layer_norm(s) * w + b, s).",
)
defop(
    "skip_rms_norm",
    infer=_skip_norm_infer,
    kernel=lambda x, skip, w, axis, eps: (
        _rms_norm_kernel(x + skip, w, axis, eps),
        (x + skip).astype(x.dtype),
    ),
    attrs={"axis": -1, "eps": 1e-6},
    inputs=(2, 3),
    doc="s = x + skip; outputs (rms_norm(s) * w, s).",
)

# -- bias + GELU -------------------------------------------------------------------------------


def _bias_gelu_infer(x, bias, approximate) -> TensorType:
    if bias.rank != 1 or bias.shape[0] != x.shape[-1]:
        raise IRError(f"bias_gelu: bias shape {bias.shape} != ({x.shape[-1]},)")
    return x


defop(
    "bias_gelu",
    infer=_bias_gelu_infer,
    kernel=lambda x, bias, approximate: _gelu((x + bias).astype(x.dtype), approximate),
    attrs={"approximate": "none"},
    inputs=2,
    doc="gelu(x + bias) with a 1-D bias over the last dim.",
)
