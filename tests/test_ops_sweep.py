"""Op registry checks of the ops the architecture sweep needed: resize, topk, logsumexp (see
test_ops.py; sign is with the unary ops there)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from op_helpers import assert_close, randn, run1, run_op, t

from tgraph.ir import DType, Graph, IRError, SymDim


@pytest.mark.parametrize(
    "size, scales, mode, align",
    [
        ((12, 20), (), "linear", False),
        ((12, 20), (), "linear", True),
        ((5, 7), (), "linear", False),  # downsampling
        ((11, 26), (1.9, 2.6), "linear", False),  # factors that are not size ratios
        ((12, 20), (), "cubic", False),
        ((12, 20), (), "cubic", True),
        ((5, 7), (), "cubic", False),  # downsampling: taps past both edges
        ((11, 26), (1.9, 2.6), "cubic", False),
        ((12, 20), (), "nearest", False),
        ((17, 11), (), "nearest", False),
        ((11, 26), (1.9, 2.6), "nearest", False),
    ],
)
def test_resize_against_interpolate(size, scales, mode, align):
    x = randn(2, 3, 6, 10, seed=1)
    attrs = {"size": size, "scales": scales, "mode": mode, "align_corners": align}
    kind = {"linear": "bilinear", "cubic": "bicubic"}.get(mode, "nearest")
    kwargs = {"align_corners": align} if kind != "nearest" else {}
    if scales:
        want = F.interpolate(t(x), scale_factor=scales, mode=kind, recompute_scale_factor=False,
                             **kwargs)  # fmt: skip
    else:
        want = F.interpolate(t(x), size=size, mode=kind, **kwargs)
    assert_close(run1("resize", [x], attrs), want)


def test_resize_infers_symbolic_sizes_and_rejects_bad_attrs():
    g = Graph("resize")
    batch, h = SymDim.symbol("batch"), SymDim.symbol("h")
    x = g.add_input("x", DType.float32, (batch, 3, h, 8))
    y = g.create_node("resize", [x], {"size": (2 * h, 16)}).output
    assert tuple(y.shape) == (batch, 3, 2 * h, 16)
    with pytest.raises(IRError, match="mode 'area'"):
        g.create_node("resize", [x], {"size": (4, 4), "mode": "area"})
    with pytest.raises(IRError, match="rank-4"):
        g.create_node("resize", [g.add_input("v", DType.float32, (3, 8))], {"size": (4, 4)})


@pytest.mark.parametrize("axis, largest", [(-1, True), (1, False), (0, True)])
def test_topk_against_torch(axis, largest):
    x = randn(4, 6, 9, seed=3)
    values, index = run_op("topk", [x], {"k": 3, "axis": axis, "largest": largest})
    want_v, want_i = torch.topk(t(x), 3, dim=axis, largest=largest)
    assert_close(values, want_v)
    np.testing.assert_array_equal(index, want_i.numpy())
    assert index.dtype == np.int64


@pytest.mark.parametrize("groups, dilation", [(3, (1, 1)), (1, (2, 3)), (6, (2, 1))], ids=str)
def test_conv2d_groups_and_dilation(groups, dilation):
    # depthwise and grouped convolutions (ConvNeXt, wav2vec2's positional conv), dilations
    x, w = randn(2, 6, 9, 10, seed=1), randn(6, 6 // groups, 3, 2, seed=2)
    b = randn(6, seed=3)
    attrs = {"stride": (2, 1), "padding": (1, 2), "dilation": dilation, "groups": groups}
    want = F.conv2d(t(x), t(w), t(b), stride=(2, 1), padding=(1, 2), dilation=dilation,
                    groups=groups)  # fmt: skip
    assert_close(run1("conv2d", [x, w, b], attrs), want)


@pytest.mark.parametrize(
    "kind, kernel, stride, padding, ceil, include_pad",
    [
        ("max", (3, 3), (2, 2), (1, 1), False, True),
        ("max", (2, 3), (2, 1), (0, 1), True, True),
        ("avg", (3, 3), (2, 2), (1, 1), False, True),
        ("avg", (3, 3), (2, 2), (1, 1), True, False),
        ("avg", (2, 2), (2, 2), (0, 0), True, True),
    ],
)
def test_pool2d_against_torch(kind, kernel, stride, padding, ceil, include_pad):
    x = randn(2, 3, 9, 8, seed=4)
    attrs = {"kind": kind, "kernel": kernel, "stride": stride, "padding": padding,
             "ceil_mode": ceil, "count_include_pad": include_pad}  # fmt: skip
    if kind == "max":
        want = F.max_pool2d(t(x), kernel, stride, padding, ceil_mode=ceil)
    else:
        want = F.avg_pool2d(t(x), kernel, stride, padding, ceil, include_pad)
    assert_close(run1("pool2d", [x], attrs), want)


def test_pool2d_symbolic_output():
    g = Graph("pool")
    batch, seq = SymDim.symbol("batch"), SymDim.symbol("seq")
    x = g.add_input("x", DType.float32, (batch, 4, 1, seq))
    attrs = {"kind": "max", "kernel": (1, 3), "stride": (1, 2), "padding": (0, 1)}
    y = g.create_node("pool2d", [x], attrs).output
    assert tuple(y.shape) == (batch, 4, 1, (seq - 1) // 2 + 1)
    with pytest.raises(IRError, match="ceil_mode needs static"):
        g.create_node("pool2d", [x], {**attrs, "ceil_mode": True})


def test_scatter_elements_against_torch():
    x = randn(3, 5, seed=5)
    index = np.asarray([[4, 0], [1, 3], [2, 2]], dtype=np.int64)  # 2 of the 5 columns per row
    updates = randn(3, 2, seed=6)
    out = run1("scatter_elements", [x, index, updates], {"axis": 1})
    assert_close(out, torch.scatter(t(x), 1, t(index), t(updates)))
    small = index[:2]  # an index smaller than x on the other dim
    out = run1("scatter_elements", [x, small, updates[:2]], {"axis": 1})
    assert_close(out, torch.scatter(t(x), 1, t(small), t(updates[:2])))


@pytest.mark.parametrize("axes, keepdim", [((-1,), False), ((0, 2), True), ((), False)])
def test_logsumexp_is_stable_against_torch(axes, keepdim):
    x = 300.0 * randn(3, 4, 5, seed=7)  # exp overflows fp32 unless the max is subtracted
    x[1, 2, :] = -np.inf  # a row of -inf gives -inf, not nan
    out = run1("logsumexp", [x], {"axes": axes, "keepdim": keepdim})
    want = torch.logsumexp(t(x), dim=axes or (0, 1, 2), keepdim=keepdim)
    assert_close(out, want)
