"""fuse-qkv-attention: attention{bsd}(split(linear(x, W, b)), mask) -> qkv_attention, and the
qkv_attention op on the ORT and torch backends against the reference kernel."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from pass_helpers import assert_same_outputs, check_pass, matches, rejections, trace_module

from tgraph.backends import ort as ort_backend
from tgraph.backends import torch_backend
from tgraph.backends.reference import run_graph
from tgraph.ir import DType, Graph, IRError, SymDim, evaluate
from tgraph.passes.manager import optimize

D, HEADS = 32, 4
F32, BOOL = DType.float32, DType.bool
BATCH, SEQ = SymDim.symbol("batch"), SymDim.symbol("seq")
SIZES = ((2, 5), (3, 8))
PREP = "fuse-attention,simplify,dce,merge-qkv"  # what runs before the pass in `default`


def _randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


class SelfAttention(torch.nn.Module):
    """One attention block: q/k/v projections (separate or packed), sdpa, output projection.

    ``order`` names which split output is q, k, v (packed only); ``leak`` reads k again:
    "output" returns it too, "add" adds it to the result.
    """

    def __init__(self, packed=False, bias=True, kv_heads=HEADS, order=(0, 1, 2), leak=None):
        super().__init__()
        kv = D // HEADS * kv_heads
        self.sizes = [D, kv, kv]
        if packed:
            self.qkv = torch.nn.Linear(D, sum(self.sizes), bias=bias)
        else:
            self.q, self.k, self.v = (torch.nn.Linear(D, n, bias=bias) for n in self.sizes)
        self.out = torch.nn.Linear(D, D)
        self.packed, self.kv_heads, self.order, self.leak = packed, kv_heads, order, leak

    def _heads(self, t, heads):
        return t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # (B, H, T, D)

    def forward(self, x, pad=None, causal=False):
        if self.packed:
            parts = self.qkv(x).split(self.sizes, dim=-1)
            q, k, v = (parts[i] for i in self.order)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        mask = None if pad is None else pad[:, None, None, :]  # additive (B, 1, 1, T)
        y = torch.nn.functional.scaled_dot_product_attention(
            self._heads(q, HEADS),
            self._heads(k, self.kv_heads),
            self._heads(v, self.kv_heads),
            attn_mask=mask,
            is_causal=causal,
            enable_gqa=self.kv_heads != HEADS,
        )
        y = self.out(y.transpose(1, 2).reshape(x.shape))
        if self.leak == "add":
            return y + k
        return (y, k) if self.leak == "output" else y


class Causal(SelfAttention):
    def forward(self, x):
        return super().forward(x, causal=True)


def _prepared(module, mask=True):
    args = (torch.randn(2, 5, D), torch.randn(2, 5)) if mask else (torch.randn(2, 5, D),)
    g = trace_module(module, *args)
    out, _ = optimize(g, PREP)
    return g, out


def _unchanged(graph):
    out, records = optimize(graph, "fuse-qkv-attention")
    assert out.dump() == graph.dump()
    return records


# -- the pass ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, mask, n_inputs",
    [
        ({}, True, 4),  # BERT-like: separate q/k/v merged by merge-qkv
        ({"packed": True}, False, 3),  # GPT-2-like: one c_attn projection
        ({"packed": True, "bias": False}, True, 4),  # [x, w, None, mask]
        ({"kv_heads": 2}, True, 4),  # GQA: the op keeps kv_heads
    ],
)
def test_attention_of_split_projection_fuses(kwargs, mask, n_inputs):
    g, prepared = _prepared(SelfAttention(**kwargs), mask)
    out, records = check_pass(
        prepared, "fuse-qkv-attention", appear=["qkv_attention"], disappear=["attention", "split"]
    )
    assert matches(records, "qkv-attention") == 1
    (node,) = [n for n in out.nodes if n.op == "qkv_attention"]
    assert len(node.inputs) == n_inputs
    assert (node.inputs[2] is None) == (kwargs.get("bias") is False)
    kv_heads = kwargs.get("kv_heads", HEADS)
    kv = D // HEADS * kv_heads
    assert node.attrs["sizes"] == (D, kv, kv) and node.attrs["kv_heads"] == kv_heads
    assert out.op_histogram()["linear"] == 1  # only the output projection is left
    assert_same_outputs(g, out)  # against the traced graph too


def test_causal_flag_is_kept():
    g, prepared = _prepared(Causal(packed=True), mask=False)
    out, _ = check_pass(prepared, "fuse-qkv-attention", appear=["qkv_attention"])
    (node,) = [n for n in out.nodes if n.op == "qkv_attention"]
    assert node.attrs["causal"] is True


@pytest.mark.parametrize(
    "leak, reason", [("output", "is a graph output"), ("add", "is also used by %output (add)")]
)
def test_split_output_used_elsewhere_is_rejected(leak, reason):
    _, prepared = _prepared(SelfAttention(packed=True, leak=leak))
    (why,) = rejections(_unchanged(prepared), "qkv-attention")
    assert why["reason"].startswith("interior value %") and why["reason"].endswith(reason)


def test_split_outputs_in_another_order_are_rejected():
    _, prepared = _prepared(SelfAttention(packed=True, order=(1, 0, 2)))
    assert prepared.op_histogram().get("attention") == 1
    (why,) = rejections(_unchanged(prepared), "qkv-attention")
    assert why["reason"] == "q, k, v are split outputs (1, 0, 2), want (0, 1, 2)"


def test_bhsd_attention_is_left_alone():
    g = Graph("bhsd")
    x = g.add_input("x", F32, (BATCH, HEADS, SEQ, 8))
    w = g.add_initializer("w", _randn(24, 8))
    y = g.create_node("linear", [x, w]).output
    q, k, v = g.create_node("split", [y], {"axis": -1, "sizes": (8, 8, 8)}).outputs
    attrs = dict(num_heads=HEADS, kv_heads=HEADS, scale=0.3, layout="bhsd")
    g.outputs = [g.create_node("attention", [q, k, v], attrs).output]
    g.verify()
    assert rejections(_unchanged(g), "qkv-attention") == []


@pytest.mark.parametrize("name", ["hf-bert", "bert-tiny", "hf-gpt2"])
def test_default_turns_every_layer_into_qkv_attention(traced_case, name):
    _, g = traced_case(name)
    out, records = check_pass(
        g, "default", appear=["qkv_attention"], disappear=["attention"], sizes=((2, 16), (1, 5))
    )
    assert out.op_histogram()["qkv_attention"] == matches(records, "qkv-attention") == 2


# -- the op on the backends -------------------------------------------------------------------


def _qkv_graph(mask=None, bias=True, causal=False, kv_heads=HEADS, scale=0.3) -> Graph:
    """x (B, T, 32) -> qkv_attention with a constant weight; ``mask`` is a kind of mask input."""
    g = Graph("qkv")
    x = g.add_input("x", F32, (BATCH, SEQ, D))
    sizes = (D, D // HEADS * kv_heads, D // HEADS * kv_heads)
    w = g.add_initializer("attn.qkv.weight", _randn(sum(sizes), D, seed=1) * 0.3)
    b = g.add_initializer("attn.qkv.bias", _randn(sum(sizes), seed=2)) if bias else None
    masks = {
        "float": (F32, (BATCH, 1, 1, SEQ)),
        "float-square": (F32, (BATCH, 1, SEQ, SEQ)),
        "bool": (BOOL, (BATCH, 1, 1, SEQ)),
        "bool-square": (BOOL, (BATCH, 1, SEQ, SEQ)),
    }
    m = g.add_input("mask", *masks[mask]) if mask else None
    inputs = [x, w, b, m] if mask else [x, w, b] if bias else [x, w]
    attrs = dict(num_heads=HEADS, kv_heads=kv_heads, scale=scale, causal=causal, sizes=sizes)
    g.outputs = [g.create_node("qkv_attention", inputs, attrs).output]
    g.verify()
    return g


def _inputs(graph: Graph, batch: int, seq: int, seed: int) -> list[np.ndarray]:
    """Random inputs; bool masks keep key 0, so no attention row is fully masked."""
    rng = np.random.default_rng(seed)
    out = []
    for v in graph.inputs:
        shape = tuple(evaluate(d, {"batch": batch, "seq": seq}) for d in v.shape)
        if v.dtype is BOOL:
            a = rng.random(shape) < 0.7
            a[..., 0] = True
        else:
            a = rng.standard_normal(shape).astype(np.float32)
        out.append(a)
    return out


def _node(graph: Graph):
    return next(n for n in graph.nodes if n.op == "qkv_attention")


def _ms_attention(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Attention" and n.domain == "com.microsoft" for n in model.graph.node)


CASES = [
    dict(),
    dict(mask="float"),
    dict(mask="float-square"),
    dict(mask="bool"),
    dict(mask="bool-square", causal=True),
    dict(causal=True),
    dict(mask="float", bias=False),
    dict(bias=False),
    dict(scale=-0.3, mask="bool"),
]
FALLBACK = [
    dict(kv_heads=2, mask="float"),
    dict(kv_heads=2, causal=True),
    dict(scale=0.0),  # com.microsoft Attention reads 0 as 1/sqrt(head size)
]


@pytest.mark.parametrize("kwargs", CASES + FALLBACK, ids=str)
def test_ort_matches_reference(kwargs):
    graph = _qkv_graph(**kwargs)
    fits = kwargs not in FALLBACK
    for fused in (True, False):
        model = ort_backend.to_onnx(graph, fused_kernels=fused)
        onnx.checker.check_model(model, full_check=True)
        assert _ms_attention(model) == int(fused and fits)
        # The weight is stored once, as the (in, out) matrix that Attention and MatMul read.
        shapes = [tuple(t.dims) for t in model.graph.initializer if len(t.dims) == 2]
        assert shapes == [(D, sum(_node(graph).attrs["sizes"]))]
        for ort_opt in (False, True):
            runner = ort_backend.lower(graph, fused_kernels=fused, ort_optimizations=ort_opt)
            for seed, (batch, seq) in enumerate(SIZES):
                arrays = _inputs(graph, batch, seq, seed)
                (want,) = run_graph(graph, arrays)
                (got,) = runner([torch.from_numpy(a) for a in arrays])
                np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs", CASES + FALLBACK, ids=str)
def test_torch_matches_reference(kwargs):
    graph = _qkv_graph(**kwargs)
    runner = torch_backend.lower(graph, "cpu")
    for seed, (batch, seq) in enumerate(SIZES):
        arrays = _inputs(graph, batch, seq, seed)
        (want,) = run_graph(graph, arrays)
        with torch.no_grad():
            (got,) = runner([torch.from_numpy(a) for a in arrays])
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


def test_kernel_is_split_linear_attention():
    g = _qkv_graph(mask="float", causal=True)
    x, mask = _inputs(g, 2, 6, seed=3)
    node = _node(g)
    w, b = (v.const for v in node.inputs[1:3])
    q, k, v = np.split(x @ w.T + b, [D, 2 * D], axis=-1)
    want = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(t).view(2, 6, HEADS, -1).transpose(1, 2) for t in (q, k, v)),
        attn_mask=torch.from_numpy(mask).masked_fill(~torch.ones(6, 6).tril().bool(), -np.inf),
        scale=0.3,
    )
    (got,) = run_graph(g, [x, mask])
    np.testing.assert_allclose(got, want.transpose(1, 2).reshape(2, 6, D).numpy(), atol=1e-5)


def test_shape_inference_errors():
    g = Graph("bad")
    x = g.add_input("x", F32, (BATCH, SEQ, D))
    w = g.add_initializer("w", _randn(3 * D, D))
    attrs = dict(num_heads=HEADS, kv_heads=HEADS, scale=0.3)
    with pytest.raises(IRError, match=r"w shape \(96, 32\) != \(80, 32\)"):
        g.create_node("qkv_attention", [x, w], {**attrs, "sizes": (D, D, 16)})
    with pytest.raises(IRError, match="sizes .* must be three positive ints"):
        g.create_node("qkv_attention", [x, w], {**attrs, "sizes": (48, 48)})
    with pytest.raises(IRError, match="do not give one head size"):
        g.create_node("qkv_attention", [x, w], {**attrs, "sizes": (48, 16, 32)})
    with pytest.raises(IRError, match=r"b shape \(4,\) != \(96,\)"):
        b = g.add_initializer("b", _randn(4))
        g.create_node("qkv_attention", [x, w, b], {**attrs, "sizes": (D, D, D)})
