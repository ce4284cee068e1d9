"""ATen ops that draw random numbers: refused in one line, since no compiled graph can give
eager's numbers. The line names the op, where the model calls it and what to do."""

from __future__ import annotations

from tgraph.frontend.aten.base import aten
from tgraph.frontend.convert import UnsupportedError

# Overload packets: every overload of these samples (rand.default, rand.generator, ...).
RANDOM_OPS = (
    "rand", "randn", "rand_like", "randn_like", "randint", "randint_like", "randperm",
    "bernoulli", "normal", "uniform", "exponential", "multinomial", "poisson", "cauchy",
    "log_normal", "geometric", "random",
)  # fmt: skip


@aten(*RANDOM_OPS)
def _random(ctx, *args, **kwargs):
    from tgraph.frontend.trace import _op_key, _source

    where = f" at {_source(ctx.node)}" if _source(ctx.node) else ""
    raise UnsupportedError(
        f"{_op_key(ctx.node.target)} samples random numbers in the forward{where}, so no "
        "compiled graph can match eager: pass the random values as an input where the forward "
        "takes one (ViTMAE: noise=...), or trace a model that does not sample (eval mode, "
        "sampling or noise scale 0 in its config)"
    )
