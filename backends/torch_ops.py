"""The torch backend's op table: one torch function per IR op.

Each entry of :data:`OPS` is called as ``fn(*inputs, **attrs)`` with the node's inputs as
torch tensors (``None`` for an absent optional input) and its attributes under their IR
names, already resolved: symbolic dims are ints (or SymInts under ``torch.compile``) and
dtypes are ``torch.dtype``. Ops that create tensors from nothing (:data:`CREATION_OPS`)
also get ``device``. Outputs follow the NumPy kernels in ``tgraph/ir/ops`` exactly: same
shapes, dtypes, slice bounds and axis conventions.

Nothing here hard-codes float32: results take the dtype of their inputs or the dtype the
IR names, so a pass that casts the graph to fp16 or bf16 needs no change here.

On CUDA, :func:`ops_for` swaps in Triton kernels for the fused epilogues (``triton_kernels``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from .torch_cache_ops import cache_attention
from .torch_collectives import COLLECTIVE_OPS
from .torch_moe import moe_experts, moe_experts_int4, moe_experts_int8
from .torch_ops_ext import EXT_OPS
from .torch_quant import QUANT_OPS

Tensor = torch.Tensor

# -- elementwise ---------------------------------------------------------------------------------


def identity(x: Tensor) -> Tensor:
    return x


def dropout(x: Tensor, p: float) -> Tensor:
    # The IR's dropout is the inference-mode identity (the frontend refuses training dropout).
    return x


def cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x.to(dtype)


def clamp(x: Tensor, min: float | None, max: float | None) -> Tensor:
    if min is None and max is None:
        return x
    return torch.clamp(x, min=min, max=max).to(x.dtype)  # int x, float bounds: stay int


def gelu(x: Tensor, approximate: str) -> Tensor:
    return F.gelu(x, approximate=approximate)


def reciprocal(x: Tensor) -> Tensor:
    return torch.reciprocal(x).to(x.dtype)


_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "neg": torch.neg,
    "abs": torch.abs,
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "reciprocal": reciprocal,
    "tanh": torch.tanh,
    "erf": torch.erf,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "silu": F.silu,
    "sin": torch.sin,
    "cos": torch.cos,
    "floor": torch.floor,
    "sign": torch.sign,
    "round": torch.round,
    "acos": torch.acos,
    "logical_not": torch.logical_not,
}

_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
    "floor_divide": torch.floor_divide,
    "remainder": torch.remainder,
    "pow": torch.pow,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "eq": torch.eq,
    "ne": torch.ne,
    "lt": torch.lt,
    "le": torch.le,
    "gt": torch.gt,
    "ge": torch.ge,
    "logical_and": torch.logical_and,
    "logical_or": torch.logical_or,
}

# -- reductions ----------------------------------------------------------------------------------


def _dims(x: Tensor, axes: Sequence[int]) -> tuple[int, ...]:
    """The IR's axes (all of them when empty) as non-negative torch dims."""
    if not axes:
        return tuple(range(x.dim()))
    return tuple(sorted({a % x.dim() for a in axes}))


def reduce_sum(x: Tensor, axes, keepdim) -> Tensor:
    # torch sums integers and bools into int64; the IR keeps the input dtype.
    return torch.sum(x, dim=_dims(x, axes), keepdim=keepdim).to(x.dtype)


def reduce_mean(x: Tensor, axes, keepdim) -> Tensor:
    if x.is_floating_point():
        return torch.mean(x, dim=_dims(x, axes), keepdim=keepdim)
    return torch.mean(x.double(), dim=_dims(x, axes), keepdim=keepdim).to(x.dtype)


def reduce_max(x: Tensor, axes, keepdim) -> Tensor:
    return torch.amax(x, dim=_dims(x, axes), keepdim=keepdim)


def reduce_min(x: Tensor, axes, keepdim) -> Tensor:
    return torch.amin(x, dim=_dims(x, axes), keepdim=keepdim)


def reduce_prod(x: Tensor, axes, keepdim) -> Tensor:
    # torch.prod takes one dim at a time; going from the last dim keeps the others' indices.
    out = x
    for d in reversed(_dims(x, axes)):
        out = torch.prod(out, dim=d, keepdim=keepdim)
    return out.to(x.dtype)


def var(x: Tensor, axes, correction, keepdim) -> Tensor:
    return torch.var(x, dim=_dims(x, axes), correction=correction, keepdim=keepdim)


def argmax(x: Tensor, axis, keepdim) -> Tensor:
    return torch.argmax(x, dim=axis, keepdim=keepdim)


def topk(x: Tensor, k, axis, largest, sorted) -> tuple[Tensor, Tensor]:
    # A stable sort, so ties keep the lower index first as the IR kernel and ONNX TopK do.
    values, index = torch.sort(x, dim=axis, descending=largest, stable=True)
    return values.narrow(axis, 0, k), index.narrow(axis, 0, k)


def cumsum(x: Tensor, axis, dtype) -> Tensor:
    out_dtype = dtype or x.dtype
    if out_dtype == torch.bool or x.dtype == torch.bool:
        return torch.cumsum(x.long(), dim=axis).to(out_dtype)
    return torch.cumsum(x, dim=axis, dtype=out_dtype)


# -- neural-network ops ----------------------------------------------------------------------------


def linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return F.linear(x, w, b)


def softmax(x: Tensor, axis: int) -> Tensor:
    return torch.softmax(x, dim=axis)


def log_softmax(x: Tensor, axis: int) -> Tensor:
    return torch.log_softmax(x, dim=axis)


def layer_norm(x: Tensor, w: Tensor | None, b: Tensor | None, axis: int, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[axis % x.dim() :], w, b, eps)


def rms_norm(x: Tensor, w: Tensor | None, axis: int, eps: float) -> Tensor:
    return F.rms_norm(x, x.shape[axis % x.dim() :], w, eps)


def conv2d(x: Tensor, w: Tensor, b: Tensor | None, stride, padding, dilation, groups) -> Tensor:
    return F.conv2d(x, w, b, stride, padding, dilation, groups)


def _causal_keep(tq: int, tk: int, device: torch.device) -> Tensor:
    """(Tq, Tk) bool: query i sees keys j <= i (top-left aligned, like torch's is_causal)."""
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril()


def _attend(q, k, v, mask, causal, scale, gqa) -> Tensor:
    """scaled_dot_product_attention on (..., H, T, D), with a mask and causality at once.

    torch refuses ``is_causal`` together with ``attn_mask``, so then the two are combined
    into one mask: bool masks AND the causal pattern, float masks get -inf above it.
    """
    if causal and mask is not None:
        keep = _causal_keep(q.shape[-2], k.shape[-2], q.device)
        if mask.dtype == torch.bool:
            mask = mask & keep
        else:
            mask = mask.masked_fill(~keep, float("-inf"))
        causal = False
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=gqa
    )


def sdpa(q, k, v, mask, causal, scale, gqa) -> Tensor:
    gqa = bool(gqa) and q.dim() >= 3 and k.shape[-3] != q.shape[-3]
    return _attend(q, k, v, mask, causal, scale, gqa)


def attention(q, k, v, mask, num_heads, kv_heads, scale, causal, layout) -> Tensor:
    if layout == "bsd":
        # (B, T, H*D) -> (B, H, T, D)
        q = q.unflatten(-1, (num_heads, -1)).transpose(1, 2)
        k = k.unflatten(-1, (kv_heads, -1)).transpose(1, 2)
        v = v.unflatten(-1, (kv_heads, -1)).transpose(1, 2)
    out = _attend(q, k, v, mask, causal, scale, kv_heads != num_heads)  # (B, H, Tq, Dv)
    if layout == "bsd":
        out = out.transpose(1, 2).flatten(2)  # (B, Tq, H*Dv)
    return out


def qkv_attention(x, w, b, mask, num_heads, kv_heads, scale, causal, sizes) -> Tensor:
    q, k, v = F.linear(x, w, b).split(list(sizes), dim=-1)  # (B, T, Nq), (B, T, Nk), (B, T, Nv)
    return attention(q, k, v, mask, num_heads, kv_heads, scale, causal, layout="bsd")


def rotary(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    if interleaved:  # (x[2i], x[2i+1]) -> (-x[2i+1], x[2i])
        rotated = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    else:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def skip_layer_norm(x, skip, w, b, axis, eps) -> tuple[Tensor, Tensor]:
    s = x + skip
    return layer_norm(s, w, b, axis, eps), s


def skip_rms_norm(x, skip, w, axis, eps) -> tuple[Tensor, Tensor]:
    s = x + skip
    return rms_norm(s, w, axis, eps), s


def bias_gelu(x: Tensor, bias: Tensor, approximate: str) -> Tensor:
    return F.gelu(x + bias, approximate=approximate)


# -- data movement -----------------------------------------------------------------------------


def reshape(x: Tensor, shape) -> Tensor:
    return x.reshape(shape)


def permute(x: Tensor, perm) -> Tensor:
    return x.permute(perm)


def expand(x: Tensor, shape) -> Tensor:
    return x.expand(shape)


def slice_(x: Tensor, axis, start, end, step) -> Tensor:
    # Python slicing, like the NumPy kernel: the same clamping and negative-bound rules.
    index = [slice(None)] * x.dim()
    index[axis] = slice(start, end, step)
    return x[tuple(index)]


def concat(*xs: Tensor, axis: int) -> Tensor:
    return torch.cat(xs, dim=axis)


def split(x: Tensor, axis, sizes) -> tuple[Tensor, ...]:
    return torch.split(x, list(sizes), dim=axis)


def squeeze(x: Tensor, axes) -> Tensor:
    return x.squeeze(tuple(a % x.dim() for a in axes))


def unsqueeze(x: Tensor, axes) -> Tensor:
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


def gather(x: Tensor, index: Tensor, axis: int) -> Tensor:
    # np.take: index dims replace `axis`; a 0-d index selects (drops the axis).
    return x[(slice(None),) * (axis % x.dim()) + (index,)]


def index(x: Tensor, *indices: Tensor, axis: int) -> Tensor:
    return x[(slice(None),) * axis + indices]


def gather_elements(x: Tensor, index: Tensor, axis: int) -> Tensor:
    return torch.gather(x, axis, index.long())


def scatter_elements(x: Tensor, index: Tensor, updates: Tensor, axis: int) -> Tensor:
    return torch.scatter(x, axis, index.long(), updates)


def tril(x: Tensor, diagonal: int) -> Tensor:
    return torch.tril(x, diagonal)


def triu(x: Tensor, diagonal: int) -> Tensor:
    return torch.triu(x, diagonal)


def arange(start, end, step, dtype: torch.dtype, device: torch.device) -> Tensor:
    if not dtype.is_floating_point and any(isinstance(b, float) for b in (start, end, step)):
        # NumPy steps in float and then truncates; so do we.
        return torch.arange(start, end, step, dtype=torch.float64, device=device).to(dtype)
    return torch.arange(start, end, step, dtype=dtype, device=device)


def full(shape, value, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.full(tuple(shape), value, dtype=dtype, device=device)


def pad(x: Tensor, pads, value) -> Tensor:
    # IR: (begin, end) per dim from the first dim; F.pad: (begin, end) per dim from the last.
    pairs = [(pads[2 * i], pads[2 * i + 1]) for i in range(x.dim())]
    flat = [p for pair in reversed(pairs) for p in pair]
    return F.pad(x, flat, value=value)


def resize(x: Tensor, size, scales, mode: str, align_corners: bool) -> Tensor:
    kind = {"linear": "bilinear", "cubic": "bicubic"}.get(mode, "nearest")
    align = align_corners if kind != "nearest" else None
    if scales:  # the user's factors: torch maps coordinates with them, not with the sizes
        return F.interpolate(x, scale_factor=tuple(scales), mode=kind, align_corners=align,
                             recompute_scale_factor=False)  # fmt: skip
    return F.interpolate(x, size=tuple(size), mode=kind, align_corners=align)


def pool2d(x: Tensor, kind, kernel, stride, padding, ceil_mode, count_include_pad) -> Tensor:
    if kind == "max":
        return F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode)
    return F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    return torch.matmul(a, b)


def where(c: Tensor, x: Tensor, y: Tensor) -> Tensor:
    return torch.where(c, x, y)


OPS: dict[str, Callable[..., Tensor | tuple[Tensor, ...]]] = {
    **_UNARY,
    **_BINARY,
    "identity": identity,
    "dropout": dropout,
    "cast": cast,
    "clamp": clamp,
    "gelu": gelu,
    "where": where,
    "reduce_sum": reduce_sum,
    "reduce_mean": reduce_mean,
    "reduce_max": reduce_max,
    "reduce_min": reduce_min,
    "reduce_prod": reduce_prod,
    "var": var,
    "argmax": argmax,
    "cumsum": cumsum,
    "matmul": matmul,
    "linear": linear,
    "softmax": softmax,
    "log_softmax": log_softmax,
    "layer_norm": layer_norm,
    "rms_norm": rms_norm,
    "conv2d": conv2d,
    "sdpa": sdpa,
    "attention": attention,
    "qkv_attention": qkv_attention,
    "rotary": rotary,
    "moe_experts": moe_experts,
    "moe_experts_int4": moe_experts_int4,
    "moe_experts_int8": moe_experts_int8,
    "skip_layer_norm": skip_layer_norm,
    "skip_rms_norm": skip_rms_norm,
    "bias_gelu": bias_gelu,
    "reshape": reshape,
    "permute": permute,
    "expand": expand,
    "slice": slice_,
    "concat": concat,
    "split": split,
    "squeeze": squeeze,
    "unsqueeze": unsqueeze,
    "gather": gather,
    "index": index,
    "gather_elements": gather_elements,
    "scatter_elements": scatter_elements,
    "tril": tril,
    "triu": triu,
    "arange": arange,
    "full": full,
    "pad": pad,
    "cache_attention": cache_attention,
    "pool2d": pool2d,
    "topk": topk,
    "resize": resize,
    **QUANT_OPS,
    **COLLECTIVE_OPS,
    **EXT_OPS,
}

# Ops that make a tensor without a tensor input: the lowering passes them the device.
CREATION_OPS = frozenset({"arange", "full"})

# Ops whose output is their input: the lowering forwards the value instead of calling them.
ALIAS_OPS = frozenset({"identity", "dropout"})

# Ops whose function returns a tuple however many outputs the node has (a one-piece split).
TUPLE_OPS = frozenset({"split"})


def ops_for(device: torch.device) -> Mapping[str, Callable[..., Tensor | tuple[Tensor, ...]]]:
    """The op table for a program on ``device``: the one place that picks kernels.

    On CUDA, the fused epilogues (bias_gelu, skip_layer_norm, skip_rms_norm, rms_norm, rotary)
    run Triton kernels when Triton imports and ``TGRAPH_TRITON`` is not ``0``; each of those
    entries still calls the op above for inputs its kernel does not take (see
    ``triton_kernels``). Everywhere else the table is :data:`OPS`.
    """
    if device.type != "cuda" or os.environ.get("TGRAPH_TRITON", "1") == "0":
        return OPS
    return {**OPS, **_triton_ops()}


@functools.cache
def _triton_ops() -> dict[str, Callable[..., Tensor | tuple[Tensor, ...]]]:
    try:
        from . import triton_kernels
    except ImportError:  # Triton is optional: without it CUDA programs use the torch ops
        return {}
    return dict(triton_kernels.OPS)
