"""FD / KID / accuracy properties on synthetic features (no model needed)."""
from __future__ import annotations

import numpy as np
import pytest

from tlcm_toy.metrics import _clamp_rounding, attribute_accuracy, frechet_distance, kernel_inception_distance


def _gauss(n: int, seed: int, shift: float = 0.0, scale: float = 1.0, d: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, scale, (n, d))


def test_fd_of_a_set_with_itself_is_zero_and_matches_the_closed_form():
    x = _gauss(400, 0)
    assert abs(frechet_distance(x, x)) < 1e-6
    # A pure mean shift by s in d dimensions adds exactly d·s² (covariances identical).
    assert frechet_distance(x + 0.5, x) == pytest.approx(16 * 0.25, rel=1e-6)
    # Isotropic Gaussians N(0, a²I) vs N(0, b²I): FD = d·(a − b)², estimated from samples.
    assert frechet_distance(_gauss(4000, 1, scale=2.0), _gauss(4000, 2)) == pytest.approx(16.0, rel=0.1)


def test_fd_rounding_below_zero_reads_zero_and_a_real_negative_stays():
    """A rank-deficient set (40-d features embedded in 128-d, N = 250, like evaluator features of a narrow
    sampler) against itself: the unclamped sum is negative rounding noise (measured -2.1e-3, the covariances'
    traces 9e4); the demo's fd_teacher25 of the teacher's DDIM-25 row, a set against itself, is this case."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(250, 40)) @ rng.normal(size=(40, 128)) * 3 + 5
    assert frechet_distance(x, x) == 0.0
    assert frechet_distance(x + 0.1, x) == pytest.approx(128 * 0.01, rel=0.01)     # a small real distance stays
    assert _clamp_rounding(-1e-3, 1e4) == 0.0 and _clamp_rounding(-1.0, 1e4) == -1.0    # 1e-6 of the traces
    assert _clamp_rounding(2.5, 1e4) == 2.5


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_a_shift():
    same = [kernel_inception_distance(_gauss(200, 2 * i), _gauss(200, 2 * i + 1)) for i in range(20)]
    shifted = kernel_inception_distance(_gauss(200, 100, shift=0.5), _gauss(200, 101))
    assert abs(np.mean(same)) < 0.1 * shifted       # unbiased: averages to ~0, unlike FD at small N
    assert min(same) < 0 < shifted                   # the unbiased estimate can go negative
    assert abs(kernel_inception_distance(_gauss(300, 5), _gauss(300, 5))) < 0.1 * shifted


def test_kid_equals_a_naive_unbiased_mmd():
    a, b = _gauss(30, 7, d=4), _gauss(40, 8, d=4)
    k = lambda x, y: (x @ y / 4 + 1) ** 3  # noqa: E731
    aa = np.mean([k(a[i], a[j]) for i in range(30) for j in range(30) if i != j])
    bb = np.mean([k(b[i], b[j]) for i in range(40) for j in range(40) if i != j])
    ab = np.mean([k(x, y) for x in a for y in b])
    assert kernel_inception_distance(a, b) == pytest.approx(aa + bb - 2 * ab, rel=1e-9)


def test_attribute_accuracy_counts_all_attributes_jointly():
    target = {"shape": np.array([0, 1, 2, 0]), "colour": np.array([1, 1, 1, 1])}
    predicted = {"shape": np.array([0, 1, 0, 0]), "colour": np.array([1, 0, 1, 1])}
    assert attribute_accuracy(predicted, target) == {"shape": 0.75, "colour": 0.75, "all": 0.5}
