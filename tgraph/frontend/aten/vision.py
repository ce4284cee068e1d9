"""ATen ops of convolutional vision and audio models: batch norm, pooling, and the
activations of mobile networks (hardswish, relu6, ...), most as decompositions."""

from __future__ import annotations

from tgraph.frontend.aten.base import aten, binary, compare
from tgraph.frontend.convert import UnsupportedError
from tgraph.ir import Value


def _pair(v, default=None) -> tuple[int, int]:
    if v is None or (isinstance(v, (list, tuple)) and not v):
        return default
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


@aten("_native_batch_norm_legit_no_training.default", "batch_norm.default",
      "native_batch_norm.default")  # fmt: skip
def _batch_norm(ctx, x, weight, bias, mean, var, *args):
    # Inference batch norm: (x - mean) * rsqrt(var + eps) * w + b over channel dim 1; the
    # constant half folds into a scale and shift. batch_norm.default: (training, momentum,
    # eps, cudnn); the others: (momentum, eps) or (training, momentum, eps).
    from tgraph.frontend.trace import _Unsupported

    name = str(ctx.node.target)
    training = args[0] if not name.startswith("aten._native_batch_norm_legit") else False
    if training is True:
        raise UnsupportedError("batch norm in training mode (call model.eval() first)")
    eps = float(args[2] if name.startswith("aten.batch_norm") else args[-1])
    x = ctx.value(x)
    shape = (-1,) + (1,) * (x.rank - 2)

    def channel(v):
        v = ctx.value(v)
        return ctx.emit("reshape", [v], shape=(v.shape[0],) + shape[1:])

    var = channel(var)  # (the node has several outputs: no binary(), which reads one dtype)
    inv = ctx.emit("rsqrt", [ctx.emit("add", [var, ctx.const(eps, var.dtype)])])
    if weight is not None:
        inv = ctx.emit("mul", [inv, channel(weight)])
    y = ctx.emit("mul", [ctx.emit("sub", [x, channel(mean)]), inv])
    if bias is not None:
        y = ctx.emit("add", [y, channel(bias)])
    if name.startswith("aten.batch_norm"):
        return y
    why = "batch norm's saved mean / invstd outputs"
    return [y, _Unsupported(why), _Unsupported(why)]


def _pool(ctx, x: Value, kind: str, kernel, stride, padding, ceil_mode, include_pad=True):
    """pool2d on (N, C, H, W); (N, C, L) pools as a height-1 image."""
    one_d = x.rank == 3
    if one_d:
        x = ctx.emit("unsqueeze", [x], axes=(2,))
        kernel, stride, padding = (1, kernel[0]), (1, stride[0]), (0, padding[0])
    y = ctx.emit(
        "pool2d", [x], kind=kind, kernel=kernel, stride=stride, padding=padding,
        ceil_mode=bool(ceil_mode), count_include_pad=bool(include_pad),
    )  # fmt: skip
    return ctx.emit("squeeze", [y], axes=(2,)) if one_d else y


@aten("max_pool2d.default", "max_pool1d.default", "max_pool2d_with_indices.default")
def _max_pool(ctx, x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    from tgraph.frontend.trace import _Unsupported

    if _pair(dilation) != (1, 1):
        raise UnsupportedError(f"max pooling with dilation {dilation}")
    x = ctx.value(x)
    k = _pair(kernel_size)
    y = _pool(ctx, x, "max", k, _pair(stride, k), _pair(padding), ceil_mode)
    if "with_indices" in str(ctx.node.target):
        return [y, _Unsupported("max pooling indices")]
    return y


@aten("avg_pool2d.default", "avg_pool1d.default")
def _avg_pool(ctx, x, kernel_size, stride=(), padding=0, ceil_mode=False,
              count_include_pad=True, divisor_override=None):  # fmt: skip
    if divisor_override is not None:
        raise UnsupportedError("average pooling with divisor_override")
    k = _pair(kernel_size)
    return _pool(ctx, ctx.value(x), "avg", k, _pair(stride, k), _pair(padding), ceil_mode,
                 count_include_pad)  # fmt: skip


@aten("adaptive_avg_pool2d.default", "_adaptive_avg_pool2d.default",
      "adaptive_avg_pool1d.default")  # fmt: skip
def _adaptive_avg_pool(ctx, x, output_size):
    # A global pool is a mean; an output that divides the input is a plain average pool.
    x = ctx.value(x)
    spatial = tuple(x.shape[2:])
    out = tuple(ctx.meta_type().shape[2:])
    if all(o == 1 for o in out):
        axes = tuple(range(2, x.rank))
        return ctx.emit("reduce_mean", [x], axes=axes, keepdim=True)
    if not all(isinstance(s, int) and s % o == 0 for s, o in zip(spatial, out)):
        raise UnsupportedError(f"adaptive average pooling from {spatial} to {out}")
    k = tuple(s // o for s, o in zip(spatial, out))
    k = k if len(k) == 2 else (k[0],)
    return _pool(ctx, x, "avg", _pair(k), _pair(k), (0, 0), False)


# -- activations -------------------------------------------------------------------------------


@aten("hardtanh.default", "relu6.default")
def _hardtanh(ctx, x, min_val=-1.0, max_val=1.0):
    if "relu6" in str(ctx.node.target):
        min_val, max_val = 0.0, 6.0
    return ctx.emit("clamp", [ctx.value(x)], min=float(min_val), max=float(max_val))


def _hardsigmoid_of(ctx, x: Value) -> Value:
    # relu6(x + 3) / 6
    shifted = ctx.emit("clamp", [binary(ctx, "add", x, 3.0)], min=0.0, max=6.0)
    return binary(ctx, "div", shifted, 6.0)


@aten("hardsigmoid.default")
def _hardsigmoid(ctx, x):
    return _hardsigmoid_of(ctx, ctx.value(x))


@aten("hardswish.default")
def _hardswish(ctx, x):
    x = ctx.value(x)
    return ctx.emit("mul", [x, _hardsigmoid_of(ctx, x)])


@aten("leaky_relu.default")
def _leaky_relu(ctx, x, negative_slope=0.01):
    x = ctx.value(x)
    return ctx.emit("where", [compare(ctx, "gt", x, 0.0), x, binary(ctx, "mul", x, negative_slope)])


@aten("elu.default")
def _elu(ctx, x, alpha=1.0, scale=1.0, input_scale=1.0):
    # scale * (x if x > 0 else alpha * (exp(input_scale * x) - 1))
    x = ctx.value(x)
    scaled = binary(ctx, "mul", x, input_scale) if input_scale != 1 else x
    neg = binary(ctx, "mul", binary(ctx, "sub", ctx.emit("exp", [scaled]), 1.0), alpha)
    y = ctx.emit("where", [compare(ctx, "gt", x, 0.0), x, neg])
    return binary(ctx, "mul", y, scale) if scale != 1 else y


@aten("mish.default")
def _mish(ctx, x):
    # x * tanh(softplus(x)), softplus with torch's cutoff at 20
    from tgraph.frontend.aten.elementwise import softplus_of

    x = ctx.value(x)
    return ctx.emit("mul", [x, ctx.emit("tanh", [softplus_of(ctx, x, 1, 20)])])


@aten("group_norm.default", "native_group_norm.default")
def _group_norm(ctx, x, *args):
    # group_norm(x, groups, w, b, eps, cudnn) / native_group_norm(x, w, b, N, C, HxW, groups,
    # eps): normalize (N, G, C/G * spatial), then the per-channel affine.
    from tgraph.frontend.trace import _Unsupported
    from tgraph.ir.ops.shapes import numel

    native = "native" in str(ctx.node.target)
    groups, weight, bias, eps = (args[5], args[0], args[1], args[6]) if native else args[:4]
    x = ctx.value(x)
    grouped = ctx.emit("reshape", [x], shape=(x.shape[0], groups, numel(x.shape[1:]) // groups))
    mean = ctx.emit("reduce_mean", [grouped], axes=(2,), keepdim=True)
    var = ctx.emit("var", [grouped], axes=(2,), correction=0, keepdim=True)
    inv = ctx.emit("rsqrt", [ctx.emit("add", [var, ctx.const(float(eps), var.dtype)])])
    y = ctx.emit("reshape", [ctx.emit("mul", [ctx.emit("sub", [grouped, mean]), inv])],
                 shape=x.shape)  # fmt: skip
    channel = (x.shape[1],) + (1,) * (x.rank - 2)
    if weight is not None:
        y = ctx.emit("mul", [y, ctx.emit("reshape", [ctx.value(weight)], shape=channel)])
    if bias is not None:
        y = ctx.emit("add", [y, ctx.emit("reshape", [ctx.value(bias)], shape=channel)])
    if not native:
        return y
    why = "group norm's mean / rstd outputs"
    return [y, _Unsupported(why), _Unsupported(why)]


@aten("im2col.default")
def _im2col(ctx, x, kernel_size, dilation, padding, stride):
    # nn.Unfold: out[n, (c*kh + i)*kw + j, a*ow + b] = xpad[n, c, a*s0 + i*d0, b*s1 + j*d1].
    # One strided slice per kernel offset, stacked after the channel dim: (N, C, kh*kw, oh, ow).
    x = ctx.value(x)
    (kh, kw), (d0, d1), (p0, p1), (s0, s1) = (_pair(v) for v in (kernel_size, dilation,
                                                                 padding, stride))  # fmt: skip
    if p0 or p1:
        x = ctx.emit("pad", [x], pads=(0, 0, 0, 0, p0, p0, p1, p1), value=0.0)
    n, c, h, w = x.shape
    oh = (h - d0 * (kh - 1) - 1) // s0 + 1
    ow = (w - d1 * (kw - 1) - 1) // s1 + 1
    patches = []
    for i in range(kh):
        for j in range(kw):
            rows = ctx.emit("slice", [x], axis=2, start=i * d0, end=i * d0 + s0 * (oh - 1) + 1,
                            step=s0)  # fmt: skip
            patch = ctx.emit("slice", [rows], axis=3, start=j * d1,
                             end=j * d1 + s1 * (ow - 1) + 1, step=s1)  # fmt: skip
            patches.append(ctx.emit("unsqueeze", [patch], axes=(2,)))
    stacked = ctx.emit("concat", patches, axis=2) if len(patches) > 1 else patches[0]
    return ctx.emit("reshape", [stacked], shape=tuple(ctx.meta_type().shape))
