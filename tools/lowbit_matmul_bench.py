"""Weight-only linears at decode (M=1) and prefill (M=128) shapes, through tgraph's lowerings.

    python tools/lowbit_matmul_bench.py --threads 1 --rounds 30 --shapes 1024x2816,2816x1024

One ``nn.Linear(K, N)`` compiled by each path, called in interleaved rounds (median ms):
ONNX Runtime fp32 MatMul, ``MatMulNBits`` 4 and 8 bits with ``accuracy_level`` 4
(compute=int8) and 0 (compute=f32); torch fp32 ``F.linear``, ``_weight_int4pack_mm_for_cpu``
and ``_weight_int8pack_mm`` (compute=f32, and int4 with the compute=int8 activation rounding
it emulates). Also the weight bytes each path reads per call.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import tgraph
from tgraph.backends import get_backend
from tgraph.passes.manager import optimize

PATHS = {  # name -> (backend, passes after fuse-linear)
    "ort fp32": ("ort", ""),
    "ort int4 acc4": ("ort", "quantize-int4{compute=int8}"),
    "ort int4 acc0": ("ort", "quantize-int4{compute=f32}"),
    "ort int8 acc4": ("ort", "quantize-int8-weight{compute=int8}"),
    "ort int8 acc0": ("ort", "quantize-int8-weight{compute=f32}"),
    "torch fp32": ("torch", ""),
    "torch int4pack": ("torch", "quantize-int4{compute=f32}"),
    "torch int4pack +act": ("torch", "quantize-int4{compute=int8}"),
    "torch int8pack": ("torch", "quantize-int8-weight{compute=f32}"),
}


def weight_bytes(graph) -> int:
    return sum(v.const.nbytes for v in graph.initializers.values() if v.const is not None)


def bench(k: int, n: int, m: int, rounds: int) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(k, n, bias=False).eval()
    x = torch.randn(1, m, k)
    traced = tgraph.trace(model, (x,), dynamic=False)
    runners = {}
    for name, (backend, passes) in PATHS.items():
        graph, _ = optimize(traced, ",".join(p for p in ("fuse-linear", passes, "dce") if p))
        runners[name] = (get_backend(backend).lower(graph, "cpu"), weight_bytes(graph))
    want = model(x).detach()
    times: dict[str, list[float]] = {name: [] for name in runners}
    with torch.no_grad():
        for run, _ in runners.values():
            run([x])
        for _ in range(rounds):
            for name, (run, _) in runners.items():
                start = time.perf_counter()
                run([x])
                times[name].append(time.perf_counter() - start)
        for name, (run, nbytes) in runners.items():
            err = float((run([x])[0] - want).norm() / want.norm())
            ms = float(np.median(times[name])) * 1e3
            print(f"K={k} N={n} M={m:<4d} {name:20s} {ms:8.3f} ms  {nbytes / 1e6:6.2f} MB"
                  f"  rel err {err:.1e}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--shapes", default="1024x2816,2816x1024", help="KxN,...")
    ap.add_argument("--m", default="1,128")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        for m in (int(v) for v in args.m.split(",")):
            bench(k, n, m, args.rounds)


if __name__ == "__main__":
    main()
