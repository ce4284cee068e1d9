"""int8 / int4 compression: kernels, the passes, the lowerings and the accuracy budget.

Tolerances are stated per pipeline and measured on the tiny zoo models with random
weights (docs/passes.md): int8 (per-channel weights, per-token activations) stays within
5e-2 relative L2 error of fp32 eager; int4 weight-only with blocks of 32 within 0.4 (random
weights are the worst case for 4 bits; trained weights do better). The backends must agree
with the reference kernels much more tightly (1e-4): they run the same integer arithmetic.
The int4 pipeline rounds activations to int8 per block inside the matmul (compute=int8):
a one-ulp difference upstream can move a value across a rounding step, and torch's fast
int4 kernel takes bf16 activations (backends/torch_quant.py), so whole models agree to
3e-2 there; tests/test_lowbit.py checks the single ops on identical inputs (ORT to 1e-5).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_cases import ZOO_CASES, first_tensor, get_case

import tgraph
from tgraph.accuracy import AccuracyError, check_budget, split_pipeline
from tgraph.ir.ops import get_op
from tgraph.ir.ops.quant import quantize_rows, unpack_int4
from tgraph.passes.manager import format_pipeline, optimize, parse_pipeline
from tgraph.passes.quantize import quantize_int4, quantize_int8

TOLERANCE = {"int8": 5e-2, "int4": 0.4}
BACKEND_TOLERANCE = {"int8": 1e-4, "int4": 3e-2}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


# -- kernels -------------------------------------------------------------------------------------


def test_int8_weight_roundtrip_within_half_a_step():
    w = np.random.default_rng(0).standard_normal((16, 40)).astype(np.float32)
    w[3] = 0.0  # an all-zero channel gets scale 1 and codes 0, not a division by zero
    q, scale = quantize_int8(w)
    assert q.dtype == np.int8 and scale.shape == (16,) and np.abs(q).max() <= 127
    assert np.all(np.abs(q * scale[:, None] - w) <= scale[:, None] / 2 + 1e-7)
    assert not q[3].any()


def test_int4_pack_roundtrip_pads_the_last_block():
    w = np.random.default_rng(1).standard_normal((8, 40)).astype(np.float32)  # 40 = 32 + 8
    packed, scale = quantize_int4(w, 32)
    assert packed.shape == (8, 2, 16) and packed.dtype == np.uint8 and scale.shape == (8, 2)
    deq = unpack_int4(packed, scale, 40)
    step = np.repeat(scale, 32, axis=1)[:, :40]
    assert np.all(np.abs(deq - w) <= step / 2 + 1e-6)


def test_int8_kernel_is_per_token_integer_arithmetic():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 24)).astype(np.float32)
    x[0, 1] = 0.0  # a zero token
    w = rng.standard_normal((5, 24)).astype(np.float32)
    q, scale = quantize_int8(w)
    y = get_op("linear_int8").run([x, q, scale, None], {})[0]
    codes, s = quantize_rows(x)
    assert np.all(np.abs(codes) <= 127) and np.all(codes == np.round(codes))
    want = (codes.astype(np.int64) @ q.T.astype(np.int64)) * scale * s
    np.testing.assert_allclose(y, want, rtol=1e-6)
    assert not y[0, 1].any()


# -- the passes on the zoo, on every backend -------------------------------------------------


@pytest.mark.parametrize("pipeline", ["int8", "int4"])
@pytest.mark.parametrize("name", ZOO_CASES)
def test_compressed_zoo_model_within_tolerance_on_every_backend(name, pipeline):
    case = get_case(name)
    example, run = case.make(2, 16, 0), case.make(3, 9, 1)  # run at another size
    want = first_tensor(case.model(**run))
    outs = {}
    for backend in ("reference", "ort", "torch"):
        cm = tgraph.compile(case.model, example, backend=backend, pipeline=pipeline)
        assert cm.graph.op_histogram().get(f"linear_{pipeline}", 0) > 0
        assert "linear" not in cm.graph.op_histogram()
        outs[backend] = first_tensor(cm(**run))
        assert _rel(outs[backend], want) <= TOLERANCE[pipeline], backend
    for backend in ("ort", "torch"):  # same integer arithmetic as the reference kernels
        assert _rel(outs[backend], outs["reference"]) <= BACKEND_TOLERANCE[pipeline], backend


@pytest.mark.parametrize("dot", ["0", "1"])
def test_int8_lowering_takes_signed_weights_where_the_cpu_has_int8_dot(dot, monkeypatch):
    """u8 x s8 (VNNI / AMX) or u8 x u8 (AVX2) on ORT, torch._int_mm or fp32 on torch: the
    same integer product either way."""
    import onnx

    from tgraph.backends.onnx_model import to_onnx
    from tgraph.backends.policy import ENV_INT8_DOT

    monkeypatch.setenv(ENV_INT8_DOT, dot)
    case = get_case("bert-tiny")
    example, run = case.make(2, 16, 0), case.make(3, 9, 1)
    ref = first_tensor(tgraph.compile(case.model, example, backend="reference",
                                      pipeline="int8")(**run))  # fmt: skip
    for backend in ("torch", "ort"):  # torch: torch._int_mm or fp32 on the codes
        cm = tgraph.compile(case.model, example, backend=backend, pipeline="int8")
        assert _rel(first_tensor(cm(**run)), ref) <= BACKEND_TOLERANCE["int8"], backend
    model = to_onnx(cm.graph)
    inits = {t.name: t for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert nodes
    want = onnx.TensorProto.INT8 if dot == "1" else onnx.TensorProto.UINT8
    assert all(inits[n.input[1]].data_type == want for n in nodes)
    assert all(len(n.input) == (5 if dot == "1" else 6) for n in nodes)


def test_pass_records_converted_and_kept_layers(traced_case):
    _, graph = traced_case("gpt-tiny")
    text = format_pipeline(parse_pipeline("int8"))
    optimized, records = optimize(graph, text.replace("int8", "int8{keep=lm_head|h.1.*}"))
    rec = next(r for r in records if r.name.startswith("quantize-int8"))
    assert "h.0.attn.c_attn" in rec.stats["converted"]
    kept = {r["node"]: r["reason"] for r in rec.stats["rejected"]}
    assert kept and all("kept in full precision" in reason for reason in kept.values())
    assert len(rec.stats["converted"]) + len(kept) == 9  # 4 per block x 2 + lm_head
    assert optimized.op_histogram()["linear"] == len(kept)
    # the fp32 weights of converted layers are gone; the kept ones remain
    names = set(optimized.initializers)
    assert "h.0.attn.c_attn.weight_int8" in names and "lm_head.weight" in names


def test_trainable_weights_are_left_alone_with_keep_trainable(traced_case):
    _, graph = traced_case("bert-tiny")
    graph = graph.clone()
    for v in graph.initializers.values():
        v.trainable = True
    _, records = optimize(graph, "default,quantize-int8{keep_trainable=true}")
    rec = records[-1]
    assert rec.stats["converted"] == []
    assert all("trainable" in r["reason"] for r in rec.stats["rejected"])


def test_int4_block_option_is_checked():
    with pytest.raises(ValueError, match="power of two"):
        optimize(tgraph.ir.Graph("g"), "quantize-int4{block=24}")


def test_compressed_artifact_saves_and_loads(tmp_path):
    case = get_case("llama-tiny")
    example = case.make(2, 8, 0)
    for backend in ("ort", "torch"):
        cm = tgraph.compile(case.model, example, backend=backend, pipeline="int8")
        cm.save(str(tmp_path / backend))
        loaded = tgraph.load(str(tmp_path / backend))
        torch.testing.assert_close(first_tensor(loaded(**example)), first_tensor(cm(**example)))


# -- the accuracy budget ---------------------------------------------------------------------


class _Outlier(torch.nn.Module):
    """Four linear layers; the input of ``sensitive`` has one huge outlier channel, which
    per-token int8 handles worst (the other channels lose their resolution)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Linear(32, 64)
        self.sensitive = torch.nn.Linear(64, 64)
        self.b = torch.nn.Linear(64, 64)
        self.c = torch.nn.Linear(64, 32)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5
        self.register_buffer("boost", torch.ones(64))
        self.boost[7] = 300.0

    def forward(self, x):
        h = torch.relu(self.a(x)) * self.boost
        h = self.sensitive(h) / 30
        return self.c(torch.relu(self.b(h)))


def test_budget_falls_back_layer_by_layer_most_sensitive_first():
    model = _Outlier().eval()
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1))
    plain = tgraph.compile(model, x, backend="reference", pipeline="int8")
    err_all = _rel(plain(x), model(x))
    budget = err_all / 3
    cm = tgraph.compile(
        model, x, backend="ort", pipeline="int8", accuracy={"max_rel_error": budget}
    )
    acc = cm.accuracy
    assert acc.met and acc.rel_error <= budget
    assert acc.kept and acc.kept[0] == "sensitive"  # the planted layer goes first
    assert set(acc.kept) | set(acc.converted) == {"a", "sensitive", "b", "c"}
    assert max(acc.sensitivity, key=acc.sensitivity.get) == "sensitive"
    assert acc.trials[0]["kept"] == 0 and acc.trials[0]["rel_error"] == pytest.approx(
        err_all, rel=1e-3
    )
    # the compiled model really is the chosen one, and the pipeline says which layers
    assert _rel(cm(x), model(x)) <= budget * 1.01
    assert "keep=" in cm.pipeline and "sensitive" in cm.pipeline
    assert cm.graph.op_histogram()["linear"] == len(acc.kept)


def test_budget_met_without_fallback_keeps_everything_compressed():
    model = _Outlier().eval()
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1))
    cm = tgraph.compile(
        model, x, backend="reference", pipeline="int8", accuracy={"max_rel_error": 1.0}
    )
    assert cm.accuracy.kept == [] and len(cm.accuracy.converted) == 4
    assert "linear" not in cm.graph.op_histogram()


def test_budget_errors_are_clear():
    with pytest.raises(AccuracyError, match="max_rel_error"):
        check_budget({"rel": 1e-2})
    with pytest.raises(AccuracyError, match="unknown accuracy key"):
        check_budget({"min_cosine": 0.99, "cos": 0.9})
    with pytest.raises(AccuracyError, match="unknown accuracy key"):
        check_budget({"max_rel_error": 1e-2, "top5": 0.9})
    with pytest.raises(AccuracyError, match="compression pipeline"):
        split_pipeline(parse_pipeline("default"))


def test_keep_option_round_trips():
    text = "quantize-int8{keep=h.0.attn.c_attn|lm_head}"
    assert format_pipeline(parse_pipeline(text)) == text


def test_cli_compiles_int8_with_a_budget_and_runs(tmp_path):
    from click.testing import CliRunner

    from tgraph.cli import main

    out = tmp_path / "gpt8.tg"
    args = ["compile", "zoo:gpt-tiny", "-o", str(out), "--pipeline", "int8"]
    result = CliRunner().invoke(main, [*args, "--max-rel-error", "1e-2"])
    assert result.exit_code == 0, result.output
    assert "accuracy budget" in result.output and " met" in result.output
    result = CliRunner().invoke(main, ["run", str(out), "--random"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, [*args, "--min-top1", "0.9"])
    assert result.exit_code == 2 and "--min-top1 needs --max-rel-error" in result.output


def test_verify_mode_accepts_compression_and_checks_the_passes_after_it():
    case = get_case("gpt-tiny")
    cm = tgraph.compile(case.model, case.make(2, 8, 0), backend="ort", pipeline="int8", verify=True)
    assert "linear_int8" in cm.graph.op_histogram()


def test_budget_works_for_bf16_too():
    model = _Outlier().eval()
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1))
    full = tgraph.compile(model, x, backend="reference", pipeline="bf16")
    budget = _rel(full(x), model(x)) / 2
    cm = tgraph.compile(
        model, x, backend="torch", pipeline="bf16", accuracy={"max_rel_error": budget}
    )
    acc = cm.accuracy
    assert acc.met and acc.kept and acc.rel_error <= budget
    assert set(acc.kept) | set(acc.converted) == {"a", "sensitive", "b", "c"}
    assert "keep=" in cm.pipeline


@pytest.mark.parametrize("pipeline", ["int8", "int4"])
def test_torch_backend_packed_kernels_work_across_calls_and_modes(pipeline):
    case = get_case("bert-tiny")
    example = case.make(2, 8, 0)
    cm = tgraph.compile(case.model, example, backend="torch", pipeline=pipeline)
    with torch.inference_mode():
        first = first_tensor(cm(**example)).clone()
        again = first_tensor(cm(**example))
    torch.testing.assert_close(again, first)
    torch.testing.assert_close(first_tensor(cm(**example)).detach(), first)


def test_lossy_passes_say_what_they_make_of_a_layer():
    """The accuracy budget asks each lossy pass class, not an if-chain on pass names."""
    from tgraph.passes.manager import get_pass, lossy_passes

    assert {"quantize-int8", "quantize-int4", "mixed-precision"} <= set(lossy_passes())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    exact = x @ w.T
    for name in lossy_passes():
        approx = get_pass(name)().approximate_linear(x, w)
        err = np.linalg.norm(approx - exact) / np.linalg.norm(exact)
        assert approx.shape == exact.shape and 0 < err < 0.2, (name, err)
    with pytest.raises(NotImplementedError, match="not a lossy pass"):
        get_pass("cse")().approximate_linear(x, w)
