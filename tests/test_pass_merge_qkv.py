"""The merge-qkv pass: sibling linears on one input become one linear and a split."""

import pytest
import torch
from pass_helpers import check_pass, matches, rejections, trace_module

from tgraph.passes.manager import optimize


class QKV(torch.nn.Module):
    """Three projections of one input, GQA-sized (k and v narrower than q)."""

    def __init__(self, bias=(True, True, True), scaled_weight=False):
        super().__init__()
        self.q = torch.nn.Linear(16, 16, bias=bias[0])
        self.k = torch.nn.Linear(16, 8, bias=bias[1])
        self.v = torch.nn.Linear(16, 8, bias=bias[2])
        self.scaled_weight = scaled_weight

    def forward(self, x):
        q = self.q(x)
        # A weight computed in the graph is not a constant (until fold-constants runs).
        w = self.k.weight * 2.0 if self.scaled_weight else self.k.weight
        k = torch.nn.functional.linear(x, w, self.k.bias)
        v = self.v(torch.tanh(x) if self.scaled_weight else x)
        return q, k, v


def _qkv(**kw):
    return trace_module(QKV(**kw), torch.randn(2, 5, 16))


def _linears(graph):
    return graph.op_histogram().get("linear", 0)


def test_three_projections_become_one_linear_and_a_split():
    g = _qkv()
    out, records = check_pass(g, "merge-qkv", appear=["split"])
    assert _linears(g) == 3 and _linears(out) == 1
    assert matches(records, "merge-linears") == 1 and records[0].stats["merged"] == 3
    (split,) = [n for n in out.nodes if n.op == "split"]
    assert split.attrs["sizes"] == (16, 8, 8)
    # The split outputs keep the names of the linears they replace.
    assert [v.name for v in split.outputs] == [n.name for n in g.nodes if n.op == "linear"]


def test_missing_bias_becomes_an_exact_zero_bias():
    g = _qkv(bias=(True, False, True))
    out, _ = check_pass(g, "merge-qkv", appear=["split"])
    (linear,) = [n for n in out.nodes if n.op == "linear"]
    bias = linear.inputs[2].const
    assert bias.shape == (32,) and not bias[16:24].any() and bias[:16].all()


def test_no_bias_anywhere_stays_without_bias():
    out, _ = check_pass(_qkv(bias=(False, False, False)), "merge-qkv", appear=["split"])
    (linear,) = [n for n in out.nodes if n.op == "linear"]
    assert len(linear.inputs) == 2


def test_keep_trainable_never_merges_parameters():
    g = _qkv()
    out, records = optimize(g, "merge-qkv{keep_trainable=true}")
    assert out.dump() == g.dump()
    reasons = {r["reason"] for r in rejections(records, "merge-linears")}
    assert reasons == {"weights are trainable parameters (keep_trainable=true)"}


def test_computed_weight_is_not_merged():
    g = _qkv(scaled_weight=True)  # q and k read x, k's weight is computed; v reads tanh(x)
    out, records = optimize(g, "merge-qkv")
    assert out.dump() == g.dump()
    (why,) = rejections(records, "merge-linears")
    assert why["reason"].startswith("weight %mul") and "not a constant" in why["reason"]


def test_group_below_min_group_is_rejected_with_reason():
    g = _qkv()
    out, records = optimize(g, "merge-qkv{min_group=4}")
    assert out.dump() == g.dump()
    reasons = [r["reason"] for r in rejections(records, "merge-linears")]
    assert reasons == ["only 3 linears to merge, min_group=4"] * 3


def test_linears_on_different_inputs_are_left_alone():
    lin = torch.nn.Linear(16, 16)
    g = trace_module(
        torch.nn.Sequential(lin, torch.nn.ReLU(), torch.nn.Linear(16, 4)), torch.randn(2, 5, 16)
    )
    out, records = check_pass(g, "merge-qkv", changed=False)
    assert rejections(records, "merge-linears") == []


@pytest.mark.parametrize(
    "name, groups, removed", [("llama-tiny", 4, 6), ("hf-llama", 4, 6), ("gpt-tiny", 0, 0)]
)
def test_model_cases(traced_case, name, groups, removed):
    # llama: q/k/v (3 -> 1) and gate/up (2 -> 1) per layer; GPT's c_attn is one linear already.
    _, g = traced_case(name)
    out, records = check_pass(g, "merge-qkv", changed=groups > 0, sizes=((2, 16), (1, 5)))
    assert matches(records, "merge-linears") == groups
    assert _linears(g) - _linears(out) == removed
