"""The "why not fused" report: every candidate site a rule refused, with the first failed
check, in summary.json, `tgraph dump --why-not-fused` and the HTML report."""

import json

import torch
from click.testing import CliRunner

import tgraph
from tgraph.debug.report import html_report, why_not_fused_text
from tgraph.passes.manager import optimize, why_not_fused

NEAR_MISS = "interior value %erf is also used by %output_1 (mul)"


class NearMissGelu(torch.nn.Module):
    """A GELU written out whose erf is also read elsewhere: fusing it would be unsound."""

    def forward(self, x):
        inner = torch.erf(x / 2**0.5)
        return 0.5 * x * (1 + inner), inner * 3


class Gelu(torch.nn.Module):
    def forward(self, x):
        return 0.5 * x * (1 + torch.erf(x / 2**0.5))


def _graph(module):
    return tgraph.trace(module.eval(), (torch.randn(2, 16, 8),))


def test_planted_near_miss_is_reported_with_its_reason(tmp_path):
    _, records = optimize(
        _graph(NearMissGelu()), "fuse-layernorm,fuse-gelu", dump_dir=str(tmp_path)
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    entries = summary["why_not_fused"]
    assert entries == why_not_fused(records)
    gelu = [e for e in entries if e["rule"] == "gelu-erf"]
    assert gelu == [
        {"pass": "02 fuse-gelu", "rule": "gelu-erf", "fused": 0,
         "rejected": [{"node": "output_0", "module": "", "reason": NEAR_MISS}]},
    ]  # fmt: skip
    text = why_not_fused_text(records)
    assert "02 fuse-gelu / gelu-erf: 0 fused, 1 rejected" in text
    assert f"  %output_0: {NEAR_MISS}" in text


def test_without_the_extra_user_the_site_fuses_and_is_not_listed():
    _, records = optimize(_graph(Gelu()), "fuse-gelu")
    assert why_not_fused(records) == [
        {"pass": "01 fuse-gelu", "rule": "gelu-erf", "fused": 1, "rejected": []}
    ]


def test_whole_model_report_covers_every_rejection(traced_case):
    _, graph = traced_case("gpt-tiny")
    _, records = optimize(graph, "default")
    entries = why_not_fused(records)
    listed = sum(len(e["rejected"]) for e in entries)
    assert listed == sum(len(r.stats.get("rejected", ())) for r in records) > 0
    fused = {(e["pass"], e["rule"]): e["fused"] for e in entries}
    for index, r in enumerate(records, start=1):
        for rule, n in r.stats.get("matches", {}).items():
            assert fused.get((f"{index:02d} {r.name}", rule), 0) == n


def test_cli_dump_why_not_fused_and_html(tmp_path):
    from tgraph.cli import main

    html = tmp_path / "r.html"
    args = ["dump", "zoo:gpt-tiny", "--pipeline", "default", "--why-not-fused",
            "--html", str(html)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("why not fused: ")
    assert "graph GPT(" not in result.output  # the report replaces the graph
    page = html.read_text()
    assert '<section id="why-not-fused">' in page and '<table id="rejected">' in page


def test_html_lists_the_near_miss():
    graph = _graph(NearMissGelu())
    optimized, records = optimize(graph, "fuse-gelu", keep_dumps=True)
    page = html_report(graph, optimized, records)
    assert "<td>gelu-erf</td><td>output_0</td>" in page
    assert "interior value %erf is also used by %output_1 (mul)" in page
    assert 'href="#input-output_0"' in page and 'id="input-output_0"' in page
