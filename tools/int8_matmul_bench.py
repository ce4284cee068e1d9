"""One (128 x 768) @ (768 x 3072) product in ONNX Runtime: fp32 MatMul against the int8 paths.

    python tools/int8_matmul_bench.py [--threads 2] [--rounds 20]

Paths: ORT's DynamicQuantizeMatMul (per-tensor u8 activations), and per-token symmetric
activations shifted to u8 with MatMulInteger against s8 weights, 7-bit s8 weights, or u8
weights (zero point 128). Input channel 5 is scaled x20 (an outlier channel, as trained
transformers have). Prints interleaved medians and the relative L2 error against fp32.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

M, K, N = 128, 768, 3072


def _session(nodes, inits, threads: int) -> ort.InferenceSession:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, M, K])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Five sessions take turns: spinning workers of one would slow the next (as in tgraph.bench).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])


def _const(value, name: str):
    return numpy_helper.from_array(np.asarray(value), name)


def _per_token(wq, w_zero, scale, threads: int) -> ort.InferenceSession:
    n = helper.make_node
    nodes = [
        n("Abs", ["x"], ["a"]),
        n("ReduceMax", ["a"], ["m"], axes=[-1], keepdims=1),
        n("Div", ["m", "c127"], ["s0"]),
        n("Max", ["s0", "tiny"], ["s"]),
        n("Div", ["x", "s"], ["xs"]),
        n("Round", ["xs"], ["xr"]),
        n("Add", ["xr", "c128"], ["xu"]),
        n("Cast", ["xu"], ["xq"], to=TensorProto.UINT8),
        n("MatMulInteger", ["xq", "wq", "azp", "wzp"], ["acc"]),
        n("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        n("Mul", ["accf", "s"], ["y0"]),
        n("Mul", ["y0", "sc"], ["y"]),
    ]
    inits = [
        _const(wq, "wq"), _const(scale, "sc"), _const(np.float32(127), "c127"),
        _const(np.float32(1e-12), "tiny"), _const(np.float32(128), "c128"),
        _const(np.uint8(128), "azp"), _const(w_zero, "wzp"),
    ]  # fmt: skip
    return _session(nodes, inits, threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--torch", action="store_true", help="also torch int8 and bf16")
    args = parser.parse_args()
    if args.torch:
        _torch(args.threads, args.rounds)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    x = rng.standard_normal((1, M, K)).astype(np.float32)
    x[0, :, 5] *= 20
    scale = (np.abs(w).max(0) / 127).astype(np.float32)
    wq = np.round(w / scale).astype(np.int8)
    scale7 = (np.abs(w).max(0) / 63).astype(np.float32)
    sessions = {
        "fp32 MatMul": _session(
            [helper.make_node("MatMul", ["x", "w"], ["y"])], [_const(w, "w")], args.threads
        ),
        "DynamicQuantizeMatMul": _session(
            [
                helper.make_node(
                    "DynamicQuantizeMatMul", ["x", "wq", "sc"], ["y"], domain="com.microsoft"
                )
            ],
            [_const(wq, "wq"), _const(scale, "sc")],
            args.threads,
        ),  # fmt: skip
        "per-token u8 x s8": _per_token(wq, np.zeros(N, np.int8), scale, args.threads),
        "per-token u8 x s7": _per_token(
            np.round(w / scale7).astype(np.int8), np.zeros(N, np.int8), scale7, args.threads
        ),
        "per-token u8 x u8": _per_token(
            (wq.astype(np.int16) + 128).astype(np.uint8),
            np.full(N, 128, np.uint8),
            scale,
            args.threads,
        ),  # fmt: skip
    }
    import time

    ref = sessions["fp32 MatMul"].run(None, {"x": x})[0]
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, {"x": x})
            times[name].append(time.perf_counter() - start)
    for name, s in sessions.items():
        y = s.run(None, {"x": x})[0]
        err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
        print(f"{name:24s} {np.median(times[name]) * 1e3:7.2f} ms   rel L2 error {err:.2g}")


def _torch(threads: int, rounds: int) -> None:
    """torch's int8 (``_int_mm``) and bf16 ``F.linear`` on the same product."""
    import time

    import torch

    torch.set_num_threads(threads)

    def median_ms(fn) -> float:
        fn()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return float(np.median(times)) * 1e3

    xi = torch.randint(-127, 128, (M, K), dtype=torch.int8)
    wi = torch.randint(-127, 128, (K, N), dtype=torch.int8)
    ms = median_ms(lambda: torch._int_mm(xi, wi))
    print(f"{'torch._int_mm int8':24s} {ms:7.2f} ms   {2 * M * K * N / ms / 1e6:.1f} GFLOP/s")
    x, w = torch.randn(M, K), torch.randn(N, K)
    for dtype in (torch.float32, torch.bfloat16):
        a, b = x.to(dtype), w.to(dtype)
        ms = median_ms(lambda a=a, b=b: torch.nn.functional.linear(a, b))
        print(f"{'torch F.linear ' + str(dtype)[6:]:24s} {ms:7.2f} ms")


if __name__ == "__main__":
    main()
