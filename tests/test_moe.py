"""moe_experts: the IR op, its torch and ONNX Runtime lowerings, and how models trace to it.

Each form of the op (gated or not, [gate | up] concatenated or interleaved, biases, each
activation) runs on the reference interpreter, the torch backend and ONNX Runtime (its MoE
kernel where it fits, and the gathered plain-op form), against transformers' own eager
experts loop written out here; a batch and token count other than the traced ones come
from the symbolic token dim. The model tests check that Mixtral-style layers trace to one
op per layer and that a layer the op does not cover falls back to batched_mm.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_cases import hf_case

import tgraph
from tgraph.backends import ort as ort_backend
from tgraph.backends.reference import run_graph
from tgraph.backends.torch_backend import lower as torch_lower
from tgraph.ir import DType, Graph, SymDim
from tgraph.ir.ops.moe import dequantize_int8_experts, unpack_experts

E, H, INTER, K = 4, 8, 6, 2
TOKENS = SymDim.symbol("tokens")
ACT = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu,
       "gelu_tanh": lambda h: F.gelu(h, approximate="tanh")}  # fmt: skip


def _eager(x, index, weights, w_in, w_out, b_in, b_out, activation, gated, interleaved):
    """transformers' eager experts loop (MixtralExperts.forward), biases and forms added."""
    out = torch.zeros_like(x)
    for e in range(w_in.shape[0]):
        token, slot = torch.where(index == e)
        h = F.linear(x[token], w_in[e], None if b_in is None else b_in[e])
        if gated:
            gate, up = (h[:, 0::2], h[:, 1::2]) if interleaved else h.chunk(2, dim=-1)
            h = ACT[activation](gate) * up
        else:
            h = ACT[activation](h)
        y = F.linear(h, w_out[e], None if b_out is None else b_out[e])
        out.index_add_(0, token, y * weights[token, slot, None])
    return out


def _routing(tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(tokens, E, generator=g)
    weights, index = logits.softmax(-1).topk(K, dim=-1)
    return index.numpy(), (weights * 0.8).numpy()  # weights summing to 0.8: not renormalized


def _case(gated: bool, bias: bool, seed: int = 0):
    r = np.random.default_rng(seed)
    n = 2 * INTER if gated else INTER
    w_in = (r.standard_normal((E, n, H)) * 0.4).astype(np.float32)
    w_out = (r.standard_normal((E, H, INTER)) * 0.4).astype(np.float32)
    b_in = (r.standard_normal((E, n)) * 0.1).astype(np.float32) if bias else None
    b_out = (r.standard_normal((E, H)) * 0.1).astype(np.float32) if bias else None
    return w_in, w_out, b_in, b_out


def _graph(weights, attrs, hidden: int = H, prefix: str = "") -> Graph:
    """moe_experts over graph inputs x (tokens, hidden), index, weights; expert weights
    constant, named ``prefix`` + c3, c4, ..."""
    g = Graph("moe")
    x = g.add_input("x", DType.float32, (TOKENS, hidden))
    index = g.add_input("index", DType.int64, (TOKENS, K))
    w = g.add_input("weights", DType.float32, (TOKENS, K))
    consts = [None if a is None else g.add_const(a, DType.float32, f"{prefix}c{i}")
              for i, a in enumerate(weights)]  # fmt: skip
    while consts[-1] is None:
        consts.pop()
    node = g.create_node("moe_experts", [x, index, w, *consts], attrs)
    g.outputs = [node.output]
    g.verify()
    return g


FORMS = {  # name -> (attrs, biases)
    "swiglu": (dict(activation="silu"), False),
    "swiglu-interleaved": (dict(activation="silu", interleaved=True), False),
    "swiglu-bias": (dict(activation="silu"), True),
    "geglu-tanh": (dict(activation="gelu_tanh"), False),
    "relu": (dict(activation="relu", gated=False), False),
    "silu-bias": (dict(activation="silu", gated=False), True),
    "gelu": (dict(activation="gelu", gated=False), False),
}


def _runners(graph: Graph):
    yield "reference", lambda feeds: run_graph(graph, feeds)[0]
    torch_runner = torch_lower(graph, "cpu")
    yield "torch", lambda feeds: torch_runner([torch.from_numpy(a) for a in feeds])[0].numpy()
    for fused in (True, False):
        runner = ort_backend.lower(graph, fused_kernels=fused)
        yield (
            f"ort-fused={fused}",
            lambda feeds, r=runner: r([torch.from_numpy(a) for a in feeds])[0].numpy(),
        )


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_backend_matches_the_eager_experts(form):
    attrs, bias = FORMS[form]
    gated = attrs.get("gated", True)
    weights = _case(gated, bias)
    graph = _graph(weights, attrs)
    full = {"gated": True, "interleaved": False, **attrs}
    for tokens, seed in ((5, 0), (1, 1), (13, 2)):  # prefill, one decode token, another size
        x = np.random.default_rng(seed).standard_normal((tokens, H)).astype(np.float32)
        index, w = _routing(tokens, seed)
        tensors = [None if a is None else torch.tensor(a) for a in weights]
        want = _eager(torch.from_numpy(x), torch.from_numpy(index), torch.from_numpy(w),
                      *tensors, **full).numpy()  # fmt: skip
        for name, run in _runners(graph):
            got = run([x, index, w])
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{name} {tokens}")


def test_ort_runs_its_moe_kernel_where_it_fits():
    """Gated SiLU and ungated ReLU/SiLU in float32 go to com.microsoft MoE; the others, and
    fused_kernels off, gather weights (Gather + MatMul)."""
    for form, (attrs, bias) in FORMS.items():
        graph = _graph(_case(attrs.get("gated", True), bias), attrs)
        for fused in (True, False):
            ops = {n.op_type for n in ort_backend.to_onnx(graph, fused_kernels=fused).graph.node}
            kernel = fused and form in ("swiglu", "swiglu-interleaved", "swiglu-bias", "relu",
                                        "silu-bias")  # fmt: skip
            assert ("MoE" in ops) == kernel and ("Gather" in ops) != kernel, (form, fused, ops)


def test_an_expert_no_token_picks_and_the_sentinel_add_nothing():
    """Expert 3 gets no token; index E (transformers' expert-parallel sentinel) adds 0."""
    weights = _case(True, False)
    x = np.random.default_rng(3).standard_normal((4, H)).astype(np.float32)
    index = np.array([[0, 1], [1, 0], [2, 0], [1, E]], dtype=np.int64)
    w = np.full((4, K), 0.5, np.float32)
    graph = _graph(weights, dict(activation="silu"))
    ref = run_graph(graph, [x, index, w])[0]
    want = _eager(*(torch.tensor(a) for a in (x, index, w, *weights[:2])), None, None,
                  "silu", True, False).numpy()  # fmt: skip
    np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-5)
    got = torch_lower(graph, "cpu")([torch.from_numpy(a) for a in (x, index, w)])[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# -- models ----------------------------------------------------------------------------------


def _experts(lm):
    return [m for m in lm.modules() if hasattr(m, "is_concatenated")]


@pytest.mark.parametrize("arch", ["hf-mixtral", "hf-qwen2-moe"])
def test_moe_models_trace_one_op_per_layer(arch):
    lm = hf_case(arch).model
    cm = tgraph.compile(lm, {"input_ids": torch.randint(0, 100, (2, 5))}, backend="ort")
    hist = cm.graph.op_histogram()
    assert hist["moe_experts"] == len(_experts(lm)) and "bmm" not in hist
    assert "MoE" in {n.op_type for n in ort_backend.to_onnx(cm.graph).graph.node}


def test_a_layer_the_op_does_not_cover_traces_batched_mm(monkeypatch):
    """A model's own gate (GPT-OSS's clamped SwiGLU, say) is not act(gate) * up: that layer
    traces transformers' batched_mm, and still matches eager."""
    lm = hf_case("hf-mixtral").model
    for m in _experts(lm):
        monkeypatch.setattr(type(m), "_apply_gate", lambda self, h: F.silu(h[:, ::2]) * h[:, 1::2],
                            raising=False)  # fmt: skip
    ids = torch.randint(0, 100, (3, 9))
    cm = tgraph.compile(lm, {"input_ids": torch.randint(0, 100, (2, 5))}, backend="torch")
    hist = cm.graph.op_histogram()
    assert "moe_experts" not in hist and hist.get("bmm", 0) + hist.get("matmul", 0) > 0
    with torch.no_grad():
        want = lm(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(cm(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_a_moe_generator_saves_and_loads(backend, tmp_path):
    lm = hf_case("hf-mixtral").model
    gen = tgraph.compile(lm, {"input_ids": torch.randint(0, 100, (2, 5))}, backend=backend)
    ids = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(4))
    want = gen.generate(ids, max_new_tokens=8)
    gen.save(str(tmp_path / "mixtral.tg"))
    again = tgraph.load(str(tmp_path / "mixtral.tg"))
    assert again.step.graph.op_histogram()["moe_experts"] == len(_experts(lm))
    assert torch.equal(again.generate(ids, max_new_tokens=8), want)


# -- int4 experts ------------------------------------------------------------------------------


PASSES = {"moe_experts_int4": "quantize-int4{block=16},dce",
          "moe_experts_int4-int8": "quantize-int4{block=16,compute=int8},dce",
          "moe_experts_int8": "quantize-int8-weight{embedding=fp32},dce"}  # fmt: skip


def _low_bit_graph(form: str, op: str):
    """moe_experts of FORMS[form] through the weight pass that makes ``op`` (int4 in blocks
    of 16 here: H = 8 would be no whole block, so these tests use H = 32, inner 16)."""
    from tgraph.passes.manager import optimize

    attrs, bias = FORMS[form]
    gated = attrs.get("gated", True)
    r = np.random.default_rng(5)
    n = 32 if gated else 16
    weights = [(r.standard_normal(s) * 0.4).astype(np.float32) for s in ((E, n, 32), (E, 32, 16))]
    weights += [(r.standard_normal(s) * 0.1).astype(np.float32) if bias else None
                for s in ((E, n), (E, 32))]  # fmt: skip
    g = _graph(weights, attrs, hidden=32, prefix="experts.")
    quantized, records = optimize(g, PASSES[op])
    return g, quantized, records


@pytest.mark.parametrize("op", sorted(PASSES))
@pytest.mark.parametrize("form", ["swiglu", "swiglu-bias", "relu", "gelu"])
def test_low_bit_experts_run_like_their_dequantized_weights_everywhere(form, op):
    """quantize-int4 and quantize-int8-weight turn moe_experts into moe_experts_int4 /
    _int8 (gate/up rows interleaved as ORT's QMoE wants) whose codes stand for the weights
    within the format's error, and every backend gives what the reference kernel gives."""
    g, q, records = _low_bit_graph(form, op)
    hist = q.op_histogram()
    assert hist == {op.split("-")[0]: 1}, hist
    (node,) = list(q.nodes)
    assert node.attrs.get("block_size", 16) == 16
    assert node.attrs["interleaved"] == node.attrs["gated"]
    assert records[0].stats["converted"] == ["experts.c0"]
    # the codes stand for the original weights (gate/up rows interleaved) within the error
    (original,) = list(g.nodes)
    for i, codes in ((3, 3), (4, 5)):
        w = np.asarray(original.inputs[i].const)
        if i == 3 and node.attrs["gated"]:
            e, n, h = w.shape
            w = w.reshape(e, 2, n // 2, h).transpose(0, 2, 1, 3).reshape(e, n, h)
        q_codes, scales = node.inputs[codes].const, node.inputs[codes + 1].const
        if op.startswith("moe_experts_int4"):
            got, tol = unpack_experts(q_codes, scales, w.shape[2]), 0.1
        else:
            got, tol = dequantize_int8_experts(q_codes, scales), 0.01
        assert np.linalg.norm(got - w) < tol * np.linalg.norm(w)
    for tokens, seed in ((6, 0), (1, 1)):
        x = np.random.default_rng(seed).standard_normal((tokens, 32)).astype(np.float32)
        index, w = _routing(tokens, seed)
        want = run_graph(q, [x, index, w])[0]
        for name, run in _runners(q):
            got = run([x, index, w])
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{name} {tokens}")
    kernel = form != "gelu"
    nodes = ort_backend.to_onnx(q).graph.node
    assert ("QMoE" in {n.op_type for n in nodes}) == kernel
    int8 = op.endswith("-int8")  # int8 activations: QMoE's accuracy level 4, the IR's rounding
    assert node.attrs.get("compute", "f32") == ("int8" if int8 else "f32")
    levels = [a.i for n in nodes if n.op_type == "QMoE" for a in n.attribute
              if a.name == "accuracy_level"]  # fmt: skip
    assert levels == ([4 if int8 else 0] if kernel else [])


@pytest.mark.parametrize("pipeline, op", [("int4", "moe_experts_int4"),
                                          ("int8-weight", "moe_experts_int8")])  # fmt: skip
def test_low_bit_mixtral_generates_close_to_eager(pipeline, op):
    """The weight-only pipelines compress the experts too: no fp32 expert weight is left,
    and the logits stay within the format's error of eager's."""
    lm = hf_case("hf-mixtral").model
    gen = tgraph.compile(lm, {"input_ids": torch.randint(0, 100, (2, 5))}, backend="ort",
                         pipeline=pipeline)  # fmt: skip
    hist = gen.step.graph.op_histogram()
    assert hist[op] == len(_experts(lm)) and "moe_experts" not in hist
    ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = lm(input_ids=ids, use_cache=False).logits
    got = gen(input_ids=ids).logits
    assert (got - want).norm() < 0.2 * want.norm()
    assert gen.generate(ids, max_new_tokens=4).shape == (2, 13)
