"""Accuracy of the compression pipelines against fp32 eager on the bench suite's models.

    python tools/lowp_accuracy.py --out docs/lowp-accuracy.json \\
        --models hf-bert-base hf-gpt2 hf-llama-58m --pipelines int8 int4 bf16 fp16

For every model and pipeline: the relative L2 error of the main output (BERT's last
hidden state, the language models' logits) on random prompts at a size other than the
traced one, and for language models the top-1 agreement of the next-token prediction
(the last position) and of every position. ``--budget`` adds an int8 run with the
accuracy budget ``{"max_rel_error": E, "min_top1": T}`` and reports the layers it kept.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))

from bench_suite import _hf_model  # noqa: E402

import tgraph  # noqa: E402


def _inputs(model, batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}


def _main_output(out) -> torch.Tensor:
    for key in ("logits", "last_hidden_state"):
        if hasattr(out, key):
            return getattr(out, key)
    return out[0]


def measure(name: str, pipeline: str, accuracy: dict | None, prompts: int) -> dict:
    torch.manual_seed(0)
    model = _hf_model(name).eval()
    model.config.use_cache = False  # a KV cache is not a tensor output
    example = _inputs(model, 1, 128, seed=0)
    start = time.perf_counter()
    cm = tgraph.compile(model, example, backend="ort", pipeline=pipeline, accuracy=accuracy)
    seconds = time.perf_counter() - start
    errors, next_agree, all_agree = [], [], []
    for seed in range(1, prompts + 1):
        x = _inputs(model, 2, 96, seed)  # another size than the traced (1, 128)
        with torch.no_grad():
            want = _main_output(model(**x)).double()
            got = _main_output(cm(**x)).double()
        errors.append(float((got - want).norm() / want.norm()))
        if hasattr(model, "lm_head"):
            next_agree.append(
                float((got[:, -1].argmax(-1) == want[:, -1].argmax(-1)).double().mean())
            )
            all_agree.append(float((got.argmax(-1) == want.argmax(-1)).double().mean()))
    row = {
        "model": name,
        "pipeline": pipeline,
        "budget": accuracy,
        "rel_error_max": max(errors),
        "compile_s": round(seconds, 1),
    }
    if next_agree:
        row["top1_next_token"] = sum(next_agree) / len(next_agree)
        row["top1_all_positions"] = sum(all_agree) / len(all_agree)
    if cm.accuracy is not None:
        row["kept_fp32"] = cm.accuracy.kept
        row["layers_compressed"] = len(cm.accuracy.converted)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["hf-bert-base", "hf-gpt2", "hf-llama-58m"])
    parser.add_argument("--pipelines", nargs="+", default=["int8", "int4", "bf16", "fp16"])
    parser.add_argument("--prompts", type=int, default=8, help="random prompts of 2 x 96 tokens")
    parser.add_argument("--budget", nargs=2, type=float, metavar=("MAX_REL_ERROR", "MIN_TOP1"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        runs = [(p, None) for p in args.pipelines]
        if args.budget:
            budget = {"max_rel_error": args.budget[0], "min_top1": args.budget[1]}
            runs.append(("int8", budget))
        for pipeline, budget in runs:
            row = measure(name, pipeline, budget, args.prompts)
            print(json.dumps(row), flush=True)
            rows.append(row)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
