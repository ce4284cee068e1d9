"""The ORT backend: IR -> ONNX lowering, contrib kernels and their fallbacks, symbolic
dims, the runner, and end-to-end parity with eager PyTorch on every model case."""

from __future__ import annotations

import pickle

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from model_cases import ALL_CASES, all_tensors

import tgraph
from tgraph.api import CompiledModel
from tgraph.backends import ort as ort_backend
from tgraph.backends.onnx_ops import LOWERINGS
from tgraph.backends.policy import ORT_OPTIMIZERS_OFF, SLOWER_FUSED
from tgraph.backends.reference import run_graph
from tgraph.ir import DType, Graph, SymDim, evaluate
from tgraph.ir.ops import all_ops

BATCH, SEQ, MEM = SymDim.symbol("batch"), SymDim.symbol("seq"), SymDim.symbol("mem")
SIZES = ((2, 5), (3, 8))


# -- helpers ---------------------------------------------------------------------------------


def _inputs(graph: Graph, batch: int, seq: int, seed: int) -> list[np.ndarray]:
    """Random inputs; bool masks keep key 0 so no attention row is fully masked."""
    rng = np.random.default_rng(seed)
    bindings = {"batch": batch, "seq": seq, "mem": seq + 2}
    out = []
    for v in graph.inputs:
        shape = tuple(evaluate(d, bindings) for d in v.shape)
        if v.dtype is DType.bool:
            a = rng.random(shape) < 0.7
            a[..., 0] = True
        elif v.dtype.is_float:
            a = rng.standard_normal(shape).astype(v.dtype.numpy)
        else:
            a = rng.integers(0, 2, size=shape).astype(v.dtype.numpy)  # in range as an index
        out.append(a)
    return out


def _onnx_ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


# (fused kernels, the device the lowering targets): "cuda" keeps the fused kernels that
# lose on ORT's CPU provider (onnx_ops.SLOWER_FUSED), so the CPU provider still checks them.
LOWERINGS_CHECKED = ((True, "cuda"), (True, "cpu"), (False, "cpu"))


def _expect_fused(op: str, fused: bool, device: str) -> bool:
    return fused and op not in SLOWER_FUSED.get(device, ())


def _runner(graph: Graph, fused: bool, device: str, ort_opt: bool) -> ort_backend.OrtRunner:
    """An ORT runner on the CPU provider for the model lowered for ``device``."""
    if device == "cpu":
        return ort_backend.lower(graph, fused_kernels=fused, ort_optimizations=ort_opt)
    model = ort_backend.to_onnx(graph, fused_kernels=fused, device=device)
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if ort_opt
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return ort_backend.OrtRunner(graph, session, "cpu")


def _check(graph: Graph, fused_ops=(), sizes=SIZES, atol: float = 1e-4) -> None:
    """ORT vs the reference interpreter, with fused kernels (whose ops must appear, unless
    they are slower than the fallback on the lowering's device) and with the elementary
    fallbacks, ORT's own optimizations off and on, one model for all sizes."""
    graph.verify()
    for fused, device in LOWERINGS_CHECKED:
        model = ort_backend.to_onnx(graph, fused_kernels=fused, device=device)
        onnx.checker.check_model(model, full_check=True)
        ops = _onnx_ops(model)
        for op in fused_ops:
            assert (op in ops) == _expect_fused(op, fused, device), (op, device, sorted(ops))
        for ort_opt in (False, True):
            runner = _runner(graph, fused, device, ort_opt)
            for seed, (batch, seq) in enumerate(sizes):
                arrays = _inputs(graph, batch, seq, seed)
                want = run_graph(graph, arrays)
                got = runner([torch.from_numpy(a) for a in arrays])
                assert len(got) == len(want)
                for w, g in zip(want, got):
                    assert tuple(g.shape) == w.shape, (fused, device, ort_opt, g.shape, w.shape)
                    np.testing.assert_allclose(g.numpy(), w, rtol=1e-4, atol=atol)


def _graph(*inputs: tuple[str, DType, tuple]) -> tuple[Graph, list]:
    g = Graph("t")
    return g, [g.add_input(name, dtype, shape) for name, dtype, shape in inputs]


def _finish(g: Graph, *outputs) -> Graph:
    g.outputs = list(outputs)
    return g


F32, BOOL, I64 = DType.float32, DType.bool, DType.int64


# -- fused ops -------------------------------------------------------------------------------


def _attention_graph(layout, heads, kv_heads, mask=None, causal=False, kv_len=SEQ) -> Graph:
    d = 8
    if layout == "bsd":
        qs, ks = (BATCH, SEQ, heads * d), (BATCH, kv_len, kv_heads * d)
    else:
        qs, ks = (BATCH, heads, SEQ, d), (BATCH, kv_heads, kv_len, d)
    specs = [("q", F32, qs), ("k", F32, ks), ("v", F32, ks)]
    if mask == "float":
        specs.append(("mask", F32, (BATCH, 1, SEQ, kv_len)))
    elif mask == "bool":
        specs.append(("mask", BOOL, (BATCH, 1, 1, kv_len)))
    g, ins = _graph(*specs)
    attrs = dict(num_heads=heads, kv_heads=kv_heads, scale=0.3, causal=causal, layout=layout)
    node = g.create_node("attention", ins, attrs)
    return _finish(g, node.output)


@pytest.mark.parametrize(
    "mask, causal, kv_len",
    [
        (None, False, SEQ),
        ("float", False, SEQ),
        ("bool", False, SEQ),
        ("bool", True, SEQ),
        (None, True, MEM),
        ("float", True, MEM),
    ],
)
def test_attention_bsd_multi_head_attention(mask, causal, kv_len):
    _check(_attention_graph("bsd", 4, 4, mask, causal, kv_len), ["MultiHeadAttention"])


@pytest.mark.parametrize(
    "layout, kv_heads, mask, causal",
    [
        ("bhsd", 4, None, False),
        ("bhsd", 4, "float", True),
        ("bhsd", 4, "bool", False),
        ("bhsd", 2, "bool", True),
        ("bsd", 2, None, True),
        ("bsd", 2, "float", False),
    ],
)
def test_attention_bhsd_and_gqa_use_onnx_attention(layout, kv_heads, mask, causal):
    _check(_attention_graph(layout, 4, kv_heads, mask, causal), ["Attention"])


def test_attention_cross_lengths_bhsd():
    _check(_attention_graph("bhsd", 4, 2, "float", True, MEM), ["Attention"])


@pytest.mark.parametrize("layout, kv_heads", [("bsd", 4), ("bhsd", 4), ("bhsd", 2)])
def test_attention_fully_masked_query_matches_reference(layout, kv_heads):
    """A per-query mask of finfo.min (DeBERTa's padded query rows: every key masked): eager and
    the reference give that row the mean of v; ORT's kernels read finfo.min as -inf and gave 0."""
    graph = _attention_graph(layout, 4, kv_heads, "float")
    batch, seq = 2, 6
    arrays = _inputs(graph, batch, seq, 0)
    keep = np.ones((batch, 1, seq, seq), bool)
    keep[1, :, :, -2:] = False  # row 1's last two tokens are padding: masked as keys ...
    keep[1, :, -2:, :] = False  # ... and as queries, whose rows are then fully masked
    arrays[3] = np.where(keep, 0.0, np.finfo(np.float32).min).astype(np.float32)
    want = run_graph(graph, arrays)[0]
    for fused in (True, False):
        runner = ort_backend.lower(graph, fused_kernels=fused)
        got = runner([torch.from_numpy(a) for a in arrays])[0].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _norm_graph(op: str, with_bias: bool = True, sum_used: bool = True) -> Graph:
    g, (x, skip) = _graph(("x", F32, (BATCH, SEQ, 16)), ("skip", F32, (BATCH, SEQ, 16)))
    rng = np.random.default_rng(7)
    w = g.add_initializer("norm.weight", rng.standard_normal(16).astype(np.float32))
    params = [w]
    if op == "skip_layer_norm" and with_bias:
        params.append(g.add_initializer("norm.bias", rng.standard_normal(16).astype(np.float32)))
    if op == "rms_norm":
        return _finish(g, g.create_node("rms_norm", [x, w], {"eps": 1e-5}).output)
    node = g.create_node(op, [x, skip, *params], {"eps": 1e-5})
    return _finish(g, *(node.outputs if sum_used else node.outputs[:1]))


@pytest.mark.parametrize("sum_used", [True, False])
def test_skip_layer_norm_both_outputs(sum_used):
    _check(_norm_graph("skip_layer_norm", sum_used=sum_used), ["SkipLayerNormalization"])


def test_cpu_session_keeps_skip_norm_unfused(tmp_path):
    """On CPU the lowering emits Add + LayerNormalization because ORT's fused kernel is
    slower there; ORT's own SkipLayerNormFusion would undo that where the sum has no other
    reader, so the CPU session switches that optimizer off (ORT_OPTIMIZERS_OFF)."""
    graph = _norm_graph("skip_layer_norm", sum_used=False)
    model = ort_backend.to_onnx(graph, device="cpu").SerializeToString()

    def optimized_ops(disabled: tuple[str, ...]) -> set[str]:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        ort.InferenceSession(model, options, ["CPUExecutionProvider"], disabled_optimizers=disabled)
        return _onnx_ops(onnx.load(options.optimized_model_filepath))

    assert "SkipLayerNormalization" in optimized_ops(())  # the fusion exists and fires
    assert "SkipLayerNormalization" not in optimized_ops(ORT_OPTIMIZERS_OFF["cpu"])
    _check(graph)


def test_skip_layer_norm_without_bias():
    _check(_norm_graph("skip_layer_norm", with_bias=False), ["SkipLayerNormalization"])


def test_rms_norm():
    _check(_norm_graph("rms_norm"), ["RMSNormalization"])


def test_skip_rms_norm():
    _check(_norm_graph("skip_rms_norm"), ["SkipSimplifiedLayerNormalization"])


def test_skip_norm_broadcast_skip_falls_back():
    g, (x, skip) = _graph(("x", F32, (BATCH, SEQ, 16)), ("skip", F32, (SEQ, 16)))
    w = g.add_initializer("w", np.random.default_rng(3).standard_normal(16).astype(np.float32))
    node = g.create_node("skip_layer_norm", [x, skip, w], {"eps": 1e-5})
    _finish(g, *node.outputs)
    assert "SkipLayerNormalization" not in _onnx_ops(ort_backend.to_onnx(g, device="cuda"))
    _check(g)


@pytest.mark.parametrize("approximate, kernel", [("none", "BiasGelu"), ("tanh", "FastGelu")])
def test_bias_gelu(approximate, kernel):
    g, (x,) = _graph(("x", F32, (BATCH, SEQ, 16)))
    b = g.add_initializer("b", np.random.default_rng(5).standard_normal(16).astype(np.float32))
    _finish(g, g.create_node("bias_gelu", [x, b], {"approximate": approximate}).output)
    _check(g, [kernel])


@pytest.mark.parametrize("approximate, kernel", [("none", "Gelu"), ("tanh", "FastGelu")])
def test_gelu(approximate, kernel):
    g, (x,) = _graph(("x", F32, (BATCH, SEQ, 16)))
    _finish(g, g.create_node("gelu", [x], {"approximate": approximate}).output)
    _check(g, [kernel])


def test_rotary():
    g, (x, cos, sin) = _graph(
        ("x", F32, (BATCH, 2, SEQ, 8)), ("cos", F32, (SEQ, 8)), ("sin", F32, (SEQ, 8))
    )
    _finish(g, g.create_node("rotary", [x, cos, sin]).output)
    _check(g)


def test_sdpa_with_gqa_and_without():
    g, (q, k, v, m) = _graph(
        ("q", F32, (BATCH, 4, SEQ, 8)),
        ("k", F32, (BATCH, 2, SEQ, 8)),
        ("v", F32, (BATCH, 2, SEQ, 8)),
        ("m", BOOL, (SEQ, SEQ)),
    )
    a = g.create_node("sdpa", [q, k, v, m], {"gqa": True}).output
    b = g.create_node("sdpa", [q, q, q], {"causal": True, "scale": 0.5}).output
    _check(_finish(g, a, b), ["Attention"])


# -- symbolic attributes ---------------------------------------------------------------------


def test_symbolic_attributes_at_two_sizes():
    g, (x,) = _graph(("x", F32, (BATCH, SEQ, 6)))
    flat = g.create_node("reshape", [x], {"shape": (BATCH * SEQ, 6)}).output
    back = g.create_node("reshape", [flat], {"shape": (BATCH, SEQ * 2, 3)}).output
    head = g.create_node("slice", [x], {"axis": 1, "start": 1, "end": SEQ - 1}).output
    half = g.create_node("slice", [x], {"axis": 1, "start": 0, "end": SEQ // 2}).output
    ids = g.create_node("arange", [], {"end": SEQ % 3 + SEQ + 1}).output
    fill = g.create_node("full", [], {"shape": (BATCH, SEQ), "value": 2.5}).output
    count = g.create_node("full", [], {"shape": (BATCH,), "value": SEQ * 2, "dtype": I64}).output
    row = g.create_node("slice", [x], {"axis": 1, "start": 0, "end": 1}).output
    wide = g.create_node("expand", [row], {"shape": (BATCH, SEQ + 1, 6)}).output
    doubled = g.create_node("concat", [x, x], {"axis": 1}).output
    parts = g.create_node("split", [doubled], {"axis": 1, "sizes": (1, 2 * SEQ - 1)}).outputs
    padded = g.create_node("pad", [x], {"pads": (0, 0, 0, SEQ, 1, 0), "value": -1.0}).output
    _check(_finish(g, flat, back, head, half, ids, fill, count, wide, *parts, padded))


def test_index_gather_elements_and_masks():
    g, (x, i, j) = _graph(("x", F32, (BATCH, SEQ, 6)), ("i", I64, (BATCH, 1)), ("j", I64, (SEQ,)))
    picked = g.create_node("index", [x, i, j], {"axis": 0}).output
    idx = g.create_node("argmax", [x], {"axis": 2, "keepdim": True}).output
    small = g.create_node("slice", [idx], {"axis": 1, "start": 0, "end": 2}).output
    gathered = g.create_node("gather_elements", [x, small], {"axis": 2}).output
    upper = g.create_node("triu", [x], {"diagonal": 1}).output
    neg = g.create_node("neg", [j]).output
    wrapped = g.create_node("index", [x, i, neg], {"axis": 0}).output
    _check(_finish(g, picked, gathered, upper, wrapped))


def test_outputs_that_alias_inputs_or_constants():
    g, (x, n) = _graph(("x", F32, (BATCH, SEQ)), ("n", I64, ()))
    same = g.create_node("identity", [x]).output
    table = g.add_initializer("table", np.arange(6, dtype=np.float32).reshape(2, 3))
    _check(_finish(g, same, x, table, x, n))


def test_every_registered_op_has_a_lowering():
    from tgraph.ir.ops.collective import COMBINE  # refused on purpose: ORT runs one process

    assert sorted(set(all_ops()) - set(LOWERINGS) - set(COMBINE)) == []


# -- runner ----------------------------------------------------------------------------------


def _tiny_graph() -> Graph:
    g, (x,) = _graph(("x", F32, (BATCH, SEQ, 4)))
    w = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal(3).astype(np.float32)
    w, b = g.add_initializer("lin.weight", w), g.add_initializer("lin.bias", b)
    return _finish(g, g.create_node("linear", [x, w, b]).output)


def test_autograd_is_refused():
    g = _tiny_graph()
    runner = ort_backend.lower(g)
    x = torch.randn(2, 3, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference-only.*backend='torch'"):
        runner([x])
    with torch.no_grad():
        (y,) = runner([x])
    np.testing.assert_allclose(y.numpy(), run_graph(g, [x.detach().numpy()])[0], atol=1e-5)


def test_cuda_without_gpu_provider_is_a_clear_error():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    with pytest.raises(RuntimeError, match="device='cuda' needs onnxruntime-gpu"):
        ort_backend.lower(_tiny_graph(), "cuda")


@pytest.mark.cuda
def test_cuda_io_binding():
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu")
    g = _tiny_graph()
    x = torch.randn(2, 5, 4, device="cuda")
    (y,) = ort_backend.lower(g, "cuda")([x])
    assert y.device.type == "cuda"
    want = run_graph(g, [x.cpu().numpy()])[0]
    np.testing.assert_allclose(y.cpu().numpy(), want, rtol=1e-4, atol=1e-4)


def test_options_threads_env_and_external_data(monkeypatch, tmp_path):
    g = _tiny_graph()
    runner = ort_backend.lower(g)
    options = runner.session.get_session_options()
    assert options.intra_op_num_threads == ort_backend.physical_cores()
    import onnxruntime as ort

    monkeypatch.setenv("TGRAPH_ORT_OPT", "0")
    off = ort_backend.lower(g).session.get_session_options().graph_optimization_level
    assert off == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    monkeypatch.setattr(ort_backend, "EXTERNAL_DATA_BYTES", 0)
    external = ort_backend.lower(g)
    x = torch.randn(3, 2, 4)
    torch.testing.assert_close(external([x])[0], runner([x])[0])
    reloaded = pickle.loads(pickle.dumps(runner))  # re-lowers: sessions do not pickle
    torch.testing.assert_close(reloaded([x])[0], runner([x])[0])


def test_compile_end_to_end(monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.LayerNorm(16))
    model.eval()
    monkeypatch.setenv("TGRAPH_ORT_OPT", "0")
    cm = tgraph.compile(model, (torch.randn(2, 16, 8),), backend="ort", pipeline="none")
    for shape in ((1, 7, 8), (3, 5, 8)):
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(cm(x), model(x), rtol=1e-4, atol=1e-4)


# -- the model zoo, end to end ----------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_CASES)
def test_models_match_eager(name, traced_case):
    case, graph = traced_case(name)
    eager = {}
    with torch.no_grad():
        for size in ((1, 7), (3, 5)):
            kwargs = case.make(*size, 1)
            eager[size] = (kwargs, all_tensors(case.model(**kwargs)))
    for pipeline in ("none", "default"):
        optimized, _ = tgraph.optimize(graph, pipeline)
        onnx.checker.check_model(ort_backend.to_onnx(optimized), full_check=True)
        for ort_opt in (True, False):
            runner = ort_backend.lower(optimized, ort_optimizations=ort_opt)
            cm = CompiledModel(optimized, runner, "ort", "cpu")
            for size, (kwargs, want) in eager.items():
                with torch.no_grad():
                    got = all_tensors(cm(**kwargs))
                assert len(got) == len(want)
                for g, w in zip(got, want):
                    where = f"{name} {pipeline} ort_opt={ort_opt} size={size}"
                    torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4, msg=where)
