"""The torch backend: every op against the reference interpreter, every model against eager.

Op tests build tiny graphs with ``Graph.create_node`` and compare the lowered fx program with
the NumPy reference kernels (same shapes, dtypes and values). Ops whose attributes hold
symbolic dims run at two sizes from one lowering. Model tests compile each case of
``model_cases.ALL_CASES`` (traced once per session) with pipelines "none" and "default" and
compare with eager PyTorch at two batch/sequence sizes.
"""

from __future__ import annotations

import copy
import functools
import math
import pickle

import numpy as np
import pytest
import torch
from model_cases import ALL_CASES, all_tensors
from torch_helpers import Tiny, assert_matches_reference, one_node, randn, rng, run_torch

import tgraph
from tgraph.api import CompiledModel, model_tensors
from tgraph.backends import torch_ops
from tgraph.backends.reference import random_inputs
from tgraph.backends.torch_backend import LoweringError, TorchRunner, lower
from tgraph.ir import DType, Graph, SymDim
from tgraph.ir.ops import all_ops

F32, I64, BOOL = DType.float32, DType.int64, DType.bool
BATCH, SEQ = SymDim.symbol("batch"), SymDim.symbol("seq")
SIZES = ((2, 5), (3, 8))


def test_every_ir_op_has_a_lowering():
    assert sorted(set(all_ops()) - set(torch_ops.OPS)) == []


# -- ops with static attributes ------------------------------------------------------------------

_X = randn(2, 3, 4)
_POS = rng(1).uniform(0.5, 2.0, (2, 3, 4)).astype(np.float32)
_INTS = rng(2).integers(-7, 8, (3, 4)).astype(np.int64)
_NONZERO = np.where(_INTS == 0, 3, rng(3).integers(-5, 6, (3, 4))).astype(np.int64)
_BOOLS = rng(4).random((3, 4)) < 0.5

OP_CASES = {
    **{op: (op, [_X]) for op in ("neg", "abs", "exp", "tanh", "erf", "sigmoid", "relu", "silu")},
    **{op: (op, [_X]) for op in ("sin", "cos", "floor", "reciprocal", "identity")},
    **{op: (op, [_POS]) for op in ("log", "sqrt", "rsqrt")},
    "gelu": ("gelu", [_X]),
    "gelu-tanh": ("gelu", [_X], {"approximate": "tanh"}),
    "dropout": ("dropout", [_X], {"p": 0.1}),
    "logical_not": ("logical_not", [_BOOLS]),
    "cast-f32-i64": ("cast", [_X * 5], {"dtype": I64}),
    "cast-f32-bool": ("cast", [np.round(_X)], {"dtype": BOOL}),
    "cast-bool-f32": ("cast", [_BOOLS], {"dtype": F32}),
    "clamp": ("clamp", [_X], {"min": -0.5, "max": 0.7}),
    "clamp-min": ("clamp", [_X], {"min": -0.5}),
    **{op: (op, [_X, randn(3, 1, seed=5)]) for op in ("add", "sub", "mul", "maximum", "minimum")},
    "div": ("div", [_X, _POS]),
    "pow": ("pow", [_POS, randn(4, seed=6)]),
    "floor_divide": ("floor_divide", [_INTS, _NONZERO]),
    "remainder": ("remainder", [_INTS, _NONZERO]),
    **{op: (op, [_INTS, _INTS.T[:3, :1]]) for op in ("eq", "ne", "lt", "le", "gt", "ge")},
    "logical_and": ("logical_and", [_BOOLS, _BOOLS[:, :1]]),
    "logical_or": ("logical_or", [_BOOLS, _BOOLS[:1]]),
    "where": ("where", [_BOOLS, randn(3, 4), randn(4, seed=7)]),
    "reduce_sum": ("reduce_sum", [_X], {"axes": (0, 2)}),
    "reduce_sum-int": ("reduce_sum", [_INTS.astype(np.int32)], {"axes": (1,)}),
    "reduce_mean": ("reduce_mean", [_X], {"axes": (-1,), "keepdim": True}),
    "reduce_max-all": ("reduce_max", [_X]),
    "reduce_min": ("reduce_min", [_X], {"axes": (1,)}),
    "reduce_prod": ("reduce_prod", [_POS], {"axes": (0, 2), "keepdim": True}),
    "var": ("var", [_X], {"axes": (1, 2), "correction": 1}),
    "var-all-keepdim": ("var", [_X], {"keepdim": True}),
    "argmax": ("argmax", [_X], {"axis": -1, "keepdim": True}),
    "cumsum": ("cumsum", [_X], {"axis": 1}),
    "cumsum-i32": ("cumsum", [_INTS.astype(np.int32)], {"axis": 0}),
    "cumsum-f64": ("cumsum", [_X], {"axis": -1, "dtype": DType.float64}),
    "cumsum-bool-i64": ("cumsum", [_BOOLS], {"axis": 1, "dtype": I64}),
    "matmul": ("matmul", [randn(2, 1, 3, 4), randn(3, 4, 5, seed=1)]),
    "matmul-vector": ("matmul", [_X, randn(4, seed=1)]),
    "linear": ("linear", [_X, randn(5, 4, seed=1), randn(5, seed=2)], {}, (1, 2)),
    "linear-no-bias": ("linear", [_X, randn(5, 4, seed=1)], {}, (1,)),
    "softmax": ("softmax", [_X], {"axis": 0}),
    "log_softmax": ("log_softmax", [_X], {"axis": -1}),
    "layer_norm": ("layer_norm", [_X, randn(3, 4, seed=1), randn(3, 4, seed=2)], {"axis": -2}),
    "layer_norm-bare": ("layer_norm", [_X, None, None], {"eps": 1e-3}),
    "rms_norm": ("rms_norm", [_X, randn(4, seed=1)], {"eps": 1e-5}),
    "rms_norm-bare": ("rms_norm", [_X], {"axis": 1}),
    "conv2d": (
        "conv2d",
        [randn(2, 3, 7, 6), randn(4, 3, 3, 2, seed=1), randn(4, seed=2)],
        {"stride": (2, 1), "padding": (1, 0)},
        (1, 2),
    ),
    "permute": ("permute", [_X], {"perm": (2, 0, 1)}),
    "reshape": ("reshape", [_X], {"shape": (3, 8)}),
    "expand": ("expand", [randn(3, 1)], {"shape": (2, 3, 4)}),
    "slice": ("slice", [_X], {"axis": -1, "start": 1, "end": 4, "step": 2}),
    "slice-negative": ("slice", [_X], {"axis": 1, "start": -2, "end": 3}),
    "concat": ("concat", [_X, randn(2, 1, 4), randn(2, 2, 4, seed=2)], {"axis": 1}),
    "split": ("split", [_X], {"axis": 2, "sizes": (1, 3)}),
    "squeeze": ("squeeze", [randn(1, 3, 1, 2)], {"axes": (0, -2)}),
    "unsqueeze": ("unsqueeze", [_X], {"axes": (0, -1, 2)}),
    "gather": ("gather", [_X, np.array([[2, 0], [1, 1]])], {"axis": 1}),
    "gather-negative": ("gather", [_X, np.array([-1, 0], dtype=np.int32)], {"axis": -1}),
    "gather-select": ("gather", [_X, np.array(2)], {"axis": 1}, (1,)),
    "gather-embedding": ("gather", [randn(10, 4), np.array([[3, 9, 0]])], {"axis": 0}, (0,)),
    "index": ("index", [_X, np.array([[1], [0]]), np.array([3, 0, 2])], {"axis": 1}),
    "index-axis0": ("index", [_X, np.array([1, 0, 1])]),
    "gather_elements": ("gather_elements", [_X, rng(8).integers(0, 3, (2, 3, 4))], {"axis": 1}),
    "gather_elements-smaller": (
        "gather_elements",
        [_X, rng(9).integers(0, 4, (1, 2, 3))],
        {"axis": -1},
    ),
    "tril": ("tril", [_X], {"diagonal": -1}),
    "triu-bool": ("triu", [_BOOLS], {"diagonal": 1}),
    "arange": ("arange", [], {"start": 2, "end": 11, "step": 3}),
    "arange-float": ("arange", [], {"start": 0.5, "end": 3.0, "step": 0.5, "dtype": F32}),
    "full": ("full", [], {"shape": (2, 3), "value": -math.inf}),
    "full-bool": ("full", [], {"shape": (3,), "value": True, "dtype": BOOL}),
    "pad": ("pad", [_X], {"pads": (1, 0, 0, 2, 3, 1), "value": -1.5}),
    "sdpa": (
        "sdpa",
        [randn(2, 4, 3, 8), randn(2, 2, 5, 8, seed=1), randn(2, 2, 5, 6, seed=2)],
        {"gqa": True, "scale": 0.3},
    ),
    "sdpa-causal": (
        "sdpa",
        [randn(2, 4, 5, 8), randn(2, 4, 5, 8, seed=1), randn(2, 4, 5, 8, seed=2)],
        {"causal": True},
    ),
    "sdpa-float-mask": (
        "sdpa",
        [randn(1, 2, 3, 4), randn(1, 2, 5, 4, seed=1), randn(1, 2, 5, 4, seed=2), randn(3, 5)],
    ),
    "bias_gelu": ("bias_gelu", [_X, randn(4, seed=1)], {}, (1,)),
    "bias_gelu-tanh": ("bias_gelu", [_X, randn(4, seed=1)], {"approximate": "tanh"}, (1,)),
    "rotary": ("rotary", [randn(2, 2, 5, 8), randn(5, 8, seed=1), randn(5, 8, seed=2)]),
    "skip_layer_norm": (
        "skip_layer_norm",
        [_X, randn(3, 4, seed=1), randn(4, seed=2), randn(4, seed=3)],
        {"eps": 1e-6},
        (2, 3),
    ),
    "skip_layer_norm-bare": ("skip_layer_norm", [_X, randn(4, seed=1)]),
    "skip_rms_norm": ("skip_rms_norm", [_X, randn(2, 3, 4, seed=1), randn(4, seed=2)], {}, (2,)),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_op_matches_reference(case):
    op, inputs, *rest = OP_CASES[case]
    attrs = rest[0] if rest else {}
    consts = rest[1] if len(rest) > 1 else ()
    graph, feeds = one_node(op, inputs, attrs, consts)
    assert_matches_reference(graph, feeds)


def test_alias_ops_add_no_calls():
    graph, feeds = one_node("identity", [_X])
    runner = lower(graph)
    assert not [n for n in runner.program.graph.nodes if n.op == "call_function"]
    assert_matches_reference(graph, feeds, runner)


def test_unknown_op_names_the_node(monkeypatch):
    graph, _ = one_node("relu", [_X])
    monkeypatch.delitem(torch_ops.OPS, "relu")
    with pytest.raises(LoweringError, match="no lowering for op 'relu' at node %relu"):
        lower(graph)


# -- symbolic attributes -------------------------------------------------------------------------


SYMBOLIC_CASES = {
    "reshape": ("reshape", {"shape": (BATCH * SEQ, 2, 2)}),
    "reshape-insert": ("reshape", {"shape": (BATCH, 1, SEQ, 4)}),
    "expand": ("expand", {"shape": (2, BATCH, SEQ, 4)}),
    "slice": ("slice", {"axis": 1, "start": 1, "end": SEQ - 1, "step": 2}),
    "split": ("split", {"axis": 1, "sizes": (2, SEQ - 2)}),
    "pad": ("pad", {"pads": (0, 0, 1, SEQ - 3, 0, 0), "value": 2.0}),
    "arange": ("arange", {"end": SEQ}),
    "arange-floordiv-mod": (
        "arange",
        {"start": 1, "end": (SEQ + 1) // 2 + SEQ % 3 + 2 * BATCH, "dtype": F32},
    ),
    "full": ("full", {"shape": (BATCH, SEQ + 1), "value": 0.5, "dtype": F32}),
    "full-bool": ("full", {"shape": (SEQ, SEQ), "value": True, "dtype": BOOL}),
}


def _symbolic_graph(op: str, attrs: dict) -> Graph:
    """One ``op`` node on x (batch, seq, 4), or on nothing for ops that create tensors."""
    g = Graph("symbolic")
    x = g.add_input("x", F32, (BATCH, SEQ, 4))
    inputs = [] if op in ("arange", "full") else [x]
    g.outputs = list(g.create_node(op, inputs, attrs).outputs)
    g.verify()
    return g


@pytest.mark.parametrize("case", sorted(SYMBOLIC_CASES))
def test_symbolic_attributes_at_two_sizes(case):
    graph = _symbolic_graph(*SYMBOLIC_CASES[case])
    runner = lower(graph)
    shapes = set()
    for batch, seq in SIZES:
        inputs = random_inputs(graph, {"batch": batch, "seq": seq}, seed=seq)
        assert_matches_reference(graph, inputs, runner)
        shapes.add(tuple(run_torch(graph, inputs, runner)[-1].shape))
    assert len(shapes) == 2, "the output shape should follow the input sizes"


def test_symbols_bind_from_the_first_input_that_has_them():
    g = Graph("two-inputs")
    mem = SymDim.symbol("mem")
    x = g.add_input("x", F32, (BATCH, SEQ, 4))
    m = g.add_input("m", F32, (BATCH, mem, 4))
    cat = g.create_node("concat", [x, m], {"axis": 1}).output
    g.outputs = [g.create_node("reshape", [cat], {"shape": (BATCH, (SEQ + mem) * 4)}).output]
    runner = lower(g)
    assert "x.size(0)" in runner.program.code and "m.size(1)" in runner.program.code
    for batch, seq, memory in ((2, 3, 5), (1, 6, 2)):
        inputs = random_inputs(g, {"batch": batch, "seq": seq, "mem": memory})
        assert_matches_reference(g, inputs, runner)


def test_program_exports_and_compiles_with_dynamic_shapes():
    g = Graph("dynamic")
    x = g.add_input("x", F32, (BATCH, SEQ, 4))
    pos = g.create_node("arange", [], {"end": 4, "dtype": F32}).output
    y = g.create_node("add", [x, pos]).output
    g.outputs = [g.create_node("reshape", [y], {"shape": (BATCH * SEQ, 4)}).output]
    graph = g
    program = lower(graph).program
    x = torch.randn(2, 5, 4)
    dims = {0: torch.export.Dim("b", min=2, max=64), 1: torch.export.Dim("s", min=2, max=64)}
    exported = torch.export.export(program, (x,), dynamic_shapes=({**dims},)).module()
    compiled = torch.compile(program, backend="eager", dynamic=True)
    for shape in ((2, 5, 4), (3, 7, 4)):
        x = torch.randn(shape)
        (want,) = program(x)
        assert want.shape == (shape[0] * shape[1], 4)
        torch.testing.assert_close(exported(x)[0], want)
        torch.testing.assert_close(compiled(x)[0], want)


# -- parameters -------------------------------------------------------------------------------


@functools.cache
def _tiny_traced() -> tuple[Tiny, Graph]:
    """A shared Tiny and its graph, for tests that do not change the model."""
    torch.manual_seed(1)
    model = Tiny().eval()
    return model, tgraph.trace(model, (torch.randn(2, 3, 4),))


def test_parameters_are_the_models_own_objects():
    torch.manual_seed(0)
    model = Tiny().eval()
    graph = tgraph.trace(model, (torch.randn(2, 3, 4),))
    runner = lower(graph, "cpu", params=model_tensors(model))
    assert isinstance(runner, TorchRunner)
    assert [id(p) for p in runner.parameters()] == [id(p) for p in model.parameters()]
    assert any(b is model.offset for b in runner.buffers())
    x = torch.randn(3, 5, 4)
    torch.testing.assert_close(runner([x])[0], model(x))
    with torch.no_grad():  # an in-place update of the model is seen by the program
        model.proj.weight.mul_(-1.5)
        model.offset.add_(1.0)
    torch.testing.assert_close(runner([x])[0], model(x))


def test_without_params_weights_are_copies():
    model, graph = _tiny_traced()
    runner = lower(graph)
    mine = dict(runner.program.named_parameters())
    assert set(mine) == {f"params.{n}" for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert mine[f"params.{name}"] is not p
        assert mine[f"params.{name}"].data_ptr() != p.data_ptr()
    assert all(not b.requires_grad for b in runner.buffers())


def test_a_tensor_of_the_wrong_type_is_not_used():
    model, graph = _tiny_traced()
    params = model_tensors(model)
    params["proj.weight"] = torch.nn.Parameter(torch.randn(6, 5))
    with pytest.warns(UserWarning, match="proj.weight"):
        runner = lower(graph, "cpu", params=params)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(runner([x])[0], model(x))


def test_runner_deepcopies_and_pickles():
    model, graph = _tiny_traced()
    runner = lower(graph, "cpu", params=model_tensors(model))
    x = torch.randn(2, 3, 4)
    for clone in (copy.deepcopy(runner), pickle.loads(pickle.dumps(runner))):
        pairs = zip(clone.parameters(), model.parameters())
        assert all(p.data_ptr() != q.data_ptr() for p, q in pairs)
        torch.testing.assert_close(clone([x])[0], runner([x])[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_follows_the_graph_dtype(dtype):
    torch.manual_seed(0)
    model = Tiny().eval().to(dtype)
    graph = tgraph.trace(model, (torch.randn(2, 3, 4, dtype=dtype),))
    runner = lower(graph, "cpu", params=model_tensors(model))
    x = torch.randn(3, 5, 4, dtype=dtype)
    with torch.no_grad():
        got, want = runner([x])[0], model(x)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)


def test_cuda_graphs_stay_off_without_cuda_inputs():
    model, graph = _tiny_traced()
    runner = lower(graph, "cpu", params=model_tensors(model), cuda_graphs=True)
    x = torch.randn(2, 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(runner([x])[0], model(x))
    assert runner._graphs is None


# -- every model case against eager ------------------------------------------------------------


@pytest.mark.parametrize("pipeline", ["none", "default"])
@pytest.mark.parametrize("name", ALL_CASES)
def test_model_matches_eager(traced_case, name, pipeline):
    case, graph = traced_case(name)
    optimized, report = tgraph.optimize(graph, pipeline)
    params = model_tensors(case.model)
    runner = lower(optimized, "cpu", params=params)
    cm = CompiledModel(optimized, runner, "torch", "cpu", report, pipeline)

    model_params = {id(p) for p in case.model.parameters()}
    mine = list(cm.parameters())
    assert len({id(p) for p in mine}) == len(mine), "a parameter is registered twice"
    assert all(id(p) in model_params for p in mine), "a parameter is not the model's own"
    for name_, v in optimized.initializers.items():
        if name_ in params and v.trainable:
            assert any(p is params[name_] for p in mine), f"{name_} is not the model's parameter"

    for batch, seq in ((1, 7), (3, 5)):
        kwargs = case.make(batch, seq, 1)
        with torch.no_grad():
            want = all_tensors(case.model(**kwargs))
            got = all_tensors(cm(**kwargs))
        assert len(got) == len(want)
        for w, g in zip(want, got):
            assert g.shape == w.shape and g.dtype == w.dtype
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
