"""ONNX lowerings of matmul, linear, normalization, softmax and convolution, with the skip
norms that ORT fuses (tgraph/ir/ops/nn.py and the norms of fused.py)."""

from __future__ import annotations

from tgraph.backends.onnx_lowering import MS_DOMAIN
from tgraph.backends.onnx_ops.base import in_type, lowers, ones, same, scalar
from tgraph.backends.policy import SLOWER_FUSED
from tgraph.ir import DType, Node, TensorType, Value
from tgraph.ir.ops.shapes import norm_axis


@lowers("matmul")
def _matmul(ctx, node, a, b):
    return ctx.op("MatMul", [a, b])


def weight_t(ctx, w: Value, name: str) -> str:
    """A linear weight (out, in) as (in, out): stored once pre-transposed when constant."""
    if w.const is not None:
        return ctx.transposed_weight(w)
    return ctx.op("Transpose", [name], perm=[1, 0])


def project(ctx, x: str, w: Value, w_name: str, b: str) -> str:
    """x @ w.T + b for a weight w of shape (out, in)."""
    y = ctx.prepacked_product(x, w)
    if y is None:
        y = ctx.op("MatMul", [x, weight_t(ctx, w, w_name)])
    return ctx.op("Add", [y, b]) if b else y


@lowers("linear")
def _linear(ctx, node, x, w, b=""):
    return project(ctx, x, node.inputs[1], w, b)


@lowers("softmax")
def _softmax(ctx, node, x):
    return ctx.op("Softmax", [x], axis=node.attrs["axis"])


@lowers("log_softmax")
def _log_softmax(ctx, node, x):
    return ctx.op("LogSoftmax", [x], axis=node.attrs["axis"])


def _layer_norm(ctx, x: str, w: str, b: str, xt: TensorType, axis: int, eps: float) -> str:
    axis = norm_axis(axis, xt.rank)
    if not w:
        w = ones(ctx, xt.shape[axis:], xt.dtype)
    return ctx.op("LayerNormalization", [x, w, b], axis=axis, epsilon=eps)


def _rms_norm(ctx, x: str, w: str, xt: TensorType, axis: int, eps: float) -> str:
    axis = norm_axis(axis, xt.rank)
    if ctx.fused_kernels and xt.dtype in (DType.float32, DType.float64, DType.float16):
        w = w or ones(ctx, xt.shape[axis:], xt.dtype)
        return ctx.op("RMSNormalization", [x, w], axis=axis, epsilon=eps)
    # x / sqrt(mean(x^2) + eps) * w
    axes = ctx.ints(range(axis, xt.rank))
    mean_sq = ctx.op("ReduceMean", [ctx.op("Mul", [x, x]), axes], keepdims=1)
    rms = ctx.op("Sqrt", [ctx.op("Add", [mean_sq, scalar(ctx, eps, xt.dtype)])])
    y = ctx.op("Div", [x, rms])
    return ctx.op("Mul", [y, w]) if w else y


@lowers("layer_norm")
def _layer_norm_op(ctx, node, x, w="", b=""):
    return _layer_norm(ctx, x, w, b, in_type(node, 0), node.attrs["axis"], node.attrs["eps"])


@lowers("rms_norm")
def _rms_norm_op(ctx, node, x, w=""):
    return _rms_norm(ctx, x, w, in_type(node, 0), node.attrs["axis"], node.attrs["eps"])


def _fused_pays(ctx, op_type: str) -> bool:
    """Use ORT's fused ``op_type`` kernel on this lowering's device?"""
    return ctx.fused_kernels and op_type not in SLOWER_FUSED.get(ctx.device, frozenset())


def _skip_norm_fits(ctx, node: Node, op_type: str, dtypes: tuple[DType, ...]) -> bool:
    """ORT's SkipLayerNorm kernels: rank 2 or 3, last axis, same-shape skip, static hidden."""
    xt, st = in_type(node, 0), in_type(node, 1)
    return (
        _fused_pays(ctx, op_type)
        and xt.dtype in dtypes
        and xt.rank in (2, 3)
        and norm_axis(node.attrs["axis"], xt.rank) == xt.rank - 1
        and len(st.shape) == xt.rank
        and all(same(a, b) for a, b in zip(st.shape, xt.shape))
        and isinstance(xt.shape[-1], int)
    )


def _sum_name(ctx, node: Node) -> str:
    """Ask for the residual-sum output only when someone reads it."""
    s = node.outputs[1]
    return ctx.fresh(s.name) if s.uses() or s in node.graph.outputs else ""


def _skip_norm(ctx, node, x, skip, op_type: str, params: list[str], fallback) -> list[str]:
    """ORT's fused ``op_type`` (SkipLayerNormalization / SkipSimplifiedLayerNormalization)
    with ``params`` (weight first), or Add + ``fallback(sum)``; outputs (normalized, sum)."""
    xt = in_type(node, 0)
    if _skip_norm_fits(ctx, node, op_type, (DType.float32, DType.float64, DType.float16)):
        params = [params[0] or ones(ctx, xt.shape[-1:], xt.dtype), *params[1:]]
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
