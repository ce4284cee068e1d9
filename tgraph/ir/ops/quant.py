"""Compressed linear layers that the quantization passes create.

``linear_int8``: dynamic int8 quantization, weights per output channel, activations per
token. ``w`` holds symmetric int8 weights in [-127, 127] (shape (N, K)), ``w_scale`` one
fp32 scale per output channel. At run time each row ("token") of ``x`` gets its own
symmetric scale ``s = max|x_row| / 127``; the row is rounded (half to even) to integers in
[-127, 127], multiplied with the integer weights exactly (int32 accumulation), and the
product is rescaled::

    s    = max(max|x[..., :]| / 127, tiny)           per row, keepdims
    xq   = round(x / s)                               in [-127, 127]
    y    = ((xq @ w.T) * w_scale) * s (+ b)           fp32

``linear_int4``: weight-only block-wise int4. ``w`` packs two 4-bit codes per byte (low
nibble first) in blocks of ``block_size`` along K: shape (N, K / block_size,
block_size / 2), uint8; the code ``q`` in [0, 15] means ``(q - 8) * scale`` with one fp32
scale per (output channel, block). The layer is ``x @ dequant(w).T + b`` in fp32.

Both kernels are written from these definitions so the reference interpreter checks the
backends' integer paths (ONNX Runtime's MatMulInteger and MatMulNBits, torch's emulation).
"""

from __future__ import annotations

import numpy as np

from tgraph.ir.core import IRError, TensorType
from tgraph.ir.dims import SymDim
from tgraph.ir.dtypes import DType
from tgraph.ir.ops.registry import REQUIRED, defop

# The smallest per-row scale: a row of zeros quantizes to zeros instead of dividing by zero.
TINY_SCALE = 1e-12
INT8_MAX = 127


def _check_x(op: str, x: TensorType, k: object) -> None:
    if x.dtype != DType.float32:
        raise IRError(f"{op}: input dtype {x.dtype}, want f32")
    if x.shape[-1] != k and not isinstance(x.shape[-1], SymDim):
        raise IRError(f"{op}: input features {x.shape[-1]} != weight in_features {k}")


def _check_bias(op: str, b: TensorType | None, n: object) -> None:
    if b is not None and (b.dtype != DType.float32 or tuple(b.shape) != (n,)):
        raise IRError(f"{op}: bias must be f32 of shape ({n},), got {b.dtype}{list(b.shape)}")


def _int8_infer(x, w, w_scale, b) -> TensorType:
    if w.dtype != DType.int8 or w.rank != 2:
        raise IRError(
            f"linear_int8: weight must be i8 of rank 2 (N, K), got {w.dtype} rank {w.rank}"
        )
    n, k = w.shape
    if w_scale.dtype != DType.float32 or tuple(w_scale.shape) != (n,):
        raise IRError(f"linear_int8: w_scale must be f32 of shape ({n},)")
    _check_x("linear_int8", x, k)
    _check_bias("linear_int8", b, n)
    return TensorType(DType.float32, tuple(x.shape[:-1]) + (n,))


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8 codes (as float32 integers) and scales of ``x`` (float32)."""
    x = x.astype(np.float32)
    s = np.maximum(np.abs(x).max(axis=-1, keepdims=True) / np.float32(INT8_MAX), TINY_SCALE)
    s = s.astype(np.float32)
    return np.round(x / s).astype(np.float32), s


def int8_linear_reference(x, w, w_scale, b) -> np.ndarray:
    xq, s = quantize_rows(x)
    acc = np.matmul(xq.astype(np.float64), w.astype(np.float64).T)  # exact below 2**53
    y = (acc.astype(np.float32) * w_scale.astype(np.float32)) * s
    return (y + b).astype(np.float32) if b is not None else y.astype(np.float32)


defop(
    "linear_int8",
    infer=_int8_infer,
    kernel=int8_linear_reference,
    inputs=(3, 4),
    doc="Dynamic int8 linear: int8 weights per output channel, activations per token.",
)


def _int4_infer(x, w, scales, b, block_size, in_features) -> TensorType:
    if w.dtype != DType.uint8 or w.rank != 3:
        raise IRError(f"linear_int4: weight must be u8 of rank 3, got {w.dtype} rank {w.rank}")
    n, blocks, half = w.shape
    if half * 2 != block_size or blocks * block_size < in_features:
        raise IRError(
            f"linear_int4: packed weight {list(w.shape)} does not hold {in_features} features "
            f"in blocks of {block_size}"
        )
    if scales.dtype != DType.float32 or tuple(scales.shape) != (n, blocks):
        raise IRError(f"linear_int4: scales must be f32 of shape ({n}, {blocks})")
    _check_x("linear_int4", x, in_features)
    _check_bias("linear_int4", b, n)
    return TensorType(DType.float32, tuple(x.shape[:-1]) + (n,))


def unpack_int4(w: np.ndarray, scales: np.ndarray, in_features: int) -> np.ndarray:
    """Dequantize packed int4 weights (N, blocks, block/2) to fp32 of shape (N, K)."""
    low = (w & 0x0F).astype(np.int16)
    high = (w >> 4).astype(np.int16)
    codes = np.stack([low, high], axis=-1).reshape(w.shape[0], w.shape[1], -1)  # (N, blocks, B)
    deq = (codes - 8).astype(np.float32) * scales[..., None].astype(np.float32)
    return deq.reshape(w.shape[0], -1)[:, :in_features]


def _int4_kernel(x, w, scales, b, block_size, in_features) -> np.ndarray:
    y = np.matmul(x.astype(np.float32), unpack_int4(w, scales, in_features).T)
    return (y + b).astype(np.float32) if b is not None else y.astype(np.float32)


defop(
    "linear_int4",
    infer=_int4_infer,
    kernel=_int4_kernel,
    attrs={"block_size": REQUIRED, "in_features": REQUIRED},
    inputs=(3, 4),
    doc="Weight-only int4 linear: block-wise symmetric 4-bit weights, fp32 compute.",
)
