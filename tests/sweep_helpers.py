"""Shared helper of the sweep translation tests (tests/test_frontend_sweep*.py): compile a
small module at one size and compare it with eager PyTorch at two others."""

from __future__ import annotations

import torch
from torch import nn

import tgraph

BACKENDS = ("reference", "ort", "torch")


def check_eager(model: nn.Module, make, backend: str, sizes=((1, 7), (3, 11)), trace=(2, 16)):
    """Compile ``model`` on ``make(*trace, 0)``; outputs at ``sizes`` match eager (1e-4)."""
    model = model.eval()
    cm = tgraph.compile(model, make(*trace, 0), backend=backend)
    for seed, (batch, seq) in enumerate(sizes, start=1):
        args = make(batch, seq, seed)
        with torch.no_grad():
            torch.testing.assert_close(cm(*args), model(*args), rtol=1e-4, atol=1e-4)
    return cm


def features(channels: int = 8):
    """``make(batch, seq, seed)`` of one (batch, seq, channels) float tensor."""

    def make(b, s, seed):
        return (torch.randn(b, s, channels, generator=torch.Generator().manual_seed(seed)),)

    return make
