"""The dce pass: dead chains go in one run, unused initializers go, graph outputs stay."""

import numpy as np
import pytest
import torch
from pass_helpers import check_pass, trace_module

from tgraph.ir import DType
from tgraph.passes.manager import optimize


def _stats(records):
    (record,) = records
    return record.stats


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.lin(x)), torch.exp(x)


def _small():
    return trace_module(Small(), torch.randn(2, 5, 8))


def _add_dead_chain(g):
    """x -> tanh -> neg -> sigmoid, read by nobody (export already drops dead code)."""
    v = g.inputs[0]
    for op in ("tanh", "neg", "sigmoid"):
        v = g.create_node(op, [v]).output
    g.verify()


def test_dead_chain_goes_in_one_run():
    g = _small()
    before = g.op_histogram()
    _add_dead_chain(g)
    out, records = check_pass(g, "dce", disappear=["tanh", "neg", "sigmoid"])
    assert _stats(records) == {"nodes": 3, "initializers": 0}
    assert out.op_histogram() == before


def test_unused_parameter_is_dropped():
    g = _small()
    g.add_initializer("unused.weight", np.random.default_rng(0).standard_normal((4, 4)))
    out, records = check_pass(g, "dce")
    assert "unused.weight" not in out.initializers
    assert _stats(records) == {"nodes": 0, "initializers": 1}


def test_unused_tiny_constant_is_dropped_without_a_visible_change():
    # Tiny constants print inline at their uses: dropping an unread one leaves the dump as it
    # was, so dce must not report a change the pass manager cannot see.
    g = _small()
    c = g.add_const(2.5, DType.float32, hint="unused_scale")
    out, records = check_pass(g, "dce", changed=False)
    assert c.name not in out.initializers
    assert _stats(records) == {"nodes": 0, "initializers": 1}


def test_graph_outputs_and_what_they_read_stay():
    g = _small()
    out, _ = check_pass(g, "dce", changed=False)
    assert out.dump() == g.dump()


def test_output_without_users_stays_while_its_dead_neighbour_goes():
    g = _small()
    exp = g.outputs[1]
    g.create_node("log", [exp])  # a dead reader of a graph output
    out, _ = check_pass(g, "dce", disappear=["log"])
    assert out.outputs[1].producer.op == "exp"


# -- model cases ------------------------------------------------------------------------------

# Dead nodes per case: export's `_assert_tensor_metadata` checks, which trace to identities
# that nobody reads.
DEAD = {"gpt-tiny": 0, "llama-tiny": 2, "hf-gpt2": 7, "hf-llama": 20, "nn-encoder-padding": 0}


@pytest.mark.parametrize("name", sorted(DEAD))
def test_model_outputs_unchanged(name, traced_case):
    _, g = traced_case(name)
    out, records = check_pass(g, "dce", changed=DEAD[name] > 0, sizes=((2, 16), (1, 7)))
    assert _stats(records)["nodes"] == DEAD[name]


def test_cleans_up_after_simplify_cse_and_fold_constants(traced_case):
    _, g = traced_case("hf-llama")
    out, records = optimize(g, "simplify,cse,fold-constants,dce")
    assert records[-1].stats["initializers"] > 0  # constants the other passes stopped reading
    assert all(v.uses() or v in out.outputs for v in out.initializers.values())
