"""ATen scatters along a dim: scatter (plain writes), scatter_add and scatter_reduce (sum,
prod, amax, amin, mean; with or without the input's own values)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tgraph.frontend.aten.base import aten, norm_dim
from tgraph.frontend.convert import UnsupportedError
from tgraph.ir import DType, Value

# torch's reduce name -> the IR's scatter_reduce kind
_KINDS = {"sum": "sum", "prod": "prod", "amax": "max", "amin": "min", "mean": "sum"}


def _source(ctx, src: Any, index: Value, dtype: DType) -> Value:
    """``src`` (a tensor or a scalar) as a tensor of index's shape in ``dtype``: torch lets
    index be smaller than src on every dim, and src is cropped to it."""
    if not isinstance(src, Value):
        return ctx.emit("expand", [ctx.const(src, dtype)], shape=tuple(index.shape))
    src = ctx.cast(src, dtype)
    for d in range(src.rank):
        if src.shape[d] != index.shape[d]:
            src = ctx.emit("slice", [src], axis=d, start=0, end=index.shape[d], step=1)
    return src


@aten("scatter.value", "scatter.src")
def _scatter(ctx, x, dim, index, src):
    x = ctx.value(x)
    index = ctx.cast(ctx.value(index), DType.int64)
    src = _source(ctx, ctx.value(src), index, x.dtype)
    return ctx.emit("scatter_elements", [x, index, src], axis=norm_dim(dim, x.rank))


@aten("scatter_add.default")
def _scatter_add(ctx, x, dim, index, src):
    return _scatter_reduce(ctx, x, dim, index, src, "sum")


@aten("scatter_reduce.two")
def _scatter_reduce(ctx, x, dim, index, src, reduce, *, include_self=True):
    # Without include_self, the targets first get the reduction's identity (0, 1, -inf, +inf),
    # so the reduction sees only src there; untouched positions keep x either way. mean is a
    # sum divided by the count of values that reached each position (x's own counted with
    # include_self), floor-divided on integers as torch does.
    if reduce not in _KINDS:
        raise UnsupportedError(f"scatter_reduce with reduce={reduce!r}")
    x = ctx.value(x)
    axis = norm_dim(dim, x.rank)
    index = ctx.cast(ctx.value(index), DType.int64)
    src = _source(ctx, ctx.value(src), index, x.dtype)
    base = x
    if not include_self:
        base = ctx.emit("scatter_elements", [x, index, _identity(ctx, reduce, index, x.dtype)],
                        axis=axis)  # fmt: skip
    total = ctx.emit("scatter_reduce", [base, index, src], axis=axis, reduce=_KINDS[reduce])
    if reduce != "mean":
        return total
    start = _number(int(include_self), x.dtype)
    start = ctx.emit("full", [], shape=tuple(x.shape), value=start, dtype=x.dtype)
    ones = ctx.emit("full", [], shape=tuple(index.shape), value=_number(1, x.dtype), dtype=x.dtype)
    count = ctx.emit("scatter_reduce", [start, index, ones], axis=axis, reduce="sum")
    count = ctx.emit("maximum", [count, ctx.const(1, x.dtype)])  # untouched: x / 1
    return ctx.emit("div" if x.dtype.is_float else "floor_divide", [total, count])


def _identity(ctx, reduce: str, index: Value, dtype: DType) -> Value:
    """The value that leaves ``reduce`` unchanged, broadcast to index's shape."""
    if reduce in ("amax", "amin") and dtype.is_float:
        value = -np.inf if reduce == "amax" else np.inf
    elif reduce in ("amax", "amin"):
        info = np.iinfo(dtype.numpy)
        value = int(info.min if reduce == "amax" else info.max)
    else:
        value = _number(1 if reduce == "prod" else 0, dtype)
    return ctx.emit("expand", [ctx.const(value, dtype)], shape=tuple(index.shape))


def _number(value: int, dtype: DType) -> int | float:
    return float(value) if dtype.is_float else value
