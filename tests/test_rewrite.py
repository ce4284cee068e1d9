"""The shared rewrite engine: matching, soundness, rejections, provenance, naming; the pattern
language (optional inputs, alternatives, other inputs), the root index, sites, the sweep limit."""

import json

import numpy as np
import pytest
import torch
from pass_helpers import assert_same_outputs, matches, rejections, trace_module

from tgraph.ir import DType, Graph
from tgraph.passes import rewrite
from tgraph.passes.manager import optimize, register
from tgraph.passes.pattern import match_node
from tgraph.passes.rewrite import P, RewritePass, Rule


def _relu_times_two_check(m):
    return None if m["two"] == 2.0 else f"scale {m['two']}, want 2"


@register("test-fuse-relu-scale")
class FuseReluScale(RewritePass):
    """Test only: mul(relu(x), 2) -> add(relu(x), relu(x)); exercises the engine."""

    rules = (
        Rule(
            name="relu-times-two",
            # 2*relu(x) = relu(x) + relu(x)
            pattern=P.op("mul", P.op("relu", P.var("x"), name="r"), P.scalar(name="two")),
            check=_relu_times_two_check,
            replace=lambda b, m: b.op("add", b.op("relu", m["x"]), b.op("relu", m["x"])),
        ),
    )


class ReluScale(torch.nn.Module):
    def __init__(self, scale=2.0, extra_user=False, commuted=False):
        super().__init__()
        self.scale, self.extra_user, self.commuted = scale, extra_user, commuted

    def forward(self, x):
        r = torch.relu(x)
        y = self.scale * r if self.commuted else r * self.scale
        return (y, r) if self.extra_user else y


def _run(module):
    g = trace_module(module, torch.randn(2, 5, 8))
    out, records = optimize(g, "test-fuse-relu-scale")
    return g, out, records


def test_rule_fires_keeps_numerics_and_records_provenance():
    g, out, records = _run(ReluScale())
    assert matches(records, "relu-times-two") == 1
    assert out.op_histogram() == {"add": 1, "relu": 2}
    assert_same_outputs(g, out)
    fused = [n for n in out.nodes if n.meta.get("rule") == "relu-times-two"]
    assert len(fused) == 3
    replaced = set(fused[0].meta["replaced"])
    assert replaced == {n.name for n in g.nodes}


def test_replacement_takes_the_root_name_so_the_diff_is_small():
    g, out, _ = _run(ReluScale())
    assert [v.name for v in out.outputs] == [v.name for v in g.outputs]


def test_commutative_operands_match():
    _, out, records = _run(ReluScale(commuted=True))
    assert matches(records, "relu-times-two") == 1


def test_interior_value_with_outside_user_is_rejected_with_reason():
    g, out, records = _run(ReluScale(extra_user=True))
    assert out.dump() == g.dump()
    (why,) = rejections(records, "relu-times-two")
    assert "interior value" in why["reason"] and why["node"]


def test_check_rejection_reason_is_recorded():
    g, out, records = _run(ReluScale(scale=3.0))
    assert out.dump() == g.dump()
    (why,) = rejections(records, "relu-times-two")
    assert why["reason"] == "scale 3.0, want 2"


class Chain(torch.nn.Module):
    def forward(self, x):
        return torch.relu(torch.relu(torch.relu(x) * 2.0) * 2.0) * 2.0


def test_max_matches_stops_after_n_rewrites():
    g = trace_module(Chain(), torch.randn(2, 5, 8))
    _, all_records = optimize(g, "test-fuse-relu-scale")
    assert matches(all_records, "relu-times-two") == 3
    out, records = optimize(g, "test-fuse-relu-scale{max_matches=1}")
    assert matches(records, "relu-times-two") == 1
    assert_same_outputs(g, out)


# -- the pattern language, matched on small hand-built graphs -----------------------------------

F32 = DType.float32


def _small():
    """x f32[4, 8]; linear(x, w), linear(x, w, b), linear(x, w, neg(b)), layer_norm(x, -, b)."""
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", F32, [4, 8])
    w = g.add_initializer("w", rng.standard_normal((8, 8)).astype(np.float32))
    b = g.add_initializer("b", rng.standard_normal(8).astype(np.float32))
    nb = g.create_node("neg", [b]).output
    nodes = {
        "l2": g.create_node("linear", [x, w]),
        "l3": g.create_node("linear", [x, w, b]),
        "l3neg": g.create_node("linear", [x, w, nb]),
        "norm": g.create_node("layer_norm", [x, None, b]),
    }
    g.outputs = [n.output for n in nodes.values()]
    return g, nodes


def _found(pattern, node):
    """Every match of ``pattern`` rooted at ``node``: (bindings, ops of the matched nodes)."""
    return [(b, [n.op for n in ns]) for b, ns in match_node(pattern, node, {}, (), True)]


def _names(found):
    return [{k: getattr(v, "name", v) for k, v in b.items()} for b, _ in found]


LINEAR = P.op("linear", P.var("x"), P.const("w"), P.opt(P.const("b")))


def test_optional_input_matches_when_absent_or_present():
    _, n = _small()
    assert _names(_found(LINEAR, n["l2"])) == [{"x": "x", "w": "w"}]
    assert _names(_found(LINEAR, n["l3"])) == [{"x": "x", "w": "w", "b": "b"}]
    ln = P.op("layer_norm", P.var("x"), P.opt(P.var("weight")), P.const("bias"))
    assert _names(_found(ln, n["norm"])) == [{"x": "x", "bias": "b"}]  # None is absent


def test_optional_input_that_is_present_must_match():
    _, n = _small()
    assert _found(LINEAR, n["l3neg"]) == []  # the bias is there and is not a constant
    ln = P.op("layer_norm", P.var("x"), P.var("weight"), P.const("bias"))
    assert _found(ln, n["norm"]) == []  # a required input is never None


def test_inputs_past_the_pattern_need_other_inputs():
    _, n = _small()
    two = P.op("linear", P.var("x"), P.var("w"))
    assert _found(two, n["l3"]) == [] and len(_found(two, n["l2"])) == 1
    some = P.op("linear", P.var("x"), P.var("w"), other_inputs=True)
    (found,) = _found(some, n["l3neg"])
    assert _names([found]) == [{"x": "x", "w": "w"}]
    assert found[1] == ["linear"]  # the unmatched bias's producer is not part of the match
    assert len(_found(some, n["l2"])) == 1
    three = P.op("linear", P.var("x"), P.var("w"), P.var("b"), other_inputs=True)
    assert _found(three, n["l2"]) == []  # other inputs add inputs, they do not drop any


def test_either_tries_alternatives_in_order_and_tags_the_one_that_matched():
    g = Graph()
    x = g.add_input("x", F32, [4])
    r = g.create_node("relu", [g.create_node("neg", [x]).output])
    g.outputs = [r.output]
    p = P.either(P.op("relu", P.op("neg", P.var("a"))), P.op("relu", P.var("a")), tag="t")
    found = _found(p, r)
    assert [(b["a"].name, b["t"]) for b, _ in found] == [("x", 0), ("neg", 1)]
    assert [ops for _, ops in found] == [["relu", "neg"], ["relu"]]
    assert _found(P.either(P.op("neg", P.var("a")), P.op("exp", P.var("a"))), r) == []


def test_either_tag_used_twice_must_agree():
    g = Graph()
    x = g.add_input("x", F32, [4])
    neg, relu = g.create_node("neg", [x]).output, g.create_node("relu", [x]).output
    same = g.create_node("add", [neg, g.create_node("neg", [x]).output])
    mixed = g.create_node("add", [neg, relu])
    g.outputs = [same.output, mixed.output]

    def either(name):
        return P.either(P.op("neg", P.var(name)), P.op("relu", P.var(name)), tag="t")

    p = P.op("add", either("a"), either("b"))
    assert {b["t"] for b, _ in _found(p, same)} == {0}
    assert _found(p, mixed) == []


def test_malformed_patterns_are_refused_where_they_are_written():
    with pytest.raises(TypeError, match="rule bad: a rule's pattern must be P.op"):
        Rule("bad", P.var("x"), replace=lambda b, m: m["x"])
    with pytest.raises(TypeError, match="rule bad"):
        Rule("bad", P.either(P.op("neg", P.var("x")), P.var("x")), replace=lambda b, m: m["x"])
    with pytest.raises(TypeError, match="two or more"):
        P.either(P.var("x"))
    with pytest.raises(TypeError, match="input of P.op"):
        P.either(P.opt(P.var("x")), P.var("y"))
    with pytest.raises(TypeError, match="takes patterns"):
        P.op("neg", "x")


# -- the engine: the root index, sites computed once, the sweep limit ---------------------------


def _run_rules(graph, *rules, max_sweeps=20):
    cls = type("Rules", (RewritePass,), {"rules": rules, "max_sweeps": max_sweeps})
    p = cls()
    result = p.run(graph)
    graph.verify()
    return result, p


def _chain():
    """exp(relu(neg(x))) -> out."""
    g = Graph()
    v = g.add_input("x", F32, [4])
    for op in ("neg", "relu", "exp"):
        v = g.create_node(op, [v]).output
    g.outputs = [v]
    return g


def _same_op(b, m):  # a fresh node of the root's op on the same input: a no-op rewrite
    return b.op(m.root.op, m["a"])


def test_rules_are_tried_only_at_nodes_of_their_root_ops(monkeypatch):
    tried = []

    def spy(pattern, node, *args):
        tried.append((rules[pattern], node.op))
        return match_node(pattern, node, *args)

    unary = P.either(P.op("neg", P.var("a")), P.op("relu", P.var("a")))
    exp = P.op("exp", P.var("a"))
    rules = {unary: "unary", exp: "exp"}
    monkeypatch.setattr(rewrite, "match_node", spy)
    _run_rules(
        _chain(),
        Rule("exp", exp, _same_op, check=lambda m: "no"),
        Rule("unary", unary, _same_op, check=lambda m: "no"),
    )
    assert tried == [("unary", "neg"), ("unary", "relu"), ("exp", "exp")]


def test_rules_of_one_root_op_keep_the_pass_order():
    first = Rule("first", P.op("relu", P.var("a")), _same_op)
    either = Rule("either", P.either(P.op("neg", P.var("a")), P.op("relu", P.var("a"))), _same_op)
    result, _ = _run_rules(_chain(), either, first, max_sweeps=1)
    assert result.stats["matches"] == {"either": 2, "first": 0}
    result, _ = _run_rules(_chain(), first, either, max_sweeps=1)
    assert result.stats["matches"] == {"first": 1, "either": 1}


def _neg_of_neg_site(m):
    m.root.meta["site_calls"] = m.root.meta.get("site_calls", 0) + 1
    return m["a"] if m["a"].rank == 1 else f"rank {m['a'].rank}, want 1"


def test_site_is_computed_once_and_replace_reads_it():
    g = Graph()
    x = g.add_input("x", F32, [4])
    root = g.create_node("neg", [g.create_node("neg", [x]).output])
    g.outputs = [g.create_node("exp", [root.output]).output]
    pattern = P.op("neg", P.op("neg", P.var("a")))
    rule = Rule("neg-neg", pattern, lambda b, m: b.op("identity", m.site), site=_neg_of_neg_site)
    result, _ = _run_rules(g, rule)
    assert result.stats["matches"] == {"neg-neg": 1} and root.meta["site_calls"] == 1
    assert g.op_histogram() == {"identity": 1, "exp": 1}


def test_a_reason_from_site_rejects_the_site():
    g = Graph()
    x = g.add_input("x", F32, [2, 4])
    g.outputs = [g.create_node("neg", [g.create_node("neg", [x]).output]).output]
    before = g.dump()
    rule = Rule("neg-neg", P.op("neg", P.op("neg", P.var("a"))), _same_op, site=_neg_of_neg_site)
    result, _ = _run_rules(g, rule)
    assert g.dump() == before and result.stats["matches"] == {"neg-neg": 0}
    assert [r["reason"] for r in result.stats["rejected"]] == ["rank 2, want 1"]


@register("test-sweep-limit")
class WrapForever(RewritePass):
    """Test only: relu(x) -> relu(identity(x)) matches again after every rewrite."""

    max_sweeps = 3
    rules = (
        Rule("wrap", P.op("relu", P.var("a")), lambda b, m: b.op("relu", b.op("identity", m["a"]))),
    )


def test_hitting_the_sweep_limit_is_reported_in_the_record_and_summary(tmp_path):
    _, records = optimize(_chain(), "test-sweep-limit", dump_dir=str(tmp_path))
    assert records[0].stats["matches"] == {"wrap": 3}  # one rewrite per sweep
    assert "stopped after 3 sweeps" in records[0].stats["sweep_limit"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["passes"][0]["stats"]["sweep_limit"] == records[0].stats["sweep_limit"]


def test_a_pass_that_settles_does_not_report_the_sweep_limit():
    _, out, records = _run(Chain())
    assert matches(records, "relu-times-two") == 3
    assert "sweep_limit" not in records[0].stats
