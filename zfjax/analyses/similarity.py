"""How alike two attribution maps are: the measures of Adebayo et al. 2018, "Sanity checks
for saliency maps" (section 3): Spearman rank correlation and the structural similarity
index (SSIM). Pure, jit-compiled, batched over leading axes.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def _average_ranks(values: jax.Array) -> jax.Array:
    """Ranks 1..n of a 1-D array, ties given the mean of the ranks they span (as
    ``scipy.stats.rankdata``): maps rectified to exact zeros tie a lot."""
    ordered = jnp.sort(values)
    below = jnp.searchsorted(ordered, values, side="left")
    through = jnp.searchsorted(ordered, values, side="right")
    return (below + through + 1) / 2.0


@jax.jit
def rank_correlation(a: jax.Array, b: jax.Array) -> jax.Array:
    """Spearman rank correlation of ``a`` and ``b`` per leading index.

    Args:
      a, b: (B, ...) maps of the same shape; everything after axis 0 is one sample.

    Returns:
      (B,) float32 in [-1, 1]; 0 where either map is constant (no ranking to compare).
    """
    a = a.reshape(a.shape[0], -1).astype(jnp.float32)
    b = b.reshape(b.shape[0], -1).astype(jnp.float32)
    ranks_a = jax.vmap(_average_ranks)(a)
    ranks_b = jax.vmap(_average_ranks)(b)
    ranks_a = ranks_a - ranks_a.mean(axis=1, keepdims=True)
    ranks_b = ranks_b - ranks_b.mean(axis=1, keepdims=True)
    spread = jnp.sqrt((ranks_a ** 2).sum(axis=1) * (ranks_b ** 2).sum(axis=1))
    varied = (a.max(axis=1) > a.min(axis=1)) & (b.max(axis=1) > b.min(axis=1))
    return jnp.where(varied, (ranks_a * ranks_b).sum(axis=1) / jnp.where(varied, spread, 1.0), 0.0)


@partial(jax.jit, static_argnames=("window",))
def ssim(a: jax.Array, b: jax.Array, data_range: float, window: int = 7) -> jax.Array:
    """Mean structural similarity of 2-D maps (Wang et al. 2004), computed as
    ``skimage.metrics.structural_similarity`` does by default: a ``window`` x ``window``
    uniform window, sample covariances, K1 = 0.01, K2 = 0.03, the mean over the positions
    whose window lies inside the map.

    Args:
      a, b: (B, H, W) maps, H and W >= ``window``.
      data_range: max - min of the values the maps can take (1 for maps in [0, 1], 2 for
        [-1, 1]).

    Returns:
      (B,) float32, 1 for identical maps.
    """
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    count = window * window
    covariance_scale = count / (count - 1)

    def local_mean(x):
        summed = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, window, window), (1, 1, 1), "VALID")
        return summed / count

    mean_a, mean_b = local_mean(a), local_mean(b)
    var_a = covariance_scale * (local_mean(a * a) - mean_a * mean_a)
    var_b = covariance_scale * (local_mean(b * b) - mean_b * mean_b)
    cov = covariance_scale * (local_mean(a * b) - mean_a * mean_b)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    index = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)
             / ((mean_a ** 2 + mean_b ** 2 + c1) * (var_a + var_b + c2)))
    return index.mean(axis=(1, 2))
