"""Run `tgraph.bench` over a list of models and shapes; write JSON and a markdown table.

    python tools/bench_suite.py --out docs/bench-cpu-fp32.json \\
        --cases hf-bert-base:1x128 hf-gpt2:1x128 hf-llama-58m:1x128 torch-encoder:1x32

Each case is MODEL:BATCHxSEQ. MODEL is a built-in suite model (below), ``zoo:NAME``, or a
Hugging Face model directory. The suite's Hugging Face models are built from their configs
with random weights (nothing is downloaded) and saved with ``save_pretrained`` under
``--model-dir`` once, so they are loaded through the same path as ``tgraph bench DIR``:

    hf-bert-base    BertModel, the bert-base-uncased config (110M)
    hf-gpt2         GPT2LMHeadModel, the gpt2 config (124M)
    hf-llama-58m    LlamaForCausalLM, hidden 512, 8 layers, 8 heads, MLP 1376 (58M)
    hf-mixtral-139m MixtralForCausalLM, hidden 512, 8 layers, 8 heads (2 KV), 8 experts of
                    MLP 1024, top 2 (139M; 47M weights read per token)
    torch-encoder   nn.TransformerEncoder, d_model 512, 8 heads, FF 2048, 6 layers,
                    batch_first; input (batch, seq, 512)

``--suite cpu-fp32`` runs every model at the issue's shapes ((1, 128) and (8, 128); the
encoder at (1, 32) and (8, 128)). Contenders default to every peer; a peer that fails to
build is reported with its error. Runs are interleaved within a case (see tgraph.bench).

``--suite gpu-fp16`` runs HF BERT-base, GPT-2 and the 58M Llama at (1, 128) and (8, 128) on
CUDA with the models in fp16 (``--device cuda --dtype fp16``), against eager, torch.compile
and torch.compile(mode="reduce-overhead"), with tgraph-torch in two columns: the fp16 model
through the default pipeline, and the fp32 model through the fp16 pipeline. Its tables add
tgraph-torch's best against reduce-overhead (the issue's target: at most 0.9x). tools/gpu_check.sh
runs it on the device machine; docs/gpu.md explains the columns.

``--suite cpu-lowp`` runs BERT-base, GPT-2 and the Llama at (1, 128) and (8, 128) on the
CPU with tgraph-ort in the ``default``, ``int8`` and ``bf16`` pipelines against eager, ORT
on torch's export in fp32 and quantized by ``onnxruntime.quantization.quantize_dynamic``
(ort-int8), and OpenVINO in fp32 and with its bf16 precision hint (the compression issue's
comparison).

``--suite cpu-gen`` times greedy generation (prompt 128, 64 new tokens, batch 1 and 4) of
the 58M Llama, GPT-2 and the 336M Llama (hidden 1024 x 24 layers, 16 heads, 4 KV heads, MLP
2816) against the generation peers, each in its own process (tgraph.bench.generation;
docs/generation.md, Benchmark, has the peers' setup):

    python tools/bench_suite.py --suite cpu-gen --out gen.json \\
        --optimum-python /work/venvs/ovpeer/bin/python

Its models get a WordLevel tokenizer file (the ONNX Runtime GenAI model builder wants one;
every contender is fed token ids). Per model, the processes load once and serve both batch
sizes; timed rounds per model and batch size from :data:`GEN_ROUNDS` unless ``--repeats``
says otherwise.

OpenMP: unless ``OMP_WAIT_POLICY`` is already set, this script sets it to ``PASSIVE``
before torch loads. On a machine shared with other jobs, libgomp's default spin-waiting
threads fight the other jobs for the cores and a 1 ms eager forward can take 300 ms;
passive waiting keeps the torch-based contenders (eager, torch.compile, tgraph-torch)
measurable. The JSON records the setting.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see the docstring

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from tgraph.bench import CONTENDERS, GPU_DEFAULT_CONTENDERS, bench  # noqa: E402
from tgraph.cli.checkpoints import LoadedModel, load_model  # noqa: E402

SUITES = {
    "cpu-fp32": [
        "hf-bert-base:1x128", "hf-bert-base:8x128", "hf-gpt2:1x128", "hf-gpt2:8x128",
        "hf-llama-58m:1x128", "hf-llama-58m:8x128", "torch-encoder:1x32", "torch-encoder:8x128",
    ],
    "gpu-fp16": [
        "hf-bert-base:1x128", "hf-bert-base:8x128", "hf-gpt2:1x128", "hf-gpt2:8x128",
        "hf-llama-58m:1x128", "hf-llama-58m:8x128",
    ],
    "cpu-gen": ["hf-llama-58m", "hf-gpt2", "hf-llama-336m"],
    "cpu-lowp": [
        "hf-bert-base:1x128", "hf-bert-base:8x128", "hf-gpt2:1x128", "hf-gpt2:8x128",
        "hf-llama-58m:1x128", "hf-llama-58m:8x128",
    ],
}  # fmt: skip
# cpu-gen: timed rounds per model and batch size (a round is one generate call per
# contender). The fixed costs (loading, warm-up, torch.compile compiling the static-cache
# decode step at each batch size) take about half of the run; batch-4 calls are about 2.5x
# as long as batch-1 calls and vary less, and one 336M batch-4 round is about two minutes
# on 2 cores: with these counts the whole suite should take about 14 minutes on a quiet
# machine (an estimate from loaded-machine runs, docs/generation.md).
GEN_ROUNDS = {"hf-llama-58m": {1: 3, 4: 2}, "hf-gpt2": {1: 3, 4: 1}, "hf-llama-336m": {1: 2, 4: 1}}
# What a suite runs on unless the command line says otherwise: (device, dtype, pipelines).
SUITE_SETTINGS = {
    "gpu-fp16": ("cuda", "fp16", "default,fp16"),
    "cpu-lowp": ("cpu", "fp32", "default,int8,bf16"),
}
# The peers a suite compares with unless --contenders says otherwise: the low-precision
# suite pits tgraph's compression pipelines against ORT's own int8 quantization
# (quantize_dynamic) and OpenVINO's bf16 mode, next to fp32 ORT and OpenVINO.
SUITE_CONTENDERS = {
    "cpu-lowp": "eager,ort-plain,ort-int8,openvino,openvino-bf16,tgraph-ort",
}


def _hf_model(name: str):
    import transformers as T

    if name == "hf-bert-base":
        return T.BertModel(T.BertConfig())
    if name == "hf-gpt2":
        return T.GPT2LMHeadModel(T.GPT2Config())
    if name == "hf-llama-58m":
        config = T.LlamaConfig(
            vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
            num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048,
        )  # fmt: skip
        return T.LlamaForCausalLM(config)
    if name == "hf-llama-336m":
        config = T.LlamaConfig(
            vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24,
            num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048,
        )  # fmt: skip
        return T.LlamaForCausalLM(config)
    if name == "hf-mixtral-139m":
        config = T.MixtralConfig(
            vocab_size=32000, hidden_size=512, intermediate_size=1024, num_hidden_layers=8,
            num_attention_heads=8, num_key_value_heads=2, num_local_experts=8,
            num_experts_per_tok=2, max_position_embeddings=2048,
        )  # fmt: skip
        return T.MixtralForCausalLM(config)
    raise KeyError(name)


def hf_dir(spec: str, model_dir: str) -> str:
    """The suite model's Hugging Face directory, built (random weights, seed 0) and saved
    once under ``model_dir``."""
    path = os.path.join(model_dir, spec)
    if not os.path.exists(os.path.join(path, "config.json")):
        torch.manual_seed(0)
        _hf_model(spec).save_pretrained(path)
    return path


class TorchEncoder(nn.Module):
    """nn.TransformerEncoder d512 x6 (8 heads, FF 2048, batch first), as in the issue."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(512, 8, 2048, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def load_case(spec: str, batch: int, seq: int, model_dir: str) -> LoadedModel:
    """A suite model (built once with random weights), a zoo model or a checkpoint."""
    torch.manual_seed(0)
    if spec == "torch-encoder":
        g = torch.Generator().manual_seed(0)
        return LoadedModel(
            spec, TorchEncoder().eval(), (torch.randn(batch, seq, 512, generator=g),)
        )
    if spec.startswith("hf-"):
        loaded = load_model(hf_dir(spec, model_dir), batch=batch, seq=seq)
        loaded.name = spec
        return loaded
    return load_model(spec, batch=batch, seq=seq)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cell(r: dict) -> str:
    if r["error"]:
        return "skipped" if r["error"].startswith("skipped") else "failed"
    return f"{r['median_ms']:.1f} ({r['iqr_ms']:.1f}) [{r['ratio_to_eager']:.2f}]"


def markdown(reports: list[dict]) -> str:
    """Median ms (iqr) [ratio to eager] per contender, one row per case."""
    names = list(dict.fromkeys(r["name"] for rep in reports for r in rep["results"]))
    rows = ["| model, batch x seq | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for rep in reports:
        by_name = {r["name"]: r for r in rep["results"]}
        cells = [_cell(by_name[n]) if n in by_name else "" for n in names]
        rows.append(
            f"| {rep['model']} {rep['batch']}x{rep['seq_len']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(rows)


FP32_PEERS = ("torch.compile", "ort-plain", "ort-optimizer", "openvino")


def versus_peers(reports: list[dict]) -> str:
    """Per case: the fastest fp32 peer, tgraph's fastest backend, and their median ratio."""
    rows = [
        "| model, batch x seq | fastest fp32 peer | tgraph's fastest | ratio | spread (iqr) |",
        "|---|---|---|---|---|",
    ]
    for rep in reports:
        done = [r for r in rep["results"] if r["median_ms"] is not None]
        peers = [r for r in done if r["name"] in FP32_PEERS]
        ours = [r for r in done if r["name"] in ("tgraph-ort", "tgraph-torch")]
        if not peers or not ours:
            continue
        peer = min(peers, key=lambda r: r["median_ms"])
        best = min(ours, key=lambda r: r["median_ms"])
        rows.append(
            f"| {rep['model']} {rep['batch']}x{rep['seq_len']} | {peer['name']} "
            f"{peer['median_ms']:.1f} | {best['name']} {best['median_ms']:.1f} | "
            f"{best['median_ms'] / peer['median_ms']:.2f} | {peer['iqr_ms']:.1f} / "
            f"{best['iqr_ms']:.1f} |"
        )
    return "\n".join(rows)


def versus_reduce_overhead(reports: list[dict]) -> str:
    """CUDA runs: tgraph-torch's fastest column against torch.compile(mode="reduce-overhead")."""
    rows = [
        "| model, batch x seq | reduce-overhead ms | tgraph-torch's fastest | ratio (target <= 0.9) |",
        "|---|---|---|---|",
    ]
    for rep in reports:
        done = {r["name"]: r for r in rep["results"] if r["median_ms"] is not None}
        peer = done.get("torch.compile[reduce-overhead]")
        ours = [r for n, r in done.items() if n.startswith("tgraph-torch")]
        if peer is None or not ours:
            continue
        best = min(ours, key=lambda r: r["median_ms"])
        rows.append(
            f"| {rep['model']} {rep['batch']}x{rep['seq_len']} | {peer['median_ms']:.3f} | "
            f"{best['name']} {best['median_ms']:.3f} | {best['median_ms'] / peer['median_ms']:.2f} |"
        )
    return "\n".join(rows)


def tables(reports: list[dict]) -> str:
    extra = versus_reduce_overhead if any(r.get("device") == "cuda" for r in reports) else None
    return markdown(reports) + "\n\n" + (extra or versus_peers)(reports)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=[], help="MODEL:BxS entries")
    parser.add_argument("--suite", choices=sorted(SUITES), help="a named list of cases")
    parser.add_argument(
        "--contenders", help="default: every peer on CPU; eager, both torch.compile modes and "
        "tgraph-torch on CUDA",
    )  # fmt: skip
    parser.add_argument(
        "--pipelines", help="e.g. default,int8,bf16 (see tgraph bench; gpu-fp16: default,fp16)"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cpu (gpu-fp16: cuda)")
    parser.add_argument(
        "--dtype", choices=["fp32", "fp16", "bf16"], help="default: fp32 (gpu-fp16: fp16)"
    )
    parser.add_argument(
        "--repeats", type=int, help="timed rounds (default 20; cpu-gen: GEN_ROUNDS)"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pipeline", default="default")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model-dir", default=os.path.expanduser("~/.cache/tgraph-bench"))
    parser.add_argument("--out", help="JSON result file")
    parser.add_argument("--optimum-python", help="cpu-gen: the Python with optimum-intel")
    parser.add_argument("--batches", default="1,4", help="cpu-gen: batch sizes")
    parser.add_argument("--prompt-len", type=int, default=128, help="cpu-gen")
    parser.add_argument("--new-tokens", type=int, default=64, help="cpu-gen")
    parser.add_argument(
        "--processes", type=int, default=1,
        help="cpu-gen: processes per contender (each loads the model; see bench_generate)",
    )  # fmt: skip
    parser.add_argument(
        "--prepare-only", action="store_true",
        help="cpu-gen: build the models and convert (or find cached) the peers' models, time "
        "nothing",
    )  # fmt: skip
    parser.add_argument("--table", metavar="JSON", help="only print the tables of a result file")
    args = parser.parse_args()
    if args.table:
        with open(args.table) as f:
            result = json.load(f)
        # a cpu-gen result keeps its own summary table
        print(result.get("summary_markdown") or tables(result["reports"]))
        return
    if args.suite == "cpu-gen" and args.prepare_only:
        _prepare_generate(args)
        return
    if not args.out:
        parser.error("--out is required")
    if args.suite == "cpu-gen":
        _main_generate(args)
        return
    args.repeats = args.repeats or 20
    cases = (SUITES[args.suite] if args.suite else []) + args.cases
    if not cases:
        parser.error("give --cases or --suite")
    _fill_suite_settings(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"bench_suite: --device cuda: torch {torch.__version__} sees no CUDA GPU")
    reports = []
    for case in cases:
        spec, shape = case.rsplit(":", 1)
        batch, seq = (int(x) for x in shape.split("x"))
        loaded = load_case(spec, batch, seq, args.model_dir)
        report = bench(
            loaded.model, loaded.example_inputs, name=loaded.name,
            contenders=tuple(args.contenders.split(",")), repeats=args.repeats,
            warmup=args.warmup, pipeline=args.pipeline, threads=args.threads,
            pipelines=[p for p in args.pipelines.split(",") if p], device=args.device,
            dtype=args.dtype,
            progress=lambda m, c=case: print(f"[{c}] {m}", flush=True),
        )  # fmt: skip
        reports.append(report.to_json())
        print(markdown(reports[-1:]), flush=True)
        _write(args.out, cases, reports)  # keep what is done if a later case dies
        del loaded, report
    print(markdown(reports) if args.device == "cpu" else tables(reports))


def _main_generate(args: argparse.Namespace) -> None:
    """--suite cpu-gen: one generation benchmark per model, every batch size of it."""
    from tgraph.bench import gen_artifacts, generation

    contenders = (args.contenders or ",".join(generation.CONTENDERS)).split(",")
    models = args.cases or SUITES["cpu-gen"]
    batches = [int(b) for b in args.batches.split(",")]
    reports: list = []
    start = time.perf_counter()
    for spec in models:
        path = hf_dir(spec, args.model_dir) if spec.startswith("hf-") else spec
        if spec.startswith("hf-"):
            gen_artifacts.add_tokenizer(path)  # the suite's own directories: for the peers
        rounds = {b: args.repeats or GEN_ROUNDS.get(spec, {}).get(b, 2) for b in batches}
        reports += generation.bench_generate(
            path, batches=batches, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
            contenders=contenders, rounds=rounds, threads=args.threads,
            optimum_python=args.optimum_python, name=spec, processes=args.processes,
            progress=lambda m, c=spec: print(f"[{c} {time.perf_counter() - start:.0f}s] {m}",
                                             flush=True),
        )  # fmt: skip
        for report in reports[-len(batches) :]:
            print(generation.format_table(report), flush=True)
        summary = generation.markdown_summary(reports)
        generation.write_json(args.out, reports, {
            "machine": {"cpu": _cpu_name(), "cpus": os.cpu_count(), **_versions()},
            "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": round(time.perf_counter() - start),
            "command": "python tools/bench_suite.py " + " ".join(sys.argv[1:]),
            "summary_markdown": summary,
        })  # fmt: skip
    print(summary)


def _prepare_generate(args: argparse.Namespace) -> None:
    from tgraph.bench import gen_artifacts, generation

    contenders = (args.contenders or ",".join(generation.CONTENDERS)).split(",")
    for spec in args.cases or SUITES["cpu-gen"]:
        path = hf_dir(spec, args.model_dir) if spec.startswith("hf-") else spec
        if spec.startswith("hf-"):
            gen_artifacts.add_tokenizer(path)
        status = generation.prepare(path, contenders, optimum_python=args.optimum_python,
                                    progress=lambda m, c=spec: print(f"[{c}] {m}", flush=True))  # fmt: skip
        for name, state in status.items():
            print(f"{spec:<16}{name:<18}{state}")


def _versions() -> dict:
    """The installed versions of the generation peers' packages (None: not installed)."""
    from importlib import metadata

    names = ("torch", "transformers", "onnxruntime", "onnxruntime-genai", "openvino",
             "openvino-genai")  # fmt: skip
    out: dict = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _fill_suite_settings(args: argparse.Namespace) -> None:
    """Options not given on the command line: the suite's settings, else the CPU defaults."""
    device, dtype, pipelines = SUITE_SETTINGS.get(args.suite, ("cpu", "fp32", ""))
    args.device = args.device or device
    args.dtype = args.dtype or dtype
    args.pipelines = pipelines if args.pipelines is None else args.pipelines
    if args.contenders is None and args.suite in SUITE_CONTENDERS:
        args.contenders = SUITE_CONTENDERS[args.suite]
    if args.contenders is None:
        peers = GPU_DEFAULT_CONTENDERS if args.device == "cuda" else CONTENDERS
        args.contenders = ",".join(peers)


def _gpu_info() -> dict:
    """The GPU, CUDA and Triton versions (an empty dict without CUDA)."""
    if not torch.cuda.is_available():
        return {}
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "gpu": torch.cuda.get_device_name(),
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "TGRAPH_TRITON": os.environ.get("TGRAPH_TRITON"),
    }


def _write(path: str, cases: list[str], reports: list[dict]) -> None:
    import onnxruntime

    result = {
        "machine": {
            "cpu": _cpu_name(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            **_gpu_info(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python tools/bench_suite.py " + " ".join(sys.argv[1:]),
        "cases": cases,
        "reports": reports,
    }
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
