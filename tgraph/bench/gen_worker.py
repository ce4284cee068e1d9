"""One generation-benchmark contender in its own process (run as a script, not imported).

The orchestrator (tgraph.bench.generation) starts ``python gen_worker.py`` once per contender and
model, possibly with another Python (optimum-intel lives in its own venv), and talks JSON
lines with it: one request on stdin, one reply on the original stdout. Everything the
libraries print goes to stderr, which the orchestrator keeps in a log file. This file
imports only the standard library at the top, so a contender's process holds only what
that contender needs (an ORT GenAI worker never loads torch) and its peak RSS is its own.

Requests, each answered with one JSON object (``{"error": ...}`` or ``{"skip": ...}`` when
it cannot be done):

    {"op": "load", "contender": NAME, "model": DIR, "threads": T, "max_length": L, ...}
        -> {"load_s", "rss_mb", "weight_bytes" (where this contender knows them), "note"}
    {"op": "prompt", "ids": [[...], ...], "new_tokens": N}
    {"op": "warmup"} -> {"warmup_s"}: untimed calls at this prompt (see _Session.warmup)
    {"op": "run", "wake": true}
        -> {"prefill_ms", "total_ms", "tokens": [[N new ids] per row], "rss_peak_mb"}
           (membw: {"gbs"}); "wake" first makes one short untimed call (see _wake)
    {"op": "quit"}
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback
from typing import Any

# The package each contender needs, and how to install it (the skip reason names it).
NEEDS = {
    "eager": ("transformers", "transformers"),
    "static-compile": ("transformers", "transformers"),
    "optimum-intel": ("optimum.intel", "optimum-intel (see docs/generation.md, Benchmark)"),
    "ov-genai": ("openvino_genai", "openvino-genai"),
    "ort-genai": ("onnxruntime_genai", "onnxruntime-genai"),
    "tgraph-ort": ("tgraph", "tgraph"),
    "tgraph-torch": ("tgraph", "tgraph"),
    "membw": ("torch", "torch"),
}
WAKE_PROMPT = 8  # tokens of the short untimed call before each timed one


def base_name(contender: str) -> str:
    """``ov-genai[int8]`` -> ``ov-genai``."""
    return contender.split("[", 1)[0]


def _rss_mb(field: str) -> float | None:
    """VmRSS (now) or VmHWM (peak) of this process, MiB (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


class _Clock:
    """A transformers-style streamer that stamps the first new token.

    transformers' ``generate`` and tgraph's (GEN_API.md) put the prompt first, then each
    step's new tokens: the second put is the first new token."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.puts = 0

    def put(self, value: Any) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


# -- runners: load(request) -> info; generate(ids, n) -> (tokens, prefill_s, total_s) --------


class _HFGenerate:
    """transformers ``generate`` (eager, static cache + torch.compile, optimum-intel)."""

    model: Any = None
    extra: dict = {}

    def generate(self, ids: list[list[int]], n: int) -> tuple[list[list[int]], float, float]:
        import torch

        x = torch.tensor(ids, dtype=torch.long)
        clock = _Clock()
        start = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                do_sample=False, pad_token_id=0, streamer=clock, **self.extra,
            )  # fmt: skip
        end = time.perf_counter()
        return out[:, x.shape[1] :].tolist(), (clock.first or end) - start, end - start


class EagerRunner(_HFGenerate):
    def load(self, req: dict) -> dict:
        import torch
        import transformers

        torch.set_num_threads(req["threads"])
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            req["model"], dtype=torch.float32
        ).eval()
        return {"weight_bytes": torch_weight_bytes(self.model)}


class StaticCompileRunner(EagerRunner):
    """transformers' static cache with its own torch.compile of the decode step.

    transformers compiles automatically only on GPUs; ``CompileConfig._compile_all_devices``
    is its switch for other devices (mode "default": CPU has no CUDA graphs to reduce
    overhead with). Prefill runs uncompiled, as transformers chooses."""

    # Full-size warm-up calls: the first compiles, the second recompiles with dynamic
    # shapes; a shorter call would size another static cache and compile again.
    warmup_calls = 3

    def load(self, req: dict) -> dict:
        import transformers

        info = super().load(req)
        config = transformers.CompileConfig(mode="default")
        config._compile_all_devices = True
        self.extra = {"cache_implementation": "static", "compile_config": config}
        return info

    def wake(self, ids: list[list[int]]) -> None:
        import torch

        # A short generate would allocate a new static cache and recompile: run one plain
        # forward instead (uncompiled; it wakes the same thread pool).
        with torch.no_grad():
            self.model(torch.tensor([row[:WAKE_PROMPT] for row in ids]), use_cache=False)


class OptimumRunner(_HFGenerate):
    """optimum-intel's stateful OpenVINO model behind transformers' ``generate``."""

    def load(self, req: dict) -> dict:
        from optimum.intel import OVModelForCausalLM

        self.model = OVModelForCausalLM.from_pretrained(
            req["artifact"], ov_config=_ov_config(req["threads"]), compile=True
        )
        return {"note": "KV_CACHE_PRECISION=f32, INFERENCE_PRECISION_HINT=f32"}


def _ov_config(threads: int) -> dict[str, str]:
    # fp32 throughout: OpenVINO's CPU default keeps the KV cache in f16.
    return {
        "KV_CACHE_PRECISION": "f32",
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": str(threads),
    }


class OVGenAIRunner:
    """OpenVINO GenAI ``LLMPipeline`` on token ids, prefix caching off."""

    def load(self, req: dict) -> dict:
        import openvino_genai as ovg

        scheduler = ovg.SchedulerConfig()
        scheduler.enable_prefix_caching = False  # every round sends the same prompt
        self.ovg = ovg
        self.pipe = ovg.LLMPipeline(
            req["artifact"], "CPU", scheduler_config=scheduler, **_ov_config(req["threads"])
        )
        return {"note": "prefix caching off, KV f32; prefill is its perf_metrics TTFT"}

    def generate(self, ids: list[list[int]], n: int) -> tuple[list[list[int]], float, float]:
        import numpy as np
        import openvino as ov

        x = np.asarray(ids, dtype=np.int64)
        config = self.pipe.get_generation_config()
        config.max_new_tokens = config.min_new_tokens = n
        config.do_sample, config.ignore_eos = False, True
        inputs = self.ovg.TokenizedInputs(ov.Tensor(x), ov.Tensor(np.ones_like(x)))
        start = time.perf_counter()
        res = self.pipe.generate(inputs, config)
        total = time.perf_counter() - start
        # Batched calls cannot stream, so the first token's time is the pipeline's own.
        return (
            [list(map(int, t)) for t in res.tokens],
            res.perf_metrics.get_ttft().mean / 1e3,
            total,
        )


class ORTGenAIRunner:
    """ONNX Runtime GenAI's generator loop on the model builder's ONNX model."""

    def load(self, req: dict) -> dict:
        import onnxruntime_genai as og

        config = og.Config(req["artifact"])
        threads = {"intra_op_num_threads": req["threads"]}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": threads}}}))
        self.og, self.model = og, og.Model(config)
        return {"note": "KV buffer shared (past_present_share_buffer), max_length = prompt + "
                "new tokens"}  # fmt: skip

    def generate(self, ids: list[list[int]], n: int) -> tuple[list[list[int]], float, float]:
        import numpy as np

        x = np.asarray(ids, dtype=np.int32)
        start = time.perf_counter()
        params = self.og.GeneratorParams(self.model)
        length = x.shape[1] + n
        params.set_search_options(max_length=length, min_length=length, do_sample=False,
                                  batch_size=x.shape[0])  # fmt: skip
        gen = self.og.Generator(self.model, params)
        gen.append_tokens(x)  # the prefill forward
        gen.generate_next_token()  # picks the first token from the prefill's logits
        first = time.perf_counter()
        while not gen.is_done():
            gen.generate_next_token()
        end = time.perf_counter()
        tokens = [gen.get_sequence(i)[x.shape[1] :].tolist() for i in range(x.shape[0])]
        return tokens, first - start, end - start


class TgraphRunner:
    """tgraph.compile of the causal LM, then its ``generate`` (the contract in
    ARCHITECTURE.md; ``eos_token_id=[]`` switches EOS off, so every call makes n tokens)."""

    def __init__(self, backend: str, pipeline: str = "default") -> None:
        self.backend, self.pipeline = backend, pipeline

    def load(self, req: dict) -> dict:
        import torch
        import transformers

        import tgraph
        from tgraph.bench.gen_bytes import graph_weight_bytes

        torch.set_num_threads(req["threads"])
        lm = transformers.AutoModelForCausalLM.from_pretrained(
            req["model"], dtype=torch.float32
        ).eval()
        ids = torch.randint(10, 100, (2, 16), generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        self.gen = tgraph.compile(lm, {"input_ids": ids}, backend=self.backend,
                                  pipeline=self.pipeline)  # fmt: skip
        if not hasattr(self.gen, "generate"):
            raise RuntimeError(f"tgraph.compile returned a {type(self.gen).__name__} without "
                               "generate(): this tgraph does not compile generation yet")  # fmt: skip
        compiled = time.perf_counter() - start
        wait = getattr(getattr(self.gen.step, "runner", None), "wait_released", None)
        if wait is not None:  # ort: the graph's copy of the weights leaves memory in a thread
            wait()  # before any timed call, so the write competes with nothing
        info = {"note": f"compile {compiled:.1f} s, weights released "
                        f"{time.perf_counter() - start - compiled:.1f} s later"}  # fmt: skip
        if self.gen.step is not None:  # the step graph's own weights: packed where compressed
            info["weight_bytes"] = graph_weight_bytes(self.gen.step.graph)
        return info

    def generate(self, ids: list[list[int]], n: int) -> tuple[list[list[int]], float, float]:
        import torch

        x = torch.tensor(ids, dtype=torch.long)
        clock = _Clock()
        start = time.perf_counter()
        with torch.no_grad():
            out = self.gen.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                                    do_sample=False, eos_token_id=[], streamer=clock)  # fmt: skip
        end = time.perf_counter()
        return out[:, x.shape[1] :].tolist(), (clock.first or end) - start, end - start


class MembwRunner:
    """The machine's memory read bandwidth: ``x.sum()`` over a buffer far larger than the
    caches, at the contenders' thread count; one timed call is the median of five sums."""

    def load(self, req: dict) -> dict:
        import torch

        torch.set_num_threads(req["threads"])
        self.x = torch.rand(int(req.get("membw_bytes", 2**31)) // 4)
        self.x.sum()  # fault the pages in
        return {}

    def measure(self) -> dict:
        import statistics

        times = []
        for _ in range(5):
            start = time.perf_counter()
            self.x.sum()
            times.append(time.perf_counter() - start)
        return {"gbs": self.x.numel() * 4 / statistics.median(times) / 1e9}


RUNNERS = {
    "eager": EagerRunner,
    "static-compile": StaticCompileRunner,
    "optimum-intel": OptimumRunner,
    "ov-genai": OVGenAIRunner,
    "ort-genai": ORTGenAIRunner,
    "tgraph-ort": lambda: TgraphRunner("ort"),
    "tgraph-torch": lambda: TgraphRunner("torch"),
    "membw": MembwRunner,
}


# -- bytes one decode step reads ---------------------------------------------------------


def torch_weight_bytes(model: Any) -> int:
    """Bytes of the parameters one decode step reads: all of them except lookup-only
    embedding tables (a step reads one row per sequence); a table tied to the LM head is
    read whole by the head and counts, once. A mixture-of-experts layer's experts count
    k/E of their bytes, what one sequence's token reads (gen_bytes.graph_weight_bytes)."""
    import torch

    head = model.get_output_embeddings()
    head_weight = id(head.weight) if head is not None else None
    lookup = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    config = getattr(model, "config", None)
    k = getattr(config, "num_experts_per_tok", None)
    share = {}
    for m in model.modules():
        experts = getattr(m, "num_experts", None)
        if k and experts and hasattr(m, "is_concatenated"):  # transformers' experts blocks
            share.update({id(p): min(1.0, k / experts) for p in m.parameters()})
    return int(sum(
        p.numel() * p.element_size() * share.get(id(p), 1.0)
        for p in model.parameters()  # shared parameters come once
        if id(p) not in lookup or id(p) == head_weight
    ))  # fmt: skip


# -- the protocol ------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:240]}"


class _Session:
    def __init__(self) -> None:
        self.runner: Any = None
        self.ids: list[list[int]] = []
        self.new_tokens = 0

    def handle(self, req: dict) -> dict:
        op = req["op"]
        if op == "load":
            return self.load(req)
        if op == "prompt":
            self.ids, self.new_tokens = req["ids"], req["new_tokens"]
            return {}
        if op == "warmup":
            return self.warmup()
        if op == "run":
            return self.run(req.get("wake", False))
        if op == "quit":
            return {}
        return {"error": f"unknown request {op!r}"}

    def load(self, req: dict) -> dict:
        name = base_name(req["contender"])
        module, package = NEEDS[name]
        if importlib.util.find_spec(module.split(".")[0]) is None or (
            "." in module and importlib.util.find_spec(module) is None
        ):
            return {
                "skip": f"{module} is not installed in {sys.executable} (pip install {package})"
            }
        start = time.perf_counter()
        # tgraph-ort[int4]: the int4 pipeline; a peer's [int4] is only its converted model's
        pipeline = req["contender"][len(name) + 1 : -1] if name.startswith("tgraph-") else ""
        self.runner = (
            TgraphRunner(name[len("tgraph-") :], pipeline) if pipeline else RUNNERS[name]()
        )
        info = self.runner.load(req) or {}
        info.update(load_s=round(time.perf_counter() - start, 2), rss_mb=_rss_mb("VmRSS"))
        return info

    def warmup(self) -> dict:
        """Untimed calls before the timed rounds: the full prompt with 2 new tokens (every
        kernel of prefill and decode at this batch size runs once), or the runner's own
        number of full calls (torch.compile's)."""
        start = time.perf_counter()
        if isinstance(self.runner, MembwRunner):
            return {"warmup_s": 0.0}
        calls = getattr(self.runner, "warmup_calls", 0)
        for _ in range(calls):
            self.runner.generate(self.ids, self.new_tokens)
        if not calls:
            self.runner.generate(self.ids, 2)
        return {"warmup_s": round(time.perf_counter() - start, 2)}

    def run(self, wake: bool) -> dict:
        if isinstance(self.runner, MembwRunner):
            return self.runner.measure()
        if wake:
            # After the pause a thread pool is asleep; waking it would land in the timed
            # call's prefill. One short call wakes it.
            waker = getattr(self.runner, "wake", None)
            if waker:
                waker(self.ids)
            else:
                self.runner.generate([row[:WAKE_PROMPT] for row in self.ids], 1)
        tokens, prefill_s, total_s = self.runner.generate(self.ids, self.new_tokens)
        return {"prefill_ms": prefill_s * 1e3, "total_ms": total_s * 1e3, "tokens": tokens,
                "rss_peak_mb": _rss_mb("VmHWM")}  # fmt: skip


def main() -> None:
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what the libraries print goes to the log, not into the protocol
    session = _Session()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            reply = session.handle(req)
        except Exception as e:  # noqa: BLE001 - a contender failing is a result
            traceback.print_exc()
            reply = {"error": _one_line(e)}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()
        if req["op"] == "quit":
            break


if __name__ == "__main__":
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)  # run as a script: keep tgraph/bench's modules from shadowing others
    main()
