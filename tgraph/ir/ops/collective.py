"""Collective ops of a tensor-parallel graph (the ``shard`` pass makes them).

A sharded graph is one rank's program: every rank runs the same graph on its own weights,
and a collective combines a value across the ``world`` ranks.

    all_reduce(x) {world}        -> sum of x over the ranks; every rank gets the sum
    all_gather(x) {axis, world}  -> the ranks' x concatenated along ``axis`` in rank order

A kernel sees one rank's arrays, so it is exact only for ``world=1`` (the identity) and
refuses ``world>1``. :data:`COMBINE` says how the ranks' inputs make each rank's output;
``tgraph.backends.reference.run_ranks`` uses it to simulate every rank in one process,
and the torch backend runs the ops on ``torch.distributed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tgraph.ir.core import IRError, TensorType

from .registry import REQUIRED, defop
from .shapes import norm_axis


def _check_world(world: int, op: str) -> None:
    if not isinstance(world, int) or world < 1:
        raise IRError(f"{op}: world is {world!r}, want a positive int")


def _all_reduce_infer(x: TensorType, world: int) -> TensorType:
    _check_world(world, "all_reduce")
    if not x.dtype.is_float:
        raise IRError(f"all_reduce: dtype {x.dtype}, want a float type")
    return x


def _all_gather_infer(x: TensorType, axis: int, world: int) -> TensorType:
    _check_world(world, "all_gather")
    axis = norm_axis(axis, x.rank, "all_gather")
    shape = list(x.shape)
    shape[axis] = shape[axis] * world
    return TensorType(x.dtype, tuple(shape))


def _single_rank(op: str) -> Callable[..., np.ndarray]:
    def kernel(x: np.ndarray, world: int, **_: Any) -> np.ndarray:
        if world != 1:
            raise IRError(
                f"{op} over {world} ranks: one process cannot compute it; run every rank with "
                "tgraph.backends.reference.run_ranks, or the torch backend under torchrun"
            )
        return x

    return kernel


defop(
    "all_reduce",
    infer=_all_reduce_infer,
    kernel=_single_rank("all_reduce"),
    attrs={"world": REQUIRED},
    pure=False,  # it talks to the other ranks: never folded, merged or dropped
    doc="Sum of x over the world's ranks (torch.distributed.all_reduce); every rank gets it.",
)
defop(
    "all_gather",
    infer=_all_gather_infer,
    kernel=_single_rank("all_gather"),
    attrs={"axis": REQUIRED, "world": REQUIRED},
    pure=False,
    doc="The ranks' x concatenated along axis in rank order (torch.distributed.all_gather).",
)


def _reduce(arrays: Sequence[np.ndarray], **_: Any) -> list[np.ndarray]:
    # Sum in rank order in the input dtype, like a ring/tree reduction would round.
    total = arrays[0].copy()
    for a in arrays[1:]:
        total = (total + a).astype(total.dtype)
    return [total] * len(arrays)


def _gather(arrays: Sequence[np.ndarray], axis: int, **_: Any) -> list[np.ndarray]:
    return [np.concatenate(arrays, axis=axis)] * len(arrays)


# op -> fn(one input array per rank, **attrs) -> one output array per rank
COMBINE: dict[str, Callable[..., list[np.ndarray]]] = {
    "all_reduce": _reduce,
    "all_gather": _gather,
}
