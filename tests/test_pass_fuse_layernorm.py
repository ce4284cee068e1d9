"""fuse-layernorm: LayerNorm / RMSNorm written out with reductions -> layer_norm / rms_norm."""

import pytest
import torch
from pass_helpers import check_pass, matches, rejections, trace_module

from tgraph.passes.manager import optimize

C = 16
REDUCTIONS = ["reduce_mean", "pow", "rsqrt", "sqrt", "sub", "var", "div"]


def _unchanged(graph, pipeline="fuse-layernorm"):
    out, records = optimize(graph, pipeline)
    assert out.dump() == graph.dump()
    return records


class LayerNorm(torch.nn.Module):
    """(x - mean) / sqrt(var + eps) * w + b, in the spelling picked by the arguments."""

    def __init__(self, var="mul", norm="div", affine=("w", "b"), dim=-1, w_shape=(C,)):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(w_shape))
        self.b = torch.nn.Parameter(torch.randn(C))
        self.var, self.norm, self.affine, self.dim = var, norm, affine, dim

    def forward(self, x):
        x = torch.relu(x) + x  # the norm's input is an interior value
        d = x - x.mean(-1, keepdim=True)
        if self.var == "var":
            v = x.var(self.dim, keepdim=True, unbiased=False)
        else:
            v = (d * d if self.var == "mul" else d.pow(2)).mean(self.dim, keepdim=True)
        y = d / torch.sqrt(v + 1e-5) if self.norm == "div" else d * torch.rsqrt(v + 1e-5)
        if "w" in self.affine:
            y = y * self.w
        if "b" in self.affine:
            y = y + self.b
        return y


@pytest.mark.parametrize("norm", ["div", "rsqrt"])
@pytest.mark.parametrize("var", ["mul", "pow", "var"])
def test_layer_norm_spellings_fuse_with_weight_and_bias(var, norm):
    g = trace_module(LayerNorm(var, norm), torch.randn(2, 5, C))
    out, records = check_pass(g, "fuse-layernorm", appear=["layer_norm"], disappear=REDUCTIONS)
    for rule in ("layer-norm", "norm-weight", "norm-bias"):
        assert matches(records, rule) == 1, rule
    (ln,) = [n for n in out.nodes if n.op == "layer_norm"]
    assert [v.name for v in ln.inputs[1:]] == ["w", "b"] and ln.attrs["eps"] == pytest.approx(1e-5)


@pytest.mark.parametrize("affine", [(), ("b",)])
def test_layer_norm_without_weight(affine):
    g = trace_module(LayerNorm(affine=affine), torch.randn(2, 5, C))
    out, records = check_pass(g, "fuse-layernorm", appear=["layer_norm"], disappear=REDUCTIONS)
    assert matches(records, "norm-bias") == len(affine)


class RMSNorm(torch.nn.Module):
    """Llama / T5: w * (x * rsqrt(mean(x^2) + eps)), optionally computed in f32."""

    def __init__(self, square="pow", norm="rsqrt", weight_first=True, upcast=False, eps=1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(C))
        self.square, self.norm, self.weight_first, self.upcast = square, norm, weight_first, upcast
        self.eps = eps

    def forward(self, x):
        x = torch.relu(x) + x
        dtype = x.dtype
        h = x.to(torch.float32) if self.upcast else x
        ms = (h.pow(2) if self.square == "pow" else h * h).mean(-1, keepdim=True)
        eps = self.eps(x) if callable(self.eps) else self.eps
        h = h * torch.rsqrt(ms + eps) if self.norm == "rsqrt" else h / torch.sqrt(ms + eps)
        h = h.to(dtype) if self.upcast else h
        return self.weight * h if self.weight_first else h * self.weight


@pytest.mark.parametrize("norm", ["rsqrt", "div"])
@pytest.mark.parametrize("square", ["pow", "mul"])
def test_rms_norm_spellings_fuse_with_weight(square, norm):
    weight_first = square == "pow"  # w * y and y * w
    g = trace_module(RMSNorm(square, norm, weight_first), torch.randn(2, 5, C))
    out, records = check_pass(g, "fuse-layernorm", appear=["rms_norm"], disappear=REDUCTIONS)
    assert matches(records, "rms-norm") == 1 and matches(records, "norm-weight") == 1
    (rms,) = [n for n in out.nodes if n.op == "rms_norm"]
    assert rms.inputs[1].name == "weight" and rms.attrs["eps"] == pytest.approx(1e-6)


def test_llama_rms_norm_in_f16_drops_the_f32_round_trip():
    g = trace_module(RMSNorm(upcast=True).half(), torch.randn(2, 5, C).half())
    out, records = check_pass(
        g, "dce,fuse-layernorm", appear=["rms_norm"], disappear=["cast"], rtol=2e-3, atol=2e-3
    )
    assert matches(records, "norm-cast") == 1 and matches(records, "norm-weight") == 1
    (rms,) = [n for n in out.nodes if n.op == "rms_norm"]
    assert str(rms.output.dtype) == "f16"


# -- where the rules must not fire -------------------------------------------------------------


@pytest.mark.parametrize("var", ["mul", "var"])
def test_variance_over_another_axis_is_rejected(var):
    g = trace_module(LayerNorm(var, dim=1), torch.randn(2, 5, C))
    (r,) = rejections(_unchanged(g), "layer-norm")
    assert "reduces axes (1,), want the last" in r["reason"]


def test_layer_norm_whose_variance_is_also_returned_is_left_alone():
    class Shared(LayerNorm):
        def forward(self, x):
            d = x - x.mean(-1, keepdim=True)
            v = (d * d).mean(-1, keepdim=True)
            return d / torch.sqrt(v + 1e-5), v

    g = trace_module(Shared(), torch.randn(2, 5, C))
    assert "graph output" in rejections(_unchanged(g), "layer-norm")[0]["reason"]


def test_rms_norm_with_a_computed_eps_is_rejected():
    g = trace_module(RMSNorm(eps=lambda x: x.amax(-1, keepdim=True) ** 2), torch.randn(2, 5, C))
    (r,) = rejections(_unchanged(g), "rms-norm")
    assert "not a scalar constant" in r["reason"]


@pytest.mark.parametrize("w_shape, reason", [((1, C), "weight shape [1,16]"), (None, "constant")])
def test_weight_that_is_not_a_constant_of_the_normalized_shape_is_not_folded(w_shape, reason):
    class Scaled(LayerNorm):
        def forward(self, x, s=None):
            return super().forward(x) * (self.w if s is None else s)

    module = Scaled(affine=(), w_shape=w_shape or (C,))
    args = (torch.randn(2, 5, C),) + (() if w_shape else (torch.randn(2, 5, C),))
    g = trace_module(module, *args)
    out, records = check_pass(g, "fuse-layernorm", appear=["layer_norm", "mul"])
    assert matches(records, "norm-weight") == 0
    assert reason in rejections(records, "norm-weight")[0]["reason"]


def test_bias_of_the_wrong_shape_is_not_folded():
    class Biased(LayerNorm):
        def forward(self, x):
            return super().forward(x) + self.b3

    module = Biased(affine=())
    module.b3 = torch.nn.Parameter(torch.randn(1, 1, C))
    g = trace_module(module, torch.randn(2, 5, C))
    out, records = check_pass(g, "fuse-layernorm", appear=["layer_norm", "add"])
    assert "bias shape [1,1,16]" in rejections(records, "norm-bias")[0]["reason"]


def test_norm_computed_in_a_narrower_type_keeps_its_casts():
    class Narrow(RMSNorm):
        def forward(self, x):
            h = x.half()
            ms = h.pow(2).mean(-1, keepdim=True)
            return (h * torch.rsqrt(ms + 1e-3)).float()

    g = trace_module(Narrow(), torch.randn(2, 5, C))
    out, records = check_pass(g, "dce,fuse-layernorm", appear=["rms_norm", "cast"], rtol=2e-3)
    assert "narrower" in rejections(records, "norm-cast")[0]["reason"]


# -- model cases -------------------------------------------------------------------------------

RMS = {"rms-norm": 5, "norm-weight": 5}
# Cases where the pass fires, and one whose layer norms are already whole.
MODEL_MATCHES = {  # pipeline, matches per rule
    "gpt-tiny": ("fuse-layernorm", {}),
    "llama-tiny": ("fuse-layernorm", RMS),
    # simplify drops the same-dtype `to` identities export leaves inside the norm; dce the dead
    "hf-llama": ("simplify,dce,fuse-layernorm", RMS),
}
RULES = ("layer-norm", "rms-norm", "norm-cast", "norm-weight", "norm-bias")


@pytest.mark.parametrize("name", sorted(MODEL_MATCHES))
def test_model_cases(traced_case, name):
    _, g = traced_case(name)
    pipeline, want = MODEL_MATCHES[name]
    out, records = check_pass(g, pipeline, changed=bool(want) or pipeline.startswith("dce"))
    for rule in RULES:
        assert matches(records, rule) == want.get(rule, 0), rule
    if want:
        assert out.op_histogram()["rms_norm"] == 5 and "reduce_mean" not in out.op_histogram()


def test_hf_llama_without_dce_fuses_the_norm_but_not_its_weight(traced_case):
    _, g = traced_case("hf-llama")
    out, records = check_pass(g, "fuse-layernorm", appear=["rms_norm"])
    assert matches(records, "rms-norm") == 5 and matches(records, "norm-weight") == 0
    assert all("_assert_tensor_metadata" in r["reason"] for r in rejections(records, "norm-weight"))
