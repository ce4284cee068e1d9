"""The torch backend on CUDA: CUDA graphs per shape, half precision and the Triton epilogues
(skipped without a GPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from model_cases import all_tensors
from torch_helpers import Tiny

import tgraph
from tgraph.api import model_tensors
from tgraph.backends import torch_ops
from tgraph.backends.torch_backend import lower
from tgraph.ir import DType, SymDim

F32, I64, BOOL = DType.float32, DType.int64, DType.bool
BATCH, SEQ = SymDim.symbol("batch"), SymDim.symbol("seq")
SIZES = ((2, 5), (3, 8))


# -- CUDA ----------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_cuda_graphs_replay_per_shape():
    torch.manual_seed(0)
    model = Tiny().eval().cuda()
    graph = tgraph.trace(model, (torch.randn(2, 3, 4, device="cuda"),))
    runner = lower(graph, "cuda", params=model_tensors(model))
    assert runner.cuda_graphs
    assert [id(p) for p in runner.parameters()] == [id(p) for p in model.parameters()]
    with torch.no_grad():
        for shape in ((2, 3, 4), (3, 5, 4), (2, 3, 4)):
            x = torch.randn(shape, device="cuda")
            first = runner([x])[0]
            torch.testing.assert_close(first, model(x))
            torch.testing.assert_close(runner([x])[0], first)  # a replay
        assert len(runner._graphs._entries) == 2
        model.proj.weight.mul_(2.0)  # in place: replays see it
        torch.testing.assert_close(runner([x])[0], model(x))
    # with autograd on, the program runs eagerly and trains the model's parameters
    runner([x])[0].sum().backward()
    assert model.proj.weight.grad is not None


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision(dtype):
    torch.manual_seed(0)
    model = Tiny().eval().to("cuda", dtype)
    graph = tgraph.trace(model, (torch.randn(2, 3, 4, device="cuda", dtype=dtype),))
    runner = lower(graph, "cuda", params=model_tensors(model), cuda_graphs=False)
    x = torch.randn(3, 5, 4, device="cuda", dtype=dtype)
    got = runner([x])[0]
    assert got.dtype == dtype
    torch.testing.assert_close(got, model(x), rtol=2e-2, atol=2e-2)


# Zoo models compiled for CUDA: the fused epilogues must run Triton kernels (where Triton is
# installed) and the results must match eager on the GPU.
CUDA_ZOO = {
    "bert-tiny": ("triton_skip_layer_norm",),
    "gpt-tiny": ("triton_skip_layer_norm",),
    "llama-tiny": ("triton_skip_rms_norm", "triton_rms_norm", "triton_rotary"),
}


def _cuda_zoo(name: str, dtype: torch.dtype):
    from tgraph.models import build, example_inputs

    torch.manual_seed(0)
    fp32 = build(name).eval().cuda()
    model = copy.deepcopy(fp32).to(dtype)
    inputs = {k: v.cuda() for k, v in example_inputs(model, batch=2, seq=16).items()}
    return fp32, tgraph.compile(model, inputs, backend="torch", device="cuda")


def _cuda_check(fp32, cm, tol: float) -> None:
    """cm against eager fp32 at other sizes, relative to the largest output; replays agree."""
    from tgraph.models import example_inputs

    for batch, seq in ((1, 7), (3, 12)):
        kwargs = {k: v.cuda() for k, v in example_inputs(fp32, batch=batch, seq=seq).items()}
        with torch.no_grad():
            want = all_tensors(fp32(**kwargs))
            got = all_tensors(cm(**kwargs))
            again = all_tensors(cm(**kwargs))  # a CUDA-graph replay
        for w, g, a in zip(want, got, again):
            assert g.shape == w.shape and g.is_cuda
            scale = w.abs().max().item()
            torch.testing.assert_close(g.float(), w, rtol=0, atol=tol * scale)
            torch.testing.assert_close(a, g, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(CUDA_ZOO))
def test_cuda_zoo_fp32_runs_the_triton_epilogues(name):
    fp32, cm = _cuda_zoo(name, torch.float32)
    if torch_ops._triton_ops():
        code = cm.runner.program.code
        missing = [k for k in CUDA_ZOO[name] if k not in code]
        assert not missing, f"the program does not call {missing}"
    assert cm.runner.cuda_graphs
    _cuda_check(fp32, cm, tol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(CUDA_ZOO))
def test_cuda_zoo_fp16(name):
    fp32, cm = _cuda_zoo(name, torch.float16)
    if torch_ops._triton_ops():
        assert CUDA_ZOO[name][0] in cm.runner.program.code
    _cuda_check(fp32, cm, tol=2e-2)


@pytest.mark.cuda
def test_cuda_triton_epilogues_stay_out_of_training():
    from tgraph.models import build, example_inputs

    torch.manual_seed(0)
    model = build("llama-tiny").cuda().train()
    kwargs = {k: v.cuda() for k, v in example_inputs(model, batch=2, seq=8).items()}
    cm = tgraph.compile(model, kwargs, backend="torch", device="cuda")
    all_tensors(cm(**kwargs))[0].float().sum().backward()  # the kernels have no backward
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    all_tensors(model(**kwargs))[0].float().sum().backward()
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-3, atol=2e-4)
