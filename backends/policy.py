"""Per-device policy of the lowerings, in one place: which fused ONNX Runtime kernels lose
to their fallback on a device, which of ORT's own optimizers a session switches off, and
which ops have 16-bit float kernels. Each entry says what measurement put it there."""

from __future__ import annotations

import functools
import os

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


# -- int8 products on this CPU --------------------------------------------------------
# x86 flags of the instructions that multiply u8 x s8 into 32-bit sums (no 16-bit step).
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
ENV_INT8_DOT = "TGRAPH_INT8_DOT"  # "1" / "0" overrides the detection (tests, cross-builds)


@functools.cache
def _cpuinfo(field: str) -> str:
    """The first ``field`` line's value in /proc/cpuinfo ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _cpu_flags() -> frozenset[str]:
    return frozenset(_cpuinfo("flags").split())


def int8_dot() -> bool:
    """Whether ``linear_int8`` should take signed int8 weights (u8 x s8) on this CPU.

    ORT's u8 x s8 GEMM uses VNNI / AMX where the CPU has them: 128x768 by 768x3072 took
    0.47 ms against 8-10 ms for u8 x u8 and for fp32 MatMul on the 2-core Xeon with AMX
    (2 threads, identical outputs; docs/compression.md). Without them (AVX2)
    u8 x s8 goes through 16-bit pair sums that can saturate, so weights stay u8 (zero 128).
    """
    forced = os.environ.get(ENV_INT8_DOT, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return bool(_cpu_flags() & INT8_DOT_FLAGS)


# -- fp32 linears of inference-only torch programs --------------------------------------
ENV_ONEDNN_LINEAR = "TGRAPH_ONEDNN_LINEAR"  # "1" / "0" overrides the vendor check


def onednn_linear() -> bool:
    """Whether an inference-only torch program (the generation step) runs its fp32 linears
    on oneDNN with packed weights (backends/torch_onednn.py) instead of ``F.linear``.

    ``F.linear`` is MKL's sgemm on x86 builds of torch, and MKL does not take its fast
    paths on CPUs that are not Intel's: on the AMD EPYC of session 9 it ran 1.7x slower
    than oneDNN at one row and 2.3-2.7x slower at 128 (``tools/torch_linear_kernels.py``).
    The packed weight is a second copy of the model's, so the switch is on only where that
    was measured to pay: every CPU but Intel's (on Intel MKL's own paths have not been
    compared here). ``TGRAPH_ONEDNN_LINEAR=1`` / ``0`` overrides.
    """
    forced = os.environ.get(ENV_ONEDNN_LINEAR, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return _cpuinfo("vendor_id") != "GenuineIntel"
