"""Elementwise ops: unary math, binary arithmetic and comparison with broadcasting, where, cast."""

from __future__ import annotations

import math

import numpy as np

from tgraph.ir.core import IRError, TensorType
from tgraph.ir.dtypes import DType

from .registry import REQUIRED, defop
from .shapes import broadcast_shapes


def _same(x: TensorType, **_: object) -> TensorType:
    return x


def _erf(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf
    except ImportError:
        erf = np.vectorize(math.erf, otypes=[np.float64])
    return erf(x.astype(np.float64)).astype(x.dtype)


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    x64 = x.astype(np.float64)
    if approximate == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64**3)
        y = 0.5 * x64 * (1.0 + np.tanh(inner))
    else:
        y = 0.5 * x64 * (1.0 + _erf(x64 / math.sqrt(2.0)))
    return y.astype(x.dtype)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return (1.0 / (1.0 + np.exp(-x64))).astype(x.dtype)


_UNARY = {
    "neg": (np.negative, "-x"),
    "abs": (np.abs, "|x|"),
    "exp": (np.exp, "e^x"),
    "log": (np.log, "natural log"),
    "sqrt": (np.sqrt, "square root"),
    "rsqrt": (lambda x: (1.0 / np.sqrt(x.astype(np.float64))).astype(x.dtype), "1/sqrt(x)"),
    "reciprocal": (lambda x: np.reciprocal(x), "1/x"),
    "tanh": (np.tanh, "hyperbolic tangent"),
    "erf": (_erf, "the error function"),
    "sigmoid": (_sigmoid, "1/(1+e^-x)"),
    "relu": (lambda x: np.maximum(x, np.zeros((), x.dtype)), "max(x, 0)"),
    "silu": (lambda x: (x * _sigmoid(x)).astype(x.dtype), "x*sigmoid(x)"),
    "sin": (np.sin, "sine"),
    "cos": (np.cos, "cosine"),
    "floor": (np.floor, "round down"),
    "sign": (np.sign, "sign: -1, 0 or 1"),
    "round": (np.round, "round half to even"),
    "acos": (np.arccos, "arc cosine"),
    "bitwise_not": (np.invert, "bitwise not of integers"),
}

for _name, (_fn, _doc) in _UNARY.items():
    defop(_name, infer=_same, kernel=_fn, doc=f"Elementwise {_doc}.")

defop(
    "gelu",
    infer=_same,
    kernel=_gelu,
    attrs={"approximate": "none"},
    doc="GELU: x*Phi(x); approximate='tanh' is GPT-2's gelu_new.",
)
defop(
    "logical_not",
    infer=lambda x: TensorType(DType.bool, x.shape),
    kernel=np.logical_not,
    doc="Elementwise boolean not.",
)
defop(
    "identity", infer=_same, kernel=lambda x: x, doc="y = x (an alias, clone or contiguous copy)."
)
defop(
    "dropout",
    infer=_same,
    kernel=lambda x, p: x,
    attrs={"p": 0.0},
    doc="Dropout in inference mode: the identity.",
)
defop(
    "cast",
    infer=lambda x, dtype: TensorType(dtype, x.shape),
    kernel=lambda x, dtype: x.astype(dtype.numpy),
    attrs={"dtype": REQUIRED},
    doc="Convert the element type.",
)
defop(
    "clamp",
    infer=_same,
    kernel=lambda x, min, max: np.clip(x, min, max).astype(x.dtype),
    attrs={"min": None, "max": None},
    doc="Clip values to [min, max] (either bound may be None).",
)


def _same_dtype(op: str, *types: TensorType) -> DType:
    # Operands share one dtype: the frontend inserts casts, so backends never promote.
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise IRError(f"{op}: operand dtypes differ ({', '.join(sorted(map(str, dtypes)))})")
    return types[0].dtype


def _binary(x: TensorType, y: TensorType, op: str) -> TensorType:
    return TensorType(_same_dtype(op, x, y), broadcast_shapes(x.shape, y.shape, op=op))


def _compare(x: TensorType, y: TensorType, op: str) -> TensorType:
    _same_dtype(op, x, y)
    return TensorType(DType.bool, broadcast_shapes(x.shape, y.shape, op=op))


def _div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if x.dtype.kind != "f":
        raise TypeError("div on integers: cast to a float type first, or use floor_divide")
    return np.true_divide(x, y)


_BINARY = {
    "add": (np.add, True, "x + y"),
    "sub": (np.subtract, False, "x - y"),
    "mul": (np.multiply, True, "x * y"),
    "div": (_div, False, "x / y (true division)"),
    "floor_divide": (np.floor_divide, False, "floor(x / y)"),
    "remainder": (np.remainder, False, "x mod y (sign of y, like torch.remainder)"),
    "pow": (np.power, False, "x ** y"),
    "maximum": (np.maximum, True, "max(x, y)"),
    "minimum": (np.minimum, True, "min(x, y)"),
    "bitwise_and": (np.bitwise_and, True, "x & y of integers"),
    "bitwise_or": (np.bitwise_or, True, "x | y of integers"),
    "bitwise_xor": (np.bitwise_xor, True, "x ^ y of integers"),
}
_COMPARE = {
    "eq": (np.equal, True, "x == y"),
    "ne": (np.not_equal, True, "x != y"),
    "lt": (np.less, False, "x < y"),
    "le": (np.less_equal, False, "x <= y"),
    "gt": (np.greater, False, "x > y"),
    "ge": (np.greater_equal, False, "x >= y"),
    "logical_and": (np.logical_and, True, "x and y"),
    "logical_or": (np.logical_or, True, "x or y"),
}


def _make_binary(name: str, fn, commutative: bool, doc: str, infer) -> None:
    def kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.asarray(fn(x, y))
        return out.astype(x.dtype, copy=False) if infer is _binary else out

    defop(
        name,
        infer=lambda x, y: infer(x, y, name),
        kernel=kernel,
        inputs=2,
        commutative=commutative,
        doc=f"Elementwise {doc} with broadcasting.",
    )


for _name, (_fn, _comm, _doc) in _BINARY.items():
    _make_binary(_name, _fn, _comm, _doc, _binary)
for _name, (_fn, _comm, _doc) in _COMPARE.items():
    _make_binary(_name, _fn, _comm, _doc, _compare)


def _where_infer(c: TensorType, x: TensorType, y: TensorType) -> TensorType:
    if c.dtype is not DType.bool:
        raise IRError(f"where: condition dtype is {c.dtype}, want bool")
    shape = broadcast_shapes(c.shape, x.shape, y.shape, op="where")
    return TensorType(_same_dtype("where", x, y), shape)


defop(
    "where",
    infer=_where_infer,
    kernel=lambda c, x, y: np.where(c, x, y),
    inputs=3,
    doc="Select x where cond is true, else y, with broadcasting.",
)
