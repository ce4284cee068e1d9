"""Conversions between torch and IR tensors and dtypes, shared by the frontend and backends.

The frontend and every backend need the same dtype tables and array <-> tensor copies; they
live here so that a backend never imports the frontend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from tgraph.ir import DType

_TORCH_TO_IR = {
    torch.float32: DType.float32,
    torch.float16: DType.float16,
    torch.bfloat16: DType.bfloat16,
    torch.float64: DType.float64,
    torch.int64: DType.int64,
    torch.int32: DType.int32,
    torch.int16: DType.int16,
    torch.int8: DType.int8,
    torch.uint8: DType.uint8,
    torch.bool: DType.bool,
}
_IR_TO_TORCH = {v: k for k, v in _TORCH_TO_IR.items()}


class DTypeError(TypeError):
    """A torch dtype without a tgraph dtype."""


def ir_dtype(dtype: torch.dtype) -> DType:
    try:
        return _TORCH_TO_IR[dtype]
    except KeyError:
        raise DTypeError(f"torch dtype {dtype} has no tgraph dtype") from None


def torch_dtype(dtype: DType) -> torch.dtype:
    return _IR_TO_TORCH[dtype]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A NumPy copy of a tensor (bf16 goes through ml_dtypes' bfloat16)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(DType.bfloat16.numpy).copy()
    return t.numpy().copy()


def shared_view(t: torch.Tensor) -> np.ndarray:
    """A read-only NumPy view of a CPU tensor's memory, no copy (a copy for other devices).

    The frontend makes the graph's weights this way, so a traced model costs no second copy
    of its parameters: the graph reads the model's own storage (the IR never writes to a
    constant). A model whose weights change in place after tracing changes the graph's
    constants too; trace a copy of the model to keep a snapshot.
    """
    t = t.detach()
    if t.device.type != "cpu" or t.is_conj() or t.is_neg():
        array = to_numpy(t)
    elif t.dtype == torch.bfloat16:
        array = t.view(torch.int16).numpy().view(DType.bfloat16.numpy)
    else:
        array = t.numpy()
    array.setflags(write=False)
    return array


def to_torch(a: np.ndarray) -> torch.Tensor:
    """A tensor for an array (shares memory when the array is writable, else copies)."""
    if not a.flags.writeable:
        a = a.copy()
    # np.ascontiguousarray makes 0-d arrays 1-d: restore the shape.
    if a.dtype.name == "bfloat16":
        bits = np.ascontiguousarray(a).view(np.int16).reshape(a.shape)
        return torch.from_numpy(bits).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a).reshape(a.shape))


@contextlib.contextmanager
def small_pages() -> Iterator[None]:
    """NumPy arrays allocated inside get ordinary 4 KiB pages, not transparent huge pages.

    NumPy asks the kernel for huge pages (``madvise(MADV_HUGEPAGE)``) on every large array.
    Where THP defrag is ``madvise`` (the default of most distributions) each first touch of
    such an array may stall on direct compaction: filling fresh memory ran at 150-170 MB/s
    here against 1.7 GB/s without the hint, and compile writes GBs of new arrays (merged
    weights, packed low-bit codes). The previous setting is restored on exit.
    """
    core = getattr(np, "_core", None) or np.core
    toggle = getattr(core.multiarray, "_set_madvise_hugepage", None)
    if toggle is None:
        yield
        return
    before = toggle(False)
    try:
        yield
    finally:
        toggle(before)
