"""tgraph bench --per-pass: latency with each fusion family switched off in turn."""

import json

from click.testing import CliRunner

from tgraph.cli import main
from tgraph.debug.perpass import families, variants


def test_variants_drop_one_family_each():
    pipeline = "simplify,fuse-gelu,dce,fuse-linear,simplify,fuse-gelu,dce"
    assert families(pipeline) == ["fuse-gelu", "fuse-linear"]
    got = {v.name: v.pipeline for v in variants(pipeline)}
    assert got == {
        "all": pipeline,
        "without fuse-gelu": "simplify,dce,fuse-linear,simplify,dce",
        "without fuse-linear": "simplify,fuse-gelu,dce,simplify,fuse-gelu,dce",
        "cleanup only": "simplify,dce,simplify,dce",
    }


def test_cli_bench_per_pass(tmp_path):
    out = tmp_path / "perpass.json"
    args = ["bench", "zoo:gpt-tiny", "--per-pass", "--backends", "tgraph-ort", "--repeats", "2",
            "--warmup", "0", "--seq-len", "8", "--pipeline", "simplify,fuse-gelu,fuse-attention,dce",
            "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "without fuse-attention" in result.output and "bought ms" in result.output
    report = json.loads(out.read_text())
    assert [v["name"] for v in report["variants"]] == [
        "all", "without fuse-gelu", "without fuse-attention", "cleanup only"
    ]  # fmt: skip
    assert all(v["median_ms"] and v["max_abs_error"] < 1e-4 for v in report["variants"])
    bad = CliRunner().invoke(main, ["bench", "zoo:gpt-tiny", "--per-pass", "--backends", "eager"])
    assert bad.exit_code == 2 and "needs a tgraph-* backend" in bad.stderr


def test_per_pass_uses_the_bench_timing_loop(monkeypatch):
    """One timing loop serves both: random order, pause and untimed call, failures recorded."""
    import tgraph.debug.perpass as perpass
    from tgraph.models import build, example_inputs

    calls = []
    real = perpass.time_interleaved

    def spy(runs, results, warmup, repeats, pause_s, sync=None):
        calls.append(pause_s)
        broken = next(iter(runs))
        good = runs[broken]
        state = {"n": 0}

        def fails_later():
            state["n"] += 1
            if state["n"] > 1:
                raise RuntimeError("boom")
            return good()

        runs[broken] = fails_later
        return real(runs, results, warmup, repeats, pause_s, sync)

    monkeypatch.setattr(perpass, "time_interleaved", spy)
    model = build("gpt-tiny").eval()
    report = perpass.per_pass_bench(
        model, example_inputs(model, batch=1, seq=8), pipeline="simplify,fuse-gelu,dce",
        repeats=2, warmup=0, pause_s=0.0,
    )  # fmt: skip
    assert calls == [0.0]
    first, rest = report.variants[0], report.variants[1:]
    assert first.median_ms is None and "boom" in first.error
    assert all(v.median_ms is not None for v in rest)
