"""One decode step in several ONNX Runtime sessions of one process, timed alternately.

    python tools/gen_step_ab.py ~/.cache/tgraph-bench/hf-llama-336m --sessions tgraph,tgraph
    python tools/gen_step_ab.py ~/.cache/tgraph-bench/hf-llama-336m --sessions ort-genai,tgraph \\
        --ort-genai ~/.cache/tgraph-bench/converted/hf-llama-336m-<key>/ort-genai-fp32

The bench runs each contender in a process of its own, so a gap between two contenders
mixes what their graphs do with where each process's weights landed. This tool takes the
loop out and puts the sessions side by side: each entry of ``--sessions`` opens one
session, in the order given, and every round times ``--steps`` decode steps of each, the
order reversed every other round. Entries:

- ``tgraph``: ``tgraph.compile`` of the model (ort backend, ``--pipeline``), its decode step
  bound once (``StepRunner.bind_decode``) at a past length of ``--past`` tokens;
- ``ort-genai``: the decoder ONNX model that ONNX Runtime GenAI's model builder wrote into
  the ``--ort-genai`` directory, run by plain ONNX Runtime with I/O binding on one token
  and ``--past`` cached positions (its present K/V are past + 1 long: this copies the
  cache every step, which ORT GenAI's shared buffer does not, so it favours tgraph by
  that copy, about 0.2 ms on the 336M Llama).

``tgraph,tgraph`` measures the spread between two sessions of the same graph: on the AMD
EPYC of session 9 two tgraph sessions of the 336M Llama differed by 14% in one run and
0.3% in the next, and whichever of tgraph and ORT GenAI was opened second ran 5% faster
(docs/generation.md, "Two sessions of one model").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch


def tgraph_step(model: str, past: int, pipeline: str) -> tuple[Callable[[], None], object]:
    """tgraph's bound decode step of the model at ``past`` cached tokens (and what keeps it)."""
    import transformers

    import tgraph

    lm = transformers.AutoModelForCausalLM.from_pretrained(model).eval()
    ids = torch.randint(10, 100, (1, 16), generator=torch.Generator().manual_seed(0))
    gen = tgraph.compile(lm, {"input_ids": ids}, backend="ort", pipeline=pipeline)
    del lm
    caches = gen.step.new_caches(1, past + 8, "cpu")
    inputs = [
        torch.full((1, 1), 5, dtype=torch.long),  # the new token
        torch.full((1,), past, dtype=torch.long),  # cached tokens
        torch.ones(1, dtype=torch.long),  # query length
        torch.zeros(1, 1, dtype=torch.long),  # the logits' row
    ]
    step, logits, _ = gen.step.runner.bind_decode(inputs + caches)
    return step, (gen, inputs, caches, logits)


def ort_genai_step(directory: str, past: int, threads: int) -> tuple[Callable[[], None], object]:
    """The model builder's decoder (``directory``/model.onnx) on one token after ``past``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(f"{directory}/model.onnx", options,
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    feeds = {"input_ids": np.array([[5]], dtype=np.int64),
             "attention_mask": np.ones((1, past + 1), dtype=np.int64)}  # fmt: skip
    with open(f"{directory}/genai_config.json") as f:  # K/V head size: symbolic in the model
        head = json.load(f)["model"]["decoder"]["head_size"]
    rng = np.random.default_rng(0)
    for i in session.get_inputs():
        if i.name.startswith("past"):
            shape = (1, i.shape[1], past, i.shape[3] if isinstance(i.shape[3], int) else head)
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
        elif i.name in feeds and "int32" in i.type:
            feeds[i.name] = feeds[i.name].astype(np.int32)
    missing = {i.name for i in session.get_inputs()} - set(feeds)
    if missing:
        raise SystemExit(f"gen_step_ab: {directory}/model.onnx has inputs this tool does not "
                         f"feed: {sorted(missing)}")  # fmt: skip
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    for out in session.get_outputs():
        binding.bind_output(out.name)
    return (lambda: session.run_with_iobinding(binding)), (session, binding, feeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a Hugging Face causal-LM directory")
    parser.add_argument("--sessions", default="tgraph,tgraph",
                        help="comma-separated, opened in this order: tgraph, ort-genai")  # fmt: skip
    parser.add_argument("--ort-genai", help="the model builder's output directory")
    parser.add_argument("--pipeline", default="default", help="tgraph pipeline")
    parser.add_argument("--past", type=int, default=160, help="cached tokens of each step")
    parser.add_argument("--rounds", type=int, default=14)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per session and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    kinds = [s.strip() for s in args.sessions.split(",") if s.strip()]
    unknown = sorted(set(kinds) - {"tgraph", "ort-genai"})
    if unknown or not kinds:
        raise SystemExit(f"gen_step_ab: --sessions takes tgraph and ort-genai, got {unknown}")
    if "ort-genai" in kinds and not args.ort_genai:
        raise SystemExit("gen_step_ab: --sessions ort-genai needs --ort-genai DIR (the model "
                         "builder's output, e.g. under ~/.cache/tgraph-bench/converted)")  # fmt: skip
    torch.set_num_threads(args.threads)
    steps: dict[str, Callable[[], None]] = {}
    keep = []
    for i, kind in enumerate(kinds):
        if kind == "tgraph":
            step, held = tgraph_step(args.model, args.past, args.pipeline)
        else:
            step, held = ort_genai_step(args.ort_genai, args.past, args.threads)
        steps[f"{i + 1}:{kind}"] = step
        keep.append(held)
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            step = steps[name]
            step()  # wakes the session's thread pool
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    first = statistics.median(times[names[0]])
    print(f"{args.model}: one decode step at past {args.past}, {args.threads} threads, "
          f"{args.rounds} rounds of {args.steps} steps, sessions opened in this order")  # fmt: skip
    print(f"{'session':14s} {'ms/step':>8s} {'min':>7s} {'max':>7s} {'vs first':>9s}")
    for name in names:
        t = times[name]
        m = statistics.median(t)
        print(f"{name:14s} {m:8.2f} {min(t):7.2f} {max(t):7.2f} {m / first:9.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "args": vars(args), "ms_per_step": times}, f, indent=1)


if __name__ == "__main__":
    main()
