"""ONNX lowerings of data movement and sources: reshapes, slices, gathers, arange, full
(tgraph/ir/ops/shape_ops.py)."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from tgraph.backends.onnx_ops.base import cast, in_type, lowers, reshape, same, scalar
from tgraph.ir import DType, SymDim
from tgraph.ir.dims import DimLike
from tgraph.ir.ops.shapes import norm_axis


@lowers("reshape")
def _reshape_op(ctx, node, x):
    return reshape(ctx, x, in_type(node, 0).shape, node.attrs["shape"])


@lowers("permute")
def _permute(ctx, node, x):
    return ctx.op("Transpose", [x], perm=list(node.attrs["perm"]))


@lowers("expand")
def _expand(ctx, node, x):
    have, want = in_type(node, 0).shape, node.attrs["shape"]
    offset = len(want) - len(have)
    # Expand broadcasts both ways: where x already has the wanted dim, 1 keeps it.
    target = [1 if i >= offset and same(have[i - offset], d) else d for i, d in enumerate(want)]
    if all(t == 1 for t in target[offset:]) and offset == 0:
        return x
    return ctx.op("Expand", [x, ctx.shape(target)])


def slice_axis(ctx, x: str, axis: int, start: DimLike, end: DimLike, step: int = 1) -> str:
    starts, ends = ctx.shape([start]), ctx.shape([end])
    return ctx.op("Slice", [x, starts, ends, ctx.ints([axis]), ctx.ints([step])])


@lowers("slice")
def _slice_op(ctx, node, x):
    xt, a = in_type(node, 0), node.attrs
    axis = norm_axis(a["axis"], xt.rank)
    if same(a["start"], 0) and same(a["end"], xt.shape[axis]) and a["step"] == 1:
        return x
    return slice_axis(ctx, x, axis, a["start"], a["end"], a["step"])


@lowers("concat")
def _concat(ctx, node, *xs):
    return ctx.op("Concat", xs, axis=node.attrs["axis"])


@lowers("split")
def _split(ctx, node, x):
    xt, axis, sizes = in_type(node, 0), node.attrs["axis"], node.attrs["sizes"]
    axis = norm_axis(axis, xt.rank)
    total = 0
    for s in sizes:
        total = total + s
    if same(total, xt.shape[axis]):
        return ctx.op_n("Split", [x, ctx.shape(sizes)], len(sizes), axis=axis)
    outs, start = [], 0  # the sizes do not cover the dim: cut each piece out
    for s in sizes:
        outs.append(slice_axis(ctx, x, axis, start, start + s))
        start = start + s
    return outs


@lowers("squeeze")
def _squeeze(ctx, node, x):
    return ctx.op("Squeeze", [x, ctx.ints(node.attrs["axes"])])


@lowers("unsqueeze")
def _unsqueeze(ctx, node, x):
    return ctx.op("Unsqueeze", [x, ctx.ints(node.attrs["axes"])])


@lowers("gather")
def _gather(ctx, node, x, index):
    return ctx.op("Gather", [x, index], axis=node.attrs["axis"])


@lowers("index")
def _index(ctx, node, x, *indices):
    """x[..., i0, i1, ...]: one Gather on the indexed dims flattened into one."""
    xt, axis = in_type(node, 0), node.attrs["axis"]
    if len(indices) == 1:
        return ctx.op("Gather", [x, indices[0]], axis=axis)
    sizes = xt.shape[axis : axis + len(indices)]
    flat = None
    for i, (ix, size) in enumerate(zip(indices, sizes)):
        if in_type(node, i + 1).dtype is not DType.int64:
            ix = cast(ctx, ix, DType.int64)
        ix = ctx.op("Mod", [ix, ctx.dim(size, scalar=True)], fmod=0)  # -1 -> size-1
        if flat is not None:
            flat = ctx.op("Add", [ctx.op("Mul", [flat, ctx.dim(size, scalar=True)]), ix])
        else:
            flat = ix
    merged = 1
    for size in sizes:
        merged = merged * size
    target = tuple(xt.shape[:axis]) + (merged,) + tuple(xt.shape[axis + len(indices) :])
    return ctx.op("Gather", [reshape(ctx, x, xt.shape, target), flat], axis=axis)


@lowers("gather_elements")
def _gather_elements(ctx, node, x, index):
    xt, it = in_type(node, 0), in_type(node, 1)
    axis = norm_axis(node.attrs["axis"], xt.rank)
    crop = [d for d in range(xt.rank) if d != axis and not same(xt.shape[d], it.shape[d])]
    if crop:  # torch.gather allows an index smaller than x on the other dims
        ends = ctx.shape([it.shape[d] for d in crop])
        x = ctx.op("Slice", [x, ctx.ints([0] * len(crop)), ends, ctx.ints(crop)])
    return ctx.op("GatherElements", [x, index], axis=axis)


@lowers("tril", "triu")
def _trilu(ctx, node, x):
    k = ctx.const(np.int64(node.attrs["diagonal"]))
    return ctx.op("Trilu", [x, k], upper=int(node.op == "triu"))


@lowers("pad")
def _pad(ctx, node, x):
    xt, pads = in_type(node, 0), node.attrs["pads"]
    onnx_pads = ctx.shape(list(pads[0::2]) + list(pads[1::2]))  # all begins, then all ends
    value = scalar(ctx, node.attrs["value"], xt.dtype)
    return ctx.op("Pad", [x, onnx_pads, value], mode="constant")


def _as_scalar(ctx, v: DimLike | float, dtype: DType) -> str:
    if isinstance(v, SymDim):
        d = ctx.dim(v, scalar=True)
        return d if dtype is DType.int64 else cast(ctx, d, dtype)
    return scalar(ctx, v, dtype)


@lowers("arange")
def _arange(ctx, node):
    a, dtype = node.attrs, node.attrs["dtype"]
    bounds = (a["start"], a["end"], a["step"])
    # numpy's arange computes in int64 for int bounds and float64 otherwise, then casts.
    work = DType.float64 if any(isinstance(b, float) for b in bounds) else DType.int64
    out = ctx.op("Range", [_as_scalar(ctx, b, work) for b in bounds])
    return out if dtype is work else cast(ctx, out, dtype)


@lowers("full")
def _full(ctx, node):
    shape, value, dtype = node.attrs["shape"], node.attrs["value"], node.attrs["dtype"]
    if isinstance(value, SymDim):
        return ctx.op("Expand", [_as_scalar(ctx, value, dtype), ctx.shape(shape)])
    fill = numpy_helper.from_array(np.asarray([value], dtype=dtype.numpy))
    return ctx.op("ConstantOfShape", [ctx.shape(shape)], value=fill)


@lowers("scatter_elements")
def _scatter_elements(ctx, node, x, index, updates):
    return ctx.op("ScatterElements", [x, index, updates], axis=node.attrs["axis"])


@lowers("scatter_reduce")
def _scatter_reduce(ctx, node, x, index, updates):
    a = node.attrs
    reduction = {"sum": "add", "prod": "mul"}.get(a["reduce"], a["reduce"])
    return ctx.op("ScatterElements", [x, index, updates], axis=a["axis"], reduction=reduction)
