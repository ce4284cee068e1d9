"""The ONNX lowering table: one function per IR op (see ``onnx_lowering.py``).

A lowering function takes ``(ctx, node, *inputs)`` where ``inputs`` are the ONNX names of
the node's inputs ("" for an absent optional one), emits ONNX nodes through ``ctx`` and
returns the ONNX name of each output.

Fused ops go to ONNX Runtime kernels when ``ctx.fused_kernels`` is set and the kernel's
constraints hold; otherwise, or when ``fused_kernels`` is off, to subgraphs of
elementary ops:

=================  ==============================================  ====================
IR op              kernel (checked against the reference kernels)  fallback
=================  ==============================================  ====================
attention bsd      com.microsoft MultiHeadAttention (f32, H==Hkv)  Attention, subgraph
attention, sdpa    Attention (opset 23: bhsd, GQA, bool masks)     MatMul/Softmax/...
qkv_attention      com.microsoft Attention (f32, H==Hkv)           MatMul+Split+attention
skip_layer_norm    com.microsoft SkipLayerNormalization (cuda)     Add+LayerNorm (cpu)
skip_rms_norm      com.microsoft SkipSimplifiedLayerNorm.. (cuda)  Add+RMSNorm (cpu)
rms_norm           RMSNormalization (opset 23)                     Mul/ReduceMean/...
bias_gelu          com.microsoft BiasGelu / FastGelu (tanh)        Add+gelu subgraph
gelu               com.microsoft Gelu / FastGelu (tanh)            Erf/Tanh formula
rotary             -- (ORT's RotaryEmbedding wants half caches)    Slice/Neg/Concat/Mul
=================  ==============================================  ====================

``SimplifiedLayerNormalization`` is an ORT kernel registered in the *standard* ONNX
domain, which ``onnx.checker`` rejects; ``RMSNormalization`` computes the same thing.

A fused kernel is not always the fast one: :data:`SLOWER_FUSED` lists, per device, the
kernels that lose to their fallback there, measured as the note next to each says.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from onnx import numpy_helper

from tgraph.ir import DType, Node, SymDim, TensorType, Value, simplify
from tgraph.ir.dims import DimLike
from tgraph.ir.ops.shapes import norm_axis

from .onnx_lowering import MS_DOMAIN, ONNX_DTYPE, Lowering

LoweringFn = Callable[..., "str | Sequence[str]"]
LOWERINGS: dict[str, LoweringFn] = {}

# Element types the ORT CPU kernels of Where lack; they run in a wider type.
_WHERE_VIA = {
    DType.bool: DType.uint8,
    DType.float16: DType.float32,
    DType.bfloat16: DType.float32,
    DType.int16: DType.int32,
}


# IR ops whose lowering runs on ONNX Runtime CPU kernels of a 16-bit float type (probed on
# ORT 1.32, table in docs/backends.md). A node of any other op that reads or makes such a
# value computes in float32 between Casts (``Lowering.lower_in_fp32``).
_DATA_MOVEMENT = frozenset(
    "reshape permute squeeze unsqueeze concat split slice gather index identity dropout cast".split()
)
LOW_PRECISION_KERNELS: dict[DType, frozenset[str]] = {
    DType.bfloat16: _DATA_MOVEMENT,
    DType.float16: _DATA_MOVEMENT | {"expand", "maximum", "minimum"},
}


def needs_fp32(node: Node) -> DType | None:
    """The 16-bit float type ``node`` must be computed around in float32, or None."""
    for v in (*node.inputs, *node.outputs):
        if v is not None and v.dtype in LOW_PRECISION_KERNELS:
            return None if node.op in LOW_PRECISION_KERNELS[v.dtype] else v.dtype
    return None


def lowers(*ops: str) -> Callable[[LoweringFn], LoweringFn]:
    def deco(fn: LoweringFn) -> LoweringFn:
        for op in ops:
            LOWERINGS[op] = fn
        return fn

    return deco


def _type(node: Node, i: int) -> TensorType:
    return node.inputs[i].type


def _same(a: DimLike, b: DimLike) -> bool:
    return simplify(a) == simplify(b)


def _scalar(ctx: Lowering, value: float | int | bool, dtype: DType) -> str:
    return ctx.const(np.asarray(value, dtype=dtype.numpy))


def _cast(ctx: Lowering, x: str, dtype: DType) -> str:
    return ctx.op("Cast", [x], to=ONNX_DTYPE[dtype])


def _where(ctx: Lowering, cond: str, x: str, y: str, dtype: DType) -> str:
    if dtype in _WHERE_VIA:
        wide = _WHERE_VIA[dtype]
        out = ctx.op("Where", [cond, _cast(ctx, x, wide), _cast(ctx, y, wide)])
        return _cast(ctx, out, dtype)
    return ctx.op("Where", [cond, x, y])


def _reshape(ctx: Lowering, x: str, have: Sequence[DimLike], want: Sequence[DimLike]) -> str:
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
        elif i < len(have) and _same(have[i], d):
            target.append(0)
        elif not inferred:
            target.append(-1)
            inferred = True
        else:
            target.append(d)
    return ctx.op("Reshape", [x, ctx.shape(target)])


def _ones(ctx: Lowering, dims: Sequence[DimLike], dtype: DType) -> str:
    if all(isinstance(d, int) for d in dims):
        return ctx.const(np.ones(tuple(dims), dtype=dtype.numpy))
    value = numpy_helper.from_array(np.ones(1, dtype=dtype.numpy))
    return ctx.op("ConstantOfShape", [ctx.shape(dims)], value=value)


# -- elementwise ---------------------------------------------------------------------------

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
    "logical_not": "Not",
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
    dtype = _type(node, 0).dtype
    if dtype in (DType.float32, DType.float64):
        return ctx.op("Relu", [x])
    return ctx.op("Max", [x, _scalar(ctx, 0, dtype)])  # ORT's Relu lacks most int types


@lowers("floor")
def _floor(ctx, node, x):
    return ctx.op("Floor", [x]) if _type(node, 0).dtype.is_float else x


@lowers("floor_divide")
def _floor_divide(ctx, node, a, b):
    if _type(node, 0).dtype.is_float:
        return ctx.op("Floor", [ctx.op("Div", [a, b])])
    # Integer Div truncates; a - (a mod b) is an exact multiple of b, so this is floor.
    rem = ctx.op("Mod", [a, b], fmod=0)
    return ctx.op("Div", [ctx.op("Sub", [a, rem]), b])


@lowers("remainder")
def _remainder(ctx, node, a, b):
    if not _type(node, 0).dtype.is_float:
        return ctx.op("Mod", [a, b], fmod=0)  # sign of the divisor, like torch.remainder
    quotient = ctx.op("Floor", [ctx.op("Div", [a, b])])
    return ctx.op("Sub", [a, ctx.op("Mul", [quotient, b])])


@lowers("cast")
def _cast_op(ctx, node, x):
    return _cast(ctx, x, node.attrs["dtype"])


@lowers("clamp")
def _clamp(ctx, node, x):
    dtype = _type(node, 0).dtype
    lo, hi = node.attrs["min"], node.attrs["max"]
    bounds = ["" if b is None else _scalar(ctx, b, dtype) for b in (lo, hi)]
    return ctx.op("Clip", [x, *bounds])


@lowers("where")
def _where_op(ctx, node, cond, x, y):
    return _where(ctx, cond, x, y, node.outputs[0].dtype)


def _gelu(ctx: Lowering, x: str, approximate: str, dtype: DType, bias: str = "") -> str:
    if ctx.fused_kernels and dtype is DType.float32:
        if approximate == "tanh":
            return ctx.op("FastGelu", [x, bias], domain=MS_DOMAIN)
        if bias:
            return ctx.op("BiasGelu", [x, bias], domain=MS_DOMAIN)
        return ctx.op("Gelu", [x], domain=MS_DOMAIN)
    if bias:
        x = ctx.op("Add", [x, bias])
    half_x = ctx.op("Mul", [x, _scalar(ctx, 0.5, dtype)])
    if approximate == "tanh":
        # 0.5*x*(1 + tanh(sqrt(2/pi) * (x + 0.044715*x^3)))
        cube = ctx.op("Mul", [ctx.op("Mul", [x, x]), x])
        inner = ctx.op("Add", [x, ctx.op("Mul", [cube, _scalar(ctx, 0.044715, dtype)])])
        inner = ctx.op("Mul", [inner, _scalar(ctx, math.sqrt(2.0 / math.pi), dtype)])
        phi = ctx.op("Tanh", [inner])
    else:
        # 0.5*x*(1 + erf(x/sqrt(2)))
        phi = ctx.op("Erf", [ctx.op("Mul", [x, _scalar(ctx, 1.0 / math.sqrt(2.0), dtype)])])
    return ctx.op("Mul", [half_x, ctx.op("Add", [phi, _scalar(ctx, 1.0, dtype)])])


@lowers("gelu")
def _gelu_op(ctx, node, x):
    return _gelu(ctx, x, node.attrs["approximate"], _type(node, 0).dtype)


@lowers("bias_gelu")
def _bias_gelu(ctx, node, x, bias):
    return _gelu(ctx, x, node.attrs["approximate"], _type(node, 0).dtype, bias)


# -- matmul, normalization, softmax ------------------------------------------------------------


@lowers("matmul")
def _matmul(ctx, node, a, b):
    return ctx.op("MatMul", [a, b])


def _weight_t(ctx, w: Value, name: str) -> str:
    """A linear weight (out, in) as (in, out): stored once pre-transposed when constant."""
    if w.const is not None:
        return ctx.transposed_weight(w)
    return ctx.op("Transpose", [name], perm=[1, 0])


def _project(ctx, x: str, w: Value, w_name: str, b: str) -> str:
    """x @ w.T + b for a weight w of shape (out, in)."""
    y = ctx.op("MatMul", [x, _weight_t(ctx, w, w_name)])
    return ctx.op("Add", [y, b]) if b else y


@lowers("linear")
def _linear(ctx, node, x, w, b=""):
    return _project(ctx, x, node.inputs[1], w, b)


@lowers("softmax")
def _softmax(ctx, node, x):
    return ctx.op("Softmax", [x], axis=node.attrs["axis"])


@lowers("log_softmax")
def _log_softmax(ctx, node, x):
    return ctx.op("LogSoftmax", [x], axis=node.attrs["axis"])


def _layer_norm(ctx, x: str, w: str, b: str, xt: TensorType, axis: int, eps: float) -> str:
    axis = norm_axis(axis, xt.rank)
    if not w:
        w = _ones(ctx, xt.shape[axis:], xt.dtype)
    return ctx.op("LayerNormalization", [x, w, b], axis=axis, epsilon=eps)


def _rms_norm(ctx, x: str, w: str, xt: TensorType, axis: int, eps: float) -> str:
    axis = norm_axis(axis, xt.rank)
    if ctx.fused_kernels and xt.dtype in (DType.float32, DType.float64, DType.float16):
        w = w or _ones(ctx, xt.shape[axis:], xt.dtype)
        return ctx.op("RMSNormalization", [x, w], axis=axis, epsilon=eps)
    # x / sqrt(mean(x^2) + eps) * w
    axes = ctx.ints(range(axis, xt.rank))
    mean_sq = ctx.op("ReduceMean", [ctx.op("Mul", [x, x]), axes], keepdims=1)
    rms = ctx.op("Sqrt", [ctx.op("Add", [mean_sq, _scalar(ctx, eps, xt.dtype)])])
    y = ctx.op("Div", [x, rms])
    return ctx.op("Mul", [y, w]) if w else y


@lowers("layer_norm")
def _layer_norm_op(ctx, node, x, w="", b=""):
    return _layer_norm(ctx, x, w, b, _type(node, 0), node.attrs["axis"], node.attrs["eps"])


@lowers("rms_norm")
def _rms_norm_op(ctx, node, x, w=""):
    return _rms_norm(ctx, x, w, _type(node, 0), node.attrs["axis"], node.attrs["eps"])


# Fused kernels that run slower than their fallback on a device's execution provider.
# ORT 1.32 CPU, (B, 128, 768) fp32, 1 and 2 threads, the sum also read by a later Add (as
# in a residual stream): SkipLayerNormalization 0.56 ms at B=1 / 4.6 ms at B=8 against
# 0.11 / 1.1 ms for Add + LayerNormalization; SkipSimplifiedLayerNormalization 0.16 / 1.3
# ms against 0.08 / 0.8-0.9 for Add + RMSNormalization. On GPT-2 1x128 the fused kernel
# cost 12.7 ms of a 366 ms call (tools/ort_profile.py hf-gpt2:1x128).
SLOWER_FUSED: dict[str, frozenset[str]] = {
    "cpu": frozenset({"SkipLayerNormalization", "SkipSimplifiedLayerNormalization"}),
}
# ONNX Runtime's own optimizers that would fuse the unfused form back into a slow kernel:
# SkipLayerNormFusion turns Add + LayerNormalization into SkipLayerNormalization where the
# sum has no other reader (post-norm blocks such as nn.TransformerEncoderLayer; 33 of 469
# ms on the encoder at 8x128). Sessions on that device switch them off.
ORT_OPTIMIZERS_OFF: dict[str, tuple[str, ...]] = {"cpu": ("SkipLayerNormFusion",)}


def _fused_pays(ctx, op_type: str) -> bool:
    """Use ORT's fused ``op_type`` kernel on this lowering's device?"""
    return ctx.fused_kernels and op_type not in SLOWER_FUSED.get(ctx.device, frozenset())


def _skip_norm_fits(ctx, node: Node, op_type: str, dtypes: tuple[DType, ...]) -> bool:
    """ORT's SkipLayerNorm kernels: rank 2 or 3, last axis, same-shape skip, static hidden."""
    xt, st = _type(node, 0), _type(node, 1)
    return (
        _fused_pays(ctx, op_type)
        and xt.dtype in dtypes
        and xt.rank in (2, 3)
        and norm_axis(node.attrs["axis"], xt.rank) == xt.rank - 1
        and len(st.shape) == xt.rank
        and all(_same(a, b) for a, b in zip(st.shape, xt.shape))
        and isinstance(xt.shape[-1], int)
    )


def _sum_name(ctx, node: Node) -> str:
    """Ask for the residual-sum output only when someone reads it."""
    s = node.outputs[1]
    return ctx.fresh(s.name) if s.uses() or s in node.graph.outputs else ""


def _skip_norm(ctx, node, x, skip, op_type: str, params: list[str], fallback) -> list[str]:
    """ORT's fused ``op_type`` (SkipLayerNormalization / SkipSimplifiedLayerNormalization)
    with ``params`` (weight first), or Add + ``fallback(sum)``; outputs (normalized, sum)."""
    xt = _type(node, 0)
    if _skip_norm_fits(ctx, node, op_type, (DType.float32, DType.float64, DType.float16)):
        params = [params[0] or _ones(ctx, xt.shape[-1:], xt.dtype), *params[1:]]
        y, s = ctx.fresh(node.outputs[0].name), _sum_name(ctx, node)
        ctx.op_n(op_type, [x, skip, *params], [y, "", "", s], domain=MS_DOMAIN,
                 epsilon=node.attrs["eps"])  # fmt: skip
        return [y, s]
    s = ctx.op("Add", [x, skip])
    return [fallback(s, xt), s]


@lowers("skip_layer_norm")
def _skip_layer_norm(ctx, node, x, skip, w="", b=""):
    axis, eps = node.attrs["axis"], node.attrs["eps"]
    return _skip_norm(ctx, node, x, skip, "SkipLayerNormalization", [w, b],
                      lambda s, xt: _layer_norm(ctx, s, w, b, xt, axis, eps))  # fmt: skip


@lowers("skip_rms_norm")
def _skip_rms_norm(ctx, node, x, skip, w=""):
    axis, eps = node.attrs["axis"], node.attrs["eps"]
    return _skip_norm(ctx, node, x, skip, "SkipSimplifiedLayerNormalization", [w],
                      lambda s, xt: _rms_norm(ctx, s, w, xt, axis, eps))  # fmt: skip


# -- reductions ------------------------------------------------------------------------------

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
    xt, axes = _type(node, 0), node.attrs["axes"]
    reduced = [norm_axis(a, xt.rank) for a in axes] if axes else range(xt.rank)
    count = 1
    for a in reduced:
        count = count * xt.shape[a]
    mean = _reduce(ctx, "ReduceMean", x, axes, True)
    diff = ctx.op("Sub", [x, mean])
    total = _reduce(ctx, "ReduceSum", ctx.op("Mul", [diff, diff]), axes, node.attrs["keepdim"])
    n = _cast(ctx, ctx.dim(count - node.attrs["correction"], scalar=True), xt.dtype)
    return ctx.op("Div", [total, n])


@lowers("argmax")
def _argmax(ctx, node, x):
    return ctx.op("ArgMax", [x], axis=node.attrs["axis"], keepdims=int(node.attrs["keepdim"]))


@lowers("cumsum")
def _cumsum(ctx, node, x):
    dtype = node.outputs[0].dtype
    if _type(node, 0).dtype != dtype:
        x = _cast(ctx, x, dtype)
    return ctx.op("CumSum", [x, ctx.const(np.int64(node.attrs["axis"]))])


# -- data movement -------------------------------------------------------------------------


@lowers("reshape")
def _reshape_op(ctx, node, x):
    return _reshape(ctx, x, _type(node, 0).shape, node.attrs["shape"])


@lowers("permute")
def _permute(ctx, node, x):
    return ctx.op("Transpose", [x], perm=list(node.attrs["perm"]))


@lowers("expand")
def _expand(ctx, node, x):
    have, want = _type(node, 0).shape, node.attrs["shape"]
    offset = len(want) - len(have)
    # Expand broadcasts both ways: where x already has the wanted dim, 1 keeps it.
    target = [1 if i >= offset and _same(have[i - offset], d) else d for i, d in enumerate(want)]
    if all(t == 1 for t in target[offset:]) and offset == 0:
        return x
    return ctx.op("Expand", [x, ctx.shape(target)])


def _slice(ctx, x: str, axis: int, start: DimLike, end: DimLike, step: int = 1) -> str:
    starts, ends = ctx.shape([start]), ctx.shape([end])
    return ctx.op("Slice", [x, starts, ends, ctx.ints([axis]), ctx.ints([step])])


@lowers("slice")
def _slice_op(ctx, node, x):
    xt, a = _type(node, 0), node.attrs
    axis = norm_axis(a["axis"], xt.rank)
    if _same(a["start"], 0) and _same(a["end"], xt.shape[axis]) and a["step"] == 1:
        return x
    return _slice(ctx, x, axis, a["start"], a["end"], a["step"])


@lowers("concat")
def _concat(ctx, node, *xs):
    return ctx.op("Concat", xs, axis=node.attrs["axis"])


@lowers("split")
def _split(ctx, node, x):
    xt, axis, sizes = _type(node, 0), node.attrs["axis"], node.attrs["sizes"]
    axis = norm_axis(axis, xt.rank)
    total = 0
    for s in sizes:
        total = total + s
    if _same(total, xt.shape[axis]):
        return ctx.op_n("Split", [x, ctx.shape(sizes)], len(sizes), axis=axis)
    outs, start = [], 0  # the sizes do not cover the dim: cut each piece out
    for s in sizes:
        outs.append(_slice(ctx, x, axis, start, start + s))
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
    xt, axis = _type(node, 0), node.attrs["axis"]
    if len(indices) == 1:
        return ctx.op("Gather", [x, indices[0]], axis=axis)
    sizes = xt.shape[axis : axis + len(indices)]
    flat = None
    for i, (ix, size) in enumerate(zip(indices, sizes)):
        if _type(node, i + 1).dtype is not DType.int64:
            ix = _cast(ctx, ix, DType.int64)
        ix = ctx.op("Mod", [ix, ctx.dim(size, scalar=True)], fmod=0)  # -1 -> size-1
        if flat is not None:
            flat = ctx.op("Add", [ctx.op("Mul", [flat, ctx.dim(size, scalar=True)]), ix])
        else:
            flat = ix
    merged = 1
    for size in sizes:
        merged = merged * size
    target = tuple(xt.shape[:axis]) + (merged,) + tuple(xt.shape[axis + len(indices) :])
    return ctx.op("Gather", [_reshape(ctx, x, xt.shape, target), flat], axis=axis)


@lowers("gather_elements")
def _gather_elements(ctx, node, x, index):
    xt, it = _type(node, 0), _type(node, 1)
    axis = norm_axis(node.attrs["axis"], xt.rank)
    crop = [d for d in range(xt.rank) if d != axis and not _same(xt.shape[d], it.shape[d])]
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
    xt, pads = _type(node, 0), node.attrs["pads"]
    onnx_pads = ctx.shape(list(pads[0::2]) + list(pads[1::2]))  # all begins, then all ends
    value = _scalar(ctx, node.attrs["value"], xt.dtype)
    return ctx.op("Pad", [x, onnx_pads, value], mode="constant")


# -- sources ---------------------------------------------------------------------------------


def _as_scalar(ctx, v: DimLike | float, dtype: DType) -> str:
    if isinstance(v, SymDim):
        d = ctx.dim(v, scalar=True)
        return d if dtype is DType.int64 else _cast(ctx, d, dtype)
    return _scalar(ctx, v, dtype)


@lowers("arange")
def _arange(ctx, node):
    a, dtype = node.attrs, node.attrs["dtype"]
    bounds = (a["start"], a["end"], a["step"])
    # numpy's arange computes in int64 for int bounds and float64 otherwise, then casts.
    work = DType.float64 if any(isinstance(b, float) for b in bounds) else DType.int64
    out = ctx.op("Range", [_as_scalar(ctx, b, work) for b in bounds])
    return out if dtype is work else _cast(ctx, out, dtype)


@lowers("full")
def _full(ctx, node):
    shape, value, dtype = node.attrs["shape"], node.attrs["value"], node.attrs["dtype"]
    if isinstance(value, SymDim):
        return ctx.op("Expand", [_as_scalar(ctx, value, dtype), ctx.shape(shape)])
    fill = numpy_helper.from_array(np.asarray([value], dtype=dtype.numpy))
    return ctx.op("ConstantOfShape", [ctx.shape(shape)], value=fill)


@lowers("conv2d")
def _conv2d(ctx, node, x, w, b=""):
    a = node.attrs
    pads = list(a["padding"]) * 2  # (top, left, bottom, right)
    return ctx.op(
        "Conv",
        [x, w, b],
        strides=list(a["stride"]),
        pads=pads,
        dilations=list(a["dilation"]),
        group=a["groups"],
    )


# -- rotary and attention --------------------------------------------------------------------


@lowers("rotary")
def _rotary(ctx, node, x, cos, sin):
    """x*cos + cat(-x2, x1)*sin. ORT's RotaryEmbedding takes half-width caches and position
    ids, which only fit when cos/sin repeat their halves; ours may be any tensors."""
    xt = _type(node, 0)
    dim = xt.shape[-1]
    half = simplify(dim // 2)
    x1 = _slice(ctx, x, xt.rank - 1, 0, half)
    x2 = _slice(ctx, x, xt.rank - 1, half, dim)
    rotated = ctx.op("Concat", [ctx.op("Neg", [x2]), x1], axis=-1)
    return ctx.op("Add", [ctx.op("Mul", [x, cos]), ctx.op("Mul", [rotated, sin])])


def _neg_inf(ctx, dtype: DType) -> str:
    return _scalar(ctx, -np.inf, dtype)


def _causal_keep(ctx, q_len: DimLike, k_len: DimLike) -> str:
    """bool (q_len, k_len), True where key j <= query i (top-left aligned)."""
    zero, one = ctx.dim(0, scalar=True), ctx.dim(1, scalar=True)
    rows = ctx.op("Range", [zero, ctx.dim(q_len, scalar=True), one])
    cols = ctx.op("Range", [zero, ctx.dim(k_len, scalar=True), one])
    return ctx.op("LessOrEqual", [cols, ctx.op("Unsqueeze", [rows, ctx.ints([1])])])


def _mask_to(ctx, mask: str, shape: Sequence[DimLike], q_len, k_len, rank: int) -> str:
    """Broadcast a mask to rank ``rank`` with exact (q_len, k_len) trailing dims, as the
    ORT kernels want (they broadcast batch and head dims only)."""
    if len(shape) == rank and _same(shape[-2], q_len) and _same(shape[-1], k_len):
        return mask
    return ctx.op("Expand", [mask, ctx.shape((1,) * (rank - 2) + (q_len, k_len))])


def _repeat_kv(ctx, x: str, shape: Sequence[DimLike], rep: int) -> str:
    """(..., Hkv, T, D) -> (..., Hkv*rep, T, D), each head repeated rep times in a row."""
    r = len(shape)
    x = ctx.op("Unsqueeze", [x, ctx.ints([r - 2])])
    x = ctx.op("Expand", [x, ctx.ints([1] * (r - 2) + [rep, 1, 1])])
    have = tuple(shape[:-2]) + (rep,) + tuple(shape[-2:])
    want = tuple(shape[:-3]) + (shape[-3] * rep,) + tuple(shape[-2:])
    return _reshape(ctx, x, have, want)


def _attention_core(ctx, q, k, v, mask, qs, ks, mask_type, dtype, scale, causal, rep) -> str:
    """softmax(q k^T * scale + mask) v on (..., H, T, D) tensors, in elementary ops."""
    if rep > 1:
        k, v = _repeat_kv(ctx, k, ks, rep), _repeat_kv(ctx, v, ks, rep)
    r = len(qs)
    k_t = ctx.op("Transpose", [k], perm=list(range(r - 2)) + [r - 1, r - 2])
    scores = ctx.op("MatMul", [q, k_t])
    if scale is None:  # sdpa's default 1/sqrt(head_dim)
        d = qs[-1]
        if isinstance(d, int):
            scale = 1.0 / math.sqrt(d)
        else:
            root = ctx.op("Sqrt", [_cast(ctx, ctx.dim(d, scalar=True), dtype)])
            scores = ctx.op("Div", [scores, root])
    if scale is not None:
        scores = ctx.op("Mul", [scores, _scalar(ctx, scale, dtype)])
    if causal:
        keep = _causal_keep(ctx, qs[-2], ks[-2])
        scores = _where(ctx, keep, scores, _neg_inf(ctx, dtype), dtype)
    if mask and mask_type.dtype is DType.bool:
        scores = _where(ctx, mask, scores, _neg_inf(ctx, dtype), dtype)
    elif mask:
        scores = ctx.op("Add", [scores, mask])
    return ctx.op("MatMul", [ctx.op("Softmax", [scores], axis=-1), v])


def _split_heads(ctx, x: str, heads: int) -> str:
    """(B, T, H*D) -> (B, H, T, D)."""
    x = ctx.op("Reshape", [x, ctx.ints([0, 0, heads, -1])])
    return ctx.op("Transpose", [x], perm=[0, 2, 1, 3])


def _heads_shape(shape: Sequence[DimLike], heads: int) -> tuple[DimLike, ...]:
    b, t, hd = shape
    return (b, heads, t, simplify(hd // heads))


def _additive_bias(ctx, mask: str, mt: TensorType | None, dtype: DType, q_len, k_len) -> str:
    """The mask as the (B|1, H|1, q_len, k_len) additive attention_bias of ORT's contrib
    attention kernels ("" without a mask): bool True = attend becomes 0 / -inf."""
    if not mask:
        return ""
    if mt.dtype is DType.bool:
        mask = _where(ctx, mask, _scalar(ctx, 0.0, dtype), _neg_inf(ctx, dtype), dtype)
    return _mask_to(ctx, mask, mt.shape, q_len, k_len, 4)


def _multi_head_attention(ctx, attrs, q, k, v, mask, qt, kt, mt) -> str:
    """com.microsoft MultiHeadAttention: bsd layout, as many kv heads as query heads."""
    q_len, k_len = qt.shape[1], kt.shape[1]
    bias = _additive_bias(ctx, mask, mt, qt.dtype, q_len, k_len)
    unidirectional = 0
    if attrs["causal"] and _same(q_len, k_len):
        unidirectional = 1  # ORT aligns its causal mask bottom-right: the same when square
    elif attrs["causal"]:
        keep = _causal_keep(ctx, q_len, k_len)
        causal = _where(ctx, keep, _scalar(ctx, 0.0, qt.dtype), _neg_inf(ctx, qt.dtype), qt.dtype)
        causal = _mask_to(ctx, causal, (q_len, k_len), q_len, k_len, 4)
        bias = ctx.op("Add", [bias, causal]) if bias else causal
    return ctx.op(
        "MultiHeadAttention",
        [q, k, v, "", "", bias],
        domain=MS_DOMAIN,
        num_heads=attrs["num_heads"],
        scale=float(attrs["scale"]),
        unidirectional=unidirectional,
    )


def _onnx_attention(ctx, q, k, v, mask, qt, kt, mt, scale, causal, heads=None, kv_heads=None):
    """The standard Attention op (opset 23): 3-D (with head counts) or 4-D inputs, GQA."""
    q_axis = 1 if qt.rank == 3 else 2
    if mask:
        mask = _mask_to(ctx, mask, mt.shape, qt.shape[q_axis], kt.shape[q_axis], max(mt.rank, 2))
    return ctx.op(
        "Attention",
        [q, k, v, mask],
        is_causal=int(causal),
        scale=None if scale is None else float(scale),
        q_num_heads=heads,
        kv_num_heads=kv_heads,
    )


def _attention(ctx, a, q, k, v, mask, qt, kt, mt) -> str:
    """The attention op with attributes ``a`` on q, k, v, mask of IR types qt, kt, mt."""
    heads, kv_heads, bsd = a["num_heads"], a["kv_heads"], a["layout"] == "bsd"
    if ctx.fused_kernels and qt.dtype is DType.float32 and bsd and heads == kv_heads:
        if a["scale"] != 0:  # MultiHeadAttention reads scale 0 as "the default"
            return _multi_head_attention(ctx, a, q, k, v, mask, qt, kt, mt)
    if ctx.fused_kernels and qt.dtype in (DType.float32, DType.float16) and a["scale"] > 0:
        counts = (heads, kv_heads) if bsd else (None, None)  # Attention refuses scale <= 0
        return _onnx_attention(ctx, q, k, v, mask, qt, kt, mt, a["scale"], a["causal"], *counts)
    qs, ks = qt.shape, kt.shape
    if bsd:
        qs, ks = _heads_shape(qs, heads), _heads_shape(ks, kv_heads)
        q, k, v = (
            _split_heads(ctx, q, heads),
            _split_heads(ctx, k, kv_heads),
            _split_heads(ctx, v, kv_heads),
        )
    out = _attention_core(
        ctx, q, k, v, mask, qs, ks, mt, qt.dtype, a["scale"], a["causal"], heads // kv_heads
    )
    if not bsd:
        return out
    out = ctx.op("Transpose", [out], perm=[0, 2, 1, 3])
    return ctx.op("Reshape", [out, ctx.ints([0, 0, -1])])


@lowers("attention")
def _attention_op(ctx, node, q, k, v, mask=""):
    mt = _type(node, 3) if mask else None
    return _attention(ctx, node.attrs, q, k, v, mask, _type(node, 0), _type(node, 1), mt)


@lowers("qkv_attention")
def _qkv_attention(ctx, node, x, w, b="", mask=""):
    """com.microsoft Attention (the QKV GEMM and attention in one kernel) when it fits:
    f32, as many kv heads as query heads, a scale other than 0 (which it reads as the default);
    else MatMul(+Add), Split and the attention lowering."""
    a, xt = node.attrs, _type(node, 0)
    mt = _type(node, 3) if mask else None
    batch, seq, _ = xt.shape
    fits = xt.dtype is DType.float32 and a["num_heads"] == a["kv_heads"] and a["scale"] != 0
    if ctx.fused_kernels and fits:
        wt = _weight_t(ctx, node.inputs[1], w)  # (C, Nq+Nk+Nv), as Attention wants it
        bias = _additive_bias(ctx, mask, mt, xt.dtype, seq, seq)
        return ctx.op(
            "Attention",
            [x, wt, b, "", "", bias],
            domain=MS_DOMAIN,
            num_heads=a["num_heads"],
            qkv_hidden_sizes=list(a["sizes"]),
            scale=float(a["scale"]),
            unidirectional=int(a["causal"]),  # q and k have one length: no alignment issue
        )
    qkv = _project(ctx, x, node.inputs[1], w, b)
    q, k, v = ctx.op_n("Split", [qkv, ctx.ints(a["sizes"])], 3, axis=2)
    qt, kt = (TensorType(xt.dtype, (batch, seq, n)) for n in a["sizes"][:2])
    return _attention(ctx, {**a, "layout": "bsd"}, q, k, v, mask, qt, kt, mt)


@lowers("sdpa")
def _sdpa(ctx, node, q, k, v, mask=""):
    a, qt, kt = node.attrs, _type(node, 0), _type(node, 1)
    mt = _type(node, 3) if mask else None
    heads, kv_heads = qt.shape[-3] if qt.rank >= 3 else 1, kt.shape[-3] if kt.rank >= 3 else 1
    same_heads = _same(heads, kv_heads)
    grouped = (
        a["gqa"] and isinstance(heads, int) and isinstance(kv_heads, int) and heads % kv_heads == 0
    )
    if (
        ctx.fused_kernels
        and qt.dtype in (DType.float32, DType.float16)
        and qt.rank == 4
        and (same_heads or grouped)
    ):
        return _onnx_attention(ctx, q, k, v, mask, qt, kt, mt, a["scale"], a["causal"])
    rep = heads // kv_heads if grouped and not same_heads else 1
    return _attention_core(
        ctx, q, k, v, mask, qt.shape, kt.shape, mt, qt.dtype, a["scale"], a["causal"], rep
    )
