"""ATen op -> IR translation table.

Each translator takes the translation context and the FX node's args/kwargs (schema
names) and returns the IR value(s). Shapes that torch.export already computed (view
targets, expand sizes, split sizes) are read from the node's metadata, so no ``-1`` or
size arithmetic survives into the IR. An op missing here fails tracing with its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from tgraph.ir import DType, SymDim, Value

from .convert import UnsupportedError

if TYPE_CHECKING:
    from .trace import TranslationContext

Translator = Callable[..., Any]
TRANSLATORS: dict[str, Translator] = {}

_BIG = 2**62  # slice ends at or past this mean "to the end"


def aten(*names: str) -> Callable[[Translator], Translator]:
    """Register a translator for ATen schema names ("aten::add.Tensor") or whole packets."""

    def deco(fn: Translator) -> Translator:
        for name in names:
            TRANSLATORS[name if "::" in name else f"aten::{name}"] = fn
        return fn

    return deco


# -- helpers ---------------------------------------------------------------------------------------


def _axis(dim: int, rank: int) -> int:
    return dim % rank if rank else 0


def _scalar_dtype(x: Value, scalar: Any) -> DType:
    """The dtype a Python scalar takes next to tensor ``x`` (torch's promotion)."""
    if isinstance(scalar, bool):
        return x.dtype
    if isinstance(scalar, float) and not x.dtype.is_float:
        return DType.float32
    return x.dtype


def _operand(ctx: TranslationContext, a: Any, dtype: DType) -> Value:
    if isinstance(a, Value):
        return ctx.cast(a, dtype)
    return ctx.const(a, dtype)


def _binary(ctx: TranslationContext, op: str, a: Any, b: Any) -> Value:
    out = ctx.meta_type()
    return ctx.emit(op, [_operand(ctx, a, out.dtype), _operand(ctx, b, out.dtype)])


def _compute_dtype(a: Any, b: Any) -> DType:
    tensors = [x for x in (a, b) if isinstance(x, Value)]
    dtypes = {x.dtype for x in tensors}
    if len(dtypes) == 1:
        dtype = dtypes.pop()
        scalar = b if isinstance(a, Value) else a
        return _scalar_dtype(tensors[0], scalar) if not isinstance(scalar, Value) else dtype
    from tgraph.ir.dtypes import promote

    return promote(*[x.dtype for x in tensors])


def _compare(ctx: TranslationContext, op: str, a: Any, b: Any) -> Value:
    dtype = _compute_dtype(a, b)
    return ctx.emit(op, [_operand(ctx, a, dtype), _operand(ctx, b, dtype)])


# -- elementwise -----------------------------------------------------------------------------------


@aten("add.Tensor", "add.Scalar")
def _add(ctx, x, other, alpha=1):
    x, other = ctx.value(x), ctx.value(other)
    if alpha != 1:
        other = _binary(ctx, "mul", other, alpha)
    return _binary(ctx, "add", x, other)


@aten("sub.Tensor", "sub.Scalar")
def _sub(ctx, x, other, alpha=1):
    x, other = ctx.value(x), ctx.value(other)
    if alpha != 1:
        other = _binary(ctx, "mul", other, alpha)
    return _binary(ctx, "sub", x, other)


@aten("rsub.Tensor", "rsub.Scalar")
def _rsub(ctx, x, other, alpha=1):
    x, other = ctx.value(x), ctx.value(other)
    if alpha != 1:
        x = _binary(ctx, "mul", x, alpha)
    return _binary(ctx, "sub", other, x)


def _simple_binary(op: str) -> Translator:
    def translate(ctx, x, other):
        return _binary(ctx, op, ctx.value(x), ctx.value(other))

    return translate


for _names, _op in [
    (("mul.Tensor", "mul.Scalar"), "mul"),
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
        return _binary(ctx, "div", x, other)
    if rounding_mode in ("floor", None) or ctx.node.target is torch.ops.aten.floor_divide.default:
        return _binary(ctx, "floor_divide", x, other)
    if rounding_mode == "trunc" and out.dtype.is_float:
        q = _binary(ctx, "div", x, other)
        sign = ctx.emit(
            "where",
            [
                ctx.emit("lt", [q, ctx.const(0.0, q.dtype)]),
                ctx.const(-1.0, q.dtype),
                ctx.const(1.0, q.dtype),
            ],
        )
        return ctx.emit("mul", [ctx.emit("floor", [ctx.emit("abs", [q])]), sign])
    raise UnsupportedError(f"div with rounding_mode={rounding_mode!r} on {out.dtype}")


def _unary(op: str) -> Translator:
    def translate(ctx, x):
        return ctx.emit(op, [ctx.value(x)])

    return translate


for _name in [
    "neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "tanh", "erf", "sigmoid",
    "relu", "silu", "sin", "cos", "floor",
]:  # fmt: skip
    aten(f"{_name}.default")(_unary(_name))
aten("logical_not.default")(_unary("logical_not"))


@aten("bitwise_not.default")
def _bitwise_not(ctx, x):
    x = ctx.value(x)
    if x.dtype is not DType.bool:
        raise UnsupportedError("bitwise_not on integers")
    return ctx.emit("logical_not", [x])


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
    (("logical_and.default", "bitwise_and.Tensor", "__and__.Tensor"), "logical_and"),
    (("logical_or.default", "bitwise_or.Tensor", "__or__.Tensor"), "logical_or"),
]:

    def _make(op):
        def translate(ctx, x, other):
            x, other = ctx.value(x), ctx.value(other)
            if op.startswith("logical") and DType.bool not in {
                v.dtype for v in (x, other) if isinstance(v, Value)
            }:
                raise UnsupportedError(f"bitwise {op[8:]} on integers")
            return _compare(ctx, op, x, other)

        return translate

    aten(*_names)(_make(_op))


@aten("where.self", "where.ScalarSelf", "where.ScalarOther", "where.Scalar")
def _where(ctx, cond, x, y):
    cond, x, y = ctx.value(cond), ctx.value(x), ctx.value(y)
    out = ctx.meta_type()
    return ctx.emit(
        "where",
        [ctx.cast(cond, DType.bool), _operand(ctx, x, out.dtype), _operand(ctx, y, out.dtype)],
    )


@aten("masked_fill.Scalar", "masked_fill.Tensor")
def _masked_fill(ctx, x, mask, value):
    x, mask, value = ctx.value(x), ctx.value(mask), ctx.value(value)
    return ctx.emit("where", [ctx.cast(mask, DType.bool), _operand(ctx, value, x.dtype), x])


@aten("clamp.default", "clamp_min.default", "clamp_max.default", "clip.default")
def _clamp(ctx, x, min=None, max=None):
    if ctx.node.target is torch.ops.aten.clamp_max.default:
        min, max = None, min
    return ctx.emit("clamp", [ctx.value(x)], min=min, max=max)


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


# -- shape ops -----------------------------------------------------------------------------------


@aten(
    "view.default", "reshape.default", "_unsafe_view.default", "flatten.using_ints",
    "unflatten.int", "view.dtype",
)  # fmt: skip
def _reshape(ctx, x, *args):
    x = ctx.value(x)
    out = ctx.meta_type()
    if out.dtype != x.dtype:
        raise UnsupportedError("view as another dtype")
    if tuple(out.shape) == tuple(x.shape):
        return ctx.emit("identity", [x])
    return ctx.emit("reshape", [x], shape=out.shape)


@aten("expand.default", "expand_as.default", "broadcast_to.default")
def _expand(ctx, x, *args, **kwargs):
    x = ctx.value(x)
    shape = ctx.meta_type().shape
    if tuple(shape) == tuple(x.shape):
        return ctx.emit("identity", [x])
    return ctx.emit("expand", [x], shape=shape)


@aten("permute.default")
def _permute(ctx, x, dims):
    x = ctx.value(x)
    return ctx.emit("permute", [x], perm=tuple(_axis(d, x.rank) for d in dims))


@aten("transpose.int", "swapaxes.default")
def _transpose(ctx, x, d0, d1):
    x = ctx.value(x)
    perm = list(range(x.rank))
    a, b = _axis(d0, x.rank), _axis(d1, x.rank)
    perm[a], perm[b] = perm[b], perm[a]
    return ctx.emit("permute", [x], perm=tuple(perm))


@aten("t.default", "numpy_T.default")
def _t(ctx, x):
    x = ctx.value(x)
    if x.rank < 2:
        return ctx.emit("identity", [x])
    return ctx.emit("permute", [x], perm=tuple(reversed(range(x.rank))))


@aten("unsqueeze.default")
def _unsqueeze(ctx, x, dim):
    x = ctx.value(x)
    return ctx.emit("unsqueeze", [x], axes=(_axis(dim, x.rank + 1),))


@aten("squeeze.dim", "squeeze.dims", "squeeze.default")
def _squeeze(ctx, x, dims=None):
    x = ctx.value(x)
    if dims is None:
        dims = range(x.rank)
    elif isinstance(dims, int):
        dims = [dims]
    axes = tuple(a for a in (_axis(d, x.rank) for d in dims) if x.shape[a] == 1)
    if not axes:
        return ctx.emit("identity", [x])
    return ctx.emit("squeeze", [x], axes=axes)


def _bound(value: Any, size: Any, default: Any) -> Any:
    """A slice bound made non-negative and clamped where that is known statically."""
    if value is None:
        return default
    if isinstance(value, int) and value >= _BIG:
        return size
    if isinstance(value, int) and value < 0:
        value = size + value
        return max(value, 0) if isinstance(value, int) else value
    if isinstance(value, int) and isinstance(size, int):
        return min(value, size)
    return value


@aten("slice.Tensor")
def _slice(ctx, x, dim=0, start=None, end=None, step=1):
    x = ctx.value(x)
    axis = _axis(dim, x.rank)
    size = x.shape[axis]
    start, end = ctx.value(start), ctx.value(end)
    start = _bound(start, size, 0)
    end = _bound(end, size, size)
    if start == 0 and end == size and step == 1:
        return ctx.emit("identity", [x])
    return ctx.emit("slice", [x], axis=axis, start=start, end=end, step=step)


@aten("narrow.default")
def _narrow(ctx, x, dim, start, length):
    return _slice(ctx, x, dim, start, ctx.value(start) + ctx.value(length))


@aten("select.int")
def _select(ctx, x, dim, index):
    x = ctx.value(x)
    axis = _axis(dim, x.rank)
    index = ctx.value(index)
    if isinstance(index, int) and index < 0:
        index = x.shape[axis] + index
    return ctx.emit("gather", [x, ctx.const(index, DType.int64)], axis=axis)


@aten("slice_scatter.default")
def _slice_scatter(ctx, base, src, dim=0, start=None, end=None, step=1):
    # base with base[start:end] along dim replaced by src: concat(head, src, tail).
    base, src = ctx.value(base), ctx.value(src)
    axis = _axis(dim, base.rank)
    size = base.shape[axis]
    start = _bound(ctx.value(start), size, 0)
    end = _bound(ctx.value(end), size, size)
    if step != 1:
        raise UnsupportedError(f"slice_scatter with step {step}")
    parts = [ctx.cast(src, base.dtype)]
    if start != 0:
        parts.insert(0, ctx.emit("slice", [base], axis=axis, start=0, end=start, step=1))
    if end != size:
        parts.append(ctx.emit("slice", [base], axis=axis, start=end, end=size, step=1))
    return parts[0] if len(parts) == 1 else ctx.emit("concat", parts, axis=axis)


@aten("select_scatter.default")
def _select_scatter(ctx, base, src, dim, index):
    base = ctx.value(base)
    axis = _axis(dim, base.rank)
    index = ctx.value(index)
    if isinstance(index, int) and index < 0:
        index = base.shape[axis] + index
    src = ctx.emit("unsqueeze", [ctx.value(src)], axes=(axis,))
    return _slice_scatter(ctx, base, src, axis, index, index + 1)


@aten("copy.default", "fill.Tensor")
def _copy(ctx, x, src, non_blocking=False):
    # The functional copy_ / fill_: src (a tensor or a 0-d value) cast and broadcast to x.
    x = ctx.value(x)
    out = ctx.cast(ctx.value(src), x.dtype)
    if tuple(out.shape) != tuple(x.shape):
        out = ctx.emit("expand", [out], shape=tuple(x.shape))
    return out if out.producer is not None else ctx.emit("identity", [out])


@aten("index.Tensor")
def _index(ctx, x, indices):
    x = ctx.value(x)
    present = [(i, ctx.value(ix)) for i, ix in enumerate(indices) if ix is not None]
    axes = [i for i, _ in present]
    if axes != list(range(axes[0], axes[0] + len(axes))):
        raise UnsupportedError("advanced indexing with index tensors on non-adjacent dims")
    if any(ix.dtype is DType.bool for _, ix in present):
        raise UnsupportedError("boolean-mask indexing (data-dependent shape)")
    idx = [ctx.cast(ix, DType.int64) for _, ix in present]
    if len(idx) == 1:
        return ctx.emit("gather", [x, idx[0]], axis=axes[0])
    return ctx.emit("index", [x, *idx], axis=axes[0])


@aten("gather.default")
def _gather_elements(ctx, x, dim, index, sparse_grad=False):
    x = ctx.value(x)
    index = ctx.cast(ctx.value(index), DType.int64)
    return ctx.emit("gather_elements", [x, index], axis=_axis(dim, x.rank))


@aten("diff.default")
def _diff(ctx, x, n=1, dim=-1, prepend=None, append=None):
    x = ctx.value(x)
    axis = _axis(dim, x.rank)
    parts = [ctx.value(p) for p in (prepend, x, append) if p is not None]
    y = ctx.emit("concat", parts, axis=axis) if len(parts) > 1 else x
    for _ in range(n):
        size = y.shape[axis]
        hi = ctx.emit("slice", [y], axis=axis, start=1, end=size, step=1)
        lo = ctx.emit("slice", [y], axis=axis, start=0, end=size - 1, step=1)
        op = "logical_xor" if y.dtype is DType.bool else "sub"
        if op == "logical_xor":
            raise UnsupportedError("diff on booleans")
        y = ctx.emit(op, [hi, lo])
    return y


@aten("index_select.default")
def _index_select(ctx, x, dim, index):
    x = ctx.value(x)
    return ctx.emit("gather", [x, ctx.cast(ctx.value(index), DType.int64)], axis=_axis(dim, x.rank))


@aten("embedding.default")
def _embedding(ctx, weight, indices, padding_idx=-1, *args):
    return ctx.emit(
        "gather", [ctx.value(weight), ctx.cast(ctx.value(indices), DType.int64)], axis=0
    )


@aten("cat.default", "concat.default")
def _cat(ctx, tensors, dim=0):
    xs = [ctx.value(t) for t in tensors]
    out = ctx.meta_type()
    xs = [ctx.cast(x, out.dtype) for x in xs if not (x.rank == 1 and x.shape[0] == 0)]
    return ctx.emit("concat", xs, axis=_axis(dim, out.rank))


@aten("stack.default")
def _stack(ctx, tensors, dim=0):
    xs = [ctx.value(t) for t in tensors]
    axis = _axis(dim, xs[0].rank + 1)
    parts = [ctx.emit("unsqueeze", [x], axes=(axis,)) for x in xs]
    return ctx.emit("concat", parts, axis=axis)


def _split_outputs(ctx, x, dim) -> list[Value]:
    axis = _axis(dim, x.rank)
    vals = ctx.node.meta["val"]
    sizes = tuple(ctx.symbols.convert(v.shape[axis]) for v in vals)
    node = ctx.emit_node("split", [x], axis=axis, sizes=sizes)
    return list(node.outputs)


@aten("split.Tensor", "split_with_sizes.default", "chunk.default", "tensor_split.sections")
def _split(ctx, x, split, dim=0):
    return _split_outputs(ctx, ctx.value(x), dim)


@aten("unbind.int")
def _unbind(ctx, x, dim=0):
    x = ctx.value(x)
    axis = _axis(dim, x.rank)
    return [ctx.emit("squeeze", [p], axes=(axis,)) for p in _split_outputs(ctx, x, axis)]


@aten("repeat_interleave.self_int")
def _repeat_interleave(ctx, x, repeats, dim=None, output_size=None):
    x = ctx.value(x)
    if dim is None:
        raise UnsupportedError("repeat_interleave without dim")
    axis = _axis(dim, x.rank)
    shape = list(x.shape)
    y = ctx.emit("unsqueeze", [x], axes=(axis + 1,))
    expanded = shape[: axis + 1] + [repeats] + shape[axis + 1 :]
    y = ctx.emit("expand", [y], shape=tuple(expanded))
    return ctx.emit("reshape", [y], shape=ctx.meta_type().shape)


@aten("repeat.default")
def _repeat(ctx, x, repeats):
    x = ctx.value(x)
    repeats = ctx.value(repeats)
    pad = len(repeats) - x.rank
    if pad:
        x = ctx.emit("reshape", [x], shape=(1,) * pad + tuple(x.shape))
    # tile: (r0, d0, r1, d1, ...) expanded then merged
    inter = []
    for d in x.shape:
        inter += [1, d]
    y = ctx.emit("reshape", [x], shape=tuple(inter))
    big = []
    for r, d in zip(repeats, x.shape):
        big += [r, d]
    y = ctx.emit("expand", [y], shape=tuple(big))
    return ctx.emit("reshape", [y], shape=ctx.meta_type().shape)


@aten("pad.default")
def _pad_mode(ctx, x, pad, mode="constant", value=None):
    if mode != "constant":
        raise UnsupportedError(f"pad mode {mode!r} (only 'constant')")
    return _pad(ctx, x, pad, value)


@aten("constant_pad_nd.default")
def _pad(ctx, x, pad, value=0.0):
    x = ctx.value(x)
    pads = [0] * (2 * x.rank)
    for i in range(len(pad) // 2):  # pad lists (begin, end) from the last dim backwards
        d = x.rank - 1 - i
        pads[2 * d], pads[2 * d + 1] = pad[2 * i], pad[2 * i + 1]
    return ctx.emit("pad", [x], pads=tuple(pads), value=float(value or 0.0))


@aten("tril.default")
def _tril(ctx, x, diagonal=0):
    return ctx.emit("tril", [ctx.value(x)], diagonal=diagonal)


@aten("triu.default")
def _triu(ctx, x, diagonal=0):
    return ctx.emit("triu", [ctx.value(x)], diagonal=diagonal)


# -- creation --------------------------------------------------------------------------------------


@aten("arange.default", "arange.start", "arange.start_step")
def _arange(ctx, *args, **kwargs):
    args = [ctx.value(a) for a in args]
    if len(args) == 1:
        start, end, step = 0, args[0], 1
    else:
        start, end = args[0], args[1]
        step = args[2] if len(args) > 2 else 1
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


# -- reductions ------------------------------------------------------------------------------------


def _reduce_axes(x: Value, dims: Any) -> tuple[int, ...]:
    if dims is None or dims == [] or dims == ():
        return tuple(range(x.rank))
    if isinstance(dims, int):
        dims = [dims]
    return tuple(sorted(_axis(d, x.rank) for d in dims))


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


@aten("max.dim", "min.dim")
def _max_dim(ctx, x, dim, keepdim=False):
    x = ctx.value(x)
    axis = _axis(dim, x.rank)
    op = "reduce_max" if ctx.node.target is torch.ops.aten.max.dim else "reduce_min"
    values = ctx.emit(op, [x], axes=(axis,), keepdim=keepdim)
    if op == "reduce_min":
        from .trace import _Unsupported

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
    return ctx.emit("argmax", [x], axis=_axis(dim, x.rank), keepdim=keepdim)


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
    return ctx.emit("cumsum", [ctx.cast(x, out.dtype)], axis=_axis(dim, x.rank))


@aten("any.dim", "any.default", "any.dims", "all.dim", "all.default")
def _any_all(ctx, x, dim=None, keepdim=False):
    x = ctx.value(x)
    is_any = ctx.node.target._overloadpacket is torch.ops.aten.any
    op = "reduce_max" if is_any else "reduce_min"
    y = ctx.emit(op, [ctx.cast(x, DType.int64)], axes=_reduce_axes(x, dim), keepdim=keepdim)
    return ctx.emit("ne", [y, ctx.const(0, DType.int64)])


# -- neural-network ops ----------------------------------------------------------------------------


@aten("linear.default")
def _linear(ctx, x, weight, bias=None):
    ins = [ctx.value(x), ctx.value(weight)]
    if bias is not None:
        ins.append(ctx.value(bias))
    return ctx.emit("linear", ins)


@aten("matmul.default", "mm.default", "bmm.default")
def _matmul(ctx, a, b):
    return ctx.emit("matmul", [ctx.value(a), ctx.value(b)])


@aten("addmm.default")
def _addmm(ctx, bias, a, b, beta=1, alpha=1):
    y = ctx.emit("matmul", [ctx.value(a), ctx.value(b)])
    if alpha != 1:
        y = _binary(ctx, "mul", y, alpha)
    bias = ctx.value(bias)
    if beta != 1:
        bias = _binary(ctx, "mul", bias, beta)
    return ctx.emit("add", [y, bias])


@aten("softmax.int", "_softmax.default", "_safe_softmax.default")
def _softmax(ctx, x, dim, dtype=None):
    x = ctx.value(x)
    out = ctx.meta_type()
    return ctx.emit("softmax", [ctx.cast(x, out.dtype)], axis=_axis(dim, x.rank))


@aten("log_softmax.int", "_log_softmax.default")
def _log_softmax(ctx, x, dim, dtype=None):
    x = ctx.value(x)
    out = ctx.meta_type()
    return ctx.emit("log_softmax", [ctx.cast(x, out.dtype)], axis=_axis(dim, x.rank))


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
    from .trace import _Unsupported

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


@aten("conv1d.default", "conv2d.default", "convolution.default")
def _conv(ctx, x, weight, bias=None, stride=1, padding=0, dilation=1, *rest):
    if ctx.node.target is torch.ops.aten.convolution.default:
        transposed, _out_pad, groups = rest
        if transposed:
            raise UnsupportedError("transposed convolution")
    else:
        groups = rest[0] if rest else 1
    x, w = ctx.value(x), ctx.value(weight)
    if isinstance(padding, str):
        raise UnsupportedError(f"convolution padding={padding!r}")
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
