"""Sweep every architecture in transformers' base-model auto mapping through tgraph.

    python tools/hf_sweep.py --only bert,gpt2,vit --json sweep.json
    python tools/hf_sweep.py --write-docs docs/models.md          # all of them (hours on 2 cores)

For each ``model_type -> ModelClass`` of ``MODEL_MAPPING_NAMES`` it builds a tiny random
model (``tools/hf_tiny.py``), exports it with dynamic batch and sequence the way tgraph
does (``tgraph.frontend.export.export``), then compiles it on the reference, ort and torch
backends at batch 2, sequence 16 and compares every output with eager PyTorch at batch 3,
sequence 5 and batch 1, sequence 11 (max abs error <= 1e-4 of the largest |output|, at
least 1e-4). Each architecture runs in its own process under ``--timeout``; the first
failure of each stage is kept as one line. The table (architecture, exports?, reference,
ort, torch, first failure) goes to stdout and, with ``--write-docs``, between the
``<!-- hf-sweep -->`` markers of that file; the last line is the share of exported
architectures that pass on both ort and torch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
STAGES = ("reference", "ort", "torch")
SHAPES = ((3, 5), (1, 11))
BEGIN, END = "<!-- hf-sweep:begin -->", "<!-- hf-sweep:end -->"


def _line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def _max_error(want, got) -> tuple[float, float]:
    import torch
    import torch.utils._pytree as pytree

    a = [x for x in pytree.tree_leaves(want) if isinstance(x, torch.Tensor)]
    b = [x for x in pytree.tree_leaves(got) if isinstance(x, torch.Tensor)]
    if len(a) != len(b):
        raise ValueError(f"{len(b)} output tensors, eager has {len(a)}")
    err = max((float((x.float() - y.float()).abs().max()) for x, y in zip(a, b)), default=0.0)
    scale = max((float(x.float().abs().max()) for x in a), default=0.0)
    return err, scale


def check_one(model_type: str, class_name: str) -> dict:
    """Every stage of one architecture; a stage after a failed one is not run."""
    import torch

    sys.path.insert(0, HERE)
    from hf_tiny import example_inputs, tiny_model

    import tgraph
    from tgraph.frontend.export import export

    row = {"type": model_type, "class": class_name, "exports": None, "failure": None}
    try:
        model = tiny_model(model_type, class_name)
        inputs = example_inputs(model, 2, 16)
    except Exception as e:  # noqa: BLE001 - a sweep records every failure
        row["failure"] = f"build: {_line(e)}"
        return row
    try:
        export(model, (), dict(inputs))
        row["exports"] = True
    except Exception as e:  # noqa: BLE001
        row["exports"], row["failure"] = False, f"export: {_line(e)}"
        return row
    for backend in STAGES:
        try:
            cm = tgraph.compile(model, inputs, backend=backend)
            for batch, seq in SHAPES:
                other = example_inputs(model, batch, seq)
                with torch.no_grad():
                    err, scale = _max_error(model(**other), cm(**other))
                if not err <= 1e-4 * max(1.0, scale):
                    raise ValueError(f"max error {err:.1e} at batch {batch} seq {seq}")
            row[backend] = True
        except Exception as e:  # noqa: BLE001
            row[backend] = False
            row["failure"] = row["failure"] or f"{backend}: {_line(e)}"
    return row


def architectures(only: set[str] | None) -> list[tuple[str, str]]:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    items = [(t, c) for t, c in MODEL_MAPPING_NAMES.items() if isinstance(c, str)]
    return [(t, c) for t, c in items if only is None or t in only]


def run_isolated(model_type: str, class_name: str, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--one", model_type, class_name]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"type": model_type, "class": class_name, "exports": None,
                "failure": f"timeout after {timeout:.0f} s"}  # fmt: skip
    last = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
    if proc.returncode != 0 or not last:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]
        return {"type": model_type, "class": class_name, "exports": None,
                "failure": f"crashed (exit {proc.returncode}): {tail}"}  # fmt: skip
    return json.loads(last[0])


def _mark(v) -> str:
    return {True: "yes", False: "no", None: "-"}[v]


def table(rows: list[dict]) -> str:
    lines = ["| architecture | exports | reference | ort | torch | first failure |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        fail = (r["failure"] or "").replace("|", "\\|")
        lines.append(f"| {r['class']} | {_mark(r['exports'])} | "
                     + " | ".join(_mark(r.get(s)) for s in STAGES) + f" | {fail} |")  # fmt: skip
    exported = [r for r in rows if r["exports"]]
    both = [r for r in exported if r.get("ort") and r.get("torch")]
    share = 100 * len(both) / len(exported) if exported else 0.0
    lines.append("")
    lines.append(
        f"{len(rows)} architectures, {len(exported)} export with dynamic batch and "
        f"sequence; {len(both)} of those ({share:.0f}%) match eager on ort and torch."
    )
    return "\n".join(lines) + "\n"


def write_docs(path: str, text: str) -> None:
    with open(path) as f:
        doc = f.read()
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END) :]
    else:
        doc = doc.rstrip("\n") + "\n\n## Every architecture (tools/hf_sweep.py)\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", nargs=2, metavar=("TYPE", "CLASS"), help=argparse.SUPPRESS)
    p.add_argument("--only", help="Comma-separated model types (default: all).")
    p.add_argument("--timeout", type=float, default=300.0, help="Seconds per architecture.")
    p.add_argument("--json", help="Write the rows here.")
    p.add_argument("--write-docs", help="Replace the sweep table in this markdown file.")
    args = p.parse_args()
    if args.one:
        print(json.dumps(check_one(*args.one)))
        return
    only = set(args.only.split(",")) if args.only else None
    rows = []
    for i, (model_type, class_name) in enumerate(architectures(only)):
        start = time.perf_counter()
        rows.append(run_isolated(model_type, class_name, args.timeout))
        print(f"[{i + 1}] {class_name}: {rows[-1]['failure'] or 'ok'} "
              f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    text = table(rows)
    print(text, end="")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.write_docs:
        write_docs(args.write_docs, text)


if __name__ == "__main__":
    main()
