"""ONNX lowerings of the compressed linear layers (``tgraph/ir/ops/quant.py``).

``linear_int8`` -> rows of ``x`` flattened to (M, K); per-row scales from ReduceMax(Abs);
``QuantizeLinear`` per axis 0 (``round(x / s) + 128``: the activation codes shifted to u8,
zero point 128); ``com.microsoft.MatMulIntegerToFloat`` with the per-channel weight scales;
then the per-row scale and bias. The weights' type follows the CPU
(``backends.policy.int8_dot``): signed int8 (u8 x s8) where it has VNNI or AMX, which ORT's
kernels use (20x faster than u8 x u8 and fp32 on the AMX Xeon); unsigned, shifted by +128,
elsewhere, since u8 x u8 never saturates the 16-bit pair sums that u8 x s8 can hit on AVX2
machines without VNNI (there it beat fp32 MatMul and ORT's own per-tensor
``DynamicQuantizeMatMul``, docs/compression.md). Either way the integer product is exact, so
the ONNX model computes the reference kernel's arithmetic step for step.

The weight-only ops (``linear_int4``, ``linear_int8w``, ``embedding_int8``) lower in
``nbits.py``.
"""

from __future__ import annotations

import numpy as np

from tgraph.backends.onnx_lowering import MS_DOMAIN, Lowering, LoweringError
from tgraph.backends.onnx_ops.base import lowers
from tgraph.backends.policy import int8_dot
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
    zero = ctx.const(np.uint8(128))
    if ctx.device == "cpu" and int8_dot():  # u8 x s8: VNNI / AMX (backends/policy.py)
        weight = [ctx.const(np.ascontiguousarray(codes.T.astype(np.int8)))]  # (K, N), zero 0
    else:  # u8 x u8, weights shifted by 128: no 16-bit saturation on AVX2
        weight = [ctx.const(np.ascontiguousarray((codes.T + 128).astype(np.uint8))), zero]
    lead = node.outputs[0].shape[:-1]
    rows = x if len(lead) == 1 else ctx.op("Reshape", [x, ctx.ints([-1, k])])  # (M, K)
    amax = ctx.op("ReduceMax", [ctx.op("Abs", [rows]), ctx.ints([-1])], keepdims=0)
    scale = ctx.op("Max", [ctx.op("Div", [amax, ctx.const(np.float32(INT8_MAX))]),
                           ctx.const(np.float32(TINY_SCALE))])  # (M,)  # fmt: skip
    row_zero = ctx.op("Expand", [zero, ctx.op("Shape", [scale])])
    x_u8 = ctx.op("QuantizeLinear", [rows, scale, row_zero], axis=0)  # round(x / s) + 128
    one = ctx.const(np.float32(1.0))
    inputs = [x_u8, weight[0], one, w_scale, zero, *weight[1:]]  # B zero point: u8 only
    y = ctx.op("MatMulIntegerToFloat", inputs, domain=MS_DOMAIN)
    y = ctx.op("Mul", [y, ctx.op("Unsqueeze", [scale, ctx.ints([1])])])
    if b:
        y = ctx.op("Add", [y, b])
    return y if len(lead) == 1 else ctx.op("Reshape", [y, ctx.shape((*lead, n))])
