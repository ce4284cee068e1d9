"""``tgraph::moe_experts`` (tgraph/frontend/moe.py) -> the IR's ``moe_experts``."""

from __future__ import annotations

from tgraph.frontend.aten.base import aten


@aten("tgraph::moe_experts")
def _moe_experts(ctx, x, top_k_index, top_k_weights, w_in, w_out, b_in, b_out, activation,
                 gated, interleaved):  # fmt: skip
    inputs = [ctx.value(t) if t is not None else None
              for t in (x, top_k_index, top_k_weights, w_in, w_out, b_in, b_out)]  # fmt: skip
    while inputs[-1] is None:
        inputs.pop()
    return ctx.emit("moe_experts", inputs, activation=activation, gated=bool(gated),
                    interleaved=bool(interleaved))  # fmt: skip
