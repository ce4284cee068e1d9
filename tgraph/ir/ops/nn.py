"""Neural-network ops: matmul, linear, softmax, normalizations, conv2d, attention."""

from __future__ import annotations

import math

import numpy as np

from tgraph.ir.core import IRError, TensorType
from tgraph.ir.dims import SymDim

from .registry import defop
from .shapes import broadcast_shapes, norm_axis


def _matmul_infer(a: TensorType, b: TensorType) -> TensorType:
    if a.rank < 1 or b.rank < 1:
        raise IRError("matmul: inputs must have rank >= 1")
    a_shape = tuple(a.shape) if a.rank > 1 else (1, a.shape[0])
    b_shape = tuple(b.shape) if b.rank > 1 else (b.shape[0], 1)
    k1, k2 = a_shape[-1], b_shape[-2]
    if k1 != k2 and not (isinstance(k1, SymDim) or isinstance(k2, SymDim)):
        raise IRError(f"matmul: inner dims differ ({k1} vs {k2})")
    batch = broadcast_shapes(a_shape[:-2], b_shape[:-2], op="matmul")
    shape = batch + (a_shape[-2], b_shape[-1])
    if a.rank == 1:
        shape = shape[:-2] + shape[-1:]
    if b.rank == 1:
        shape = shape[:-1]
    return TensorType(a.dtype, shape)


def _is_half(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is a 16-bit float (float16 or ml_dtypes' bfloat16)."""
    return dtype == np.float16 or dtype.name == "bfloat16"


def _matmul_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # 16-bit floats: upcast, accumulate in float32, round the result once (like GPUs and
    # AMX); NumPy's own float16 matmul accumulates in float16.
    if _is_half(a.dtype):
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
    return np.matmul(a, b)


defop(
    "matmul",
    infer=_matmul_infer,
    kernel=_matmul_kernel,
    inputs=2,
    doc="Batched matrix product with NumPy/torch broadcasting.",
)


def _linear_infer(x: TensorType, w: TensorType, b: TensorType | None) -> TensorType:
    if w.rank != 2:
        raise IRError(f"linear: weight has rank {w.rank}, want 2 (out_features, in_features)")
    if x.shape[-1] != w.shape[1] and not isinstance(x.shape[-1], SymDim):
        raise IRError(f"linear: input features {x.shape[-1]} != weight in_features {w.shape[1]}")
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise IRError(f"linear: bias shape {b.shape} != ({w.shape[0]},)")
    return TensorType(x.dtype, tuple(x.shape[:-1]) + (w.shape[0],))


def _linear_kernel(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    if _is_half(x.dtype):  # fp32 accumulation, the bias added before the one rounding
        wide = [None if a is None else a.astype(np.float32) for a in (x, w, b)]
        return _linear_kernel(*wide).astype(x.dtype)
    y = np.matmul(x, w.T)
    return (y + b).astype(x.dtype) if b is not None else y


defop(
    "linear",
    infer=_linear_infer,
    kernel=_linear_kernel,
    inputs=(2, 3),
    doc="y = x @ w.T + b, with w of shape (out_features, in_features).",
)


def _softmax_kernel(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype)


def _log_softmax_kernel(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return (shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))).astype(x.dtype)


def _axis_same(x: TensorType, axis: int) -> TensorType:
    norm_axis(axis, x.rank, "softmax")
    return x


defop(
    "softmax",
    infer=_axis_same,
    kernel=_softmax_kernel,
    attrs={"axis": -1},
    doc="Softmax along `axis`.",
)
defop(
    "log_softmax",
    infer=_axis_same,
    kernel=_log_softmax_kernel,
    attrs={"axis": -1},
    doc="Log of softmax along `axis`.",
)


def _norm_infer(x: TensorType, *params: TensorType | None, axis: int, eps: float) -> TensorType:
    axis = norm_axis(axis, x.rank, "norm")
    normalized = tuple(x.shape[axis:])
    for p in params:
        if p is not None and tuple(p.shape) != normalized:
            raise IRError(f"norm: parameter shape {p.shape} != normalized shape {normalized}")
    return x


def _layer_norm_kernel(x, weight, bias, axis, eps):
    axes = tuple(range(axis % x.ndim, x.ndim))
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x64 - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype)


def _rms_norm_kernel(x, weight, axis, eps):
    axes = tuple(range(axis % x.ndim, x.ndim))
    x64 = x.astype(np.float64)
    y = x64 / np.sqrt((x64**2).mean(axis=axes, keepdims=True) + eps)
    if weight is not None:
        y = y * weight
    return y.astype(x.dtype)


defop(
    "layer_norm",
    infer=_norm_infer,
    kernel=_layer_norm_kernel,
    attrs={"axis": -1, "eps": 1e-5},
    inputs=(1, 3),
    doc="Layer normalization over the dims from `axis` on: (x-mean)/sqrt(var+eps)*w+b.",
)
defop(
    "rms_norm",
    infer=_norm_infer,
    kernel=_rms_norm_kernel,
    attrs={"axis": -1, "eps": 1e-6},
    inputs=(1, 2),
    doc="RMS normalization over the dims from `axis` on: x/sqrt(mean(x^2)+eps)*w.",
)


def _conv_out(size, k, stride, pad, dilation):
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def _conv2d_infer(x, w, b, stride, padding, dilation, groups) -> TensorType:
    if x.rank != 4 or w.rank != 4:
        raise IRError(f"conv2d: want rank-4 input and weight, got {x.rank} and {w.rank}")
    h = _conv_out(x.shape[2], w.shape[2], stride[0], padding[0], dilation[0])
    wd = _conv_out(x.shape[3], w.shape[3], stride[1], padding[1], dilation[1])
    return TensorType(x.dtype, (x.shape[0], w.shape[0], h, wd))


def _conv2d_kernel(x, w, b, stride, padding, dilation, groups):
    x = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    # im2col: (N, C, kh, kw, oh, ow), then per group a contraction with (O/g, C/g, kh, kw)
    cols = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            r, q = i * dilation[0], j * dilation[1]
            cols[:, :, i, j] = x[
                :, :, r : r + stride[0] * oh : stride[0], q : q + stride[1] * ow : stride[1]
            ]
    og = o // groups
    y = np.concatenate(
        [
            np.einsum(
                "nckluv,ockl->nouv",
                cols[:, g * cg : (g + 1) * cg],
                w[g * og : (g + 1) * og],
                optimize=True,
            )  # fmt: skip
            for g in range(groups)
        ],
        axis=1,
    )
    if b is not None:
        y = y + b[None, :, None, None]
    return y.astype(x.dtype)


defop(
    "conv2d",
    infer=_conv2d_infer,
    kernel=_conv2d_kernel,
    attrs={"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1},
    inputs=(2, 3),
    doc="2-D convolution, NCHW input and OIHW weight.",
)


def _sdpa_infer(q, k, v, mask, causal, scale, gqa) -> TensorType:
    if q.rank < 2 or k.rank != q.rank or v.rank != q.rank:
        raise IRError(f"sdpa: q, k, v ranks {q.rank}, {k.rank}, {v.rank} must match")
    return TensorType(q.dtype, tuple(q.shape[:-1]) + (v.shape[-1],))


def _sdpa_kernel(q, k, v, mask, causal, scale, gqa):
    if gqa and q.ndim >= 3 and k.shape[-3] != q.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k = np.repeat(k, rep, axis=-3)
        v = np.repeat(v, rep, axis=-3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = np.matmul(q.astype(np.float64), np.swapaxes(k, -1, -2).astype(np.float64)) * scale
    tq, tk = q.shape[-2], k.shape[-2]
    if causal:
        keep = np.tril(np.ones((tq, tk), dtype=bool))
        scores = np.where(keep, scores, -np.inf)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + mask
    scores = scores - np.max(scores, axis=-1, keepdims=True)
    p = np.exp(scores)
    p = p / np.sum(p, axis=-1, keepdims=True)
    return np.matmul(p, v.astype(np.float64)).astype(q.dtype)


defop(
    "sdpa",
    infer=_sdpa_infer,
    kernel=_sdpa_kernel,
    attrs={"causal": False, "scale": None, "gqa": False},
    inputs=(3, 4),
    doc="softmax(q @ k.T * scale + mask) @ v on (..., heads, seq, head_dim) tensors.",
)
