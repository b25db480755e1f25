"""First-layer filters and second-layer features (Zeiler & Fergus 2014, Fig. 6).

* ``filter_patches``: the conv1 filters as colour patches, each contrast-
  normalised on its own (min -> 0, max -> 1), so a weak filter is as visible
  as a strong one; ``filter_rms`` gives the strengths that this hides (the
  paper's point in Fig. 6(a): without renormalising filters whose RMS exceeds
  a fixed radius, a few filters dominate).
* ``layer2_features``: for the conv2 maps with the strongest activations over
  a set of images, the deconvnet projection of each map's strongest activation,
  cropped to its receptive field (Fig. 6(d, e)).

``zfjax.figures.filters`` draws them and ``visualize.py filters RUN [--compare
OTHER_RUN]`` (``zfjax.commands.filters``) side by side for two runs (e.g. with and
without filter renormalisation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from zfjax.nets import deconv, network, strongest


@jax.jit
def filter_patches(kernel: jax.Array) -> jax.Array:
    """conv1 kernel HWIO (k, k, 3, K) -> K patches (K, k, k, 3) in [0, 1], each
    stretched from its own min to max; a constant filter is mid-gray."""
    patches = jnp.moveaxis(kernel.astype(jnp.float32), -1, 0)
    low = patches.min(axis=(1, 2, 3), keepdims=True)
    span = patches.max(axis=(1, 2, 3), keepdims=True) - low
    return jnp.where(span > 0, (patches - low) / jnp.where(span > 0, span, 1), 0.5)


@jax.jit
def filter_rms(kernel: jax.Array) -> jax.Array:
    """RMS of each filter of an HWIO kernel: (K,), the quantity the training's
    filter renormalisation caps."""
    return jnp.sqrt(jnp.mean(jnp.square(kernel.astype(jnp.float32)), axis=(0, 1, 2)))


def strongest_maps(config: network.Network, params, inputs: np.ndarray, count: int,
                   layer: str = "conv2") -> np.ndarray:
    """The ``count`` maps of ``layer`` whose strongest activation over ``inputs`` is
    largest, strongest first: int32 (count,)."""
    channels = np.arange(network.num_channels(config, layer), dtype=np.int32)
    value = strongest.strongest_over(config, params, inputs, {layer: channels})[layer][0]
    return channels[np.argsort(-value, kind="stable")[:count]]


def layer2_features(config: network.Network, params, inputs: np.ndarray, display: np.ndarray,
                    channels, layer: str = "conv2") -> deconv.StrongestProjections:
    """Strongest activation of each given map over the images (``strongest.strongest_over``),
    projected to pixels and cropped to its receptive field (``deconv.project_strongest``).

    inputs float32 (N, H, W, 3), display uint8 (N, H, W, 3), channels int (M,).
    """
    channels = np.asarray(channels, np.int32)
    found = strongest.strongest_over(config, params, inputs, {layer: channels})[layer]
    return deconv.project_strongest(config, params, layer, found, channels, inputs,
                                    display=display)


def check_comparable(kernel_a, kernel_b, name_a: str, name_b: str) -> None:
    """Raise ValueError unless two runs' conv1 kernels have one shape."""
    a, b = tuple(np.shape(kernel_a)), tuple(np.shape(kernel_b))
    if a != b:
        raise ValueError(
            f"cannot compare filters: {name_a} has conv1 filters {_describe(a)} but {name_b} "
            f"has {_describe(b)}; compare runs of the same architecture (width, image size)")


def _describe(shape) -> str:
    k, _, c, n = shape
    return f"{n} x ({k}x{k}x{c})"
