"""Held memory after compile: fp32 against the weight-only pipelines, one process each.

    python tools/lowbit_memory.py --config llama-336m --pipelines default,int8-weight,int4 \\
        --backends ort,torch

Each measurement runs in a fresh process: import everything, read the resident set size
(RSS), build the model with random weights, compile it, drop the model (``del``, garbage
collection, ``malloc_trim`` so freed heap goes back to the OS), and read RSS again. "Held"
is the difference: what the compiled model keeps alive (its graph's constants, the
backend's weights, ONNX Runtime's prepacked copies). The fp32 weights a compressed layer
replaced must not be part of it.

``--entry generator`` (the default) measures what ``tgraph.compile`` returns for a causal LM:
a ``Generator``, after its background release of the weights ONNX Runtime only read at load
(docs/generation.md, Memory). ``--entry plain`` measures ``tgraph.api.compile_plain``, the
forward alone (what ``tgraph.compile`` returned before causal LMs became generators).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from gen_memory import trim  # tools/ is the script directory: gc, then malloc_trim

CONFIGS = {
    # The generation issue's ~336M Llama: 24 layers of hidden 1024, GQA 16/4, vocab 32000.
    "llama-336m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                       num_key_value_heads=4, intermediate_size=2816, vocab_size=32000),
    # bench_suite's hf-mixtral-139m: 8 layers of hidden 512, 8 experts of MLP 1024, top 2.
    "mixtral-139m": dict(arch="mixtral", hidden_size=512, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=2, intermediate_size=1024,
                         num_local_experts=8, num_experts_per_tok=2, vocab_size=32000),
    # Small enough for a test: about 4.5M parameters.
    "llama-tiny": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=704, vocab_size=4096),
}  # fmt: skip


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def _compile(entry: str, model, ids, backend: str, pipeline: str):
    """The compiled model ``entry`` names, its background weight release finished."""
    import tgraph
    from tgraph.api import compile_plain

    if entry == "plain":
        return compile_plain(model, {"input_ids": ids, "use_cache": False}, backend=backend,
                             pipeline=pipeline)  # fmt: skip
    gen = tgraph.compile(model, {"input_ids": ids}, backend=backend, pipeline=pipeline)
    wait = getattr(gen.step.runner, "wait_released", None)
    if wait is not None:
        wait()
    return gen


def _run(cm, ids) -> None:
    if hasattr(cm, "generate"):
        cm.generate(ids, max_new_tokens=2)
    else:
        cm(input_ids=ids, use_cache=False)


def measure_one(config: str, pipeline: str, backend: str, entry: str = "generator") -> dict:
    import torch
    import transformers as T

    torch.set_num_threads(1)
    ids = torch.randint(0, CONFIGS[config]["vocab_size"], (1, 8))
    # Warm up on a 1-layer model: the code that compile loads (torch.export, the backend's
    # libraries, transformers' modeling modules) is not what the compiled model holds.
    config_kw = dict(CONFIGS[config])
    arch = config_kw.pop("arch", "llama")
    classes = {"llama": (T.LlamaConfig, T.LlamaForCausalLM),
               "mixtral": (T.MixtralConfig, T.MixtralForCausalLM)}[arch]  # fmt: skip
    small = {
        k: v for k, v in config_kw.items() if k in ("num_local_experts", "num_experts_per_tok")
    }
    warm = classes[1](classes[0](hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                 num_key_value_heads=2,
                                 intermediate_size=128, vocab_size=256, **small)).eval()  # fmt: skip
    warm = _compile(entry, warm, ids % 256, backend, pipeline)
    with torch.no_grad():
        _run(warm, ids % 256)
    del warm
    trim()
    base = rss_mb()
    torch.manual_seed(0)
    cfg = classes[0](max_position_embeddings=256, tie_word_embeddings=False, **config_kw)
    model = classes[1](cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    cm = _compile(entry, model, ids, backend, pipeline)
    seconds = time.perf_counter() - start
    del model
    trim()
    held = rss_mb() - base
    with torch.no_grad():
        _run(cm, ids)  # still runs without the model
    consts = sum(v.const.nbytes for v in cm.graph.initializers.values() if v.const is not None)
    return {"config": config, "params": params, "pipeline": pipeline, "backend": backend,
            "entry": entry,
            "held_mb": round(held, 1), "graph_consts_mb": round(consts / 1e6, 1),
            "compile_s": round(seconds, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="llama-336m", choices=sorted(CONFIGS))
    ap.add_argument("--pipelines", default="default,int8-weight,int4")
    ap.add_argument("--backends", default="ort,torch")
    ap.add_argument(
        "--entry",
        default="generator",
        choices=("generator", "plain"),
        help="what is compiled: tgraph.compile's Generator, or the forward alone",
    )
    ap.add_argument("--one", action="store_true", help="measure one pipeline/backend here")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.config, args.pipelines, args.backends, args.entry)))
        return
    rows = []
    for backend in args.backends.split(","):
        for pipeline in args.pipelines.split(","):
            cmd = [sys.executable, __file__, "--one", "--config", args.config,
                   "--pipelines", pipeline, "--backends", backend, "--entry", args.entry]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            fp32 = next(
                (r for r in rows if r["backend"] == backend and r["pipeline"] == "default"), None
            )
            row["vs_fp32"] = round(row["held_mb"] / fp32["held_mb"], 3) if fp32 else None
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
