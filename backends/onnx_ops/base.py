"""The lowering table and the small ONNX helpers the per-family lowering modules share."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from onnx import numpy_helper

from tgraph.backends.onnx_lowering import ONNX_DTYPE, Lowering
from tgraph.backends.policy import WHERE_VIA
from tgraph.ir import DType, Node, TensorType, simplify
from tgraph.ir.dims import DimLike

LoweringFn = Callable[..., "str | Sequence[str]"]
LOWERINGS: dict[str, LoweringFn] = {}


def lowers(*ops: str) -> Callable[[LoweringFn], LoweringFn]:
    def deco(fn: LoweringFn) -> LoweringFn:
        for op in ops:
            LOWERINGS[op] = fn
        return fn

    return deco


def in_type(node: Node, i: int) -> TensorType:
    return node.inputs[i].type


def same(a: DimLike, b: DimLike) -> bool:
    return simplify(a) == simplify(b)


def scalar(ctx: Lowering, value: float | int | bool, dtype: DType) -> str:
    return ctx.const(np.asarray(value, dtype=dtype.numpy))


def cast(ctx: Lowering, x: str, dtype: DType) -> str:
    return ctx.op("Cast", [x], to=ONNX_DTYPE[dtype])


def where(ctx: Lowering, cond: str, x: str, y: str, dtype: DType) -> str:
    if dtype in WHERE_VIA:
        wide = WHERE_VIA[dtype]
        out = ctx.op("Where", [cond, cast(ctx, x, wide), cast(ctx, y, wide)])
        return cast(ctx, out, dtype)
    return ctx.op("Where", [cond, x, y])


def reshape(ctx: Lowering, x: str, have: Sequence[DimLike], want: Sequence[DimLike]) -> str:
    """Reshape ``x`` of IR shape ``have`` to ``want``, with as constant a target as possible.

    A symbolic dim equal to the input dim at the same position becomes 0 (copy), and one
    remaining symbolic dim becomes -1, so ``(batch, seq, 32) -> (batch, seq, 4, 8)`` needs
    no shape arithmetic at run time.
    """
    want = [simplify(d) for d in want]
    if any(d == 0 for d in want):  # an empty dim: 0 must mean 0, so spell every dim out
        return ctx.op("Reshape", [x, ctx.shape(want)], allowzero=1)
    target: list[DimLike] = []
    inferred = False
    for i, d in enumerate(want):
        if isinstance(d, int):
            target.append(d)
        elif i < len(have) and same(have[i], d):
            target.append(0)
        elif not inferred:
            target.append(-1)
            inferred = True
        else:
            target.append(d)
    return ctx.op("Reshape", [x, ctx.shape(target)])


def ones(ctx: Lowering, dims: Sequence[DimLike], dtype: DType) -> str:
    if all(isinstance(d, int) for d in dims):
        return ctx.const(np.ones(tuple(dims), dtype=dtype.numpy))
    value = numpy_helper.from_array(np.ones(1, dtype=dtype.numpy))
    return ctx.op("ConstantOfShape", [ctx.shape(dims)], value=value)
