"""Rank processes for tests/test_tp_gloo.py (importable by torch.multiprocessing.spawn)."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.utils._pytree as pytree


def run_artifacts(rank: int, world: int, port: int, jobs: list[tuple[str, str, str, dict]]) -> None:
    """Load each artifact's shard for ``rank``, run it on an .npz of tensor kwargs (plus
    plain ones, ``use_cache=False``), save the output tensors."""
    import torch.distributed as dist

    import tgraph
    from tgraph.distributed import init_from_env

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    init_from_env(world, timeout=60)
    try:
        for artifact, inputs, out, plain in jobs:
            cm = tgraph.load(artifact)  # the launched rank's shard
            assert cm.sharding.rank == rank
            kwargs = {k: torch.from_numpy(v) for k, v in np.load(inputs).items()} | plain
            with torch.no_grad():
                leaves = [
                    t for t in pytree.tree_leaves(cm(**kwargs)) if isinstance(t, torch.Tensor)
                ]
            np.savez(f"{out}.rank{rank}.npz", *[t.numpy() for t in leaves])
    finally:
        dist.destroy_process_group()
