"""fp32 linears on torch's CPU kernels: ``F.linear`` (MKL) against oneDNN on a prepacked weight.

    python tools/torch_linear_kernels.py --threads 2
    python tools/torch_linear_kernels.py --shapes 1x1024x5632 128x1024x5632 --layers 12
    python tools/torch_linear_kernels.py --layouts 1 128   # oneDNN's layout for 1 / 128 rows

The torch backend runs a linear as ``F.linear``, which on an x86 build of torch is MKL's
sgemm. On an AMD CPU MKL can be far from what the memory or the FMA units allow. oneDNN,
also in every x86 build, has a linear on a weight reordered once into its own blocked
layout (``torch.ops.mkldnn._reorder_linear_weight`` then ``_linear_pointwise``: what
torch.compile's CPU backend emits for frozen weights). This tool times both, alternating,
on ``--layers`` independent weights per shape so that a decode-sized product streams from
memory rather than cache, and prints microseconds per linear, the weight bytes read per
second, and the largest difference between the two outputs.

Shapes are ``MxKxN``: M rows of input, K input features, N output features (the weight is
(N, K) as in ``nn.Linear``). The default set is the 336M Llama's linears at decode (M = 1)
and at a 128-token prefill. oneDNN picks its layout for a row count given at the reorder:
by default each shape's own M; ``--layouts 1 128`` times one column per row count instead,
against the one layout the generation step uses (``torch_onednn.PACK_ROWS``).
The speedup printed is F.linear's time over the fastest oneDNN column's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

DEFAULT_SHAPES = ["1x1024x1024", "1x1024x5632", "1x1024x32000", "128x1024x1024", "128x1024x5632"]


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        m, k, n = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise SystemExit(
            f"torch_linear_kernels: shape {text!r} is not MxKxN (e.g. 1x1024x5632)"
        ) from None
    if min(m, k, n) < 1:
        raise SystemExit(f"torch_linear_kernels: shape {text!r} has a dimension below 1")
    return m, k, n


def time_shape(m: int, k: int, n: int, layers: int, rounds: int,
               layouts: list[int] | None = None) -> dict:  # fmt: skip
    """F.linear and oneDNN (one column per layout, default: laid out for ``m`` rows) on
    ``layers`` (n, k) weights and an (m, k) input, alternating rounds."""
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, k, generator=gen) / k**0.5 for _ in range(layers)]
    x = torch.randn(m, k, generator=gen)

    def mkl() -> list[torch.Tensor]:
        return [F.linear(x, w) for w in weights]

    def onednn(packed: list[torch.Tensor]):
        return lambda: [torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
                        for p in packed]  # fmt: skip

    fns = {"F.linear": mkl}
    for rows in layouts or [m]:
        name = "oneDNN packed" if layouts is None else f"oneDNN[{rows}]"
        fns[name] = onednn([torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in weights])
    ref = mkl()
    diff = max(float((a - b).abs().max()) for fn in fns.values() for a, b in zip(ref, fn()))
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for r in range(rounds):
        for name, fn in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / layers)
    row = {"shape": f"{m}x{k}x{n}", "layers": layers, "max_abs_diff": diff}
    for name, t in times.items():
        us = statistics.median(t) * 1e6
        row[name] = {"us": round(us, 1), "weight_gbs": round(n * k * 4 / us / 1e3, 2),
                     "gflops": round(2 * m * k * n / us / 1e3, 1),
                     "min_us": round(min(t) * 1e6, 1)}  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="MxKxN entries")
    parser.add_argument("--layers", type=int, default=16, help="independent weights per shape")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layouts", type=int, nargs="+",
                        help="oneDNN layouts to time, by the rows they are laid out for "
                        "(default: each shape's M)")  # fmt: skip
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    if not torch.backends.mkldnn.is_available():
        raise SystemExit("torch_linear_kernels: this torch build has no oneDNN (mkldnn)")
    torch.set_num_threads(args.threads)
    shapes = [parse_shape(s) for s in args.shapes]
    print(f"torch {torch.__version__}, {args.threads} threads, {args.layers} weights per shape, "
          f"{args.rounds} alternating rounds; median us per linear (weight GB/s, GFLOP/s)")  # fmt: skip
    if args.layouts and min(args.layouts) < 1:
        raise SystemExit("torch_linear_kernels: --layouts takes row counts of at least 1")
    rows = []
    for m, k, n in shapes:
        row = time_shape(m, k, n, args.layers, args.rounds, args.layouts)
        rows.append(row)
        names = [name for name in row if name == "F.linear" or name.startswith("oneDNN")]
        cells = "  ".join(f"{name} {row[name]['us']:9.1f} us ({row[name]['weight_gbs']:5.1f} GB/s, "
                          f"{row[name]['gflops']:6.1f})" for name in names)  # fmt: skip
        speedup = row["F.linear"]["us"] / min(row[name]["us"] for name in names[1:])
        print(f"{row['shape']:>14s}  {cells}  x{speedup:.2f}  max diff {row['max_abs_diff']:.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "rows": rows}, f,
                      indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
