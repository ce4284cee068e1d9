"""Reductions over axes: sum, mean, max, min, logsumexp, var, argmax, cumsum, topk."""

from __future__ import annotations

import numpy as np

from tgraph.ir.core import TensorType
from tgraph.ir.dtypes import DType

from .registry import REQUIRED, defop
from .shapes import norm_axes, norm_axis


def _reduced_shape(shape, axes, keepdim, op):
    axes = norm_axes(axes, len(shape), op) if axes else tuple(range(len(shape)))
    if keepdim:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _np_axes(x: np.ndarray, axes) -> tuple[int, ...] | None:
    return tuple(a % x.ndim for a in axes) if axes else None


def _make_reduce(name: str, fn, doc: str) -> None:
    def infer(x: TensorType, axes, keepdim) -> TensorType:
        return TensorType(x.dtype, _reduced_shape(x.shape, axes, keepdim, name))

    def kernel(x: np.ndarray, axes, keepdim) -> np.ndarray:
        return np.asarray(fn(x, axis=_np_axes(x, axes), keepdims=keepdim)).astype(x.dtype)

    defop(
        name,
        infer=infer,
        kernel=kernel,
        attrs={"axes": (), "keepdim": False},
        doc=f"{doc} over `axes` (all axes when empty).",
    )


_make_reduce("reduce_sum", np.sum, "Sum")
_make_reduce("reduce_mean", np.mean, "Mean")
_make_reduce("reduce_max", np.max, "Maximum")
_make_reduce("reduce_min", np.min, "Minimum")
_make_reduce("reduce_prod", np.prod, "Product")


def _logsumexp_kernel(x: np.ndarray, axes, keepdim) -> np.ndarray:
    # log(sum(exp(x - m))) + m with m the max over the axes; an infinite m (a row of -inf)
    # shifts by 0 instead, so the row gives -inf, not nan (torch's rule).
    axis = _np_axes(x, axes)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isinf(m), 0, m)
    with np.errstate(divide="ignore"):  # log(0) = -inf for a row of -inf, as intended
        y = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return (y if keepdim else np.squeeze(y, axis=axis)).astype(x.dtype)


defop(
    "logsumexp",
    infer=lambda x, axes, keepdim: TensorType(
        x.dtype, _reduced_shape(x.shape, axes, keepdim, "logsumexp")
    ),
    kernel=_logsumexp_kernel,
    attrs={"axes": (), "keepdim": False},
    doc="log(sum(exp(x))) over `axes` (all when empty), computed from x - max(x).",
)


def _var_kernel(x: np.ndarray, axes, correction, keepdim) -> np.ndarray:
    return np.asarray(np.var(x, axis=_np_axes(x, axes), ddof=correction, keepdims=keepdim)).astype(
        x.dtype
    )


defop(
    "var",
    infer=lambda x, axes, correction, keepdim: TensorType(
        x.dtype, _reduced_shape(x.shape, axes, keepdim, "var")
    ),
    kernel=_var_kernel,
    attrs={"axes": (), "correction": 0, "keepdim": False},
    doc="Variance over `axes` with `correction` (0: population, 1: unbiased).",
)


def _argmax_infer(x: TensorType, axis, keepdim) -> TensorType:
    return TensorType(DType.int64, _reduced_shape(x.shape, (axis,), keepdim, "argmax"))


defop(
    "argmax",
    infer=_argmax_infer,
    kernel=lambda x, axis, keepdim: np.asarray(np.argmax(x, axis=axis, keepdims=keepdim)).astype(
        np.int64
    ),
    attrs={"axis": REQUIRED, "keepdim": False},
    doc="Index of the largest value along `axis`.",
)


def _cumsum_infer(x: TensorType, axis, dtype) -> TensorType:
    norm_axis(axis, x.rank, "cumsum")
    return TensorType(dtype or x.dtype, x.shape)


defop(
    "cumsum",
    infer=_cumsum_infer,
    kernel=lambda x, axis, dtype: np.cumsum(x, axis=axis).astype(dtype.numpy if dtype else x.dtype),
    attrs={"axis": REQUIRED, "dtype": None},
    doc="Running sum along `axis`.",
)


def _topk_infer(x: TensorType, k, axis, largest, sorted) -> list[TensorType]:
    axis = norm_axis(axis, x.rank, "topk")
    shape = tuple(k if a == axis else d for a, d in enumerate(x.shape))
    return [TensorType(x.dtype, shape), TensorType(DType.int64, shape)]


def _topk_kernel(x, k, axis, largest, sorted):
    # A stable sort of -x (largest) keeps the lower index first among equal values.
    order = np.argsort(-x if largest else x, axis=axis, kind="stable")
    index = np.take(order, np.arange(k), axis=axis).astype(np.int64)
    return np.take_along_axis(x, index, axis=axis), index


defop(
    "topk",
    infer=_topk_infer,
    kernel=_topk_kernel,
    attrs={"k": REQUIRED, "axis": -1, "largest": True, "sorted": True},
    doc="The k largest (or smallest) values along `axis`, in order, and their int64 indices.",
)
