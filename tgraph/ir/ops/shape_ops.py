"""Data-movement ops: reshape, permute, expand, slice, concat, split, squeeze, gather, ..."""

from __future__ import annotations

import math

import numpy as np

from tgraph.ir.core import IRError, TensorType
from tgraph.ir.dims import SymDim, simplify
from tgraph.ir.dtypes import DType

from .registry import REQUIRED, defop
from .shapes import broadcast_dim, norm_axes, norm_axis, numel, slice_bound, slice_len


def _reshape_infer(x: TensorType, shape) -> TensorType:
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise IRError(f"reshape: target shape {shape} has a negative dim; resolve -1 first")
    a, b = numel(x.shape), numel(shape)
    if not isinstance(a, SymDim) and not isinstance(b, SymDim) and a != b:
        raise IRError(f"reshape: cannot reshape {x.shape} ({a} elements) to {shape} ({b})")
    return TensorType(x.dtype, tuple(shape))


defop(
    "reshape",
    infer=_reshape_infer,
    kernel=lambda x, shape: np.reshape(x, shape),
    attrs={"shape": REQUIRED},
    doc="View the data with a new shape (dims may be symbolic).",
)


def _permute_infer(x: TensorType, perm) -> TensorType:
    if sorted(perm) != list(range(x.rank)):
        raise IRError(f"permute: {perm} is not a permutation of {x.rank} axes")
    return TensorType(x.dtype, tuple(x.shape[p] for p in perm))


defop(
    "permute",
    infer=_permute_infer,
    kernel=lambda x, perm: np.transpose(x, perm),
    attrs={"perm": REQUIRED},
    doc="Reorder axes: out.shape[i] = x.shape[perm[i]].",
)


def _expand_infer(x: TensorType, shape) -> TensorType:
    if len(shape) < x.rank:
        raise IRError(f"expand: target rank {len(shape)} is below input rank {x.rank}")
    padded = (1,) * (len(shape) - x.rank) + tuple(x.shape)
    out = []
    for have, want in zip(padded, shape):
        if have != 1 and have != want:
            broadcast_dim(have, want, "expand")
        out.append(want)
    return TensorType(x.dtype, tuple(out))


defop(
    "expand",
    infer=_expand_infer,
    kernel=lambda x, shape: np.broadcast_to(x, shape),
    attrs={"shape": REQUIRED},
    doc="Broadcast size-1 dims to `shape`.",
)


def _slice_infer(x: TensorType, axis, start, end, step) -> TensorType:
    axis = norm_axis(axis, x.rank, "slice")
    shape = list(x.shape)
    size = x.shape[axis]
    # Python's rules for negative / out-of-range ints, as the kernels slice
    shape[axis] = slice_len(size, slice_bound(start, size), slice_bound(end, size), step)
    return TensorType(x.dtype, tuple(shape))


def _slice_kernel(x: np.ndarray, axis, start, end, step) -> np.ndarray:
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, end, step)
    return x[tuple(index)]


defop(
    "slice",
    infer=_slice_infer,
    kernel=_slice_kernel,
    attrs={"axis": REQUIRED, "start": 0, "end": REQUIRED, "step": 1},
    doc="x[start:end:step] along `axis`; start and end are in range (the frontend clamps them).",
)


def _concat_infer(*xs: TensorType, axis) -> TensorType:
    rank = xs[0].rank
    axis = norm_axis(axis, rank, "concat")
    total = 0
    for x in xs:
        if x.rank != rank:
            raise IRError(f"concat: ranks differ ({rank} and {x.rank})")
        total = total + x.shape[axis]
    shape = list(xs[0].shape)
    shape[axis] = simplify(total)
    return TensorType(xs[0].dtype, tuple(shape))


defop(
    "concat",
    infer=_concat_infer,
    kernel=lambda *xs, axis: np.concatenate(xs, axis=axis),
    attrs={"axis": REQUIRED},
    inputs=(1, 1 << 16),
    doc="Join tensors along `axis`.",
)


def _split_infer(x: TensorType, axis, sizes) -> list[TensorType]:
    axis = norm_axis(axis, x.rank, "split")
    out = []
    for s in sizes:
        shape = list(x.shape)
        shape[axis] = s
        out.append(TensorType(x.dtype, tuple(shape)))
    return out


def _split_kernel(x: np.ndarray, axis, sizes) -> tuple[np.ndarray, ...]:
    bounds = np.cumsum([0, *sizes])
    return tuple(_slice_kernel(x, axis, int(a), int(b), 1) for a, b in zip(bounds, bounds[1:]))


defop(
    "split",
    infer=_split_infer,
    kernel=_split_kernel,
    attrs={"axis": REQUIRED, "sizes": REQUIRED},
    doc="Cut `axis` into consecutive pieces of the given sizes (one output each).",
)


def _squeeze_infer(x: TensorType, axes) -> TensorType:
    axes = norm_axes(axes, x.rank, "squeeze")
    for a in axes:
        if x.shape[a] != 1:
            raise IRError(f"squeeze: dim {a} has size {x.shape[a]}, not 1")
    return TensorType(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in axes))


defop(
    "squeeze",
    infer=_squeeze_infer,
    kernel=lambda x, axes: np.squeeze(x, axis=tuple(a % x.ndim for a in axes)),
    attrs={"axes": REQUIRED},
    doc="Drop size-1 dims.",
)


def _unsqueeze_infer(x: TensorType, axes) -> TensorType:
    rank = x.rank + len(axes)
    axes = norm_axes(axes, rank, "unsqueeze")
    it = iter(x.shape)
    return TensorType(x.dtype, tuple(1 if i in axes else next(it) for i in range(rank)))


def _unsqueeze_kernel(x: np.ndarray, axes) -> np.ndarray:
    rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(a % rank for a in axes)))


defop(
    "unsqueeze",
    infer=_unsqueeze_infer,
    kernel=_unsqueeze_kernel,
    attrs={"axes": REQUIRED},
    doc="Insert size-1 dims at `axes` (positions in the output).",
)


def _gather_infer(x: TensorType, index: TensorType, axis) -> TensorType:
    axis = norm_axis(axis, x.rank, "gather")
    if index.dtype not in (DType.int64, DType.int32):
        raise IRError(f"gather: index dtype is {index.dtype}, want i64 or i32")
    return TensorType(
        x.dtype, tuple(x.shape[:axis]) + tuple(index.shape) + tuple(x.shape[axis + 1 :])
    )


defop(
    "gather",
    infer=_gather_infer,
    kernel=lambda x, index, axis: np.take(x, index, axis=axis),
    attrs={"axis": 0},
    inputs=2,
    doc="Pick entries along `axis` by an index tensor (embedding lookup, select).",
)


def _tri_kernel(fn):
    return lambda x, diagonal: fn(x, k=diagonal).astype(x.dtype)


defop(
    "tril",
    infer=lambda x, diagonal: x,
    kernel=_tri_kernel(np.tril),
    attrs={"diagonal": 0},
    doc="Zero the entries above the `diagonal` of the last two dims.",
)
defop(
    "triu",
    infer=lambda x, diagonal: x,
    kernel=_tri_kernel(np.triu),
    attrs={"diagonal": 0},
    doc="Zero the entries below the `diagonal` of the last two dims.",
)


def _arange_infer(start, end, step, dtype) -> TensorType:
    if isinstance(start, float) or isinstance(end, float) or isinstance(step, float):
        return TensorType(dtype, (max(0, math.ceil((end - start) / step)),))
    if isinstance(step, int) and step < 0:  # range(a, b, -k) is as long as range(b, a, k)
        return TensorType(dtype, (slice_len(0, end, start, -step),))
    return TensorType(dtype, (slice_len(0, start, end, step),))


defop(
    "arange",
    infer=_arange_infer,
    kernel=lambda start, end, step, dtype: np.arange(start, end, step).astype(dtype.numpy),
    attrs={"start": 0, "end": REQUIRED, "step": 1, "dtype": DType.int64},
    inputs=0,
    doc="[start, start+step, ...) below `end` (bounds may be symbolic).",
)
defop(
    "full",
    infer=lambda shape, value, dtype: TensorType(dtype, tuple(shape)),
    kernel=lambda shape, value, dtype: np.full(shape, value, dtype=dtype.numpy),
    attrs={"shape": REQUIRED, "value": REQUIRED, "dtype": DType.float32},
    inputs=0,
    doc="A tensor of `shape` filled with `value`.",
)


def _pad_infer(x: TensorType, pads, value) -> TensorType:
    if len(pads) != 2 * x.rank:
        raise IRError(f"pad: want {2 * x.rank} pad amounts (begin, end per dim), got {len(pads)}")
    shape = tuple(simplify(d + pads[2 * i] + pads[2 * i + 1]) for i, d in enumerate(x.shape))
    return TensorType(x.dtype, shape)


defop(
    "pad",
    infer=_pad_infer,
    kernel=lambda x, pads, value: np.pad(
        x, [(pads[2 * i], pads[2 * i + 1]) for i in range(x.ndim)], constant_values=value
    ),
    attrs={"pads": REQUIRED, "value": 0.0},
    doc="Constant padding: `pads` holds (begin, end) for each dim in order.",
)


def _index_infer(x: TensorType, *indices: TensorType, axis) -> TensorType:
    from .shapes import broadcast_shapes

    if axis + len(indices) > x.rank:
        raise IRError(f"index: {len(indices)} index tensors from axis {axis} exceed rank {x.rank}")
    for ix in indices:
        if ix.dtype not in (DType.int64, DType.int32):
            raise IRError(f"index: index dtype is {ix.dtype}, want i64 or i32")
    middle = broadcast_shapes(*(ix.shape for ix in indices), op="index")
    return TensorType(
        x.dtype, tuple(x.shape[:axis]) + middle + tuple(x.shape[axis + len(indices) :])
    )


defop(
    "index",
    infer=_index_infer,
    kernel=lambda x, *indices, axis: x[(slice(None),) * axis + tuple(indices)],
    attrs={"axis": 0},
    inputs=(2, 64),
    doc="Advanced indexing: x[..., i0, i1, ...] on consecutive dims from `axis`, indices broadcast.",
)


def _crop_to(x: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """torch.gather lets the index be smaller than x on the other dims: crop x to it."""
    return x[tuple(slice(None) if d == axis % x.ndim else slice(0, n) for d, n in enumerate(shape))]


def _gather_elements_infer(x: TensorType, index: TensorType, axis) -> TensorType:
    norm_axis(axis, x.rank, "gather_elements")
    if index.rank != x.rank:
        raise IRError(f"gather_elements: index rank {index.rank} != input rank {x.rank}")
    return TensorType(x.dtype, tuple(index.shape))


defop(
    "gather_elements",
    infer=_gather_elements_infer,
    kernel=lambda x, index, axis: np.take_along_axis(
        _crop_to(x, index.shape, axis), index, axis=axis
    ),
    attrs={"axis": REQUIRED},
    inputs=2,
    doc="out[i][j] = x[index[i][j]][j] along `axis` (torch.gather).",
)
