"""ATen data movement: views, slices and their scatters, gathers, concatenation, padding."""

from __future__ import annotations

from typing import Any

from tgraph.frontend.aten.base import (
    SLICE_END,
    aten,
    norm_dim,
)  # fmt: skip
from tgraph.frontend.convert import UnsupportedError
from tgraph.ir import DType, SymDim, Value
from tgraph.ir.ops.shapes import numel


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
    return ctx.emit("permute", [x], perm=tuple(norm_dim(d, x.rank) for d in dims))


@aten("transpose.int", "swapaxes.default")
def _transpose(ctx, x, d0, d1):
    x = ctx.value(x)
    perm = list(range(x.rank))
    a, b = norm_dim(d0, x.rank), norm_dim(d1, x.rank)
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
    return ctx.emit("unsqueeze", [x], axes=(norm_dim(dim, x.rank + 1),))


@aten("squeeze.dim", "squeeze.dims", "squeeze.default")
def _squeeze(ctx, x, dims=None):
    x = ctx.value(x)
    if dims is None:
        dims = range(x.rank)
    elif isinstance(dims, int):
        dims = [dims]
    axes = tuple(a for a in (norm_dim(d, x.rank) for d in dims) if x.shape[a] == 1)
    if not axes:
        return ctx.emit("identity", [x])
    return ctx.emit("squeeze", [x], axes=axes)


def _bound(value: Any, size: Any, default: Any) -> Any:
    """A slice bound made non-negative and clamped where that is known statically."""
    if value is None:
        return default
    if isinstance(value, int) and value >= SLICE_END:
        return size
    if isinstance(value, int) and value < 0:
        value = size + value
        return max(value, 0) if isinstance(value, int) else value
    if isinstance(value, int) and isinstance(size, int):
        return min(value, size)
    if isinstance(value, SymDim) and all(c < 0 for _, c in value.terms):
        return size + value  # x[:, -seq:]: a negative symbolic bound counts from the end
    return value


@aten("slice.Tensor")
def _slice(ctx, x, dim=0, start=None, end=None, step=1):
    x = ctx.value(x)
    axis = norm_dim(dim, x.rank)
    size = x.shape[axis]
    start, end = ctx.value(start), ctx.value(end)
    start = _bound(start, size, 0)
    end = _bound(end, size, size)
    # A step-1 slice as long as the dim is all of it: export knows x[-512:] keeps every row
    # when seq <= 512 (XLNet's memory), which the bound seq - 512 cannot say.
    whole = step == 1 and ctx.meta_type().shape[axis] == size
    if whole or (start == 0 and end == size and step == 1):
        return ctx.emit("identity", [x])
    return ctx.emit("slice", [x], axis=axis, start=start, end=end, step=step)


@aten("narrow.default")
def _narrow(ctx, x, dim, start, length):
    return _slice(ctx, x, dim, start, ctx.value(start) + ctx.value(length))


@aten("select.int")
def _select(ctx, x, dim, index):
    x = ctx.value(x)
    axis = norm_dim(dim, x.rank)
    index = ctx.value(index)
    if isinstance(index, int) and index < 0:
        index = x.shape[axis] + index
    return ctx.emit("gather", [x, ctx.const(index, DType.int64)], axis=axis)


@aten("slice_scatter.default")
def _slice_scatter(ctx, base, src, dim=0, start=None, end=None, step=1):
    # base with base[start:end] along dim replaced by src: concat(head, src, tail).
    base, src = ctx.value(base), ctx.value(src)
    axis = norm_dim(dim, base.rank)
    size = base.shape[axis]
    start = _bound(ctx.value(start), size, 0)
    end = _bound(ctx.value(end), size, size)
    if step != 1:
        return _strided_scatter(ctx, base, ctx.cast(src, base.dtype), axis, start, end, step)
    parts = [ctx.cast(src, base.dtype)]
    if start != 0:
        parts.insert(0, ctx.emit("slice", [base], axis=axis, start=0, end=start, step=1))
    if end != size:
        parts.append(ctx.emit("slice", [base], axis=axis, start=end, end=size, step=1))
    return parts[0] if len(parts) == 1 else ctx.emit("concat", parts, axis=axis)


def _strided_scatter(ctx, base: Value, src: Value, axis: int, start, end, step) -> Value:
    # base[start:end:step] = src along axis (Qwen3-VL's interleaved rotary sections): a
    # scatter at positions arange(start, end, step), broadcast over src's other dims.
    positions = ctx.emit("arange", [], start=start, end=end, step=step, dtype=DType.int64)
    line = tuple(positions.shape[0] if a == axis else 1 for a in range(src.rank))
    index = ctx.emit("reshape", [positions], shape=line)
    index = ctx.emit("expand", [index], shape=tuple(src.shape))
    return ctx.emit("scatter_elements", [base, index, src], axis=axis)


@aten("select_scatter.default")
def _select_scatter(ctx, base, src, dim, index):
    base = ctx.value(base)
    axis = norm_dim(dim, base.rank)
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
    return ctx.emit("gather_elements", [x, index], axis=norm_dim(dim, x.rank))


@aten("diff.default")
def _diff(ctx, x, n=1, dim=-1, prepend=None, append=None):
    x = ctx.value(x)
    axis = norm_dim(dim, x.rank)
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
    return ctx.emit(
        "gather", [x, ctx.cast(ctx.value(index), DType.int64)], axis=norm_dim(dim, x.rank)
    )


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
    return ctx.emit("concat", xs, axis=norm_dim(dim, out.rank))


@aten("stack.default")
def _stack(ctx, tensors, dim=0):
    xs = [ctx.value(t) for t in tensors]
    axis = norm_dim(dim, xs[0].rank + 1)
    parts = [ctx.emit("unsqueeze", [x], axes=(axis,)) for x in xs]
    return ctx.emit("concat", parts, axis=axis)


def _split_outputs(ctx, x, axis: int, sizes: tuple) -> list[Value]:
    node = ctx.emit_node("split", [x], axis=axis, sizes=sizes)
    return list(node.outputs)


@aten("split.Tensor", "split_with_sizes.default", "chunk.default", "tensor_split.sections")
def _split(ctx, x, split, dim=0):
    x = ctx.value(x)
    axis = norm_dim(dim, x.rank)
    sizes = tuple(ctx.symbols.convert(v.shape[axis]) for v in ctx.node.meta["val"])
    return _split_outputs(ctx, x, axis, sizes)


@aten("unbind.int")
def _unbind(ctx, x, dim=0):
    # The outputs lack the unbound axis: one size-1 piece per index, each squeezed.
    x = ctx.value(x)
    axis = norm_dim(dim, x.rank)
    count = x.shape[axis]
    if not isinstance(count, int):
        raise UnsupportedError(f"unbind over a symbolic dim {count}")
    pieces = _split_outputs(ctx, x, axis, (1,) * count)
    return [ctx.emit("squeeze", [p], axes=(axis,)) for p in pieces]


@aten("repeat_interleave.self_int")
def _repeat_interleave(ctx, x, repeats, dim=None, output_size=None):
    x = ctx.value(x)
    if dim is None:
        raise UnsupportedError("repeat_interleave without dim")
    axis = norm_dim(dim, x.rank)
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


@aten("tile.default")
def _tile(ctx, x, dims):
    # torch.tile: repeat, with dims padded by leading 1s when fewer than x's rank
    dims = tuple(ctx.value(dims))
    return _repeat(ctx, x, (1,) * (ctx.value(x).rank - len(dims)) + dims)


@aten("pad.default")
def _pad_mode(ctx, x, pad, mode="constant", value=None):
    if mode != "constant":
        raise UnsupportedError(f"pad mode {mode!r} (only 'constant')")
    return _pad(ctx, x, pad, value)


@aten("constant_pad_nd.default")
def _pad(ctx, x, pad, value=0.0):
    x = ctx.value(x)
    pad = ctx.value(pad)  # entries may be symbolic sizes (max(0, n - seq))
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


@aten("roll.default")
def _roll(ctx, x, shifts, dims=()):
    # roll by k along a dim of size n: concat(x[n-k:], x[:n-k]); a symbolic n needs |k| < n.
    x = ctx.value(x)
    shifts, dims = list(ctx.value(shifts)), list(dims)
    if not dims:  # flattened, rolled, and shaped back
        flat = ctx.emit("reshape", [x], shape=(numel(x.shape),))
        return ctx.emit("reshape", [_roll_axis(ctx, flat, shifts[0], 0)], shape=x.shape)
    for shift, dim in zip(shifts, dims):
        x = _roll_axis(ctx, x, shift, norm_dim(dim, x.rank))
    return x if x.producer is not None else ctx.emit("identity", [x])


def _roll_axis(ctx, x: Value, shift: Any, axis: int) -> Value:
    size = x.shape[axis]
    if isinstance(size, int):
        shift = shift % size if size else 0
    elif isinstance(shift, int) and shift < 0:
        shift = size + shift
    if isinstance(shift, int) and shift == 0:
        return x
    cut = size - shift
    tail = ctx.emit("slice", [x], axis=axis, start=cut, end=size, step=1)
    head = ctx.emit("slice", [x], axis=axis, start=0, end=cut, step=1)
    return ctx.emit("concat", [tail, head], axis=axis)
