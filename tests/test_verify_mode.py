"""Verify mode (tgraph.debug.numcheck): every pass checked numerically against the graph before it."""

import bad_passes  # noqa: F401  (registers the test-only broken passes)
import pytest
import torch
from click.testing import CliRunner
from model_cases import HF_CASES, HF_MORE_CASES, ZOO_CASES

import tgraph
from tgraph.cli import main
from tgraph.debug.numcheck import (
    NumericError,
    NumericVerifier,
    close,
    verify_pipeline,
    verify_sizes,
)
from tgraph.passes.manager import PassError, optimize

# 12 passes on BERT with the broken one in the middle.
BAD_PIPELINE = (
    "simplify,fold-constants,cse,dce,fuse-layernorm,fuse-gelu,fuse-linear,test-bad-bias,"
    "fuse-attention,simplify,cse,dce"
)
TRACED = {"batch": 2, "seq": 16}


def _traced(graph):
    return {s: TRACED["batch" if s == "batch" else "seq"] for s in graph.symbols()}


def _seventh_linear(graph):
    """The 7th site test-bad-bias rewrites, found independently of verify mode."""
    before, _ = optimize(graph, BAD_PIPELINE.split(",test-bad-bias")[0])
    probe = bad_passes.BadBias(max_matches=7)
    probe.run(before.clone())
    return probe.applied[6]


def test_sizes_are_one_odd_and_traced(traced_case):
    _, graph = traced_case("bert-tiny")
    sizes = verify_sizes(graph, {"batch": 2, "seq": 16})
    assert sizes == [{"batch": 1, "seq": 7}, {"batch": 3, "seq": 5}, {"batch": 2, "seq": 16}]


def test_verify_catches_the_bad_rewrite_and_names_pass_rule_and_node(traced_case):
    _, graph = traced_case("bert-tiny")
    with pytest.raises(PassError, match="pass test-bad-bias failed verification") as info:
        verify_pipeline(graph, BAD_PIPELINE, traced=_traced(graph))
    cause = info.value.__cause__
    assert isinstance(cause, NumericError)
    site = _seventh_linear(graph)
    assert (cause.pass_name, cause.rule) == ("test-bad-bias", "bad-bias")
    assert cause.node == site["node"] and cause.module == site["module"] == "layers.1.attn.query"
    text = str(info.value)
    assert f"first differing value %{site['node']} (linear, rule bad-bias" in text
    assert "from module layers.1.attn.query" in text
    assert "after passes: simplify, fold-constants" in text and "\n" not in text


def test_verify_failure_writes_a_reproducer(traced_case, tmp_path):
    _, graph = traced_case("bert-tiny")
    with pytest.raises(PassError) as info:
        verify_pipeline(graph, BAD_PIPELINE, traced=_traced(graph), dump_dir=str(tmp_path))
    repro = tmp_path / "failed-08-test-bad-bias"
    assert info.value.reproducer == str(repro)
    assert (repro / "pipeline.txt").read_text().strip() == "test-bad-bias"


def test_verify_passes_a_sound_pipeline_and_checks_every_changing_pass(traced_case):
    _, graph = traced_case("bert-tiny")
    verifier = NumericVerifier(_traced(graph))
    _, records = optimize(graph, "default", instruments=[verifier])
    assert verifier.checked == [r.name for r in records if r.changed]
    assert len(verifier.cases) == 3


@pytest.mark.parametrize("case_name", [*ZOO_CASES, *HF_CASES, *HF_MORE_CASES])
def test_verify_default_pipeline_on_models(case_name, traced_case):
    _, graph = traced_case(case_name)
    out, records = verify_pipeline(graph, "default", traced=_traced(graph))
    assert any(r.changed for r in records)


def test_verify_flags_a_symbolic_dim_fixed_to_a_constant():
    class Flatten(torch.nn.Module):
        def forward(self, x):
            return (x * 2).reshape(x.shape[0], -1)

    graph = tgraph.trace(Flatten().eval(), (torch.randn(2, 16, 4),))
    with pytest.raises(PassError, match=r"test-fix-dims failed verification: fixed symbolic dim"):
        verify_pipeline(graph, "test-fix-dims", traced=_traced(graph))


def test_verify_compares_gradients_on_the_torch_backend():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    model.train()
    x = torch.randn(2, 8)
    cm = tgraph.compile(model, (x,), backend="torch", verify=True)  # training pipeline: clean
    assert cm.pipeline.startswith("simplify")
    pipeline = "fuse-linear{keep_trainable=true},test-grad-detach"
    assert close(*(m(x).detach().numpy() for m in (model, cm)), 1e-5, 1e-5)[0]
    with pytest.raises(PassError, match=r"test-grad-detach failed verification: gradient of "):
        tgraph.compile(model, (x,), backend="torch", pipeline=pipeline, verify=True)
    # Outputs alone do not see this bug: without gradients the pipeline passes.
    tgraph.compile(model, (x,), backend="reference", pipeline=pipeline, verify=True)


def test_cli_compile_verify(tmp_path):
    out = tmp_path / "bert.tg"
    args = ["compile", "zoo:bert-tiny", "-o", str(out), "--backend", "reference", "--verify"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    bad = ["compile", "zoo:bert-tiny", "-o", str(tmp_path / "bad.tg"), "--verify",
           "--backend", "reference", "--pipeline", BAD_PIPELINE]  # fmt: skip
    result = CliRunner().invoke(main, bad)
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith("tgraph: error: pass test-bad-bias failed verification")
    assert "rule bad-bias" in line and "\n" not in line
    assert not (tmp_path / "bad.tg").exists()
