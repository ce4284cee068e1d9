"""The second round of the architecture sweep (tools/hf_sweep.py): translations checked
against eager on every backend at sizes other than the traced one, and the models that
tgraph refuses with one line."""

from __future__ import annotations

import pytest
import torch
from sweep_helpers import BACKENDS, check_eager, features
from torch import nn


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


CASES = {
    "logsumexp": LogSumExp,
    "unbind-unit": UnbindUnit,
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_translation_matches_eager(case, backend):
    check_eager(CASES[case](), features(), backend)
