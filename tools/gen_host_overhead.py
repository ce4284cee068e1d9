"""What the token loop costs between two ORT decode steps, bound loop against generic loop.

    python tools/gen_host_overhead.py ~/.cache/tgraph-bench/hf-llama-58m --rounds 10

Compiles the causal LM in the directory once (ort backend) and runs greedy ``generate``
rounds, alternating three loops in the same process:

- **bound**: what ``generate`` does on ORT (``StepRunner.bind_decode``; tgraph/generation/loop.py):
  the step bound once, the greedy token read off the step's own ArgMax output,
- **host-argmax**: the same bound step, the greedy token an ``np.argmax`` over the logits
  in Python (what ``generate`` did before the step had that output),
- **generic**: the path of the other backends, one ``Generator._run`` per token (the
  runner call, its binding checks, a fresh logits tensor, a torch argmax wrapper).

For each round and loop it records every decode step's session run (``run_with_iobinding``)
and the gap from the end of one run to the start of the next, which is the loop's own
time, and prints the medians with the decode tok/s of ``gen.last_timings``. All loops
must give the same tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a Hugging Face causal-LM directory")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pipeline", default="default", help="tgraph pipeline (int4, ...)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()

    import transformers

    import tgraph
    from tgraph.generation import loop

    torch.set_num_threads(args.threads)
    lm = transformers.AutoModelForCausalLM.from_pretrained(args.model).eval()
    vocab = lm.config.vocab_size
    ids = torch.randint(0, vocab, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    gen = tgraph.compile(lm, {"input_ids": ids}, backend="ort", pipeline=args.pipeline)
    del lm
    runner = gen.step.runner
    marks: list[float] = []

    class Timed:  # the session, with each run's start and end recorded
        def __init__(self, session):
            self.session = session

        def __getattr__(self, name):
            return getattr(self.session, name)

        def run_with_iobinding(self, binding) -> None:
            marks.append(time.perf_counter())
            self.session.run_with_iobinding(binding)
            marks.append(time.perf_counter())

    runner.session = Timed(runner.session)
    bound = loop._decoder
    bind_decode = type(runner).bind_decode

    def generic(gen, inputs, caches, sampling):  # the loop without bind_decode
        type(runner).bind_decode = None
        try:
            return bound(gen, inputs, caches, sampling)
        finally:
            type(runner).bind_decode = bind_decode

    def host_argmax(gen, inputs, caches, sampling):  # bound, the pick an argmax in Python
        return bound(gen, inputs, caches, sampling, graph_argmax=False)

    loops = {"bound": bound, "host-argmax": host_argmax, "generic": generic}
    rows: dict[str, dict[str, list[float]]] = {
        k: {"run_us": [], "gap_us": [], "tok_s": []} for k in loops
    }
    tokens: dict[str, torch.Tensor] = {}
    for r in range(args.rounds + 1):
        order = list(loops) if r % 2 else list(loops)[::-1]
        for name in order:
            loop._decoder = loops[name]
            marks.clear()
            out = gen.generate(ids, max_new_tokens=args.new_tokens)
            loop._decoder = bound
            if r == 0:  # warm-up round
                tokens[name] = out
                continue
            decode = marks[2:]  # the prefill's run first
            row = rows[name]
            row["run_us"].append(statistics.median(
                b - a for a, b in zip(decode[0::2], decode[1::2])) * 1e6)  # fmt: skip
            row["gap_us"].append(statistics.median(
                b - a for a, b in zip(decode[1:-1:2], decode[2::2])) * 1e6)  # fmt: skip
            row["tok_s"].append(gen.last_timings.decode_tokens_per_s)
    if any(not torch.equal(tokens["bound"], t) for t in tokens.values()):
        raise SystemExit("gen_host_overhead: the loops gave different tokens")
    print(f"{args.model}: batch 1, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
          f"{args.threads} threads, pipeline {args.pipeline}, {args.rounds} rounds, each loop in every round")  # fmt: skip
    print(
        f"{'loop':12s} {'run us':>9s} {'gap us':>9s} {'(min-max)':>16s} {'tok/s':>8s} {'(min-max)':>16s}"
    )
    for name, row in rows.items():
        gap, tps = row["gap_us"], row["tok_s"]
        print(f"{name:12s} {statistics.median(row['run_us']):9.1f} {statistics.median(gap):9.1f} "
              f"{min(gap):7.1f}-{max(gap):<8.1f} {statistics.median(tps):8.1f} "
              f"{min(tps):7.1f}-{max(tps):<8.1f}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
