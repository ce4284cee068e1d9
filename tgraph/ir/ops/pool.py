"""Pooling: ``pool2d`` (max or average over k x k windows of (N, C, H, W))."""

from __future__ import annotations

import numpy as np

from tgraph.ir.core import IRError, TensorType
from tgraph.ir.dims import DimLike

from .registry import REQUIRED, defop


def pool_out(size: DimLike, k: int, stride: int, pad: int, ceil_mode: bool) -> DimLike:
    """Output length of one axis, torch's rule: a last window must start inside the input
    or its left padding."""
    span = size + 2 * pad - k
    if not ceil_mode:
        return span // stride + 1
    out = (span + stride - 1) // stride + 1
    if isinstance(out, int) and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pool_infer(x: TensorType, kind, kernel, stride, padding, ceil_mode, count_include_pad):
    if x.rank != 4:
        raise IRError(f"pool2d: want a rank-4 input, got rank {x.rank}")
    if kind not in ("max", "avg"):
        raise IRError(f"pool2d: kind {kind!r}, want 'max' or 'avg'")
    if ceil_mode and any(not isinstance(d, int) for d in x.shape[2:]):
        raise IRError("pool2d: ceil_mode needs static spatial dims")
    dims = [pool_out(x.shape[2 + i], kernel[i], stride[i], padding[i], ceil_mode) for i in (0, 1)]
    return TensorType(x.dtype, (*x.shape[:2], *dims))


def _pool_kernel(x, kind, kernel, stride, padding, ceil_mode, count_include_pad):
    n, c, h, w = x.shape
    oh, ow = (
        pool_out(s, kernel[i], stride[i], padding[i], ceil_mode) for i, s in enumerate((h, w))
    )
    # Pad enough on the far side for ceil-mode windows; padding never wins a max.
    extra = [max(0, (o - 1) * stride[i] + kernel[i] - s - 2 * padding[i])
             for i, (o, s) in enumerate(((oh, h), (ow, w)))]  # fmt: skip
    fill = -np.inf if kind == "max" else 0.0
    pads = (
        (0, 0),
        (0, 0),
        (padding[0], padding[0] + extra[0]),
        (padding[1], padding[1] + extra[1]),
    )
    xp = np.pad(x.astype(np.float64), pads, constant_values=fill)
    # torch averages over the window's cells inside the input plus its declared padding
    # (count_include_pad) or inside the input only; never over the ceil-mode overhang.
    inside = np.pad(np.ones((h, w)), pads[2:], constant_values=0.0)
    declared = np.pad(np.ones((h + 2 * padding[0], w + 2 * padding[1])),
                      ((0, extra[0]), (0, extra[1])), constant_values=0.0)  # fmt: skip
    counts = declared if count_include_pad else inside
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            rows = slice(i * stride[0], i * stride[0] + kernel[0])
            cols = slice(j * stride[1], j * stride[1] + kernel[1])
            window = xp[:, :, rows, cols]
            if kind == "max":
                out[:, :, i, j] = window.max(axis=(2, 3))
            else:
                out[:, :, i, j] = window.sum(axis=(2, 3)) / counts[rows, cols].sum()
    return out.astype(x.dtype)


defop(
    "pool2d",
    infer=_pool_infer,
    kernel=_pool_kernel,
    attrs={
        "kind": REQUIRED,
        "kernel": REQUIRED,
        "stride": REQUIRED,
        "padding": (0, 0),
        "ceil_mode": False,
        "count_include_pad": True,
    },  # fmt: skip
    doc="Max or average pooling over k x k windows of (N, C, H, W), torch's semantics.",
)
