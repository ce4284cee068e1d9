"""No swallowed errors: artifacts keep their structure or fail, the oracle checks its
kernels, and pass helpers catch only the error they mean."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree

import tgraph
from tgraph.backends.reference import ReferenceRunError, run_graph
from tgraph.ir import DType, Graph
from tgraph.ir.ops import registry


class _Pair:
    """A container registered with pytree but without a serialized name."""

    def __init__(self, a, b):
        self.a, self.b = a, b


pytree.register_pytree_node(
    _Pair, lambda p: ([p.a, p.b], None), lambda xs, _: _Pair(*xs),
    flatten_with_keys_fn=lambda p: (
        [(pytree.GetAttrKey("a"), p.a), (pytree.GetAttrKey("b"), p.b)], None
    ),
)  # fmt: skip


class _PairModel(torch.nn.Module):
    def forward(self, x):
        return _Pair(x * 2, x + 1)


class _DictModel(torch.nn.Module):
    def forward(self, x):
        return {"y": x * 2}


def test_an_output_structure_that_cannot_be_saved_fails_the_save(tmp_path):
    cm = tgraph.compile(_PairModel(), (torch.randn(2, 3, 4),), backend="reference")
    with pytest.raises(tgraph.ArtifactError, match="cannot save the structure of the model's "
                       "outputs .*_Pair"):  # fmt: skip
        cm.save(tmp_path / "m.tg")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp dir left


def test_an_output_structure_that_cannot_be_rebuilt_fails_the_load(tmp_path):
    cm = tgraph.compile(_DictModel(), (torch.randn(2, 3, 4),), backend="reference")
    cm.save(tmp_path / "m.tg")
    assert set(tgraph.load(tmp_path / "m.tg")(torch.randn(1, 2, 4))) == {"y"}
    path = tmp_path / "m.tg" / "manifest.json"
    manifest = json.loads(path.read_text())
    spec = manifest["structure"]["out_spec"].replace("builtins.dict", "nosuchpkg.Output")
    manifest["structure"]["out_spec"] = spec
    path.write_text(json.dumps(manifest))
    with pytest.raises(tgraph.ArtifactError, match="nosuchpkg.Output.*install the package"):
        tgraph.load(tmp_path / "m.tg")


def test_reference_error_does_not_shadow_the_builtin():
    import tgraph.backends.reference as ref

    assert not hasattr(ref, "ReferenceError") and issubclass(ReferenceRunError, RuntimeError)


def _one_node_graph(op):
    g = Graph("g")
    x = g.add_input("x", DType.float32, (2, 3))
    g.outputs.append(g.create_node(op, [x]).output)
    return g


@pytest.mark.parametrize(
    "result, fragment",
    [
        (lambda x: np.concatenate([x, x]), "kernel returned float32[4, 3]"),
        (lambda x: x.astype(np.float64), "kernel returned float64[2, 3]"),
    ],
)
def test_the_oracle_refuses_a_kernel_result_that_disagrees_with_inference(
    monkeypatch, result, fragment
):
    opdef = registry.get_op("relu")
    bad = dataclasses.replace(opdef, kernel=lambda x, **_: result(x))
    monkeypatch.setitem(registry._REGISTRY, "relu", bad)
    g = _one_node_graph("relu")
    with pytest.raises(ReferenceRunError, match=f"relu node .*{fragment.replace('[', '.')}"):
        run_graph(g, [np.ones((2, 3), np.float32)])


def test_broadcasts_into_catches_only_ir_errors(monkeypatch):
    from tgraph.passes import _mask_forms

    assert _mask_forms.broadcasts_into((1, 3), (2, 3))
    assert not _mask_forms.broadcasts_into((4, 3), (2, 3))  # IRError: no broadcast

    def broken(*_shapes):
        raise TypeError("a bug, not a shape mismatch")

    monkeypatch.setattr(_mask_forms, "broadcast_shapes", broken)
    with pytest.raises(TypeError, match="a bug"):
        _mask_forms.broadcasts_into((1, 3), (2, 3))


@pytest.mark.parametrize("start, end", [(-2, 3), (1, 99), (-9, -1), (0, 0), (4, 2)])
def test_slice_inference_agrees_with_its_kernel(start, end):
    g = Graph("g")
    x = g.add_input("x", DType.float32, (2, 3, 4))
    out = g.create_node("slice", [x], {"axis": 1, "start": start, "end": end}).output
    g.outputs.append(out)
    (got,) = run_graph(g, [np.ones((2, 3, 4), np.float32)])  # the oracle checks the shape
    assert got.shape == tuple(out.shape) == np.ones((2, 3, 4))[:, start:end].shape
