"""A mixture-of-experts LM traced two ways in one process, timed alternately: its experts as
tgraph's ``moe_experts`` op (grouped matmul / ORT MoE) and as transformers' ``batched_mm``
(plain ops that gather each token's k experts' weights; ``TGRAPH_MOE_EXPERTS=0``).

    python tools/moe_experts_ab.py ~/.cache/tgraph-bench/hf-mixtral-139m --backend ort

Each round runs one greedy ``generate`` (batch 1, ``--prompt-len`` tokens, ``--new-tokens``
new) of each form, in alternating order; reported per form: prefill ms and decode tok/s
(``gen.last_timings``: medians and min-max over the rounds), and what the form's first call
adds to the process's peak RSS (the high-water mark, reset before the call through
/proc/self/clear_refs; the first call is where its buffers and ORT's arena grow). Both
forms' tokens are checked against eager transformers on that first call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmHWM: the peak RSS, VmRSS: now), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reverse", action="store_true", help="compile batched_mm first")
    ap.add_argument("--json")
    args = ap.parse_args()
    import transformers

    import tgraph

    torch.set_num_threads(args.threads)
    lm = transformers.AutoModelForCausalLM.from_pretrained(args.model).eval()
    example = {"input_ids": torch.randint(0, 100, (1, 16))}
    gens = {}
    forms = (("moe_experts", "1"), ("batched_mm", "0"))
    for form, env in forms[:: -1 if args.reverse else 1]:
        os.environ["TGRAPH_MOE_EXPERTS"] = env
        gens[form] = tgraph.compile(lm, example, backend=args.backend)
        assert ("moe_experts" in gens[form].step.graph.op_histogram()) == (env == "1")
    os.environ.pop("TGRAPH_MOE_EXPERTS")
    vocab = lm.config.vocab_size
    ids = torch.randint(3, vocab, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = lm.generate(ids, max_new_tokens=args.new_tokens, do_sample=False,
                           min_new_tokens=args.new_tokens, pad_token_id=0)  # fmt: skip
    eos = -1  # never stop early
    first_call_mb = {}
    for form, gen in gens.items():  # each form's first call: its buffers and arena grow here
        _reset_hwm()
        base = _status_mb("VmRSS")
        got = gen.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=eos)
        first_call_mb[form] = _status_mb("VmHWM") - base
        same = int((got[0, args.prompt_len :] == want[0, args.prompt_len :]).sum())
        print(f"{form}: {same}/{args.new_tokens} tokens equal eager's; its first call added "
              f"{first_call_mb[form]:.0f} MB to the peak RSS")  # fmt: skip
    del lm
    runs: dict[str, dict[str, list[float]]] = {f: {"prefill_ms": [], "decode_tok_s": []}
                                               for f in gens}  # fmt: skip
    for r in range(args.rounds):
        order = list(gens) if r % 2 == 0 else list(reversed(list(gens)))
        for form in order:
            gen = gens[form]
            gen.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=eos)
            t = gen.last_timings
            runs[form]["prefill_ms"].append(t.prefill_s * 1e3)
            runs[form]["decode_tok_s"].append(t.decode_tokens_per_s)
    summary = {}
    for form, m in runs.items():
        summary[form] = {k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                         for k, v in m.items()}  # fmt: skip
        summary[form]["first_call_peak_rss_mb"] = first_call_mb[form]
        s = summary[form]
        print(f"{form:12s} prefill {s['prefill_ms']['median']:8.1f} ms "
              f"({s['prefill_ms']['min']:.1f}-{s['prefill_ms']['max']:.1f})  "
              f"decode {s['decode_tok_s']['median']:6.1f} tok/s "
              f"({s['decode_tok_s']['min']:.1f}-{s['decode_tok_s']['max']:.1f})")  # fmt: skip
    a, b = summary["moe_experts"], summary["batched_mm"]
    print(f"batched_mm / moe_experts: prefill {b['prefill_ms']['median'] / a['prefill_ms']['median']:.2f}x, "
          f"decode {a['decode_tok_s']['median'] / b['decode_tok_s']['median']:.2f}x")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "summary": summary, "runs": runs}, f, indent=2)


if __name__ == "__main__":
    main()
