"""Invariants of the graph IR: values, nodes, graphs and the printer (the verifier: test_ir_verify.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import networkx as nx
import numpy as np
import pytest
from ir_helpers import BATCH, F32, SEQ, chain, make_mlp, new_rng, node_by_op

from tgraph.ir import DType, Graph, IRError, TensorType, content_hash
from tgraph.ir.hashing import identity_token

# -- building ---------------------------------------------------------------------------------------


def test_create_node_infers_types_and_names():
    g = make_mlp()
    assert [n.op for n in g.nodes] == ["linear", "gelu", "linear", "add"]
    types = [str(n.output.type) for n in g.nodes]
    assert types == [
        "f32[batch,seq,16]",
        "f32[batch,seq,16]",
        "f32[batch,seq,8]",
        "f32[batch,seq,8]",
    ]
    names = [n.output.name for n in g.nodes]
    assert names == ["linear", "gelu", "linear_1", "add"]
    first = next(iter(g.nodes))
    assert first.output.producer is first and first.graph is g
    assert first.attrs == {} and first.meta == {"module": "fc1"}
    g.verify()


def test_create_node_multiple_outputs_names_and_explicit_types():
    g = Graph()
    x = g.add_input("x", F32, [BATCH, 12])
    split = g.create_node("split", [x], {"axis": 1, "sizes": [4, 8]})
    assert [v.name for v in split.outputs] == ["split.0", "split.1"]
    assert [str(v.type) for v in split.outputs] == ["f32[batch,4]", "f32[batch,8]"]
    with pytest.raises(IRError, match="not one"):
        _ = split.output
    named = g.create_node("relu", [split.outputs[0]], names=["act"])
    assert named.output.name == "act"
    forced = g.create_node("relu", [x], types=[TensorType(F32, (BATCH, 12))])
    assert forced.output.type == TensorType(F32, (BATCH, 12))


def test_create_node_rejects_bad_ops_and_attrs():
    g = Graph()
    x = g.add_input("x", F32, [4, 4])
    with pytest.raises(IRError, match="unknown op 'frobnicate'"):
        g.create_node("frobnicate", [x])
    with pytest.raises(IRError, match="takes 1 inputs, got 2"):
        g.create_node("relu", [x, x])
    with pytest.raises(IRError, match="missing required attribute 'shape'"):
        g.create_node("reshape", [x])
    with pytest.raises(IRError, match=r"unknown attribute\(s\) \['bogus'\]"):
        g.create_node("softmax", [x], {"bogus": 1})


def test_attrs_are_frozen_and_defaults_filled():
    g = Graph()
    x = g.add_input("x", F32, [BATCH, SEQ, 8])
    node = g.create_node("reshape", [x], {"shape": [BATCH, SEQ * 2, 4]})
    assert node.attrs["shape"] == (BATCH, 2 * SEQ, 4)
    with pytest.raises(TypeError):
        node.attrs["shape"] = (1,)  # type: ignore[index]
    soft = g.create_node("softmax", [x])
    assert dict(soft.attrs) == {"axis": -1}
    with pytest.raises(IRError, match="not a plain value"):
        g.create_node("softmax", [x], {"axis": object()})


def test_initializer_names_are_kept_exactly():
    g = Graph()
    w = g.add_initializer("encoder.layer.0.weight", new_rng().standard_normal(3).astype(np.float32))
    assert w.name == "encoder.layer.0.weight"
    assert g.initializers["encoder.layer.0.weight"] is w
    with pytest.raises(IRError, match="already used"):
        g.add_initializer("encoder.layer.0.weight", np.arange(3, dtype=np.float32))
    assert g.add_input("x", F32, [2]).name == "x"
    assert g.add_input("x", F32, [2]).name == "x_1"


# -- use lists ------------------------------------------------------------------------------------


def test_uses_is_a_snapshot():
    g = Graph()
    x = g.add_input("x", F32, [4])
    y = g.add_input("y", F32, [4])
    nodes = [g.create_node("add", [x, x]), g.create_node("relu", [x])]
    uses = x.uses()
    assert uses == ((nodes[0], 0), (nodes[0], 1), (nodes[1], 0))
    for node, index in x.uses():  # rewiring while iterating is safe
        node.replace_input(index, y)
    assert x.uses() == ()
    assert len(uses) == 3  # the earlier snapshot did not change
    assert y.users() == nodes
    g.outputs = [n.output for n in nodes]
    g.verify()


def test_replace_all_uses_with_updates_graph_outputs_only_when_given():
    g, (a, b, c) = chain(3)
    x = g.inputs[0]
    g.outputs = [b.output, c.output]
    b.output.replace_all_uses_with(x)
    assert c.inputs == (x,)
    assert b.output.uses() == ()
    assert g.outputs[0] is b.output  # no graph given: outputs untouched
    b.output.replace_all_uses_with(a.output, g)
    assert g.outputs == [a.output, c.output]
    a.output.replace_all_uses_with(a.output, g)  # self: a no-op
    assert a.output.uses() == ((b, 0),)
    g.verify()


def test_remove_refuses_a_used_node_naming_it():
    g, (a, b, c) = chain(3)
    with pytest.raises(IRError, match=r"cannot remove neg node neg_1: neg_1 is used by neg_2"):
        b.remove()
    with pytest.raises(IRError, match=r"cannot remove neg node neg_2: neg_2 is a graph output"):
        c.remove()
    assert len(g.nodes) == 3
    g.verify()


def test_remove_detaches_inputs():
    g, (a, b, c) = chain(3)
    b.output.replace_all_uses_with(a.output)
    b.remove()
    assert b.graph is None
    assert a.output.users() == [c]
    assert [n.name for n in g.nodes] == ["neg", "neg_2"]
    with pytest.raises(IRError, match="not in a graph"):
        b.remove()
    g.verify()


# -- the node list ----------------------------------------------------------------------------------


def test_remove_while_iterating():
    g, nodes = chain(5)
    x = g.inputs[0]
    seen = []
    for node in g.nodes:  # fold neg(neg(v)) -> v, removing nodes under the iterator
        seen.append(node.name)
        src = node.inputs[0]
        if src.producer is not None and src.producer.op == "neg" and src.producer.graph is g:
            node.output.replace_all_uses_with(src.producer.inputs[0], g)
            node.remove()
            if not src.uses():
                src.producer.remove()
    assert seen == ["neg", "neg_1", "neg_2", "neg_3", "neg_4"]
    assert len(g.nodes) == 1 and len(list(g.nodes)) == 1
    assert next(iter(g.nodes)).inputs == (x,)
    g.verify()


def test_remove_the_next_node_while_iterating():
    g, nodes = chain(4)
    seen = []
    for node in g.nodes:
        seen.append(node.name)
        if node is nodes[0]:
            nodes[1].output.replace_all_uses_with(nodes[0].output, g)
            nodes[1].remove()
    assert seen == ["neg", "neg_2", "neg_3"]
    g.verify()


def test_insert_while_iterating():
    g, nodes = chain(2)
    visited = []
    for node in g.nodes:
        visited.append(node.op)
        if node.op == "neg":
            # after= lands ahead of the iterator (visited); before= lands behind it (not).
            g.create_node("relu", [node.output], after=node)
            g.create_node("abs", [node.output], before=node)
    assert visited == ["neg", "relu", "neg", "relu"]
    assert [n.op for n in g.nodes] == ["abs", "neg", "relu", "abs", "neg", "relu"]
    assert list(reversed(g.nodes))[::-1] == list(g.nodes)
    assert len(g.nodes) == 6


def test_insertion_point():
    g, (a, b, c) = chain(3)
    with g.insertion_point(b) as same:
        assert same is g
        first = g.create_node("relu", [a.output])
        with g.insertion_point(a):
            early = g.create_node("abs", [g.inputs[0]])
        second = g.create_node("exp", [a.output])
    last = g.create_node("sin", [c.output])
    assert list(g.nodes) == [early, a, first, second, b, c, last]
    explicit = g.create_node("cos", [c.output], after=c)
    assert list(g.nodes)[-2:] == [explicit, last]


@pytest.mark.parametrize("where", ["removed", "other-graph"])
def test_create_node_refuses_an_anchor_outside_the_graph(where):
    g, (a, b, c) = chain(3)
    if where == "removed":
        b.output.replace_all_uses_with(a.output)
        b.remove()
        anchor = b
    else:
        anchor = next(iter(g.clone().nodes))
    with pytest.raises(IRError, match="not in"):
        g.create_node("relu", [a.output], before=anchor)


def test_op_histogram():
    g = make_mlp()
    assert g.op_histogram() == {"add": 1, "gelu": 1, "linear": 2}
    assert list(g.op_histogram()) == ["add", "gelu", "linear"]
    assert Graph().op_histogram() == {}


def test_values_and_symbols():
    g = make_mlp()
    names = [v.name for v in g.values()]
    assert names[:1] == ["x"] and len(names) == len(set(names)) == 1 + 3 + 4
    assert g.symbols() == ["batch", "seq"]


# -- networkx and topological order ----------------------------------------------------------------


def test_to_networkx():
    g = Graph()
    x = g.add_input("x", F32, [4])
    r = g.create_node("relu", [x])
    a = g.create_node("add", [r.output, r.output])
    m = g.create_node("mul", [a.output, x])
    g.outputs = [m.output]
    nxg = g.to_networkx()
    assert isinstance(nxg, nx.MultiDiGraph)
    assert list(nxg.nodes) == [r, a, m]
    assert nxg.nodes[a]["op"] == "add"
    assert nxg.number_of_edges(r, a) == 2  # one edge per use
    assert sorted(d["index"] for _, _, d in nxg.edges(data=True) if d["value"] == "relu") == [0, 1]
    assert nxg.number_of_edges() == 3  # graph inputs are not vertices
    assert nx.is_directed_acyclic_graph(nxg)


def test_topological_sort_repairs_an_out_of_order_graph():
    g = Graph()
    x = g.add_input("x", F32, [SEQ, 4])
    a = g.create_node("neg", [x])
    side = g.create_node("exp", [x])
    b = g.create_node("relu", [a.output], before=a)  # reads a before a is defined
    c = g.create_node("add", [b.output, side.output], before=b)
    g.outputs = [c.output]
    assert list(g.nodes) == [c, b, a, side]
    with pytest.raises(IRError, match="not defined before use"):
        g.verify()
    g.topological_sort()
    assert list(g.nodes) == [a, b, side, c]
    g.verify()
    g.topological_sort()  # already sorted: a stable no-op
    assert list(g.nodes) == [a, b, side, c]


def test_topological_sort_reports_a_cycle():
    g, (a, b, c) = chain(3)
    a.replace_input(0, c.output)
    with pytest.raises(IRError, match="cycle"):
        g.topological_sort()


# -- clone ----------------------------------------------------------------------------------------


def test_clone_is_equal_and_independent():
    g = make_mlp()
    before = g.dump()
    twin = g.clone()
    assert twin.dump() == before
    twin.verify()
    assert all(v is not w for v, w in zip(g.values(), twin.values()))
    assert {id(n) for n in g.nodes}.isdisjoint(id(n) for n in twin.nodes)

    # Edit the clone in every way a pass might; the original must not notice.
    gelu = node_by_op(twin, "gelu")
    relu = twin.create_node("relu", [gelu.inputs[0]], before=gelu)
    gelu.output.replace_all_uses_with(relu.output, twin)
    gelu.remove()
    twin.rename(twin.inputs[0], "tokens")
    twin.add_const(2.5, F32)
    twin.outputs.append(relu.output)
    twin.verify()
    assert twin.dump() != before
    assert g.dump() == before
    assert node_by_op(g, "gelu").output.users()[0].op == "linear"
    g.verify()


def test_clone_keeps_fresh_names_fresh():
    g = make_mlp()
    twin = g.clone()
    new = twin.create_node("relu", [twin.inputs[0]])
    assert new.output.name not in {v.name for v in g.values()}
    assert twin.fresh_name("linear") == g.fresh_name("linear") == "linear_2"


def test_has_name_follows_the_live_values():
    g = make_mlp()
    gelu = node_by_op(g, "gelu")
    assert all(g.has_name(n) for n in ("x", "fc1.weight", gelu.output.name))
    assert not g.has_name("nothing")
    relu = g.create_node("relu", [g.inputs[0]])
    name = relu.output.name
    assert g.has_name(name)
    relu.remove()
    assert not g.has_name(name)  # a removed node's names are free again


# -- dumps ------------------------------------------------------------------------------------------


def test_dump_is_deterministic_across_builds():
    first, second = make_mlp(seed=3).dump(), make_mlp(seed=3).dump()
    assert first == second
    assert first.encode() == second.encode()
    assert make_mlp(seed=4).dump() != first  # different weights, different hashes
    assert "0x" not in first  # no addresses


def test_dump_text():
    g = make_mlp()
    text = g.dump()
    assert text.startswith("graph mlp(%x: f32[batch,seq,8]) {\n")
    assert text.endswith("  return %add\n}\n")
    assert "  %gelu: f32[batch,seq,16] = gelu(%linear) {approximate='none'}\n" in text
    assert "  %linear_1: f32[batch,seq,8] = linear(%gelu, @fc2.weight)\n" in text
    with_provenance = g.dump(provenance=True)
    assert "= gelu(%linear) {approximate='none'}  # act\n" in with_provenance
    assert "# " not in text


def test_scalar_constant_prints_inline():
    g = Graph()
    x = g.add_input("x", F32, [SEQ])
    two = g.add_const(2.5, F32)
    assert two.rank == 0
    g.outputs = [g.create_node("mul", [x, two]).output]
    g.verify()
    text = g.dump()
    assert "= mul(%x, 2.5:f32)" in text
    assert "@c" not in text and "const" not in text


def test_small_constants_inline_large_ones_hashed():
    g = Graph()
    x = g.add_input("x", F32, [SEQ, 4])
    small = g.add_const(np.array([1.5, -2.0, 0.25, 3.0]), F32, hint="small")
    big = g.add_const(new_rng().standard_normal(5), F32, hint="big")
    y = g.create_node("add", [x, small]).output
    g.outputs = [y, big]
    text = g.dump()
    assert "add(%x, [1.5,-2.0,0.25,3.0]:f32[4])" in text
    assert f"  const @big: f32[5] #{content_hash(big.const)}\n" in text
    assert "return %add, @big" in text


def test_param_prints_with_content_hash():
    g = make_mlp()
    text = g.dump()
    w = g.initializers["fc1.weight"]
    digest = content_hash(w.const)
    assert re.fullmatch(r"[0-9a-f]{8}", digest)
    assert f"  param @fc1.weight: f32[16,8] #{digest}\n" in text
    header = [line.split(":")[0] for line in text.splitlines() if line.startswith("  param")]
    assert header == ["  param @fc1.bias", "  param @fc1.weight", "  param @fc2.weight"]
    # The hash follows the content, not the object.
    changed = w.const.copy()
    changed[0, 0] += 1.0
    assert content_hash(changed) != digest
    assert content_hash(w.const.copy()) == digest
    assert content_hash(w.const.astype(np.float64)) != digest


def test_identity_dump_marks_constants_by_object_without_reading_them():
    g = make_mlp()
    w = g.initializers["fc1.weight"]
    text = g.dump(contents=False)
    token = identity_token(w.const)
    assert f"  param @fc1.weight: f32[16,8] #{token}\n" in text
    assert g.dump(contents=False) == text  # stable while the array lives
    equal = w.const.copy()
    first = identity_token(equal)
    assert first != token  # same bytes, another array
    addr = id(equal)
    del equal
    again = w.const.copy()
    if id(again) == addr:  # the address came back: the token must not
        assert identity_token(again) != first


def test_small_pages_restores_numpys_huge_page_setting():
    from numpy._core import multiarray

    from tgraph.tensors import small_pages

    before = multiarray._set_madvise_hugepage(True)
    try:
        with small_pages():
            assert multiarray._set_madvise_hugepage(False) is False
        assert multiarray._set_madvise_hugepage(True) is True
    finally:
        multiarray._set_madvise_hugepage(before)


def test_float64_constants_that_differ_dump_differently():
    def graph_with(constant: float) -> Graph:
        g = Graph()
        x = g.add_input("x", DType.float64, [4])
        g.outputs = [g.create_node("mul", [x, g.add_const(constant, DType.float64)]).output]
        return g

    assert graph_with(0.1).dump() != graph_with(0.1 + 1e-12).dump()


_TRACE_GPT_TINY = """
import tgraph
from tgraph.models import build, example_inputs
print(tgraph.trace(build("gpt-tiny"), example_inputs("gpt-tiny")).dump(), end="")
"""


@pytest.mark.slow
def test_trace_dump_is_identical_across_processes():
    def trace_in_subprocess(hash_seed: str) -> str:
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(
            [sys.executable, "-c", _TRACE_GPT_TINY],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    # Two processes at once (different hash seeds, to expose set/dict-order accidents).
    with ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.map(trace_in_subprocess, ["1", "2"])
    assert first.startswith("graph ")
    assert "param @" in first
    assert first == second
