"""Random weight initialisation shared by the zoo families.

The zoo's models are compiler test subjects, not trained networks, so the init aims at two things:
activations that stay O(1) at every size (attention that is far from uniform, logits that are not
all equal), and no parameter left at an identity value. A bias of exactly zero or a norm gain of
exactly one would let a fused kernel that drops the bias or the gain pass every numeric test.
"""

from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """Draws every parameter of ``model`` from the global torch RNG.

    - Linear and Conv2d weights: N(0, 1/fan_in), so each layer keeps its input's scale.
    - Other 1-D ``weight`` parameters (LayerNorm, RMSNorm gains): N(1, 0.1).
    - Everything else (biases, embedding tables, position tables, class tokens): N(0, std).

    A parameter shared by two modules (a tied ``lm_head``) is drawn once, by the first module
    that owns it in ``model.modules()`` order.

    Args:
        model: The module to initialise in place.
        std: Standard deviation of biases and embedding-like tables.
    """
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if name == "weight" and isinstance(module, (nn.Linear, nn.Conv2d)):
                fan_in = param[0].numel()
                nn.init.normal_(param, mean=0.0, std=fan_in**-0.5)
            elif name == "weight" and param.dim() == 1:
                nn.init.normal_(param, mean=1.0, std=0.1)
            else:
                nn.init.normal_(param, mean=0.0, std=std)
