"""Triton kernels for the torch backend's fused epilogues on CUDA.

One kernel per fused IR op, each one pass over memory with fp32 arithmetic inside:

    bias_gelu        gelu(x + bias), erf or tanh form          (one read of x, one write)
    skip_layer_norm  s = x + skip; (layer_norm(s) * w + b, s)  (two reads, two writes)
    skip_rms_norm    s = x + skip; (rms_norm(s) * w, s)
    rms_norm         rms_norm(x) * w                           (the skip kernel without skip)
    rotary           x * cos + cat(-x2, x1) * sin              (cos/sin broadcast over rows)

The torch ops they replace take two to six kernels each (an add, then the norm; rotary's
slices, neg, cat, two muls and an add). Each result rounds like the IR's NumPy kernel where
that matters: ``x + skip`` and ``x + bias`` are rounded to the input dtype before the norm or
the GELU reads them, exactly as the IR op (and eager PyTorch) computes them.

This module imports Triton at the top: ``torch_ops.ops_for`` imports it only when a program
is built for CUDA, so Triton stays optional. :data:`OPS` maps IR op names to functions with
the signatures of ``torch_ops.OPS``; each checks that its inputs suit the kernel (CUDA,
fp32/fp16/bf16, normalization over the last dim, no autograd, not under ``torch.compile``)
and otherwise calls the torch op. The ``launch_*`` functions run the kernels unconditionally,
on whatever device Triton targets (CPU tensors under ``TRITON_INTERPRET=1``, which the tests
use without a GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import torch_ops

Tensor = torch.Tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HIDDEN = 16384  # one row per program, held in registers: wider rows use the torch ops
_ELEMENTWISE_BLOCK = 1024

# -- kernels ---------------------------------------------------------------------------------


@triton.jit
def _tanh(z):
    # tanh(|z|) = (1 - e) / (1 + e) with e = exp(-2|z|) in (0, 1]: nothing overflows.
    e = tl.exp(-2.0 * tl.abs(z))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(z < 0, -t, t)


@triton.jit
def _bias_gelu_kernel(x_ptr, bias_ptr, out_ptr, n, hidden, TANH: tl.constexpr,
                      BLOCK: tl.constexpr):  # fmt: skip
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(bias_ptr + offs % hidden, mask=mask, other=0.0).to(tl.float32)
    s = (x + b).to(out_ptr.dtype.element_ty).to(tl.float32)  # the IR rounds x + bias first
    if TANH:
        inner = 0.7978845608028654 * (s + 0.044715 * s * s * s)  # sqrt(2/pi) * (s + c s^3)
        y = 0.5 * s * (1.0 + _tanh(inner))
    else:
        y = 0.5 * s * (1.0 + tl.math.erf(s * 0.7071067811865476))  # s / sqrt(2)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _skip_norm_kernel(
    x_ptr, skip_ptr, w_ptr, b_ptr, y_ptr, s_ptr, hidden, eps,
    HAS_SKIP: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, RMS: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    # One program per row of (rows, hidden): s = x + skip, then layer or RMS norm of s.
    row = tl.program_id(0).to(tl.int64) * hidden
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    s = tl.load(x_ptr + row + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_SKIP:
        s += tl.load(skip_ptr + row + cols, mask=mask, other=0.0).to(tl.float32)
        s = s.to(s_ptr.dtype.element_ty)  # the residual output, rounded as the IR's is
        tl.store(s_ptr + row + cols, s, mask=mask)
        s = s.to(tl.float32)
    if RMS:
        centered = s
    else:
        mean = tl.sum(s, axis=0) / hidden
        centered = tl.where(mask, s - mean, 0.0)
    var = tl.sum(centered * centered, axis=0) / hidden
    y = centered / tl.sqrt(var + eps)
    if HAS_W:
        y *= tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        y += tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    x_ptr, cos_ptr, sin_ptr, out_ptr, d1, d2, half,
    xs0, xs1, xs2, cs0, cs1, cs2, ss0, ss1, ss2,
    BLOCK: tl.constexpr,
):  # fmt: skip
    # One program per row (i0, i1, i2) of a rank-4 view; strides in elements, last dim 1.
    r = tl.program_id(0).to(tl.int64)
    i2 = r % d2
    i1 = (r // d2) % d1
    i0 = r // (d1 * d2)
    x_row = x_ptr + i0 * xs0 + i1 * xs1 + i2 * xs2
    c_row = cos_ptr + i0 * cs0 + i1 * cs1 + i2 * cs2
    s_row = sin_ptr + i0 * ss0 + i1 * ss1 + i2 * ss2
    o_row = out_ptr + r * 2 * half
    cols = tl.arange(0, BLOCK)
    mask = cols < half
    x1 = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + half + cols, mask=mask, other=0.0).to(tl.float32)
    c1 = tl.load(c_row + cols, mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(c_row + half + cols, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(s_row + cols, mask=mask, other=0.0).to(tl.float32)
    s2 = tl.load(s_row + half + cols, mask=mask, other=0.0).to(tl.float32)
    # out = x * cos + cat(-x2, x1) * sin, one half at a time
    tl.store(o_row + cols, (x1 * c1 - x2 * s1).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(o_row + half + cols, (x2 * c2 + x1 * s2).to(out_ptr.dtype.element_ty), mask=mask)


# -- launchers -------------------------------------------------------------------------------


def _row_warps(block: int) -> int:
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


def launch_bias_gelu(x: Tensor, bias: Tensor, approximate: str) -> Tensor:
    """gelu(x + bias) over the last dim of contiguous ``x``; ``approximate`` "none" or "tanh"."""
    x, bias = x.contiguous(), bias.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    if n:
        grid = (triton.cdiv(n, _ELEMENTWISE_BLOCK),)
        _bias_gelu_kernel[grid](
            x, bias, out, n, x.shape[-1], TANH=approximate == "tanh", BLOCK=_ELEMENTWISE_BLOCK
        )
    return out


def launch_norm(
    x: Tensor,
    skip: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    rms: bool,
) -> tuple[Tensor, Tensor | None]:
    """(norm(x + skip) * weight + bias, x + skip) over the last dim; the sum is None without
    ``skip``. ``rms`` picks RMS norm (no mean, no bias) over layer norm."""
    x = x.contiguous()
    hidden = x.shape[-1]
    rows = x.numel() // hidden if hidden else 0
    y = torch.empty_like(x)
    s = torch.empty_like(x) if skip is not None else None
    if rows:
        block = triton.next_power_of_2(hidden)
        _skip_norm_kernel[(rows,)](
            x, x if skip is None else skip.contiguous(),
            x if weight is None else weight.contiguous(),
            x if bias is None else bias.contiguous(),
            y, y if s is None else s, hidden, float(eps),
            HAS_SKIP=skip is not None, HAS_W=weight is not None, HAS_B=bias is not None,
            RMS=rms, BLOCK=block, num_warps=_row_warps(block),
        )  # fmt: skip
    return y, s


def launch_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half rotary embedding; cos and sin broadcast to ``x`` (rank 1 to 4, even last
    dim, every operand's last dim contiguous). The result is contiguous."""
    shape = x.shape
    shape4 = (1,) * (4 - x.dim()) + tuple(shape)  # everything viewed as rank 4, no copies
    x4, cos4, sin4 = (t.expand(shape).reshape(shape4) for t in (x, cos, sin))
    out = torch.empty(shape, dtype=x.dtype, device=x.device)
    d0, d1, d2, dim = x4.shape
    if out.numel():
        block = triton.next_power_of_2(dim // 2)
        _rotary_kernel[(d0 * d1 * d2,)](
            x4, cos4, sin4, out, d1, d2, dim // 2, *x4.stride()[:3], *cos4.stride()[:3],
            *sin4.stride()[:3], BLOCK=block, num_warps=_row_warps(block),
        )  # fmt: skip
    return out


# -- the op table: kernels where they apply, the torch ops elsewhere ----------------------------


def _on_cuda(x: Tensor) -> bool:
    # Under torch.compile the torch ops stay, so that inductor fuses them as it likes.
    return x.is_cuda and not torch.compiler.is_compiling()


def _kernel_ok(x: Tensor, *others: Tensor | None) -> bool:
    """Whether the kernels may take these operands (any device: see _on_cuda)."""
    tensors = [x, *(t for t in others if t is not None)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False  # no backward kernels: training runs the torch ops
    if x.numel() >= 2**31:
        return False
    return all(t.dtype in FLOAT_DTYPES and t.device == x.device for t in tensors)


def _last_dim_ok(x: Tensor, axis: int, *params: Tensor | None) -> bool:
    """Normalization over the last dim only, per-feature parameters, a width that fits."""
    if x.dim() == 0 or axis % x.dim() != x.dim() - 1 or not 0 < x.shape[-1] <= MAX_HIDDEN:
        return False
    return all(p is None or tuple(p.shape) == (x.shape[-1],) for p in params)


def _bias_gelu_ok(x: Tensor, bias: Tensor, approximate: str) -> bool:
    if x.dim() == 0 or tuple(bias.shape) != (x.shape[-1],) or x.dtype != bias.dtype:
        return False
    return approximate in ("none", "tanh") and _kernel_ok(x, bias)


def triton_bias_gelu(x: Tensor, bias: Tensor, approximate: str) -> Tensor:
    if _on_cuda(x) and _bias_gelu_ok(x, bias, approximate):
        return launch_bias_gelu(x, bias, approximate)
    return torch_ops.bias_gelu(x, bias, approximate)


def _skip_ok(x: Tensor, skip: Tensor, axis: int, *params: Tensor | None) -> bool:
    same = skip.shape == x.shape and skip.dtype == x.dtype  # a broadcast residual: torch ops
    return same and _kernel_ok(x, skip, *params) and _last_dim_ok(x, axis, *params)


def triton_skip_layer_norm(x, skip, w, b, axis, eps) -> tuple[Tensor, Tensor]:
    if _on_cuda(x) and _skip_ok(x, skip, axis, w, b):
        return launch_norm(x, skip, w, b, eps, rms=False)
    return torch_ops.skip_layer_norm(x, skip, w, b, axis, eps)


def triton_skip_rms_norm(x, skip, w, axis, eps) -> tuple[Tensor, Tensor]:
    if _on_cuda(x) and _skip_ok(x, skip, axis, w):
        return launch_norm(x, skip, w, None, eps, rms=True)
    return torch_ops.skip_rms_norm(x, skip, w, axis, eps)


def triton_rms_norm(x: Tensor, w: Tensor | None, axis: int, eps: float) -> Tensor:
    if _on_cuda(x) and _kernel_ok(x, w) and _last_dim_ok(x, axis, w):
        return launch_norm(x, None, w, None, eps, rms=True)[0]
    return torch_ops.rms_norm(x, w, axis, eps)


def _rotary_ok(x: Tensor, cos: Tensor, sin: Tensor) -> bool:
    if not 1 <= x.dim() <= 4 or x.shape[-1] % 2 or x.shape[-1] // 2 > MAX_HIDDEN:
        return False
    if cos.dim() > x.dim() or sin.dim() > x.dim() or not (x.dtype == cos.dtype == sin.dtype):
        return False
    try:
        views = [t.expand(x.shape) for t in (x, cos, sin)]
    except RuntimeError:  # does not broadcast to x
        return False
    return all(v.stride(-1) == 1 for v in views)  # rows contiguous (a broadcast last dim: no)


def triton_rotary(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    # the kernel is rotate-half's; the interleaved form runs on torch
    if not interleaved and _on_cuda(x) and _kernel_ok(x, cos, sin) and _rotary_ok(x, cos, sin):
        return launch_rotary(x, cos, sin)
    return torch_ops.rotary(x, cos, sin, interleaved)


# The entries that torch_ops.ops_for puts over torch_ops.OPS on CUDA.
OPS = {
    "bias_gelu": triton_bias_gelu,
    "skip_layer_norm": triton_skip_layer_norm,
    "skip_rms_norm": triton_skip_rms_norm,
    "rms_norm": triton_rms_norm,
    "rotary": triton_rotary,
}
