"""ONNX lowerings of the compressed linear layers (``tgraph/ir/ops/quant.py``).

``linear_int8`` -> rows of ``x`` flattened to (M, K); per-row scales from ReduceMax(Abs);
``QuantizeLinear`` per axis 0 (``round(x / s) + 128``: the activation codes shifted to u8,
zero point 128); ``com.microsoft.MatMulIntegerToFloat`` on *unsigned* codes (weights
shifted by +128 too) with the per-channel weight scales; then the per-row scale and bias. ONNX Runtime's CPU kernels take their fast u8 path for this, and u8 x u8
never saturates the 16-bit pair sums that u8 x s8 can hit on AVX2 machines without VNNI.
Measured on the 2-core AVX2 box (docs/performance.md): this path beat both fp32 MatMul
and ORT's own ``DynamicQuantizeMatMul`` (per-tensor u8 activations), which was also less
accurate on activations with outlier channels. The integer product is exact, so the ONNX
model computes the reference kernel's arithmetic step for step.

The weight-only ops (``linear_int4``, ``linear_int8w``, ``embedding_int8``) lower in
``nbits.py``.
"""

from __future__ import annotations

import numpy as np

from tgraph.backends.onnx_lowering import MS_DOMAIN, Lowering, LoweringError
from tgraph.backends.onnx_ops.base import lowers
from tgraph.ir import Node
from tgraph.ir.ops.quant import INT8_MAX, TINY_SCALE


def const_input(node: Node, i: int) -> np.ndarray:
    v = node.inputs[i]
    if v.const is None:
        raise LoweringError(
            f"{node.op} %{node.name}: input {i} (%{v.name}) must be a constant; "
            "run the quantize pass on constant weights only"
        )
    return np.asarray(v.const)


@lowers("linear_int8")
def _linear_int8(ctx: Lowering, node: Node, x: str, w: str, w_scale: str, b: str = "") -> str:
    codes = const_input(node, 1).astype(np.int16)  # (N, K) in [-127, 127]
    n, k = codes.shape
    w_u8 = ctx.const(np.ascontiguousarray((codes.T + 128).astype(np.uint8)))  # (K, N)
    lead = node.outputs[0].shape[:-1]
    rows = x if len(lead) == 1 else ctx.op("Reshape", [x, ctx.ints([-1, k])])  # (M, K)
    amax = ctx.op("ReduceMax", [ctx.op("Abs", [rows]), ctx.ints([-1])], keepdims=0)
    scale = ctx.op("Max", [ctx.op("Div", [amax, ctx.const(np.float32(INT8_MAX))]),
                           ctx.const(np.float32(TINY_SCALE))])  # (M,)  # fmt: skip
    zero = ctx.const(np.uint8(128))
    row_zero = ctx.op("Expand", [zero, ctx.op("Shape", [scale])])
    x_u8 = ctx.op("QuantizeLinear", [rows, scale, row_zero], axis=0)  # round(x / s) + 128
    one = ctx.const(np.float32(1.0))
    y = ctx.op("MatMulIntegerToFloat", [x_u8, w_u8, one, w_scale, zero, zero], domain=MS_DOMAIN)
    y = ctx.op("Mul", [y, ctx.op("Unsqueeze", [scale, ctx.ints([1])])])
    if b:
        y = ctx.op("Add", [y, b])
    return y if len(lead) == 1 else ctx.op("Reshape", [y, ctx.shape((*lead, n))])
