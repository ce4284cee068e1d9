"""ONNX lowerings of the reductions (tgraph/ir/ops/reduce.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tgraph.backends.onnx_ops.base import (
    LOWERINGS,
    LoweringFn,
    cast,
    in_type,
    lowers,
    scalar,
)
from tgraph.ir.ops.shapes import norm_axis

_REDUCE = {
    "reduce_sum": "ReduceSum",
    "reduce_mean": "ReduceMean",
    "reduce_max": "ReduceMax",
    "reduce_min": "ReduceMin",
    "reduce_prod": "ReduceProd",
}


def _reduce(ctx, op_type: str, x: str, axes: Sequence[int], keepdim: bool) -> str:
    inputs = [x, ctx.ints(axes)] if axes else [x]  # no axes: reduce over all of them
    return ctx.op(op_type, inputs, keepdims=int(keepdim))


def _reduction(op_type: str) -> LoweringFn:
    return lambda ctx, node, x: _reduce(ctx, op_type, x, node.attrs["axes"], node.attrs["keepdim"])


for _op, _onnx_op in _REDUCE.items():
    LOWERINGS[_op] = _reduction(_onnx_op)


@lowers("var")
def _var(ctx, node, x):
    xt, axes = in_type(node, 0), node.attrs["axes"]
    reduced = [norm_axis(a, xt.rank) for a in axes] if axes else range(xt.rank)
    count = 1
    for a in reduced:
        count = count * xt.shape[a]
    mean = _reduce(ctx, "ReduceMean", x, axes, True)
    diff = ctx.op("Sub", [x, mean])
    total = _reduce(ctx, "ReduceSum", ctx.op("Mul", [diff, diff]), axes, node.attrs["keepdim"])
    n = cast(ctx, ctx.dim(count - node.attrs["correction"], scalar=True), xt.dtype)
    return ctx.op("Div", [total, n])


@lowers("logsumexp")
def _logsumexp(ctx, node, x):
    # log(sum(exp(x - m))) + m, m = max(x) over the axes, or 0 where that max is infinite.
    axes, keepdim = node.attrs["axes"], node.attrs["keepdim"]
    dtype = in_type(node, 0).dtype
    m = _reduce(ctx, "ReduceMax", x, axes, True)
    m = ctx.op("Where", [ctx.op("IsInf", [m]), scalar(ctx, 0, dtype), m])
    total = _reduce(ctx, "ReduceSum", ctx.op("Exp", [ctx.op("Sub", [x, m])]), axes, keepdim)
    shift = m if keepdim else _reduce(ctx, "ReduceMax", m, axes, False)  # drop the unit axes
    return ctx.op("Add", [ctx.op("Log", [total]), shift])


@lowers("argmax")
def _argmax(ctx, node, x):
    return ctx.op("ArgMax", [x], axis=node.attrs["axis"], keepdims=int(node.attrs["keepdim"]))


@lowers("cumsum")
def _cumsum(ctx, node, x):
    dtype = node.outputs[0].dtype
    if in_type(node, 0).dtype != dtype:
        x = cast(ctx, x, dtype)
    return ctx.op("CumSum", [x, ctx.const(np.int64(node.attrs["axis"]))])


@lowers("topk")
def _topk(ctx, node, x):
    a = node.attrs
    k = ctx.shape((a["k"],))
    return ctx.op_n("TopK", [x, k], 2, axis=a["axis"], largest=int(a["largest"]), sorted=1)
