"""Scatter: ``scatter_elements`` writes ``updates`` into a copy of ``x`` at ``index`` along an
axis (torch.scatter / ONNX ScatterElements, no reduction)."""

from __future__ import annotations

import numpy as np

from tgraph.ir.core import IRError, TensorType

from .registry import REQUIRED, defop
from .shapes import norm_axis


def _scatter_infer(x: TensorType, index: TensorType, updates: TensorType, axis) -> TensorType:
    norm_axis(axis, x.rank, "scatter_elements")
    if not x.rank == index.rank == updates.rank:
        raise IRError(f"scatter_elements: ranks {x.rank}, {index.rank}, {updates.rank} differ")
    if tuple(index.shape) != tuple(updates.shape):
        raise IRError(f"scatter_elements: index {index.shape} and updates {updates.shape} differ")
    if updates.dtype != x.dtype:
        raise IRError(f"scatter_elements: updates {updates.dtype.name}, input {x.dtype.name}")
    return x


def _scatter_kernel(x, index, updates, axis):
    # out[i0..index[i]..in] = updates[i] for every position i of index (which may be smaller
    # than x on the other axes); with repeated targets the last write wins.
    out = x.copy()
    where = list(np.indices(index.shape))
    where[axis % x.ndim] = index
    out[tuple(where)] = updates
    return out


defop(
    "scatter_elements",
    infer=_scatter_infer,
    kernel=_scatter_kernel,
    attrs={"axis": REQUIRED},
    inputs=3,
    doc="A copy of x with out[..index[i]..] = updates[i] along `axis` (torch.scatter).",
)
