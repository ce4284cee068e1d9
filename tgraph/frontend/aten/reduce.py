"""ATen creation ops (arange, full) and reductions."""

from __future__ import annotations

from typing import Any

import torch

from tgraph.frontend.aten.base import (
    Translator,
    aten,
    norm_dim,
)  # fmt: skip
from tgraph.frontend.convert import UnsupportedError
from tgraph.ir import DType, SymDim, Value


@aten("arange.default", "arange.start", "arange.start_step")
def _arange(ctx, *args, **kwargs):
    args = [ctx.value(a) for a in args]
    if len(args) == 1:
        start, end, step = 0, args[0], 1
    else:
        start, end = args[0], args[1]
        step = args[2] if len(args) > 2 else 1
    # Whole floats are ints (XLNet's arange(klen, -qlen, -1.0)): the same values, and a length
    # that symbolic bounds can carry; a fractional step with a symbolic bound is refused.
    start, end, step = (int(b) if isinstance(b, float) and b.is_integer() else b
                        for b in (start, end, step))  # fmt: skip
    bounds = (start, end, step)
    if any(isinstance(b, float) for b in bounds) and any(isinstance(b, SymDim) for b in bounds):
        raise UnsupportedError(f"arange({start}, {end}, {step}): a fractional float bound next "
                               "to a symbolic one")  # fmt: skip
    dtype = ctx.meta_type().dtype
    return ctx.emit("arange", [], start=start, end=end, step=step, dtype=dtype)


@aten(
    "full.default", "zeros.default", "ones.default", "new_full.default", "new_zeros.default",
    "new_ones.default", "full_like.default", "zeros_like.default", "ones_like.default",
    "empty_like.default", "scalar_tensor.default", "fill.Scalar", "new_empty.default",
    "empty.memory_format",
)  # fmt: skip
def _full(ctx, *args, **kwargs):
    name = ctx.node.target._overloadpacket.__name__
    out = ctx.meta_type()
    # Where the fill value sits in each schema; the others fill with 1 or 0.
    value_arg = {"full": 1, "full_like": 1, "fill": 1, "new_full": 2, "scalar_tensor": 0}
    if name in value_arg:
        value = ctx.value(args[value_arg[name]])
    else:
        value = 1 if name in ("ones", "ones_like", "new_ones") else 0
    if isinstance(value, Value):
        raise UnsupportedError(f"{name} with a tensor fill value")
    if out.dtype is DType.bool:
        value = bool(value)
    elif out.dtype.is_float and not isinstance(value, SymDim):
        value = float(value)
    return ctx.emit("full", [], shape=out.shape, value=value, dtype=out.dtype)


@aten("lift_fresh.default")
def _lift_fresh(ctx, x):
    return ctx.value(x)


def _reduce_axes(x: Value, dims: Any) -> tuple[int, ...]:
    if dims is None or dims == [] or dims == ():
        return tuple(range(x.rank))
    if isinstance(dims, int):
        dims = [dims]
    return tuple(sorted(norm_dim(d, x.rank) for d in dims))


def _reduce(op: str) -> Translator:
    def translate(ctx, x, dims=None, keepdim=False, *, dtype=None):
        x = ctx.value(x)
        out = ctx.meta_type()
        x = ctx.cast(x, out.dtype)
        return ctx.emit(op, [x], axes=_reduce_axes(x, dims), keepdim=bool(keepdim))

    return translate


aten("mean.dim", "mean.default")(_reduce("reduce_mean"))
aten("sum.dim_IntList", "sum.default")(_reduce("reduce_sum"))
aten("amax.default")(_reduce("reduce_max"))
aten("amin.default")(_reduce("reduce_min"))
aten("prod.dim_int")(_reduce("reduce_prod"))
aten("logsumexp.default")(_reduce("logsumexp"))  # (integers promote to float first)


@aten("max.dim", "min.dim")
def _max_dim(ctx, x, dim, keepdim=False):
    x = ctx.value(x)
    axis = norm_dim(dim, x.rank)
    op = "reduce_max" if ctx.node.target is torch.ops.aten.max.dim else "reduce_min"
    values = ctx.emit(op, [x], axes=(axis,), keepdim=keepdim)
    if op == "reduce_min":
        from tgraph.frontend.trace import _Unsupported

        return [values, _Unsupported("min.dim's indices (argmin)")]
    return [values, ctx.emit("argmax", [x], axis=axis, keepdim=keepdim)]


@aten("max.default", "min.default")
def _max_all(ctx, x):
    op = "reduce_max" if ctx.node.target is torch.ops.aten.max.default else "reduce_min"
    return ctx.emit(op, [ctx.value(x)], axes=(), keepdim=False)


@aten("argmax.default")
def _argmax(ctx, x, dim=None, keepdim=False):
    x = ctx.value(x)
    if dim is None:
        x = ctx.emit("reshape", [x], shape=(_numel(x),))
        dim = 0
    return ctx.emit("argmax", [x], axis=norm_dim(dim, x.rank), keepdim=keepdim)


def _numel(x: Value) -> Any:
    n: Any = 1
    for d in x.shape:
        n = n * d
    return n


@aten("var.correction", "var.dim", "var_mean.correction")
def _var(ctx, x, dims=None, *args, correction=None, keepdim=False, unbiased=None):
    x = ctx.value(x)
    if ctx.node.target is torch.ops.aten.var.dim:
        unbiased = args[0] if args else True
        keepdim = args[1] if len(args) > 1 else keepdim
        corr = 1 if unbiased else 0
    else:
        corr = 1 if correction is None else int(correction)
    axes = _reduce_axes(x, dims)
    var = ctx.emit("var", [x], axes=axes, correction=corr, keepdim=keepdim)
    if ctx.node.target is torch.ops.aten.var_mean.correction:
        return [var, ctx.emit("reduce_mean", [x], axes=axes, keepdim=keepdim)]
    return var


@aten("cumsum.default")
def _cumsum(ctx, x, dim, dtype=None):
    x = ctx.value(x)
    out = ctx.meta_type()
    return ctx.emit("cumsum", [ctx.cast(x, out.dtype)], axis=norm_dim(dim, x.rank))


@aten("any.dim", "any.default", "any.dims", "all.dim", "all.default")
def _any_all(ctx, x, dim=None, keepdim=False):
    x = ctx.value(x)
    is_any = ctx.node.target._overloadpacket is torch.ops.aten.any
    op = "reduce_max" if is_any else "reduce_min"
    y = ctx.emit(op, [ctx.cast(x, DType.int64)], axes=_reduce_axes(x, dim), keepdim=keepdim)
    return ctx.emit("ne", [y, ctx.const(0, DType.int64)])


@aten("topk.default")
def _topk(ctx, x, k, dim=-1, largest=True, sorted=True):
    # Always sorted: an unsorted topk may return any order, so sorted output is one valid one.
    x = ctx.value(x)
    node = ctx.emit_node("topk", [x], k=ctx.value(k), axis=norm_dim(dim, x.rank), largest=largest)
    return list(node.outputs)


@aten("sort.default", "sort.stable")
def _sort(ctx, x, *args, **kwargs):
    # sort(x, dim=-1, descending=False) / sort.stable(x, *, stable, dim, descending): a topk
    # over the whole dim, stable (ties keep index order) as torch's CPU sort is.
    x = ctx.value(x)
    if "stable" in str(ctx.node.target):
        dim, descending = kwargs.get("dim", -1), kwargs.get("descending", False)
    else:
        dim = args[0] if args else kwargs.get("dim", -1)
        descending = args[1] if len(args) > 1 else kwargs.get("descending", False)
    axis = norm_dim(dim, x.rank)
    node = ctx.emit_node("topk", [x], k=x.shape[axis], axis=axis, largest=bool(descending))
    return list(node.outputs)


@aten("argsort.default", "argsort.stable")
def _argsort(ctx, x, *args, **kwargs):
    # argsort(x, dim=-1, descending=False) / argsort.stable(x, *, stable, dim, descending):
    # the indices of sort's stable topk over the whole dim (ViTMAE's shuffle of its noise).
    return _sort(ctx, x, *args, **kwargs)[1]


@aten("one_hot.default")
def _one_hot(ctx, x, num_classes=-1):
    # (x[..., None] == arange(n)) as int64; n = -1 means "max + 1", a data-dependent size.
    if num_classes < 0:
        raise UnsupportedError("one_hot without num_classes (its size depends on the data)")
    x = ctx.value(x)
    classes = ctx.emit("arange", [], start=0, end=num_classes, step=1, dtype=x.dtype)
    hit = ctx.emit("eq", [ctx.emit("unsqueeze", [x], axes=(x.rank,)), classes])
    return ctx.emit("cast", [hit], dtype=DType.int64)


@aten("linalg_vector_norm.default")
def _vector_norm(ctx, x, ord=2, dim=None, keepdim=False, dtype=None):
    # ||x||_p over dim: p = 2 (sqrt of the sum of squares), 1 (sum of |x|), inf (max of |x|)
    x = ctx.value(x)
    axes = () if dim is None else tuple(norm_dim(d, x.rank) for d in dim)
    axes = axes or tuple(range(x.rank))
    x = ctx.cast(x, ctx.meta_type().dtype)
    if ord == 2:
        squares = ctx.emit("reduce_sum", [ctx.emit("mul", [x, x])], axes=axes, keepdim=keepdim)
        return ctx.emit("sqrt", [squares])
    if ord == 1:
        return ctx.emit("reduce_sum", [ctx.emit("abs", [x])], axes=axes, keepdim=keepdim)
    if ord == float("inf"):
        return ctx.emit("reduce_max", [ctx.emit("abs", [x])], axes=axes, keepdim=keepdim)
    raise UnsupportedError(f"vector norm of order {ord} (only 1, 2 and inf)")
