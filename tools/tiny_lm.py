"""Train a tiny byte-level Llama on the standard library's sources; score low-bit pipelines.

Random weights give near-tied logits, so top-1 agreement on them measures nothing. This
tool trains a real (small) causal LM here, offline, in a few minutes on the CPU:
``transformers.LlamaForCausalLM`` over bytes (vocab 256), on the ``.py`` files at the top
of the standard library (every tenth file held out), and caches the Hugging Face directory
in ``~/.cache/tgraph-tiny-lm``. ``eval`` then compiles it with each pipeline and compares
next-token predictions with fp32 (tgraph's default pipeline) over held-out windows: top-1
agreement and perplexity of the true next bytes.

    python tools/tiny_lm.py train --seconds 270 --threads 1
    python tools/tiny_lm.py eval --pipelines int8-weight,int4,int8 --backends ort,torch
    python tools/tiny_lm.py eval --pipelines int4 --calibrate 16   # also with GPTQ
    python tools/tiny_lm.py eval --pipelines int4 --calibrate 16 --accuracy '{"min_top1": 0.99}'

``--calibrate N`` also compiles each pipeline with ``calibration=``: N windows of the
training text (the evaluated windows are held out, so the two never overlap).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

CACHE = Path(os.environ.get("TGRAPH_TINY_LM", Path.home() / ".cache" / "tgraph-tiny-lm"))
SEQ = 128


def corpus() -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) bytes of the top-level standard library modules, in name order."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    train, held = [], []
    for i, f in enumerate(files):
        (held if i % 10 == 0 else train).append(f.read_bytes())
    return (
        np.frombuffer(b"\n".join(train), np.uint8).astype(np.int64),
        np.frombuffer(b"\n".join(held), np.uint8).astype(np.int64),
    )


def make_model():
    import transformers as T

    config = T.LlamaConfig(
        vocab_size=256, hidden_size=192, intermediate_size=528, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ,
        tie_word_embeddings=False,
    )  # fmt: skip
    return T.LlamaForCausalLM(config)


def train(seconds: float, batch: int, lr: float) -> None:
    data, _ = corpus()
    torch.manual_seed(0)
    model = make_model()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    start, step, loss_avg = time.perf_counter(), 0, None
    while time.perf_counter() - start < seconds:
        frac = (time.perf_counter() - start) / seconds  # warmup, then cosine over the time
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / 20) * 0.5 * (1 + math.cos(math.pi * frac))
        at = torch.randint(0, len(data) - SEQ - 1, (batch,), generator=gen)
        ids = torch.stack([torch.from_numpy(data[i : i + SEQ]) for i in at.tolist()])
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_avg = loss.item() if loss_avg is None else 0.95 * loss_avg + 0.05 * loss.item()
        step += 1
        if step % 50 == 0:
            print(f"step {step}: loss {loss_avg:.3f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    CACHE.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(CACHE)
    info = {"params": params, "steps": step, "seconds": round(time.perf_counter() - start),
            "batch": batch, "seq": SEQ, "train_loss": loss_avg, "threads": torch.get_num_threads()}  # fmt: skip
    (CACHE / "training.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


def windows(count: int, train: bool = False) -> torch.Tensor:
    """``count`` held-out (or training) windows of SEQ bytes, evenly spaced."""
    data, held = corpus()
    held = data if train else held
    starts = np.linspace(0, len(held) - SEQ - 1, count).astype(int)
    return torch.stack([torch.from_numpy(held[s : s + SEQ]) for s in starts])


def scores(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Top-1 predictions and perplexity of the true next bytes (all but the last position)."""
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    nll = -logp.gather(-1, ids[:, 1:, None]).mean()
    return logits[:, :-1].argmax(-1), float(torch.exp(nll))


def evaluate(
    pipelines: list[str], backends: list[str], count: int, chunk: int, calibrate: int = 0,
    accuracy: dict | None = None,
) -> dict:  # fmt: skip
    import transformers as T

    import tgraph

    model = T.LlamaForCausalLM.from_pretrained(CACHE).eval()
    ids = windows(count)
    example = {"input_ids": ids[:chunk], "use_cache": False}
    calibration = [{"input_ids": w[None], "use_cache": False}
                   for w in (windows(calibrate, True) if calibrate else ())]  # fmt: skip

    def run(cm) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [cm(input_ids=ids[i : i + chunk], use_cache=False).logits
                 for i in range(0, count, chunk)]
            )  # fmt: skip

    result = {"positions": int(count * (SEQ - 1)), "rows": []}
    for backend in backends:
        want, ppl = scores(run(tgraph.compile(model, example, backend=backend)), ids)
        result["rows"].append({"backend": backend, "pipeline": "default", "ppl": ppl})
        for pipeline in pipelines:
            for calib in [None, calibration] if calibration else [None]:
                cm = tgraph.compile(model, example, backend=backend, pipeline=pipeline,
                                    calibration=calib, accuracy=accuracy)  # fmt: skip
                got, ppl_q = scores(run(cm), ids)
                row = {"backend": backend, "pipeline": pipeline, "calibration": len(calib or ()),
                       "top1_agreement": float((got == want).double().mean()), "ppl": ppl_q,
                       "ppl_change": ppl_q / ppl - 1}  # fmt: skip
                if cm.accuracy is not None:
                    row["kept"], row["budget"] = cm.accuracy.kept, cm.accuracy.summary()
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--seconds", type=float, default=240)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--threads", type=int, default=1)
    e = sub.add_parser("eval")
    e.add_argument("--pipelines", default="int8-weight,int4")
    e.add_argument("--backends", default="ort")
    e.add_argument("--windows", type=int, default=32)
    e.add_argument("--chunk", type=int, default=8)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--calibrate", type=int, default=0, help="also calibrate on N windows")
    e.add_argument("--accuracy", type=json.loads, help='a budget, e.g. {"min_top1": 0.99}')
    e.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.cmd == "train":
        train(args.seconds, args.batch, args.lr)
        return
    result = evaluate(args.pipelines.split(","), args.backends.split(","), args.windows,
                      args.chunk, args.calibrate, args.accuracy)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
