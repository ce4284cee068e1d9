"""Calibration of int4 weights: GPTQ error feedback against round-to-nearest, the
``calibration=`` option of compile, the generator's step graph and the accuracy budget.

The models are tiny and random; their inputs are correlated (mixed by a random matrix), which
is what GPTQ exploits. Trained-weight measurements are in tools/ and docs/compression.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_cases import get_case

import tgraph
from tgraph.calibration import CalibrationError
from tgraph.ir.ops.quant import int4_linear_reference
from tgraph.passes.quantize import CALIBRATION, quantize_int4, quantize_int4_gptq


def _correlated(rng: np.random.Generator, rows: int, k: int, mix: np.ndarray) -> np.ndarray:
    return (rng.standard_normal((rows, k)) @ mix).astype(np.float32)


@pytest.mark.parametrize("k,search", [(128, False), (128, True), (72, True)])
def test_gptq_reduces_layer_output_error_against_round_to_nearest(k, search):
    rng = np.random.default_rng(k)
    mix = rng.standard_normal((k, k)) * 0.3 + np.eye(k)
    w = rng.standard_normal((48, k)).astype(np.float32)
    calib, held = _correlated(rng, 512, k, mix), _correlated(rng, 256, k, mix)
    hessian = calib.astype(np.float64).T @ calib

    def error(packed, scales) -> float:
        got = int4_linear_reference(held, packed, scales, None, 32, k, "f32")
        want = held.astype(np.float64) @ w.T.astype(np.float64)
        return float(np.linalg.norm(got - want) / np.linalg.norm(want))

    rtn = quantize_int4(w, 32, search)
    gptq = quantize_int4_gptq(w, hessian, 32, search)
    assert gptq[0].shape == rtn[0].shape and gptq[1].shape == rtn[1].shape
    assert error(*gptq) < 0.85 * error(*rtn), (error(*gptq), error(*rtn))


def test_gptq_zeroes_inputs_the_calibration_never_saw():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    x[:, 5] = 0.0
    w = rng.standard_normal((16, 32)).astype(np.float32)
    packed, scales = quantize_int4_gptq(w, x.astype(np.float64).T @ x, 32)
    eye = np.eye(32, dtype=np.float32)
    deq = int4_linear_reference(eye, packed, scales, None, 32, 32, "f32").T  # (N, K)
    assert not deq[:, 5].any() and deq[:, 4].any()


class _Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(64, 128)
        self.down = torch.nn.Linear(128, 64)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


_INT4 = "fuse-linear,quantize-int4,fold-constants,dce"


def test_compile_with_calibration_uses_gptq_and_drops_the_statistics():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((64, 64)) * 0.5 + np.eye(64)
    model = _Mlp().eval()

    def batch():
        return (torch.from_numpy(_correlated(rng, 4 * 16, 64, mix).reshape(4, 16, 64)),)

    example, held = batch(), batch()
    calibration = [batch() for _ in range(4)]
    with torch.no_grad():
        want = model(*held)
    errors = {}
    for name, calib in (("rtn", None), ("gptq", calibration)):
        cm = tgraph.compile(model, example, backend="ort", pipeline=_INT4, calibration=calib)
        rec = next(r for r in cm.report if r.name.startswith("quantize-int4"))
        assert rec.stats["calibrated"] == ([] if calib is None else ["up", "down"])
        assert CALIBRATION not in cm.graph.meta
        with torch.no_grad():
            errors[name] = float((cm(*held) - want).norm() / want.norm())
    assert errors["gptq"] < 0.9 * errors["rtn"], errors
    with pytest.raises(CalibrationError, match="needs a compression pipeline"):
        tgraph.compile(model, example, backend="ort", calibration=calibration)
    with pytest.raises(CalibrationError, match=r"calibration\[1\]: takes at most 1 positional"):
        tgraph.compile(model, example, pipeline=_INT4, calibration=[batch(), (held[0], held[0])])
    off = tgraph.compile(model, example, pipeline=_INT4.replace("int4", "int4{calibration=off}"),
                         calibration=calibration)  # fmt: skip
    assert next(r for r in off.report if "int4" in r.name).stats["calibrated"] == []


def test_generator_step_graph_reuses_the_forward_statistics():
    case = get_case("hf-llama")
    calibration = [case.make(1, 10, seed) for seed in (3, 4)]
    gen = tgraph.compile(case.model, case.make(2, 8, 0), backend="ort", pipeline="int4",
                         calibration=calibration)  # fmt: skip
    assert gen.step is not None, gen.step_error

    def int4_weights(graph):
        return {n: v.const for n, v in graph.initializers.items() if n.endswith("weight_int4")}

    plain, step = int4_weights(gen.graph), int4_weights(gen.step.graph)
    assert plain and set(plain) == set(step)
    for name in plain:
        np.testing.assert_array_equal(plain[name], step[name])
    rtn = tgraph.compile(case.model, case.make(2, 8, 0), backend="ort", pipeline="int4")
    assert any((rtn.graph.initializers[n].const != plain[n]).any() for n in plain)
    assert CALIBRATION not in gen.step.graph.meta


def test_budget_ranks_layers_by_their_calibrated_error():
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    mix = rng.standard_normal((64, 64)) * 0.5 + np.eye(64)
    model = _Mlp().eval()
    example = (torch.from_numpy(_correlated(rng, 64, 64, mix).reshape(4, 16, 64)),)
    calibration = [(torch.from_numpy(_correlated(rng, 64, 64, mix).reshape(4, 16, 64)),)
                   for _ in range(4)]  # fmt: skip
    budget = {"max_rel_error": 1e-4}  # unreachable at 4 bits: every layer is ranked
    plain = tgraph.compile(model, example, pipeline=_INT4, accuracy=budget).accuracy
    cal = tgraph.compile(model, example, pipeline=_INT4, accuracy=budget,
                         calibration=calibration).accuracy  # fmt: skip
    assert set(plain.sensitivity) == set(cal.sensitivity) == {"up", "down"}
    for layer in plain.sensitivity:
        assert cal.sensitivity[layer] < plain.sensitivity[layer], layer
    assert cal.trials[0]["rel_error"] < plain.trials[0]["rel_error"]


def test_budget_cosine_and_top1_skip_padding_rows():
    from tgraph.accuracy import compare_outputs
    from tgraph.frontend import trace

    class Hidden(torch.nn.Module):
        def forward(self, x, attention_mask):
            return x * attention_mask[..., None]

    x, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.int64)
    mask[1, 3:] = 0
    graph = trace(Hidden(), {"x": x, "attention_mask": mask})
    want = x.numpy()
    got = want.copy()
    got[1, 3:] = -want[1, 3:]  # padding rows flipped: cosine -1 there
    arrays = [[x.numpy(), mask.numpy()]]
    m = compare_outputs(graph, [[got]], [[want]], arrays)
    assert min(m.cosine.values()) == pytest.approx(1.0) and min(m.top1.values()) == 1.0
    unmasked = compare_outputs(graph, [[got]], [[want]])
    assert min(unmasked.cosine.values()) == pytest.approx(0.6)  # 2 of 10 rows at -1


def test_generator_step_keeps_the_layers_the_budget_kept():
    case = get_case("hf-llama")
    gen = tgraph.compile(case.model, case.make(2, 8, 0), backend="ort", pipeline="int4",
                         accuracy={"max_rel_error": 1e-3})  # fmt: skip
    assert gen.accuracy.kept and "keep=" in gen.pipeline and gen.step is not None
    forward, step = gen.graph.op_histogram(), gen.step.graph.op_histogram()
    assert forward.get("linear", 0) >= 1
    assert step.get("linear", 0) == forward["linear"]
    assert step.get("linear_int4", 0) == forward.get("linear_int4", 0)
