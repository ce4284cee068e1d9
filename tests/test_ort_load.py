"""How weights reach an ONNX Runtime session (backends/ort_load.py): the probe of what ORT
reads after load, FusedMatMul lowering of linears and the weights a session shares."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tgraph
from tgraph.backends import ort_load
from tgraph.backends.onnx_model import to_onnx
from tgraph.backends.ort import lower


def _mlp_graph(pipeline: str = "default"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 32))
    x = torch.randn(3, 64)
    graph, _ = tgraph.optimize(tgraph.trace(model.eval(), (x,)), pipeline)
    return model.eval(), x, graph


def test_probe_names_the_ops_it_knows():
    with pytest.raises(ValueError, match="no probe for op 'Conv'"):
        ort_load.reads_after_load("Conv")


def test_probe_tells_a_session_that_reads_from_one_that_copied(monkeypatch):
    """The probe's verdict follows what the session does: one that reads the array while it
    runs sees the NaNs written after load; one that copied it does not."""
    real = ort_load.open_session

    def copying(model, options, providers, external, shared=frozenset(), **kw):
        return real(model, options, providers, {k: a.copy() for k, a in external.items()},
                    shared, **kw)  # fmt: skip

    ort_load.reads_after_load.cache_clear()
    try:
        assert ort_load.reads_after_load("Gather", shared=True)  # ORT shares the buffer
        ort_load.reads_after_load.cache_clear()
        monkeypatch.setattr(ort_load, "open_session", copying)
        assert not ort_load.reads_after_load("Gather", shared=True)
    finally:
        ort_load.reads_after_load.cache_clear()


def test_prepack_lowers_linears_to_fused_matmul_on_the_graph_array():
    _, _, graph = _mlp_graph()
    external: dict[str, np.ndarray] = {}
    load_only: set[str] = set()
    prepacked: set[str] = set()
    model = to_onnx(graph, external=external, prepack=True, load_only=load_only,
                    prepacked=prepacked)  # fmt: skip
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("FusedMatMul") == 2 and "Transpose" not in ops and "MatMul" not in ops
    weights = {n.inputs[1].name for n in graph.nodes if n.op == "linear"}
    assert prepacked == weights and weights <= load_only
    for name in weights:  # (out, in): the graph's own array, not a transposed copy
        assert external[name].shape == tuple(graph.initializers[name].const.shape)


def test_copying_session_needs_no_snapshot():
    """``in_place=False`` (ORT copies what it is given): every external array is load-only
    and none is copied by tgraph, even those that view the model's parameters."""
    _, _, graph = _mlp_graph()
    external: dict[str, np.ndarray] = {}
    load_only: set[str] = set()
    to_onnx(graph, external=external, in_place=False, load_only=load_only)
    assert external and load_only == set(external)
    views = [a for a in external.values() if not a.flags.owndata]
    assert views, "the frontend's weights view the model's parameters"


@pytest.mark.parametrize("pipeline", ["default", "int8-weight", "int4"])
def test_lowered_session_matches_eager(pipeline):
    model, x, graph = _mlp_graph(pipeline)
    runner = lower(graph, "cpu", ort_optimizations=True)
    with torch.no_grad():
        want = model(x)
    tol = 1e-5 if pipeline == "default" else 0.1
    torch.testing.assert_close(runner([x])[0], want, rtol=tol, atol=tol)
    x2 = torch.randn(7, 64)  # another batch than traced
    with torch.no_grad():
        torch.testing.assert_close(runner([x2])[0], model(x2), rtol=tol, atol=tol)


def test_shared_weights_are_never_read_after_load():
    """The arrays a session shares are prepacked at load: NaN written into them afterwards
    changes no output, and releasing them keeps the session right."""
    if ort_load.reads_after_load("FusedMatMul", shared=True):
        pytest.skip("this ONNX Runtime reads FusedMatMul's B after load: nothing is shared")
    model, x, graph = _mlp_graph()
    runner = lower(graph, "cpu", ort_optimizations=True)
    values, arrays, tmp = runner._tmp
    assert tmp is not None, "the prepacked weights are shared (placeholder directory)"
    weights = {n.inputs[1].name for n in graph.nodes if n.op == "linear"}
    assert weights <= runner.load_only
    want = runner([x])[0]
    with torch.no_grad():  # the shared arrays view the model's weights (no snapshot)
        for p in model.parameters():
            p.fill_(float("nan"))
    assert all(np.isnan(arrays[name]).all() for name in weights)
    torch.testing.assert_close(runner([x])[0], want, rtol=0, atol=0)
    runner.release_load_only()
    assert not weights & set(runner.external_arrays())
    torch.testing.assert_close(runner([x])[0], want, rtol=0, atol=0)
