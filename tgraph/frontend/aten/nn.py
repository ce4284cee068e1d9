"""ATen neural-network ops: linear, matmul, norms, softmax, convolution, attention."""

from __future__ import annotations

import torch

from tgraph.frontend.aten.base import (
    aten,
    binary,
    norm_dim,
)  # fmt: skip
from tgraph.frontend.convert import UnsupportedError
from tgraph.ir import DType, Value


@aten("linear.default")
def _linear(ctx, x, weight, bias=None):
    ins = [ctx.value(x), ctx.value(weight)]
    if bias is not None:
        ins.append(ctx.value(bias))
    return ctx.emit("linear", ins)


@aten("matmul.default", "mm.default", "bmm.default")
def _matmul(ctx, a, b):
    return ctx.emit("matmul", [ctx.value(a), ctx.value(b)])


@aten("addmm.default", "baddbmm.default")
def _scaled_matmul_add(ctx, bias, a, b, beta=1, alpha=1):
    # beta * bias + alpha * (a @ b); with beta 0 the bias is ignored (NaNs in it included).
    y = ctx.emit("matmul", [ctx.value(a), ctx.value(b)])
    if alpha != 1:
        y = binary(ctx, "mul", y, alpha)
    if beta == 0:
        return y
    bias = ctx.value(bias)
    if beta != 1:
        bias = binary(ctx, "mul", bias, beta)
    return ctx.emit("add", [y, bias])


@aten("softmax.int", "_softmax.default", "_safe_softmax.default")
def _softmax(ctx, x, dim, dtype=None):
    x = ctx.value(x)
    out = ctx.meta_type()
    return ctx.emit("softmax", [ctx.cast(x, out.dtype)], axis=norm_dim(dim, x.rank))


@aten("log_softmax.int", "_log_softmax.default")
def _log_softmax(ctx, x, dim, dtype=None):
    x = ctx.value(x)
    out = ctx.meta_type()
    return ctx.emit("log_softmax", [ctx.cast(x, out.dtype)], axis=norm_dim(dim, x.rank))


@aten("layer_norm.default")
def _layer_norm(ctx, x, normalized_shape, weight=None, bias=None, eps=1e-5, *args):
    ins = [ctx.value(x), ctx.value(weight) if weight is not None else None]
    if bias is not None:
        ins.append(ctx.value(bias))
    while ins and ins[-1] is None:
        ins.pop()
    return ctx.emit("layer_norm", ins, axis=-len(normalized_shape), eps=float(eps))


@aten("native_layer_norm.default")
def _native_layer_norm(ctx, x, normalized_shape, weight, bias, eps):
    from tgraph.frontend.trace import _Unsupported

    y = _layer_norm(ctx, x, normalized_shape, weight, bias, eps)
    why = "native_layer_norm's mean/rstd outputs"
    return [y, _Unsupported(why), _Unsupported(why)]


@aten("rms_norm.default")
def _rms_norm(ctx, x, normalized_shape, weight=None, eps=None):
    x = ctx.value(x)
    if eps is None:
        eps = float(torch.finfo(torch.float32 if x.dtype is DType.float32 else torch.float16).eps)
    ins = [x] + ([ctx.value(weight)] if weight is not None else [])
    return ctx.emit("rms_norm", ins, axis=-len(normalized_shape), eps=float(eps))


@aten("conv1d.default", "conv2d.default", "convolution.default", "conv1d.padding",
      "conv2d.padding")  # fmt: skip
def _conv(ctx, x, weight, bias=None, stride=1, padding=0, dilation=1, *rest):
    if ctx.node.target is torch.ops.aten.convolution.default:
        transposed, out_pad, groups = rest
        if transposed:
            from tgraph.frontend.aten.conv_transpose import conv_transpose

            return conv_transpose(ctx, x, weight, bias, stride, padding, out_pad, groups, dilation)
    else:
        groups = rest[0] if rest else 1
    x, w = ctx.value(x), ctx.value(weight)
    if isinstance(padding, str):
        x, padding = _string_padding(ctx, x, w, padding, stride, dilation)
    ins = [x, w] + ([ctx.value(bias)] if bias is not None else [])
    if x.rank == 3:
        return _conv1d(ctx, ins, stride, padding, dilation, groups)
    if x.rank != 4:
        raise UnsupportedError(f"convolution on rank-{x.rank} input (only conv1d and conv2d)")
    pair = lambda v: tuple(v) * (2 // len(v)) if isinstance(v, (list, tuple)) else (v, v)  # noqa: E731
    return ctx.emit(
        "conv2d", ins, stride=pair(stride), padding=pair(padding), dilation=pair(dilation),
        groups=groups,
    )  # fmt: skip


def _string_padding(ctx, x: Value, w: Value, padding: str, stride, dilation):
    """padding='valid' (none) or 'same' (stride 1: the output keeps the input's size) as
    (x, per-dim padding). 'same' pads dilation * (k - 1) per dim, the odd one on the end
    side as torch does: an uneven total becomes an explicit ``pad`` before the conv."""
    n = x.rank - 2
    per_dim = lambda v: tuple(v) * (n // len(v)) if isinstance(v, (list, tuple)) else (v,) * n  # noqa: E731
    if padding == "valid":
        return x, (0,) * n
    if padding != "same" or any(s != 1 for s in per_dim(stride)):
        raise UnsupportedError(f"convolution padding={padding!r} with stride {stride}")
    totals = [d * (k - 1) for d, k in zip(per_dim(dilation), w.shape[2:])]
    if all(t % 2 == 0 for t in totals):
        return x, tuple(t // 2 for t in totals)
    pads = (0, 0, 0, 0) + tuple(p for t in totals for p in (t // 2, t - t // 2))
    return ctx.emit("pad", [x], pads=pads, value=0.0), (0,) * n


def _conv1d(ctx, ins: list[Value], stride, padding, dilation, groups) -> Value:
    # conv1d(x, w) = squeeze(conv2d(x[:, :, None, :], w[:, :, None, :]), 2): a 1 x k kernel
    # over a height-1 image. (N, C, L) -> (N, C, 1, L); weight (O, C/g, k) -> (O, C/g, 1, k).
    one = lambda v: v[0] if isinstance(v, (list, tuple)) else v  # noqa: E731
    x, w = (ctx.emit("unsqueeze", [v], axes=(2,)) for v in ins[:2])
    y = ctx.emit(
        "conv2d", [x, w, *ins[2:]], stride=(1, one(stride)), padding=(0, one(padding)),
        dilation=(1, one(dilation)), groups=groups,
    )  # fmt: skip
    return ctx.emit("squeeze", [y], axes=(2,))


@aten("scaled_dot_product_attention.default")
def _sdpa(
    ctx, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False
):
    if dropout_p:
        raise UnsupportedError("scaled_dot_product_attention with dropout_p > 0")
    ins = [ctx.value(q), ctx.value(k), ctx.value(v)]
    if attn_mask is not None:
        mask = ctx.value(attn_mask)
        if mask.dtype is not DType.bool:
            mask = ctx.cast(mask, ins[0].dtype)
        ins.append(mask)
    return ctx.emit(
        "sdpa", ins, causal=bool(is_causal), scale=None if scale is None else float(scale),
        gqa=bool(enable_gqa),
    )  # fmt: skip


def _resize_mode(ctx) -> str:
    name = str(ctx.node.target)
    return "linear" if "bilinear" in name else "cubic" if "bicubic" in name else "nearest"


@aten("upsample_bilinear2d.vec", "upsample_bicubic2d.vec", "upsample_nearest2d.vec")
def _upsample_vec(ctx, x, output_size, *args):
    # bilinear, bicubic: (x, output_size, align_corners, scale_factors); nearest: (x,
    # output_size, scale_factors)
    mode = _resize_mode(ctx)
    align, scales = (False, args[0]) if mode == "nearest" else (args[0], args[1])
    return _resize(ctx, x, mode, align, tuple(scales or ()))


@aten("upsample_bilinear2d.default", "upsample_bicubic2d.default", "upsample_nearest2d.default")
def _upsample(ctx, x, output_size, *args):
    # bilinear, bicubic: (x, size, align_corners, scales_h, scales_w); nearest: (x, size,
    # scales_h, scales_w)
    mode = _resize_mode(ctx)
    align, rest = (False, args) if mode == "nearest" else (args[0], args[1:])
    scales = tuple(s for s in rest if s is not None)
    return _resize(ctx, x, mode, align, scales if len(scales) == 2 else ())


def _resize(ctx, x, mode: str, align_corners: bool, scales: tuple, size=None):
    x = ctx.value(x)
    size = tuple(ctx.meta_type().shape[2:]) if size is None else size
    return ctx.emit(
        "resize", [x], size=size, scales=tuple(float(s) for s in scales), mode=mode,
        align_corners=bool(align_corners),
    )  # fmt: skip


@aten("upsample_linear1d.vec", "upsample_linear1d.default")
def _upsample_linear1d(ctx, x, output_size, align_corners, scales=None):
    # (N, C, L) resampled as the (N, C, 1, L) image, whose height of 1 maps onto itself (SAM's
    # relative positions). vec: scales is a list of one factor or None; default: a float.
    x = ctx.value(x)
    if isinstance(scales, (list, tuple)):
        scales = scales[0] if scales else None
    image = ctx.emit("unsqueeze", [x], axes=(2,))
    length = ctx.meta_type().shape[2]
    factors = () if scales is None else (1.0, scales)
    y = _resize(ctx, image, "linear", align_corners, factors, size=(1, length))
    return ctx.emit("squeeze", [y], axes=(2,))


@aten("_weight_norm.default")
def _weight_norm(ctx, v, g, dim=0):
    # w = g * v / ||v||, the norm over every dim but `dim` (nn.utils.weight_norm)
    v, g = ctx.value(v), ctx.value(g)
    axis = norm_dim(dim, v.rank) if dim is not None and dim != -1 else None
    axes = tuple(a for a in range(v.rank) if a != axis)
    norm = ctx.emit("sqrt", [ctx.emit("reduce_sum", [ctx.emit("mul", [v, v])], axes=axes,
                                      keepdim=True)])  # fmt: skip
    return ctx.emit("mul", [v, ctx.emit("div", [g, norm])])
