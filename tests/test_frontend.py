"""The torch.export frontend and the reference backend against eager PyTorch."""

import numpy as np
import pytest
import torch
from model_cases import ALL_CASES, all_tensors, get_case

import tgraph
from tgraph.api import CompiledModel
from tgraph.backends import get_backend
from tgraph.backends.reference import run_graph
from tgraph.ir import SymDim
from tgraph.tensors import to_numpy


@pytest.mark.parametrize("name", ALL_CASES)
def test_reference_matches_eager_at_other_sizes(name, traced_case):
    case, graph = traced_case(name)
    # What tgraph.compile(..., backend="reference") builds, on the graph traced once per session.
    optimized, report = tgraph.optimize(graph, "default")
    runner = get_backend("reference").lower(optimized, "cpu")
    cm = CompiledModel(optimized, runner, "reference", "cpu", report, "default")
    for batch, seq, seed in [(1, 7, 1), (3, 5, 2)]:
        inputs = case.make(batch, seq, seed)
        with torch.no_grad():
            want = case.model(**inputs)
        got = cm(**inputs)
        assert type(got) is type(want)
        for w, g in zip(all_tensors(want), all_tensors(got), strict=True):
            assert w.shape == g.shape and w.dtype == g.dtype
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["gpt-tiny", "hf-bert", "nn-encoder-padding"])
def test_symbolic_dims_are_named_batch_and_seq(name, traced_case):
    _, graph = traced_case(name)
    first = graph.inputs[0]
    assert first.shape[0] == SymDim.symbol("batch")
    assert first.shape[1] == SymDim.symbol("seq")
    graph.verify()


def test_initializers_keep_parameter_names_and_module_paths(traced_case):
    case, graph = traced_case("hf-bert")
    names = set(graph.initializers)
    assert "encoder.layer.0.attention.self.query.weight" in names
    param = graph.initializers["encoder.layer.0.attention.self.query.weight"]
    want = dict(case.model.named_parameters())["encoder.layer.0.attention.self.query.weight"]
    np.testing.assert_array_equal(param.const, to_numpy(want))
    assert param.trainable
    modules = {n.meta.get("module") for n in graph.nodes}
    assert "encoder.layer.0.attention.self.query" in modules


def test_batch_one_example_still_traces_dynamic():
    case = get_case("gpt-tiny")
    graph = tgraph.trace(case.model, case.make(1, 1, 0))
    assert all(isinstance(d, SymDim) for d in graph.inputs[0].shape)
    inputs = case.make(3, 9, 4)
    (got,) = run_graph(graph, [inputs["input_ids"].numpy()])
    with torch.no_grad():
        want = case.model(**inputs)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def test_static_trace_when_dynamic_false():
    case = get_case("transformer-tiny")
    graph = tgraph.trace(case.model, case.make(2, 8, 0), dynamic=False)
    assert graph.inputs[0].shape == (2, 8, 32)


def test_tuple_args_and_tuple_outputs():
    class TwoOut(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, x, y):
            h = self.proj(x)
            return h + y, {"sum": h.sum(-1)}

    model = TwoOut().eval()
    x, y = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    cm = tgraph.compile(model, (x, y), backend="reference")
    x2, y2 = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    got = cm(x2, y=y2)
    want = model(x2, y2)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1]["sum"], want[1]["sum"], rtol=1e-5, atol=1e-5)
    assert [v.name for v in cm.graph.outputs] == ["output_0", "output_1.sum"]


def test_unmapped_op_names_op_and_module():
    class Inner(torch.nn.Module):
        def forward(self, x):
            return torch.special.bessel_j0(x)

    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner()

        def forward(self, x):
            return self.inner(x) + 1

    with pytest.raises(tgraph.FrontendError, match=r"aten::special_bessel_j0.*from inner"):
        tgraph.trace(Outer(), (torch.randn(2, 3),))


def test_bad_example_inputs_are_rejected():
    model = get_case("gpt-tiny").model
    with pytest.raises(TypeError, match="example_inputs"):
        tgraph.trace(model, 42)
    with pytest.raises(tgraph.FrontendError, match="do not fit"):
        tgraph.trace(model, {"not_an_arg": torch.zeros(2, 3, dtype=torch.long)})


def test_exported_program_traces():
    case = get_case("transformer-tiny")
    inputs = case.make(2, 8, 0)
    ep = torch.export.export(case.model, (), inputs, strict=False)
    graph = tgraph.trace(ep)
    (got,) = run_graph(graph, [inputs["x"].numpy()])
    with torch.no_grad():
        want = case.model(**inputs)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def _check_other_sizes(model, make, sizes=((3, 7), (1, 24))) -> tgraph.api.CompiledModel:
    cm = tgraph.compile(model, make(2, 16), backend="reference", pipeline="none")
    for batch, seq in sizes:
        args = make(batch, seq)
        with torch.no_grad():
            torch.testing.assert_close(cm(*args), model(*args), rtol=1e-4, atol=1e-4)
    return cm


def test_in_place_slice_and_select_writes():
    """BART's shift_tokens_right: writes into slices and columns of a new tensor, which
    functionalization turns into copy / slice_scatter / select_scatter / fill."""

    class Shift(torch.nn.Module):
        def forward(self, ids, start):
            out = ids.new_zeros(ids.shape)
            out[:, 1:] = ids[:, :-1].clone()
            out[:, 0] = start
            out[:, -1:] = 7
            return out * 2

    g = torch.Generator().manual_seed(0)
    make = lambda b, s: (torch.randint(0, 9, (b, s), generator=g), torch.tensor(5))  # noqa: E731
    cm = _check_other_sizes(Shift(), make)
    assert {"concat", "slice"} <= set(cm.graph.op_histogram())


def test_conv1d_and_constant_pad_over_the_sequence():
    """conv1d becomes conv2d over a height-1 image; F.pad arrives as aten.pad."""

    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv1d(8, 16, 3, padding=1)
            self.b = torch.nn.Conv1d(16, 16, 3, stride=2, padding=1)

        def forward(self, x):  # (B, T, C)
            y = self.b(torch.nn.functional.gelu(self.a(x.transpose(1, 2))))
            return torch.nn.functional.pad(y.transpose(1, 2), (0, 0, 1, 2), value=0.5)

    g = torch.Generator().manual_seed(0)
    cm = _check_other_sizes(Conv().eval(), lambda b, s: (torch.randn(b, s, 8, generator=g),))
    assert cm.graph.op_histogram()["conv2d"] == 2


def test_pad_modes_other_than_constant_are_rejected():
    class Reflect(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.pad(x, (1, 1), mode="reflect")

    with pytest.raises(tgraph.FrontendError, match="pad mode 'reflect'"):
        tgraph.trace(Reflect(), (torch.randn(2, 3, 8),))
