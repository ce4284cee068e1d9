"""GPTQ-style error feedback for block-wise int4 weights (used by ``quantize-int4``).

Round-to-nearest minimises each weight's own error; what matters is the layer's output
error ``||X W^T - X Wq^T||`` on real inputs X. With ``H = X^T X`` (K, K) from calibration
activations, GPTQ (Frantar et al., 2022) quantizes the input columns of W in order and,
after each column i, spreads that column's rounding error over the columns not yet
quantized, weighted by the inverse Hessian, so that correlated inputs compensate for it:

    U = upper Cholesky factor of (H + damp * mean(diag H) * I)^-1     (H^-1 = U^T U)
    e = (w_i - q_i) / U[i, i]                     (N,)  one error per output channel
    W[:, j] -= e * U[i, j]   for j > i

Updates are applied eagerly inside a batch of ``lazy`` columns and as one matrix product
for the columns after it. A block's scale is chosen when its first column is reached, from
the weights as updated so far (the same scale rule as round-to-nearest). Inputs never seen
in the calibration data (``H[i, i] == 0``) get zero weight: they carry no signal.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

INT4_MIN, INT4_MAX = -8, 7


def _inverse_factor(hessian: np.ndarray, damp: float) -> np.ndarray:
    """Upper U with U^T U = (H + damping)^-1; more damping if H is not positive definite."""
    k = hessian.shape[0]
    mean_diag = float(np.mean(np.diag(hessian))) or 1.0
    for factor in (damp, damp * 10, damp * 100, 1.0):
        h = hessian + np.eye(k) * (factor * mean_diag)
        try:
            lower = np.linalg.cholesky(h)
            inv_lower = np.linalg.solve(lower, np.eye(k))  # L^-1; H^-1 = L^-T L^-1
            return np.linalg.cholesky(inv_lower.T @ inv_lower).T
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("GPTQ: the calibration Hessian is not positive definite")


def gptq_codes(
    w: np.ndarray,
    hessian: np.ndarray,
    block: int,
    scales_of: Callable[[np.ndarray], np.ndarray],
    damp: float = 0.01,
    lazy: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """Codes (N, K) in -8..7 and scales (N, ceil(K / block)) of a (N, K) weight.

    ``scales_of(group)`` maps a (N, 1, B) group of weights to its (N, 1) scales.
    """
    n, k = w.shape
    if hessian.shape != (k, k):
        raise ValueError(f"GPTQ: Hessian of shape {hessian.shape} for a weight {w.shape}")
    work = w.astype(np.float64).copy()
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    work[:, dead] = 0.0
    u = _inverse_factor(h, damp)
    lazy = max(lazy, block)  # a scale block never straddles two lazy batches
    codes = np.empty((n, k), np.int8)
    scales = np.empty((n, -(-k // block)), np.float32)
    for start in range(0, k, lazy):
        end = min(start + lazy, k)
        batch = work[:, start:end]  # a view: updated in place
        errors = np.zeros_like(batch)
        for j in range(end - start):
            col = start + j
            if col % block == 0:
                group = batch[:, j : j + block].astype(np.float32)[:, None, :]
                scales[:, col // block] = scales_of(group)[:, 0]
            s = scales[:, col // block].astype(np.float64)
            q = np.clip(np.round(batch[:, j] / s), INT4_MIN, INT4_MAX)
            codes[:, col] = q
            err = (batch[:, j] - q * s) / u[col, col]
            batch[:, j:] -= np.outer(err, u[col, col:end])
            errors[:, j] = err
        if end < k:
            work[:, end:] -= errors @ u[start:end, end:]
    return codes, scales
