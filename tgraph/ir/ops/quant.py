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

``linear_int8w``: weight-only int8. ``w`` holds symmetric int8 weights (N, K), ``w_scale``
one fp32 scale per output channel; the layer is ``x @ (w * w_scale[:, None]).T + b``.

``compute`` (``linear_int4`` and ``linear_int8w``): ``"f32"`` multiplies the fp32
activations by the dequantized weight. ``"int8"`` first rounds the activations to int8,
per row and block of ``block_size`` inputs (the last block padded with zeros)::

    s  = max|x_block| / 127             (codes 0 where the block is all zero)
    x' = round(x_block * (1 / s)) * s   half to even

and then multiplies ``x'`` in fp32. That is what ONNX Runtime's ``MatMulNBits`` computes
with ``accuracy_level=4`` (int8 products, 4-8x faster at decode on an AVX2 CPU), so the
reference interpreter and the accuracy budget see the error the fast kernel makes.

``embedding_int8(table, scale, ids)``: a lookup in an int8 table (V, C) with one fp32
scale per row: ``table[ids] * scale[ids, None]``.

``embedding_int4(codes, scales, ids)``: a lookup in a table of 4-bit codes packed like
``linear_int4``'s weight, (V, blocks, block/2) u8 with one fp32 scale per (row, block):
``unpack_int4(codes, scales, dim)[ids]``, attribute ``dim`` = C.

All kernels are written from these definitions so the reference interpreter checks the
backends' integer paths (ONNX Runtime's MatMulInteger and MatMulNBits, torch's packed
kernels).
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


def _per_channel_int8(op: str, x, w, w_scale, b) -> TensorType:
    """The output type of ``op(x, w, w_scale, b)`` with i8 (N, K) weights and one f32 scale per
    output channel, after checking each operand."""
    if w.dtype != DType.int8 or w.rank != 2:
        raise IRError(f"{op}: weight must be i8 of rank 2 (N, K), got {w.dtype} rank {w.rank}")
    n, k = w.shape
    if w_scale.dtype != DType.float32 or tuple(w_scale.shape) != (n,):
        raise IRError(f"{op}: w_scale must be f32 of shape ({n},)")
    _check_x(op, x, k)
    _check_bias(op, b, n)
    return TensorType(DType.float32, tuple(x.shape[:-1]) + (n,))


def _int8_infer(x, w, w_scale, b) -> TensorType:
    return _per_channel_int8("linear_int8", x, w, w_scale, b)


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


COMPUTE = ("f32", "int8")  # the ``compute`` attribute of the weight-only linears


def _check_compute(op: str, compute: str, block_size: int) -> None:
    if compute not in COMPUTE:
        raise IRError(f"{op}: compute={compute!r}, want one of {', '.join(COMPUTE)}")
    if block_size < 16 or block_size & (block_size - 1):
        raise IRError(f"{op}: block_size={block_size}, want a power of two >= 16")


def quantize_activations(x: np.ndarray, block_size: int) -> np.ndarray:
    """``x`` rounded to int8 per row and block of ``block_size`` (``compute="int8"``)."""
    x = x.astype(np.float32)
    k = x.shape[-1]
    blocks = -(-k // block_size)
    padded = np.zeros((*x.shape[:-1], blocks * block_size), np.float32)
    padded[..., :k] = x
    grouped = padded.reshape(*x.shape[:-1], blocks, block_size)
    s = (np.abs(grouped).max(axis=-1, keepdims=True) / np.float32(INT8_MAX)).astype(np.float32)
    inv = np.divide(np.float32(1), s, out=np.zeros_like(s), where=s > 0)
    q = np.round(grouped * inv) * s
    return q.reshape(padded.shape)[..., :k].astype(np.float32)


def _weight_only(x, w_fp32, b, compute, block_size) -> np.ndarray:
    if compute == "int8":
        x = quantize_activations(x, block_size)
    y = np.matmul(x.astype(np.float32), w_fp32.T)
    return (y + b).astype(np.float32) if b is not None else y.astype(np.float32)


def _int4_infer(x, w, scales, b, block_size, in_features, compute="f32") -> TensorType:
    _check_compute("linear_int4", compute, block_size)
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


def int4_linear_reference(x, w, scales, b, block_size, in_features, compute="f32") -> np.ndarray:
    return _weight_only(x, unpack_int4(w, scales, in_features), b, compute, block_size)


defop(
    "linear_int4",
    infer=_int4_infer,
    kernel=int4_linear_reference,
    attrs={"block_size": REQUIRED, "in_features": REQUIRED, "compute": "f32"},
    inputs=(3, 4),
    doc="Weight-only int4 linear: block-wise symmetric 4-bit weights, fp32 or int8 compute.",
)


def _int8w_infer(x, w, w_scale, b, compute="f32", block_size=128) -> TensorType:
    _check_compute("linear_int8w", compute, block_size)
    return _per_channel_int8("linear_int8w", x, w, w_scale, b)


def int8w_linear_reference(x, w, w_scale, b, compute="f32", block_size=128) -> np.ndarray:
    deq = w.astype(np.float32) * w_scale.astype(np.float32)[:, None]
    return _weight_only(x, deq, b, compute, block_size)


defop(
    "linear_int8w",
    infer=_int8w_infer,
    kernel=int8w_linear_reference,
    attrs={"compute": "f32", "block_size": 128},
    inputs=(3, 4),
    doc="Weight-only int8 linear: int8 weights per output channel, fp32 or int8 compute.",
)


def _embedding_infer(table, scale, ids) -> TensorType:
    if table.dtype != DType.int8 or table.rank != 2:
        raise IRError(f"embedding_int8: table must be i8 (V, C), got {table.dtype}{table.shape}")
    if scale.dtype != DType.float32 or tuple(scale.shape) != (table.shape[0],):
        raise IRError(f"embedding_int8: scale must be f32 of shape ({table.shape[0]},)")
    if ids.dtype not in (DType.int64, DType.int32):
        raise IRError(f"embedding_int8: ids dtype {ids.dtype}, want i64 or i32")
    return TensorType(DType.float32, tuple(ids.shape) + (table.shape[1],))


def _embedding_kernel(table, scale, ids) -> np.ndarray:
    return (table[ids].astype(np.float32) * scale[ids][..., None]).astype(np.float32)


defop(
    "embedding_int8",
    infer=_embedding_infer,
    kernel=_embedding_kernel,
    inputs=3,
    doc="Embedding lookup in an int8 table with one fp32 scale per row.",
)


def _embedding_int4_infer(codes, scales, ids, dim) -> TensorType:
    if codes.dtype != DType.uint8 or codes.rank != 3:
        raise IRError(f"embedding_int4: codes must be u8 (V, blocks, block/2), got "
                      f"{codes.dtype}{codes.shape}")  # fmt: skip
    v, blocks, half = codes.shape
    if blocks * half * 2 < dim:
        raise IRError(f"embedding_int4: codes {list(codes.shape)} do not hold {dim} features")
    if scales.dtype != DType.float32 or tuple(scales.shape) != (v, blocks):
        raise IRError(f"embedding_int4: scales must be f32 of shape ({v}, {blocks})")
    if ids.dtype not in (DType.int64, DType.int32):
        raise IRError(f"embedding_int4: ids dtype {ids.dtype}, want i64 or i32")
    return TensorType(DType.float32, tuple(ids.shape) + (dim,))


def _embedding_int4_kernel(codes, scales, ids, dim) -> np.ndarray:
    flat = np.asarray(ids).reshape(-1)
    rows = unpack_int4(codes[flat], scales[flat], dim)
    return rows.reshape(*np.shape(ids), dim).astype(np.float32)


defop(
    "embedding_int4",
    infer=_embedding_int4_infer,
    kernel=_embedding_int4_kernel,
    attrs={"dim": REQUIRED},
    inputs=3,
    doc="Embedding lookup in a block-wise int4 table (codes packed as linear_int4's).",
)
