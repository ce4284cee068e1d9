"""Scatter: ``scatter_elements`` writes ``updates`` into a copy of ``x`` at ``index`` along an
axis (torch.scatter / ONNX ScatterElements, no reduction); ``scatter_reduce`` combines them
with what is there (sum, prod, max or min; torch.scatter_reduce with include_self)."""

from __future__ import annotations

import numpy as np

from tgraph.ir.core import IRError, TensorType

from .registry import REQUIRED, defop
from .shapes import norm_axis


def _scatter_infer(
    x: TensorType, index: TensorType, updates: TensorType, axis, op: str = "scatter_elements"
) -> TensorType:
    norm_axis(axis, x.rank, op)
    if not x.rank == index.rank == updates.rank:
        raise IRError(f"{op}: ranks {x.rank}, {index.rank}, {updates.rank} differ")
    if tuple(index.shape) != tuple(updates.shape):
        raise IRError(f"{op}: index {index.shape} and updates {updates.shape} differ")
    if updates.dtype != x.dtype:
        raise IRError(f"{op}: updates {updates.dtype.name}, input {x.dtype.name}")
    return x


def _targets(x: np.ndarray, index: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
    """Where each position i of index writes: i itself with index[i] on ``axis`` (index may
    be smaller than x on the other axes)."""
    where = list(np.indices(index.shape))
    where[axis % x.ndim] = index
    return tuple(where)


def _scatter_kernel(x, index, updates, axis):
    # out[i0..index[i]..in] = updates[i]; with repeated targets the last write wins.
    out = x.copy()
    out[_targets(x, index, axis)] = updates
    return out


defop(
    "scatter_elements",
    infer=_scatter_infer,
    kernel=_scatter_kernel,
    attrs={"axis": REQUIRED},
    inputs=3,
    doc="A copy of x with out[..index[i]..] = updates[i] along `axis` (torch.scatter).",
)


REDUCTIONS = {"sum": np.add, "prod": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter_reduce_infer(x, index, updates, axis, reduce) -> TensorType:
    if reduce not in REDUCTIONS:
        raise IRError(f"scatter_reduce: reduce {reduce!r}, want one of {tuple(REDUCTIONS)}")
    return _scatter_infer(x, index, updates, axis, op="scatter_reduce")


def _scatter_reduce_kernel(x, index, updates, axis, reduce):
    # out[..index[i]..] = reduce(out[..index[i]..], updates[i]), x included, every repeat
    # of a target applied (ufunc.at does not buffer).
    out = x.copy()
    REDUCTIONS[reduce].at(out, _targets(x, index, axis), updates)
    return out


defop(
    "scatter_reduce",
    infer=_scatter_reduce_infer,
    kernel=_scatter_reduce_kernel,
    attrs={"axis": REQUIRED, "reduce": REQUIRED},
    inputs=3,
    doc="A copy of x combined with updates[i] at out[..index[i]..] along `axis` by `reduce` "
    "(sum, prod, max or min), x's own values included (torch.scatter_reduce, include_self).",
)
