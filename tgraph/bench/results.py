"""What a benchmark run reports: one BenchResult per contender, in a BenchReport."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# The largest error, relative to the largest magnitude of eager fp32's outputs, that a
# contender may show in each bench dtype (fp16/bf16: a few ulps carried through the layers).
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2}


@dataclass
class BenchResult:
    """One contender's measurements (times in milliseconds, memory in MiB)."""

    name: str
    median_ms: float | None = None
    iqr_ms: float | None = None
    ratio_to_eager: float | None = None
    max_abs_error: float | None = None
    build_s: float | None = None
    stages_s: dict[str, float] = field(default_factory=dict)
    rss_peak_mb: float | None = None
    rss_held_mb: float | None = None
    error: str | None = None
    note: str | None = None
    times_ms: list[float] = field(default_factory=list)
    # CUDA or low-precision runs only (left out of the JSON of a CPU fp32 run):
    rel_error: float | None = None  # max abs error / max |eager fp32 output|
    cuda_peak_mb: float | None = None  # GPU memory the build and first call allocated at peak


@dataclass
class BenchReport:
    model: str
    batch: int
    seq_len: int
    threads: int
    repeats: int
    results: list[BenchResult]
    peak_rss_mb: float
    date: str
    load_avg: tuple[float, float] | None = None  # 1-minute load average before and after
    device: str = "cpu"
    dtype: str = "fp32"
    gpu: str | None = None  # the CUDA device's name

    @property
    def tolerance(self) -> float:
        return TOLERANCE[self.dtype]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        plain = self.device == "cpu" and self.dtype == "fp32"  # the CPU format, unchanged
        for r in out["results"]:
            r.pop("times_ms")
            if plain:
                r.pop("rel_error")
                r.pop("cuda_peak_mb")
        if plain:
            for key in ("device", "dtype", "gpu"):
                out.pop(key)
        else:
            out["tolerance"] = self.tolerance
        return out
