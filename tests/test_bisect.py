"""tgraph bisect: the pass, then the rewrite inside it, that breaks a model's outputs."""

import json
import time

import bad_passes  # noqa: F401  (registers the test-only broken passes)
import pytest
from click.testing import CliRunner
from test_verify_mode import BAD_PIPELINE, _seventh_linear, _traced

from tgraph.cli import main
from tgraph.debug.bisect import bisect, replay
from tgraph.passes.manager import parse_pipeline
from tgraph.passes.manager import replay as replay_pipeline


@pytest.mark.parametrize("backend", ["reference", "ort", "torch"])
def test_cli_bisect_finds_the_bad_rewrite_on_bert_in_under_a_minute(backend, traced_case, tmp_path):
    assert len(parse_pipeline(BAD_PIPELINE)) == 12
    out = tmp_path / "repro"
    args = ["bisect", "zoo:bert-tiny", "--pipeline", BAD_PIPELINE, "--backend", backend,
            "--out", str(out)]  # fmt: skip
    start = time.perf_counter()
    result = CliRunner().invoke(main, args)
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    assert seconds < 60, f"bisect took {seconds:.1f} s"
    site = _seventh_linear(traced_case("bert-tiny")[1])
    first = result.output.splitlines()[0]
    assert first.startswith(
        f"pass test-bad-bias (8 of 12), match 7 (rule bad-bias), at node %{site['node']} "
        "(from module layers.1.attn.query)"
    ), first
    assert f"reproducer: {out}" in result.output


def test_reproducer_replays(traced_case, tmp_path):
    _, graph = traced_case("bert-tiny")
    out = tmp_path / "repro"
    found = bisect(graph, BAD_PIPELINE, traced=_traced(graph), out_dir=str(out))
    assert (found.pass_index, found.match) == (8, 7)
    assert (out / "pipeline.txt").read_text().strip() == "test-bad-bias{max_matches=7}"
    info = json.loads((out / "bisect.json").read_text())
    assert info["seed"] == 0 and info["sizes"] and info["summary"] == found.summary()
    assert (out / "before.txt").read_text().startswith("graph Bert(")
    again = replay(str(out))
    assert not again.ok and again.max_error > 1e-3
    assert "still changes the outputs" in again.summary()
    after, records = replay_pipeline(str(out))  # the pass manager's own replay
    assert records[0].stats["matches"] == {"bad-bias": 7}
    result = CliRunner().invoke(main, ["replay", str(out)])
    assert result.exit_code == 1 and "still changes the outputs" in result.output
    result = CliRunner().invoke(main, ["replay", str(tmp_path)])
    assert result.exit_code == 1 and "no bisect.json" in result.stderr


def test_bisect_follows_the_option_not_a_constant(traced_case):
    _, graph = traced_case("hf-bert")
    pipeline = BAD_PIPELINE.replace("test-bad-bias", "test-bad-bias{bad_match=3}")
    found = bisect(graph, pipeline, traced=_traced(graph))
    assert (found.pass_name, found.match) == ("test-bad-bias{bad_match=3}", 3)
    assert found.site["rule"] == "bad-bias" and found.site["module"]


def test_bisect_stops_at_a_plain_pass(traced_case):
    _, graph = traced_case("bert-tiny")
    found = bisect(graph, "simplify,dce,test-bad-norm-weight,fuse-layernorm,cse")
    assert (found.verdict, found.pass_index, found.match) == ("found", 3, None)
    assert found.summary().startswith("pass test-bad-norm-weight (3 of 5): max abs error")


def test_bisect_a_clean_pipeline(traced_case):
    _, graph = traced_case("gpt-tiny")
    found = bisect(graph, "default", backend="ort", traced=_traced(graph))
    assert found.verdict == "clean" and found.probes == 2
    assert found.summary().startswith("no pass changes the outputs on backend ort")


def test_bisect_says_when_the_backend_not_a_pass_differs(traced_case):
    _, graph = traced_case("gpt-tiny")
    found = bisect(graph, "default", backend="ort", tol=0.0)
    assert found.verdict == "backend"
    assert "a backend bug, not a pass" in found.summary()
