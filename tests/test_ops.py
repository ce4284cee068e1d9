"""The op registry: inference agrees with the NumPy kernels, and the kernels agree with torch.

Most checks build a one-node graph with ``Graph.create_node``, verify it, call the op's
kernel directly (to see its raw output shape and dtype) and run the graph through the
reference interpreter. Eager torch on the same data is the oracle.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

from tgraph.backends.reference import ReferenceError, run_graph
from tgraph.ir import DType, Graph, IRError, SymDim, evaluate
from tgraph.ir.core import freeze
from tgraph.ir.ops import REQUIRED, all_ops, get_op

F32, I64 = DType.float32, DType.int64
BATCH, SEQ = SymDim.symbol("batch"), SymDim.symbol("seq")
RTOL = ATOL = 1e-5


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return rng(seed).standard_normal(shape).astype(np.float32)


def positive(*shape: int, seed: int = 0) -> np.ndarray:
    return rng(seed).uniform(0.5, 2.0, shape).astype(np.float32)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True))


def assert_close(actual: np.ndarray, expected: torch.Tensor, rtol=RTOL, atol=ATOL) -> None:
    torch.testing.assert_close(t(actual), expected, rtol=rtol, atol=atol)


def run_op(op: str, inputs, attrs=None) -> list[np.ndarray]:
    """Run one op on ``inputs`` (None for an absent optional input) four ways and cross-check.

    The node's inferred types must match the kernel's raw output, the graph must verify,
    and the reference interpreter must give the same arrays as the bare kernel.
    """
    g = Graph(op)
    values = [
        None if a is None else g.add_input(f"in{i}", DType.from_numpy(a.dtype), a.shape)
        for i, a in enumerate(inputs)
    ]
    node = g.create_node(op, values, attrs)
    g.outputs = list(node.outputs)
    g.verify()
    raw = get_op(op).run(list(inputs), node.attrs)
    assert len(raw) == len(node.outputs)
    for v, r in zip(node.outputs, raw):
        assert r.shape == tuple(v.shape), f"{op}: kernel shape {r.shape}, inferred {v.type}"
        assert r.dtype == v.dtype.numpy, f"{op}: kernel dtype {r.dtype}, inferred {v.type}"
    outs = run_graph(g, [a for a in inputs if a is not None])
    for r, o in zip(raw, outs):
        np.testing.assert_array_equal(r, o)
    return outs


def run1(op: str, inputs, attrs=None) -> np.ndarray:
    (out,) = run_op(op, inputs, attrs)
    return out


# -- the registry -----------------------------------------------------------------------------------


def test_registry_is_sorted_and_named():
    ops = all_ops()
    assert list(ops) == sorted(ops)
    assert len(ops) >= 60
    for name, opdef in ops.items():
        assert opdef.name == name
        assert get_op(name) is opdef
    with pytest.raises(IRError, match="unknown op 'nope'"):
        get_op("nope")


@pytest.mark.parametrize("name", sorted(all_ops()))
def test_every_op_is_documented_and_well_formed(name):
    opdef = get_op(name)
    assert opdef.doc.strip(), f"op {name} has no docstring"
    assert opdef.doc.rstrip().endswith("."), f"op {name}: doc should be a sentence"
    assert 0 <= opdef.min_inputs <= opdef.max_inputs
    assert callable(opdef.infer) and callable(opdef.kernel)
    assert isinstance(opdef.pure, bool) and isinstance(opdef.commutative, bool)
    required = {k for k, v in opdef.attrs.items() if v is REQUIRED}
    for key, default in opdef.attrs.items():
        assert key.isidentifier()
        if default is not REQUIRED:
            assert freeze(default) == default, f"op {name}: default of {key} is not frozen"
    if required:
        with pytest.raises(IRError, match="missing required attribute"):
            opdef.normalize_attrs({})
    else:
        assert opdef.normalize_attrs({}) == dict(opdef.attrs)
    with pytest.raises(IRError, match=r"unknown attribute\(s\) \['zz_bogus'\]; known"):
        opdef.normalize_attrs({"zz_bogus": 1})


# The op modules this file covers; fused ops (ops/fused.py) are tested with their passes.
BASE_OP_MODULES = {f"tgraph.ir.ops.{m}" for m in ("elementwise", "nn", "reduce", "shape_ops")}


def test_every_base_op_has_a_spot_check_here():
    source = Path(__file__).read_text()
    base = [name for name, op in all_ops().items() if op.infer.__module__ in BASE_OP_MODULES]
    assert len(base) >= 60
    missing = [name for name in base if f'"{name}"' not in source]
    assert not missing, f"ops without a check in tests/test_ops.py: {missing}"


def test_arity_errors():
    with pytest.raises(IRError, match="op matmul takes 2 inputs, got 1"):
        get_op("matmul").check_arity(1)
    with pytest.raises(IRError, match=r"op linear takes 2..3 inputs, got 4"):
        get_op("linear").check_arity(4)


# -- broadcasting binary ops -------------------------------------------------------------------------


def _floats(shape, r):
    return r.standard_normal(shape).astype(np.float32)


def _small_ints_as_floats(shape, r):
    # A few distinct values so that eq/le/ge see ties.
    return r.integers(-2, 3, shape).astype(np.float32)


def _nonzero(shape, r):
    return (r.uniform(0.5, 2.0, shape) * r.choice([-1, 1], shape)).astype(np.float32)


def _ints(shape, r):
    return r.integers(-20, 21, shape).astype(np.int64)


def _nonzero_ints(shape, r):
    return (r.integers(1, 6, shape) * r.choice([-1, 1], shape)).astype(np.int64)


def _bools(shape, r):
    return r.random(shape) < 0.5


# op -> (torch oracle, lhs data, rhs data)
BINARY = {
    "add": (torch.add, _floats, _floats),
    "sub": (torch.sub, _floats, _floats),
    "mul": (torch.mul, _floats, _floats),
    "div": (torch.div, _floats, _nonzero),
    "pow": (torch.pow, lambda s, r: np.abs(_nonzero(s, r)), _floats),
    "maximum": (torch.maximum, _small_ints_as_floats, _floats),
    "minimum": (torch.minimum, _small_ints_as_floats, _floats),
    "floor_divide": (torch.floor_divide, _ints, _nonzero_ints),
    "remainder": (torch.remainder, _ints, _nonzero_ints),
    "eq": (torch.eq, _small_ints_as_floats, _small_ints_as_floats),
    "ne": (torch.ne, _small_ints_as_floats, _small_ints_as_floats),
    "lt": (torch.lt, _small_ints_as_floats, _small_ints_as_floats),
    "le": (torch.le, _small_ints_as_floats, _small_ints_as_floats),
    "gt": (torch.gt, _small_ints_as_floats, _small_ints_as_floats),
    "ge": (torch.ge, _small_ints_as_floats, _small_ints_as_floats),
    "logical_and": (torch.logical_and, _bools, _bools),
    "logical_or": (torch.logical_or, _bools, _bools),
}


@pytest.mark.parametrize("op", sorted(BINARY))
@settings(max_examples=30, deadline=None, database=None)
@given(
    shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=3),
    seed=st.integers(0, 2**32 - 1),
)
def test_binary_op_against_torch(op, shapes, seed):
    oracle, lhs, rhs = BINARY[op]
    r = rng(seed)
    x, y = lhs(shapes.input_shapes[0], r), rhs(shapes.input_shapes[1], r)
    out = run1(op, [x, y])
    assert out.shape == shapes.result_shape
    assert_close(out, oracle(t(x), t(y)))


@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_op_symbolic_broadcast(op):
    g = Graph()
    _, lhs, _ = BINARY[op]
    dtype = DType.from_numpy(lhs((1,), rng()).dtype)
    x = g.add_input("x", dtype, [BATCH, 1, 8])
    y = g.add_input("y", dtype, [SEQ, 1])
    out = g.create_node(op, [x, y]).output
    assert out.shape == (BATCH, SEQ, 8)
    # torch.export guarantees a symbol meeting a constant equals it at run time.
    z = g.add_input("z", dtype, [4])
    assert g.create_node(op, [y, z]).output.shape == (SEQ, 4)
    w = g.add_input("w", dtype, [3])
    with pytest.raises(IRError, match=f"{op}: cannot broadcast dims 3 and 4"):
        g.create_node(op, [w, z])


def test_binary_ops_want_one_dtype():
    g = Graph()
    x = g.add_input("x", F32, [4])
    i = g.add_input("i", I64, [4])
    with pytest.raises(IRError, match=r"add: operand dtypes differ \(f32, i64\)"):
        g.create_node("add", [x, i])


def test_commutative_flags_hold():
    x, y = randn(3, 4, seed=1), randn(4, seed=2)
    for name, opdef in all_ops().items():
        if not opdef.commutative:
            continue
        if name.startswith("logical"):
            a, b = x > 0, y > 0
        else:
            a, b = x, y
        (ab,) = opdef.run([a, b], {})
        (ba,) = opdef.run([b, a], {})
        np.testing.assert_array_equal(ab, ba, err_msg=name)


# -- unary ops ---------------------------------------------------------------------------------------

# op -> (torch oracle, data, attrs)
UNARY = {
    "neg": (torch.neg, randn, {}),
    "abs": (torch.abs, randn, {}),
    "exp": (torch.exp, randn, {}),
    "log": (torch.log, positive, {}),
    "sqrt": (torch.sqrt, positive, {}),
    "rsqrt": (torch.rsqrt, positive, {}),
    "reciprocal": (torch.reciprocal, positive, {}),
    "tanh": (torch.tanh, randn, {}),
    "erf": (torch.erf, randn, {}),
    "sigmoid": (torch.sigmoid, randn, {}),
    "relu": (torch.relu, randn, {}),
    "silu": (F.silu, randn, {}),
    "sin": (torch.sin, randn, {}),
    "cos": (torch.cos, randn, {}),
    "floor": (torch.floor, lambda *s, seed: randn(*s, seed=seed) * 3, {}),
    "identity": (lambda x: x, randn, {}),
    "dropout": (lambda x: F.dropout(x, 0.1, training=False), randn, {"p": 0.1}),
}


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_op_against_torch(op):
    oracle, data, attrs = UNARY[op]
    x = data(2, 3, 5, seed=7)
    assert_close(run1(op, [x], attrs), oracle(t(x)))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    x = randn(4, 6, seed=3) * 3
    out = run1("gelu", [x], {"approximate": approximate})
    assert_close(out, F.gelu(t(x), approximate=approximate))


def test_logical_not():
    x = rng(1).random((3, 4)) < 0.5
    assert_close(run1("logical_not", [x]), torch.logical_not(t(x)))


@pytest.mark.parametrize("lo,hi", [(-0.5, 0.7), (-0.5, None), (None, 0.25)])
def test_clamp(lo, hi):
    x = randn(3, 7, seed=2)
    out = run1("clamp", [x], {"min": lo, "max": hi})
    assert_close(out, torch.clamp(t(x), lo, hi))


@pytest.mark.parametrize(
    "src,dst",
    [
        (np.float32, DType.int32),
        (np.float32, DType.int64),
        (np.float32, DType.bool),
        (np.float32, DType.float16),
        (np.float32, DType.float64),
        (np.int64, DType.float32),
        (np.bool_, DType.float32),
    ],
)
def test_cast(src, dst):
    r = rng(5)
    if src is np.bool_:
        x = r.random((3, 4)) < 0.5
    elif src is np.int64:
        x = r.integers(-100, 100, (3, 4))
    else:
        x = (r.standard_normal((3, 4)) * 5).astype(src)
    out = run1("cast", [x], {"dtype": dst})
    expected = t(x).to(getattr(torch, dst.name))
    assert_close(out, expected, rtol=0, atol=0)


def test_cast_needs_a_dtype():
    g = Graph()
    x = g.add_input("x", F32, [4])
    with pytest.raises(IRError, match="missing required attribute 'dtype'"):
        g.create_node("cast", [x])


def test_where():
    r = rng(4)
    cond = r.random((3, 1)) < 0.5
    x, y = randn(1, 4, seed=1), randn(2, 3, 4, seed=2)
    out = run1("where", [cond, x, y])
    assert out.shape == (2, 3, 4)
    assert_close(out, torch.where(t(cond), t(x), t(y)))
    g = Graph()
    c = g.add_input("c", F32, [3])
    with pytest.raises(IRError, match="where: condition dtype is f32, want bool"):
        g.create_node("where", [c, c, c])


# -- reductions ---------------------------------------------------------------------------------------


def _torch_reduce(op: str, x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    if op == "reduce_prod":  # torch.prod takes one dim at a time
        for d in sorted((d % x.ndim for d in dims), reverse=True):
            x = torch.prod(x, d, keepdim=keepdim)
        return x
    fn = {
        "reduce_sum": torch.sum,
        "reduce_mean": torch.mean,
        "reduce_max": torch.amax,
        "reduce_min": torch.amin,
    }[op]
    return fn(x, dim=dims, keepdim=keepdim)


@pytest.mark.parametrize(
    "op", ["reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod"]
)
@pytest.mark.parametrize("axes", [(), (1,), (-1,), (0, 2)])
@pytest.mark.parametrize("keepdim", [False, True])
def test_reduce(op, axes, keepdim):
    x = randn(2, 3, 4, seed=len(axes))
    out = run1(op, [x], {"axes": axes, "keepdim": keepdim})
    dims = axes or (0, 1, 2)
    assert_close(out, _torch_reduce(op, t(x), dims, keepdim))


@pytest.mark.parametrize(
    "axes,correction,keepdim", [((), 0, False), ((1,), 1, True), ((0, 2), 1, False)]
)
def test_var(axes, correction, keepdim):
    x = randn(3, 4, 5, seed=9)
    out = run1("var", [x], {"axes": axes, "correction": correction, "keepdim": keepdim})
    expected = torch.var(t(x), dim=axes or None, correction=correction, keepdim=keepdim)
    assert_close(out, expected)


@pytest.mark.parametrize("axis,keepdim", [(0, False), (-1, False), (1, True)])
def test_argmax(axis, keepdim):
    x = randn(3, 4, 5, seed=11)
    out = run1("argmax", [x], {"axis": axis, "keepdim": keepdim})
    assert_close(out, torch.argmax(t(x), dim=axis, keepdim=keepdim), rtol=0, atol=0)


@pytest.mark.parametrize("axis,dtype", [(0, None), (-1, None), (1, DType.float64)])
def test_cumsum(axis, dtype):
    x = randn(3, 4, 5, seed=12)
    out = run1("cumsum", [x], {"axis": axis, "dtype": dtype})
    expected = torch.cumsum(t(x), dim=axis, dtype=getattr(torch, dtype.name) if dtype else None)
    assert_close(out, expected)


def test_cumsum_ints():
    x = rng(3).integers(-9, 9, (4, 6))
    assert_close(run1("cumsum", [x], {"axis": 1}), torch.cumsum(t(x), 1), rtol=0, atol=0)


# -- normalization and activations over an axis --------------------------------------------------------


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(op, axis):
    x = randn(2, 3, 6, seed=13) * 4
    out = run1(op, [x], {"axis": axis})
    fn = torch.softmax if op == "softmax" else torch.log_softmax
    assert_close(out, fn(t(x), dim=axis))


@pytest.mark.parametrize(
    "axis,params", [(-1, "wb"), (-1, ""), (-1, "b"), (-2, "wb"), (1, "w")], ids=str
)
def test_layer_norm(axis, params):
    x = randn(2, 3, 8, seed=14) * 2 + 0.5
    normalized = x.shape[axis % 3 :]
    w = randn(*normalized, seed=15) if "w" in params else None
    b = randn(*normalized, seed=16) if "b" in params else None
    inputs = [x, w, b] if b is not None else [x, w]
    out = run1("layer_norm", inputs, {"axis": axis, "eps": 1e-5})
    expected = F.layer_norm(
        t(x), normalized, None if w is None else t(w), None if b is None else t(b), eps=1e-5
    )
    assert_close(out, expected)


@pytest.mark.parametrize("axis,weighted", [(-1, True), (-1, False), (-2, True)])
def test_rms_norm(axis, weighted):
    x = randn(2, 3, 8, seed=17)
    normalized = x.shape[axis % 3 :]
    w = randn(*normalized, seed=18) if weighted else None
    out = run1("rms_norm", [x, w] if weighted else [x], {"axis": axis, "eps": 1e-6})
    assert_close(out, F.rms_norm(t(x), normalized, None if w is None else t(w), eps=1e-6))


def test_norm_parameter_shape_is_checked():
    g = Graph()
    x = g.add_input("x", F32, [BATCH, SEQ, 8])
    w = g.add_initializer("w", randn(4))
    with pytest.raises(IRError, match=r"norm: parameter shape \(4,\) != normalized shape \(8,\)"):
        g.create_node("layer_norm", [x, w])


# -- matmul and linear ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a_shape,b_shape",
    [
        ((3, 4), (4, 5)),
        ((2, 3, 4), (4, 5)),
        ((2, 1, 3, 4), (5, 4, 6)),
        ((4,), (2, 4, 3)),
        ((2, 3, 4), (4,)),
        ((4,), (4, 3)),
        ((3, 4), (4,)),
        pytest.param(
            (4,),
            (4,),
        ),
    ],
    ids=str,
)
def test_matmul(a_shape, b_shape):
    a, b = randn(*a_shape, seed=1), randn(*b_shape, seed=2)
    out = run1("matmul", [a, b])
    assert_close(out, torch.matmul(t(a), t(b)))


def test_matmul_inference_errors():
    g = Graph()
    a = g.add_input("a", F32, [3, 4])
    b = g.add_input("b", F32, [5, 6])
    with pytest.raises(IRError, match=r"matmul: inner dims differ \(4 vs 5\)"):
        g.create_node("matmul", [a, b])
    c = g.add_input("c", F32, [BATCH, SEQ, 4])
    d = g.add_input("d", F32, [BATCH, 4, SEQ])
    assert g.create_node("matmul", [c, d]).output.shape == (BATCH, SEQ, SEQ)
    e = g.add_input("e", F32, [4, 7])
    assert g.create_node("matmul", [c, e]).output.shape == (BATCH, SEQ, 7)
    with pytest.raises(IRError, match="matmul: cannot broadcast dims batch and seq"):
        g.create_node("matmul", [c, g.add_input("f", F32, [SEQ, 4, 7])])


@pytest.mark.parametrize("x_shape,bias", [((2, 3, 8), True), ((2, 3, 8), False), ((8,), True)])
def test_linear(x_shape, bias):
    x, w = randn(*x_shape, seed=1), randn(5, 8, seed=2)
    b = randn(5, seed=3) if bias else None
    out = run1("linear", [x, w, b] if bias else [x, w])
    assert_close(out, F.linear(t(x), t(w), None if b is None else t(b)))


def test_linear_inference_errors():
    g = Graph()
    x = g.add_input("x", F32, [BATCH, 8])
    w = g.add_initializer("w", randn(5, 7))
    with pytest.raises(IRError, match="linear: input features 8 != weight in_features 7"):
        g.create_node("linear", [x, w])
    w2 = g.add_initializer("w2", randn(5, 8))
    b = g.add_initializer("b", randn(4))
    with pytest.raises(IRError, match=r"linear: bias shape \(4,\) != \(5,\)"):
        g.create_node("linear", [x, w2, b])


# -- indexing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x_shape,idx_shape,axis,idx_dtype",
    [
        ((10, 4), (2, 3), 0, np.int64),
        ((3, 5, 2), (4,), 1, np.int64),
        ((3, 5, 2), (2, 2), 1, np.int32),
        ((3, 5, 6), (4,), -1, np.int64),
    ],
    ids=str,
)
def test_gather(x_shape, idx_shape, axis, idx_dtype):
    x = randn(*x_shape, seed=1)
    idx = rng(2).integers(0, x_shape[axis], idx_shape).astype(idx_dtype)
    out = run1("gather", [x, idx], {"axis": axis})
    dim = axis % len(x_shape)
    expected = t(x)[(slice(None),) * dim + (t(idx).long(),)]
    assert_close(out, expected)


def test_gather_is_an_embedding_lookup():
    table = randn(11, 6, seed=3)
    ids = rng(4).integers(0, 11, (2, 5))
    assert_close(run1("gather", [table, ids], {"axis": 0}), F.embedding(t(ids), t(table)))


def test_gather_wants_an_integer_index():
    g = Graph()
    x = g.add_input("x", F32, [4, 4])
    with pytest.raises(IRError, match="gather: index dtype is f32, want i64 or i32"):
        g.create_node("gather", [x, x])


@pytest.mark.parametrize(
    "idx_shapes,axis", [([(2, 3), (3,)], 0), ([(4,)], 1), ([(2, 1), (1, 3)], 1)], ids=str
)
def test_index(idx_shapes, axis):
    x = randn(4, 5, 6, seed=1)
    r = rng(2)
    indices = [
        r.integers(0, x.shape[axis + i], shape).astype(np.int64)
        for i, shape in enumerate(idx_shapes)
    ]
    out = run1("index", [x, *indices], {"axis": axis})
    expected = t(x)[(slice(None),) * axis + tuple(t(i) for i in indices)]
    assert_close(out, expected)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(axis):
    x = randn(3, 4, 5, seed=1)
    idx_shape = list(x.shape)
    idx_shape[axis] = 6  # longer than x along axis: indices repeat
    idx = rng(2).integers(0, x.shape[axis], idx_shape)
    out = run1("gather_elements", [x, idx], {"axis": axis})
    assert_close(out, torch.gather(t(x), axis, t(idx)))


@pytest.mark.parametrize("axis", [0, 1])
def test_gather_elements_with_a_smaller_index(axis):
    # torch.gather allows index.size(d) <= x.size(d) for every d != axis.
    x = randn(3, 4, 5, seed=1)
    idx = rng(2).integers(0, x.shape[axis], (2, 3, 4))
    out = run1("gather_elements", [x, idx], {"axis": axis})
    assert_close(out, torch.gather(t(x), axis, t(idx)))


# -- data movement ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "axis,start,end,step", [(1, 1, 6, 2), (-1, 0, 2, 1), (0, 1, 4, 3), (1, 0, 7, 1)], ids=str
)
def test_slice(axis, start, end, step):
    x = randn(4, 7, 3, seed=1)
    out = run1("slice", [x], {"axis": axis, "start": start, "end": end, "step": step})
    index = [slice(None)] * 3
    index[axis] = slice(start, end, step)
    assert_close(out, t(x)[tuple(index)])


@pytest.mark.parametrize("axis", [1, -1])
def test_concat(axis):
    parts = [randn(2, 3, 4, seed=i) for i in range(3)]
    if axis == 1:
        parts = [randn(2, n, 4, seed=n) for n in (2, 3, 1)]
    out = run1("concat", parts, {"axis": axis})
    assert_close(out, torch.cat([t(p) for p in parts], dim=axis))
    assert_close(run1("concat", parts[:1], {"axis": axis}), t(parts[0]))


def test_split():
    x = randn(3, 7, 2, seed=1)
    outs = run_op("split", [x], {"axis": 1, "sizes": (2, 3, 2)})
    expected = torch.split(t(x), [2, 3, 2], dim=1)
    assert len(outs) == 3
    for out, want in zip(outs, expected):
        assert_close(out, want)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (24,), (2, 1, 12), (1, 2, 3, 4)], ids=str)
def test_reshape(shape):
    x = randn(2, 3, 4, seed=1)
    assert_close(run1("reshape", [x], {"shape": shape}), t(x).reshape(shape))


def test_reshape_inference_errors():
    g = Graph()
    x = g.add_input("x", F32, [2, 3, 4])
    with pytest.raises(IRError, match="resolve -1 first"):
        g.create_node("reshape", [x], {"shape": (-1, 4)})
    with pytest.raises(IRError, match=r"cannot reshape .* \(24 elements\) to \(5, 5\) \(25\)"):
        g.create_node("reshape", [x], {"shape": (5, 5)})


@pytest.mark.parametrize("perm", [(0, 2, 1, 3), (3, 2, 1, 0), (0, 1, 2, 3)], ids=str)
def test_permute(perm):
    x = randn(2, 3, 4, 5, seed=1)
    assert_close(run1("permute", [x], {"perm": perm}), t(x).permute(perm))


@pytest.mark.parametrize(
    "x_shape,shape", [((3, 1), (2, 3, 4)), ((1,), (5,)), ((2, 1, 3), (2, 4, 3))]
)
def test_expand(x_shape, shape):
    x = randn(*x_shape, seed=1)
    assert_close(run1("expand", [x], {"shape": shape}), t(x).expand(shape))


def test_expand_rejects_a_non_unit_dim():
    g = Graph()
    x = g.add_input("x", F32, [3, 2])
    with pytest.raises(IRError, match="expand: cannot broadcast dims 2 and 4"):
        g.create_node("expand", [x], {"shape": (3, 4)})


@pytest.mark.parametrize("axes", [(0, 2), (-2,), (0,)], ids=str)
def test_squeeze(axes):
    x = randn(1, 3, 1, 4, seed=1)
    expected = t(x)
    for a in sorted((a % 4 for a in axes), reverse=True):
        expected = expected.squeeze(a)
    assert_close(run1("squeeze", [x], {"axes": axes}), expected)
    with pytest.raises(IRError, match="squeeze: dim 1 has size 3, not 1"):
        run1("squeeze", [x], {"axes": (1,)})


@pytest.mark.parametrize("axes", [(0,), (0, 3), (-1,), (1, -1)], ids=str)
def test_unsqueeze(axes):
    x = randn(3, 4, seed=1)
    rank = x.ndim + len(axes)
    expected = t(x)
    for a in sorted(a % rank for a in axes):
        expected = expected.unsqueeze(a)
    assert_close(run1("unsqueeze", [x], {"axes": axes}), expected)


@pytest.mark.parametrize("op", ["tril", "triu"])
@pytest.mark.parametrize("diagonal", [-1, 0, 2])
def test_tril_triu(op, diagonal):
    x = randn(2, 4, 5, seed=1)
    fn = torch.tril if op == "tril" else torch.triu
    assert_close(run1(op, [x], {"diagonal": diagonal}), fn(t(x), diagonal))


@pytest.mark.parametrize(
    "start,end,step,dtype",
    [
        (0, 7, 1, I64),
        (2, 11, 3, I64),
        (3, 4, 2, DType.int32),
        (0, 5, 1, F32),
        (0.5, 3.0, 0.25, F32),
    ],
    ids=str,
)
def test_arange(start, end, step, dtype):
    out = run1("arange", [], {"start": start, "end": end, "step": step, "dtype": dtype})
    expected = torch.arange(start, end, step, dtype=getattr(torch, dtype.name))
    assert_close(out, expected)


@pytest.mark.parametrize(
    "shape,value,dtype",
    [((2, 3), 1.5, F32), ((4,), 7, I64), ((2, 2), True, DType.bool), ((), -2.25, F32)],
)
def test_full(shape, value, dtype):
    out = run1("full", [], {"shape": shape, "value": value, "dtype": dtype})
    assert_close(out, torch.full(shape, value, dtype=getattr(torch, dtype.name)))


@pytest.mark.parametrize(
    "pads,value", [((1, 2, 0, 0, 3, 1), 0.5), ((0, 0, 2, 0, 0, 1), 0.0)], ids=str
)
def test_pad(pads, value):
    x = randn(2, 3, 4, seed=1)
    out = run1("pad", [x], {"pads": pads, "value": value})
    # IR pads are (begin, end) per dim from the first; F.pad lists them from the last dim.
    torch_pads = [p for i in reversed(range(3)) for p in (pads[2 * i], pads[2 * i + 1])]
    assert_close(out, F.pad(t(x), torch_pads, value=value))
    with pytest.raises(IRError, match="pad: want 6 pad amounts"):
        run1("pad", [x], {"pads": (1, 1)})


# -- conv2d and attention ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stride,padding,bias",
    [((1, 1), (0, 0), True), ((2, 1), (1, 0), True), ((2, 2), (1, 2), False)],
    ids=str,
)
def test_conv2d(stride, padding, bias):
    x, w = randn(2, 3, 7, 6, seed=1), randn(4, 3, 3, 2, seed=2)
    b = randn(4, seed=3) if bias else None
    out = run1("conv2d", [x, w, b] if bias else [x, w], {"stride": stride, "padding": padding})
    expected = F.conv2d(t(x), t(w), None if b is None else t(b), stride=stride, padding=padding)
    assert_close(out, expected)


def _bool_mask(tq: int, tk: int, seed: int) -> np.ndarray:
    mask = rng(seed).random((tq, tk)) < 0.6
    mask[:, 0] = True  # every query keeps at least one key
    return mask


SDPA_CASES = {
    "plain": dict(q=(2, 4, 5, 8), kv=(2, 4, 6, 8)),
    "bool-mask": dict(q=(2, 4, 5, 8), kv=(2, 4, 6, 8), mask="bool"),
    "float-mask": dict(q=(2, 4, 5, 8), kv=(2, 4, 6, 8), mask="float"),
    "causal": dict(q=(2, 4, 6, 8), kv=(2, 4, 6, 8), causal=True),
    "scale": dict(q=(2, 3, 5, 8), kv=(2, 3, 5, 8), scale=0.3),
    "gqa": dict(q=(2, 4, 5, 8), kv=(2, 2, 5, 8), gqa=True),
    "gqa-causal": dict(q=(1, 6, 5, 4), kv=(1, 2, 5, 4), gqa=True, causal=True),
    "3d": dict(q=(3, 5, 8), kv=(3, 7, 8)),
}


@pytest.mark.parametrize("case", sorted(SDPA_CASES))
def test_sdpa(case):
    spec = SDPA_CASES[case]
    q, k, v = randn(*spec["q"], seed=1), randn(*spec["kv"], seed=2), randn(*spec["kv"], seed=3)
    tq, tk = spec["q"][-2], spec["kv"][-2]
    mask = None
    if spec.get("mask") == "bool":
        mask = _bool_mask(tq, tk, seed=4)
    elif spec.get("mask") == "float":
        mask = randn(tq, tk, seed=4)
    attrs = {
        "causal": spec.get("causal", False),
        "scale": spec.get("scale"),
        "gqa": spec.get("gqa", False),
    }
    out = run1("sdpa", [q, k, v] if mask is None else [q, k, v, mask], attrs)
    expected = F.scaled_dot_product_attention(
        t(q),
        t(k),
        t(v),
        attn_mask=None if mask is None else t(mask),
        is_causal=attrs["causal"],
        scale=attrs["scale"],
        enable_gqa=attrs["gqa"],
    )
    assert_close(out, expected)


# -- NumPy scalars from kernels ------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["exp", "neg", "relu", "sigmoid", "gelu"])
def test_unary_op_on_a_0d_tensor(op):
    x = np.array(0.75, dtype=np.float32)
    out = run1(op, [x])
    assert out.shape == ()


def test_gather_with_a_0d_index():
    x = randn(5, seed=1)
    out = run1("gather", [x, np.array(3)], {"axis": 0})
    assert out.shape == () and out == x[3]


def test_0d_results_that_already_work():
    x = np.array(0.75, dtype=np.float32)
    assert_close(run1("add", [x, np.array(1.5, dtype=np.float32)]), torch.tensor(2.25))
    assert_close(run1("reduce_sum", [randn(3, seed=1)]), torch.sum(t(randn(3, seed=1))))
    assert run1("cast", [x], {"dtype": DType.float64}).shape == ()


# -- symbolic dims bound at run time ---------------------------------------------------------------------


def build_symbolic_graph(seed: int = 0) -> Graph:
    """A graph over x: f32[batch,seq,8] whose attributes mention the symbols."""
    g = Graph("sym")
    x = g.add_input("x", F32, [BATCH, SEQ, 8])
    w = g.add_initializer("w", randn(16, 8, seed=seed))
    b = g.add_initializer("b", randn(16, seed=seed + 1))
    h = g.create_node("linear", [x, w, b]).output
    heads = g.create_node("reshape", [h], {"shape": (BATCH, SEQ, 4, 4)}).output
    heads = g.create_node("permute", [heads], {"perm": (0, 2, 1, 3)}).output
    probs = g.create_node("softmax", [heads], {"axis": -1}).output
    tail = g.create_node("slice", [x], {"axis": 1, "start": 1, "end": SEQ}).output
    pos = g.create_node("arange", [], {"end": SEQ, "dtype": I64}).output
    pos = g.create_node("cast", [pos], {"dtype": F32}).output
    pos = g.create_node("unsqueeze", [pos], {"axes": (-1,)}).output
    shifted = g.create_node("add", [x, pos]).output
    flat = g.create_node("reshape", [shifted], {"shape": (BATCH, SEQ * 8)}).output
    both = g.create_node("concat", [x, x], {"axis": 1}).output
    g.outputs = [probs, tail, flat, both]
    g.verify()
    return g


def test_symbolic_graph_types():
    g = build_symbolic_graph()
    assert [str(v.type) for v in g.outputs] == [
        "f32[batch,4,seq,4]",
        "f32[batch,seq-1,8]",
        "f32[batch,8*seq]",
        "f32[batch,2*seq,8]",
    ]


@pytest.mark.parametrize("batch,seq", [(2, 3), (3, 5), (1, 1)])
def test_symbolic_graph_runs_at_several_sizes(batch, seq):
    g = build_symbolic_graph()
    x = randn(batch, seq, 8, seed=batch * 10 + seq)
    outs = run_graph(g, [x])
    env = {"batch": batch, "seq": seq}
    for v, out in zip(g.outputs, outs):
        assert out.shape == tuple(evaluate(d, env) for d in v.shape)
    tx = t(x)
    w, b = t(g.initializers["w"].const), t(g.initializers["b"].const)
    heads = F.linear(tx, w, b).reshape(batch, seq, 4, 4).permute(0, 2, 1, 3)
    assert_close(outs[0], torch.softmax(heads, dim=-1))
    assert_close(outs[1], tx[:, 1:seq])
    assert_close(outs[2], (tx + torch.arange(seq, dtype=torch.float32)[:, None]).reshape(batch, -1))
    assert_close(outs[3], torch.cat([tx, tx], dim=1))


def test_run_graph_checks_inputs():
    g = Graph()
    x = g.add_input("x", F32, [BATCH, SEQ])
    y = g.add_input("y", F32, [SEQ, 4])
    g.outputs = [g.create_node("matmul", [x, y]).output]
    with pytest.raises(ReferenceError, match="input y: dim 0 is 5, but seq is 3 elsewhere"):
        run_graph(g, [randn(2, 3), randn(5, 4)])
    with pytest.raises(ReferenceError, match="input y: dim 1 is 6, expected shape"):
        run_graph(g, [randn(2, 3), randn(3, 6)])
    with pytest.raises(ReferenceError, match="input x: rank 3"):
        run_graph(g, [randn(2, 3, 1), randn(3, 4)])
    with pytest.raises(ReferenceError, match="input x: dtype float64, expected float32"):
        run_graph(g, [randn(2, 3).astype(np.float64), randn(3, 4)])
    with pytest.raises(ReferenceError, match="takes 2 inputs, got 1"):
        run_graph(g, [randn(2, 3)])


def test_run_graph_keeps_intermediates():
    g = build_symbolic_graph()
    x = randn(2, 3, 8, seed=5)
    outs, kept = run_graph(g, [x], keep=["linear", "arange"])
    assert sorted(kept) == ["arange", "linear"]
    np.testing.assert_array_equal(kept["arange"], np.arange(3))
    assert len(outs) == 4
    _, everything = run_graph(g, [x], keep=["*"])
    assert len(everything) == len(g.nodes)


def test_kernel_failure_names_the_node():
    g = Graph()
    x = g.add_input("x", DType.int64, [3])
    node = g.create_node("div", [x, x], meta={"module": "blocks.0"})
    g.outputs = [node.output]
    with pytest.raises(
        ReferenceError, match=r"div node %div \(from blocks.0\) failed: div on integers"
    ):
        run_graph(g, [rng().integers(1, 5, 3)])


def test_sdpa_default_scale_is_one_over_sqrt_head_dim():
    q = randn(1, 2, 3, 16, seed=1)
    k = randn(1, 2, 3, 16, seed=2)
    v = randn(1, 2, 3, 16, seed=3)
    out = run1("sdpa", [q, k, v])
    scores = torch.softmax(t(q) @ t(k).transpose(-1, -2) / math.sqrt(16), dim=-1)
    assert_close(out, scores @ t(v))
