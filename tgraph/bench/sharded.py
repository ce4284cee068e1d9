"""Timing a sharded model under torchrun (``torchrun -m tgraph bench ARTIFACT``).

Every rank runs the same call; a round starts at a barrier and its time is the slowest
rank's (an all_reduce MAX of the ranks' times), so the number is what a caller waits.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist


def time_rounds(
    contenders: dict[str, Callable[[], Any]], repeats: int, warmup: int, group_wide: bool
) -> dict[str, list[float]]:
    """Per contender, the ms of each timed round (contenders alternate within a round).

    With ``group_wide`` every rank must call this together: each call starts at a barrier
    and a round's time is the slowest rank's.
    """
    times: dict[str, list[float]] = {name: [] for name in contenders}
    with torch.no_grad():
        for round_ in range(warmup + repeats):
            for name, fn in contenders.items():
                if group_wide:
                    dist.barrier()
                start = time.perf_counter()
                fn()
                elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
                if group_wide:
                    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
                if round_ >= warmup:
                    times[name].append(float(elapsed) * 1e3)
    return times


def summary(times: list[float]) -> dict[str, float]:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_ms": statistics.median(times), "p25_ms": q[0], "p75_ms": q[2]}


def bench_artifact(
    directory: str, batch: int, seq: int, repeats: int, warmup: int, threads: int | None
) -> dict[str, Any] | None:
    """Time an artifact on this rank with random inputs; rank 0 gets the report, the
    other ranks None. A sharded artifact starts torchrun's process group."""
    from tgraph.cli.npz_io import random_run_inputs
    from tgraph.distributed import end_launch, peak_rss_mb
    from tgraph.sharded import collective_traffic, is_main, load_launched, weight_bytes
    from tgraph.tensors import to_torch

    if threads:
        torch.set_num_threads(threads)
    cm = load_launched(directory)
    sizes = {s: (batch if s == "batch" else seq) for s in cm.graph.symbols()}
    inputs = [to_torch(a) for a in random_run_inputs(cm.graph, sizes, 0).arrays]
    sharded = cm.sharding is not None
    times = time_rounds({"run": lambda: cm.runner(inputs)}, repeats, warmup, sharded)["run"]
    world = cm.sharding.world if sharded else 1
    mine = [weight_bytes(cm.graph), peak_rss_mb()]
    ranks = [mine] * world
    if sharded:
        dist.all_gather_object(ranks, mine)
        end_launch()
    if not is_main(cm):
        return None
    bindings = {s: batch if s == "batch" else seq for s in cm.graph.symbols()}
    return {
        "artifact": directory, "world": world, "batch": batch, "seq": seq,
        "threads": torch.get_num_threads(), **summary(times),
        "weight_mib_per_rank": [round(r[0] / 2**20, 3) for r in ranks],
        "peak_rss_mib_per_rank": [round(r[1], 1) for r in ranks],
        "collectives_per_forward": collective_traffic(cm.graph, bindings),
    }  # fmt: skip
