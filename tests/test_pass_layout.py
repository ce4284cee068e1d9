"""The layout pass: transposes through elementwise ops, bsd attention, permuted constants."""

import numpy as np
import pytest
import torch
from pass_helpers import check_pass, matches, rejections, trace_module

from tgraph.ir import DType, Graph, parse_dim
from tgraph.passes.manager import optimize

B, T = parse_dim("batch"), parse_dim("seq")
F32 = DType.float32
HEADS = (0, 2, 1, 3)


def _count(graph, op):
    return graph.op_histogram().get(op, 0)


def _unchanged(graph, pipeline="layout"):
    out, records = optimize(graph, pipeline)
    assert out.dump() == graph.dump()
    return records


# -- (a, b) permutes through elementwise ops ------------------------------------------------------


class Elementwise(torch.nn.Module):
    """x.T -> (* scale + shift, relu, exp) -> permute back (or on to another layout)."""

    def __init__(self, back=(0, 2, 1), extra_user=False, input_operand=False):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.randn(16, 1))  # broadcasts over seq
        self.shift = torch.nn.Parameter(torch.randn(16, 1))
        self.back, self.extra_user, self.input_operand = back, extra_user, input_operand

    def forward(self, x, y):
        t = x.transpose(1, 2)  # (B, 16, T)
        u = torch.relu(t * self.scale + self.shift)
        if self.input_operand:
            u = u * y.transpose(1, 2)
        e = torch.exp(u)
        out = e.permute(*self.back)
        return (out, u) if self.extra_user else out


def _elementwise(**kw):
    return trace_module(Elementwise(**kw), torch.randn(2, 8, 16), torch.randn(2, 8, 16))


def test_permute_pair_cancels_across_elementwise_ops():
    g = _elementwise()
    out, records = check_pass(g, "layout,dce", disappear=["permute"], appear=["exp"])
    assert matches(records, "sink-permute") == 1
    assert _count(out, "add") == _count(out, "mul") == 1


def test_permutes_compose_across_elementwise_ops():
    g = _elementwise(back=(2, 0, 1))  # (B, 16, T) -> (T, B, 16)
    out, records = check_pass(g, "layout,dce")
    assert matches(records, "sink-permute") == 1
    (perm,) = [n for n in out.nodes if n.op == "permute"]
    assert perm.attrs["perm"] == (1, 0, 2) and perm.inputs[0].producer.op == "exp"


def test_chain_value_with_an_extra_user_is_not_moved():
    g = _elementwise(extra_user=True)
    records = _unchanged(g)
    (why,) = rejections(records, "sink-permute")
    assert "has other users" in why["reason"]


def test_two_tensor_operands_are_not_one_chain():
    records = _unchanged(_elementwise(input_operand=True))
    assert rejections(records, "sink-permute") == []


def _square_chain():
    """x (B, 8, 8) -> permute(0, 2, 1) -> add a constant (8, 8) -> permute back."""
    g = Graph("square")
    x = g.add_input("x", F32, (B, 8, 8))
    c = g.add_initializer("c", np.random.default_rng(0).standard_normal((8, 8), np.float32), True)
    t = g.create_node("permute", [x], {"perm": (0, 2, 1)}).output
    s = g.create_node("add", [t, c]).output
    g.outputs = [g.create_node("permute", [s], {"perm": (0, 2, 1)}).output]
    return g


def test_constant_operand_is_transposed():
    out, _ = check_pass(_square_chain(), "layout,dce", disappear=["permute"])
    (add,) = [n for n in out.nodes if n.op == "add"]
    np.testing.assert_array_equal(add.inputs[1].const, _square_chain().initializers["c"].const.T)


def test_trainable_constant_is_kept_with_keep_trainable():
    records = _unchanged(_square_chain(), "layout{keep_trainable=true}")
    (why,) = rejections(records, "sink-permute")
    assert "trainable" in why["reason"]


class ShapeOps(torch.nn.Module):
    """nn.MultiheadAttention's in-projection: (T, B, E) linear, unflatten, select."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 24)

    def forward(self, x):
        t = x.transpose(0, 1)  # (T, B, 16)
        y = self.proj(t).unflatten(-1, (3, 8))  # (T, B, 3, 8)
        y = y.unsqueeze(0).transpose(0, -2).squeeze(-2)  # (3, T, B, 8)
        return y[1].transpose(0, 1)  # (B, T, 8)


def test_permutes_sink_through_linear_reshape_squeeze_and_select():
    g = trace_module(ShapeOps(), torch.randn(2, 8, 16))
    assert _count(g, "permute") == 3
    out, records = check_pass(g, "layout,dce", disappear=["permute"])
    assert matches(records, "sink-permute") == 2
    (select,) = [n for n in out.nodes if n.op == "gather"]
    assert select.inputs[0].shape == (B, T, 3, 8) and select.attrs["axis"] == 2


def _blocked(op, **attrs):
    """x (B, 8, 8) -> permute(0, 2, 1) -> op -> permute back."""
    g = Graph("blocked")
    x = g.add_input("x", F32, (B, 8, 8))
    t = g.create_node("permute", [x], {"perm": (0, 2, 1)}).output
    if op == "linear":
        w = g.add_initializer("w", np.random.default_rng(0).standard_normal((8, 8), np.float32))
        y = g.create_node("linear", [t, w]).output
        back = (0, 2, 1)
    else:
        y = g.create_node("reshape", [t], {"shape": (B, 64)}).output
        back = (1, 0)
    g.outputs = [g.create_node("permute", [y], {"perm": back}).output]
    return g


@pytest.mark.parametrize(
    "op, reason", [("linear", "reads a permuted last axis"), ("reshape", "regroups permuted axes")]
)
def test_permute_does_not_sink_through_ops_that_read_its_order(op, reason):
    records = _unchanged(_blocked(op))
    (why,) = rejections(records, "sink-permute")
    assert reason in why["reason"]


# -- (c) attention: bhsd -> bsd, hoisting permutes above rotary -----------------------------------


def _attention_graph(rotary=False, out_permute=True, gqa=False, mask=False):
    """linear -> reshape (B, T, H, D) -> permute -> [rotary] -> attention -> permute -> reshape."""
    rng = np.random.default_rng(0)
    g = Graph("attn")
    x = g.add_input("x", F32, (B, T, 32))
    kv_heads = 2 if gqa else 4

    def op(name, *inputs, **attrs):
        return g.create_node(name, list(inputs), attrs).output

    if rotary:
        pos = op("unsqueeze", op("arange", end=T, dtype=F32), axes=(1,))  # (T, 1)
        freq = g.add_const(rng.uniform(0.1, 1.0, (1, 8)), F32, hint="freq")
        angle = op("mul", pos, freq)  # (T, 8)
        cos, sin = op("cos", angle), op("sin", angle)
    qkv = []
    for i, heads in enumerate((4, kv_heads, kv_heads)):
        w = g.add_initializer(f"w{i}", rng.standard_normal((heads * 8, 32), np.float32), True)
        x4 = op("reshape", op("linear", x, w), shape=(B, T, heads, 8))
        h = op("permute", x4, perm=HEADS)
        qkv.append(op("rotary", h, cos, sin) if rotary and i < 2 else h)
    if mask:
        qkv.append(g.add_const(rng.standard_normal((1, 1, 1, 1)), F32, hint="bias"))
    attrs = dict(num_heads=4, kv_heads=kv_heads, scale=0.35, causal=True)
    a = op("attention", *qkv, **attrs)
    g.outputs = [
        op("reshape", op("permute", a, perm=HEADS), shape=(B, T, 32)) if out_permute else a
    ]
    g.verify()
    return g


def _attention(out):
    (attn,) = [n for n in out.nodes if n.op == "attention"]
    return attn


@pytest.mark.parametrize("gqa, mask", [(False, False), (True, True)])
def test_attention_switches_to_bsd_and_drops_transposes(gqa, mask):
    out, records = check_pass(
        _attention_graph(gqa=gqa, mask=mask), "layout,dce", disappear=["permute"]
    )
    assert matches(records, "attention-bsd") == 1
    attn = _attention(out)
    assert attn.attrs["layout"] == "bsd"
    assert [v.producer.op for v in attn.inputs[:3]] == ["linear"] * 3


def test_permutes_hoist_above_rotary_then_attention_switches():
    g = _attention_graph(rotary=True, gqa=True)
    out, records = check_pass(g, "layout,dce", disappear=["permute"])
    assert matches(records, "rotary-hoist-permute") == 2
    assert matches(records, "attention-bsd") == 1
    assert _attention(out).attrs["layout"] == "bsd"


def test_attention_without_the_output_transpose_stays_bhsd():
    g = _attention_graph(rotary=True, out_permute=False)
    records = _unchanged(g)
    reasons = {r["reason"] for r in rejections(records, "rotary-hoist-permute")}
    assert reasons == {"rotary output is not read only by bhsd attentions that can switch to bsd"}


def test_head_transpose_with_an_extra_user_blocks_bsd():
    g = _attention_graph()
    attn = _attention(g)
    g.outputs.append(attn.inputs[0])  # the q transpose escapes
    records = _unchanged(g)
    (why,) = rejections(records, "attention-bsd")
    assert "is a graph output" in why["reason"]


# -- model cases -----------------------------------------------------------------------------------

SIZES = ((2, 16), (1, 5))


@pytest.mark.parametrize(
    "name, pipeline, sunk", [("nn-encoder", "layout,dce", 2), ("gpt-tiny", "layout", 0)]
)
def test_model_cases(traced_case, name, pipeline, sunk):
    # nn.MultiheadAttention (batch_first): the (B, T) -> (T, B) transpose before the in-projection
    # composes into the permute that splits q, k and v.
    _, g = traced_case(name)
    out, records = check_pass(g, pipeline, changed=sunk > 0, sizes=SIZES)
    assert matches(records, "sink-permute") == sunk
    assert _count(g, "permute") - _count(out, "permute") == sunk


@pytest.mark.parametrize("name", ["llama-tiny", "hf-llama"])
def test_llama_attention_goes_bsd_through_rotary(traced_case, name):
    # After rotary and attention fusion (integration with those passes), rotary sits between
    # the head split and the attention, so fuse-attention leaves the attention in bhsd.
    _, g = traced_case(name)
    fused, _ = optimize(g, "simplify,fuse-rotary,fuse-attention")
    out, records = check_pass(fused, "layout,dce", sizes=SIZES)
    assert matches(records, "rotary-hoist-permute") == 4 and matches(records, "attention-bsd") == 2
    assert _count(fused, "permute") == 8 and _count(out, "permute") == 0
