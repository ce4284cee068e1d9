"""The torch backend's collectives: ``all_reduce`` / ``all_gather`` on torch.distributed.

A sharded program runs one rank per process (``torchrun``); the ops run on the process
group set with :func:`set_process_group`, else on torch.distributed's default group
(gloo on CPU, NCCL on GPU: whatever ``init_process_group`` chose; see
``tgraph.distributed``). ``world`` from the graph must equal the group's size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

_GROUP: list[Any] = [None]  # the process group the ops use (None: the default group)


def set_process_group(group: Any) -> None:
    """Run the collectives of every sharded program on ``group`` (None: the default one)."""
    _GROUP[0] = group


class CollectiveError(RuntimeError):
    """A sharded program runs without a matching torch.distributed process group."""


def _group(world: int, op: str) -> Any:
    if not dist.is_available() or not dist.is_initialized():
        raise CollectiveError(
            f"{op} over {world} ranks needs torch.distributed: launch with "
            f"'torchrun --nproc-per-node {world}' (tgraph.distributed.init_from_env)"
        )
    group = _GROUP[0]
    size = dist.get_world_size(group)
    if size != world:
        raise CollectiveError(
            f"{op}: the model is sharded over {world} ranks but the process group has {size}"
        )
    return group


def all_reduce(x: torch.Tensor, world: int) -> torch.Tensor:
    if world == 1:
        return x
    out = x.contiguous().clone()  # dist.all_reduce writes in place; the IR is functional
    dist.all_reduce(out, group=_group(world, "all_reduce"))
    return out


def all_gather(x: torch.Tensor, axis: int, world: int) -> torch.Tensor:
    if world == 1:
        return x
    group = _group(world, "all_gather")
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=axis)


COLLECTIVE_OPS = {"all_reduce": all_reduce, "all_gather": all_gather}
