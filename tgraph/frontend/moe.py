"""Trace a Hugging Face mixture-of-experts layer's experts as one op.

transformers runs an MoE layer's experts through ``ExpertsInterface``: the layer's router
picks each token's top-k experts and weights, then ``experts(hidden, top_k_index,
top_k_weights)`` runs the implementation that ``config._experts_implementation`` names.
tgraph registers one more, ``tgraph``, that calls the ``tgraph::moe_experts`` custom op: a
single node in the exported program, which the frontend maps to the IR's ``moe_experts``
(tgraph/ir/ops/moe.py) and the backends run as a grouped matmul, each token reading its k
experts' weights only.

It covers the experts transformers' own code describes: weights (E, N, H) and (E, H, I),
gate and up concatenated or interleaved, optional biases, the default gate (act(gate) * up)
or none, and an activation this module names. Anything else (transposed weights, a
post-expert norm, a model's own gate such as GPT-OSS's clamped SwiGLU, another activation)
runs transformers' ``batched_mm`` in the same trace, which exports as plain ops, and so does
every layer with ``TGRAPH_MOE_EXPERTS=0`` in the environment (read at each trace).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from tgraph.backends.torch_moe import moe_experts as _torch_moe_experts

IMPLEMENTATION = "tgraph"

# activation module class name -> the op's activation
_ACTIVATIONS = {
    "SiLU": "silu",
    "SiLUActivation": "silu",
    "ReLU": "relu",
    "GELUTanh": "gelu_tanh",
    "PytorchGELUTanh": "gelu_tanh",
    "NewGELUActivation": "gelu_tanh",
}


@torch.library.custom_op("tgraph::moe_experts", mutates_args=())
def moe_experts(x: Tensor, top_k_index: Tensor, top_k_weights: Tensor, w_in: Tensor,
                w_out: Tensor, b_in: Tensor | None, b_out: Tensor | None, activation: str,
                gated: bool, interleaved: bool) -> Tensor:  # fmt: skip
    """``moe_experts`` of tgraph/ir/ops/moe.py in eager PyTorch."""
    return _torch_moe_experts(x, top_k_index, top_k_weights, w_in, w_out, b_in, b_out,
                              activation=activation, gated=gated, interleaved=interleaved)  # fmt: skip


@moe_experts.register_fake
def _(x, top_k_index, top_k_weights, w_in, w_out, b_in, b_out, activation, gated, interleaved):
    return torch.empty_like(x)


def activation_of(module: torch.nn.Module) -> str | None:
    """The op's name for an activation module, or None where the op has none."""
    name = type(module).__name__
    if name in ("GELU", "GELUActivation"):
        approximate = getattr(module, "approximate", "none")
        if name == "GELUActivation":  # transformers' erf GELU, unless built on its Python form
            act = getattr(module, "act", None)
            approximate = "none" if act is torch.nn.functional.gelu else "?"
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(approximate)
    return _ACTIVATIONS.get(name)


def why_not(experts: torch.nn.Module) -> str | None:
    """Why ``experts`` does not fit ``moe_experts`` (None when it does)."""
    from transformers.integrations import moe

    if os.environ.get("TGRAPH_MOE_EXPERTS", "1") == "0":
        return "TGRAPH_MOE_EXPERTS=0"
    if getattr(experts, "is_transposed", True):
        return "its weights are stored transposed"
    if getattr(experts, "has_post_expert_norm", True):
        return "it normalizes each expert's output"
    if getattr(experts, "_is_expert_parallel", True):
        return "it is expert-parallel"
    if experts.has_gate and type(experts)._apply_gate is not moe._default_apply_gate:
        return f"{type(experts).__name__} has its own gate"
    if activation_of(getattr(experts, "act_fn", None)) is None:
        return (
            f"activation {type(getattr(experts, 'act_fn', None)).__name__} has no moe_experts form"
        )
    w_in = experts.gate_up_proj if experts.has_gate else experts.up_proj
    if w_in.dim() != 3 or experts.down_proj.dim() != 3:
        return "its expert weights are not 3-D"
    return None


def _forward(self, hidden_states: Tensor, top_k_index: Tensor, top_k_weights: Tensor) -> Tensor:
    from transformers.integrations import moe

    if why_not(self) is not None:
        return moe.batched_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    gated = self.has_gate
    w_in = self.gate_up_proj if gated else self.up_proj
    b_in = b_out = None
    if self.has_bias:
        b_in = self.gate_up_proj_bias if gated else self.up_proj_bias
        b_out = self.down_proj_bias
    return moe_experts(hidden_states, top_k_index, top_k_weights.to(hidden_states.dtype), w_in,
                       self.down_proj, b_in, b_out, activation_of(self.act_fn), gated,
                       not self.is_concatenated)  # fmt: skip


def register() -> None:
    """Add the ``tgraph`` implementation to transformers' ``ExpertsInterface`` (once)."""
    from transformers.integrations import moe

    if IMPLEMENTATION not in moe.ALL_EXPERTS_FUNCTIONS:
        moe.ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION, _forward)
