"""Conversions between torch and IR types: dtypes, symbolic sizes, tensors."""

from __future__ import annotations

import numpy as np
import sympy
import torch

from tgraph.ir import DimLike, DType, SymDim, simplify

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


class UnsupportedError(Exception):
    """The model uses something the frontend cannot translate faithfully."""


def ir_dtype(dtype: torch.dtype) -> DType:
    try:
        return _TORCH_TO_IR[dtype]
    except KeyError:
        raise UnsupportedError(f"torch dtype {dtype} has no tgraph dtype") from None


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


class SymbolTable:
    """Maps torch.export's sympy symbols (``s0``, ``s77``) to the IR's named ones."""

    def __init__(self) -> None:
        self.names: dict[sympy.Symbol, str] = {}

    def name(self, sym: sympy.Symbol, name: str) -> None:
        self.names[sym] = name

    def convert(self, expr: object) -> DimLike:
        """An int, torch.SymInt or sympy expression as an IR dim."""
        if isinstance(expr, torch.SymInt):
            expr = expr.node.expr
        if isinstance(expr, (int, np.integer)):
            return int(expr)
        if not isinstance(expr, sympy.Basic):
            raise UnsupportedError(f"cannot read {expr!r} as a dimension")
        return simplify(self._convert(expr))

    def _convert(self, e: sympy.Basic) -> DimLike:
        if isinstance(e, sympy.Integer):
            return int(e)
        if isinstance(e, sympy.Symbol):
            if e not in self.names:
                raise UnsupportedError(f"symbolic size {e} does not come from an input dim")
            return SymDim.symbol(self.names[e])
        if isinstance(e, sympy.Add):
            out: DimLike = 0
            for a in e.args:
                out = out + self._convert(a)
            return out
        if isinstance(e, sympy.Mul):
            out = 1
            for a in e.args:
                out = out * self._convert(a)
            return out
        if isinstance(e, sympy.Pow) and isinstance(e.exp, sympy.Integer) and int(e.exp) > 0:
            base = self._convert(e.base)
            out = 1
            for _ in range(int(e.exp)):
                out = out * base
            return out
        fname = type(e).__name__
        if fname == "FloorDiv":
            return self._convert(e.args[0]) // int(e.args[1])
        if fname in ("Mod", "PythonMod"):
            return self._convert(e.args[0]) % int(e.args[1])
        raise UnsupportedError(f"symbolic size expression {e} ({fname}) is not supported")

    def shape(self, t: torch.Tensor) -> tuple[DimLike, ...]:
        return tuple(self.convert(d) for d in t.shape)
