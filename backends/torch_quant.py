"""Torch lowerings of the compressed linear layers (``tgraph/ir/ops/quant.py``).

Torch has no fast int8 GEMM on CPUs without VNNI/AMX (``torch._int_mm`` ran at a few
GFLOP/s on the AVX2 development box, docs/compression.md), so ``linear_int8`` runs the
IR's arithmetic in fp32: per-token codes ``round(x / s)`` times the integer-valued weight codes, then the two
scales. Integer-valued fp32 products are exact up to 2**24 per sum, so this matches the
int32 reference closely. ``linear_int4`` dequantizes its weight to fp32. Both cache the
fp32 weight codes per weight tensor (refreshed when the tensor is written to), so a call
pays for the matmul only; ONNX Runtime is the backend that runs integer kernels.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tgraph.ir.ops.quant import INT8_MAX, TINY_SCALE

Tensor = torch.Tensor

# id(weight) -> (weak reference, version, fp32 codes). Keyed by id: tensors compare
# elementwise, so they cannot be dictionary keys themselves.
_CACHE: dict[int, tuple[weakref.ref, int, Tensor]] = {}


def _cached(w: Tensor, make: Callable[[], Tensor]) -> Tensor:
    hit = _CACHE.get(id(w))
    if hit is not None and hit[0]() is w and hit[1] == w._version:
        return hit[2]
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable in any mode
        value = make()
    key = id(w)
    _CACHE[key] = (weakref.ref(w, lambda _ref: _CACHE.pop(key, None)), w._version, value)
    return value


def linear_int8(x: Tensor, w: Tensor, w_scale: Tensor, b: Tensor | None) -> Tensor:
    codes_w = _cached(w, lambda: w.to(torch.float32))
    s = (x.abs().amax(dim=-1, keepdim=True) / INT8_MAX).clamp_min(TINY_SCALE)
    y = F.linear(torch.round(x / s), codes_w) * w_scale * s
    return y + b if b is not None else y


def _unpack_int4(w: Tensor, scales: Tensor, in_features: int) -> Tensor:
    low = (w & 0x0F).to(torch.int16)
    high = (w >> 4).to(torch.int16)
    codes = torch.stack([low, high], dim=-1).reshape(w.shape[0], w.shape[1], -1)
    deq = (codes - 8).to(torch.float32) * scales.unsqueeze(-1)
    return deq.reshape(w.shape[0], -1)[:, :in_features].contiguous()


def linear_int4(
    x: Tensor, w: Tensor, scales: Tensor, b: Tensor | None, block_size: int, in_features: int
) -> Tensor:
    weight = _cached(w, lambda: _unpack_int4(w, scales, in_features))
    return F.linear(x, weight, b)


QUANT_OPS: dict[str, Callable[..., Tensor]] = {
    "linear_int8": linear_int8,
    "linear_int4": linear_int4,
}
