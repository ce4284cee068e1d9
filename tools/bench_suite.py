"""Run `tgraph.bench` over a list of models and shapes; write JSON and a markdown table.

    python tools/bench_suite.py --out docs/bench-cpu.json \
        --cases zoo:bert-base:1x128 zoo:gpt-small:1x128 zoo:transformer:1x32

Each case is CHECKPOINT:BATCHxSEQ. Contenders default to every peer; a peer that fails
to build is reported with its error. Runs are interleaved within a case (see tgraph.bench).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from tgraph.bench import CONTENDERS, bench
from tgraph.checkpoints import load_model


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown(reports: list[dict]) -> str:
    names = [r["name"] for r in reports[0]["results"]]
    head = "| model, batch x seq | " + " | ".join(names) + " |"
    rows = [head, "|" + "---|" * (len(names) + 1)]
    for rep in reports:
        cells = []
        for r in rep["results"]:
            if r["error"]:
                cells.append("failed")
            else:
                cells.append(
                    f"{r['median_ms']:.2f} ({r['ratio_to_eager']:.2f}x, err {r['max_abs_error']:.0e})"
                )
        rows.append(
            f"| {rep['model']} {rep['batch']}x{rep['seq_len']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", required=True, help="CHECKPOINT:BxS entries")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--pipeline", default="default")
    parser.add_argument("--out", required=True, help="JSON result file")
    args = parser.parse_args()
    reports = []
    for case in args.cases:
        spec, shape = case.rsplit(":", 1)
        batch, seq = (int(x) for x in shape.split("x"))
        loaded = load_model(spec, batch=batch, seq=seq)
        report = bench(
            loaded.model, loaded.example_inputs, name=loaded.name,
            contenders=tuple(args.contenders.split(",")), repeats=args.repeats,
            pipeline=args.pipeline, progress=lambda m, c=case: print(f"[{c}] {m}", flush=True),
        )  # fmt: skip
        reports.append(report.to_json())
        print(markdown(reports[-1:]), flush=True)
    result = {
        "machine": {
            "cpu": _cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },  # fmt: skip
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python tools/bench_suite.py " + " ".join(f"--cases {c}" for c in args.cases),
        "reports": reports,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(markdown(reports))


if __name__ == "__main__":
    main()
