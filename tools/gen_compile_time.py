"""Where ``tgraph.compile`` of a causal LM spends its time, one fresh process per repeat:

    python tools/gen_compile_time.py --model ~/.cache/tgraph-bench/hf-llama-336m \\
        --backend ort --repeats 3 --json compile.json

Phases (seconds, wall clock): ``probe`` (the eager step that reads the cache geometry),
``export`` (torch.export of the step), ``frontend`` (FX -> tgraph IR), ``passes`` (the
pipeline; the slowest passes are listed from the pass records), ``to_onnx`` and ``session``
(ONNX Runtime's InferenceSession: graph optimizations and weight prepacking), ``release``
(the ort step's graph stops viewing the model; its copy of the prepacked weights goes to a
file in a background thread: ``release_after`` is how long that still ran after the first
call, outside ``total``), ``torch_lower`` (the torch backend's program), ``total``,
and ``first_call`` (a 16-token prompt + 2 new tokens after compile). Each phase is timed by
wrapping the function that does it, so the sum of the phases is close to ``total``. The
machine is usually shared: the JSON keeps every repeat; read the spread, not one number.

Compile writes GBs of new arrays (merged q/k/v and gate/up weights, ORT's prepacked copies),
so the cost of touching fresh memory is part of it: ``first_touch_mb_s`` is the rate at
which this process fills 256 MB it never touched before, ``reuse_mb_s`` the rate of filling
it again, and ``minor_faults`` and ``rss_growth_mb`` count what compile itself touched.
On a VM that returns freed guest memory to its host (free page reporting), the first rate
can be 20-30x below the second.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

DEFAULT_MODEL = os.path.expanduser("~/.cache/tgraph-bench/hf-llama-336m")

# (module, attribute, phase): the functions whose time each phase is.
PHASES = [
    ("tgraph.generation.capture", "cache_geometry", "probe"),
    ("torch.export", "export", "export"),
    ("tgraph.frontend", "trace", "frontend"),
    ("tgraph.passes.manager.PassManager", "run", "passes"),
    ("tgraph.backends.ort", "to_onnx", "to_onnx"),
    ("onnxruntime", "InferenceSession", "session"),
    ("tgraph.backends.ort_cache", "one_weight_copy", "release"),
    ("tgraph.backends.torch_backend", "lower", "torch_lower"),
]


RECORDS: list = []  # the pass records of every PassManager.run


def _resolve(path: str):
    import importlib

    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def _wrap(owner, attr: str, phase: str, spent: dict[str, float]) -> None:
    fn = getattr(owner, attr, None)
    if fn is None:
        return

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
            if phase == "passes":  # (graph, records): keep the records
                RECORDS.extend(result[1])
            return result
        finally:
            spent[phase] = spent.get(phase, 0.0) + time.perf_counter() - start

    setattr(owner, attr, timed)


def _fill_rates(mb: int = 256) -> tuple[float, float]:
    """MB/s filling ``mb`` of memory this process never touched, then the same again."""
    import numpy as np

    rates = []
    for _ in range(2):
        a = np.empty(mb * 2**20 // 4, np.float32)
        start = time.perf_counter()
        a.fill(1.0)
        rates.append(mb / (time.perf_counter() - start))
        del a
    return rates[0], rates[1]


def measure_one(model_dir: str, backend: str) -> dict:
    import torch
    import transformers

    import tgraph
    from tgraph.bench.measure import rss_mb

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    spent: dict[str, float] = {}
    for module, attr, phase in PHASES:
        try:
            _wrap(_resolve(module), attr, phase, spent)
        except (ImportError, AttributeError):
            pass
    lm = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.randint(10, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    first_touch, reuse = _fill_rates()
    faults, rss = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, rss_mb()
    start = time.perf_counter()
    gen = tgraph.compile(lm, {"input_ids": ids}, backend=backend)
    total = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    rss = rss_mb() - rss
    start = time.perf_counter()
    gen.generate(ids[:1], max_new_tokens=2)
    first = time.perf_counter() - start
    spent = dict(spent)  # attribute access below may compile more (a lazy plain forward)
    start = time.perf_counter()
    wait = getattr(getattr(gen, "step", None) and gen.step.runner, "wait_released", None)
    if wait is not None:  # ort: the graph's weight copy is released in the background
        wait()
    spent["release_after"] = time.perf_counter() - start
    passes = sorted(((r.seconds, r.name) for r in RECORDS), reverse=True)[:5]
    row = {"backend": backend, "total": round(total, 2), "first_call": round(first, 2)}
    row.update({k: round(v, 2) for k, v in spent.items()})
    row["other"] = round(total - sum(v for k, v in spent.items() if k != "release_after"), 2)
    row["slowest_passes"] = [[name, round(s, 2)] for s, name in passes]
    row["load_avg"] = round(os.getloadavg()[0], 1)
    row.update(first_touch_mb_s=round(first_touch), reuse_mb_s=round(reuse),
               minor_faults=faults, rss_growth_mb=round(rss))  # fmt: skip
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a Hugging Face causal LM directory")
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", action="store_true", help="measure once in this process")
    ap.add_argument("--json", help="write the repeats and their spread here")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.model, args.backend)))
        return
    rows = []
    for _ in range(args.repeats):
        cmd = [sys.executable, __file__, "--one", "--model", args.model, "--backend", args.backend]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"gen_compile_time: failed: {done.stderr.strip().splitlines()[-1:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    keys = [k for k, v in rows[0].items() if isinstance(v, float)]
    spread = {k: [min(r.get(k, 0) for r in rows), statistics.median(r.get(k, 0) for r in rows),
                  max(r.get(k, 0) for r in rows)] for k in keys}  # fmt: skip
    print(json.dumps({"min/median/max": spread}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"repeats": rows, "spread": spread}, f, indent=1)


if __name__ == "__main__":
    main()
