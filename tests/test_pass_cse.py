"""The cse pass: equal pure nodes and equal anonymous constants merge; parameters never do."""

import numpy as np
import pytest
import torch
from pass_helpers import check_pass, trace_module

from tgraph.ir import DType, Graph, parse_dim
from tgraph.passes.manager import optimize

B, T = parse_dim("batch"), parse_dim("seq")
F32 = DType.float32


def _stats(records):
    (record,) = records
    return record.stats


def _unchanged(graph):
    out, records = optimize(graph, "cse")
    assert out.dump() == graph.dump()
    return records


def _count(graph, op):
    return graph.op_histogram().get(op, 0)


class Twice(torch.nn.Module):
    """Computes the same subexpressions twice, the way HF mask code does."""

    def forward(self, x, y):
        a = torch.relu(x * y) + torch.arange(x.shape[1]).unsqueeze(1)
        b = torch.relu(y * x) + torch.arange(x.shape[1]).unsqueeze(1)
        return (a + 2.0) * (b + 2.0)


def test_duplicate_chains_merge_in_one_run():
    g = trace_module(Twice(), torch.randn(2, 5, 8), torch.randn(2, 5, 8))
    out, records = check_pass(g, "cse")
    # mul is commutative, arange has no inputs, and `+ 2.0` reads two equal constants.
    assert _count(out, "arange") == _count(out, "relu") == _count(out, "unsqueeze") == 1
    assert _count(out, "mul") == 2  # x*y and the final product
    assert _stats(records)["nodes"] == len(g.nodes) - len(out.nodes)


class Different(torch.nn.Module):
    def forward(self, x, y):
        return (x - y) * (y - x) + x.softmax(-1) * x.softmax(1) + (x + 2.0) * (x + 3.0)


def test_operand_order_of_non_commutative_ops_attributes_and_values_keep_nodes_apart():
    g = trace_module(Different(), torch.randn(2, 5, 8), torch.randn(2, 5, 8))
    assert _stats(_unchanged(g))["nodes"] == 0


class TwoParameters(torch.nn.Module):
    """Two parameters (and two buffers) with equal values: trained separately, never merged."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 8)
        self.b.load_state_dict(self.a.state_dict())
        self.register_buffer("s", torch.arange(8.0) + 1)
        self.register_buffer("t", torch.arange(8.0) + 1)

    def forward(self, x):
        return self.a(x) * self.s + self.b(x) * self.t


def test_equal_parameters_and_buffers_are_not_merged():
    g = trace_module(TwoParameters(), torch.randn(2, 5, 8))
    _unchanged(g)


def _listed_constants_graph():
    """Two equal anonymous 8-element constants (too big to print inline), read by two adds."""
    g = Graph("consts")
    x = g.add_input("x", F32, (B, T, 8))
    c1 = g.add_const(np.linspace(-1, 1, 8), F32, hint="c")
    c2 = g.add_const(np.linspace(-1, 1, 8), F32, hint="c")
    c3 = g.add_const(np.linspace(-1, 2, 8), F32, hint="c")
    a1 = g.create_node("add", [x, c1]).output
    a2 = g.create_node("add", [x, c2]).output
    a3 = g.create_node("add", [x, c3]).output
    s = g.create_node("mul", [a1, a2]).output
    g.outputs = [g.create_node("sub", [s, a3]).output]
    g.verify()
    return g


def test_equal_listed_constants_merge_and_then_their_readers():
    g = _listed_constants_graph()
    out, records = check_pass(g, "cse")
    assert _stats(records) == {"nodes": 1, "constants": 1}
    assert _count(out, "add") == 2
    assert {n.inputs[1].name for n in out.nodes if n.op == "add"} == {"c", "c_2"}


def test_constants_above_the_size_limit_are_compared_by_identity():
    g = _listed_constants_graph()
    _unchanged_records = optimize(g, "cse{max_const_elements=4}")[1]
    assert _stats(_unchanged_records) == {"nodes": 0, "constants": 0}


class Outputs(torch.nn.Module):
    def forward(self, x):
        return torch.exp(x) + 1.0, torch.exp(x)


def test_merged_graph_output_keeps_its_name():
    g = trace_module(Outputs(), torch.randn(2, 5, 8))
    out, _ = check_pass(g, "cse")
    assert _count(out, "exp") == 1
    assert [v.name for v in out.outputs] == [v.name for v in g.outputs]


# -- model cases ------------------------------------------------------------------------------

# Nodes merged per case (export's training IR, not decomposed). hf-gpt2 and hf-llama build
# their causal and padding masks from repeated arange(seq) chains, expands of the position ids
# and identities of the same views; gpt-tiny and llama-tiny rebuild the causal mask (full,
# triu/tril) in the second layer (llama-tiny also its rotary slices); nn-encoder-padding
# reshapes and expands its padding mask again for the second layer.
MERGED = {"gpt-tiny": 2, "llama-tiny": 4, "hf-gpt2": 11, "hf-llama": 25, "nn-encoder-padding": 5}


@pytest.mark.parametrize("name", sorted(MERGED))
def test_model_outputs_unchanged(name, traced_case):
    _, g = traced_case(name)
    out, records = check_pass(g, "cse", sizes=((2, 16), (1, 7)))
    assert _stats(records)["nodes"] == MERGED[name]
    if name.startswith("hf-"):
        assert _count(g, "arange") == 5 and _count(out, "arange") == 3  # batch, seq, cache pos
