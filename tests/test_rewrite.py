"""The shared rewrite engine: matching, soundness, rejections, provenance, naming."""

import torch
from pass_helpers import assert_same_outputs, matches, rejections, trace_module

from tgraph.passes.manager import optimize, register
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
