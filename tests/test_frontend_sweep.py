"""Translations the architecture sweep (tools/hf_sweep.py) needed, each checked against eager
on every backend at sizes other than the traced one: baddbmm (also through
nn.MultiheadAttention with a key padding mask), sign, round, expm1, log1p, logsigmoid, vector norms, acos, roll, square, softplus, topk,
sort, scatter and one_hot (MoE routing), bilinear and nearest upsampling, unbind over an inner
dim, batch, group and weight norm, pooling, unfold (im2col), mobile activations, and symbolic sizes of the forms
``max(0, n - seq)`` and convolution arithmetic (``(seq - k) // stride + 1``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sweep_helpers import BACKENDS
from sweep_helpers import check_eager as _check
from sweep_helpers import features as _features
from torch import nn

import tgraph


class Baddbmm(nn.Module):
    def forward(self, x):  # (B, T, C): beta * x[..., :4] + alpha * x @ x^T[..., :4]
        return torch.baddbmm(x[:, :, :4], x, x.transpose(1, 2)[:, :, :4], beta=0.5, alpha=2.0)


class Elementwise(nn.Module):
    def forward(self, x):
        y = torch.sign(x) * torch.square(x).multiply(2.0)
        z = torch.expm1(x) + torch.log1p(x.abs()) + F.logsigmoid(8 * x)
        z = (
            z
            + torch.linalg.vector_norm(x, dim=-1, keepdim=True)
            + x.norm(p=1, dim=(1, 2))[:, None, None]
        )
        z = z * torch.linalg.vector_norm(x, ord=float("inf")) + torch.acos(torch.tanh(x))
        return F.softplus(y) + F.softplus(4 * x, beta=2.0, threshold=3.0) + z


class Roll(nn.Module):
    def forward(self, x):  # a symbolic dim (seq) and a static one (channels)
        return torch.roll(x, shifts=(2, -3), dims=(1, 2)) + torch.roll(x, 1)


class Unbind(nn.Module):
    def forward(self, x):
        a, b, c, d = x[..., :4].unbind(-1)
        return a * b + c - d


class TopK(nn.Module):
    def forward(self, x):  # MoE routing: the top-2 experts and their weights
        weights, experts = torch.topk(x.softmax(-1), 2, dim=-1)
        return weights / weights.sum(-1, keepdim=True), experts


class PadToLength(nn.Module):
    def forward(self, x):  # padded to at least 20 steps: a pad of max(0, 20 - seq)
        return F.pad(x, (0, 0, 0, max(0, 20 - x.shape[1])), value=0.5)


class ConvLength(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 3, stride=2)

    def forward(self, x):  # (B, (T - 3) // 2 + 1, C), flattened and scaled by that length
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return y.reshape(y.shape[0], y.shape[1] * 8) * y.shape[1]


class Upsample(nn.Module):
    def forward(self, x):  # (B, T, C) as a (B, C, T, 1) image, upsampled four ways
        img = x.transpose(1, 2).unsqueeze(-1)
        outs = [
            F.interpolate(img, scale_factor=2, mode="bilinear"),
            F.interpolate(img, scale_factor=(1.5, 3.0), mode="bilinear", align_corners=True),
            F.interpolate(img, size=(5, 3), mode="bilinear"),
            F.interpolate(img, scale_factor=2, mode="nearest"),
        ]
        return [o.flatten(1) for o in outs]


class Routing(nn.Module):
    def forward(self, x):  # (B, T, 8) router logits: masks and orders of an MoE dispatch
        top = torch.topk(x, 2, dim=-1).indices
        mask = torch.zeros_like(x).scatter(-1, top, 1.0)
        weights = torch.zeros_like(x).scatter(-1, top, x.sigmoid())
        expert = (x[..., 0] * 2).round().long().clamp(0, 3)  # ties on purpose
        order = torch.sort(expert.flatten(), stable=True).indices
        ranked = torch.sort(x, dim=1, descending=True).values
        return mask * x, weights, order, ranked, F.one_hot(expert, 4)


class ConvNet(nn.Module):
    """A CNN stem: conv, batch norm, pooling, mobile activations, group norm over time."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.bn, self.bn1, self.gn = nn.BatchNorm2d(8), nn.BatchNorm1d(8), nn.GroupNorm(2, 8)
        for norm in (self.bn, self.bn1):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.data.normal_()

    def forward(self, x):  # (B, T, 8) as a (B, 1, T, 8) image
        y = F.hardswish(self.bn(self.depthwise(self.conv(x.unsqueeze(1)))))
        pools = [
            F.max_pool2d(y, 3, 2, 1),
            F.avg_pool2d(F.relu6(y), (1, 2)),
            F.adaptive_avg_pool2d(F.leaky_relu(y, 0.1), 1),
        ]
        seq = self.gn(F.elu(y.mean(2)))  # (B, 8, 8) channels by width
        return [p.flatten(1).sum(-1) for p in pools], F.mish(self.bn1(seq)), F.hardsigmoid(seq)


class WeightNorm(nn.Module):
    """wav2vec2's positional conv: a grouped conv with a weight-normed kernel (dim 2)."""

    def __init__(self):
        super().__init__()
        conv = nn.Conv1d(8, 8, 3, padding=1, groups=2)
        self.conv = nn.utils.parametrizations.weight_norm(conv, dim=2)
        self.proj = nn.utils.parametrizations.weight_norm(nn.Linear(8, 8))

    def forward(self, x):
        return self.proj(self.conv(x.transpose(1, 2)).transpose(1, 2))


class Unfold(nn.Module):
    def forward(self, x):  # ConvBERT's span conv: (B, C, T, 1) unfolded with a (5, 1) kernel
        img = x.transpose(1, 2).unsqueeze(-1)
        spans = F.unfold(img, (5, 1), padding=(2, 0))
        strided = F.unfold(x.unsqueeze(1), (3, 2), dilation=(2, 1), stride=(2, 3), padding=1)
        return spans, strided


CASES = {
    "baddbmm": Baddbmm,
    "elementwise": Elementwise,
    "roll": Roll,
    "unbind": Unbind,
    "topk": TopK,
    "max-size": PadToLength,
    "conv-size": ConvLength,
    "upsample": Upsample,
    "routing": Routing,
    "convnet": ConvNet,
    "weight-norm": WeightNorm,
    "unfold": Unfold,
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_translation_matches_eager(case, backend):
    _check(CASES[case](), _features(), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_multihead_attention_with_key_padding_mask(backend):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x, pad):
            return self.mha(x, x, x, key_padding_mask=pad, need_weights=False)[0]

    def make(b, s, seed):
        pad = torch.zeros(b, s, dtype=torch.bool)
        pad[-1, s - 2 :] = True  # the last row ends in padding
        return _features()(b, s, seed)[0], pad

    _check(Model(), make, backend)


def test_symbolic_sizes_are_named_in_the_graph():
    g = tgraph.trace(PadToLength(), (torch.randn(2, 16, 8),))
    assert str(g.outputs[0].shape[1]) == "max(-seq+20,0)+seq"
    g = tgraph.trace(ConvLength(), (torch.randn(2, 16, 8),))
    assert str(g.outputs[0].shape[1]) == "8*((seq+1)//2)-8"  # 8 * ((seq - 3) // 2 + 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_symbolic_slice_bounds_count_from_the_end(backend):
    class Tail(nn.Module):
        def forward(self, x):  # (B, 2T, C) -> its last T steps: a start of -T
            both = torch.cat([x, 2 * x], dim=1)
            return both[:, -x.shape[1] :] + both[:, : -x.shape[1]]

    _check(Tail(), _features(), backend)


def test_data_dependent_scalar_read_only_by_checks_is_dropped():
    class Checked(nn.Module):
        def forward(self, ids):  # XLM: lengths from the ids, checked against the sequence
            longest = (ids != 0).sum(1).max().item()
            torch._check(longest <= ids.shape[1])
            return ids * 2

    make = lambda b, s, seed: (torch.randint(1, 9, (b, s), generator=torch.Generator()),)  # noqa: E731
    _check(Checked(), make, "reference")

    class Used(nn.Module):
        def forward(self, ids):
            return ids[:, : (ids != 0).sum(1).max().item()]

    with pytest.raises(tgraph.FrontendError, match="reads a tensor's value"):
        tgraph.trace(Used(), (torch.randint(1, 9, (2, 16)),))


def test_outputs_are_the_user_outputs_when_the_forward_writes_an_input():
    class Writes(nn.Module):
        def forward(self, x, mask):  # CTRL-style: an input written in place on the way
            mask.mul_(2)
            return x * mask[..., None]

    def make(b, s, seed):
        return _features()(b, s, seed)[0], torch.ones(b, s)

    cm = tgraph.compile(Writes(), make(2, 16, 0), backend="reference")
    x, mask = make(3, 5, 1)
    torch.testing.assert_close(cm(x, mask.clone()), Writes()(x, mask.clone()))
