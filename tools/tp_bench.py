"""Tensor parallelism on the CPU: tgraph's shard pass against torch's parallelize_module.

Run under torchrun, one process per rank, one thread each (gloo):

    torchrun --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29500 \\
        tools/tp_bench.py --model llama-small --batch 1 --seq-len 128 --json tp.json

Per model it reports: weight bytes per rank for tgraph's sharded graph and for the
peer (1/N of the split weights plus the replicated ones), against one process; the
all_reduce / all_gather count and bytes per forward; and the median latency of eager and
tgraph-torch on one rank (the other ranks wait), and of tgraph (shard pass) and eager
with ``parallelize_module`` (ColwiseParallel / RowwiseParallel on DTensor, vocab-parallel
embedding and LM head like torch's TP tutorial) on all ranks. Every contender's outputs
are checked against eager's. A round's time is the slowest rank's; rounds alternate the
contenders. Models are Hugging Face architectures built from their configs with random
weights (no download). Timings mean nothing on a loaded machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.utils._pytree as pytree

import tgraph
from tgraph.bench.sharded import time_rounds
from tgraph.sharded import collective_traffic, weight_bytes

# name -> (transformers config class, its kwargs); "tiny" ones check the tool in seconds
MODELS = {
    "llama-tiny": ("LlamaConfig", dict(vocab_size=100, hidden_size=32, intermediate_size=64,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)),
    "llama-small": ("LlamaConfig", dict(vocab_size=32000, hidden_size=512, intermediate_size=1408,
                    num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4)),
    "gpt2-tiny": ("GPT2Config", dict(vocab_size=100, n_embd=32, n_layer=2, n_head=4)),
    "gpt2": ("GPT2Config", {}),
    "bert-tiny": ("BertConfig", dict(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=64)),
    "bert-base": ("BertConfig", {}),
}  # fmt: skip
_CLASSES = {"LlamaConfig": "LlamaForCausalLM", "GPT2Config": "GPT2LMHeadModel",
            "BertConfig": "BertModel"}  # fmt: skip


def build(name: str) -> torch.nn.Module:
    import transformers as T

    config_name, kwargs = MODELS[name]
    torch.manual_seed(0)  # every rank builds the same weights
    config = getattr(T, config_name)(**kwargs)
    return getattr(T, _CLASSES[config_name])(config).eval()


def example(model: torch.nn.Module, batch: int, seq: int) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)
    if model.config.model_type == "bert":
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return {"input_ids": ids, "use_cache": False}


def peer_plan(model: torch.nn.Module) -> tuple[list[tuple[torch.nn.Module, dict]], str | None]:
    """parallelize_module plans per submodule, or why the peer cannot run this model."""
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    col, row = ColwiseParallel, RowwiseParallel
    kind = model.config.model_type
    if kind == "llama":
        top = {"model.embed_tokens": row(input_layouts=Replicate()),
               "lm_head": col(output_layouts=Replicate())}  # fmt: skip
        layer = {"self_attn.q_proj": col(), "self_attn.k_proj": col(), "self_attn.v_proj": col(),
                 "self_attn.o_proj": row(), "mlp.gate_proj": col(), "mlp.up_proj": col(),
                 "mlp.down_proj": row()}  # fmt: skip
        return [(model, top)] + [(b, layer) for b in model.model.layers], None
    if kind == "bert":
        layer = {"attention.self.query": col(), "attention.self.key": col(),
                 "attention.self.value": col(), "attention.output.dense": row(),
                 "intermediate.dense": col(), "output.dense": row()}  # fmt: skip
        return [(b, layer) for b in model.encoder.layer], None
    return [], f"{kind}: its projections are not nn.Linear (Conv1D / one packed qkv)"


def parallelized(model: torch.nn.Module, world: int) -> tuple[torch.nn.Module | None, str]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    peer = copy.deepcopy(model)
    plans, why = peer_plan(peer)
    if why:
        return None, why
    mesh = init_device_mesh("cpu", (world,))
    for module, plan in plans:
        parallelize_module(module, mesh, plan)
    return peer, ""


def local_bytes(module: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers this rank holds (a DTensor's local shard)."""
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def tensors(out) -> list[torch.Tensor]:
    leaves = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    return [t.full_tensor() if hasattr(t, "full_tensor") else t for t in leaves]


def max_error(out, ref) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(tensors(out), tensors(ref)))


def medians(contenders: dict, repeats: int, warmup: int, group_wide: bool) -> dict:
    times = time_rounds(contenders, repeats, warmup, group_wide)
    return {name: statistics.median(t) for name, t in times.items()}


def one_rank(model, inputs: dict, ref, args, result: dict) -> None:
    """Eager and tgraph-torch unsharded on rank 0 while the other ranks wait."""
    if dist.get_rank() == 0:
        single = tgraph.compile(model, inputs, backend="torch")
        result["weight_bytes"] = {"1 process": weight_bytes(single.graph)}
        with torch.no_grad():
            result["max_error"]["tgraph 1 rank"] = max_error(single(**inputs), ref)
        result["latency_ms"].update(medians(
            {"eager 1 rank": lambda: model(**inputs), "tgraph 1 rank": lambda: single(**inputs)},
            args.repeats, args.warmup, group_wide=False))  # fmt: skip
    dist.barrier()


def all_ranks(model, inputs: dict, ref, args, result: dict):
    """tgraph's shard pass and parallelize_module on every rank; returns both models."""
    world = dist.get_world_size()
    sharded = tgraph.compile(model, inputs, backend="torch", world_size=world)
    peer, why = parallelized(model, world)
    contenders = {f"tgraph {world} ranks": sharded}
    if peer is not None:
        contenders[f"parallelize_module {world} ranks"] = peer
    with torch.no_grad():
        for name, m in contenders.items():
            result["max_error"][name] = max_error(m(**inputs), ref)
    calls = {name: (lambda m=m: m(**inputs)) for name, m in contenders.items()}
    result["latency_ms"].update(medians(calls, args.repeats, args.warmup, group_wide=True))
    result["peer"] = why or "parallelize_module (ColwiseParallel / RowwiseParallel)"
    bindings = {s: args.batch if s == "batch" else args.seq_len for s in sharded.graph.symbols()}
    result["collectives_per_forward"] = collective_traffic(sharded.graph, bindings)
    return sharded, peer


def memory(model, sharded, peer, result: dict) -> None:
    """Weight bytes per rank (tgraph's graph, the peer's local shards) and peak RSS."""
    from tgraph.distributed import peak_rss_mb

    world = dist.get_world_size()
    mine = [weight_bytes(sharded.graph), local_bytes(peer) if peer is not None else 0]
    mine.append(round(peak_rss_mb(), 1))
    ranks = [None] * world
    dist.all_gather_object(ranks, mine)
    result["peak_rss_mb"] = [r[2] for r in ranks]
    if dist.get_rank() == 0:
        full = result["weight_bytes"]["1 process"]
        result["weight_bytes"].update({
            "tgraph per rank": [r[0] for r in ranks],
            "tgraph ratio": max(r[0] for r in ranks) / full,
            "peer per rank": [r[1] for r in ranks],
            "peer ratio": max(r[1] for r in ranks) / local_bytes(model),
        })  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-tiny", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    if "RANK" not in os.environ:
        sys.exit("tp_bench: run it under torchrun --nproc-per-node N (see the docstring)")
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    model = build(args.model)
    inputs = example(model, args.batch, args.seq_len)
    with torch.no_grad():
        ref = model(**inputs)
    result = {"model": args.model, "world": dist.get_world_size(), "batch": args.batch,
              "seq": args.seq_len, "threads": args.threads, "latency_ms": {},
              "max_error": {}}  # fmt: skip
    one_rank(model, inputs, ref, args, result)
    sharded, peer = all_ranks(model, inputs, ref, args, result)
    memory(model, sharded, peer, result)
    if dist.get_rank() == 0:
        print(json.dumps(result, indent=2))
        if args.json_path:
            with open(args.json_path, "w") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
