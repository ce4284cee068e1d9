"""The op registry: inference agrees with the NumPy kernels, and the kernels agree with torch.

Most checks build a one-node graph with ``Graph.create_node``, verify it, call the op's
kernel directly (to see its raw output shape and dtype) and run the graph through the
reference interpreter. Eager torch on the same data is the oracle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes
from op_helpers import (
    BATCH,
    F32,
    I64,
    SEQ,
    assert_close,
    positive,
    randn,
    rng,
    run1,
    t,
)  # fmt: skip

from tgraph.ir import DType, Graph, IRError
from tgraph.ir.core import freeze
from tgraph.ir.ops import REQUIRED, all_ops, get_op

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
BASE_OP_MODULES = {
    f"tgraph.ir.ops.{m}"
    for m in ("elementwise", "nn", "pool", "reduce", "resize", "scatter", "shape_ops")
}


def test_every_base_op_has_a_spot_check_here():
    here = Path(__file__).parent
    source = "".join(p.read_text() for p in sorted(here.glob("test_ops*.py")))
    base = [name for name, op in all_ops().items() if op.infer.__module__ in BASE_OP_MODULES]
    assert len(base) >= 60
    missing = [name for name in base if f'"{name}"' not in source]
    assert not missing, f"ops without a check in tests/test_ops*.py: {missing}"


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
        elif name.startswith("bitwise"):
            a, b = (10 * x).astype(np.int64), (10 * y).astype(np.int64)
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
    "acos": (torch.acos, lambda *s, seed: np.tanh(randn(*s, seed=seed)), {}),
    "round": (torch.round, lambda *s, seed: randn(*s, seed=seed) * 3, {}),
    "sign": (torch.sign, lambda *s, seed: np.round(randn(*s, seed=seed)), {}),  # zeros too
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
