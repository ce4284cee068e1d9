"""Image resizing: ``resize`` (bilinear, bicubic or nearest resampling of the last two dims,
torch's ``interpolate`` semantics)."""

from __future__ import annotations

import numpy as np

from tgraph.ir.core import IRError, TensorType

from .registry import REQUIRED, defop

MODES = ("nearest", "linear", "cubic")
CUBIC_A = -0.75  # torch's (and Keys') bicubic coefficient


def _resize_infer(x: TensorType, size, scales, mode, align_corners) -> TensorType:
    if x.rank != 4 or len(size) != 2:
        raise IRError(f"resize: want a rank-4 input and a 2-entry size, got {x.rank}, {size}")
    if mode not in MODES:
        raise IRError(f"resize: mode {mode!r}, want one of {MODES}")
    if scales and len(scales) != 2:
        raise IRError(f"resize: scales {scales} must have 2 entries (or none)")
    return TensorType(x.dtype, (*x.shape[:2], *size))


def _source(n_in: int, n_out: int, scale: float | None, mode: str, align: bool) -> np.ndarray:
    """Where each output index reads along one axis, in input coordinates (float64).

    ``scale`` is the user's scale factor when given (torch then maps with 1/scale, not
    n_in/n_out); linear half-pixel sources are clamped at 0 as torch does, cubic ones not.
    """
    dst = np.arange(n_out, dtype=np.float64)
    ratio = 1.0 / scale if scale else n_in / n_out
    if mode == "nearest":
        return np.minimum(np.floor(dst * ratio), n_in - 1)
    if align:
        return dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    src = (dst + 0.5) * ratio - 0.5
    return np.maximum(src, 0.0) if mode == "linear" else src


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    """Keys' cubic convolution weights of the taps at floor(src) - 1 .. floor(src) + 2."""
    a = CUBIC_A
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # noqa: E731  (|x| <= 1)
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # noqa: E731  (1 < |x| < 2)
    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _interp_axis(x: np.ndarray, axis: int, src: np.ndarray, mode: str) -> np.ndarray:
    n_in = x.shape[axis]
    lo = np.floor(src).astype(np.int64)
    if mode == "nearest":
        return np.take(x, lo, axis=axis)
    shape = [-1 if a == axis else 1 for a in range(x.ndim)]
    if mode == "cubic":  # taps past the edge read the edge (torch clamps the index)
        weights = _cubic_weights(src - lo)
        taps = [np.take(x, np.clip(lo + k - 1, 0, n_in - 1), axis=axis) for k in range(4)]
        return sum(w.reshape(shape) * tap for w, tap in zip(weights, taps))
    lo = np.minimum(lo, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (src - lo).reshape(shape)
    return np.take(x, lo, axis=axis) * (1.0 - w) + np.take(x, hi, axis=axis) * w


def _resize_kernel(x, size, scales, mode, align_corners):
    y = x.astype(np.float64)
    for i, axis in enumerate((2, 3)):
        scale = scales[i] if scales else None
        src = _source(x.shape[axis], int(size[i]), scale, mode, align_corners)
        y = _interp_axis(y, axis, src, mode)
    return y.astype(x.dtype)


defop(
    "resize",
    infer=_resize_infer,
    kernel=_resize_kernel,
    attrs={"size": REQUIRED, "scales": (), "mode": "linear", "align_corners": False},
    doc="Resize (N, C, H, W) to size (H', W'): mode 'linear' (bilinear), 'cubic' (bicubic, "
    "a = -0.75) or 'nearest'; "
    "scales, when given, are the user's scale factors (torch maps coordinates with them).",
)
