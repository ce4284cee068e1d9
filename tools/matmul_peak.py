"""The fp32 matmul peak of this machine, the yardstick of the performance issue's floor.

    python tools/matmul_peak.py --threads 2

Times ``torch.mm`` (and ONNX Runtime's MatMul, MLAS) on a large square product and on the
GEMMs of BERT-base at 1x128 (a (128 x 768) activation against the 768x2304 QKV, 768x768
output, 768x3072 and 3072x768 FFN weights), medians of interleaved rounds. The peak is the
best of these; a model's floor is its GFLOP over that peak (BERT-base 1x128 is 22.4 GFLOP).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

SHAPES = [(2048, 2048, 2048), (128, 768, 2304), (128, 768, 768), (128, 768, 3072),
          (128, 3072, 768), (1024, 768, 3072)]  # fmt: skip


def _ort_matmul(k: int, n: int, threads: int):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = helper.make_tensor(
        "w", TensorProto.FLOAT, [k, n], np.random.rand(k, n).astype(np.float32).tobytes(), raw=True
    )
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return lambda a: session.run(None, {"x": a})


def _calls(m: int, k: int, n: int, threads: int) -> dict:
    a, b = torch.randn(m, k), torch.randn(k, n)
    run_ort = _ort_matmul(k, n, threads)
    a_np = a.numpy()
    return {"torch": lambda: torch.mm(a, b), "ort": lambda: run_ort(a_np)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"fp32 GEMM, {args.threads} thread(s), median GFLOP/s of {args.rounds} rounds")
    print(f"{'m x k x n':<20}{'torch.mm':>12}{'ORT MatMul':>12}")
    best = 0.0
    for m, k, n in SHAPES:
        calls = _calls(m, k, n, args.threads)
        times: dict[str, list[float]] = {name: [] for name in calls}
        for name in calls:  # warm up
            calls[name]()
        for _ in range(args.rounds):
            for name, call in calls.items():
                time.sleep(0.01)
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
        flops = 2.0 * m * k * n
        rates = {name: flops / statistics.median(t) / 1e9 for name, t in times.items()}
        best = max(best, *rates.values())
        print(f"{f'{m}x{k}x{n}':<20}{rates['torch']:>12.1f}{rates['ort']:>12.1f}")
    print(f"peak {best:.1f} GFLOP/s: BERT-base 1x128 (22.4 GFLOP) floor {22.4 / best * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
