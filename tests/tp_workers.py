"""Rank processes for tests/test_tp_gloo.py (importable by torch.multiprocessing.spawn)."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.utils._pytree as pytree


def run_artifacts(
    rank: int, world: int, port: int, jobs: list[tuple[str, str, str, dict]], case: str
) -> None:
    """Load each artifact's shard for ``rank``, run it on an .npz of tensor kwargs (plus
    plain ones, ``use_cache=False``), save the output tensors; then :func:`compile_here`."""
    import torch.distributed as dist

    import tgraph
    from tgraph.distributed import end_launch, init_from_env

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
        compile_here(case, rank)
    except BaseException:
        dist.destroy_process_group()  # no barrier: the other rank may never reach it
        raise
    # every rank reaches the barrier before any closes its pairs: gloo aborts a rank
    # ("terminate called without an active exception") whose peer closed first
    end_launch()


def compile_here(name: str, rank: int) -> None:
    """Compile model case ``name`` for this rank under the running process group and
    check it against eager (raises in the rank, which fails the spawn)."""
    from model_cases import get_case

    import tgraph

    case = get_case(name)
    cm = tgraph.compile(case.model, case.make(2, 8, 0), backend="torch", world_size=2)
    assert cm.sharding.rank == rank and cm.sharding.sources is None  # only its own slices
    kwargs = case.make(1, 6, 3)
    with torch.no_grad():
        got, want = cm(**kwargs), case.model(**kwargs)
    for g, w in zip(pytree.tree_leaves(got), pytree.tree_leaves(want)):
        if isinstance(w, torch.Tensor):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
