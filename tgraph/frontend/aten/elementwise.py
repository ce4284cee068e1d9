"""ATen elementwise ops: arithmetic, comparisons, activations, casts, where."""

from __future__ import annotations

import torch

from tgraph.frontend.aten.base import (
    Translator,
    aten,
    binary,
    compare,
    norm_dim,
    operand,
)  # fmt: skip
from tgraph.frontend.convert import UnsupportedError
from tgraph.ir import DType, Value


@aten("add.Tensor", "add.Scalar")
def _add(ctx, x, other, alpha=1):
    x, other = ctx.value(x), ctx.value(other)
    if alpha != 1:
        other = binary(ctx, "mul", other, alpha)
    return binary(ctx, "add", x, other)


@aten("sub.Tensor", "sub.Scalar")
def _sub(ctx, x, other, alpha=1):
    x, other = ctx.value(x), ctx.value(other)
    if alpha != 1:
        other = binary(ctx, "mul", other, alpha)
    return binary(ctx, "sub", x, other)


@aten("rsub.Tensor", "rsub.Scalar")
def _rsub(ctx, x, other, alpha=1):
    x, other = ctx.value(x), ctx.value(other)
    if alpha != 1:
        x = binary(ctx, "mul", x, alpha)
    return binary(ctx, "sub", other, x)


def _simple_binary(op: str) -> Translator:
    def translate(ctx, x, other):
        return binary(ctx, op, ctx.value(x), ctx.value(other))

    return translate


for _names, _op in [
    (("mul.Tensor", "mul.Scalar", "multiply.Tensor", "multiply.Scalar"), "mul"),
    (("maximum.default", "max.other"), "maximum"),
    (("minimum.default", "min.other"), "minimum"),
    (("remainder.Tensor", "remainder.Scalar"), "remainder"),
    (("pow.Tensor_Tensor", "pow.Tensor_Scalar", "pow.Scalar"), "pow"),
]:
    aten(*_names)(_simple_binary(_op))


@aten("div.Tensor", "div.Scalar", "div.Tensor_mode", "div.Scalar_mode", "floor_divide")
def _div(ctx, x, other, rounding_mode=None):
    x, other = ctx.value(x), ctx.value(other)
    out = ctx.meta_type()
    if rounding_mode is None and out.dtype.is_float:
        return binary(ctx, "div", x, other)
    if rounding_mode in ("floor", None) or ctx.node.target is torch.ops.aten.floor_divide.default:
        return binary(ctx, "floor_divide", x, other)
    if rounding_mode == "trunc" and out.dtype.is_float:
        q = binary(ctx, "div", x, other)
        sign = ctx.emit(
            "where",
            [
                ctx.emit("lt", [q, ctx.const(0.0, q.dtype)]),
                ctx.const(-1.0, q.dtype),
                ctx.const(1.0, q.dtype),
            ],
        )
        return ctx.emit("mul", [ctx.emit("floor", [ctx.emit("abs", [q])]), sign])
    if rounding_mode == "trunc":
        return _trunc_divide(ctx, x, other)
    raise UnsupportedError(f"div with rounding_mode={rounding_mode!r} on {out.dtype}")


def _trunc_divide(ctx, x, other) -> Value:
    # Integer division toward zero: floor(x / y), plus 1 where the division is inexact and
    # the operands' signs differ (floor went one below). Exact for every int.
    dtype = ctx.meta_type().dtype
    x, other = operand(ctx, x, dtype), operand(ctx, other, dtype)
    zero = ctx.const(0, dtype)
    q = ctx.emit("floor_divide", [x, other])
    inexact = ctx.emit("ne", [ctx.emit("remainder", [x, other]), zero])
    signs = ctx.emit("ne", [ctx.emit("lt", [x, zero]), ctx.emit("lt", [other, zero])])
    up = ctx.emit("logical_and", [inexact, signs])
    return ctx.emit("add", [q, ctx.cast(up, dtype)])


def _unary(op: str) -> Translator:
    def translate(ctx, x):
        return ctx.emit(op, [ctx.value(x)])

    return translate


for _name in [
    "neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "tanh", "erf", "sigmoid",
    "relu", "silu", "sin", "cos", "floor", "sign",
    "round", "acos",
]:  # fmt: skip
    aten(f"{_name}.default")(_unary(_name))


@aten("logical_not.default")
def _logical_not(ctx, x):
    # any dtype reads as bool first (CPM-Ant negates an i32 mask); ONNX Not takes only bools
    return ctx.emit("logical_not", [ctx.cast(ctx.value(x), DType.bool)])


@aten("bitwise_not.default")
def _bitwise_not(ctx, x):
    x = ctx.value(x)
    return ctx.emit("logical_not" if x.dtype is DType.bool else "bitwise_not", [x])


@aten("gelu.default")
def _gelu(ctx, x, approximate="none"):
    return ctx.emit("gelu", [ctx.value(x)], approximate=approximate)


for _names, _op in [
    (("eq.Tensor", "eq.Scalar"), "eq"),
    (("ne.Tensor", "ne.Scalar"), "ne"),
    (("lt.Tensor", "lt.Scalar"), "lt"),
    (("le.Tensor", "le.Scalar"), "le"),
    (("gt.Tensor", "gt.Scalar"), "gt"),
    (("ge.Tensor", "ge.Scalar"), "ge"),
]:
    aten(*_names)(lambda ctx, x, other, op=_op: compare(ctx, op, ctx.value(x), ctx.value(other)))


def _bitwise(logical: str) -> Translator:
    # On bools (torch.export's output dtype says which) the logical op, else the bitwise op
    # on the promoted integer dtype: a bool and an i32 mask or to an i32 (CPM-Ant).
    def translate(ctx, x, other):
        x, other = ctx.value(x), ctx.value(other)
        if ctx.meta_type().dtype is not DType.bool:
            return binary(ctx, f"bitwise_{logical}", x, other)
        a, b = operand(ctx, x, DType.bool), operand(ctx, other, DType.bool)
        return ctx.emit("ne" if logical == "xor" else f"logical_{logical}", [a, b])

    return translate


for _logical in ("and", "or", "xor"):
    aten(
        f"logical_{_logical}.default", f"bitwise_{_logical}.Tensor",
        f"bitwise_{_logical}.Scalar", f"__{_logical}__.Tensor", f"__{_logical}__.Scalar",
    )(_bitwise(_logical))  # fmt: skip


@aten("where.self", "where.ScalarSelf", "where.ScalarOther", "where.Scalar")
def _where(ctx, cond, x, y):
    cond, x, y = ctx.value(cond), ctx.value(x), ctx.value(y)
    out = ctx.meta_type()
    return ctx.emit(
        "where",
        [ctx.cast(cond, DType.bool), operand(ctx, x, out.dtype), operand(ctx, y, out.dtype)],
    )


@aten("masked_fill.Scalar", "masked_fill.Tensor")
def _masked_fill(ctx, x, mask, value):
    x, mask, value = ctx.value(x), ctx.value(mask), ctx.value(value)
    return ctx.emit("where", [ctx.cast(mask, DType.bool), operand(ctx, value, x.dtype), x])


@aten("clamp.default", "clamp_min.default", "clamp_max.default", "clip.default")
def _clamp(ctx, x, min=None, max=None):
    if ctx.node.target is torch.ops.aten.clamp_max.default:
        min, max = None, min
    return ctx.emit("clamp", [ctx.value(x)], min=min, max=max)


@aten("clamp.Tensor", "clamp_min.Tensor", "clamp_max.Tensor", "clip.Tensor")
def _clamp_tensor(ctx, x, min=None, max=None):
    # Tensor bounds, broadcast with x: minimum(maximum(x, min), max), as torch computes it (a
    # min above max gives max). PhiMoE's router clamps by a per-token threshold.
    if ctx.node.target is torch.ops.aten.clamp_max.Tensor:
        min, max = None, min
    dtype = ctx.meta_type().dtype
    y = operand(ctx, ctx.value(x), dtype)
    if min is not None:
        y = ctx.emit("maximum", [y, operand(ctx, ctx.value(min), dtype)])
    if max is not None:
        y = ctx.emit("minimum", [y, operand(ctx, ctx.value(max), dtype)])
    return y if y.producer is not None else ctx.emit("identity", [y])


@aten("_to_copy.default", "to.dtype", "to.dtype_layout", "to.device", "_to_dtype")
def _to(ctx, x, *args, **kwargs):
    x = ctx.value(x)
    return (
        ctx.cast(x, ctx.meta_type().dtype)
        if ctx.meta_type().dtype != x.dtype
        else ctx.emit("identity", [x])
    )


@aten("type_as.default")
def _type_as(ctx, x, other):
    return ctx.cast(ctx.value(x), ctx.value(other).dtype)


@aten(
    "clone.default", "contiguous.default", "alias.default", "detach.default",
    "lift_fresh_copy.default", "_assert_tensor_metadata.default",
)  # fmt: skip
def _identity(ctx, x, *args, **kwargs):
    return ctx.emit("identity", [ctx.value(x)])


@aten("dropout.default", "feature_dropout.default")
def _dropout(ctx, x, p=0.0, train=False):
    if train:
        raise UnsupportedError("dropout in training mode: call model.eval() before tracing")
    return ctx.emit("dropout", [ctx.value(x)], p=float(p))


@aten("softplus.default")
def _softplus(ctx, x, beta=1, threshold=20):
    return softplus_of(ctx, ctx.value(x), beta, threshold)


def softplus_of(ctx, x: Value, beta, threshold) -> Value:
    # log(1 + exp(beta x)) / beta, and x itself where beta x > threshold (torch's cutoff).
    bx = binary(ctx, "mul", x, beta) if beta != 1 else x
    soft = ctx.emit("log", [binary(ctx, "add", ctx.emit("exp", [bx]), 1.0)])
    if beta != 1:
        soft = binary(ctx, "div", soft, beta)
    return ctx.emit("where", [compare(ctx, "gt", bx, threshold), x, soft])


@aten("square.default")
def _square(ctx, x):
    x = ctx.value(x)
    return ctx.emit("mul", [x, x])


@aten("expm1.default", "log1p.default")
def _expm1_log1p(ctx, x):
    # exp(x) - 1 and log(1 + x): within fp32 tolerance absolutely, if not relatively near 0.
    x = ctx.value(x)
    if "expm1" in str(ctx.node.target):
        return binary(ctx, "sub", ctx.emit("exp", [x]), 1.0)
    return ctx.emit("log", [binary(ctx, "add", x, 1.0)])


@aten("log_sigmoid.default", "log_sigmoid_forward.default")
def _log_sigmoid(ctx, x):
    # log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|)): no overflow for large |x|
    x = ctx.value(x)
    tail = ctx.emit("log", [binary(ctx, "add", ctx.emit("exp", [ctx.emit("neg", [ctx.emit(
        "abs", [x])])]), 1.0)])  # fmt: skip
    return ctx.emit("sub", [ctx.emit("minimum", [x, ctx.const(0.0, x.dtype)]), tail])


@aten("glu.default")
def _glu(ctx, x, dim=-1):
    # a * sigmoid(b), a and b the two halves of x along dim (the conformer's conv module)
    x = ctx.value(x)
    axis = norm_dim(dim, x.rank)
    half = x.shape[axis] // 2
    a, b = ctx.emit_node("split", [x], axis=axis, sizes=(half, half)).outputs
    return ctx.emit("mul", [a, ctx.emit("sigmoid", [b])])


@aten("ceil.default")
def _ceil(ctx, x):
    # -floor(-x): exact, and integers pass through as torch's ceil leaves them
    x = ctx.value(x)
    if not x.dtype.is_float:
        return ctx.emit("identity", [x])
    return ctx.emit("neg", [ctx.emit("floor", [ctx.emit("neg", [x])])])
