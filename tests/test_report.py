"""The HTML pipeline report (``tgraph dump --html``): content, escaping, and a real browser."""

import dataclasses
import os
import struct

import pytest
from browser import run_chromium

from tgraph.debug.report import html_report, write_text_atomic
from tgraph.passes.manager import optimize


@pytest.fixture
def run(traced_case):
    """gpt-tiny under the default pipeline: (input graph, optimized graph, records)."""
    _, graph = traced_case("gpt-tiny")
    optimized, records = optimize(graph, "default", keep_dumps=True)
    return graph, optimized, records


def _rejections(records):
    return [rej for r in records for rej in r.stats.get("rejected", ())]


def test_report_lists_every_pass_and_why_not_fused(run):
    graph, optimized, records = run
    page = html_report(graph, optimized, records)
    for index, record in enumerate(records, start=1):
        assert f"{index:02d} {record.name}</a>" in page  # its timeline row
    assert sum(r.changed for r in records) == page.count('<details class="pass"')
    assert '<table id="rejected">' in page
    rejections = _rejections(records)
    assert rejections, "gpt-tiny under default should reject some rewrites"
    for rej in rejections:
        assert f"<td>{rej['rule']}</td><td>{rej['node']}</td>" in page
    assert page.count("<script>") == 1


def test_report_is_self_contained(run):
    page = html_report(*run)
    for external in ("http://", "https://", "<link", "src=", "@import", "url("):
        assert external not in page


def test_report_escapes_graph_text_and_reasons(run):
    graph, optimized, records = run
    evil = '<script>alert("x")</script> & more'
    last = records[-1]
    stats = {
        **last.stats,
        "rejected": [{"rule": "r<1>", "node": "n", "module": "m", "reason": evil}],
    }
    page = html_report(graph, optimized, [*records[:-1], dataclasses.replace(last, stats=stats)])
    assert evil not in page and "r<1>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in page
    assert "<td>r&lt;1&gt;</td>" in page
    # Dump text is escaped too: the fused gelu's attribute prints as approximate='tanh'.
    assert "approximate=&#x27;tanh&#x27;" in page and "approximate='tanh'" not in page


def test_report_is_deterministic_apart_from_timings(run):
    graph, _, _ = run

    def page():
        optimized, records = optimize(graph, "default", keep_dumps=True)
        return html_report(
            graph, optimized, [dataclasses.replace(r, seconds=0.001) for r in records]
        )

    assert page() == page()


def test_report_needs_kept_dumps_and_takes_an_empty_pipeline(run):
    graph, _, _ = run
    optimized, records = optimize(graph, "dce")
    with pytest.raises(ValueError, match="keep_dumps=True"):
        html_report(graph, optimized, records)
    page = html_report(graph, graph, [])
    assert "No passes ran." in page and "No pass changed the graph." in page


def test_write_text_atomic(tmp_path):
    path = tmp_path / "r.html"
    path.write_text("old")
    write_text_atomic(str(path), "new")
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["r.html"]  # no temp file left behind
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_text_atomic(str(tmp_path / "missing" / "r.html"), "x")


def test_cli_dump_html(tmp_path):
    from click.testing import CliRunner

    from tgraph.cli import main

    path = tmp_path / "report.html"
    args = ["dump", "zoo:gpt-tiny", "--pipeline", "default", "--html", str(path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("graph GPT(")  # the graph is still printed
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<h1>tgraph: zoo:gpt-tiny</h1>" in page
    assert os.listdir(tmp_path) == ["report.html"]


def test_report_renders_in_chromium(run, tmp_path):
    graph, optimized, records = run
    report = tmp_path / "report.html"
    write_text_atomic(str(report), html_report(graph, optimized, records))
    url = report.as_uri()

    dom = run_chromium(tmp_path, "--dump-dom", url).stdout
    assert 'data-js="on"' in dom  # the inline script ran
    assert dom.count('class="tl-row ') == len(records)
    assert '<table id="rejected">' in dom
    n = len(_rejections(records))
    assert f"{n} of {n} rows" in dom  # the script filled in the filter's row count

    png = tmp_path / "report.png"
    run_chromium(tmp_path, f"--screenshot={png}", "--window-size=1400,2000", url)
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1400, 2000)
