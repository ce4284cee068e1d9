"""Torch functions of the ops the architecture sweep (tools/hf_sweep.py) added to the IR,
kept out of ``torch_ops`` (already near the size limit); ``torch_ops.OPS`` includes them.

Same conventions as ``torch_ops``: inputs as tensors, attributes under their IR names and
already resolved, results exactly the NumPy kernels' shapes and dtypes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor


def logsumexp(x: Tensor, axes, keepdim) -> Tensor:
    # torch's kernel subtracts the max (0 where it is infinite), as the NumPy kernel does.
    return torch.logsumexp(x, dim=tuple(axes) or tuple(range(x.dim())), keepdim=keepdim)


def scatter_reduce(x: Tensor, index: Tensor, updates: Tensor, axis, reduce) -> Tensor:
    kind = {"max": "amax", "min": "amin"}.get(reduce, reduce)
    return torch.scatter_reduce(x, axis, index.long(), updates, kind, include_self=True)


EXT_OPS: dict[str, Callable[..., Tensor]] = {
    "logsumexp": logsumexp,
    "bitwise_not": torch.bitwise_not,
    "bitwise_and": torch.bitwise_and,
    "bitwise_or": torch.bitwise_or,
    "bitwise_xor": torch.bitwise_xor,
    "scatter_reduce": scatter_reduce,
}
