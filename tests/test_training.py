"""Training through backend="torch": the compiled model trains exactly like eager PyTorch.

The program a user writes first: build a Transformer encoder in train mode, compile it, run
Adam on an MSE loss for a few steps, then evaluate under ``torch.no_grad()``. A deep copy of
the same model trained eagerly is the oracle: losses, gradients and parameters must agree.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

import tgraph
from tgraph.models import build, example_inputs
from tgraph.passes.manager import PassManager

STEPS = 10


LR = 1e-3


def _max_diff(a: torch.nn.Module, b: torch.nn.Module, what: str, loose=frozenset()) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        x, y = (p.grad, q.grad) if what == "grad" else (p, q)
        assert (x is None) == (y is None), f"{name}: gradient on one side only"
        if x is None:
            continue
        # A parameter whose true gradient is zero (the key bias: softmax ignores a shift
        # that is the same for every key) gets Adam steps of +-lr driven by rounding noise,
        # on either side; it may drift by lr per step and no more.
        atol = LR * STEPS if name in loose else 1e-6
        torch.testing.assert_close(x, y, rtol=1e-5, atol=atol, msg=f"{what} of {name}")


def test_training_an_encoder_matches_eager():
    torch.manual_seed(0)
    model = build("transformer-tiny").train()  # the zoo encoder has no dropout
    eager = copy.deepcopy(model)
    before = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 32, 32, generator=gen)
    target = torch.randn(1, 32, 32, generator=gen)

    cm = tgraph.compile(model, (x,), backend="torch")
    assert cm.pipeline == PassManager("training").pipeline
    assert [id(p) for p in cm.parameters()] == [id(p) for p in model.parameters()]

    opt_c = torch.optim.Adam(cm.parameters(), lr=LR)
    opt_e = torch.optim.Adam(eager.parameters(), lr=LR)
    biggest_grad = {name: 0.0 for name, _ in eager.named_parameters()}
    for step in range(STEPS):
        opt_c.zero_grad()
        opt_e.zero_grad()
        loss_c = F.mse_loss(cm(x), target)
        loss_e = F.mse_loss(eager(x), target)
        loss_c.backward()
        loss_e.backward()
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=0, msg=f"loss at step {step}")
        _max_diff(model, eager, "grad")
        for name, p in eager.named_parameters():
            biggest_grad[name] = max(biggest_grad[name], p.grad.abs().max().item())
        opt_c.step()
        opt_e.step()

    zero_grad = frozenset(n for n, g in biggest_grad.items() if g < 1e-6)
    assert all(".k_proj.bias" in n for n in zero_grad), zero_grad
    _max_diff(model, eager, "param", loose=zero_grad)  # the model's own parameters were trained
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before.parameters()))

    cm.eval()
    eager.eval()
    x2 = torch.randn(3, 5, 32, generator=gen)  # another batch and sequence size
    with torch.no_grad():
        torch.testing.assert_close(cm(x2), eager(x2), rtol=1e-5, atol=1e-5)


def test_tied_weights_get_one_summed_gradient():
    torch.manual_seed(0)
    model = build("gpt-tiny").train()
    assert model.lm_head.weight is model.wte.weight
    eager = copy.deepcopy(model)
    inputs = example_inputs(model, batch=2, seq=9, seed=3)
    gen = torch.Generator().manual_seed(4)
    labels = torch.randint(0, model.config.vocab_size, (2, 9), generator=gen)

    cm = tgraph.compile(model, inputs, backend="torch")
    tied = [p for p in cm.parameters() if p is model.wte.weight]
    assert len(tied) == 1, "the tied weight should be registered once"

    def loss(m):
        logits = m(**inputs)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())

    loss_c, loss_e = loss(cm), loss(eager)
    loss_c.backward()
    loss_e.backward()
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=0)
    # The embedding and the head both add to the one tensor's gradient.
    torch.testing.assert_close(model.wte.weight.grad, eager.wte.weight.grad, rtol=1e-5, atol=1e-6)
    _max_diff(model, eager, "grad")

    torch.optim.SGD(cm.parameters(), lr=0.1).step()
    torch.optim.SGD(eager.parameters(), lr=0.1).step()
    assert model.lm_head.weight is model.wte.weight
    _max_diff(model, eager, "param")
