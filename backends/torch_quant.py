"""Torch lowerings of the compressed ops (``tgraph/ir/ops/quant.py``); nothing keeps an
fp32 copy of a compressed weight.

Kernels, chosen per call by the number of rows M (tools/lowbit_matmul_bench.py and
docs/compression.md have the measurements; torch 2.13 on this CPU):

- ``linear_int4``: ``aten._weight_int4pack_mm_for_cpu`` on torch's packed layout, made once
  at lowering by ``aten._convert_weight_to_int4pack_for_cpu`` (N padded to 16, K to whole
  blocks, zero points 0 so ``(q - 8) * scale``). Its fast CPU path takes bf16 activations
  (1024 x 2816: 0.20 ms at M=1 against 0.42 for fp32 ``F.linear``; 20.7 against 16.9 ms at
  M=128; its fp32 path took 5-40 ms at M=1), so activations and scales enter in bf16 and
  the result leaves in fp32: about 3e-3 relative error on top of the IR's arithmetic.
  Blocks other than 32..256 dequantize per call instead.
- ``linear_int8w``: at M <= :data:`DECODE_ROWS` (and K a multiple of 16: for other K the
  bf16 kernel of torch 2.13 returned wrong numbers or crashed), ``aten._weight_int8pack_mm`` on the (N, K)
  int8 codes (the graph's own array, shared), bf16 activations again (0.18 ms at M=1).
  Above, the weight is dequantized per call into a temporary and ``F.linear`` runs in fp32
  (the packed kernel took 40 ms at M=128 in bf16 and seconds in fp32).
- ``linear_int8`` (dynamic, encoders): the per-token codes times the int8 weight codes.
  Where the CPU has VNNI / AMX (``backends.policy.int8_dot``), ``torch._int_mm`` on int8
  codes and the (N, K) weight's transposed view: exact int32 sums, 0.68 ms against 7.5 ms
  for fp32 ``F.linear`` at 128x768x3072 on the AMX Xeon (2 threads). Elsewhere the codes
  times the weight codes converted per call in fp32 (integer-valued products are exact
  while a dot product stays below 2**24; ``_int_mm`` ran at 2.7 GFLOP/s on AVX2).
- ``compute="int8"`` rounds the activations per block first, as the IR defines it.

Why not torchao: its CPU int4 weight-only path calls the same ATen kernel, and it would be
another dependency. Off the CPU the ops dequantize per call (a temporary, not a cache).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tgraph.backends.policy import int8_dot
from tgraph.ir import Node, Value
from tgraph.ir.ops.quant import INT8_MAX, TINY_SCALE

Tensor = torch.Tensor
INT4_BLOCKS = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu takes
_INT_MM = hasattr(torch, "_int_mm")


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


DECODE_ROWS = 16  # at most this many rows: the bf16 packed int8 kernel; more: dequantize


def _int8pack(x: Tensor, w: Tensor, scale: Tensor) -> Tensor:
    """(..., K) @ int8 (N, K) * scale (N,): packed kernel at decode sizes, else dequantized."""
    rows = _rows(x)
    # K % 16: torch 2.13's bf16 kernel returns wrong numbers or crashes for other K
    if x.device.type == "cpu" and rows.shape[0] <= DECODE_ROWS and w.shape[1] % 16 == 0:
        bf16 = rows.to(torch.bfloat16).contiguous()
        y = torch.ops.aten._weight_int8pack_mm(bf16, w, scale.to(torch.bfloat16)).to(x.dtype)
    else:
        y = F.linear(rows, w.to(x.dtype) * scale[:, None].to(x.dtype))
    return y.reshape(*x.shape[:-1], w.shape[0])


def linear_int8(x: Tensor, w: Tensor, w_scale: Tensor, b: Tensor | None) -> Tensor:
    s = (x.abs().amax(dim=-1, keepdim=True) / INT8_MAX).clamp_min(TINY_SCALE)
    codes = torch.round(x / s)
    if x.device.type == "cpu" and _INT_MM and int8_dot():  # exact int32 sums on VNNI / AMX
        acc = torch._int_mm(_rows(codes).to(torch.int8), w.t())
        y = acc.to(x.dtype).mul_(_rows(s)).mul_(w_scale)  # in place: (M, N) passes cost
        y = y.reshape(*x.shape[:-1], w.shape[0])
        return y.add_(b) if b is not None else y
    y = F.linear(codes, w.to(x.dtype)) * w_scale * s
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
    bf16 = rows.to(torch.bfloat16).contiguous()  # the kernel's fast path (see the docstring)
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(bf16, w, block_size, scales_zeros)
    y = y[:, :n].to(x.dtype).reshape(*x.shape[:-1], n)
    return y + b if b is not None else y


def embedding_int8(table: Tensor, scale: Tensor, ids: Tensor) -> Tensor:
    return table[ids].to(torch.float32) * scale[ids].unsqueeze(-1)


def embedding_int4(codes: Tensor, scales: Tensor, ids: Tensor, dim: int) -> Tensor:
    """Unpack only the rows looked up: one row per token, not the table."""
    flat = ids.reshape(-1)
    rows = unpack_int4(codes[flat], scales[flat], dim)
    return rows.reshape(*ids.shape, dim)


def pack_int4(packed: np.ndarray, scales: np.ndarray) -> tuple[Tensor, Tensor]:
    """The IR's int4 codes (N, blocks, block/2) and scales (N, blocks) in torch's CPU layout.

    Returns the converted weight (N', K'/2) uint8 and the (blocks, N', 2) bf16 scales and
    zero points, N' = N rounded up to 16 (zero rows), K' = blocks * block.
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
    return weight, torch.from_numpy(np.ascontiguousarray(scales_zeros)).to(torch.bfloat16)


def _pack_sources(rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For torch's packed (rows, k/2) layout: the flat (rows * k) index of the code in each
    byte's low and high nibble. ``_convert_weight_to_int4pack_for_cpu`` only permutes
    nibbles, so converting the digits of every code's own index, four bits at a time,
    reveals where each one went."""
    index = np.arange(rows * k, dtype=np.int64).reshape(rows, k)
    low = np.zeros((rows, k // 2), np.int64)
    high = np.zeros((rows, k // 2), np.int64)
    for shift in range(0, max(int(rows * k - 1).bit_length(), 1), 4):
        digits = torch.from_numpy(((index >> shift) & 0x0F).astype(np.int32))
        out = torch.ops.aten._convert_weight_to_int4pack_for_cpu(digits, 1).numpy()
        low |= (out & 0x0F).astype(np.int64) << shift
        high |= (out >> 4).astype(np.int64) << shift
    return low, high


def unpack_int4pack(weight: Tensor, n: int, block: int) -> np.ndarray:
    """torch's packed int4 weight (N', K'/2) back in the IR's (N, blocks, block/2) layout
    (the inverse of :func:`pack_int4`'s weight conversion)."""
    rows, half = weight.shape
    k = half * 2
    low, high = _pack_sources(rows, k)
    packed = weight.numpy()
    codes = np.empty(rows * k, np.uint8)
    codes[low.ravel()] = (packed & 0x0F).ravel()
    codes[high.ravel()] = (packed >> 4).ravel()
    codes = codes.reshape(rows, k // block, block)[:n]
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


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

    weights, names = [], []
    for i, tensor in enumerate(tensors):
        name = _identifier(f"{node.inputs[1].name}_packed{i}", builder.const_names)
        builder.root.consts.register_buffer(name, tensor.to(builder.device))
        weights.append(builder.fx.get_attr(f"consts.{name}"))
        names.append(name)
    builder.packed.append((node.inputs[1], names[0], attrs["n"], attrs["block_size"]))
    bias = node.inputs[3] if len(node.inputs) > 3 else None
    x = builder.value(node.inputs[0])
    args = (x, *weights, None if bias is None else builder.value(bias))
    name = _identifier(node.outputs[0].name, set())
    call = builder.fx.create_node("call_function", fn, args, attrs, name=name)
    builder.env[id(node.outputs[0])] = call
    return True


# (graph value, its packed buffer under program.consts, N, block) per packed int4 weight
PackedSources = list[tuple[Value, str, int, int]]


def is_stand_in(value: Value) -> bool:
    """Whether ``value``'s constant is a released stand-in (see :func:`release_const`)."""
    return value.const is not None and value.const.strides == (0,) * value.const.ndim


def release_const(value: Value) -> None:
    """Replace ``value``'s array by a zero-strided stand-in of the same shape and dtype, for
    a weight a program holds in a packed layout of its own (rebuilt from it on demand)."""
    if value.const is not None and not is_stand_in(value):
        value.const = np.broadcast_to(np.zeros((), value.const.dtype), value.const.shape)


def release_packed(program: Any, sources: PackedSources) -> None:
    """Drop the graph's own int4 arrays of weights the program holds packed: only torch's
    layout stays alive. Each becomes a stand-in (:func:`release_const`) until
    :func:`restore_packed` rebuilds it (``CompiledModel.graph`` does, when read)."""
    for value, _name, _n, _block in sources:
        release_const(value)


def restore_packed(program: Any, sources: PackedSources) -> None:
    """Rebuild the IR's int4 arrays from the program's packed buffers (exactly)."""
    for value, name, n, block in sources:
        if is_stand_in(value):
            weight = getattr(program.consts, name).cpu()
            value.const = unpack_int4pack(weight, n, block)


QUANT_OPS: dict[str, Callable[..., Tensor]] = {
    "linear_int8": linear_int8,
    "linear_int8w": linear_int8w,
    "linear_int4": linear_int4,
    "embedding_int8": embedding_int8,
    "embedding_int4": embedding_int4,
}
