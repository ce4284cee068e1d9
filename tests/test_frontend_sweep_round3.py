"""The third round of the architecture sweep (tools/hf_sweep.py): ATen ops its models needed,
each checked against eager on every backend at sizes other than the traced one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sweep_helpers import BACKENDS, check_eager, features
from torch import nn

import tgraph


class Meshgrid(nn.Module):
    def forward(self, x):  # (B, T, 8): grids over the symbolic T and a static 8 (DINOv3, Pixtral)
        t = torch.arange(x.shape[1], dtype=x.dtype)
        c = x[0, 0]
        rows, cols = torch.meshgrid(t, c, indexing="ij")  # (T, 8)
        xs, ys = torch.meshgrid(t, c, indexing="xy")  # (8, T)
        a, b, d = torch.meshgrid(c[:3], t, c[:2], indexing="xy")  # (T, 3, 2)
        (only,) = torch.meshgrid(t, indexing="ij")
        return x * rows + cols, xs * ys, a + 2 * b - d, only


class Tile(nn.Module):
    def forward(self, x):  # SAM3's tiled position embeddings: fewer, as many and more dims
        return x.tile((2,)), x.tile((2, 1, 3)), x[0].tile((2, 1, 1, 3))


class Linear1d(nn.Module):
    def forward(self, x):  # (B, 8, T) resampled along T (SAM's relative position tables)
        seq = x.transpose(1, 2)
        return (
            F.interpolate(seq, size=11, mode="linear"),
            F.interpolate(seq, size=5, mode="linear"),  # downsampling
            F.interpolate(seq, size=13, mode="linear", align_corners=True),
            F.interpolate(seq, scale_factor=1.7, mode="linear", recompute_scale_factor=False),
        )


class Eye(nn.Module):
    def forward(self, x):  # XLNet's -torch.eye(qlen), a rectangular one, a bool one
        t = x.shape[1]
        return (
            x[0, :, :1] * -torch.eye(t).to(x),
            torch.eye(t, 8) + x[0],
            torch.eye(3, dtype=torch.bool) & (x[0, :3, :3] > 0),
        )


class ClampTensor(nn.Module):
    def forward(self, x):  # PhiMoE's router: a per-token bound, broadcast against the scores
        low = x.mean(-1, keepdim=True)
        high = x[..., :1].abs()
        ints = (10 * x).long()
        return (
            x.abs().clamp(min=low),
            torch.clamp(x, min=low, max=high),  # a min above max gives max, as in torch
            x.clamp(max=high[0]),
            torch.clamp_min(x, low),
            ints.clamp(min=ints[:, :1], max=torch.tensor(7)),
        )


class Bitwise(nn.Module):
    def forward(self, x):  # CPM-Ant's masks: a bool | an i32 is an i32; ints stay ints
        pos, neg = (x > 0), (x < -0.5).to(torch.int32)
        ints = (10 * x).long()
        return (
            pos | neg,
            neg & pos,
            ints ^ (3 * ints),
            ints & 6,
            ~ints,
            pos ^ (x < 1),  # bools: logical
            torch.logical_xor(ints, neg),  # logical ops on ints give bools
            torch.logical_and(ints, x),
            neg[..., None].logical_not() & pos[..., None, :],  # CPM-Ant's not of an i32
        )


class TruncDiv(nn.Module):
    def forward(self, x):  # JetMoE's router: integer division toward zero, any signs
        a = (10 * x).long()
        b = 2 * (4 * x[..., :1]).long() + 1  # odd, so never 0
        return torch.div(a, 3, rounding_mode="trunc"), torch.div(a, b, rounding_mode="trunc")


class ArangeDown(nn.Module):
    def forward(self, x):  # Funnel's relative positions count down with a negative step
        return (
            x[:, :, :1] * torch.arange(7, -1, -1),
            torch.arange(4, -6, -3),
            torch.arange(4.0, 0.0, -0.5),
            torch.arange(x.shape[1], -3, -1.0, dtype=torch.int64),  # XLNet: whole float steps
            torch.arange(0, x.shape[1], 2.0, dtype=torch.int64),
        )


class ScatterReduce(nn.Module):
    """TAPAS's segment reductions: values scattered by a segment index, repeats included."""

    def __init__(self, reduce: str, include_self: bool):
        super().__init__()
        self.reduce, self.include_self = reduce, include_self

    def forward(self, x):  # (B, T, 8) -> rows reduced into 5 segments per batch
        segments = (x[..., 0].abs() * 7).long() % 5  # (B, T), some segments left empty
        index = segments[..., None].expand(-1, -1, 4)  # (B, T, 4): index narrower than x
        out = (torch.arange(30.0).view(1, 5, 6) / 15 - 1).repeat(x.shape[0], 1, 1)
        kw = {"reduce": self.reduce, "include_self": self.include_self}
        flat = out.scatter_reduce(1, index, x, **kw)
        ints = (5 * out).long().scatter_reduce(1, index, (2 * x).long(), **kw)  # small: prod
        return flat, ints


class ComplexRotary(nn.Module):
    def forward(self, x):  # Llama 4's rotary: polar tables times query pairs viewed as complex
        b, t, _ = x.shape
        inv = 1.0 / (10000 ** (torch.arange(0, 4, 2).float() / 4))
        freqs = torch.outer(torch.arange(t).float(), inv)[None].expand(b, -1, -1)  # (B, T, 2)
        cis = torch.polar(torch.ones_like(freqs), freqs) * 0.7
        q = x.view(b, t, 2, 4)
        q_ = torch.view_as_complex(q.float().reshape(*q.shape[:-1], -1, 2))  # (B, T, 2, 2)
        out = torch.view_as_real(q_ * cis[:, :, None, :]).flatten(3)
        pairs = torch.view_as_complex(x.reshape(b, t, 4, 2))
        mixed = torch.view_as_real(pairs * pairs - 2 * pairs + x[..., :4] + cis.sum(-1, True))
        return out.type_as(x), mixed


class Fourier(nn.Module):
    def forward(self, x):  # FNet's mixing: the real part of a 2-d DFT over (seq, hidden)
        two_step = torch.fft.fft(torch.fft.fft(x, dim=-1), dim=1)  # FNet's TPU variant
        return torch.fft.fftn(x, dim=(1, 2)).real, torch.view_as_real(two_step)


class ConvTranspose(nn.Module):
    """SAM3's FPN upsampling (k = s = 2) and the other geometries: padding that crops,
    output padding, dilation, groups, 1-d."""

    def __init__(self):
        super().__init__()
        self.fpn = nn.ConvTranspose2d(1, 4, 2, stride=2)
        self.odd = nn.ConvTranspose2d(1, 2, (3, 2), stride=(2, 3), padding=(2, 1),
                                      output_padding=(1, 2), dilation=(2, 1))  # fmt: skip
        self.grouped = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False)
        self.seq = nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1)

    def forward(self, x):  # (B, T, 8)
        img = x.unsqueeze(1)  # (B, 1, T, 8)
        up = self.fpn(img)
        return up, self.odd(img), self.grouped(up), self.seq(x.transpose(1, 2))


class TailRows(nn.Module):
    def forward(self, x):  # XLNet's memory x[-512:]: all of a dim export bounds by 512
        torch._check(x.shape[1] <= 64)
        return x[:, -64:] * 2, x[:, -3:]


class Argsort(nn.Module):
    def forward(self, x):  # ViTMAE: shuffle the tokens by the order of their noise
        order = torch.argsort(x[..., 0], dim=1)
        back = torch.argsort(order, dim=1, stable=True, descending=True)
        return order, back, torch.gather(x, 1, order[..., None].expand_as(x))


CASES = {
    "argsort": Argsort,
    "complex-rotary": ComplexRotary,
    "conv-transpose": ConvTranspose,
    "fourier": Fourier,
    "arange-down": ArangeDown,
    "bitwise": Bitwise,
    "clamp-tensor": ClampTensor,
    "eye": Eye,
    "linear1d": Linear1d,
    "meshgrid": Meshgrid,
    "tail-rows": TailRows,
    "tile": Tile,
    "trunc-div": TruncDiv,
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_translation_matches_eager(case, backend):
    check_eager(CASES[case](), features(), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("reduce", ["sum", "prod", "amax", "amin", "mean"])
def test_scatter_reduce_matches_eager(reduce, include_self, backend):
    check_eager(ScatterReduce(reduce, include_self), features(), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scatter_add_matches_eager(backend):
    class ScatterAdd(nn.Module):
        def forward(self, x):
            index = (x[..., :3].abs() * 5).long() % 4  # (B, T, 3) into 4 rows
            return torch.zeros(x.shape[0], 4, 8).scatter_add(1, index, x)

    check_eager(ScatterAdd(), features(), backend)


def test_a_complex_output_or_op_is_refused_naming_it():
    class ComplexOut(nn.Module):
        def forward(self, x):
            return torch.view_as_complex(x.reshape(*x.shape[:2], 4, 2))

    class ComplexAbs(nn.Module):
        def forward(self, x):
            return torch.view_as_complex(x.reshape(*x.shape[:2], 4, 2)).abs()

    class ComplexCast(nn.Module):
        def forward(self, x):
            return torch.view_as_real(x.to(torch.complex64) * 2)

    with pytest.raises(tgraph.FrontendError, match="_to_copy.default makes a complex tensor"):
        tgraph.trace(ComplexCast(), features()(2, 16, 0))
    with pytest.raises(tgraph.FrontendError, match="output view_as_complex is complex"):
        tgraph.trace(ComplexOut(), features()(2, 16, 0))
    with pytest.raises(tgraph.FrontendError, match=r"ATen op aten::abs.default on a complex"):
        tgraph.trace(ComplexAbs(), features()(2, 16, 0))
