"""torch.distributed plumbing for sharded models: the rank, the process group, memory.

``torchrun --nproc-per-node N`` sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_from_env` starts the default process group from them (gloo
on CPU, NCCL on CUDA) with a timeout, so a rank that never starts or a launcher with the
wrong number of processes ends in one line instead of a hang.
"""

from __future__ import annotations

import os
import resource
import sys
from datetime import timedelta

import torch.distributed as dist

TIMEOUT_ENV = "TGRAPH_DIST_TIMEOUT"  # seconds; default DEFAULT_TIMEOUT_S
DEFAULT_TIMEOUT_S = 120.0


class DistributedError(RuntimeError):
    """The launch does not fit the sharded model (world size, rank, start-up)."""


def launched_world() -> int | None:
    """The world size of the running process group, or the one torchrun set; else None."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    world = os.environ.get("WORLD_SIZE")
    return int(world) if world else None


def launched_rank() -> int | None:
    """This process's rank (process group, then torchrun's ``RANK``); None outside a launch."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    rank = os.environ.get("RANK")
    return int(rank) if rank else None


def check_world(world: int, what: str) -> None:
    """Fail in one line when the launcher started a different number of ranks than ``world``."""
    launched = launched_world()
    if launched is not None and launched != world:
        raise DistributedError(
            f"{what} is sharded over {world} ranks, but the launcher started {launched}; "
            f"launch it with torchrun --nproc-per-node {world}"
        )


def timeout_s() -> float:
    return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))


def init_from_env(world: int, device: str = "cpu", timeout: float | None = None) -> int:
    """Start the default process group for a model sharded over ``world`` ranks.

    Reads torchrun's environment; does nothing when a group is running already. Returns
    this process's rank. ``timeout`` (seconds, default ``$TGRAPH_DIST_TIMEOUT`` or 120)
    bounds the start-up and every collective.
    """
    check_world(world, "the model")
    if dist.is_initialized():
        return dist.get_rank()
    missing = [
        k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise DistributedError(
            f"the model is sharded over {world} ranks and {', '.join(missing)} is not set: "
            f"launch it with 'torchrun --nproc-per-node {world} -m tgraph ...'"
        )
    rank = int(os.environ["RANK"])
    seconds = timeout_s() if timeout is None else timeout
    backend = "nccl" if device.startswith("cuda") else "gloo"
    try:
        dist.init_process_group(
            backend, rank=rank, world_size=world, timeout=timedelta(seconds=seconds)
        )
    except Exception as e:  # noqa: BLE001 - a store or rendezvous failure: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(
            f"rank {rank}: the {world}-rank {backend} process group did not start within "
            f"{seconds:g} s (did every rank start?): {first}"
        ) from None
    return rank


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def end_launch() -> None:
    """Wait for every rank, then close the process group (gloo aborts a process that
    exits with its threads still running)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
