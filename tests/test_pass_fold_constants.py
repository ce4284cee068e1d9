"""The fold-constants pass: static chains fold, symbolic ones and trainable reads do not."""

import pytest
import torch
from pass_helpers import check_pass, trace_module

from tgraph.passes.manager import optimize


def _stats(records):
    (record,) = records
    return record.stats


def _skipped(records):
    return {s["node"]: s["reason"] for s in _stats(records)["skipped"]}


class InvFreq(torch.nn.Module):
    """Llama's rotary frequencies: arange -> cast -> div -> pow -> reciprocal, all static."""

    def forward(self, x):
        inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
        return x * inv_freq


def test_static_chain_folds_into_one_constant_named_after_its_value():
    g = trace_module(InvFreq(), torch.randn(2, 5, 4))
    folded_name = g.outputs[0].producer.inputs[1].name  # x * inv_freq
    out, records = check_pass(g, "fold-constants", disappear=["arange", "cast", "pow"])
    assert out.op_histogram() == {"mul": 1}
    assert _stats(records)["folded"] == len(g.nodes) - 1
    const = out.initializers[folded_name]
    assert const.const.shape == (4,) and not const.const.flags.writeable


class Positions(torch.nn.Module):
    """A symbolic arange (seq) stays; a static one with its embedding lookup folds."""

    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.randn(10, 8))

    def forward(self, x):
        rows = torch.nn.functional.embedding(torch.arange(2, 6), self.table)  # (4, 8)
        pos = torch.arange(x.shape[1]).unsqueeze(1).float()  # (T, 1)
        return x * pos + rows.sum(0)


def test_gather_chain_folds_and_symbolic_arange_is_skipped_with_reason():
    g = trace_module(Positions(), torch.randn(2, 5, 8))
    out, records = check_pass(g, "fold-constants", disappear=["gather", "reduce_sum"])
    skipped = _skipped(records)
    assert set(skipped.values()) == {"attributes depend on symbolic dims"}
    assert [n.op for n in out.nodes if n.name in skipped] == ["arange"]
    assert out.op_histogram().get("arange") == 1


def test_reading_a_buffer_folds_even_when_keeping_trainable_parameters():
    g = trace_module(Positions(), torch.randn(2, 5, 8))
    check_pass(g, "fold-constants{keep_trainable=true}", disappear=["gather"])


class Ones(torch.nn.Module):
    def __init__(self, n=4):
        super().__init__()
        self.n = n

    def forward(self, x):
        mask = torch.ones(self.n, self.n, dtype=torch.bool).triu(1)  # static (n, n)
        return x.masked_fill(mask, 0.0)


def test_static_full_folds():
    g = trace_module(Ones(), torch.randn(2, 4, 4))
    check_pass(g, "fold-constants", disappear=["full", "triu"])


def test_result_above_max_elements_is_skipped_with_reason():
    g = trace_module(Ones(), torch.randn(2, 4, 4))
    out, records = optimize(g, "fold-constants{max_elements=8}")
    assert out.dump() == g.dump()
    reasons = set(_skipped(records).values())
    assert reasons == {"result %ones has 16 elements > max_elements=8"}


class Transposed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(16, 8))

    def forward(self, x):
        return x @ self.w.t()


def test_permuted_weight_becomes_a_pre_transposed_constant():
    g = trace_module(Transposed(), torch.randn(2, 5, 8))
    out, records = check_pass(g, "fold-constants", disappear=["permute"])
    (matmul,) = list(out.nodes)
    w = matmul.inputs[1]
    assert w.const.shape == (8, 16) and w.const.flags.c_contiguous and not w.trainable


def test_max_elements_does_not_stop_a_result_no_larger_than_its_input():
    g = trace_module(Transposed(), torch.randn(2, 5, 8))
    check_pass(g, "fold-constants{max_elements=16}", disappear=["permute"])


def test_keep_trainable_leaves_parameters_alone_and_says_why():
    g = trace_module(Transposed(), torch.randn(2, 5, 8))
    out, records = check_pass(g, "fold-constants{keep_trainable=true}", changed=False)
    assert set(_skipped(records).values()) == {"reads trainable @w (keep_trainable)"}


class ConstOutputs(torch.nn.Module):
    """A multi-output split of a constant, and a graph output that is constant."""

    def forward(self, x):
        a, b = torch.arange(6.0).split([2, 4])
        return x * torch.cat([b, a]), torch.arange(3) * 2


def test_split_and_a_constant_graph_output_fold():
    g = trace_module(ConstOutputs(), torch.randn(2, 5, 6))
    out, _ = check_pass(g, "fold-constants", disappear=["split", "concat", "arange"])
    assert out.op_histogram() == {"mul": 1}
    second = out.outputs[1]
    assert second.const is not None and second.name == g.outputs[1].name


# -- model cases ------------------------------------------------------------------------------

# Nodes folded per case: llama-tiny's rotary inv_freq chain (arange, div, pow, reciprocal,
# mul, unsqueeze); the HF models' all-true mask seed `full(())` and the identities, casts and
# unsqueezes of constant buffers (inv_freq) that export's training IR keeps. Every other
# arange/full there has a symbolic (seq) attribute.
FOLDED = {"gpt-tiny": 0, "llama-tiny": 6, "hf-gpt2": 5, "hf-llama": 7, "nn-encoder-padding": 0}


@pytest.mark.parametrize("name", sorted(FOLDED))
def test_model_outputs_unchanged(name, traced_case):
    _, g = traced_case(name)
    out, records = check_pass(
        g, "fold-constants", changed=FOLDED[name] > 0, sizes=((2, 16), (1, 7))
    )
    assert _stats(records)["folded"] == FOLDED[name]
    assert all("symbolic" in s["reason"] for s in _stats(records)["skipped"])
    # No case folds a read of a trainable parameter: the training flavour folds the same.
    kept, _ = optimize(g, "fold-constants{keep_trainable=true}")
    assert kept.dump() == out.dump()
