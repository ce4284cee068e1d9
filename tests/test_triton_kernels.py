"""The Triton kernels of the torch backend (backends/triton_kernels.py).

On a machine with CUDA the kernels run on the GPU. Without one they run in Triton's
interpreter (``TRITON_INTERPRET=1``, set below before Triton decorates the kernels) on CPU
tensors, which checks the kernels' indexing, masking and arithmetic but not GPU compilation.
The whole file is skipped when Triton is not installed (CI installs only ``.[test]``).

Oracles: the IR's NumPy kernels for fp32; for fp16/bf16 the same formula computed in fp32
from the rounded inputs (``x + skip`` and ``x + bias`` rounded to the dtype first, as the IR
specifies), within one or two ulps of the dtype.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the kernels' decoration

triton = pytest.importorskip("triton")

from tgraph.backends import torch_ops  # noqa: E402
from tgraph.backends import triton_kernels as tk  # noqa: E402
from tgraph.ir.ops import get_op  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Tolerances against an fp32 computation of the same rounded inputs: one or two ulps.
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# Triton's interpreter casts fp32 to bf16 by truncation (the GPU rounds to nearest even), so
# there a bf16 result may sit one ulp off the rounded reference, and what it feeds two.
INTERPRETED_BF16 = DEVICE == "cpu"
ROW_SHAPES = [(7, 768), (1, 512), (3, 5, 100), (2, 3, 1000), (5, 4096), (3, 1)]


@pytest.fixture(autouse=True, scope="module")
def _kernels_run_somewhere():
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA GPU and TRITON_INTERPRET is not 1")
    if DEVICE == "cpu" and type(tk._skip_norm_kernel).__name__ != "InterpretedFunction":
        pytest.skip("the kernels were decorated before TRITON_INTERPRET=1 was set")


def randn(*shape: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype).to(DEVICE)


def close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), rtol=TOL[dtype], atol=TOL[dtype])


def numpy_kernel(op: str, *tensors: torch.Tensor | None, **attrs):
    arrays = [None if t is None else t.cpu().numpy() for t in tensors]
    out = get_op(op).kernel(*arrays, **attrs)
    outs = out if isinstance(out, tuple) else (out,)
    return [torch.from_numpy(np.asarray(o)).to(DEVICE) for o in outs]


# -- bias + GELU --------------------------------------------------------------------------------


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(7, 768), (3, 5, 100), (1, 1), (2, 3072)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_gelu(shape, approximate, dtype):
    x, b = randn(*shape, dtype=dtype), randn(shape[-1], dtype=dtype, seed=1)
    got = tk.launch_bias_gelu(x, b, approximate)
    want = F.gelu((x + b).float(), approximate=approximate)  # x + b rounded to dtype first
    close(got, want, dtype)
    if dtype == torch.float32:
        close(got, numpy_kernel("bias_gelu", x, b, approximate=approximate)[0], dtype)


def test_bias_gelu_tanh_saturates():
    x = torch.tensor([[-60.0, -12.0, -1e-3, 0.0, 1e-3, 12.0, 60.0]], device=DEVICE)
    got = tk.launch_bias_gelu(x, torch.zeros(7, device=DEVICE), "tanh")
    assert torch.isfinite(got).all()
    close(got, F.gelu(x, approximate="tanh"), torch.float32)


# -- residual add + norms -----------------------------------------------------------------------


def _norm_reference(s: torch.Tensor, w, b, eps: float, rms: bool) -> torch.Tensor:
    s = s.float()
    if rms:
        y = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps)
    else:
        y = F.layer_norm(s, s.shape[-1:], eps=eps)
    if w is not None:
        y = y * w.float()
    if b is not None:
        y = y + b.float()
    return y


@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("shape", ROW_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_skip_norm(shape, rms, dtype):
    x, skip = randn(*shape, dtype=dtype), randn(*shape, dtype=dtype, seed=1)
    w = randn(shape[-1], dtype=dtype, seed=2)
    b = None if rms else randn(shape[-1], dtype=dtype, seed=3)
    y, s = tk.launch_norm(x, skip, w, b, 1e-5, rms=rms)
    want_s = x + skip  # rounded to dtype: the IR's second output, and what the norm reads
    if dtype == torch.bfloat16 and INTERPRETED_BF16:
        torch.testing.assert_close(s, want_s, rtol=2**-7, atol=0)  # within one ulp
        close(y, _norm_reference(s, w, b, 1e-5, rms), dtype)  # from the sum it stored
    else:
        assert torch.equal(s, want_s)
        close(y, _norm_reference(want_s, w, b, 1e-5, rms), dtype)


@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
def test_skip_norm_matches_the_ir_kernel(rms):
    shape = (2, 9, 96)
    x, skip, w = randn(*shape), randn(*shape, seed=1), randn(96, seed=2)
    if rms:
        want = numpy_kernel("skip_rms_norm", x, skip, w, axis=-1, eps=1e-6)
        got = tk.launch_norm(x, skip, w, None, 1e-6, rms=True)
    else:
        b = randn(96, seed=3)
        want = numpy_kernel("skip_layer_norm", x, skip, w, b, axis=-1, eps=1e-6)
        got = tk.launch_norm(x, skip, w, b, 1e-6, rms=False)
    for g, w_ in zip(got, want):  # (normalized, x + skip), in the IR's output order
        close(g, w_, torch.float32)


@pytest.mark.parametrize("shape", [(5, 768), (3, 7, 512)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_norm_without_skip_or_params(shape, dtype):
    x = randn(*shape, dtype=dtype) * 3 + 1  # a mean and scale for the norm to remove
    y, s = tk.launch_norm(x, None, None, None, 1e-5, rms=False)
    assert s is None
    close(y, _norm_reference(x, None, None, 1e-5, rms=False), dtype)
    w = randn(shape[-1], dtype=dtype, seed=4)
    y, _ = tk.launch_norm(x, None, w, None, 1e-6, rms=True)
    close(y, numpy_kernel("rms_norm", x.float(), w.float(), axis=-1, eps=1e-6)[0], dtype)


# -- rotary ---------------------------------------------------------------------------------------


def _rotary_reference(x, cos, sin) -> torch.Tensor:
    return torch_ops.rotary(x.float(), cos.float(), sin.float())


ROTARY_CASES = {
    # x (B, T, H, D) as a strided view of a fused projection; cos/sin (T, 1, D) as in Llama
    "bthd-strided": ((2, 7, 3, 64), (7, 1, 64), True),
    "bhtd": ((2, 3, 5, 96), (1, 1, 5, 96), False),  # half = 48: not a power of two
    "td": ((9, 8), (9, 8), False),
    "bhtd-per-batch": ((3, 2, 4, 16), (3, 1, 4, 16), False),
}


@pytest.mark.parametrize("case", sorted(ROTARY_CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary(case, dtype):
    x_shape, table_shape, strided = ROTARY_CASES[case]
    if strided:  # the q part of a (B, T, 2*H*D) projection, viewed as (B, T, H, D)
        b, t, h, d = x_shape
        x = randn(b, t, 2 * h * d, dtype=dtype)[..., : h * d].reshape(x_shape)
        assert not x.is_contiguous()
    else:
        x = randn(*x_shape, dtype=dtype)
    cos, sin = randn(*table_shape, dtype=dtype, seed=1), randn(*table_shape, dtype=dtype, seed=2)
    got = tk.launch_rotary(x, cos, sin)
    assert got.is_contiguous()
    close(got, _rotary_reference(x, cos, sin), dtype)
    if dtype == torch.float32:
        close(got, numpy_kernel("rotary", x, cos, sin)[0], dtype)


# -- which inputs the op table sends to the kernels ------------------------------------------------


def test_kernel_checks_reject_what_the_kernels_cannot_do():
    x, w = randn(3, 8), randn(8)
    assert tk._kernel_ok(x, w) and tk._last_dim_ok(x, -1, w) and tk._last_dim_ok(x, 1, w)
    assert not tk._kernel_ok(x, w.requires_grad_())  # autograd: the torch ops
    with torch.no_grad():
        assert tk._kernel_ok(x, w)
    assert not tk._kernel_ok(x.long())
    assert not tk._kernel_ok(x, w.detach().double())
    y = randn(3, 4, 8)
    assert not tk._last_dim_ok(y, 1)  # normalizes over (4, 8): more than the last dim
    assert not tk._last_dim_ok(y, -1, randn(4, 8))  # 2-D weight
    assert not tk._last_dim_ok(randn(2, tk.MAX_HIDDEN + 1), -1)
    assert not tk._skip_ok(y, randn(4, 8), -1)  # residual broadcasts
    assert not tk._skip_ok(y, y.half(), -1)
    assert tk._skip_ok(y, randn(3, 4, 8, seed=1), -1)
    assert not tk._bias_gelu_ok(y, randn(8).half(), "none")
    assert not tk._bias_gelu_ok(y, randn(8), "sigmoid")
    assert tk._bias_gelu_ok(y, randn(8), "tanh")


def test_rotary_checks():
    x = randn(2, 5, 3, 8)
    assert tk._rotary_ok(x, randn(5, 1, 8), randn(5, 1, 8))
    assert not tk._rotary_ok(randn(2, 5, 3, 7), randn(5, 1, 7), randn(5, 1, 7))  # odd dim
    assert not tk._rotary_ok(x, randn(5, 2, 8), randn(5, 2, 8))  # does not broadcast
    assert not tk._rotary_ok(x, randn(5, 1, 1), randn(5, 1, 1))  # broadcast last dim
    assert not tk._rotary_ok(x, randn(5, 1, 8).half(), randn(5, 1, 8))
    assert not tk._rotary_ok(randn(1, 2, 5, 3, 8), randn(5, 1, 8), randn(5, 1, 8))  # rank 5


@pytest.mark.skipif(DEVICE == "cuda", reason="CPU tensors only reach the fallback off CUDA")
def test_op_entries_use_the_torch_ops_off_cuda(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a kernel ran for CPU tensors")

    for name in ("launch_norm", "launch_bias_gelu", "launch_rotary"):
        monkeypatch.setattr(tk, name, boom)
    x, skip, w, b = randn(3, 8), randn(3, 8, seed=1), randn(8, seed=2), randn(8, seed=3)
    for got, want in zip(
        tk.triton_skip_layer_norm(x, skip, w, b, -1, 1e-5),
        torch_ops.skip_layer_norm(x, skip, w, b, -1, 1e-5),
    ):
        assert torch.equal(got, want)
    assert torch.equal(tk.triton_bias_gelu(x, b, "none"), torch_ops.bias_gelu(x, b, "none"))
    assert torch.equal(tk.triton_rms_norm(x, w, -1, 1e-6), torch_ops.rms_norm(x, w, -1, 1e-6))


@pytest.mark.cuda
def test_op_entries_launch_kernels_on_cuda_and_fall_back_for_training(monkeypatch):
    launched = []
    launch_norm = tk.launch_norm
    monkeypatch.setattr(
        tk, "launch_norm", lambda *a, **k: launched.append(1) or launch_norm(*a, **k)
    )
    x, skip, w, b = randn(5, 768), randn(5, 768, seed=1), randn(768, seed=2), randn(768, seed=3)
    with torch.no_grad():
        got = tk.triton_skip_layer_norm(x, skip, w, b, -1, 1e-5)
    assert launched == [1]
    want = torch_ops.skip_layer_norm(x, skip, w, b, -1, 1e-5)
    for g, w_ in zip(got, want):
        close(g, w_, torch.float32)
    w.requires_grad_()
    y, _ = tk.triton_skip_layer_norm(x, skip, w, b, -1, 1e-5)  # autograd on: torch ops
    assert launched == [1] and y.requires_grad


def test_ops_for_picks_the_kernels_on_cuda_only(monkeypatch):
    cuda = torch_ops.ops_for(torch.device("cuda"))
    assert cuda["skip_layer_norm"] is tk.triton_skip_layer_norm
    assert cuda["rotary"] is tk.triton_rotary and cuda["linear"] is torch_ops.linear
    assert set(cuda) == set(torch_ops.OPS)
    assert torch_ops.ops_for(torch.device("cpu")) is torch_ops.OPS
    monkeypatch.setenv("TGRAPH_TRITON", "0")
    assert torch_ops.ops_for(torch.device("cuda")) is torch_ops.OPS
