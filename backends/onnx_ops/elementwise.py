"""ONNX lowerings of the elementwise ops (tgraph/ir/ops/elementwise.py), GELU included."""

from __future__ import annotations

import math

from tgraph.backends.onnx_lowering import MS_DOMAIN, Lowering
from tgraph.backends.onnx_ops.base import (
    LOWERINGS,
    LoweringFn,
    cast,
    in_type,
    lowers,
    scalar,
    where,
)
from tgraph.ir import DType

_UNARY = {
    "neg": "Neg",
    "abs": "Abs",
    "exp": "Exp",
    "log": "Log",
    "sqrt": "Sqrt",
    "reciprocal": "Reciprocal",
    "tanh": "Tanh",
    "erf": "Erf",
    "sigmoid": "Sigmoid",
    "sin": "Sin",
    "cos": "Cos",
    "sign": "Sign",
    "round": "Round",
    "acos": "Acos",
    "logical_not": "Not",
    "bitwise_not": "BitwiseNot",
}
_BINARY = {
    "add": "Add",
    "sub": "Sub",
    "mul": "Mul",
    "div": "Div",
    "pow": "Pow",
    "maximum": "Max",
    "minimum": "Min",
    "eq": "Equal",
    "lt": "Less",
    "le": "LessOrEqual",
    "gt": "Greater",
    "ge": "GreaterOrEqual",
    "logical_and": "And",
    "logical_or": "Or",
    "bitwise_and": "BitwiseAnd",
    "bitwise_or": "BitwiseOr",
    "bitwise_xor": "BitwiseXor",
}


def _simple(op_type: str) -> LoweringFn:
    return lambda ctx, node, *xs: ctx.op(op_type, xs)


for _op, _onnx_op in {**_UNARY, **_BINARY}.items():
    LOWERINGS[_op] = _simple(_onnx_op)


@lowers("identity", "dropout")
def _alias(ctx, node, x):
    return x


@lowers("ne")
def _ne(ctx, node, a, b):
    return ctx.op("Not", [ctx.op("Equal", [a, b])])


@lowers("rsqrt")
def _rsqrt(ctx, node, x):
    return ctx.op("Reciprocal", [ctx.op("Sqrt", [x])])


@lowers("silu")
def _silu(ctx, node, x):
    return ctx.op("Mul", [x, ctx.op("Sigmoid", [x])])


@lowers("relu")
def _relu(ctx, node, x):
    dtype = in_type(node, 0).dtype
    if dtype in (DType.float32, DType.float64):
        return ctx.op("Relu", [x])
    return ctx.op("Max", [x, scalar(ctx, 0, dtype)])  # ORT's Relu lacks most int types


@lowers("floor")
def _floor(ctx, node, x):
    return ctx.op("Floor", [x]) if in_type(node, 0).dtype.is_float else x


@lowers("floor_divide")
def _floor_divide(ctx, node, a, b):
    if in_type(node, 0).dtype.is_float:
        return ctx.op("Floor", [ctx.op("Div", [a, b])])
    # Integer Div truncates; a - (a mod b) is an exact multiple of b, so this is floor.
    rem = ctx.op("Mod", [a, b], fmod=0)
    return ctx.op("Div", [ctx.op("Sub", [a, rem]), b])


@lowers("remainder")
def _remainder(ctx, node, a, b):
    if not in_type(node, 0).dtype.is_float:
        return ctx.op("Mod", [a, b], fmod=0)  # sign of the divisor, like torch.remainder
    quotient = ctx.op("Floor", [ctx.op("Div", [a, b])])
    return ctx.op("Sub", [a, ctx.op("Mul", [quotient, b])])


@lowers("cast")
def _cast_op(ctx, node, x):
    return cast(ctx, x, node.attrs["dtype"])


@lowers("clamp")
def _clamp(ctx, node, x):
    dtype = in_type(node, 0).dtype
    lo, hi = node.attrs["min"], node.attrs["max"]
    bounds = ["" if b is None else scalar(ctx, b, dtype) for b in (lo, hi)]
    return ctx.op("Clip", [x, *bounds])


@lowers("where")
def _where_op(ctx, node, cond, x, y):
    return where(ctx, cond, x, y, node.outputs[0].dtype)


def _gelu(ctx: Lowering, x: str, approximate: str, dtype: DType, bias: str = "") -> str:
    if ctx.fused_kernels and dtype is DType.float32:
        if approximate == "tanh":
            return ctx.op("FastGelu", [x, bias], domain=MS_DOMAIN)
        if bias:
            return ctx.op("BiasGelu", [x, bias], domain=MS_DOMAIN)
        return ctx.op("Gelu", [x], domain=MS_DOMAIN)
    if bias:
        x = ctx.op("Add", [x, bias])
    half_x = ctx.op("Mul", [x, scalar(ctx, 0.5, dtype)])
    if approximate == "tanh":
        # 0.5*x*(1 + tanh(sqrt(2/pi) * (x + 0.044715*x^3)))
        cube = ctx.op("Mul", [ctx.op("Mul", [x, x]), x])
        inner = ctx.op("Add", [x, ctx.op("Mul", [cube, scalar(ctx, 0.044715, dtype)])])
        inner = ctx.op("Mul", [inner, scalar(ctx, math.sqrt(2.0 / math.pi), dtype)])
        phi = ctx.op("Tanh", [inner])
    else:
        # 0.5*x*(1 + erf(x/sqrt(2)))
        phi = ctx.op("Erf", [ctx.op("Mul", [x, scalar(ctx, 1.0 / math.sqrt(2.0), dtype)])])
    return ctx.op("Mul", [half_x, ctx.op("Add", [phi, scalar(ctx, 1.0, dtype)])])


@lowers("gelu")
def _gelu_op(ctx, node, x):
    return _gelu(ctx, x, node.attrs["approximate"], in_type(node, 0).dtype)


@lowers("bias_gelu")
def _bias_gelu(ctx, node, x, bias):
    return _gelu(ctx, x, node.attrs["approximate"], in_type(node, 0).dtype, bias)
