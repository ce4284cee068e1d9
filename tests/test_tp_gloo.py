"""Tensor parallelism end to end: 2 processes over gloo on the CPU (torch.distributed).

Artifacts are compiled once in this process (``world_size=2`` writes every rank's weight
file); each rank process loads only its shard. Outputs must match eager PyTorch within
1e-4 at two shapes. Launch failures must end in one line, not a hang.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.utils._pytree as pytree
import tp_workers
from model_cases import get_case

import tgraph

MODELS = ("hf-bert", "hf-gpt2", "hf-llama")
SHAPES = ((2, 9), (1, 5))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leaves(out) -> list[np.ndarray]:
    return [t.numpy() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Per model: the artifact, and per shape an inputs .npz and eager's outputs."""
    root = tmp_path_factory.mktemp("tp")
    made = {}
    for name in MODELS:
        case = get_case(name)
        cm = tgraph.compile(case.model, case.make(2, 16, 0), backend="torch", world_size=2)
        cm.save(root / name)
        runs = []
        for batch, seq in SHAPES:
            kwargs = case.make(batch, seq, 7)
            inputs = root / f"{name}-{batch}x{seq}.npz"
            np.savez(inputs, **{k: v.numpy() for k, v in kwargs.items() if torch.is_tensor(v)})
            plain = {k: v for k, v in kwargs.items() if not torch.is_tensor(v)}
            with torch.no_grad():
                want = _leaves(case.model(**kwargs))
            runs.append((inputs, want, plain))
        made[name] = (root / name, runs)
    return made


def test_two_gloo_ranks_match_eager(artifacts, tmp_path):
    jobs, expected = [], []
    for name, (artifact, runs) in artifacts.items():
        for i, (inputs, want, plain) in enumerate(runs):
            out = str(tmp_path / f"{name}-{i}")
            jobs.append((str(artifact), str(inputs), out, plain))
            expected.append((name, out, want))
    # the ranks also compile GPT-2 themselves (each builds only its own graph)
    args = (2, _free_port(), jobs, "hf-gpt2")
    mp.spawn(tp_workers.run_artifacts, args=args, nprocs=2, join=True)
    for name, out, want in expected:
        for rank in range(2):
            got = np.load(f"{out}.rank{rank}.npz")
            got = [got[f"arr_{i}"] for i in range(len(got.files))]
            assert len(got) == len(want), name
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=name)


def test_each_rank_reads_only_its_weight_file(artifacts):
    artifact = artifacts["hf-llama"][0]
    files = sorted(os.listdir(artifact))
    assert [f for f in files if f.startswith("weights")] == [
        "weights-rank0.safetensors", "weights-rank1.safetensors", "weights.safetensors",
    ]  # fmt: skip
    cm = tgraph.load(artifact, rank=1)
    assert cm.sharding.world == 2 and cm.sharding.rank == 1
    table = cm.graph.initializers["model.embed_tokens.weight.vocab"].const
    assert table.shape == (50, 32)
    with pytest.raises(tgraph.ArtifactError, match="pass rank= to tgraph.load"):
        tgraph.load(artifact)


def _torchrun(nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", "-m", "tgraph", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def test_torchrun_runs_the_cli_on_two_ranks(artifacts, tmp_path):
    artifact, runs = artifacts["hf-llama"]
    inputs, want, _ = runs[0]
    out = tmp_path / "out.npz"
    done = _torchrun(2, "run", str(artifact), "--inputs", str(inputs), "--output", str(out))
    assert done.returncode == 0, done.stderr[:3000]
    np.testing.assert_allclose(np.load(out)["logits"], want[0], rtol=1e-4, atol=1e-4)
    for rank in range(2):
        assert f"rank {rank}/2: weights " in done.stderr and "peak RSS" in done.stderr
    assert done.stdout.count("logits: float32[2, 9, 100]") == 1  # rank 0 speaks


def _tgraph(env: dict, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tgraph", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**ENV, **env})


def test_a_launcher_with_the_wrong_world_size_is_one_line(artifacts):
    artifact, runs = artifacts["hf-llama"]
    # what torchrun --nproc-per-node 1 sets (no torchrun: it only adds its own start-up)
    env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    done = _tgraph(env, "run", str(artifact), "--inputs", str(runs[0][0]))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "tgraph: error: the model is sharded over 2 ranks, but the launcher started 1; "
        "launch it with torchrun --nproc-per-node 2"
    ]


def test_a_rank_that_never_starts_times_out_in_one_line(artifacts):
    artifact, runs = artifacts["hf-llama"]
    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "TGRAPH_DIST_TIMEOUT": "3"}  # fmt: skip
    done = _tgraph(env, "run", str(artifact), "--inputs", str(runs[0][0]))  # rank 1 never comes
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("tgraph: error: rank 0: the 2-rank gloo process group did not start")
    assert "did every rank start?" in line


def test_cli_compiles_every_rank_and_torchrun_benches_it(tmp_path):
    from click.testing import CliRunner

    from tgraph.cli import main

    out = tmp_path / "llama2.tg"
    args = ["compile", "zoo:llama-tiny", "-o", str(out), "--backend", "torch", "--world-size", "2"]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    assert (out / "weights-rank1.safetensors").exists()
    bench = _torchrun(2, "bench", str(out), "--seq-len", "8", "--repeats", "2", "--warmup", "1")
    assert bench.returncode == 0, bench.stderr[:3000]
    (line,) = [ln for ln in bench.stdout.splitlines() if ln.startswith(str(out))]
    assert "2 rank(s) x 1 thread(s), 1x8: median" in line
    assert "'all_reduce': {'count': 5, 'bytes': 5120}" in line  # 4 block closers + embedding
