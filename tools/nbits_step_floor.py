"""The floor of an int4 decode step on ONNX Runtime: its MatMulNBits and attention alone.

    python tools/nbits_step_floor.py --config llama-336m --json floor.json

One batch-1 decode step of a Llama reads every packed weight once. This tool times, in one
process, the kernels such a step cannot do without, with nothing else in the graph:

- ``matmuls``: one ONNX graph holding the step's ``com.microsoft.MatMulNBits`` nodes
  (per layer q/k/v merged, o, gate/up merged, down; then the LM head at ``--head-bits``),
  4-bit blocks of ``--block`` at ``accuracy_level`` 4, as tgraph's ``int4`` lowers them,
  each fed from a graph input so that none waits on another;
- ``attention``: one ``GroupQueryAttention`` node of the model's geometry over a cache
  holding ``--context`` positions, its present outputs bound to the past buffers (as
  tgraph's step runs it: no cache copy), times the number of layers;
- ``bandwidth``: the machine's read bandwidth in the same run (``torch`` sum over
  ``--bandwidth-mib`` MiB, the 2-thread figure the benches use).

It reports each part's milliseconds, the matmuls' effective bandwidth (bytes of codes and
scales / time) against the measured read bandwidth, and the step floor ``1000 / (matmuls +
attention)`` tok/s against the bandwidth bound ``bandwidth / bytes per step``: a whole
decode step cannot beat the floor, so when the floor is below 70% of the bound, so is any
int4 step built on these kernels. Medians over ``--runs`` rounds, with the spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

# hidden, intermediate, layers, heads, kv heads, vocab: the generation issue's Llamas
CONFIGS = {
    "llama-336m": (1024, 2816, 24, 16, 4, 32000),
    "llama-58m": (512, 1376, 8, 8, 8, 32000),
    "llama-tiny": (128, 256, 2, 4, 2, 1000),
}
MS = "com.microsoft"


def _packed(n: int, k: int, bits: int, block: int, rng) -> tuple[np.ndarray, np.ndarray]:
    blocks = -(-k // block)
    codes = rng.integers(0, 256, size=(n, blocks, block * bits // 8), dtype=np.uint8)
    scales = (rng.random((n, blocks), dtype=np.float32) * 0.01 + 1e-3).astype(np.float32)
    return codes, scales


def step_shapes(config: str) -> list[tuple[str, int, int, int]]:
    """(name, N, K, bits) of each MatMulNBits of one decode step (the head last)."""
    hidden, inter, layers, heads, kv, vocab = CONFIGS[config]
    head_dim = hidden // heads
    shapes = []
    for i in range(layers):
        shapes += [
            (f"l{i}.qkv", hidden + 2 * kv * head_dim, hidden, 4),
            (f"l{i}.o", hidden, hidden, 4),
            (f"l{i}.gate_up", 2 * inter, hidden, 4),
            (f"l{i}.down", hidden, inter, 4),
        ]
    return [*shapes, ("head", vocab, hidden, 8)]


def matmul_model(config: str, block: int, head_bits: int) -> tuple[onnx.ModelProto, int]:
    """The step's MatMulNBits in one graph, and the bytes of codes and scales they read."""
    rng = np.random.default_rng(0)
    inputs, outputs, nodes, inits, nbytes = {}, [], [], [], 0
    for name, n, k, bits in step_shapes(config):
        bits = head_bits if name == "head" else bits
        codes, scales = _packed(n, k, bits, block, rng)
        nbytes += codes.nbytes + scales.nbytes
        inits += [numpy_helper.from_array(codes, f"{name}.B"),
                  numpy_helper.from_array(scales, f"{name}.s")]  # fmt: skip
        x = inputs.setdefault(k, helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [1, k]))
        nodes.append(helper.make_node(
            "MatMulNBits", [x.name, f"{name}.B", f"{name}.s"], [f"{name}.y"], domain=MS,
            K=k, N=n, bits=bits, block_size=block, accuracy_level=4,
        ))  # fmt: skip
        outputs.append(helper.make_tensor_value_info(f"{name}.y", TensorProto.FLOAT, [1, n]))
    graph = helper.make_graph(nodes, "matmuls", list(inputs.values()), outputs, inits)
    return _model(graph), nbytes


def attention_model(config: str, max_len: int) -> onnx.ModelProto:
    """One GroupQueryAttention decode node over a (1, kv, max_len, head_dim) cache."""
    hidden, _, _, heads, kv, _ = CONFIGS[config]
    d = hidden // heads
    f, i32 = TensorProto.FLOAT, TensorProto.INT32
    ins = [helper.make_tensor_value_info("q", f, [1, 1, heads * d]),
           helper.make_tensor_value_info("k", f, [1, 1, kv * d]),
           helper.make_tensor_value_info("v", f, [1, 1, kv * d]),
           helper.make_tensor_value_info("past_k", f, [1, kv, max_len, d]),
           helper.make_tensor_value_info("past_v", f, [1, kv, max_len, d]),
           helper.make_tensor_value_info("seqlens_k", i32, [1]),
           helper.make_tensor_value_info("total_len", i32, [])]  # fmt: skip
    outs = [helper.make_tensor_value_info(n, f, None) for n in ("y", "present_k", "present_v")]
    node = helper.make_node(
        "GroupQueryAttention", [i.name for i in ins], [o.name for o in outs], domain=MS,
        num_heads=heads, kv_num_heads=kv,
    )  # fmt: skip
    return _model(helper.make_graph([node], "attention", ins, outs))


def _model(graph) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])


def _time_ms(fn, calls: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) * 1000 / calls


def read_bandwidth_gb_s(mib: int) -> float:
    x = torch.ones(mib * 2**20 // 4)
    x.sum()
    seconds = min(_time_ms(x.sum, 3) for _ in range(3)) / 1000
    return x.numel() * 4 / seconds / 1e9


def measure(args) -> dict:
    hidden, _, layers, heads, kv, _ = CONFIGS[args.config]
    torch.set_num_threads(args.threads)
    mm, nbytes = matmul_model(args.config, args.block, args.head_bits)
    mm_session = _session(mm, args.threads)
    del mm
    feeds = {i.name: np.ones(i.shape, np.float32) for i in mm_session.get_inputs()}
    d, ctx = hidden // heads, args.context
    attn = _session(attention_model(args.config, ctx + 1), args.threads)
    cache = np.random.default_rng(1).standard_normal((1, kv, ctx + 1, d)).astype(np.float32)
    afeeds = {"q": np.ones((1, 1, heads * d), np.float32), "k": np.ones((1, 1, kv * d), np.float32),
              "v": np.ones((1, 1, kv * d), np.float32), "past_k": cache, "past_v": cache.copy(),
              "seqlens_k": np.array([ctx], np.int32), "total_len": np.array(ctx + 1, np.int32)}  # fmt: skip
    kv_bytes = 2 * layers * kv * d * (ctx + 1) * 4
    binding = attn.io_binding()  # present bound to past: one buffer, as tgraph's step runs
    values = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in afeeds.items()}
    for name, value in values.items():
        binding.bind_ortvalue_input(name, value)
        if name.startswith("past_"):
            binding.bind_ortvalue_output(name.replace("past_", "present_"), value)
    binding.bind_output("y", "cpu")
    rounds = {"matmuls_ms": [], "attention_ms": [], "bandwidth_gb_s": []}
    for _ in range(args.runs):  # interleaved: every round measures all three
        rounds["bandwidth_gb_s"].append(read_bandwidth_gb_s(args.bandwidth_mib))
        rounds["matmuls_ms"].append(_time_ms(lambda: mm_session.run(None, feeds), args.calls))
        per_layer = _time_ms(lambda: attn.run_with_iobinding(binding), args.calls * 4)
        rounds["attention_ms"].append(per_layer * layers)
    med = {k: statistics.median(v) for k, v in rounds.items()}
    spread = {k: max(v) - min(v) for k, v in rounds.items()}
    bw = med["bandwidth_gb_s"]
    step_bytes = nbytes + kv_bytes
    floor = 1000 / (med["matmuls_ms"] + med["attention_ms"])
    bound = bw * 1e9 / step_bytes
    return {
        "config": args.config, "block": args.block, "head_bits": args.head_bits,
        "context": ctx, "threads": args.threads, "runs": args.runs,
        "matmul_nodes": len(step_shapes(args.config)), "packed_mb": nbytes / 1e6,
        "kv_mb": kv_bytes / 1e6, "median": med, "spread": spread, "rounds": rounds,
        "matmuls_gb_s": nbytes / med["matmuls_ms"] / 1e6,
        "matmuls_pct_bandwidth": 100 * nbytes / med["matmuls_ms"] / 1e6 / bw,
        "floor_tok_s": floor, "bound_tok_s": bound, "floor_pct_bound": 100 * floor / bound,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="llama-336m", choices=sorted(CONFIGS))
    ap.add_argument("--block", type=int, default=128, help="int4 block size (tgraph's default)")
    ap.add_argument("--head-bits", type=int, default=8, choices=[4, 8], help="LM head bits")
    ap.add_argument("--context", type=int, default=160, help="cache positions attended")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20, help="timed calls per run")
    ap.add_argument("--bandwidth-mib", type=int, default=2048)
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)
    for flag in ("block", "threads", "runs", "calls", "bandwidth_mib", "context"):
        if getattr(args, flag) <= 0:
            print(f"nbits_step_floor: --{flag.replace('_', '-')} must be positive",
                  file=sys.stderr)  # fmt: skip
            return 1
    r = measure(args)
    m, s = r["median"], r["spread"]
    print(f"{r['config']}: {r['matmul_nodes']} MatMulNBits ({r['packed_mb']:.1f} MB packed, "
          f"head {r['head_bits']}-bit, block {r['block']}), GQA at context {r['context']}, "
          f"{r['threads']} threads, {r['runs']} runs")  # fmt: skip
    print(f"  read bandwidth   {m['bandwidth_gb_s']:7.1f} GB/s (spread {s['bandwidth_gb_s']:.1f})")
    print(
        f"  MatMulNBits      {m['matmuls_ms']:7.2f} ms (spread {s['matmuls_ms']:.2f}) = "
        f"{r['matmuls_gb_s']:.1f} GB/s, {r['matmuls_pct_bandwidth']:.0f}% of read bandwidth"
    )
    print(f"  attention        {m['attention_ms']:7.2f} ms (spread {s['attention_ms']:.2f})")
    print(
        f"  step floor       {r['floor_tok_s']:7.1f} tok/s = {r['floor_pct_bound']:.0f}% of the "
        f"bound {r['bound_tok_s']:.1f} tok/s ({r['packed_mb'] + r['kv_mb']:.1f} MB/step)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
