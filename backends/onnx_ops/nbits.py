"""ONNX lowerings of the weight-only ops (``tgraph/ir/ops/quant.py``) to ``MatMulNBits``.

``com.microsoft.MatMulNBits`` computes ``A @ dequant(B).T (+ bias)`` with ``B`` uint8 of
shape (N, k_blocks, block_size * bits / 8), codes packed low bits first along K, one fp32
scale per (column, block) as (N, k_blocks), and the default zero point
``2 ** (bits - 1)`` (8 for 4 bits, 128 for 8 bits) when none is given. A last block that
K does not fill is padded; the kernel never reads past K in A.

``accuracy_level``: ``compute="int8"`` -> 4: ONNX Runtime's CPU kernel rounds A to int8 per
block of ``block_size`` (scale ``max|a| / 127``) and multiplies in integers; that is the IR
op's definition, and on the AVX2 development box it was 4-8x faster at M=1 than level 0
(1024 x 2816, int4: 0.05-0.09 against 0.40 ms; int8: 0.11-0.14 against 8.2 ms, where
level 0 dequantizes the whole weight per call) and faster at M=128 with blocks of 128
(docs/compression.md). ``compute="f32"`` -> 0: dequantize and multiply in fp32.

``linear_int4``: the IR's packing is MatMulNBits' (two codes per byte, low nibble first,
zero point 8), so the graph's own array is ``B``. In an in-memory session with constant
folding on it reaches MatMulNBits through ``BitwiseXor(B, 0)``, which ONNX Runtime folds at
load into an array of its own, prepacks and drops: the graph's array is then load-only and
the generator releases it (an Identity would not do: ORT removes it and reads our array). ``linear_int8w``: symmetric int8 codes ``q`` become ``q + 128`` in blocks of
``block_size`` with the channel's scale repeated per block. In an in-memory session with
constant folding on, that conversion is ONNX ops on the graph's own int8 array (Cast, Add,
Cast, Pad, Reshape) which ONNX Runtime folds at load and drops after prepacking, so no
converted copy stays alive, and the graph's array is load-only (``Lowering.at_load``): the
generator releases it after load; otherwise (files, optimizations off) it is a stored constant.

``embedding_int8``: ``Gather`` of the int8 rows and of their scales, ``Cast``, ``Mul``.
``embedding_int4``: ``com.microsoft.GatherBlockQuantized`` on the codes as (V, C/2), the
reshape folded at load (the graph's array is load-only, like ``linear_int4``'s).
"""

from __future__ import annotations

import numpy as np

from tgraph.backends.onnx_lowering import MS_DOMAIN, ONNX_DTYPE, Lowering, LoweringError
from tgraph.backends.onnx_ops.base import lowers
from tgraph.backends.onnx_ops.quant import const_input
from tgraph.ir import DType, Node

ACCURACY_LEVEL = {"f32": 0, "int8": 4}


def _matmul_nbits(
    ctx: Lowering, node: Node, x: str, b_u8: str, scales: str, bias: str, **attrs
) -> str:
    """``scales``: an f32 (N, k_blocks) initializer (ORT 1.32 takes it 2-D: no flat copy)."""
    if node.inputs[0].dtype != DType.float32:
        raise LoweringError(f"{node.op} %{node.name}: input must be f32")
    return ctx.op(
        "MatMulNBits",
        [x, b_u8, scales, "", "", bias] if bias else [x, b_u8, scales],
        domain=MS_DOMAIN,
        accuracy_level=ACCURACY_LEVEL[node.attrs["compute"]],
        **attrs,
    )


@lowers("linear_int4")
def _linear_int4(ctx: Lowering, node: Node, x: str, w: str, scales: str, b: str = "") -> str:
    codes = const_input(node, 1)
    n, blocks, _ = codes.shape
    if ctx.external is not None and ctx.fold_at_load and codes.nbytes >= 4096:
        w = ctx.at_load(ctx.op("BitwiseXor", [w, ctx.const(np.uint8(0))]))
    return _matmul_nbits(
        ctx, node, x, w, scales, b,
        K=node.attrs["in_features"], N=n, bits=4, block_size=node.attrs["block_size"],
    )  # fmt: skip


@lowers("linear_int8w")
def _linear_int8w(ctx: Lowering, node: Node, x: str, w: str, w_scale: str, b: str = "") -> str:
    codes = const_input(node, 1)  # (N, K) int8
    n, k = codes.shape
    block = node.attrs["block_size"]
    blocks = -(-k // block)
    scales = ctx.const(np.repeat(const_input(node, 2).astype(np.float32)[:, None], blocks, axis=1))
    if ctx.external is not None and ctx.fold_at_load and codes.nbytes >= 4096:
        fold = ctx.at_load  # every node here reads constants only
        wide = fold(ctx.op("Cast", [w], to=ONNX_DTYPE[DType.int16]))
        shifted = fold(ctx.op("Add", [wide, ctx.const(np.int16(128))]))
        u8 = fold(ctx.op("Cast", [shifted], to=ONNX_DTYPE[DType.uint8]))
        if blocks * block != k:
            pads = ctx.ints([0, 0, 0, blocks * block - k])
            u8 = fold(ctx.op("Pad", [u8, pads, ctx.const(np.uint8(128))]))
        b_u8 = fold(ctx.op("Reshape", [u8, ctx.ints([n, blocks, block])]))
    else:
        padded = np.full((n, blocks * block), 128, np.uint8)
        padded[:, :k] = (codes.astype(np.int16) + 128).astype(np.uint8)
        b_u8 = ctx.const(padded.reshape(n, blocks, block))
    return _matmul_nbits(ctx, node, x, b_u8, scales, b, K=k, N=n, bits=8, block_size=block)


@lowers("embedding_int8")
def _embedding_int8(ctx: Lowering, node: Node, table: str, scale: str, ids: str) -> str:
    rows = ctx.op("Cast", [ctx.op("Gather", [table, ids], axis=0)], to=ONNX_DTYPE[DType.float32])
    row_scale = ctx.op("Unsqueeze", [ctx.op("Gather", [scale, ids], axis=0), ctx.ints([-1])])
    return ctx.op("Mul", [rows, row_scale])


@lowers("embedding_int4")
def _embedding_int4(ctx: Lowering, node: Node, codes: str, scales: str, ids: str) -> str:
    """``com.microsoft.GatherBlockQuantized``: the table stays packed; rows dequantize as
    they are gathered (uint8 data, two codes per byte low nibble first, zero point 8)."""
    v, blocks, half = node.inputs[0].shape
    dim = node.attrs["dim"]
    data = ctx.at_load(ctx.op("Reshape", [codes, ctx.ints([v, blocks * half])]))
    out = ctx.op(
        "GatherBlockQuantized", [data, ids, scales], domain="com.microsoft",
        bits=4, block_size=half * 2, gather_axis=0, quantize_axis=1,
    )  # fmt: skip
    if blocks * half * 2 == dim:
        return out
    return ctx.op("Slice", [out, ctx.ints([0]), ctx.ints([dim]), ctx.ints([-1])])
