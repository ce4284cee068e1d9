"""Provenance: every node keeps its module and source line through every pass, fused nodes
list the input nodes they replaced, and the HTML report links nodes to their origins."""

import re

import pytest
from browser import run_chromium
from click.testing import CliRunner
from model_cases import ZOO_CASES

from tgraph.cli import main
from tgraph.debug.report import html_report, write_text_atomic
from tgraph.passes.manager import PassInstrument, optimize


class ProvenanceCheck(PassInstrument):
    """After every pass: every node has a source line, every fused node lists what it
    replaced, and every replaced name is a node of the input graph."""

    def run_start(self, graph):
        self.origins = {n.name: n.meta for n in graph.nodes}
        self.passes = 0

    def after_pass(self, graph, spec, index, changed):
        self.passes += 1
        for node in graph.nodes:
            where = f"after {spec}: node %{node.name} ({node.op})"
            assert node.meta.get("source"), f"{where} lost its source line"
            if node.name in self.origins and not node.meta.get("rule"):
                assert node.meta.get("module") == self.origins[node.name].get("module"), where
            if node.meta.get("rule"):
                replaced = node.meta.get("replaced")
                assert replaced, f"{where} made by rule {node.meta['rule']} lists no originals"
                unknown = [r for r in replaced if r not in self.origins]
                assert not unknown, f"{where} replaced {unknown}, not input-graph nodes"


@pytest.mark.parametrize("case_name", [*ZOO_CASES, "hf-bert", "hf-llama"])
def test_provenance_survives_every_pass(case_name, traced_case):
    _, graph = traced_case(case_name)
    check = ProvenanceCheck()
    out, records = optimize(graph, "default", instruments=[check])
    assert check.passes == len(records)
    fused = [n for n in out.nodes if n.meta.get("rule")]
    assert fused, "the default pipeline fused nothing"
    # A fused attention stands for many input nodes, and takes its module from them.
    attention = [n for n in out.nodes if n.op in ("attention", "qkv_attention")]
    assert attention and all(len(n.meta["replaced"]) > 3 for n in attention)
    assert all(n.meta.get("module") for n in attention)


def test_dump_provenance_shows_rule_and_replaced():
    result = CliRunner().invoke(
        main, ["dump", "zoo:bert-tiny", "--pipeline", "default", "--provenance"]
    )
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if "layer_norm(" in ln]
    assert lines and all(re.search(r"# \S+ at \S+:\d+ rule \S+ replaced \S+", ln) for ln in lines)


@pytest.fixture
def report(traced_case):
    _, graph = traced_case("bert-tiny")
    optimized, records = optimize(graph, "default", keep_dumps=True)
    return graph, optimized, records, html_report(graph, optimized, records)


def test_html_links_every_node_to_its_origin(report):
    graph, optimized, records, page = report
    assert '<section id="provenance">' in page
    anchors = set(re.findall(r' id="([^"]+)"', page))
    links = re.findall(r'href="#([^"]+)"', page)
    assert links and all(target in anchors for target in links), "a link points nowhere"
    for node in graph.nodes:
        assert f"input-{node.name}" in anchors
    for node in optimized.nodes:
        assert f"final-{node.name}" in anchors
        row = page.split(f'id="final-{node.name}"', 1)[1].split("</tr>", 1)[0]
        for name in node.meta.get("replaced", ()):
            assert f'href="#input-{name}"' in row  # each original, linked
        if node.meta.get("rule"):
            assert re.search(r'href="#pass-\d\d"', row), row  # the pass that made it


def test_report_with_provenance_renders_in_chromium(report, tmp_path):
    *_, page = report
    path = tmp_path / "report.html"
    write_text_atomic(str(path), page)
    dom = run_chromium(tmp_path, "--dump-dom", path.as_uri()).stdout
    assert 'data-js="on"' in dom and '<table id="provenance-table">' in dom


def test_source_points_at_the_model_not_at_torch(traced_case):
    _, graph = traced_case("hf-bert")
    sources = {n.meta.get("source", "") for n in graph.nodes if n.op == "linear"}
    assert sources and all(s.startswith("modeling_bert.py:") for s in sources), sources
