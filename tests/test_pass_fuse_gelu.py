"""fuse-gelu: GELU written out with erf or tanh -> gelu; gelu(x + b) -> bias_gelu."""

import math

import pytest
import torch
from pass_helpers import check_pass, matches, rejections, trace_module

from tgraph.passes.manager import optimize

SQRT_2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _unchanged(graph, pipeline="fuse-gelu"):
    out, records = optimize(graph, pipeline)
    assert out.dump() == graph.dump()
    return records


def _erf_gelu(x, order, inner, sqrt2=SQRT_2):
    e = 1.0 + torch.erf(x / sqrt2 if inner == "div" else x * (1.0 / sqrt2))
    if order == 0:
        return 0.5 * x * e  # (0.5 * x) * e
    if order == 1:
        return x * (0.5 * e)
    return x * e * 0.5  # (x * e) * 0.5


def _tanh_gelu(x, order, cube, coeff=0.044715):
    x3 = torch.pow(x, 3.0) if cube == "pow" else x * x * x
    t = 1.0 + torch.tanh(SQRT_2_OVER_PI * (x + coeff * x3))
    if order == 0:
        return 0.5 * x * t
    if order == 1:
        return x * (t * 0.5)
    return (x * t) * 0.5


class Gelu(torch.nn.Module):
    """relu first, so the GELU's input is an interior value of a small graph."""

    def __init__(self, fn, **kwargs):
        super().__init__()
        self.fn, self.kwargs = fn, kwargs

    def forward(self, x):
        return self.fn(torch.relu(x) - 0.5, **self.kwargs)


@pytest.mark.parametrize("inner", ["div", "mul"])
@pytest.mark.parametrize("order", [0, 1, 2])
def test_erf_form_becomes_exact_gelu(order, inner):
    g = trace_module(Gelu(_erf_gelu, order=order, inner=inner), torch.randn(2, 5, 8))
    out, records = check_pass(g, "fuse-gelu", appear=["gelu"], disappear=["erf", "mul"])
    assert matches(records, "gelu-erf") == 1
    (gelu,) = [n for n in out.nodes if n.op == "gelu"]
    assert gelu.attrs["approximate"] == "none"


@pytest.mark.parametrize("cube", ["pow", "mul"])
@pytest.mark.parametrize("order", [0, 1, 2])
def test_tanh_form_becomes_tanh_gelu(order, cube):
    g = trace_module(Gelu(_tanh_gelu, order=order, cube=cube), torch.randn(2, 5, 8))
    out, records = check_pass(g, "fuse-gelu", appear=["gelu"], disappear=["tanh", "mul", "pow"])
    assert matches(records, "gelu-tanh") == 1
    (gelu,) = [n for n in out.nodes if n.op == "gelu"]
    assert gelu.attrs["approximate"] == "tanh"


def test_tanh_form_in_f16_matches_to_f16_precision():
    g = trace_module(Gelu(_tanh_gelu, order=0, cube="pow"), torch.randn(2, 5, 8).half())
    out, records = check_pass(g, "fuse-gelu", appear=["gelu"], rtol=2e-3, atol=2e-3)
    assert matches(records, "gelu-tanh") == 1


class BiasGelu(torch.nn.Module):
    def __init__(self, approximate="none", bias_shape=(8,), after_linear=False):
        super().__init__()
        self.b = torch.nn.Parameter(torch.randn(bias_shape))
        self.w = torch.nn.Parameter(torch.randn(8, 8))
        self.approximate, self.after_linear = approximate, after_linear

    def forward(self, x):
        h = torch.nn.functional.linear(x, self.w) if self.after_linear else torch.relu(x)
        return torch.nn.functional.gelu(h + self.b, approximate=self.approximate)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_add_folds_into_bias_gelu(approximate):
    g = trace_module(BiasGelu(approximate), torch.randn(2, 5, 8))
    out, records = check_pass(g, "fuse-gelu", appear=["bias_gelu"], disappear=["gelu", "add"])
    assert matches(records, "bias-gelu") == 1
    (node,) = [n for n in out.nodes if n.op == "bias_gelu"]
    assert node.attrs["approximate"] == approximate


# -- where the rules must not fire -------------------------------------------------------------


def test_erf_form_with_a_near_miss_constant_is_rejected():
    g = trace_module(Gelu(_erf_gelu, order=0, inner="div", sqrt2=1.4142), torch.randn(2, 5, 8))
    (r,) = rejections(_unchanged(g), "gelu-erf")
    assert "is not 1.414" in r["reason"] and "f32 precision" in r["reason"]


def test_tanh_form_with_a_wrong_coefficient_is_rejected():
    g = trace_module(Gelu(_tanh_gelu, order=0, cube="pow", coeff=0.0447), torch.randn(2, 5, 8))
    (r,) = rejections(_unchanged(g), "gelu-tanh")
    assert "0.044715" in r["reason"]


def test_erf_form_whose_erf_is_also_returned_is_left_alone():
    class Shared(torch.nn.Module):
        def forward(self, x):
            e = torch.erf(x / math.sqrt(2.0))
            return 0.5 * x * (1.0 + e), e

    g = trace_module(Shared(), torch.randn(2, 5, 8))
    (r,) = rejections(_unchanged(g), "gelu-erf")
    assert "graph output" in r["reason"]


def test_bias_gelu_after_linear_is_left_to_fuse_linear():
    g = trace_module(BiasGelu(after_linear=True), torch.randn(2, 5, 8))
    (r,) = rejections(_unchanged(g), "bias-gelu")
    assert "comes from linear" in r["reason"]


def test_bias_gelu_with_a_rank_2_bias_is_rejected():
    g = trace_module(BiasGelu(bias_shape=(1, 8)), torch.randn(2, 5, 8))
    (r,) = rejections(_unchanged(g), "bias-gelu")
    assert "bias shape [1,8]" in r["reason"]


# -- model cases -------------------------------------------------------------------------------

# Cases where the pass fires, and one whose gelu is already whole after a linear.
MODEL_MATCHES = {
    "gpt-tiny": {"gelu-tanh": 2},
    "hf-gpt2": {"gelu-tanh": 2},
    "hf-phi": {"gelu-tanh": 2},  # gelu_new, as in GPT-2
    "hf-bert": {},
}


@pytest.mark.parametrize("name", sorted(MODEL_MATCHES))
def test_model_cases(traced_case, name):
    _, g = traced_case(name)
    want = MODEL_MATCHES[name]
    out, records = check_pass(g, "fuse-gelu", changed=bool(want))
    for rule in ("gelu-erf", "gelu-tanh", "bias-gelu"):
        assert matches(records, rule) == want.get(rule, 0), rule
    if want:
        assert out.op_histogram()["gelu"] == 2 and "tanh" not in out.op_histogram()
