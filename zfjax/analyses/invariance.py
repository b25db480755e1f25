"""Invariance to vertical translation, scale and rotation (Zeiler & Fergus 2014, Fig. 5).

Each image is transformed by a sweep of amounts and run through the network.
For every amount we record the Euclidean distance between the feature vectors
of the original and the transformed image at layer 1 (``pool1`` by default,
or ``conv1``; flattened) and at layer 7 (``fc7``), and the softmax
probability of the image's true class.

Transformations run in JAX, batched over the images, as one bilinear affine
warp (``jax.scipy.ndimage.map_coordinates``, order 1) of the network inputs
about the image centre, so all three sweeps share one compiled loop:

* ``translate``: vertical shift by ``amount`` pixels, positive = down;
* ``scale``: zoom by the ratio ``amount`` (> 1 enlarges; no anti-aliasing,
  so ratios well below 1 alias);
* ``rotate``: ``amount`` degrees counter-clockwise.

Edges: pixels that come from outside the image are 0, i.e. the mean image
(inputs are mean-subtracted), so nothing wraps around or gets smeared.
The identity (0 px, ratio 1, 0 degrees) returns the input exactly, and the
reference features are computed by the same compiled loop at the identity,
so an identity amount gives distance 0 exactly.
The figure is ``zfjax.figures.invariance``, the command ``zfjax.commands.invariance``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.ndimage import map_coordinates

from zfjax.nets import model, network

TRANSFORMS = ("translate", "scale", "rotate")
LAYER1_CHOICES = ("pool1", "conv1")
LAYER7 = "fc7"


class Sweep(NamedTuple):
    """One transformation's sweep over N images and T amounts: layer1 and layer7 float32
    (N, T) ||f(x) - f(warp(x, a))|| (f1 = layer1 flattened, f7 = fc7); probs float32
    (N, T, classes) softmax of the transformed images; reference_probs float32 (N, classes)
    softmax of the originals."""

    layer1: jax.Array
    layer7: jax.Array
    probs: jax.Array
    reference_probs: jax.Array


def default_amounts(kind: str, image_size: int) -> np.ndarray:
    """The paper's sweeps: -60..60 px (scaled from 224 px), ratio 1..1.8, 0..350 degrees."""
    if kind == "translate":
        return np.linspace(-60, 60, 13, dtype=np.float32) * image_size / 224
    if kind == "scale":
        return np.linspace(1.0, 1.8, 9, dtype=np.float32)
    if kind == "rotate":
        return np.arange(0, 360, 10, dtype=np.float32)
    raise _unknown_transform(kind)


def _unknown_transform(kind) -> ValueError:
    return ValueError(f"unknown transformation {kind!r}; expected one of {', '.join(TRANSFORMS)}")


def affine(kind: str, amounts) -> tuple[np.ndarray, np.ndarray]:
    """Each amount as an inverse map ``source = A @ (output - c) + c + b`` about the
    centre c: (A float32 (T, 2, 2), b float32 (T, 2)) in (y, x) order."""
    amounts = np.atleast_1d(np.asarray(amounts, np.float64))
    t = len(amounts)
    eye = np.broadcast_to(np.eye(2), (t, 2, 2))
    zero = np.zeros((t, 2))
    if kind == "translate":
        a, b = eye, np.stack([-amounts, np.zeros(t)], axis=1)
    elif kind == "scale":
        if np.any(amounts <= 0):
            raise ValueError(f"scale ratios must be positive, got {amounts.min():g}")
        a, b = eye / amounts[:, None, None], zero
    elif kind == "rotate":
        # Counter-clockwise on screen (y points down): sample the inverse rotation.
        theta = np.deg2rad(amounts)
        cos, sin = np.cos(theta), np.sin(theta)
        a, b = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], 1), zero
    else:
        raise _unknown_transform(kind)
    return np.asarray(a, np.float32), np.asarray(b, np.float32)


def warp(images: jax.Array, matrix: jax.Array, offset: jax.Array) -> jax.Array:
    """Warp images (N, H, W, C) by one inverse affine map (see ``affine``); pixels
    sampled from outside the image are 0. Same shape."""
    n, h, w, c = images.shape
    if h != w:
        raise ValueError(f"warp needs square images, got {h}x{w}")
    centre = (h - 1) / 2
    grid = jnp.stack(jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                                  jnp.arange(w, dtype=jnp.float32), indexing="ij"))
    coords = jnp.einsum("ij,jhw->ihw", matrix, grid - centre) + centre + offset[:, None, None]
    one_plane = lambda plane: map_coordinates(plane, [coords[0], coords[1]], order=1,
                                              mode="constant", cval=0.0)
    # vmap over images and channels: (N, H, W, C) -> planes (H, W).
    return jax.vmap(jax.vmap(one_plane, in_axes=2, out_axes=2))(images)


@jax.jit
def _transform(images, matrices, offsets):
    return lax.map(lambda m: warp(images, *m), (matrices, offsets))


def transform(images, kind: str, amounts) -> jax.Array:
    """Images (N, H, W, C) under each amount (T,) of one transformation: (T, N, H, W, C)."""
    return _transform(images, *affine(kind, amounts))


@partial(jax.jit, static_argnames=("config", "layer1"))
def _sweep(config, params, images, matrices, offsets, layer1):
    # Step 0 is the identity; its features are the reference.
    matrices = jnp.concatenate([jnp.eye(2, dtype=jnp.float32)[None], matrices])
    offsets = jnp.concatenate([jnp.zeros((1, 2), jnp.float32), offsets])

    def one(m):
        logits, aux = model.forward(config, params, warp(images, *m))
        acts = aux["activations"]
        return (acts[layer1].reshape(len(images), -1).astype(jnp.float32),
                acts[LAYER7].astype(jnp.float32), jax.nn.softmax(logits))

    f1, f7, probs = lax.map(one, (matrices, offsets))  # (T + 1, N, ...)
    distance = lambda f: jnp.sqrt(jnp.sum(jnp.square(f[1:] - f[:1]), axis=-1)).T
    return Sweep(distance(f1), distance(f7), jnp.swapaxes(probs[1:], 0, 1), probs[0])


def sweep(config: network.Network, params, images, sweeps: dict,
          layer1: str = "pool1") -> dict[str, Sweep]:
    """Feature distances and class probabilities along transformation sweeps.

    images: (N, H, W, 3) network inputs; sweeps: kind -> amounts (T_kind,).
    Returns kind -> ``Sweep`` (numpy).
    All sweeps run in one compiled loop over the amounts (one forward of the
    N images per amount; the first step is the identity, the reference).
    """
    if layer1 not in LAYER1_CHOICES:
        raise ValueError(f"unknown layer-1 features {layer1!r}; expected one of "
                         f"{', '.join(LAYER1_CHOICES)}")
    maps = [affine(kind, amounts) for kind, amounts in sweeps.items()]
    result = jax.device_get(_sweep(config, params, images,
                                   np.concatenate([m for m, _ in maps]),
                                   np.concatenate([b for _, b in maps]), layer1))
    out, start = {}, 0
    for kind, (m, _) in zip(sweeps, maps):
        part = slice(start, start + len(m))
        out[kind] = Sweep(result.layer1[:, part], result.layer7[:, part],
                          result.probs[:, part], result.reference_probs)
        start += len(m)
    return out


def true_class_probability(result: Sweep, labels) -> np.ndarray:
    """P(true class) per image and amount (N, T); labels None: the class predicted
    for the original image stands in for the true one."""
    probs = np.asarray(result.probs)
    if labels is None:
        labels = np.asarray(result.reference_probs).argmax(-1)
    labels = np.asarray(labels)
    return probs[np.arange(len(labels)), :, labels]


def example_amounts(amounts: np.ndarray, count: int = 4) -> np.ndarray:
    """``count`` amounts spread over a sweep (ends included), for the example column."""
    idx = np.unique(np.linspace(0, len(amounts) - 1, count).round().astype(int))
    return np.asarray(amounts)[idx]
