"""Element types of IR values, with their NumPy counterparts."""

from __future__ import annotations

import enum

import numpy as np

try:  # bfloat16 for NumPy; optional (it ships with onnx).
    import ml_dtypes

    _BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - exercised only without ml_dtypes
    _BF16 = None


class DType(enum.Enum):
    """An IR element type. ``str(dtype)`` is the short name used in dumps (``f32``)."""

    float32 = "f32"
    float16 = "f16"
    bfloat16 = "bf16"
    float64 = "f64"
    int64 = "i64"
    int32 = "i32"
    int16 = "i16"
    int8 = "i8"
    uint8 = "u8"
    bool = "bool"

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"DType.{self.name}"

    @property
    def is_float(self) -> bool:
        return self in (DType.float32, DType.float16, DType.bfloat16, DType.float64)

    @property
    def is_int(self) -> bool:
        return self in (DType.int64, DType.int32, DType.int16, DType.int8, DType.uint8)

    @property
    def numpy(self) -> np.dtype:
        if self is DType.bfloat16:
            if _BF16 is None:
                raise TypeError("bfloat16 needs the ml_dtypes package")
            return _BF16
        return np.dtype(_TO_NUMPY[self])

    @staticmethod
    def from_numpy(dtype: np.dtype) -> DType:
        dtype = np.dtype(dtype)
        if _BF16 is not None and dtype == _BF16:
            return DType.bfloat16
        try:
            return _FROM_NUMPY[dtype.name]
        except KeyError:
            raise TypeError(f"NumPy dtype {dtype} has no IR dtype") from None

    @staticmethod
    def parse(text: str) -> DType:
        """The DType whose short name (``f32``) or long name (``float32``) is ``text``."""
        for d in DType:
            if text in (d.value, d.name):
                return d
        raise ValueError(f"unknown dtype {text!r}")


_TO_NUMPY = {
    DType.float32: "float32",
    DType.float16: "float16",
    DType.float64: "float64",
    DType.int64: "int64",
    DType.int32: "int32",
    DType.int16: "int16",
    DType.int8: "int8",
    DType.uint8: "uint8",
    DType.bool: "bool",
}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items()}


def promote(a: DType, b: DType) -> DType:
    """Result type of a binary op on two tensors (torch's rules for same-category tensors)."""
    if a == b:
        return a
    order = [
        DType.bool,
        DType.uint8,
        DType.int8,
        DType.int16,
        DType.int32,
        DType.int64,
        DType.float16,
        DType.bfloat16,
        DType.float32,
        DType.float64,
    ]
    if {a, b} == {DType.float16, DType.bfloat16}:
        return DType.float32
    return max(a, b, key=order.index)
