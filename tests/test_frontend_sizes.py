"""Symbolic sizes of the third sweep round, each checked against eager on every backend.

Chunked scans (Mamba 2, chunked linear attention: Falcon-H1, Nemotron-H, Bailing) pad a
length to a multiple of the chunk and split it into chunks. Export writes the chunk size as
``padded // (padded // 4)``, a division by a symbolic size that the frontend proves equal to
4 per residue class (tgraph/frontend/periodic.py); at a traced length of one chunk it also
fixes the chunk count to 1 by a guard, which the frontend substitutes and every call checks
(tgraph/frontend/dim_facts.py). A clamp such as MPT's ``1 - max(1 - seq, 0)`` is 1 for every
size >= 1 (tgraph/ir/dims.py), and the call boundary refuses a symbolic dim of 0."""

from __future__ import annotations

import pytest
import sympy
import torch
import torch.nn.functional as F
from sweep_helpers import BACKENDS, check_eager, features
from torch import nn
from torch.utils._sympy.functions import FloorDiv, Mod

from tgraph.api import InputError
from tgraph.frontend.convert import SymbolTable
from tgraph.frontend.periodic import exact_form


class Chunked(nn.Module):
    """(B, T, C) -> cumulative sums within chunks of 4 steps; ``one_chunk_branch`` adds 1
    when there is one chunk (the model branches on the chunk count)."""

    def __init__(self, one_chunk_branch: bool = False):
        super().__init__()
        self.one_chunk_branch = one_chunk_branch

    def forward(self, x):
        b, t, c = x.shape
        x = F.pad(x, (0, 0, 0, (4 - t % 4) % 4))
        n = x.shape[1] // 4
        y = x.reshape(b, n, -1, c).cumsum(2) * 2  # (B, n, 4, C): -1 is padded // n
        if self.one_chunk_branch and n == 1:
            y = y + 1
        return y.reshape(b, -1, c)[:, :t]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_padded_length_split_into_chunks_matches_eager(backend):
    check_eager(Chunked(), features(), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_chunk_count_fixed_by_a_guard_is_substituted_and_checked(backend):
    # traced at 3 steps (one chunk) and checked at 2 and 4: the graph of the n == 1 branch
    cm = check_eager(Chunked(one_chunk_branch=True), features(), backend, ((1, 2), (3, 4)), (2, 3))
    with pytest.raises(InputError, match=r"seq=5 break .*//4\) == 1'"):
        cm(torch.randn(2, 5, 8))  # two chunks: the other branch, refused


def _padded(s, k: int):
    return s + Mod(k - Mod(s, k), k)


def test_exact_forms_are_proved_for_every_residue():
    s, b = sympy.symbols("s1 s0", integer=True, positive=True)
    padded = _padded(s, 64)
    assert exact_form(FloorDiv(padded, FloorDiv(padded, 64))) == 64
    assert exact_form(Mod(padded, FloorDiv(padded, 64))) == 0
    assert exact_form(FloorDiv(b * padded, FloorDiv(padded, 64))) == 64 * b
    # equal at some sizes only (s // (s//64 + 1) is 63 at 63, 32 at 64): no form
    assert exact_form(FloorDiv(s, FloorDiv(s, 64) + 1)) is None
    assert exact_form(FloorDiv(s, FloorDiv(s, 64))) is None


def test_the_symbol_table_reads_a_chunk_size_and_a_fixed_chunk_count():
    s = sympy.Symbol("s1", integer=True, positive=True)
    padded = _padded(s, 128)
    table = SymbolTable()
    table.name(s, "seq")
    assert table.convert(FloorDiv(padded, FloorDiv(padded, 128))) == 128
    count = table.convert(FloorDiv(padded, 128))
    assert str(count) == "((((127*(seq%128))%128)+seq)//128)"
    table.fixed = {str(count): 1}
    assert table.convert(FloorDiv(padded, 128)) == 1
    assert table.convert(sympy.Max(1, 64 * FloorDiv(padded, 128))) == 64


class ClampedSlice(nn.Module):
    """MPT's alibi bias: a size-1 dim sliced from ``max(0, 1 - seq)`` (size
    ``1 - max(1 - seq, 0)``, which is 1 for every size >= 1) and added to (B, T, C)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(1, 1, 8))

    def forward(self, x):
        return x + self.bias[:, max(0, 1 - x.shape[1]) :]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_clamp_that_is_constant_for_every_size_broadcasts(backend):
    check_eager(ClampedSlice(), features(), backend)


def test_a_symbolic_dim_of_zero_is_refused_at_the_call():
    cm = check_eager(ClampedSlice(), features(), "reference", sizes=((1, 3),))
    with pytest.raises(
        InputError, match="seq is 0, and a compiled model takes sizes of at least 1"
    ):
        cm(torch.randn(2, 0, 8))


class LastPositions(nn.Module):
    """MPT's and MiniMax's bias of the last ``seq`` of 8 positions, ``bias[max(0, 8 - seq):]``
    (size ``8 - max(0, 8 - seq)``), added to (B, T, C): export guards ``seq <= 8`` as
    ``seq == 8 - max(0, 8 - seq)``."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        return x + self.bias[max(0, 8 - x.shape[1]) :]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_clamp_a_guard_equates_to_a_dim_is_substituted_and_checked(backend):
    cm = check_eager(LastPositions(), features(), backend, ((1, 3), (3, 8)), (2, 5))
    with pytest.raises(InputError, match="seq=9 break"):
        cm(torch.randn(2, 9, 8))


def test_guards_that_fix_a_size_give_its_value():
    from tgraph.frontend.dim_facts import fixed_sizes
    from tgraph.ir import SymDim

    seq = SymDim.symbol("seq")
    dims = {"x": (SymDim.symbol("batch"), seq)}
    size = "L['x'].size()[1]"
    code = [
        f"(({size} + ((4 + (-1)*({size} % 4)) % 4)) // 4) == 1",  # one chunk
        f"{size} == (8 + ((-1)*max(0, 8 + ((-1)*{size}))))",  # seq <= 8
        f"2*min(16, {size}) == 2*{size} + 4",
        f"2*min(32, {size}) == {size} + 3",  # not a whole solution: nothing fixed
        f"{size} == 8 or {size} == 9",  # an or: not expressible
        f"max(1, {size}) == max(1, {size})",
    ]
    assert fixed_sizes(code, dims) == {
        "((((3*(seq%4))%4)+seq)//4)": 1,
        "max(-seq+8,0)": 8 - seq,
        "min(16,seq)": seq + 2,
    }


class Branch(nn.Module):
    """Branches on the length: export keeps the branch taken at 16 steps as the range
    ``seq >= 9``, with no guard code."""

    def forward(self, x):
        return x[:, 4:] * 2 if x.shape[1] > 8 else x


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lower_bound_of_the_trace_is_checked_at_the_call(backend):
    # before, a call at 7 steps ran the other branch's graph and returned a wrong shape
    cm = check_eager(Branch(), features(), backend, ((1, 9), (3, 12)))
    assert cm.graph.meta["dim_limits"] == {"seq": {"min": 9}}
    with pytest.raises(InputError, match="sequence length 7 is below 9, the least the traced"):
        cm(torch.randn(1, 7, 8))


def test_export_s_floor_of_2_for_automatic_dims_is_no_limit():
    from tgraph.frontend.limits import dim_limits

    s, t = sympy.symbols("s0 s1", integer=True)
    ranges = {s: _Range(2, sympy.oo), t: _Range(3, 64)}
    names = {s: "batch", t: "seq"}
    assert dim_limits(ranges, names, [("n_positions", 64)]) == {
        "seq": {"max": 64, "source": "n_positions", "min": 3}
    }
    assert dim_limits(ranges, names, [], no_floor_below=1)["batch"] == {"min": 2}


class _Range:
    def __init__(self, lower, upper):
        self.lower, self.upper = sympy.sympify(lower), sympy.sympify(upper)
