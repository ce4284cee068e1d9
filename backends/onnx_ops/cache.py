"""Lowering of ``cache_attention`` to com.microsoft GroupQueryAttention (the mapping of each
input and attribute, and why the step runs through I/O binding: backends/ort_cache.py)."""

from __future__ import annotations

import numpy as np

from tgraph.backends.onnx_lowering import MS_DOMAIN, ONNX_DTYPE
from tgraph.backends.onnx_ops.base import lowers
from tgraph.ir import DType


@lowers("cache_attention")
def _cache_attention(ctx, node, q, k, v, k_cache, v_cache, past_len, q_len):
    a = node.attrs
    seqlens = ctx.op("Sub", [ctx.op("Add", [past_len, q_len]), ctx.const(np.int64(1))])
    capacity = ctx.dim(node.inputs[3].shape[2], scalar=True)
    int32 = ONNX_DTYPE[DType.int32]
    inputs = [q, k, v, k_cache, v_cache, ctx.op("Cast", [seqlens], to=int32),
              ctx.op("Cast", [capacity], to=int32)]  # fmt: skip
    inputs += [""] * 9 + [ctx.op("Cast", [q_len], to=int32)]  # no rotary, bias, sink, scales, norms
    return ctx.op_n(
        "GroupQueryAttention",
        inputs,
        3,
        domain=MS_DOMAIN,
        num_heads=a["num_heads"],
        kv_num_heads=a["kv_heads"],
        scale=float(a["scale"]),
        local_window_size=a["window"] if a["window"] > 0 else -1,
        softcap=float(a["softcap"]),
    )
