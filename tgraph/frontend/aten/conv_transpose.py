"""ATen transposed convolution (conv_transpose1d / 2d, convolution with transposed=True) as a
decomposition onto the IR's conv2d.

A transposed convolution with stride s, padding p, output padding q and dilation d is the
plain stride-1 convolution of the input with s - 1 zeros between its elements, padded by
d (k - 1) - p at the start and d (k - 1) - p + q at the end, with the kernel flipped and its
in / out channels swapped per group. Output size: (H - 1) s - 2 p + d (k - 1) + q + 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tgraph.frontend.aten.base import aten
from tgraph.frontend.convert import UnsupportedError
from tgraph.ir import DType, Value


def _per_dim(v: Any, n: int) -> tuple[int, ...]:
    return tuple(v) * (n // len(v)) if isinstance(v, (list, tuple)) else (v,) * n


@aten("conv_transpose2d.input", "conv_transpose1d.default")
def _conv_transpose_op(ctx, x, weight, bias=None, stride=1, padding=0, output_padding=0,
                       groups=1, dilation=1):  # fmt: skip
    return conv_transpose(ctx, x, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose(ctx, x, weight, bias, stride, padding, output_padding, groups, dilation):
    """The transposed convolution of (N, C, L) or (N, C, H, W) ``x`` (FX arguments)."""
    x, w = ctx.value(x), ctx.value(weight)
    if isinstance(padding, str):
        raise UnsupportedError(f"transposed convolution with padding={padding!r}")
    one_d = x.rank == 3
    if one_d:  # (N, C, L) as the (N, C, 1, L) image, the weight (Cin, Cout/g, 1, k)
        x, w = (ctx.emit("unsqueeze", [v], axes=(2,)) for v in (x, w))
        one = lambda v, height: (height, _per_dim(v, 1)[0])  # noqa: E731
        stride, dilation = one(stride, 1), one(dilation, 1)
        padding, output_padding = one(padding, 0), one(output_padding, 0)
    if x.rank != 4:
        raise UnsupportedError(f"transposed convolution on rank-{x.rank} input")
    stride, padding, output_padding, dilation = (
        _per_dim(v, 2) for v in (stride, padding, output_padding, dilation)
    )  # fmt: skip
    for axis in (2, 3):
        i = axis - 2
        x = _spread(ctx, x, axis, stride[i])
        edge = dilation[i] * (w.shape[axis] - 1) - padding[i]
        x = _pad_or_crop(ctx, x, axis, edge, edge + output_padding[i])
    ins = [x, _flipped_kernel(ctx, w, groups)]
    if bias is not None:
        ins.append(ctx.value(bias))
    y = ctx.emit("conv2d", ins, stride=(1, 1), padding=(0, 0), dilation=dilation, groups=groups)
    return ctx.emit("squeeze", [y], axes=(2,)) if one_d else y


def _spread(ctx, x: Value, axis: int, s: int) -> Value:
    """s - 1 zeros between neighbours along ``axis``: n -> (n - 1) s + 1."""
    if s == 1:
        return x
    shape = tuple(x.shape)
    y = ctx.emit("unsqueeze", [x], axes=(axis + 1,))  # (..., n, 1, ...)
    pads = [0] * (2 * y.rank)
    pads[2 * (axis + 1) + 1] = s - 1
    y = ctx.emit("pad", [y], pads=tuple(pads), value=0.0)  # (..., n, s, ...)
    merged = shape[:axis] + (shape[axis] * s,) + shape[axis + 1 :]
    y = ctx.emit("reshape", [y], shape=merged)
    return ctx.emit("slice", [y], axis=axis, start=0, end=(shape[axis] - 1) * s + 1, step=1)


def _pad_or_crop(ctx, x: Value, axis: int, before: int, after: int) -> Value:
    """Zeros added at either end of ``axis``, or elements cut off where the count is < 0."""
    if before < 0 or after < 0:
        size = x.shape[axis]
        x = ctx.emit("slice", [x], axis=axis, start=max(-before, 0), end=size - max(-after, 0),
                     step=1)  # fmt: skip
    if before <= 0 and after <= 0:
        return x
    pads = [0] * (2 * x.rank)
    pads[2 * axis], pads[2 * axis + 1] = max(before, 0), max(after, 0)
    return ctx.emit("pad", [x], pads=tuple(pads), value=0.0)


def _flipped_kernel(ctx, w: Value, groups: int) -> Value:
    # (Cin, Cout/g, kh, kw) -> (g, Cin/g, Cout/g, kh, kw) -> (Cout, Cin/g, kh, kw), reversed
    # along kh and kw (constant weights fold to one initializer).
    cin, cout_g, kh, kw = w.shape
    y = ctx.emit("reshape", [w], shape=(groups, cin // groups, cout_g, kh, kw))
    y = ctx.emit("permute", [y], perm=(0, 2, 1, 3, 4))
    y = ctx.emit("reshape", [y], shape=(groups * cout_g, cin // groups, kh, kw))
    for axis, k in ((2, kh), (3, kw)):
        if k > 1:
            reverse = ctx.const(np.arange(k - 1, -1, -1), DType.int64)
            y = ctx.emit("gather", [y, reverse], axis=axis)
    return y
