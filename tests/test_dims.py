"""Property tests of symbolic-dim arithmetic (tgraph.ir.dims).

Expressions are drawn as small trees over the symbols ``batch``, ``seq`` and ``d`` and
plain ints, combined with ``+ - *`` and ``// %`` by positive ints. Each tree is turned
into a ``SymDim`` and, separately, evaluated with Python ints; the two must agree.
"""

from __future__ import annotations

import operator
import pickle

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tgraph.ir.dims import SymDim, evaluate, parse_dim, simplify

SYMBOLS = ("batch", "seq", "d")
BATCH, SEQ, D = (SymDim.symbol(s) for s in SYMBOLS)

PROPERTY = settings(max_examples=50, deadline=None, database=None)

OPS = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "//": operator.floordiv,
    "%": operator.mod,
}

# -- strategies ----------------------------------------------------------------------------------

# A tree is an int, a symbol name, or (op, left, right); // and % always have a positive
# int on the right.
leaves = st.one_of(st.integers(-6, 6), st.sampled_from(SYMBOLS))
divisors = st.integers(1, 5)


def _extend(children):
    return st.one_of(
        st.tuples(st.sampled_from(["+", "-", "*"]), children, children),
        st.tuples(st.sampled_from(["//", "%"]), children, divisors),
    )


trees = st.recursive(leaves, _extend, max_leaves=6)
bindings = st.fixed_dictionaries({s: st.integers(1, 40) for s in SYMBOLS})


def build(tree):
    """The DimLike a tree denotes."""
    if isinstance(tree, int):
        return tree
    if isinstance(tree, str):
        return SymDim.symbol(tree)
    op, left, right = tree
    return OPS[op](build(left), build(right))


def value(tree, env: dict[str, int]) -> int:
    """The tree evaluated with plain Python ints."""
    if isinstance(tree, int):
        return tree
    if isinstance(tree, str):
        return env[tree]
    op, left, right = tree
    return OPS[op](value(left, env), value(right, env))


dims = trees.map(build)

# Polynomials in + - * only (the round-trip tests below also cover // and % atoms).
poly_trees = st.recursive(
    leaves, lambda c: st.tuples(st.sampled_from(["+", "-", "*"]), c, c), max_leaves=6
)
polys = poly_trees.map(build)


def _unambiguous(dim) -> bool:
    """No monomial holds a // or % atom next to a coefficient, a minus or a second such atom."""
    if not isinstance(dim, SymDim):
        return True
    for mono, coeff in dim.terms:
        opaque = [atom for atom in mono if atom.kind != "sym"]
        if opaque and (coeff != 1 or len(opaque) > 1):
            return False
    return True


@st.composite
def printable_dims(draw):
    total = draw(polys)
    for _ in range(draw(st.integers(0, 2))):
        atom = OPS[draw(st.sampled_from(["//", "%"]))](draw(polys), draw(st.integers(2, 5)))
        if draw(st.booleans()):
            atom = atom * SymDim.symbol(draw(st.sampled_from(SYMBOLS)))
        total = total + atom
    assume(_unambiguous(total))
    return total


# -- evaluation ------------------------------------------------------------------------------------


@PROPERTY
@given(trees, bindings)
def test_evaluate_matches_integer_arithmetic(tree, env):
    assert evaluate(build(tree), env) == value(tree, env)


@PROPERTY
@given(dims, dims, st.sampled_from(["+", "-", "*"]), bindings)
def test_evaluate_is_a_ring_homomorphism(a, b, op, env):
    fn = OPS[op]
    assert evaluate(fn(a, b), env) == fn(evaluate(a, env), evaluate(b, env))


@PROPERTY
@given(dims, st.sampled_from(["//", "%"]), divisors, bindings)
def test_evaluate_floordiv_and_mod(a, op, k, env):
    fn = OPS[op]
    assert evaluate(fn(a, k), env) == fn(evaluate(a, env), k)


@PROPERTY
@given(dims, bindings)
def test_evaluate_returns_int(a, env):
    result = evaluate(a, env)
    assert type(result) is int


def test_evaluate_names_a_missing_binding():
    with pytest.raises(KeyError, match="seq"):
        evaluate(BATCH * SEQ, {"batch": 2})


# -- canonical form --------------------------------------------------------------------------------


@PROPERTY
@given(dims, dims, dims)
def test_canonical_equality(a, b, c):
    assert a + b == b + a
    assert a * b == b * a
    assert (a + b) + c == a + (b + c)
    assert (a * b) * c == a * (b * c)
    assert a * (b + c) == a * b + a * c
    assert (a + 1) - 1 == a
    assert a - a == 0
    negated = -a
    assert -negated == a
    assert a * 1 == a
    assert a * 0 == 0


@PROPERTY
@given(dims, dims)
def test_equal_dims_hash_equal(a, b):
    left, right = a + b, b + a
    assert hash(left) == hash(right)
    assert len({left, right}) == 1
    assert {left: "x"}[right] == "x"


def test_canonical_examples():
    assert (SEQ + 1) - 1 == SEQ
    assert BATCH * SEQ == SEQ * BATCH
    assert str(SEQ * BATCH) == "batch*seq"
    assert (2 * SEQ + 2) // 2 == SEQ + 1
    assert SEQ // 1 == SEQ
    assert SEQ != BATCH
    assert SEQ != "seq"
    assert SEQ + 1 != SEQ
    assert (SEQ + 1) // 2 == (1 + SEQ) // 2
    assert hash((SEQ + 1) // 2) == hash((1 + SEQ) // 2)


def test_symbol_structure():
    assert SEQ.is_symbol() and SEQ.name == "seq"
    for not_bare in (SEQ + 1, 2 * SEQ, SEQ * BATCH, SEQ // 2):
        assert not not_bare.is_symbol()
        with pytest.raises(ValueError, match="not a bare symbol"):
            _ = not_bare.name
    assert ((SEQ + BATCH) // 2 * D).free_symbols() == {"batch", "seq", "d"}
    assert (3 * SEQ + 4).constant_term() == 4


def test_symdim_is_immutable():
    with pytest.raises(AttributeError, match="immutable"):
        SEQ.foo = 1  # type: ignore[attr-defined]


# -- constants come back as int --------------------------------------------------------------------


@PROPERTY
@given(dims, st.integers(-20, 20))
def test_constant_results_are_plain_int(a, n):
    for const in (a - a, (a + n) - a, a * 0, a * 0 + n):
        assert type(const) is int
    assert (a + n) - a == n


@PROPERTY
@given(dims)
def test_simplify_is_idempotent(a):
    once = simplify(a)
    assert simplify(once) == once
    assert type(simplify(a - a)) is int


def test_constant_examples():
    assert type((SEQ + 3) - SEQ) is int
    assert (SEQ + 3) - SEQ == 3
    assert (2 * SEQ) % 2 == 0 and type((2 * SEQ) % 2) is int
    assert SEQ % 1 == 0
    assert simplify(7) == 7
    assert simplify(SymDim({(): 5})) == 5
    assert type(simplify(SymDim({(): 5}))) is int
    assert parse_dim("2*3+1") == 7
    assert type(parse_dim("2*3+1")) is int
    assert parse_dim("seq-seq") == 0


# -- text and pickle round trips -------------------------------------------------------------------


@PROPERTY
@given(printable_dims(), bindings)
def test_str_parse_round_trip(a, env):
    back = parse_dim(str(a))
    assert back == a
    assert hash(back) == hash(a)
    assert evaluate(back, env) == evaluate(a, env)


@PROPERTY
@given(printable_dims())
def test_pickle_round_trip(a):
    back = pickle.loads(pickle.dumps(a))
    assert back == a
    shape = (2, a, SEQ, 8)
    assert pickle.loads(pickle.dumps(shape)) == shape


def test_parse_examples():
    assert parse_dim("batch") == BATCH
    assert parse_dim(" 2 * seq + 1 ") == 2 * SEQ + 1
    assert parse_dim("(seq)//2") == SEQ // 2
    assert parse_dim("(seq+1)%3*batch") == (SEQ + 1) % 3 * BATCH
    assert parse_dim("-seq+4") == 4 - SEQ
    assert parse_dim("seq_len2") == SymDim.symbol("seq_len2")


# str() writes `3*(seq+1)//2` for 3*((seq+1)//2), which reads back as (3*seq+3)//2;
# `-(seq)//2` reads back as (-seq)//2. Pickle goes through the same text.
AMBIGUOUS = [
    pytest.param(3 * ((SEQ + 1) // 2), id="coeff-times-floordiv"),
    pytest.param(-(SEQ // 2), id="negated-floordiv"),
    pytest.param(2 * (SEQ % 3), id="coeff-times-mod"),
    pytest.param((BATCH // 3) * (SEQ // 2), id="floordiv-times-floordiv"),
    pytest.param(SEQ - BATCH // 2, id="leading-negative-floordiv-term"),
]


@pytest.mark.parametrize("dim", AMBIGUOUS)
def test_str_parse_round_trip_ambiguous_atoms(dim):
    assert parse_dim(str(dim)) == dim


@pytest.mark.parametrize("dim", AMBIGUOUS)
def test_pickle_round_trip_ambiguous_atoms(dim):
    back = pickle.loads(pickle.dumps(dim))
    assert back == dim
    for seq in range(1, 8):
        env = {"batch": 7, "seq": seq, "d": 1}
        assert evaluate(back, env) == evaluate(dim, env)


# -- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, -3, 2.0, True, None, "2"])
def test_floordiv_and_mod_need_a_positive_int(bad):
    with pytest.raises(TypeError, match="positive int"):
        SEQ // bad
    with pytest.raises(TypeError, match="positive int"):
        SEQ % bad


@PROPERTY
@given(dims.filter(lambda a: isinstance(a, SymDim)))
def test_floordiv_by_a_symbol_raises(a):
    with pytest.raises(TypeError):
        SEQ // a
    with pytest.raises(TypeError):
        a % SEQ
    with pytest.raises(TypeError):
        12 // a
    with pytest.raises(TypeError):
        12 % a


def test_unsupported_operands_raise_type_error():
    with pytest.raises(TypeError):
        SEQ + 1.5
    with pytest.raises(TypeError):
        SEQ * "x"
    with pytest.raises(TypeError):
        SEQ / 2


@pytest.mark.parametrize("text", ["seq//0", "4//0", "seq%0", "seq//batch", "seq%batch"])
def test_parse_division_by_zero_or_symbol(text):
    with pytest.raises(TypeError):
        parse_dim(text)


@pytest.mark.parametrize("name", ["", "1seq", "-x", "+", "(seq)", "2"])
def test_bad_symbol_names(name):
    with pytest.raises(ValueError, match="bad symbol name"):
        SymDim.symbol(name)


@pytest.mark.parametrize("name", ["a+b", "seq-1", "x y", "b*s", "s//2"])
def test_symbol_names_with_operators_are_rejected(name):
    with pytest.raises(ValueError, match="bad symbol name"):
        SymDim.symbol(name)


@pytest.mark.parametrize("text", ["", "seq+", "(seq", "seq)", "2**seq", "seq$", "*seq"])
def test_parse_errors(text):
    with pytest.raises(ValueError):
        parse_dim(text)


# -- max / min (size clamps such as max(0, n - seq)) ------------------------------------------


@PROPERTY
@given(trees, trees, st.sampled_from(["max", "min"]), bindings)
def test_max_min_evaluate_round_trip_and_commute(a, b, kind, env):
    from tgraph.ir.dims import dim_max, dim_min

    fn, py = (dim_max, max) if kind == "max" else (dim_min, min)
    x, y = build(a), build(b)
    try:
        want = py(evaluate(x, env), evaluate(y, env))
    except ZeroDivisionError:
        assume(False)
    d = fn(x, y)
    assert evaluate(d, env) == want
    assert fn(y, x) == d  # one canonical order
    assert evaluate(parse_dim(str(d)), env) == want
    assert pickle.loads(pickle.dumps(d)) == d
    assert evaluate(d * 2 + 1, env) == 2 * want + 1


def test_max_min_examples():
    from tgraph.ir.dims import dim_max, dim_min

    assert dim_max(3, 5) == 5 and dim_min(3, 5) == 3
    assert dim_max(SEQ, SEQ) == SEQ
    assert dim_max(SEQ + 2, SEQ) == SEQ + 2 and dim_min(SEQ + 2, SEQ) == SEQ  # constant gap
    clamp = dim_max(0, 20 - SEQ)  # a pad to a minimum length
    assert str(clamp) == "max(-seq+20,0)" and clamp.free_symbols() == {"seq"}
    assert evaluate(clamp, {"seq": 3}) == 17 and evaluate(clamp, {"seq": 27}) == 0
    assert parse_dim("max(-seq+20,0)") == clamp
    assert parse_dim("min(batch,4)*2") == 2 * dim_min(BATCH, 4)
    with pytest.raises(ValueError, match="two arguments"):
        parse_dim("max(seq)")


def test_max_min_of_dims_known_apart_for_every_size():
    # symbols are sizes >= 1: MPT's 1 - max(1 - seq, 0) is 1, not a new atom
    from tgraph.ir.dims import dim_max, dim_min, lower_bound

    assert 1 - dim_max(1 - SEQ, 0) == 1 and dim_min(1 - SEQ, 0) == 1 - SEQ
    assert dim_max(SEQ, 1) == SEQ and dim_max(BATCH, 1) * 2 == 2 * BATCH
    assert dim_max(SEQ - 1, 0) == SEQ - 1 and dim_min(SEQ % 4, 0) == 0
    assert dim_max(SEQ // 2, 0) == SEQ // 2
    assert lower_bound(BATCH * SEQ + SEQ % 3 + 2) == 3 and lower_bound(SEQ // 4 - 1) == -1
    # no sign for every size: the atom stays
    assert str(dim_max(SEQ - 2, 0)) == "max(0,seq-2)" and str(dim_min(256, SEQ)) == "min(256,seq)"
    assert lower_bound(3 - SEQ) is None and lower_bound(dim_min(SEQ - 4, BATCH)) is None


def test_floordiv_and_mod_pull_out_multiples_of_the_divisor():
    # convolution arithmetic: ((seq - 10) // 5) + 1 is seq // 5 - 1, whichever way it arrives
    assert (SEQ - 10) // 5 + 1 == SEQ // 5 - 1
    assert (SEQ + 2 * BATCH + 7) // 2 == (SEQ + 1) // 2 + BATCH + 3
    assert (SEQ - 1) % 4 == (SEQ + 3) % 4
    assert (4 * SEQ + 6) % 4 == 2
    assert str((SEQ - 3) // 2) == "((seq+1)//2)-2"


def test_nested_floordiv_merges():
    # two stride-5 and stride-2 convolutions: ((seq//5) - 1) // 2 arrives as seq//10 from export
    assert (SEQ // 5) // 2 == SEQ // 10
    assert (SEQ // 5 - 1) // 2 == (SEQ + 5) // 10 - 1
    assert ((SEQ + 1) // 2 + 1) // 3 == (SEQ + 3) // 6
