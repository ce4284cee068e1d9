"""Conversions between torch and IR tensors and dtypes, shared by the frontend and backends.

The frontend and every backend need the same dtype tables and array <-> tensor copies; they
live here so that a backend never imports the frontend.
"""

from __future__ import annotations

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
