"""Per-op time of tgraph's ONNX model against ONNX Runtime on torch's own export.

Where does tgraph-ort lose or win against ORT on the plain export? This runs both models
with ONNX Runtime's profiler on the same inputs and prints, per op type, the total kernel
time per call, so a gap in the bench table points at an op (attention, GEMM, a layer norm)
instead of a guess.

    python tools/ort_profile.py hf-gpt2:1x128 --threads 2 --runs 20
    python tools/ort_profile.py zoo:gpt-tiny:2x16 --top 8

Cases are bench_suite.py's (``hf-bert-base``, ``hf-gpt2``, ``hf-llama-58m``,
``torch-encoder``, or any checkpoint ``tgraph bench`` reads) with ``:BxS``. Times are
medians over ``--runs`` calls of the per-call sum of each op type's kernel times (ORT's
``*_kernel_time`` events), in milliseconds; "other" is a call's wall time minus its
kernels (session overhead, thread-pool hand-offs).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time

import onnxruntime as ort
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_suite import load_case  # noqa: E402

from tgraph import bench as tb  # noqa: E402
from tgraph.backends import ort as ort_backend  # noqa: E402
from tgraph.backends.onnx_model import to_onnx  # noqa: E402
from tgraph.backends.policy import ORT_OPTIMIZERS_OFF  # noqa: E402


def _options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_profiling = True
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _profile(session: ort.InferenceSession, feeds: dict, runs: int) -> dict[str, float]:
    """Median ms per call for each op type (and 'other'), from ORT's profile."""
    for _ in range(3):
        session.run(None, feeds)
    walls = []
    for _ in range(runs):
        time.sleep(0.02)
        start = time.perf_counter()
        session.run(None, feeds)
        walls.append((time.perf_counter() - start) * 1e3)
    path = session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    # One 'model_run' event per call; kernel events fall inside it.
    calls = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    calls = calls[-runs:]
    per_call = [collections.Counter() for _ in calls]
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        for i, (lo, hi) in enumerate(calls):
            if lo <= e["ts"] <= hi:
                per_call[i][e["args"].get("op_name", "?")] += e["dur"] / 1e3
                break
    ops = sorted({op for c in per_call for op in c})
    result = {op: statistics.median(c[op] for c in per_call) for op in ops}
    kernels = statistics.median(sum(c.values()) for c in per_call)
    result["(wall)"] = statistics.median(walls)
    result["(other)"] = result["(wall)"] - kernels
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", help="MODEL:BxS, e.g. hf-gpt2:1x128")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--pipeline", default="default")
    parser.add_argument(
        "--model-dir", default=os.path.join(tempfile.gettempdir(), "tgraph-bench-models")
    )
    parser.add_argument("--top", type=int, default=0, help="show only the N biggest op types")
    args = parser.parse_args()

    spec, _, shape = args.case.rpartition(":")
    batch, seq = (int(s) for s in shape.split("x"))
    torch.set_num_threads(args.threads)
    loaded = load_case(spec, batch, seq, args.model_dir)
    model, inputs = loaded.model, loaded.example_inputs

    import tgraph

    graph = tgraph.trace(model, inputs)
    graph, _ = tgraph.optimize(graph, args.pipeline)
    weights: dict = {}
    proto = to_onnx(graph, external=weights, fold_at_load=True)
    # tgraph's session as the ort backend makes it: in-memory weights, ORT's re-fusing off
    providers = ["CPUExecutionProvider"]
    ours, _keep = ort_backend._session(
        proto, _options(args.threads), providers, weights, ORT_OPTIMIZERS_OFF["cpu"]
    )

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "plain.onnx")
        names = tb.export_onnx(model, inputs, path)
        plain = ort.InferenceSession(path, _options(args.threads), providers)
        args_, kwargs = tb._flat_inputs(inputs)
        flat = list(args_) + [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
        feeds_plain = {n: t.numpy() for n, t in zip(names, flat)}
        feeds_ours = {v.name: t.numpy() for v, t in zip(graph.inputs, flat)}
        a = _profile(ours, feeds_ours, args.runs)
        b = _profile(plain, feeds_plain, args.runs)

    rows = sorted(set(a) | set(b), key=lambda op: -max(a.get(op, 0.0), b.get(op, 0.0)))
    if args.top:
        totals = [r for r in rows if r.startswith("(")]
        rows = totals + [r for r in rows if r not in totals][: args.top]
    print(f"{args.case}, {args.threads} thread(s), median ms per call over {args.runs} calls")
    print(f"{'op type':<36}{'tgraph-ort':>12}{'ort-plain':>12}{'diff':>10}")
    for op in rows:
        x, y = a.get(op, 0.0), b.get(op, 0.0)
        print(f"{op:<36}{x:>12.2f}{y:>12.2f}{x - y:>+10.2f}")


if __name__ == "__main__":
    main()
