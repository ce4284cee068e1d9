"""Side-by-side latency benchmarks: tgraph against eager PyTorch and its peers.

Every contender is built first (build time and memory recorded), its output checked
against eager, then all contenders run interleaved (one call each per round, rounds after
warm-up) so that machine noise hits everyone alike. Reported per contender: median and
spread (interquartile range) in ms, ratio to eager, max abs error against eager, build
seconds (for tgraph also trace / optimize / lower), and memory. A contender that cannot be
built (torch.compile failing, a package missing, an unknown pipeline) is reported with a
one-line reason instead of a time.

Contenders:
    eager, torch.compile, ort-plain (ONNX Runtime on a plain ``torch.onnx.export``),
    ort-optimizer (that export through ``onnxruntime.transformers.optimizer``), ort-int8
    (that export through ``onnxruntime.quantization.quantize_dynamic``), openvino (fp32),
    openvino-bf16 (``INFERENCE_PRECISION_HINT=bf16``), and ``tgraph-<backend>`` or
    ``tgraph-<backend>[<pipeline>]`` (for instance ``tgraph-ort[int8]``): tgraph.compile with
    that backend and pipeline.

CUDA (``device="cuda"``, see docs/gpu.md). The model and inputs move to the GPU; with
``dtype="fp16"`` or ``"bf16"`` every contender gets a copy of the model in that dtype (float
inputs too), except ``tgraph-<backend>[<pipeline>]`` columns whose pipeline converts an fp32
model itself (:data:`CONVERTING_PIPELINES`), which get the fp32 model. Errors are measured
against eager fp32 on the GPU and reported also relative to the reference's largest
magnitude, against the dtype's :data:`TOLERANCE`. Each timed call is bracketed by
``torch.cuda.synchronize()``, so a time is the call's whole latency, host overhead included.
Peers: eager, torch.compile, ``torch.compile[reduce-overhead]`` (CUDA graphs) and tgraph;
the ONNX Runtime and OpenVINO peers are CPU-only here and are skipped.

Memory. Contenders are built one after another in this process. Before each build the
garbage collector runs and glibc returns free heap to the system (``malloc_trim``); the
kernel's peak-RSS mark is reset (``/proc/self/clear_refs``, Linux). ``rss_peak_mb`` is the
highest RSS reached while building and first running the contender, minus the RSS before;
``rss_held_mb`` is what stays resident after the build. Both include everything the
contender allocated (ONNX exports, sessions, packed weights) and exclude the model and
inputs that every contender shares. torch.compile's compile workers run in other
processes and are not counted.
"""

from tgraph.bench.contenders import (
    CONTENDERS,
    CONVERTING_PIPELINES,
    DEFAULT_CONTENDERS,
    GPU_DEFAULT_CONTENDERS,
    PEERS,
    Contender,
    expand_contenders,
    lookup,
    missing_package,
)
from tgraph.bench.exporters import export_onnx
from tgraph.bench.measure import bench, time_interleaved
from tgraph.bench.results import TOLERANCE, BenchReport, BenchResult
from tgraph.bench.table import COLUMNS, format_table, notes, table_rows

__all__ = [
    "COLUMNS",
    "CONTENDERS",
    "CONVERTING_PIPELINES",
    "DEFAULT_CONTENDERS",
    "GPU_DEFAULT_CONTENDERS",
    "PEERS",
    "TOLERANCE",
    "BenchReport",
    "BenchResult",
    "Contender",
    "bench",
    "expand_contenders",
    "export_onnx",
    "format_table",
    "lookup",
    "missing_package",
    "notes",
    "table_rows",
    "time_interleaved",
]
