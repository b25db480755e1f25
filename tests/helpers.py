"""Shared test helpers."""

import jax
import numpy as np

from zfjax import model


def random_params(config, seed=0, bias_std=0.0):
    """He-normal weights and N(0, bias_std) biases, drawn with numpy.

    Much faster in tests than model.init_params, whose first call compiles the network.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init_params(config, jax.random.key(0)))

    def draw(path, leaf):
        if path[-1].key == "bias":
            if not bias_std:
                return np.zeros(leaf.shape, np.float32)
            return rng.normal(0, bias_std, leaf.shape).astype(np.float32)
        return (rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)
