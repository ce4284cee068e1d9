"""Size conditions of a trace (tgraph/frontend/guards.py): a model that branches on an input
size, and input dims torch.export made multiples, compile to graphs that check the sizes
they hold for at every call instead of answering wrongly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sweep_helpers import BACKENDS, check_eager, features
from torch import nn
from torch.export import Dim

import tgraph
from tgraph.api import InputError
from tgraph.frontend.guards import shape_guards
from tgraph.ir import DType, Graph, SymDim


class PadToInput(nn.Module):
    """SEW's encoder: pooled by 2, upsampled by 2, padded back only if that came out short."""

    def forward(self, x):  # (B, T, 8)
        pooled = F.avg_pool1d(x.transpose(1, 2), 2)  # (B, 8, T // 2)
        up = torch.cat([pooled, pooled], -1).transpose(1, 2)  # (B, 2 * (T // 2), 8)
        if up.shape[1] < x.shape[1]:
            up = F.pad(up, (0, 0, 0, x.shape[1] - up.shape[1]))
        return up


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_size_branch_is_checked_at_every_call(backend):
    # Traced at an even length (no pad); other even lengths match eager, an odd one (which
    # eager pads) is refused in one line naming the condition, instead of a wrong shape.
    cm = check_eager(PadToInput(), features(), backend, sizes=((1, 8), (3, 12)))
    with pytest.raises(InputError, match=r"seq=7 break '2\*\(seq//2\) >= seq'") as info:
        cm(*features()(1, 7, 0))
    assert "\n" not in str(info.value) and "compile with example inputs" in str(info.value)


def test_guards_survive_save_and_load(tmp_path):
    cm = tgraph.compile(PadToInput(), features()(2, 16, 0), backend="ort")
    cm.save(str(tmp_path / "m"))
    loaded = tgraph.load(str(tmp_path / "m"))
    assert loaded.graph.meta["shape_guards"] == cm.graph.meta["shape_guards"]
    with pytest.raises(InputError, match="seq=9 break"):
        loaded(*features()(2, 9, 0))


class Groups(nn.Module):
    def forward(self, x):  # (B, 4k, 8) -> (B, k, 8): sums of groups of 4 steps
        return x.reshape(x.shape[0], -1, 4, 8).sum(2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_input_dim_export_made_a_multiple_is_a_named_symbol(backend):
    # dynamic_shapes seq = 4 * k (what torch.export suggests for models that reshape by 4):
    # the graph input is a bare `seq`, k is seq // 4, and seq % 4 == 0 is checked.
    ep = torch.export.export(Groups(), features()(2, 16, 0), strict=False,
                             dynamic_shapes={"x": {0: Dim("b"), 1: 4 * Dim("k")}})  # fmt: skip
    cm = tgraph.compile(ep, features()(2, 16, 0), backend=backend)
    assert [str(d) for d in cm.graph.inputs[0].shape] == ["batch", "seq", "8"]
    for seed, (b, s) in enumerate([(1, 8), (3, 20)], start=1):
        x = features()(b, s, seed)
        torch.testing.assert_close(cm(*x), Groups()(*x), rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="seq=13 break 'seq % 4 == 0'"):
        cm(*features()(3, 13, 0))


class OddGroups(nn.Module):
    def forward(self, x):  # (B, 2k + 1, 8): a first step, then pairs of steps summed
        return x[:, :1] + x[:, 1:].reshape(x.shape[0], -1, 2, 8).sum(2)


def test_a_multiple_with_an_offset_reads_back_its_symbol():
    ep = torch.export.export(OddGroups(), features()(2, 17, 0), strict=False,
                             dynamic_shapes={"x": {0: Dim("b"), 1: 2 * Dim("k") + 1}})  # fmt: skip
    cm = tgraph.compile(ep, features()(2, 17, 0), backend="reference")
    x = features()(3, 9, 1)
    torch.testing.assert_close(cm(*x), OddGroups()(*x), rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="seq=10 break 'seq % 2 == 1'"):
        cm(*features()(3, 10, 0))


def test_guard_code_becomes_ir_dims_and_inexpressible_guards_are_left_out():
    g = Graph("g")
    g.add_input("x", DType.float32, (SymDim.symbol("batch"), SymDim.symbol("seq"), 8))
    code = [
        "2*(L['x'].size()[1] // 2) >= L['x'].size()[1]",
        "max(1, L['x'].size()[0]) < L['x'].size()[1] <= 512",
        "L['x'].size()[2] == 8",  # static: always true, dropped
        "(L['x'].size()[0] % L['x'].size()[1]) != 0",  # a symbolic divisor
        "L['x'].size()[1] == 3 or L['x'].size()[1] > 5",  # an or
        "L['y'].size()[0] != 1",  # not a graph input
    ]
    assert [(x["text"], x["clauses"]) for x in shape_guards(code, g)] == [
        ("2*(seq//2) >= seq", [["2*(seq//2)-seq", ">="]]),
        ("batch < seq and seq <= 512", [["batch-seq", "<"], ["seq-512", "<="]]),  # batch >= 1
    ]


def test_a_size_divided_by_a_symbolic_size_converts_when_exact():
    # SEW-D's view(-1, ...): numel // (the other dims), a division sympy leaves unreduced
    import sympy
    from torch.utils._sympy.functions import FloorDiv

    from tgraph.frontend.convert import SymbolTable, UnsupportedError

    b, s = sympy.symbols("s0 s1", integer=True, positive=True)
    table = SymbolTable()
    table.name(b, "batch")
    table.name(s, "seq")
    n = FloorDiv(s, 2) + 1
    assert str(table.convert(FloorDiv(4 * b * n**2, n * (4 * FloorDiv(s, 2) + 4)))) == "batch"
    with pytest.raises(UnsupportedError, match="a division by a symbolic size"):
        table.convert(FloorDiv(b * s, s + b))
