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

import tgraph
from tgraph.api import CompiledModel, model_tensors
from tgraph.backends import torch_ops
from tgraph.backends.reference import random_inputs, run_graph
from tgraph.backends.torch_backend import LoweringError, TorchRunner, lower
from tgraph.ir import DType, Graph, SymDim
from tgraph.ir.ops import all_ops
from tgraph.tensors import to_torch

F32, I64, BOOL = DType.float32, DType.int64, DType.bool
BATCH, SEQ = SymDim.symbol("batch"), SymDim.symbol("seq")
SIZES = ((2, 5), (3, 8))


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return rng(seed).standard_normal(shape).astype(np.float32)


def run_torch(graph: Graph, arrays: list[np.ndarray], runner=None) -> list[np.ndarray]:
    runner = runner or lower(graph, "cpu")
    with torch.no_grad():
        outs = runner([to_torch(np.array(a, copy=True)) for a in arrays])
    return [o.detach().numpy() for o in outs]


def assert_matches_reference(graph: Graph, arrays: list[np.ndarray], runner=None, tol=1e-5):
    want = run_graph(graph, arrays)
    got = run_torch(graph, arrays, runner)
    assert len(got) == len(want)
    for w, g in zip(want, got):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol)
        else:
            np.testing.assert_array_equal(g, w)


def one_node(op: str, inputs: list, attrs=None, consts: tuple[int, ...] = ()):
    """A graph of one ``op`` node; inputs listed in ``consts`` become initializers."""
    g = Graph(op)
    values, feeds = [], []
    for i, a in enumerate(inputs):
        if a is None:
            values.append(None)
        elif i in consts:
            values.append(g.add_const(a, DType.from_numpy(a.dtype), f"c{i}"))
        else:
            values.append(g.add_input(f"in{i}", DType.from_numpy(a.dtype), a.shape))
            feeds.append(a)
    node = g.create_node(op, values, attrs)
    g.outputs = list(node.outputs)
    g.verify()
    return g, feeds


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


# -- attention ---------------------------------------------------------------------------------


def _attention_graph(layout, num_heads, kv_heads, mask, causal, scale=0.25, kv_seq=None):
    """q over (batch, seq); k and v over (batch, kv_seq); mask broadcast to (B, 1, Tq, Tk)."""
    g = Graph("attention")
    kv_seq = kv_seq or SEQ
    if layout == "bhsd":
        q = g.add_input("q", F32, (BATCH, num_heads, SEQ, 8))
        k = g.add_input("k", F32, (BATCH, kv_heads, kv_seq, 8))
        v = g.add_input("v", F32, (BATCH, kv_heads, kv_seq, 6))
    else:
        q = g.add_input("q", F32, (BATCH, SEQ, num_heads * 8))
        k = g.add_input("k", F32, (BATCH, kv_seq, kv_heads * 8))
        v = g.add_input("v", F32, (BATCH, kv_seq, kv_heads * 6))
    m = None if mask is None else g.add_input("mask", mask, (BATCH, 1, SEQ, kv_seq))
    attrs = dict(num_heads=num_heads, kv_heads=kv_heads, scale=scale, causal=causal, layout=layout)
    g.outputs = [g.create_node("attention", [q, k, v, m], attrs).output]
    g.verify()
    return g


def _attention_inputs(graph: Graph, bindings: dict, seed: int) -> list[np.ndarray]:
    arrays = random_inputs(graph, bindings, seed)
    for i, v in enumerate(graph.inputs):
        if v.name == "mask" and v.dtype is BOOL:
            arrays[i][..., 0] = True  # every query sees a key even under the causal mask
    return arrays


@pytest.mark.parametrize("layout", ["bhsd", "bsd"])
@pytest.mark.parametrize(
    "heads,mask,causal",
    [
        ((4, 4), None, False),
        ((4, 2), None, True),
        ((4, 1), BOOL, False),
        ((4, 2), BOOL, True),
        ((2, 2), F32, False),
        ((4, 2), F32, True),
    ],
)
def test_attention(layout, heads, mask, causal):
    graph = _attention_graph(layout, *heads, mask=mask, causal=causal)
    runner = lower(graph)
    for batch, seq in SIZES:
        inputs = _attention_inputs(graph, {"batch": batch, "seq": seq}, seed=batch)
        assert_matches_reference(graph, inputs, runner)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_more_keys_than_queries(causal):
    kv = SymDim.symbol("kv_seq")
    graph = _attention_graph("bsd", 4, 2, mask=BOOL, causal=causal, kv_seq=kv)
    runner = lower(graph)
    for batch, seq in SIZES:
        inputs = _attention_inputs(graph, {"batch": batch, "seq": seq, "kv_seq": seq + 3}, seed=1)
        assert_matches_reference(graph, inputs, runner)


def test_attention_calls_sdpa(monkeypatch):
    graph = _attention_graph("bsd", 4, 2, mask=None, causal=True)
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    run_torch(graph, random_inputs(graph, {"batch": 2, "seq": 5}))
    assert len(calls) == 1
    assert calls[0]["is_causal"] and calls[0]["enable_gqa"] and calls[0]["attn_mask"] is None


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


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 6)
        self.norm = torch.nn.LayerNorm(6)
        self.register_buffer("offset", torch.randn(6))

    def forward(self, x):
        return self.norm(self.proj(x)) * 2.0 + self.offset


@functools.cache
def _tiny_traced() -> tuple[_Tiny, Graph]:
    """A shared _Tiny and its graph, for tests that do not change the model."""
    torch.manual_seed(1)
    model = _Tiny().eval()
    return model, tgraph.trace(model, (torch.randn(2, 3, 4),))


def test_parameters_are_the_models_own_objects():
    torch.manual_seed(0)
    model = _Tiny().eval()
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
    model = _Tiny().eval().to(dtype)
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


# -- CUDA ----------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_cuda_graphs_replay_per_shape():
    torch.manual_seed(0)
    model = _Tiny().eval().cuda()
    graph = tgraph.trace(model, (torch.randn(2, 3, 4, device="cuda"),))
    runner = lower(graph, "cuda", params=model_tensors(model))
    assert runner.cuda_graphs
    assert [id(p) for p in runner.parameters()] == [id(p) for p in model.parameters()]
    with torch.no_grad():
        for shape in ((2, 3, 4), (3, 5, 4), (2, 3, 4)):
            x = torch.randn(shape, device="cuda")
            first = runner([x])[0]
            torch.testing.assert_close(first, model(x))
            torch.testing.assert_close(runner([x])[0], first)  # a replay
        assert len(runner._graphs._entries) == 2
        model.proj.weight.mul_(2.0)  # in place: replays see it
        torch.testing.assert_close(runner([x])[0], model(x))
    # with autograd on, the program runs eagerly and trains the model's parameters
    runner([x])[0].sum().backward()
    assert model.proj.weight.grad is not None


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision(dtype):
    torch.manual_seed(0)
    model = _Tiny().eval().to("cuda", dtype)
    graph = tgraph.trace(model, (torch.randn(2, 3, 4, device="cuda", dtype=dtype),))
    runner = lower(graph, "cuda", params=model_tensors(model), cuda_graphs=False)
    x = torch.randn(3, 5, 4, device="cuda", dtype=dtype)
    got = runner([x])[0]
    assert got.dtype == dtype
    torch.testing.assert_close(got, model(x), rtol=2e-2, atol=2e-2)


# Zoo models compiled for CUDA: the fused epilogues must run Triton kernels (where Triton is
# installed) and the results must match eager on the GPU.
CUDA_ZOO = {
    "bert-tiny": ("triton_skip_layer_norm",),
    "gpt-tiny": ("triton_skip_layer_norm",),
    "llama-tiny": ("triton_skip_rms_norm", "triton_rms_norm", "triton_rotary"),
}


def _cuda_zoo(name: str, dtype: torch.dtype):
    from tgraph.models import build, example_inputs

    torch.manual_seed(0)
    fp32 = build(name).eval().cuda()
    model = copy.deepcopy(fp32).to(dtype)
    inputs = {k: v.cuda() for k, v in example_inputs(model, batch=2, seq=16).items()}
    return fp32, tgraph.compile(model, inputs, backend="torch", device="cuda")


def _cuda_check(fp32, cm, tol: float) -> None:
    """cm against eager fp32 at other sizes, relative to the largest output; replays agree."""
    from tgraph.models import example_inputs

    for batch, seq in ((1, 7), (3, 12)):
        kwargs = {k: v.cuda() for k, v in example_inputs(fp32, batch=batch, seq=seq).items()}
        with torch.no_grad():
            want = all_tensors(fp32(**kwargs))
            got = all_tensors(cm(**kwargs))
            again = all_tensors(cm(**kwargs))  # a CUDA-graph replay
        for w, g, a in zip(want, got, again):
            assert g.shape == w.shape and g.is_cuda
            scale = w.abs().max().item()
            torch.testing.assert_close(g.float(), w, rtol=0, atol=tol * scale)
            torch.testing.assert_close(a, g, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(CUDA_ZOO))
def test_cuda_zoo_fp32_runs_the_triton_epilogues(name):
    fp32, cm = _cuda_zoo(name, torch.float32)
    if torch_ops._triton_ops():
        code = cm.runner.program.code
        missing = [k for k in CUDA_ZOO[name] if k not in code]
        assert not missing, f"the program does not call {missing}"
    assert cm.runner.cuda_graphs
    _cuda_check(fp32, cm, tol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(CUDA_ZOO))
def test_cuda_zoo_fp16(name):
    fp32, cm = _cuda_zoo(name, torch.float16)
    if torch_ops._triton_ops():
        assert CUDA_ZOO[name][0] in cm.runner.program.code
    _cuda_check(fp32, cm, tol=2e-2)


@pytest.mark.cuda
def test_cuda_triton_epilogues_stay_out_of_training():
    from tgraph.models import build, example_inputs

    torch.manual_seed(0)
    model = build("llama-tiny").cuda().train()
    kwargs = {k: v.cuda() for k, v in example_inputs(model, batch=2, seq=8).items()}
    cm = tgraph.compile(model, kwargs, backend="torch", device="cuda")
    all_tensors(cm(**kwargs))[0].float().sum().backward()  # the kernels have no backward
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    all_tensors(model(**kwargs))[0].float().sum().backward()
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-3, atol=2e-4)
