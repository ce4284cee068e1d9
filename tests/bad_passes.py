"""Deliberately broken passes, registered only by the tests that import this module.

- ``test-bad-bias`` re-creates every ``linear`` with a bias (a no-op rewrite), but on its
  ``bad_match``-th match nudges the bias by 1e-2: a subtle numeric bug that verify mode
  must catch and bisect must pin to that very match.
- ``test-bad-norm-weight`` (a plain pass, not a rewrite) scales the first layer-norm
  weight by 1.01.
- ``test-fix-dims`` bakes the traced sizes (batch 2, seq 16) into reshape targets whose
  result is a graph output: the graph stays well-typed, but only works at one size.
- ``test-grad-detach`` keeps every ``linear``'s output but reads a frozen copy of its
  trainable weight (plus 0 * the real one): outputs agree, gradients do not.
"""

from __future__ import annotations

import numpy as np

from tgraph.ir import DType, SymDim, evaluate
from tgraph.passes.manager import Pass, PassResult, register
from tgraph.passes.rewrite import P, RewritePass, Rule

BAD_RULE = "bad-bias"
TRACED = {"batch": 2, "seq": 16}


@register("test-bad-bias")
class BadBias(RewritePass):
    """Test only: re-create linear nodes, corrupting the bias of one of them."""

    def __init__(self, max_matches: int | None = None, bad_match: int = 7):
        super().__init__(max_matches)
        self.bad_match = bad_match
        self.rules = (
            Rule(
                name=BAD_RULE,
                pattern=P.op("linear", P.var("x"), P.const("w"), P.const("b")),
                check=lambda m: "done" if m.root.meta.get("rule") == BAD_RULE else None,
                replace=self._replace,
                quiet=True,
            ),
        )

    def _replace(self, b, m):
        bias = m["b"]
        if len(self.applied) == self.bad_match:  # applied already lists this match
            nudged = np.asarray(bias.const) + np.float32(1e-2)
            bias = b.const(nudged, bias.dtype, hint="bad_bias")
        return b.op("linear", m["x"], m["w"], bias)


@register("test-bad-norm-weight")
class BadNormWeight(Pass):
    """Test only: scale the first layer-norm weight by 1.01."""

    def run(self, graph):
        for node in graph.nodes:
            if node.op == "layer_norm" and node.inputs[1] is not None:
                w = node.inputs[1]
                new = graph.add_const(np.asarray(w.const) * np.float32(1.01), w.dtype, "bad_w")
                node.replace_input(1, new)
                return PassResult(True, {})
        return PassResult(False, {})


def _fixed(shape):
    return tuple(evaluate(d, TRACED) if isinstance(d, SymDim) else d for d in shape)


@register("test-fix-dims")
class FixDims(RewritePass):
    """Test only: bake the traced sizes into reshape targets."""

    rules = (
        Rule(
            name="fix-dims",
            pattern=P.op(
                "reshape", P.var("x"), shape=lambda s: any(isinstance(d, SymDim) for d in s)
            ),
            replace=lambda b, m: b.op("reshape", m["x"], shape=_fixed(m.root.attrs["shape"])),
        ),
    )


def _detach(b, m):
    w, x = m["w"], m["x"]
    frozen = b.const(np.array(w.const), w.dtype, hint="frozen")
    zero = b.const(0.0, DType.float32, hint="zero")
    live = b.op("mul", b.op("linear", x, w), zero)
    return b.op("add", b.op("linear", x, frozen, m["b"]), live)


@register("test-grad-detach")
class GradDetach(RewritePass):
    """Test only: same outputs, but the gradient no longer reaches linear weights."""

    rules = (
        Rule(
            name="detach-weight",
            pattern=P.op("linear", P.var("x"), P.const("w"), P.var("b")),
            check=lambda m: None if m["w"].trainable else "frozen already",
            replace=_detach,
            quiet=True,
        ),
    )
