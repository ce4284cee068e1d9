"""The second round of the architecture sweep (tools/hf_sweep.py): translations checked
against eager on every backend at sizes other than the traced one, and the models that
tgraph refuses with one line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sweep_helpers import BACKENDS, check_eager, features
from torch import nn

import tgraph


class LogSumExp(nn.Module):
    def forward(self, x):  # (B, T, 8) at magnitudes whose exp overflows fp32, rows of -inf
        big = 200.0 * x
        dead = (torch.arange(x.shape[1]) % 3 == 0)[None, :, None]
        masked = big.masked_fill(dead, float("-inf"))
        return torch.logsumexp(masked, dim=-1), torch.logsumexp(big, dim=(1, 2), keepdim=True)


class UnbindUnit(nn.Module):
    def forward(self, x):  # an unbind over a size-1 dim: a split into one piece
        (only,) = x[:, :, None, :].unbind(2)
        return only * 2


class Einsum(nn.Module):
    """The equation forms transformers' models use, on (B, T, 8) features."""

    def forward(self, x):
        b, t = x.shape[:2]
        q = x.view(b, t, 2, 4).transpose(1, 2)  # (B, 2, T, 4)
        w = torch.arange(32.0).view(8, 4) / 32
        att = torch.einsum("bnqd,bnkd->bnqk", q, q).softmax(-1)
        outs = [
            torch.einsum("...si,...id->...sd", att, q),  # mgp-str
            torch.einsum("...si,id->...sd", att[:, :1], q[0, 0, :, :3]),  # ranks differ
            torch.einsum("bsj,j->bs", x, w[:, 0]),
            torch.einsum("blq,blk->blqk", x[..., :3], x[..., 5:]),  # an outer product
            torch.einsum("ibnd,jbnd->bnij", q, q),
            torch.einsum("bij, jk ,ni -> bnk", x, w, x[0, :, :3].T),  # three operands, spaces
            torch.einsum("ij,jk", x[0], w),  # implicit output: "ik"
            torch.einsum("ijbn->bnij", q),
            torch.einsum("bnqd->bd", q),  # sums only
            torch.einsum("bxd,byd->bxy", x[:, :1], x),  # a size-1 batch-free dim
            torch.einsum("bcd,zcd->bzc", x, x[:1]),  # a batch dim of size 1 against B
        ]
        return outs


class StringPadding(nn.Module):
    """padding='same' (even and uneven totals, dilated) and 'valid' (SigLIP's patch conv)."""

    def __init__(self):
        super().__init__()
        self.same2d = nn.Conv2d(1, 4, (3, 4), padding="same", dilation=(2, 1))
        self.same1d = nn.Conv1d(8, 8, 4, padding="same", groups=2)
        self.valid = nn.Conv1d(8, 4, 3, padding="valid")

    def forward(self, x):  # (B, T, 8)
        img = self.same2d(x.unsqueeze(1))  # (B, 4, T, 8)
        seq = x.transpose(1, 2)
        return img, self.same1d(seq), self.valid(seq)


class StridedScatter(nn.Module):
    def forward(self, x):  # Qwen3-VL's interleaved rotary sections: every 3rd channel
        y = x.clone()
        y[..., 1:7:3] = 2 * x[..., 1:7:3]
        y[:, ::2] = -y[:, ::2]  # a step over the symbolic sequence dim
        return y


class Bicubic(nn.Module):
    def forward(self, x):  # (B, T, C) as a (B, C, T, 2) image, resampled bicubically
        img = torch.cat([x, x.square()], -1).transpose(1, 2).reshape(x.shape[0], 8, -1, 2)
        outs = [
            F.interpolate(img, size=(5, 7), mode="bicubic"),  # VitDet's position embeddings
            F.interpolate(img, scale_factor=(1.5, 2.5), mode="bicubic", align_corners=True),
            F.interpolate(img, scale_factor=2, mode="bicubic"),
        ]
        return [o.flatten(1) for o in outs]


class Glu(nn.Module):
    def forward(self, x):  # the conformer's pointwise conv gate, over channels and time
        return F.glu(x, dim=-1), F.glu(x[:, :6], dim=1), torch.ceil(4 * x)  # (and SEW-D's ceil)


CASES = {
    "glu": Glu,
    "bicubic": Bicubic,
    "strided-scatter": StridedScatter,
    "string-padding": StringPadding,
    "einsum": Einsum,
    "logsumexp": LogSumExp,
    "unbind-unit": UnbindUnit,
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_translation_matches_eager(case, backend):
    check_eager(CASES[case](), features(), backend)


def test_einsum_with_a_repeated_subscript_is_refused_naming_the_equation():
    class Diagonal(nn.Module):
        def forward(self, x):
            return torch.einsum("bii->bi", x[:, :8, :])

    with pytest.raises(tgraph.FrontendError, match=r"einsum 'bii->bi': a subscript repeats"):
        tgraph.trace(Diagonal(), features()(2, 16, 0))


class Masking(nn.Module):
    def forward(self, x):  # ViTMAE's random masking: a permutation drawn per call
        return x.gather(1, torch.rand(x.shape[:2]).argsort(1)[..., None].expand(x.shape))


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.masking = Masking()

    def forward(self, x):
        return self.masking(x) + torch.randn_like(x)


def test_a_model_that_samples_is_refused_in_one_line():
    with pytest.raises(tgraph.FrontendError) as info:
        tgraph.trace(Noisy(), features()(2, 16, 0))
    message = str(info.value)
    assert message.startswith("aten::rand.default samples random numbers in the forward at ")
    assert "test_frontend_sweep_ops.py:" in message and "(ViTMAE: noise=...)" in message
    assert message.endswith("from masking)") and "\n" not in message
