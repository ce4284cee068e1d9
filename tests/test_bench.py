"""tgraph bench: contenders, pipeline columns, memory and a Hugging Face directory via the CLI.

These check what the benchmark reports, not how fast anything is (no timed assertions).
"""

import json

import pytest
import torch

from tgraph.bench import BenchReport, bench, expand_contenders, format_table
from tgraph.models import build, example_inputs


def test_pipelines_expand_tgraph_columns_only():
    got = expand_contenders(["eager", "tgraph-ort", "tgraph-torch[bf16]"], ["default", "int8"])
    assert got == ("eager", "tgraph-ort", "tgraph-ort[int8]", "tgraph-torch[bf16]")
    assert expand_contenders(["tgraph-ort"], []) == ("tgraph-ort",)


def test_unknown_contender_is_a_clear_error():
    model = build("gpt-tiny").eval()
    with pytest.raises(ValueError, match="unknown contender.*ort-fast"):
        bench(model, example_inputs(model, batch=1, seq=8), contenders=["ort-fast"])


def _report(contenders, **kw) -> BenchReport:
    torch.manual_seed(0)
    model = build("gpt-tiny").eval()
    inputs = example_inputs(model, batch=2, seq=8)
    return bench(model, inputs, name="gpt-tiny", contenders=contenders, repeats=2, warmup=1, **kw)


def test_bench_reports_errors_stages_and_memory():
    report = _report(
        ["eager", "tgraph-ort", "ort-plain"], pipelines=["default", "no-such-pipeline"]
    )
    results = {r.name: r for r in report.results}
    assert list(results) == ["eager", "tgraph-ort", "tgraph-ort[no-such-pipeline]", "ort-plain"]
    ok = results["tgraph-ort"]
    assert ok.error is None and ok.max_abs_error < 1e-4 and len(ok.times_ms) == 2
    assert set(ok.stages_s) == {"trace", "optimize", "lower"}
    assert ok.rss_peak_mb is not None
    assert results["ort-plain"].max_abs_error < 1e-4
    bad = results["tgraph-ort[no-such-pipeline]"]
    assert bad.median_ms is None and "no-such-pipeline" in bad.error
    assert "\n" not in bad.error
    text = format_table(report)
    assert "tgraph-ort[no-such-pipeline]  failed:" in text
    json.dumps(report.to_json())  # the JSON file is plain data


def test_low_precision_peers_report_their_error():
    pytest.importorskip("onnxruntime.quantization")
    report = _report(["eager", "ort-int8"])
    int8 = report.results[1]
    assert int8.error is None, int8.error
    assert 0 < int8.max_abs_error < 1.0  # quantized: close to eager, not equal


def test_hf_directory_benches_through_the_cli(tmp_path):
    transformers = pytest.importorskip("transformers")
    from click.testing import CliRunner

    from tgraph.cli import main

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    transformers.BertModel(config).eval().save_pretrained(tmp_path / "bert")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, [
        "bench", str(tmp_path / "bert"), "--batch", "2", "--seq-len", "8", "--repeats", "2",
        "--warmup", "1", "--backends", "eager,tgraph-ort,tgraph-torch", "--json", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "tgraph-ort" in result.output and "failed" not in result.output
    data = json.loads(out.read_text())
    errors = {r["name"]: r["max_abs_error"] for r in data["results"]}
    assert errors["tgraph-ort"] < 1e-4 and errors["tgraph-torch"] < 1e-4


def test_a_contender_failing_while_timed_is_reported_not_fatal():
    from tgraph.bench import BenchResult, time_interleaved

    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("second call broke\nwith detail")

    runners = {"ok": lambda: None, "flaky": flaky}
    results = {"ok": BenchResult("ok"), "flaky": BenchResult("flaky")}
    time_interleaved(runners, results, warmup=1, repeats=3, pause_s=0.0)
    assert len(results["ok"].times_ms) == 3
    assert results["flaky"].error == "failed on call 3: RuntimeError: second call broke"
    assert results["flaky"].times_ms == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when there is no GPU")
def test_device_cuda_without_a_gpu_is_one_line_and_non_zero():
    from click.testing import CliRunner

    from tgraph.cli import main

    result = CliRunner().invoke(main, ["bench", "zoo:gpt-tiny", "--device", "cuda"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"tgraph: error: --device cuda: torch {torch.__version__} sees no CUDA GPU on this machine"
    ]
    with pytest.raises(RuntimeError, match="sees no CUDA GPU"):
        _report(["eager"], device="cuda")


def test_cpu_fp32_json_keeps_its_format():
    data = _report(["eager"]).to_json()
    assert set(data) == {"model", "batch", "seq_len", "threads", "repeats", "results",
                         "peak_rss_mb", "date", "load_avg"}  # fmt: skip
    assert "rel_error" not in data["results"][0] and "cuda_peak_mb" not in data["results"][0]


def test_low_precision_bench_gives_converting_pipelines_the_fp32_model():
    report = _report(["eager", "tgraph-torch"], dtype="fp16", pipelines=["default", "fp16"])
    results = {r.name: r for r in report.results}
    assert list(results) == ["eager", "tgraph-torch", "tgraph-torch[fp16]"]
    for r in results.values():  # every error is against eager fp32: non-zero, within fp16's
        assert r.error is None and 0 < r.rel_error < report.tolerance, (r.name, r.rel_error)
    assert "fp32 model" in results["tgraph-torch[fp16]"].note
    assert results["tgraph-torch"].note is None
    data = report.to_json()
    assert (data["device"], data["dtype"], data["tolerance"]) == ("cpu", "fp16", 2e-2)
    assert "model in fp16: max err is against eager fp32" in format_table(report)


def test_timed_calls_are_bracketed_by_sync():
    from tgraph.bench import BenchResult, time_interleaved

    events = []
    runners = {"a": lambda: events.append("a")}
    results = {"a": BenchResult("a")}
    time_interleaved(runners, results, 1, 2, 0.0, sync=lambda: events.append("sync"))
    assert events == ["sync", "a", "sync"] * 3 and len(results["a"].times_ms) == 2


@pytest.mark.cuda
def test_cuda_fp16_bench():
    report = _report(
        ["eager", "torch.compile[reduce-overhead]", "tgraph-torch", "tgraph-ort"],
        device="cuda", dtype="fp16", pipelines=["default", "fp16"],
    )  # fmt: skip
    results = {r.name: r for r in report.results}
    assert report.gpu and report.device == "cuda"
    for name in ("eager", "torch.compile[reduce-overhead]", "tgraph-torch", "tgraph-torch[fp16]"):
        r = results[name]
        assert r.error is None and r.rel_error < report.tolerance and len(r.times_ms) == 2, name
        assert r.cuda_peak_mb is not None
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "needs onnxruntime-gpu" in results["tgraph-ort"].error


def test_contract_backend_names_are_tgraph_columns():
    assert expand_contenders(["eager", "ort", "torch"], []) == (
        "eager", "tgraph-ort", "tgraph-torch"
    )  # fmt: skip
    report = _report(["eager", "ort"])
    assert [r.name for r in report.results] == ["eager", "tgraph-ort"]
    assert report.results[1].max_abs_error < 1e-4


def test_skipped_peer_says_why_once(monkeypatch):
    from tgraph.bench import contenders

    monkeypatch.setattr(contenders, "_BY_NAME", dict(contenders._BY_NAME))
    peer = contenders._BY_NAME["ort-plain"]
    contenders._BY_NAME["ort-plain"] = contenders.Contender(
        peer.name, peer.build, needs="no_such_package_xyz", devices=peer.devices
    )
    text = format_table(_report(["eager", "ort-plain"]))
    line = next(x for x in text.splitlines() if x.startswith("ort-plain"))
    assert line.split() == ["ort-plain", "skipped:", "no_such_package_xyz", "is", "not",
                            "installed", "(pip", "install", "no_such_package_xyz)"]  # fmt: skip


def test_export_fallback_is_reported(monkeypatch, tmp_path):
    from tgraph.bench import exporters

    real = torch.onnx.export

    def dynamo_fails(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("no dynamo today")
        return real(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4)).eval()
    names, note = exporters.export_onnx(model, (torch.randn(2, 3, 4),), str(tmp_path / "m.onnx"))
    assert names == ["input_0"]
    assert note == "exported with the TorchScript exporter (torch.export failed: no dynamo today)"


class _Allocates(torch.nn.Module):
    """Touches a 64 MiB temporary on every call, freed before it returns."""

    def forward(self, x):
        scratch = torch.ones(16 * 2**20)  # 16 Mi float32 = 64 MiB, every page written
        return x + scratch[:1] * 0


def test_peak_memory_sees_a_temporary_that_is_freed_again():
    report = bench(_Allocates(), (torch.randn(2, 4),), contenders=["eager"], repeats=1,
                   warmup=0)  # fmt: skip
    eager = report.results[0]
    assert eager.rss_peak_mb is not None and eager.rss_peak_mb >= 56, eager.rss_peak_mb
    assert eager.rss_held_mb < 32  # freed: the peak is not what stays


def test_a_peak_mark_that_was_not_reset_reads_unknown_not_zero(monkeypatch):
    from tgraph.bench import measure

    monkeypatch.setattr(measure, "_peak_rss_mb", lambda: 1.0)  # below any real RSS
    report = bench(_Allocates(), (torch.randn(2, 4),), contenders=["eager"], repeats=1,
                   warmup=0)  # fmt: skip
    assert report.results[0].rss_peak_mb is None
