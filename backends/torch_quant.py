"""Torch lowerings of the compressed ops (``tgraph/ir/ops/quant.py``) on packed kernels.

On the CPU every compressed linear runs an ATen kernel that reads the packed weights;
nothing keeps an fp32 copy of them:

- ``linear_int8w`` and ``linear_int8``: ``aten._weight_int8pack_mm(x, w_int8, scale)``
  computes ``x @ (w * scale[:, None]).T`` from the (N, K) int8 codes, the graph's own array
  (no copy). ``linear_int8`` first rounds ``x`` per token (``round(x / s)``, exact integers
  in fp32) and multiplies by ``s`` after, so it is the reference's integer arithmetic
  (integer-valued fp32 products are exact while a dot product stays below 2**24).
- ``linear_int4``: ``aten._weight_int4pack_mm_for_cpu(x, w_packed, block, scales_zeros)``.
  Its weight layout is not the IR's (two codes per byte, low nibble first), so the codes
  are converted once at lowering by ``aten._convert_weight_to_int4pack_for_cpu`` (N padded
  to a multiple of 16, K to whole blocks; zero points 0, so ``(q - 8) * scale``). The kernel
  takes blocks of 32..256; other block sizes fall back to dequantizing per call.
- ``compute="int8"`` rounds the activations per block first, as the IR defines it, so both
  backends compute the same numbers (the torch kernels themselves multiply in fp32).

Why these and not torchao: they ship with torch 2.13 (torchao would be another dependency
whose CPU int4 path calls the same ATen kernel), and tools/int8_matmul_bench.py --packed
measured them against fp32 ``F.linear`` at M=1 and M=128 (docs/compression.md).

Off the CPU (CUDA), the same op functions dequantize the weight per call (a temporary, not
a cache).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tgraph.ir import Node
from tgraph.ir.ops.quant import INT8_MAX, TINY_SCALE

Tensor = torch.Tensor
INT4_BLOCKS = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu takes


def _rows(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1])


def quantize_activations(x: Tensor, block: int) -> Tensor:
    """``x`` rounded to int8 per row and block of ``block`` inputs (``compute="int8"``)."""
    k = x.shape[-1]
    pad = -k % block
    g = F.pad(x, (0, pad)).reshape(*x.shape[:-1], -1, block)
    s = g.abs().amax(dim=-1, keepdim=True) / INT8_MAX
    inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))
    return (torch.round(g * inv) * s).reshape(*x.shape[:-1], k + pad)[..., :k]


def _act(x: Tensor, compute: str, block: int) -> Tensor:
    return quantize_activations(x, block) if compute == "int8" else x


def _int8pack(x: Tensor, w: Tensor, scale: Tensor) -> Tensor:
    """(..., K) @ int8 (N, K) * scale (N,) on the packed kernel (CPU) or dequantized."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        y = torch.ops.aten._weight_int8pack_mm(_rows(x).contiguous(), w, scale)
        return y.reshape(*x.shape[:-1], w.shape[0])
    return F.linear(x, w.to(x.dtype) * scale[:, None].to(x.dtype))


def linear_int8(x: Tensor, w: Tensor, w_scale: Tensor, b: Tensor | None) -> Tensor:
    s = (x.abs().amax(dim=-1, keepdim=True) / INT8_MAX).clamp_min(TINY_SCALE)
    y = _int8pack(torch.round(x / s), w, w_scale) * s
    return y + b if b is not None else y


def linear_int8w(
    x: Tensor, w: Tensor, w_scale: Tensor, b: Tensor | None, compute: str, block_size: int
) -> Tensor:
    y = _int8pack(_act(x, compute, block_size), w, w_scale)
    return y + b if b is not None else y


def unpack_int4(w: Tensor, scales: Tensor, in_features: int) -> Tensor:
    """The fp32 (N, K) weight of packed codes (N, blocks, block/2) and scales (N, blocks)."""
    low = (w & 0x0F).to(torch.int16)
    high = (w >> 4).to(torch.int16)
    codes = torch.stack([low, high], dim=-1).reshape(w.shape[0], w.shape[1], -1)
    deq = (codes - 8).to(torch.float32) * scales.unsqueeze(-1)
    return deq.reshape(w.shape[0], -1)[:, :in_features]


def linear_int4(
    x: Tensor, w: Tensor, scales: Tensor, b: Tensor | None,
    block_size: int, in_features: int, compute: str = "f32",
) -> Tensor:  # fmt: skip
    """Dequantize per call: the path off the CPU and for block sizes the kernel lacks."""
    return F.linear(_act(x, compute, block_size), unpack_int4(w, scales, in_features), b)


def linear_int4_packed(
    x: Tensor, w: Tensor, scales_zeros: Tensor, b: Tensor | None,
    block_size: int, in_features: int, n: int, compute: str = "f32",
) -> Tensor:  # fmt: skip
    """``linear_int4`` on torch's packed layout (see :func:`pack_int4`)."""
    x = _act(x, compute, block_size)
    padded_k = scales_zeros.shape[0] * block_size
    rows = _rows(x)
    if padded_k != in_features:
        rows = F.pad(rows, (0, padded_k - in_features))
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows.contiguous(), w, block_size, scales_zeros)
    y = y[:, :n].reshape(*x.shape[:-1], n)
    return y + b if b is not None else y


def embedding_int8(table: Tensor, scale: Tensor, ids: Tensor) -> Tensor:
    return table[ids].to(torch.float32) * scale[ids].unsqueeze(-1)


def pack_int4(packed: np.ndarray, scales: np.ndarray) -> tuple[Tensor, Tensor]:
    """The IR's int4 codes (N, blocks, block/2) and scales (N, blocks) in torch's CPU layout.

    Returns the converted weight (N', K'/2) uint8 and the (blocks, N', 2) scales and zero
    points, N' = N rounded up to 16 (zero rows), K' = blocks * block.
    """
    n, blocks, half = packed.shape
    codes = np.empty((n, blocks, half * 2), np.int32)
    codes[..., 0::2] = packed & 0x0F
    codes[..., 1::2] = packed >> 4
    n_pad = -n % 16
    codes = np.pad(codes.reshape(n, -1), ((0, n_pad), (0, 0)), constant_values=8)
    weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.from_numpy(codes), 1)
    s = np.pad(scales.astype(np.float32), ((0, n_pad), (0, 0)), constant_values=1.0)
    scales_zeros = np.stack([s.T, np.zeros_like(s.T)], axis=-1)  # (blocks, N', 2)
    return weight, torch.from_numpy(np.ascontiguousarray(scales_zeros))


def shared(array: Any) -> Tensor:
    """A tensor over a constant's own memory (the kernels only read it)."""
    array = np.ascontiguousarray(array)
    with warnings.catch_warnings():  # read-only arrays: torch warns that it could write them
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


Packed = tuple[Callable[..., Tensor], list[Tensor], dict[str, Any]]


def packed_lowering(node: Node, device: torch.device) -> Packed | None:
    """``(fn, weight tensors, attrs)`` for a CPU node on a packed kernel, else None.

    The program calls ``fn(x, *tensors, bias, **attrs)``; the node's own weight constants
    are not installed at all, so only the packed copy lives in the program.
    """
    if device.type != "cpu" or node.op != "linear_int4":
        return None
    w, scales = node.inputs[1], node.inputs[2]
    if w.const is None or scales.const is None or node.attrs["block_size"] not in INT4_BLOCKS:
        return None
    weight, scales_zeros = pack_int4(np.asarray(w.const), np.asarray(scales.const))
    attrs = {**node.attrs, "n": w.shape[0]}
    return linear_int4_packed, [weight, scales_zeros], attrs


def emit_packed(builder: Any, node: Node) -> bool:
    """Emit ``node`` into a torch backend program builder on a packed kernel, if it has one.

    The packed tensors become frozen buffers of the program; the node's own weight
    constants are never installed.
    """
    packed = packed_lowering(node, builder.device)
    if packed is None:
        return False
    fn, tensors, attrs = packed
    from .torch_backend import _identifier

    weights = []
    for i, tensor in enumerate(tensors):
        name = _identifier(f"{node.inputs[1].name}_packed{i}", builder.const_names)
        builder.root.consts.register_buffer(name, tensor.to(builder.device))
        weights.append(builder.fx.get_attr(f"consts.{name}"))
    bias = node.inputs[3] if len(node.inputs) > 3 else None
    x = builder.value(node.inputs[0])
    args = (x, *weights, None if bias is None else builder.value(bias))
    name = _identifier(node.outputs[0].name, set())
    call = builder.fx.create_node("call_function", fn, args, attrs, name=name)
    builder.env[id(node.outputs[0])] = call
    return True


QUANT_OPS: dict[str, Callable[..., Tensor]] = {
    "linear_int8": linear_int8,
    "linear_int8w": linear_int8w,
    "linear_int4": linear_int4,
    "embedding_int8": embedding_int8,
}
