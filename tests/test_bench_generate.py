"""The generation benchmark (tgraph.bench.generation): the harness on a tiny Hugging Face
Llama with a few steps, its JSON and table fields, the agreement and bytes-per-step logic,
and how it reports a peer it cannot run. No timed assertions; the optional peers are not
needed (a missing one must be reported as skipped, with the package to install)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from tgraph.bench import gen_artifacts, generation
from tgraph.bench.gen_process import Worker, WorkerError
from tgraph.bench.gen_worker import _Clock, torch_weight_bytes

transformers = pytest.importorskip("transformers")

PROMPT, NEW = 6, 3


def _llama(**kw):
    config = transformers.LlamaConfig(
        vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **kw,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "tiny-llama"
    _llama().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def eager_reports(llama_dir, tmp_path_factory):
    """Eager (the reference) plus two peers this run cannot have, batch 1 and 2."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gen_artifacts, "_has", lambda module: False)  # as if no peer were installed
        mp.delenv(gen_artifacts.OPTIMUM_PYTHON_ENV, raising=False)
        return generation.bench_generate(
            llama_dir, batches=(1, 2), prompt_len=PROMPT, new_tokens=NEW, rounds=2,
            contenders=["ort-genai", "optimum-intel"], threads=1, cache_dir=str(cache),
            optimum_python=None, membw_bytes=2**22, pause_s=0.0,
        )  # fmt: skip


def test_harness_reports_every_field(eager_reports, llama_dir):
    assert [r.batch for r in eager_reports] == [1, 2]
    report = eager_reports[1]
    assert (report.prompt_len, report.new_tokens, report.rounds) == (PROMPT, NEW, 2)
    eager = report.results[0]
    assert eager.name == "eager" and eager.error is None
    assert len(eager.prefill_runs_ms) == len(eager.decode_runs_tok_s) == 2
    assert eager.prefill_ms > 0 and eager.decode_tok_s > 0
    assert eager.agree == 2 * NEW and eager.first_mismatch is None  # itself
    assert eager.rss_peak_mb >= eager.rss_load_mb > 0
    # bytes per step: the weights a step reads (the embedding table is only looked up)
    # plus the fp32 KV of 2 layers x 2 KV heads x head_dim 8, over the mean context.
    model = _llama()
    weights = sum(p.numel() * 4 for p in model.parameters()) - 120 * 32 * 4
    assert eager.weight_bytes == report.weight_bytes == weights
    kv_per_token = 2 * 2 * 2 * 8 * 4
    assert report.kv_bytes_per_token == kv_per_token
    assert eager.bytes_per_step == int(weights + 2 * kv_per_token * (PROMPT + NEW / 2))
    assert report.membw_gbs > 0 and report.bound_tok_s > 0
    steps_s = eager.decode_tok_s / 2
    assert eager.effective_gbs == pytest.approx(eager.bytes_per_step * steps_s / 1e9, abs=0.01)
    assert eager.pct_of_bound == pytest.approx(
        100 * eager.effective_gbs / report.membw_gbs, abs=0.1
    )
    data = json.loads(json.dumps(report.to_json()))  # plain data, no token lists
    assert "tokens" not in data["results"][0] and data["results"][0]["agree"] == 2 * NEW


def test_missing_peers_are_skipped_with_what_to_install(eager_reports):
    results = {r.name: r for r in eager_reports[0].results}
    assert results["ort-genai"].error == (
        "skipped: onnxruntime_genai is not installed (pip install onnxruntime-genai)"
    )
    assert "optimum-intel" in results["optimum-intel"].error
    assert "--optimum-python" in results["optimum-intel"].error
    text = generation.format_table(eager_reports[0])
    assert "ort-genai          skipped: onnxruntime_genai is not installed" in text
    for column in ("prefill ms", "decode tok/s", "% bound", "eff GB/s", "agree", "peak MiB"):
        assert column in text
    summary = generation.markdown_summary(eager_reports)
    assert "| ort-genai | skipped | skipped |" in summary
    assert summary.count("\n") == 3 + 3  # header, rule, bytes, bandwidth, 3 contenders


def test_agreement_counts_positions_and_finds_the_first_difference():
    ref = [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert generation.agreement(ref, ref) == (8, None)
    assert generation.agreement([[1, 2, 3, 4], [5, 0, 7, 0]], ref) == (6, 1)
    assert generation.agreement([[9, 2, 3, 4], [5, 6, 0, 8]], ref) == (6, 0)


def test_the_clock_stamps_the_first_new_token_not_the_prompt():
    clock = _Clock()
    clock.put(torch.zeros(2, 1, dtype=torch.long))  # a one-token prompt still comes first
    assert clock.first is None
    clock.put(torch.zeros(2, dtype=torch.long))
    first = clock.first
    clock.put(torch.zeros(2, dtype=torch.long))
    assert first is not None and clock.first == first


def test_weight_bytes_leave_out_lookup_tables_but_count_a_tied_head():
    llama = _llama()
    assert torch_weight_bytes(llama) == sum(
        p.numel() * 4 for n, p in llama.named_parameters() if "embed_tokens" not in n
    )
    config = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    gpt2 = transformers.GPT2LMHeadModel(config)  # wte tied to the head; wpe only looked up
    total = sum(p.numel() * 4 for p in gpt2.parameters())
    assert torch_weight_bytes(gpt2) == total - 32 * 16 * 4


def test_onnx_weight_bytes_skip_gather_only_initializers(tmp_path):
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from tgraph.bench.gen_bytes import onnx_weight_bytes

    table = numpy_helper.from_array(np.zeros((10, 4), np.float32), "table")
    head = numpy_helper.from_array(np.zeros((4, 10), np.float32), "head")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["h"]),
         helper.make_node("MatMul", ["h", "head"], ["logits"])],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], [table, head],
    )  # fmt: skip
    path = str(tmp_path / "m.onnx")
    onnx.save(helper.make_model(graph), path)
    assert onnx_weight_bytes(path) == 4 * 10 * 4  # the head only


def test_step_graph_weight_bytes_count_packed_weights_as_stored():
    """tgraph's own contenders count the compiled step graph's initializers, lookups left
    out: an int4 step reads well under a third of fp32's bytes."""
    pytest.importorskip("tgraph.generation", reason="tgraph does not compile generation yet")
    import tgraph
    from tgraph.bench.gen_bytes import graph_weight_bytes

    llama = _llama()
    ids = torch.randint(0, 120, (1, PROMPT))
    fp32 = graph_weight_bytes(tgraph.compile(llama, {"input_ids": ids}).step.graph)
    # the parameters a step reads (the rotary tables are lookups; an unfolded rotary would add
    # its inv_freq constant)
    assert torch_weight_bytes(llama) <= fp32 <= torch_weight_bytes(llama) + 1024
    int4 = tgraph.compile(llama, {"input_ids": ids}, pipeline="int4")
    assert "linear_int4" in int4.step.graph.op_histogram()
    assert graph_weight_bytes(int4.step.graph) < fp32 / 3


def test_bad_requests_are_one_line_errors(llama_dir):
    generation.check_names(["tgraph-ort[int4]", "tgraph-torch[int8-weight]", "ov-genai[int8]"])
    for bad in ("ort-fast", "ov-genai[int2]", "tgraph-tvm[int4]"):
        with pytest.raises(ValueError, match=rf"unknown generation contender.*{bad[:6]}"):
            generation.bench_generate(llama_dir, contenders=[bad])
    with pytest.raises(ValueError, match="exceeds the model's maximum length 64"):
        generation.bench_generate(llama_dir, prompt_len=60, new_tokens=8)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        generation.bench_generate("/nonexistent", contenders=["eager"])


def test_a_dead_worker_is_an_error_naming_it_and_its_log(tmp_path):
    log = str(tmp_path / "w.log")
    worker = Worker("broken", "/bin/false", log)  # exits 1 at once, answering nothing
    with pytest.raises(WorkerError, match=r"broken's process exited with 1.*w\.log"):
        worker.ask({"op": "quit"}, 30)
    worker.close()


def test_staging_adds_a_wordlevel_tokenizer(llama_dir, tmp_path):
    staged = gen_artifacts.stage(llama_dir, str(tmp_path / "staged"))
    assert staged != llama_dir and gen_artifacts.has_tokenizer(staged)
    assert not gen_artifacts.has_tokenizer(llama_dir)  # the model's directory is untouched
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(f"{staged}/tokenizer.json")
    assert tok.encode("t5 t119").ids == [5, 119] and tok.get_vocab_size() == 120


def test_cli_generate(llama_dir, eager_reports, tmp_path, monkeypatch):
    """The CLI passes its flags to the harness (run above) and prints and saves its reports."""
    from tgraph.cli import main

    calls = []

    def fake(model_dir, **kw):
        calls.append((model_dir, kw))
        return eager_reports[:1]

    monkeypatch.setattr(generation, "bench_generate", fake)
    out = tmp_path / "gen.json"
    args = ["bench", llama_dir, "--generate", "--backends", "eager,ort-genai", "--prompt-len",
            "5", "--new-tokens", "2", "--threads", "1", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    ((model_dir, kw),) = calls
    assert model_dir == llama_dir and kw["batches"] == (1,) and kw["rounds"] == 3
    assert (kw["prompt_len"], kw["new_tokens"], kw["threads"]) == (5, 2, 1)
    assert kw["contenders"] == ["eager", "ort-genai"]
    assert f"tiny-llama  batch 1  prompt {PROMPT}  new tokens {NEW}" in result.output
    assert json.loads(out.read_text())["reports"][0]["results"][0]["agree"] == NEW
    bad = CliRunner().invoke(main, ["bench", "zoo:gpt-tiny", "--generate"])
    assert bad.exit_code == 2 and "needs a Hugging Face causal-LM directory" in bad.output


def test_tgraph_contenders_match_eager(llama_dir, tmp_path):
    """The tgraph contenders through the contract (tgraph.compile(...).generate); runs once
    tgraph compiles generation (issue 15)."""
    pytest.importorskip("tgraph.generation", reason="tgraph does not compile generation yet")
    reports = generation.bench_generate(
        llama_dir, batches=(2,), prompt_len=PROMPT, new_tokens=NEW, rounds=1, threads=1,
        contenders=["tgraph-ort", "tgraph-torch"], cache_dir=str(tmp_path),
        membw_bytes=2**22, pause_s=0.0,
    )  # fmt: skip
    for r in reports[0].results:
        assert r.error is None, f"{r.name}: {r.error}"
        assert r.agree == 2 * NEW, f"{r.name} differs from eager from step {r.first_mismatch}"


def test_prepare_converts_nothing_without_the_tools(llama_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(gen_artifacts, "_has", lambda module: False)
    monkeypatch.delenv(gen_artifacts.OPTIMUM_PYTHON_ENV, raising=False)
    status = generation.prepare(llama_dir, ["ort-genai[int4]", "ov-genai", "tgraph-ort"],
                                cache_dir=str(tmp_path), progress=lambda m: None)  # fmt: skip
    assert status["eager"] == status["tgraph-ort"] == "ready"  # they load the directory itself
    assert status["ort-genai[int4]"].startswith("skipped: onnxruntime_genai is not installed")
    assert status["ov-genai"].startswith("skipped: openvino_genai is not installed")
    assert list(tmp_path.iterdir()) == []


def test_processes_pool_every_process_and_report_each_median(llama_dir, tmp_path):
    """--processes 2: two eager processes, each timed every round; the medians pool both and
    each process's own median is kept, in the JSON and the table."""
    reports = generation.bench_generate(
        llama_dir, batches=(1,), prompt_len=PROMPT, new_tokens=NEW, rounds=3, threads=1,
        contenders=["eager"], cache_dir=str(tmp_path), membw_bytes=2**22, pause_s=0.0,
        processes=2,
    )  # fmt: skip
    report = reports[0]
    (eager,) = report.results
    assert report.processes == 2 and eager.error is None
    assert (
        len(eager.decode_runs_tok_s) == 6 and sorted(eager.decode_runs_process) == [0] * 3 + [1] * 3
    )
    assert len(eager.process_decode_tok_s) == 2
    assert min(eager.process_decode_tok_s) <= eager.decode_tok_s <= max(eager.process_decode_tok_s)
    assert eager.agree == NEW
    assert (tmp_path / "logs" / "tiny-llama" / "eager.1.log").exists()
    text = generation.format_table(report)
    assert "rounds 3 x 2 processes each" in text and "eager: decode tok/s of each process" in text
    with pytest.raises(ValueError, match="processes must be >= 1"):
        generation.bench_generate(llama_dir, contenders=["eager"], processes=0)


def test_moe_weight_bytes_count_k_of_e_experts_everywhere(tmp_path):
    """A decode token reads k of E experts: the model's, tgraph's step graph's and a peer's
    ONNX file's counts all take k/E of the stacked expert weights, so their bounds agree."""
    import json

    import numpy as np
    import onnx
    from model_cases import hf_case
    from onnx import TensorProto, helper, numpy_helper

    import tgraph
    from tgraph.bench.gen_bytes import graph_weight_bytes, onnx_weight_bytes

    lm = hf_case("hf-mixtral").model  # 4 experts, top 2
    assert not lm.config.tie_word_embeddings
    experts = sum(p.numel() * 4 for n, p in lm.named_parameters() if ".experts." in n)
    dense = sum(p.numel() * 4 for n, p in lm.named_parameters()
                if ".experts." not in n and "embed_tokens" not in n)  # fmt: skip
    assert experts > 0 and torch_weight_bytes(lm) == dense + experts // 2
    step = tgraph.compile(lm, {"input_ids": torch.randint(0, 100, (1, 5))}).step.graph
    assert torch_weight_bytes(lm) <= graph_weight_bytes(step) <= torch_weight_bytes(lm) + 1024
    stacked = numpy_helper.from_array(np.zeros((4, 6, 8), np.float32), "experts")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "experts"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 1, 8])], [stacked],
    )  # fmt: skip
    onnx.save(helper.make_model(graph), str(tmp_path / "model.onnx"))
    assert onnx_weight_bytes(str(tmp_path / "model.onnx")) == 4 * 6 * 8 * 4  # no config: all
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"num_local_experts": 4, "num_experts_per_tok": 2}, f)
    assert onnx_weight_bytes(str(tmp_path / "model.onnx")) == 4 * 6 * 8 * 4 // 2
