"""The simplify pass: one algebraic identity per rule, each with a case where it must not fire."""

import pytest
import torch
from pass_helpers import assert_same_outputs, check_pass, matches, rejections, trace_module

from tgraph.ir import DType, Graph, parse_dim
from tgraph.passes.manager import optimize

B, T = parse_dim("batch"), parse_dim("seq")
F32 = DType.float32


def _unchanged(graph):
    out, records = optimize(graph, "simplify")
    assert out.dump() == graph.dump()
    return records


def _hand(op, attrs, shape=(B, T, 8), dtype=F32, producer=None):
    """x -> [producer ->] op -> relu; for ops the frontend never emits as a no-op."""
    g = Graph("hand")
    v = g.add_input("x", dtype, shape)
    if producer is not None:
        v = g.create_node(producer[0], [v], producer[1]).output
    y = g.create_node(op, [v], attrs).output
    g.outputs = [g.create_node("relu", [y], names=["out"]).output]
    g.verify()
    return g


class Chain(torch.nn.Module):
    """The frontend's no-ops: clone, identity permute, single concat, x*1, x+0, x-0, x/1."""

    def forward(self, x):
        a = x.clone().permute(0, 1, 2)
        b = torch.cat([a], dim=1).unsqueeze(2).squeeze(2)
        c = ((b * 1.0 + 0.0) - 0.0) / 1.0
        return torch.relu(1.0 * c) + (0.0 + c)


def test_every_no_op_of_a_traced_chain_disappears():
    g = trace_module(Chain(), torch.randn(2, 5, 8))
    out, records = check_pass(g, "simplify")
    assert out.op_histogram() == {"add": 1, "relu": 1}
    for rule in ("identity", "permute-identity", "concat-single", "squeeze-unsqueeze"):
        assert matches(records, rule) == 1, rule
    assert matches(records, "mul-one") == 2 and matches(records, "add-zero") == 2
    assert matches(records, "sub-zero") == 1 and matches(records, "div-one") == 1


# -- arithmetic identities --------------------------------------------------------------------


class Scaled(torch.nn.Module):
    def __init__(self, op, value, rank=1, commuted=False):
        super().__init__()
        self.register_buffer("c", torch.full((1,) * rank, value))
        self.op, self.commuted = op, commuted

    def forward(self, x):
        a, b = (self.c, x) if self.commuted else (x, self.c)
        return torch.relu(getattr(torch, self.op)(a, b))


@pytest.mark.parametrize(
    "op, value, rule", [("mul", 1.0, "mul-one"), ("add", 0.0, "add-zero"), ("sub", 0.0, "sub-zero")]
)
def test_scalar_identity_fires(op, value, rule):
    g = trace_module(Scaled(op, value), torch.randn(2, 5, 8))
    out, records = check_pass(g, "simplify", disappear=[op])
    assert matches(records, rule) == 1


def test_div_by_one_fires():
    g = trace_module(Scaled("div", 1.0), torch.randn(2, 5, 8))
    check_pass(g, "simplify", disappear=["div"])


@pytest.mark.parametrize("op, value", [("mul", 1.0), ("add", 0.0)])
def test_commuted_scalar_identity_fires(op, value):
    g = trace_module(Scaled(op, value, commuted=True), torch.randn(2, 5, 8))
    check_pass(g, "simplify", disappear=[op])


@pytest.mark.parametrize(
    "op, value", [("mul", 1.001), ("add", 1e-3), ("sub", -1e-3), ("div", 0.999), ("mul", 2.0)]
)
def test_near_miss_constant_does_not_fire(op, value):
    g = trace_module(Scaled(op, value), torch.randn(2, 5, 8))
    _unchanged(g)


@pytest.mark.parametrize("op", ["sub", "div"])
def test_constant_on_the_left_of_a_non_commutative_op_does_not_fire(op):
    g = trace_module(Scaled(op, 1.0 if op == "div" else 0.0, commuted=True), torch.randn(2, 5, 8))
    _unchanged(g)


@pytest.mark.parametrize("op, value, rule", [("mul", 1.0, "mul-one"), ("add", 0.0, "add-zero")])
def test_broadcasting_constant_that_grows_x_is_rejected(op, value, rule):
    # (B, T) * ones(1, 1, 1) is (1, B, T): forwarding x would drop a dim.
    g = trace_module(Scaled(op, value, rank=3), torch.randn(2, 5))
    records = _unchanged(g)
    (why,) = rejections(records, rule)
    assert why["reason"] == "would change shape [1,batch,seq] to [batch,seq]"


def test_rank_preserving_broadcast_constant_fires():
    g = trace_module(Scaled("mul", 1.0, rank=3), torch.randn(2, 5, 8))
    check_pass(g, "simplify", disappear=["mul"])


# -- casts, reshapes, permutes, expands, slices ------------------------------------------------


def test_cast_to_the_same_dtype_disappears():
    out, records = check_pass(_hand("cast", {"dtype": F32}), "simplify", disappear=["cast"])
    assert matches(records, "cast-same") == 1


def test_cast_to_another_dtype_stays():
    g = _hand("cast", {"dtype": DType.float64})
    # A canonicalization's "not this case" is not a why-not-fused record (quiet rule).
    assert rejections(_unchanged(g), "cast-same") == []


def test_dropout_disappears():
    out, records = check_pass(_hand("dropout", {"p": 0.1}), "simplify", disappear=["dropout"])
    assert matches(records, "dropout") == 1


class Reshapes(torch.nn.Module):
    def __init__(self, extra_user=False, back=False):
        super().__init__()
        self.extra_user, self.back = extra_user, back

    def forward(self, x):
        b, t, _ = x.shape
        heads = x.view(b, t, 4, 2)
        y = heads.view(b, t, 8) if self.back else heads.reshape(b, t * 4, 2)
        y = torch.relu(y)
        return (y, heads.exp()) if self.extra_user else y


def test_reshape_of_reshape_is_one_reshape():
    g = trace_module(Reshapes(), torch.randn(2, 5, 8))
    out, records = check_pass(g, "simplify")
    assert out.op_histogram() == {"relu": 1, "reshape": 1}
    assert matches(records, "reshape-reshape") == 1


def test_reshape_chain_back_to_the_input_shape_disappears():
    g = trace_module(Reshapes(back=True), torch.randn(2, 5, 8))
    out, records = check_pass(g, "simplify", disappear=["reshape"])
    assert matches(records, "reshape-reshape") == 1 and matches(records, "reshape-same") == 1


def test_reshape_of_reshape_with_another_user_stays():
    g = trace_module(Reshapes(extra_user=True), torch.randn(2, 5, 8))
    (why,) = rejections(_unchanged(g), "reshape-reshape")
    assert "also used by" in why["reason"]


def test_reshape_to_another_shape_stays():
    g = _hand("reshape", {"shape": (B, T, 2, 4)})
    assert rejections(_unchanged(g), "reshape-same") == []


class Permutes(torch.nn.Module):
    def __init__(self, second=(0, 2, 1, 3), extra_user=False):
        super().__init__()
        self.second, self.extra_user = second, extra_user

    def forward(self, x):
        p = x.permute(0, 2, 1, 3)
        y = torch.relu(p.permute(*self.second))
        return (y, p.exp()) if self.extra_user else y


def test_permute_pair_that_cancels_disappears():
    g = trace_module(Permutes(), torch.randn(2, 5, 4, 8))
    out, records = check_pass(g, "simplify", disappear=["permute"])
    assert matches(records, "permute-permute") == 1


def test_permute_pair_composes_into_one():
    g = trace_module(Permutes(second=(0, 1, 3, 2)), torch.randn(2, 5, 4, 8))
    out, _ = check_pass(g, "simplify")
    (node,) = [n for n in out.nodes if n.op == "permute"]
    assert node.attrs["perm"] == (0, 2, 3, 1)


def test_permute_pair_with_another_user_stays():
    g = trace_module(Permutes(extra_user=True), torch.randn(2, 5, 4, 8))
    (why,) = rejections(_unchanged(g), "permute-permute")
    assert "also used by" in why["reason"]


def test_non_identity_permute_stays():
    _unchanged(_hand("permute", {"perm": (0, 2, 1)}))


def test_expand_to_the_same_shape_disappears():
    out, records = check_pass(_hand("expand", {"shape": (B, T, 8)}), "simplify")
    assert matches(records, "expand-same") == 1


def test_real_expand_stays():
    g = _hand("expand", {"shape": (B, T, 8)}, shape=(B, 1, 8))
    assert rejections(_unchanged(g), "expand-same") == []


@pytest.mark.parametrize("axis, end", [(1, T), (2, 8), (-1, 8)])
def test_whole_slice_disappears(axis, end):
    g = _hand("slice", {"axis": axis, "start": 0, "end": end, "step": 1})
    out, records = check_pass(g, "simplify", disappear=["slice"])
    assert matches(records, "slice-whole") == 1


@pytest.mark.parametrize(
    "attrs",
    [
        {"axis": 2, "start": 0, "end": 4, "step": 1},
        {"axis": 1, "start": 0, "end": T - 1, "step": 1},
    ],
)
def test_partial_slice_stays(attrs):
    assert rejections(_unchanged(_hand("slice", attrs)), "slice-whole") == []


def test_strided_slice_does_not_match():
    g = _hand("slice", {"axis": 2, "start": 0, "end": 8, "step": 2})
    assert rejections(_unchanged(g), "slice-whole") == []


def test_squeeze_of_unsqueeze_on_other_axes_stays():
    # (B, T, 1) -> unsqueeze(1) -> (B, 1, T, 1) -> squeeze(3) -> (B, 1, T)
    g = _hand("squeeze", {"axes": (3,)}, shape=(B, T, 1), producer=("unsqueeze", {"axes": (1,)}))
    (why,) = rejections(_unchanged(g), "squeeze-unsqueeze")
    assert why["reason"] == "squeeze axes (3,) differ from unsqueeze axes (1,)"


def test_squeeze_of_unsqueeze_with_negative_axes_disappears():
    g = _hand("squeeze", {"axes": (1,)}, producer=("unsqueeze", {"axes": (-3,)}))
    check_pass(g, "simplify", disappear=["squeeze", "unsqueeze"])


def test_concat_of_two_inputs_stays():
    class Cat(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x, x], dim=1)

    assert rejections(_unchanged(trace_module(Cat(), torch.randn(2, 5, 8))), "concat-single") == []


@pytest.mark.parametrize("empty_first", [False, True])
def test_concat_with_an_empty_operand_is_the_other(empty_first):
    class Rope(torch.nn.Module):  # Phi-3's rotary over the whole head: x[..., 8:] is empty
        def forward(self, x):
            y = torch.relu(x[..., :8])
            rest = x[..., 8:]
            return torch.cat([rest, y] if empty_first else [y, rest], dim=-1)

    g = trace_module(Rope(), torch.randn(2, 5, 8))
    out, records = check_pass(g, "simplify,dce", disappear=["concat", "slice"])
    assert matches(records, "concat-empty") == 1
    assert out.op_histogram() == {"relu": 1}


def test_concat_with_a_nonempty_operand_stays():
    class Rope(torch.nn.Module):
        def forward(self, x):
            return torch.cat([torch.relu(x[..., :4]), x[..., 4:]], dim=-1)

    out, _ = check_pass(trace_module(Rope(), torch.randn(2, 5, 8)), "simplify", changed=False)
    assert out.op_histogram()["concat"] == 1


# -- graph outputs ----------------------------------------------------------------------------


class Outputs(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        y = torch.relu(x)
        if self.kind == "clone":
            return y.clone()
        if self.kind == "input":
            return x.clone()
        return y, y.clone()


def test_output_keeps_its_name_when_its_identity_goes():
    g = trace_module(Outputs("clone"), torch.randn(2, 5, 8))
    out, _ = check_pass(g, "simplify", disappear=["identity"])
    assert [v.name for v in out.outputs] == [v.name for v in g.outputs] == ["output"]
    assert out.outputs[0].producer.op == "relu"


def test_output_may_become_the_graph_input():
    g = trace_module(Outputs("input"), torch.randn(2, 5, 8))
    out, _ = check_pass(g, "simplify", disappear=["identity"])
    assert out.outputs == out.inputs and out.outputs[0].name == "x"


def test_value_returned_twice_keeps_one_name():
    g = trace_module(Outputs("pair"), torch.randn(2, 5, 8))
    out, _ = check_pass(g, "simplify", disappear=["identity"])
    assert out.outputs[0] is out.outputs[1]
    assert out.outputs[0].name == g.outputs[0].name


# -- model cases ------------------------------------------------------------------------------

# Identity nodes per case (hf-llama's 41 and hf-gpt2's 14 are same-dtype `to`s, clones,
# dropouts and export's tensor-metadata asserts); gpt-tiny traces to none.
IDENTITIES = {
    "gpt-tiny": 0,
    "llama-tiny": 8,
    "hf-gpt2": 14,
    "hf-llama": 41,
    "nn-encoder-padding": 10,
}


@pytest.mark.parametrize("name", sorted(IDENTITIES))
def test_model_outputs_unchanged_and_every_identity_removed(name, traced_case):
    _, g = traced_case(name)
    assert g.op_histogram().get("identity", 0) == IDENTITIES[name]
    changed = optimize(g, "simplify")[0].dump() != g.dump()
    out, records = check_pass(
        g, "simplify", disappear=["identity"], changed=changed, sizes=((2, 16), (1, 7))
    )
    assert matches(records, "identity") == IDENTITIES[name]
    assert [v.name for v in out.outputs] == [v.name for v in g.outputs]


def test_hf_llama_drops_rotary_scaling_by_one_and_position_offsets(traced_case):
    _, g = traced_case("hf-llama")
    out, records = optimize(g, "simplify")
    assert matches(records, "mul-one") == 2 and matches(records, "add-zero") == 3
    assert_same_outputs(g, out, sizes=((1, 7),), seeds=(0,))
