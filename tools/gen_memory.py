"""Memory of a compiled causal LM (``tgraph.compile`` -> Generator), one fresh process per
backend:

    python tools/gen_memory.py --model ~/.cache/tgraph-bench/hf-llama-336m --backends ort,torch \\
        --contexts 128,1024 --json mem.json

Each process imports everything and compiles a 1-layer warm-up model (the libraries that
compiling loads are not what a compiled model holds), then reads the resident set size
(``base``) and measures, in MiB:

- ``model``: RSS after ``from_pretrained`` (safetensors are memory-mapped: pages count once
  touched), ``compile_peak``: the RSS high-water mark while ``tgraph.compile`` runs
  (``/proc/self/clear_refs`` resets it before), ``compile_s``;
- ``held``: RSS after the model is dropped (``del``, garbage collection, ``malloc_trim``),
  minus ``base``: what the Generator keeps (anon and file-backed parts listed too), once
  the ort step's background release of the graph's weight copy is done
  (``release_wait_s``: how long that took after compile returned);
- per context n: a prompt of n tokens is prefilled, then ``--steps`` decode steps run one
  at a time; ``decode_peak`` is the high-water mark over those steps minus the RSS before
  them (the cache is allocated before), and ``cache`` the bytes of that call's K/V buffers.
  Flat means ``decode_peak`` does not grow with n; ``prefill_peak`` is the same for the
  prompt's step (its activations and attention grow with n);
- ``plain_err``: max |logits| difference of ``gen(input_ids)`` after the model was dropped
  against eager logits taken before; ``max_rss``: the process's peak RSS (the highest VmHWM
  of all phases, warm-up and loading included).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time

DEFAULT_MODEL = os.path.expanduser("~/.cache/tgraph-bench/hf-llama-336m")


def status_mib() -> dict[str, float]:
    """VmRSS, RssAnon, RssFile and VmHWM of this process, in MiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(rest.split()[0]) / 1024
    return out


_PEAKS: list[float] = []  # VmHWM before each reset: the process peak is their maximum


def reset_peak() -> None:
    """Start a new VmHWM (Linux: writing 5 to clear_refs resets the peak RSS, ru_maxrss too)."""
    _PEAKS.append(status_mib()["VmHWM"])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def _warm_up(backend: str) -> None:
    import torch
    import transformers as T

    import tgraph

    cfg = T.LlamaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=128, vocab_size=256)  # fmt: skip
    warm = tgraph.compile(T.LlamaForCausalLM(cfg).eval(), {"input_ids": torch.ones(1, 4).long()},
                          backend=backend)  # fmt: skip
    warm.generate(torch.ones(1, 4).long(), max_new_tokens=2)
    warm(torch.ones(1, 4).long())


def _context_row(gen, n: int, steps: int) -> dict[str, float]:
    """Prefill n tokens, then ``steps`` decode steps; peaks over each phase (MiB)."""
    import torch

    ids = torch.randint(10, 1000, (1, n), generator=torch.Generator().manual_seed(n))
    lens = torch.tensor([n])
    caches = gen.step.new_caches(1, n + steps, gen.device)
    cache = sum(c.numel() * c.element_size() for c in caches) / 2**20
    before = status_mib()["VmRSS"]
    reset_peak()
    logits = gen._run(ids, torch.zeros_like(lens), lens, caches)
    prefill = status_mib()["VmHWM"] - before
    before = status_mib()["VmRSS"]
    reset_peak()
    start = time.perf_counter()
    for i in range(steps):
        token = logits.argmax(-1)
        logits = gen._run(token[:, None], lens + i, torch.ones_like(lens), caches)
    seconds = time.perf_counter() - start
    decode = status_mib()["VmHWM"] - before
    return {"context": n, "cache": round(cache, 1), "prefill_peak": round(prefill, 1),
            "decode_peak": round(decode, 1), "decode_tok_s": round(steps / seconds, 1)}  # fmt: skip


def _load(model_dir: str, random: bool):
    """The model of ``model_dir``; ``random``: built from its config in memory (anonymous
    pages) instead of ``from_pretrained`` (weights memory-mapped from the safetensors file)."""
    import torch
    import transformers

    if not random:
        return transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    config = transformers.AutoConfig.from_pretrained(model_dir)
    return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def measure_one(model_dir: str, backend: str, contexts: list[int], steps: int,
                random: bool = False) -> dict:  # fmt: skip
    import torch

    import tgraph

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    _warm_up(backend)
    trim()
    base = status_mib()["VmRSS"]
    lm = _load(model_dir, random).eval()
    probe = torch.randint(10, 1000, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = lm(input_ids=probe).logits
    model = status_mib()["VmRSS"] - base
    reset_peak()
    start = time.perf_counter()
    gen = tgraph.compile(lm, {"input_ids": probe.repeat(2, 1)}, backend=backend)
    seconds = time.perf_counter() - start
    peak = status_mib()["VmHWM"] - base
    start = time.perf_counter()
    wait = getattr(gen.step.runner, "wait_released", None)  # ort: the background release
    if wait is not None:
        wait()
    released = time.perf_counter() - start
    del lm
    trim()
    now = status_mib()
    row = {"backend": backend, "weights": "random" if random else "mmap", "model_mib": round(model), "compile_s": round(seconds, 1),
           "compile_peak_mib": round(peak), "held_mib": round(now["VmRSS"] - base),
           "held_anon_mib": round(now["RssAnon"]), "held_file_mib": round(now["RssFile"]),
           "base_mib": round(base), "release_wait_s": round(released, 1)}  # fmt: skip
    with torch.inference_mode():
        row["plain_err"] = float((gen(input_ids=probe).logits - want).abs().max())
        row["contexts"] = [_context_row(gen, n, steps) for n in contexts]
    row["max_rss_mib"] = round(max(_PEAKS + [status_mib()["VmHWM"]]))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a Hugging Face causal LM directory")
    ap.add_argument("--backends", default="ort,torch")
    ap.add_argument("--contexts", default="128,1024")
    ap.add_argument("--steps", type=int, default=32, help="decode steps per context")
    ap.add_argument("--random", action="store_true",
                    help="build the model from its config (random weights in memory)")  # fmt: skip
    ap.add_argument("--one", action="store_true", help="measure one backend in this process")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    contexts = [int(n) for n in args.contexts.split(",")]
    if args.one:
        print(json.dumps(measure_one(args.model, args.backends, contexts, args.steps, args.random)))
        return
    rows = []
    for backend in args.backends.split(","):
        cmd = [sys.executable, __file__, "--one", "--model", args.model, "--backends", backend,
               "--contexts", args.contexts, "--steps", str(args.steps)]  # fmt: skip
        cmd += ["--random"] if args.random else []
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"gen_memory: {backend} failed: {done.stderr.strip().splitlines()[-1:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
