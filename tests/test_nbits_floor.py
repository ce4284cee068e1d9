"""tools/nbits_step_floor.py: the graph it times is the step's MatMulNBits, computing what
their codes and scales say, and the report is consistent with what it measured."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import onnxruntime as ort
from onnx import numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import nbits_step_floor as floor  # noqa: E402


def _dequant(codes: np.ndarray, scales: np.ndarray, bits: int, k: int) -> np.ndarray:
    n, blocks, _ = codes.shape
    if bits == 4:  # two codes per byte, low nibble first, zero point 8
        q = np.stack([codes & 0xF, codes >> 4], axis=-1).reshape(n, blocks, -1)
        zero = 8
    else:
        q, zero = codes, 128
    w = (q.astype(np.float32) - zero) * scales[:, :, None]
    return w.reshape(n, -1)[:, :k]


def test_timed_graph_is_the_step_and_computes_its_matmuls():
    model, nbytes = floor.matmul_model("llama-tiny", block=32, head_bits=8)
    hidden, inter, layers, _, _, vocab = floor.CONFIGS["llama-tiny"]
    assert len(model.graph.node) == 4 * layers + 1
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert nbytes == sum(a.nbytes for a in inits.values())
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal(i.shape).astype(np.float32) for i in session.get_inputs()}
    outs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    for name, bits, k in (("head", 8, hidden), ("l0.down", 4, inter), ("l1.qkv", 4, hidden)):
        w = _dequant(inits[f"{name}.B"], inits[f"{name}.s"], bits, k)
        want = feeds[f"x{k}"] @ w.T
        got = outs[f"{name}.y"]
        # accuracy_level 4 rounds A to int8 per block: about 1% of the output's scale
        assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()
    assert outs["head.y"].shape == (1, vocab)


def test_report_is_consistent(tmp_path, capsys):
    out = tmp_path / "floor.json"
    argv = ["--config", "llama-tiny", "--runs", "2", "--calls", "2", "--bandwidth-mib", "16",
            "--context", "8", "--json", str(out)]  # fmt: skip
    assert floor.main(argv) == 0
    r = json.loads(out.read_text())
    med = r["median"]
    assert r["matmul_nodes"] == 9 and len(r["rounds"]["matmuls_ms"]) == 2
    assert abs(r["floor_tok_s"] - 1000 / (med["matmuls_ms"] + med["attention_ms"])) < 1e-6
    bound = med["bandwidth_gb_s"] * 1e9 / ((r["packed_mb"] + r["kv_mb"]) * 1e6)
    assert abs(r["bound_tok_s"] - bound) / bound < 1e-9
    assert "step floor" in capsys.readouterr().out


def test_bad_option_is_one_line_exit_1(capsys):
    assert floor.main(["--config", "llama-tiny", "--runs", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "nbits_step_floor: --runs must be positive"
