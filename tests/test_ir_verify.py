"""The verifier: each broken invariant is reported, naming the node or value."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import pytest
from ir_helpers import BATCH, F32, SEQ, chain, make_mlp, new_rng, node_by_op

from tgraph.ir import DType, Graph, IRError, Node, TensorType

# -- the verifier -----------------------------------------------------------------------------------


def test_verify_accepts_well_formed_graphs():
    make_mlp().verify()
    chain(4)[0].verify()
    Graph().verify()


def test_verify_unknown_op():
    g = make_mlp()
    node_by_op(g, "gelu").op = "frobnicate"
    with pytest.raises(IRError, match="unknown op 'frobnicate'"):
        g.verify()


def test_verify_wrong_arity():
    g = make_mlp()
    x = g.inputs[0]
    g.create_node("relu", [x, x], types=[x.type])
    with pytest.raises(IRError, match=r"relu node %relu: op relu takes 1 inputs, got 2"):
        g.verify()


def test_verify_unknown_attribute():
    g = make_mlp()
    node = node_by_op(g, "gelu")
    node.attrs = MappingProxyType({**node.attrs, "bogus": 1})
    with pytest.raises(IRError, match=r"gelu node %gelu \(from act\): .*unknown attribute.*bogus"):
        g.verify()


def test_verify_missing_attribute():
    g = Graph()
    x = g.add_input("x", F32, [4, 6])
    node = g.create_node("reshape", [x], {"shape": (6, 4)})
    node.attrs = MappingProxyType({})
    with pytest.raises(IRError, match="missing required attribute 'shape'"):
        g.verify()


def test_verify_unnormalized_attribute():
    g = Graph()
    x = g.add_input("x", F32, [4, 6])
    node = g.create_node("permute", [x], {"perm": (1, 0)})
    node.attrs = MappingProxyType({"perm": [1, 0]})  # a list, not the frozen tuple
    with pytest.raises(IRError, match="not normalized"):
        g.verify()


def test_verify_bad_attribute_value():
    g = Graph()
    x = g.add_input("x", F32, [4, 6])
    node = g.create_node("permute", [x], {"perm": (1, 0)})
    node.attrs = MappingProxyType({"perm": (0, 0)})
    with pytest.raises(IRError, match=r"permute node %permute: permute: \(0, 0\) is not a perm"):
        g.verify()


def test_verify_use_before_def():
    g, (a, b, c) = chain(3)
    g.create_node("exp", [c.output], before=a)
    with pytest.raises(
        IRError, match=r"exp node %exp: input 0 \(%neg_2\) is not defined before use"
    ):
        g.verify()


def test_verify_output_type_disagrees_with_inference():
    g = make_mlp()
    node = node_by_op(g, "gelu")
    node.output.type = TensorType(F32, (BATCH, SEQ, 15))
    with pytest.raises(
        IRError, match=r"output %gelu is f32\[batch,seq,15\], inference gives f32\[batch,seq,16\]"
    ):
        g.verify()
    node.output.type = TensorType(DType.float16, (BATCH, SEQ, 16))
    with pytest.raises(IRError, match="inference gives"):
        g.verify()


def test_verify_duplicate_value_names():
    g = make_mlp()
    node_by_op(g, "gelu").output.name = "x"
    with pytest.raises(IRError, match="value name 'x' is defined twice"):
        g.verify()


def test_verify_stale_use_list():
    g, (a, b, c) = chain(3)
    x = g.inputs[0]
    # Rewire b's input behind the use-lists' back: a.output still lists (b, 0).
    b._inputs[0] = x
    x._uses.append((b, 0))
    with pytest.raises(IRError, match=r"value %neg: stale use-list entry for neg input 0"):
        g.verify()


def test_verify_use_list_missing_an_entry():
    g, (a, b, c) = chain(3)
    a.output._uses.clear()
    with pytest.raises(IRError, match=r"use-list of %neg misses input 0"):
        g.verify()


def test_verify_user_outside_the_graph():
    g, _ = chain(2)
    Node("relu", [g.inputs[0]])  # a detached node still reading x
    with pytest.raises(IRError, match="used by relu node that is not in the graph"):
        g.verify()


def test_verify_initializer_data_disagrees_with_type():
    g = make_mlp()
    w = g.initializers["fc1.weight"]
    w.const = new_rng(1).standard_normal((16, 9)).astype(np.float32)
    with pytest.raises(IRError, match=r"initializer fc1.weight: data float32\[16, 9\] != type"):
        g.verify()
    w.const = new_rng(1).standard_normal((16, 8)).astype(np.float64)
    with pytest.raises(IRError, match=r"data float64\[16, 8\] != type f32\[16,8\]"):
        g.verify()


def test_verify_input_with_an_expression_dim():
    g = Graph()
    x = g.add_input("x", F32, [BATCH, SEQ + 1])
    g.outputs = [g.create_node("relu", [x]).output]
    with pytest.raises(IRError, match=r"graph input x has dim seq\+1; input dims must be"):
        g.verify()


def test_verify_output_not_in_graph():
    g, (a, b, c) = chain(3)
    c.output.replace_all_uses_with(b.output, g)
    c.remove()
    g.outputs = [c.output]
    with pytest.raises(IRError, match=r"graph output %neg_2 is not defined in the graph"):
        g.verify()


def test_verify_inference_failure_names_the_node():
    g = Graph()
    x = g.add_input("x", F32, [4])
    i = g.add_input("i", DType.int64, [4])
    g.create_node("add", [x, i], types=[x.type])
    with pytest.raises(IRError, match=r"add node %add: add: operand dtypes differ \(f32, i64\)"):
        g.verify()


def test_none_in_a_required_input_is_an_ir_error():
    g = Graph()
    x = g.add_input("x", F32, [4])
    with pytest.raises(IRError, match="input 1"):
        g.create_node("add", [x, None])
