"""Sharded models in the API: which rank a compile builds, and weights per rank on disk.

``tgraph.compile(..., world_size=N)`` (or a pipeline with ``shard{world=N}``) runs the
``shard`` pass for this process's rank when it runs under torchrun, and for rank 0 in a
plain process. A plain process is where a sharded artifact is made: it keeps a
reference to each full weight the pass cut (no copy: they are the model's or the
pipeline's arrays), so ``cm.save(dir)`` can cut and write every rank's file:

    graph.json, manifest.json       the graph (the same for every rank), world_size
    weights.safetensors             the replicated initializers
    weights-rank{r}.safetensors     rank r's slices (ShardSpec in each initializer's meta)

``tgraph.load(dir, rank=r)`` (or under torchrun, the launched rank) reads only the shared
file and its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tgraph.distributed import check_world, launched_rank
from tgraph.ir import Graph
from tgraph.ir.sharding import spec_of
from tgraph.passes.manager import PassInstrument, PassManager, PassSpec, PipelineError

if TYPE_CHECKING:
    from tgraph.api import CompiledModel


@dataclass
class Sharding:
    """A compiled model's place in a tensor-parallel world.

    Attributes:
        world: the number of ranks.
        rank: this model's rank (its weights).
        sources: full weights by name, from which every rank's slices are cut (a plain
            process's compile only; None after ``load`` or under torchrun).
    """

    world: int
    rank: int
    sources: dict[str, np.ndarray] | None = None


class _KeepSources(PassInstrument):
    """Remembers the initializers the shard pass will cut (references, not copies)."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def before_pass(self, graph: Graph, spec: PassSpec, index: int) -> None:
        if spec.name == "shard":
            self.arrays = {k: v.const for k, v in graph.initializers.items()}


@dataclass
class Pending:
    world: int
    rank: int
    keep: _KeepSources | None

    def finish(self, graph: Graph) -> Sharding:
        sources = None
        if self.keep is not None:
            names = {s.source for v in graph.initializers.values() if (s := spec_of(v))}
            sources = {n: self.keep.arrays[n] for n in sorted(names) if n}
        return Sharding(self.world, self.rank, sources)


def prepare(manager: PassManager, world_size: int, verify: bool = False) -> Pending | None:
    """Put this process's rank into the pipeline's ``shard`` entry (adding one for
    ``world_size > 1``); None when the model is not sharded. ``verify`` (numeric checks
    of every pass in this one process) cannot run a sharded graph and is refused."""
    at = [i for i, s in enumerate(manager.specs) if s.name == "shard"]
    if len(at) > 1:
        raise PipelineError("the pipeline runs shard twice; a graph is sharded once")
    if not at:
        if world_size == 1:
            return None
        manager.specs.append(PassSpec("shard", (("world", world_size),)))
        at = [len(manager.specs) - 1]
    options = dict(manager.specs[at[0]].options)
    world = int(options.get("world", 1))
    if world_size != 1 and world != world_size:
        raise PipelineError(f"world_size={world_size} but the pipeline says shard{{world={world}}}")
    if world == 1:
        return None
    if verify:
        raise PipelineError(
            "verify=True checks passes in one process, which cannot run a sharded graph; "
            "verify the pipeline without shard (the shard pass is checked by simulating "
            "every rank: tgraph.backends.reference.run_ranks)"
        )
    check_world(world, "the model")
    launched = launched_rank()
    options.setdefault("rank", 0 if launched is None else launched)
    manager.specs[at[0]] = PassSpec("shard", tuple(options.items()))
    keep = _KeepSources() if launched is None else None
    if keep is not None:
        manager.instruments.append(keep)
    return Pending(world, int(options["rank"]), keep)


def weight_files(
    graph: Graph, sharding: Sharding, arrays: dict[str, np.ndarray]
) -> dict[str, dict[str, np.ndarray]]:
    """``{file name: {initializer: array}}`` for a sharded artifact."""
    from tgraph.artifact import ArtifactError

    if sharding.sources is None:
        raise ArtifactError(
            f"this model holds rank {sharding.rank}'s weights only; save a sharded model from "
            f"a plain process: tgraph.compile(..., world_size={sharding.world}) without torchrun"
        )
    specs = {k: spec_of(graph.initializers[k]) for k in arrays}
    files = {"weights.safetensors": {k: a for k, a in arrays.items() if specs[k] is None}}
    for rank in range(sharding.world):
        files[f"weights-rank{rank}.safetensors"] = {
            k: s.take(sharding.sources.get(s.source), rank, arrays[k].dtype)
            for k, s in specs.items()
            if s is not None
        }
    return files


def resolve_rank(directory: str, world: int, rank: int | None) -> int:
    """The rank whose weights ``tgraph.load`` reads: ``rank``, else the launched one."""
    from tgraph.artifact import ArtifactError

    check_world(world, directory)
    if rank is None:
        rank = launched_rank()
    if rank is None:
        raise ArtifactError(
            f"{directory}: sharded over {world} ranks; pass rank= to tgraph.load or launch "
            f"with torchrun --nproc-per-node {world}"
        )
    if not 0 <= rank < world:
        raise ArtifactError(f"{directory}: rank {rank} is not in 0..{world - 1}")
    return rank


def rank_files(directory: str, manifest: dict[str, Any], rank: int | None) -> tuple[list, int]:
    """The weight files rank ``rank`` reads, and the rank."""
    world = int(manifest.get("world_size", 1))
    if world == 1:
        return [os.path.join(directory, "weights.safetensors")], 0
    rank = resolve_rank(directory, world, rank)
    names = ["weights.safetensors", f"weights-rank{rank}.safetensors"]
    return [os.path.join(directory, n) for n in names], rank


def load_launched(directory: str, device: str | None = None) -> CompiledModel:
    """``tgraph.load`` for this process; a sharded artifact starts torchrun's process group
    first (one-line errors for a wrong world size or a rank that never starts)."""
    from tgraph.artifact import load, read_manifest
    from tgraph.distributed import init_from_env

    manifest = read_manifest(directory)
    world = int(manifest.get("world_size", 1))
    if world > 1:
        init_from_env(world, device or manifest["device"])
    return load(directory, device)


def weight_bytes(graph: Graph) -> int:
    """Bytes of the graph's initializers (for a rank's graph: what the rank holds)."""
    return sum(v.const.nbytes for v in graph.initializers.values())


def is_main(cm: CompiledModel) -> bool:
    """Whether this process speaks for the model (rank 0, or an unsharded model)."""
    return cm.sharding is None or cm.sharding.rank == 0


def memory_line(cm: CompiledModel) -> str:
    """``rank 1/2: weights 12.3 MiB, peak RSS 456.7 MiB`` for a sharded model."""
    from tgraph.distributed import peak_rss_mb

    s = cm.sharding
    mib = weight_bytes(cm.graph) / 2**20
    return f"rank {s.rank}/{s.world}: weights {mib:.3g} MiB, peak RSS {peak_rss_mb():.1f} MiB"


def collective_traffic(graph: Graph, bindings: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per collective op: calls per forward and the bytes each rank contributes, with the
    symbolic dims bound (``{"batch": 1, "seq": 128}``)."""
    from tgraph.ir import evaluate
    from tgraph.ir.ops.collective import COMBINE

    out: dict[str, dict[str, int]] = {}
    for node in graph.nodes:
        if node.op not in COMBINE:
            continue
        v = node.inputs[0]
        n = int(np.prod([evaluate(d, bindings) for d in v.shape]))
        entry = out.setdefault(node.op, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += n * np.dtype(v.dtype.numpy).itemsize
    return out
