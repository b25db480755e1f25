"""zfjax.analyses.similarity against independent references: scipy's Spearman (ties averaged) and a
direct NumPy SSIM over every window."""

import numpy as np
import scipy.stats
from numpy.lib.stride_tricks import sliding_window_view

from zfjax.analyses import similarity


def _maps(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random((3, 12, 14)).astype(np.float32)
    b = (a + 0.5 * rng.random(a.shape)).astype(np.float32)
    a[1, :4] = 0.0  # rectified maps tie at zero
    b[1, :6] = 0.0
    b[2] = -b[2]
    return a, b


def test_rank_correlation_equals_scipy_with_ties():
    a, b = _maps()
    expected = [scipy.stats.spearmanr(a[i].ravel(), b[i].ravel())[0] for i in range(3)]
    np.testing.assert_allclose(similarity.rank_correlation(a, b), expected, atol=1e-5)


def test_rank_correlation_of_a_constant_map_is_zero():
    a, b = _maps()
    b[0] = 0.0
    assert float(similarity.rank_correlation(a, b)[0]) == 0.0


def _ssim_reference(a, b, data_range, window=7):
    pa = sliding_window_view(a.astype(np.float64), (window, window))
    pb = sliding_window_view(b.astype(np.float64), (window, window))
    mean_a, mean_b = pa.mean(axis=(-2, -1)), pb.mean(axis=(-2, -1))
    var_a, var_b = pa.var(axis=(-2, -1), ddof=1), pb.var(axis=(-2, -1), ddof=1)
    cov = ((pa - mean_a[..., None, None]) * (pb - mean_b[..., None, None])).sum(axis=(-2, -1)) / (window * window - 1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)) / ((mean_a ** 2 + mean_b ** 2 + c1) * (var_a + var_b + c2))
    return index.mean()


def test_ssim_equals_a_direct_computation():
    a, b = _maps()
    expected = [_ssim_reference(a[i], b[i], 2.0) for i in range(3)]
    np.testing.assert_allclose(similarity.ssim(a, b, 2.0), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(similarity.ssim(a, a, 1.0), 1.0, atol=1e-5)
