"""Decode step time with and without fold-cache-rotary, interleaved in one process.

    python tools/bench_cache_rotary.py ~/.cache/tgraph-bench/hf-llama-58m --rounds 9 \
        --json docs/bench-cache-rotary-58m.json

Compiles the Hugging Face causal LM twice on one backend: with the default pipeline (RoPE
folded into cache_attention: GroupQueryAttention's do_rotary on ort) and with the default
pipeline minus ``fold-cache-rotary`` (the model's rotary ops around the attention). Checks
that both give eager's greedy tokens, then runs ``rounds`` rounds; each round calls both in
a fresh random order, ``gen.generate(ids, max_new_tokens=N)`` on one random prompt, and
keeps the median of ``gen.last_timings.decode_s`` (one per token after the first). Prints,
per variant, the median over rounds of those step times and their spread (min - max), the
prefill median, the ONNX nodes of the step graph by op type (ort), and the per-round ratio
folded / unfolded (median, min, max).
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import statistics
import sys

import torch

import tgraph
from tgraph.passes.manager import format_pipeline, parse_pipeline

FOLD = "fold-cache-rotary"


def _pipelines() -> dict[str, str]:
    specs = parse_pipeline("default")
    without = [s for s in specs if s.name != FOLD]
    if len(without) == len(specs):
        sys.exit(f"the default pipeline has no {FOLD}")
    return {"folded": "default", "unfolded": format_pipeline(without)}


def _onnx_ops(gen) -> dict[str, int]:
    from tgraph.backends.onnx_model import to_onnx

    ops = collections.Counter(n.op_type for n in to_onnx(gen.step.graph).graph.node)
    return dict(sorted(ops.items()))


def _time(gen, ids: torch.Tensor, new: int) -> tuple[float, float, torch.Tensor]:
    out = gen.generate(ids, max_new_tokens=new, eos_token_id=[])
    t = gen.last_timings
    return statistics.median(t.decode_s) * 1e3, t.prefill_s * 1e3, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a Hugging Face causal LM directory")
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", help="write the raw numbers here")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    vocab = lm.config.vocab_size
    example = {"input_ids": torch.randint(3, vocab, (2, 16))}
    gens = {name: tgraph.compile(lm, example, backend=args.backend, pipeline=p)
            for name, p in _pipelines().items()}  # fmt: skip
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (1, args.prompt_len), generator=g)
    want = lm.generate(
        ids, max_new_tokens=args.new_tokens, do_sample=False, min_new_tokens=args.new_tokens
    )
    for name, gen in gens.items():
        got = _time(gen, ids, args.new_tokens)[2]  # also the warm-up
        if not torch.equal(got, want):
            sys.exit(f"{name}: greedy tokens differ from eager's")
    rows = {name: {"decode_ms": [], "prefill_ms": []} for name in gens}
    order = list(gens)
    for r in range(args.rounds):
        ids = torch.randint(3, vocab, (1, args.prompt_len), generator=g)
        random.Random(r).shuffle(order)
        for name in order:
            step, prefill, _ = _time(gens[name], ids, args.new_tokens)
            rows[name]["decode_ms"].append(step)
            rows[name]["prefill_ms"].append(prefill)
    report = {"model": args.model, "backend": args.backend, "rounds": args.rounds,
              "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
              "threads": torch.get_num_threads(), "variants": {}}  # fmt: skip
    for name, row in rows.items():
        d = row["decode_ms"]
        summary = {"decode_ms_median": statistics.median(d), "decode_ms_min": min(d),
                   "decode_ms_max": max(d), "prefill_ms_median": statistics.median(row["prefill_ms"]),
                   **row}  # fmt: skip
        if args.backend == "ort":
            summary["onnx_ops"] = _onnx_ops(gens[name])
        report["variants"][name] = summary
        print(f"{name:9s} decode step {summary['decode_ms_median']:.2f} ms "
              f"(min {min(d):.2f}, max {max(d):.2f}, {args.rounds} rounds), "
              f"prefill {summary['prefill_ms_median']:.1f} ms")  # fmt: skip
        if args.backend == "ort":
            print(
                f"          onnx nodes {sum(summary['onnx_ops'].values())}: {summary['onnx_ops']}"
            )
    # Each round ran both back to back, so the per-round ratio cancels most of the load drift.
    ratios = [f / u for f, u in zip(rows["folded"]["decode_ms"], rows["unfolded"]["decode_ms"])]
    report["ratio_per_round"] = ratios
    f, u = (report["variants"][n]["decode_ms_median"] for n in ("folded", "unfolded"))
    print(f"folded / unfolded decode step: {f / u:.3f} (medians); per round: median "
          f"{statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
