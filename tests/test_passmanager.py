"""The pass manager: pipelines, verification, dumps, reproducers."""

import json
import os

import numpy as np
import pytest
import torch
from pass_helpers import trace_module

import tgraph
from tgraph.ir import Graph
from tgraph.passes.manager import (
    Pass,
    PassError,
    PassResult,
    PipelineError,
    format_pipeline,
    optimize,
    parse_pipeline,
    register,
    replay,
)


@register("test-break-graph")
class BreakGraph(Pass):
    """Test only: point the first node's input at a value defined later (invalid IR)."""

    def run(self, graph: Graph) -> PassResult:
        nodes = list(graph.nodes)
        nodes[0].replace_input(0, nodes[-1].outputs[0])
        return PassResult(True)


@register("test-lie-changed")
class LieChanged(Pass):
    """Test only: claims a change without making one."""

    def run(self, graph: Graph) -> PassResult:
        return PassResult(True)


@register("test-raise")
class Raise(Pass):
    """Test only: raises."""

    def run(self, graph: Graph) -> PassResult:
        raise RuntimeError("boom")


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        y = self.proj(x).contiguous()
        return torch.relu(y) * 2.0


@pytest.fixture(scope="module")
def graph():
    return trace_module(Small(), torch.randn(2, 5, 8))


@pytest.mark.parametrize("text", ["dce", "dce,dce{max_sweeps=2,flag=true}", "dce{x=1.5,name=abc}"])
def test_pipeline_text_round_trips(text):
    assert format_pipeline(parse_pipeline(text)) == text


def test_named_pipelines_expand_and_none_is_empty():
    assert parse_pipeline("none") == []
    assert [s.name for s in parse_pipeline("default")]
    assert parse_pipeline(["dce", "none"]) == parse_pipeline("dce")


def test_unknown_pass_lists_close_matches():
    with pytest.raises(PipelineError, match=r"unknown pass 'dec'.*did you mean.*dce"):
        parse_pipeline("dec")
    with pytest.raises(PipelineError, match="malformed"):
        parse_pipeline("dce{")


def test_bad_option_names_the_pass(graph):
    with pytest.raises(PipelineError, match="pass dce"):
        optimize(graph, "dce{bogus=1}")


def test_optimize_works_on_a_clone(graph):
    before = graph.dump()
    out, records = optimize(graph, "dce")
    assert graph.dump() == before
    assert out is not graph
    assert [r.name for r in records] == ["dce"]
    assert records[0].nodes_before == len(graph.nodes)


def test_dump_dir_layout_and_summary(graph, tmp_path):
    optimize(graph, "dce,dce", dump_dir=str(tmp_path))
    files = sorted(os.listdir(tmp_path))
    assert files == [
        "00-input.txt",
        "01-dce.diff",
        "01-dce.txt",
        "02-dce.diff",
        "02-dce.txt",
        "summary.json",
    ]
    assert (tmp_path / "00-input.txt").read_text() == graph.dump()
    assert (tmp_path / "02-dce.diff").read_text() == ""
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["pipeline"] == "dce,dce"
    assert len(summary["passes"]) == 2
    record = summary["passes"][0]
    assert set(record) >= {"name", "seconds", "nodes_before", "nodes_after", "changed", "ops"}


def test_dumps_are_byte_identical_across_runs(graph, tmp_path):
    optimize(graph, "default", dump_dir=str(tmp_path / "a"))
    optimize(graph, "default", dump_dir=str(tmp_path / "b"))
    for name in os.listdir(tmp_path / "a"):
        a = (tmp_path / "a" / name).read_text()
        b = (tmp_path / "b" / name).read_text()
        if name == "summary.json":  # timings differ; everything else must not
            a, b = json.loads(a), json.loads(b)
            for r in a["passes"] + b["passes"]:
                r.pop("seconds")
        assert a == b, name


def test_a_pass_that_breaks_the_graph_is_named_with_its_predecessors(graph, tmp_path):
    with pytest.raises(PassError, match=r"test-break-graph broke the graph.*after passes: dce"):
        optimize(graph, "dce,test-break-graph", dump_dir=str(tmp_path))
    repro = tmp_path / "failed-02-test-break-graph"
    assert (repro / "pipeline.txt").read_text().strip() == "test-break-graph"
    assert (repro / "before.txt").read_text() == graph.dump()
    with pytest.raises(PassError, match="test-break-graph"):
        replay(str(repro))


def test_changed_must_agree_with_the_dump(graph):
    with pytest.raises(PassError, match="reported changed=True but the graph did not change"):
        optimize(graph, "test-lie-changed")


def test_a_raising_pass_is_reported(graph):
    with pytest.raises(PassError, match=r"pass test-raise failed: boom \(after passes: none\)"):
        optimize(graph, "test-raise")


def test_diff_is_a_unified_diff(graph):
    out, _ = optimize(graph, "none")
    assert tgraph.diff(graph, out) == ""
    g2 = graph.clone()
    node = next(iter(g2.nodes))
    g2.rename(node.outputs[0], "renamed")
    text = tgraph.diff(graph, g2)
    assert text.startswith("--- a\n+++ b\n") and "+" in text and "renamed" in text


def test_list_passes_has_descriptions():
    passes = tgraph.list_passes()
    assert passes["dce"].startswith("Remove pure nodes")
    assert "default" not in passes and "default" in tgraph.list_pipelines()


def test_compile_reports_the_pipeline(graph):
    model = Small().eval()
    cm = tgraph.compile(model, (torch.randn(2, 5, 8),), backend="reference", pipeline="dce")
    assert [r.name for r in cm.report] == ["dce"]
    x = torch.randn(3, 4, 8)
    np.testing.assert_allclose(cm(x).numpy(), model(x).detach().numpy(), rtol=1e-5, atol=1e-5)
