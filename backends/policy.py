"""Per-device policy of the lowerings, in one place: which fused ONNX Runtime kernels lose
to their fallback on a device, which of ORT's own optimizers a session switches off, and
which ops have 16-bit float kernels. Each entry says what measurement put it there."""

from __future__ import annotations

from tgraph.ir import DType, Node

# Element types the ORT CPU kernels of Where lack; they run in a wider type.
WHERE_VIA = {
    DType.bool: DType.uint8,
    DType.float16: DType.float32,
    DType.bfloat16: DType.float32,
    DType.int16: DType.int32,
}


# IR ops whose lowering runs on ONNX Runtime CPU kernels of a 16-bit float type (probed on
# ORT 1.32, table in docs/backends.md). A node of any other op that reads or makes such a
# value computes in float32 between Casts (``Lowering.lower_in_fp32``).
_DATA_MOVEMENT = frozenset(
    "reshape permute squeeze unsqueeze concat split slice gather index identity dropout cast".split()
)
LOW_PRECISION_KERNELS: dict[DType, frozenset[str]] = {
    DType.bfloat16: _DATA_MOVEMENT,
    DType.float16: _DATA_MOVEMENT | {"expand", "maximum", "minimum"},
}


def needs_fp32(node: Node) -> DType | None:
    """The 16-bit float type ``node`` must be computed around in float32, or None."""
    for v in (*node.inputs, *node.outputs):
        if v is not None and v.dtype in LOW_PRECISION_KERNELS:
            return None if node.op in LOW_PRECISION_KERNELS[v.dtype] else v.dtype
    return None


# Fused kernels that run slower than their fallback on a device's execution provider.
# ORT 1.32 CPU, (B, 128, 768) fp32, 1 and 2 threads, the sum also read by a later Add (as
# in a residual stream): SkipLayerNormalization 0.56 ms at B=1 / 4.6 ms at B=8 against
# 0.11 / 1.1 ms for Add + LayerNormalization; SkipSimplifiedLayerNormalization 0.16 / 1.3
# ms against 0.08 / 0.8-0.9 for Add + RMSNormalization. On GPT-2 1x128 the fused kernel
# cost 12.7 ms of a 366 ms call (tools/ort_profile.py hf-gpt2:1x128).
SLOWER_FUSED: dict[str, frozenset[str]] = {
    "cpu": frozenset({"SkipLayerNormalization", "SkipSimplifiedLayerNormalization"}),
}
# ONNX Runtime's own optimizers that would fuse the unfused form back into a slow kernel:
# SkipLayerNormFusion turns Add + LayerNormalization into SkipLayerNormalization where the
# sum has no other reader (post-norm blocks such as nn.TransformerEncoderLayer; 33 of 469
# ms on the encoder at 8x128). Sessions on that device switch them off.
ORT_OPTIMIZERS_OFF: dict[str, tuple[str, ...]] = {"cpu": ("SkipLayerNormFusion",)}
