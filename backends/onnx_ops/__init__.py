"""The ONNX lowering table: one function per IR op (see ``onnx_lowering.py``).

A lowering function takes ``(ctx, node, *inputs)`` where ``inputs`` are the ONNX names of
the node's inputs ("" for an absent optional one), emits ONNX nodes through ``ctx`` and
returns the ONNX name of each output.

Fused ops go to ONNX Runtime kernels when ``ctx.fused_kernels`` is set and the kernel's
constraints hold; otherwise, or when ``fused_kernels`` is off, to subgraphs of
elementary ops:

=================  ==============================================  ====================
IR op              kernel (checked against the reference kernels)  fallback
=================  ==============================================  ====================
attention bsd      com.microsoft MultiHeadAttention (f32, H==Hkv)  Attention, subgraph
attention, sdpa    Attention (opset 23: bhsd, GQA, bool masks)     MatMul/Softmax/...
qkv_attention      com.microsoft Attention (f32, H==Hkv)           MatMul+Split+attention
skip_layer_norm    com.microsoft SkipLayerNormalization (cuda)     Add+LayerNorm (cpu)
skip_rms_norm      com.microsoft SkipSimplifiedLayerNorm.. (cuda)  Add+RMSNorm (cpu)
rms_norm           RMSNormalization (opset 23)                     Mul/ReduceMean/...
bias_gelu          com.microsoft BiasGelu / FastGelu (tanh)        Add+gelu subgraph
gelu               com.microsoft Gelu / FastGelu (tanh)            Erf/Tanh formula
rotary             -- (ORT's RotaryEmbedding wants half caches)    Slice/Neg/Concat/Mul
moe_experts        com.microsoft MoE (f32, gated SiLU, ReLU/SiLU)  Gather + batched MatMul
=================  ==============================================  ====================

``SimplifiedLayerNormalization`` is an ORT kernel registered in the *standard* ONNX
domain, which ``onnx.checker`` rejects; ``RMSNormalization`` computes the same thing.

A fused kernel is not always the fast one: ``backends/policy.py`` lists, per device, the
kernels that lose to their fallback there, measured as the note next to each says.

One module per op family, mirroring tgraph/ir/ops/: ``elementwise``, ``nn``, ``reduce``,
``shape_ops``, ``attention``, ``cache`` (the KV-cache attention of generation), ``moe``
(mixture-of-experts layers), ``quant`` and
``nbits`` (weight-only ops on MatMulNBits); ``base`` holds the table and shared helpers.
"""

from __future__ import annotations

from tgraph.backends.onnx_ops.base import LOWERINGS, LoweringFn, lowers

# Importing the family modules fills the table.
from . import (  # noqa: F401
    attention,
    cache,
    elementwise,
    moe,
    nbits,
    nn,
    pool,
    quant,
    reduce,
    resize,
    shape_ops,
)

__all__ = ["LOWERINGS", "LoweringFn", "lowers"]
