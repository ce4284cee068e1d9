"""mixed-precision: matmuls, linear and attention in bf16/fp16, norms and softmax in fp32.

Tolerances (relative L2 error of every float output against fp32 eager PyTorch, at a batch
and sequence size other than the traced one). Measured on the tiny zoo models with the
reference, ort and torch backends: bf16 3.5e-3 .. 1.1e-2 (llama-tiny the largest), fp16
4.5e-4 .. 1.4e-3. The budgets below leave about 2x (bf16) and 3.5x (fp16) headroom.
"""

from __future__ import annotations

import functools

import onnx
import pytest
import torch
from conftest import _traced
from model_cases import all_tensors, first_tensor
from pass_helpers import check_pass, trace_module

import tgraph
from tgraph.api import CompiledModel, model_tensors
from tgraph.backends import get_backend
from tgraph.backends.reference import random_inputs, run_graph
from tgraph.ir import DType, Graph
from tgraph.passes.manager import PipelineError, format_pipeline, optimize, parse_pipeline

TOLERANCE = {"bf16": 2e-2, "fp16": 5e-3}
LOW = {"bf16": DType.bfloat16, "fp16": DType.float16}
COMPUTE = {"matmul", "linear", "attention", "qkv_attention", "sdpa"}
NORMS = {"layer_norm", "rms_norm", "skip_layer_norm", "skip_rms_norm"}


def _rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm())


def _pipeline(dtype: str) -> str:
    return dtype  # the named pipeline: default, mixed-precision{dtype=...}, cleanup


class Block(torch.nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear, plus the residual, then a final LayerNorm."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.ln = torch.nn.LayerNorm(d)
        self.fc = torch.nn.Linear(d, 4 * d)
        self.proj = torch.nn.Linear(4 * d, d)
        self.ln_f = torch.nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.proj(torch.nn.functional.gelu(self.fc(self.ln(x))))
        return self.ln_f(x)


def _block_graph() -> Graph:
    torch.manual_seed(0)
    graph = trace_module(Block(), torch.randn(2, 5, 32))
    return optimize(graph, "default")[0]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_block_casts_only_at_region_boundaries(dtype):
    graph = _block_graph()
    out, records = check_pass(
        graph, f"mixed-precision{{dtype={dtype}}},dce", appear=["cast"], rtol=0.1, atol=0.1
    )
    low = LOW[dtype]
    ops = {n.op: n for n in out.nodes}
    # linear -> gelu -> linear is one low region: one cast in, one cast out, none between.
    assert [n.output.dtype for n in out.nodes if n.op == "linear"] == [low, low]
    assert ops["gelu"].output.dtype is low  # followed its input into the low dtype
    casts = [n for n in out.nodes if n.op == "cast"]
    assert [c.attrs["dtype"] for c in casts] == [low, DType.float32], out.dump()
    stats = records[0].stats
    assert stats["regions"] == 1 and stats["casts"] == 2
    assert stats["converted"] == {"linear": 2} and stats["followed"] == {"gelu": 1}
    for n in out.nodes:
        if n.op in NORMS:
            assert all(v.dtype is DType.float32 for v in n.outputs)
    assert out.outputs[0].dtype is DType.float32
    # The weights became low-precision constants; the fp32 ones are gone after dce.
    assert {v.dtype for v in out.initializers.values() if v.rank == 2} == {low}


def test_stats_say_what_stayed_fp32_and_why():
    out, records = optimize(_block_graph(), "mixed-precision")
    kept = records[0].stats["kept_fp32"]
    assert kept["layer_norm"] == {"normalization kept fp32 for accuracy": 1}
    assert kept["skip_layer_norm"] == {"normalization kept fp32 for accuracy": 1}
    assert records[0].stats["dtype"] == "bf16"


def test_keep_trainable_leaves_trainable_weights_alone():
    graph = _block_graph()
    assert any(v.trainable for v in graph.initializers.values())
    out, records = optimize(graph, "mixed-precision{keep_trainable=true}")
    assert not records[0].changed and out.dump() == graph.dump()
    reasons = records[0].stats["kept_fp32"]["linear"]
    assert any("trainable" in r for r in reasons), reasons


def test_integer_matmul_stays_integer():
    g = Graph("intmm")
    a = g.add_input("a", DType.int64, (2, 3))
    b = g.add_input("b", DType.int64, (3, 4))
    g.outputs = [g.create_node("matmul", [a, b]).output]
    out, records = optimize(g, "mixed-precision")
    assert not records[0].changed
    assert records[0].stats["kept_fp32"] == {"matmul": {"matmul input is integer": 1}}


def test_pipeline_round_trips_and_rejects_bad_dtype():
    text = "mixed-precision{dtype=fp16},fold-constants,cse,dce"
    assert format_pipeline(parse_pipeline(text)) == text
    with pytest.raises(PipelineError, match="bf16 or fp16"):
        optimize(_block_graph(), "mixed-precision{dtype=int3}")


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("name", ["gpt-tiny", "bert-tiny", "llama-tiny", "vit-tiny"])
def test_zoo_reference(name, dtype):
    """Structure and reference-interpreter accuracy on the zoo; a second run is a no-op."""
    _, graph = _traced(name)
    fp32, _ = optimize(graph, "default")
    out, records = optimize(fp32, f"mixed-precision{{dtype={dtype}}},fold-constants,cse,dce")
    low, stats = LOW[dtype], records[0].stats
    assert sum(stats["converted"].values()) >= 4
    for node in out.nodes:
        if node.op in COMPUTE:
            assert node.outputs[0].dtype is low, node
        if node.op in NORMS:
            assert all(v.dtype is DType.float32 for v in node.outputs), node
    # Casts sit at region boundaries: about two per region (one in, one out), never one per op.
    n_casts = sum(1 for n in out.nodes if n.op == "cast" and n.meta.get("rule"))
    n_low_ops = sum(1 for n in out.nodes if n.op != "cast" and n.outputs[0].dtype is low)
    assert n_casts == stats["casts"] <= 2 * stats["regions"] + 2, stats
    assert n_casts < n_low_ops, (n_casts, n_low_ops)
    assert [v.dtype for v in out.outputs] == [v.dtype for v in graph.outputs]
    assert {"normalization kept fp32 for accuracy"} <= {
        r for reasons in stats["kept_fp32"].values() for r in reasons
    }
    bindings = {s: (3 if s == "batch" else 11) for s in graph.symbols()}
    inputs = random_inputs(graph, bindings, seed=3)
    for want, got in zip(run_graph(fp32, inputs), run_graph(out, inputs)):
        assert got.dtype == want.dtype
        err = _rel_l2(torch.from_numpy(got), torch.from_numpy(want))
        assert err <= TOLERANCE[dtype], (name, err)
    again, again_records = optimize(out, f"mixed-precision{{dtype={dtype}}}")
    assert again.dump() == out.dump() and not again_records[0].changed


@functools.cache
def _optimized(name: str, dtype: str) -> Graph:
    case, graph = _traced(name)
    return optimize(graph, _pipeline(dtype))[0]


def _lowered(name: str, dtype: str, backend: str) -> CompiledModel:
    """What ``tgraph.compile(model, pipeline=dtype, backend=backend)`` builds, with the trace
    and the pipeline shared between backends (test_masked_rows_* calls compile itself)."""
    case, _ = _traced(name)
    graph = _optimized(name, dtype)
    runner = get_backend(backend).lower(graph, "cpu", params=model_tensors(case.model))
    return CompiledModel(graph, runner, backend, "cpu")


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize(
    "name, backend",
    [
        ("gpt-tiny", "reference"),
        ("gpt-tiny", "ort"),
        ("gpt-tiny", "torch"),
        ("bert-tiny", "ort"),
        ("bert-tiny", "torch"),
        ("llama-tiny", "ort"),
        ("llama-tiny", "torch"),
    ],
)
def test_backends_match_fp32_eager(name, backend, dtype):
    case, _ = _traced(name)
    cm = _lowered(name, dtype, backend)
    assert any(n.meta.get("precision") == str(LOW[dtype]) for n in cm.graph.nodes)
    inputs = case.make(3, 11, 7)
    with torch.no_grad():
        want, got = all_tensors(case.model(**inputs)), all_tensors(cm(**inputs))
    assert len(want) == len(got)
    for w, g in zip(want, got):
        assert g.dtype == w.dtype and g.shape == w.shape
        if w.is_floating_point():
            assert torch.isfinite(g).all()
            assert _rel_l2(g, w) <= TOLERANCE[dtype], (name, backend, _rel_l2(g, w))


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_masked_rows_stay_finite(dtype):
    """bert's additive mask is float32-min, which overflows fp16 and rounds to -inf in bf16:
    the pass clamps it into the low dtype's range, so even a fully masked row is finite."""
    case, _ = _traced("bert-tiny")
    cm = tgraph.compile(case.model, case.make(2, 16, 0), pipeline=_pipeline(dtype), backend="ort")
    assert any(n.op == "clamp" for n in cm.graph.nodes)
    inputs = case.make(2, 9, 5)
    inputs["attention_mask"][1] = 0
    with torch.no_grad():
        want, got = first_tensor(case.model(**inputs)), first_tensor(cm(**inputs))
    assert torch.isfinite(got).all()
    # A fully masked row is noise by definition (eager's float32-min mask swallows the
    # scores, a clamped one does not): compare the other row only.
    assert _rel_l2(got[0], want[0]) <= TOLERANCE[dtype]


def test_ort_keeps_bf16_weights_and_computes_in_fp32():
    from tgraph.backends.ort import to_onnx

    _, graph = _traced("gpt-tiny")
    out = _optimized("gpt-tiny", "bf16")
    model = to_onnx(out)
    # Linear weights (stored pre-transposed for MatMul) stay bf16 in the file; the float32
    # tables are the embeddings that gather reads.
    weights = {t.name: t.data_type for t in model.graph.initializer if len(t.dims) == 2}
    transposed = [n for n in weights if ".T" in n]
    assert len(transposed) >= 7, sorted(weights)
    assert all(weights[n] == onnx.TensorProto.BFLOAT16 for n in transposed), weights
    assert {n for n, t in weights.items() if t == onnx.TensorProto.FLOAT} == {
        "lm_head.weight",
        "wpe.weight",
    }
    props = {p.key: p.value for p in model.metadata_props}
    assert "linear:" in props["tgraph.computed_in_fp32"]
    # ORT's own optimizations off: the emulation alone matches the reference interpreter up
    # to bf16 rounding (a fused qkv_attention computed in fp32 as a whole skips the reference's
    # rounding of q, k and v).
    assert _rel_l2(*_ort_and_reference(out, graph)) < 1e-2


def test_ort_emulation_of_linear_is_exact():
    """linear -> gelu -> linear in bf16, each computed in fp32 and rounded once, as the
    reference kernels do: ORT (its optimizations off) agrees to float32 summation order."""
    out, _ = optimize(_block_graph(), "mixed-precision,dce")
    got, want = _ort_and_reference(out, out)
    assert _rel_l2(got, want) < 1e-4


def _ort_and_reference(graph: Graph, source: Graph) -> tuple[torch.Tensor, torch.Tensor]:
    from tgraph.backends.ort import lower

    runner = lower(graph, ort_optimizations=False)
    bindings = {s: (2 if s == "batch" else 6) for s in source.symbols()}
    inputs = random_inputs(source, bindings, seed=1)
    want = torch.from_numpy(run_graph(graph, inputs)[0])
    return runner([torch.from_numpy(a) for a in inputs])[0], want
