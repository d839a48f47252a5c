"""Distribution and prompt-adherence metrics on evaluator features (docs/eval.md §5), in float64 numpy.

FD is the Fréchet distance between Gaussian fits (biased in N: compare at equal N only); KID is the
*unbiased* MMD² estimate with the polynomial kernel k(x, y) = (x·y/d + 1)³ of Bińkowski et al. (2018),
near 0 (and possibly < 0) for two samples of one distribution.
"""
from __future__ import annotations

import numpy as np


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


# FD is >= 0, but its matrix square roots come from eigendecompositions whose rounding moves the (near-)zero
# eigenvalues of a rank-deficient covariance by ~1e-16 of the largest, and their square roots by far more:
# a set against itself (the teacher's DDIM-25 row's fd_teacher25) comes out slightly below 0 instead of 0. A
# negative value within this fraction of tr(Σa) + tr(Σb) is that rounding and reads 0; a larger negative one
# cannot come from rounding and is returned as it is, so that a bug stays visible.
FD_ROUNDING_TOLERANCE = 1e-6


def _clamp_rounding(fd: float, scale: float) -> float:
    return 0.0 if -FD_ROUNDING_TOLERANCE * scale <= fd < 0.0 else fd


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2(Σa^½ Σb Σa^½)^½), features as rows; rounding noise below 0 reads 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrt_psd(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0.0, None)).sum()
    traces = float(np.trace(cov_a) + np.trace(cov_b))
    return _clamp_rounding(float(((mu_a - mu_b) ** 2).sum() + traces - 2.0 * cross), traces)


def kernel_inception_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel (diagonal terms excluded)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a.shape[1]
    k_aa, k_bb, k_ab = ((x @ y.T / d + 1.0) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    m, n = len(a), len(b)
    return float((k_aa.sum() - np.trace(k_aa)) / (m * (m - 1)) + (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
                 - 2.0 * k_ab.mean())


def attribute_accuracy(predicted: dict[str, np.ndarray], target: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of samples whose predicted attribute is the prompted one, per attribute and all at once
    (``all``: the CLIP-score analogue, every attribute of the prompt right)."""
    hits = {name: np.asarray(predicted[name]) == np.asarray(target[name]) for name in target}
    scores = {name: float(h.mean()) for name, h in hits.items()}
    scores["all"] = float(np.logical_and.reduce(list(hits.values())).mean())
    return scores
