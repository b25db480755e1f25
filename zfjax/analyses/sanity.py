"""Sanity checks for attribution maps (Adebayo et al. 2018, "Sanity checks for saliency
maps"): do a method's maps change when the network they explain is randomised?

* Cascading randomisation: re-initialise the parameter layers from the top (the logits)
  down, one layer more at each step, and recompute every method's maps of the same images
  for the same targets. Step 0 is the trained network; step k has the top k layers
  random (``model.top_down_layers`` order).
* Independent randomisation: step k re-initialises only the k-th layer from the top.
* Data randomisation: the maps of a network trained on permuted labels
  (``train.py --shuffle-labels``) against the trained network's.

Both model randomisations take each randomised layer's weights and biases from one
fresh draw of the network's own initialiser (``model.init_params`` with an explicit
key), so step 1 of both is the same network and each layer gets the same random values
in both.

Maps are compared after Adebayo's normalisation (``normalize``):

* absolute: |m| summed over colour channels, divided by its 99th percentile, clipped
  to [0, 1];
* signed: m summed over colour channels, divided by the 99th percentile of its
  magnitude, clipped to [-1, 1].

Grad-CAM's map (one channel, >= 0, on its layer's grid) is first resized bilinearly to
the input size; its absolute and signed forms are the same. Similarity to the trained
network's maps (``similarity``): Spearman rank correlation of the absolute and of the
signed normalised maps, and SSIM of the absolute ones (data range 1).

Everything is pure and batched; ``method_maps`` is jitted per network (the per-step
loop runs in Python: every step is a parameter tree of the same shapes, one
compilation serves all). The figure is ``zfjax.figures.sanity``, the command
``zfjax.commands.sanity``.
"""

from __future__ import annotations

import csv
import io
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zfjax.analyses import similarity
from zfjax.nets import attribution, model
from zfjax.nets.attribution import LOGITS, Target
from zfjax.nets.deconv import check_range
from zfjax.nets.network import Network, conv_layers

RANDOMISATIONS = ("cascading", "independent")


class Settings(NamedTuple):
    """What the methods beyond the plain reverse passes need.

    noise: float32 (N, S, H, W, 3) SmoothGrad's noise (``attribution.smoothgrad_noise``),
    the same for every network compared; baseline: float32 (H, W, 3) or (N, H, W, 3)
    integrated gradients' baseline in network-input units; steps: its path steps;
    cam_layer: Grad-CAM's layer (default: the last conv layer, ``default_cam_layer``).
    """

    noise: jax.Array
    baseline: jax.Array
    steps: int = 32
    cam_layer: str | None = None


class Maps(NamedTuple):
    """Normalised maps (``normalize``) of M methods on N images: absolute float32
    (M, N, H, W) in [0, 1], signed float32 (M, N, H, W) in [-1, 1]."""

    absolute: jax.Array
    signed: jax.Array


class Similarity(NamedTuple):
    """Each map against its reference, float32 (...,) over the leading axes of the maps:
    rank_absolute / rank_signed (Spearman of the normalised absolute / signed maps) and
    ssim (of the absolute ones)."""

    rank_absolute: jax.Array
    rank_signed: jax.Array
    ssim: jax.Array


class Check(NamedTuple):
    """One randomisation of every method over its steps.

    kind: 'cascading', 'independent' or 'random_labels'; steps: D names, 'trained' first
    for the model randomisations, then the layer randomised (cascading: down to it);
    methods: M names; maps: ``Maps`` with a leading step axis, (D, M, N, H, W);
    similarity: ``Similarity`` to the trained network's maps, each (D, M, N).
    """

    kind: str
    steps: tuple
    methods: tuple
    maps: Maps
    similarity: Similarity


def check_methods(methods) -> tuple[str, ...]:
    """The methods as a tuple, or ValueError naming the unknown one and the choices."""
    methods = tuple(methods)
    for name in methods:
        if name not in attribution.METHODS:
            raise ValueError(f"unknown method {name!r}; expected one of {', '.join(attribution.METHODS)}")
    if not methods:
        raise ValueError(f"no method given; expected some of {', '.join(attribution.METHODS)}")
    return methods


def default_cam_layer(config: Network) -> str:
    """The last conv layer (its rectified map): Grad-CAM's usual choice."""
    return conv_layers(config)[-1]


def randomised_networks(params: dict, fresh: dict, layers, kind: str) -> list[dict]:
    """The parameter trees of every step of a randomisation: [params, then one per layer].

    layers: the top-down order (``model.top_down_layers``); kind 'cascading' (step k: layers[:k]
    from ``fresh``) or 'independent' (step k: layers[k - 1] alone from ``fresh``).
    """
    if kind not in RANDOMISATIONS:
        raise ValueError(f"unknown randomisation {kind!r}; expected one of "
                         f"{', '.join(RANDOMISATIONS)}")
    layers = tuple(layers)
    picked = [layers[:k] if kind == "cascading" else layers[k - 1:k]
              for k in range(1, len(layers) + 1)]
    return [params] + [model.with_layers(params, fresh, chosen) for chosen in picked]


def normalize(maps: jax.Array) -> Maps:
    """Adebayo's normalisation of raw maps (..., H, W, C) (C = 3 colour channels, or 1):
    absolute (sum of |m| over C) / its 99th percentile, clipped to [0, 1]; signed (sum
    of m over C) / the 99th percentile of its magnitude, clipped to [-1, 1]. A map whose
    percentile is 0 becomes all zeros. Returns ``Maps`` of shape (..., H, W)."""
    maps = jnp.asarray(maps, jnp.float32)
    absolute = jnp.abs(maps).sum(-1)
    signed = maps.sum(-1)

    def scaled(values, reference, low):
        top = jnp.percentile(reference.reshape(*reference.shape[:-2], -1), 99, axis=-1)
        top = top[..., None, None]
        return jnp.clip(jnp.where(top > 0, values / jnp.where(top > 0, top, 1.0), 0.0), low, 1.0)

    return Maps(scaled(absolute, absolute, 0.0), scaled(signed, jnp.abs(signed), -1.0))


def compare(reference: Maps, maps: Maps) -> Similarity:
    """``Similarity`` of normalised maps (..., H, W) to a reference of the same shape."""
    lead = maps.absolute.shape[:-2]
    flat = lambda x: x.reshape(-1, *x.shape[-2:])  # noqa: E731
    rank_absolute = similarity.rank_correlation(flat(reference.absolute), flat(maps.absolute))
    rank_signed = similarity.rank_correlation(flat(reference.signed), flat(maps.signed))
    ssim = similarity.ssim(flat(reference.absolute), flat(maps.absolute), 1.0)
    return Similarity(*(v.reshape(lead) for v in (rank_absolute, rank_signed, ssim)))


def _raw_map(config, params, images, target, method, settings):
    """One method's raw map, (N, H, W, 3), or Grad-CAM's (N, H, W, 1) resized to the input."""
    if method in attribution.RULES:
        return attribution.attribute(config, params, images, target, method).maps
    if method == "gradient_x_input":
        return attribution.gradient_x_input(config, params, images, target).maps
    if method == "smoothgrad":
        return attribution.smoothgrad_with_noise(config, params, images, target,
                                                 settings.noise).maps
    if method == "integrated_gradients":
        return attribution.integrated_gradients(config, params, images, target,
                                                settings.baseline, steps=settings.steps).maps
    layer = settings.cam_layer or default_cam_layer(config)
    cam = attribution.grad_cam(config, params, images, target, layer).maps
    n, h, w = images.shape[:3]
    return jax.image.resize(cam, (n, h, w), "bilinear")[..., None]


@partial(jax.jit, static_argnames=("config", "methods", "steps", "cam_layer"))
def _method_maps(config, params, images, classes, noise, baseline, *, methods, steps,
                 cam_layer):
    settings = Settings(noise, baseline, steps, cam_layer)
    target = Target(LOGITS, classes)
    normalised = [normalize(_raw_map(config, params, images, target, m, settings))
                  for m in methods]
    return Maps(jnp.stack([n.absolute for n in normalised]),
                jnp.stack([n.signed for n in normalised]))


def method_maps(config: Network, params: dict, images: jax.Array, classes: jax.Array,
                methods, settings: Settings) -> Maps:
    """Every method's normalised maps of images (N, H, W, 3) for the class logits
    ``classes`` int32 (N,). Returns ``Maps`` (M, N, H, W).

    The deconvnet starts from the logit's value (``attribution.attribute``), so its sign
    follows that logit: for a randomised network it may be negative.
    """
    methods = check_methods(methods)
    images = jnp.asarray(images, jnp.float32)
    model.check_images(config, images)
    classes = jnp.asarray(classes, jnp.int32)
    if classes.shape != images.shape[:1]:
        raise ValueError(f"classes must be one per image ({images.shape[0]},); got shape "
                         f"{tuple(classes.shape)}")
    check_range("class", classes, config.num_classes, LOGITS)
    if isinstance(settings.steps, bool) or not isinstance(settings.steps, (int, np.integer)) \
            or settings.steps <= 0:
        raise ValueError(f"steps must be a positive whole number, got {settings.steps!r}")
    return _method_maps(config, params, images, classes, jnp.asarray(settings.noise, jnp.float32),
                        jnp.asarray(settings.baseline, jnp.float32), methods=methods,
                        steps=int(settings.steps), cam_layer=settings.cam_layer)


def predicted_classes(config: Network, params: dict, images: jax.Array) -> jax.Array:
    """int32 (N,): the class each image's logits rank first (the sanity checks' target)."""
    logits, _ = model.forward_jit(config, params, jnp.asarray(images, jnp.float32))
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def model_randomisation(config: Network, params: dict, images: jax.Array, classes: jax.Array,
                        methods, settings: Settings, key: jax.Array, kind: str,
                        progress=None) -> Check:
    """Cascading or independent randomisation (``kind``) of every parameter layer, with
    random values from ``model.init_params(config, key)``. Returns ``Check`` with
    D = layers + 1 steps; step 0 is ``params``. progress: called with each step's name
    after it is done (None: silent)."""
    methods = check_methods(methods)
    layers = model.top_down_layers(config)
    # Every tree on one device, committed: jit keys its cache on that too, and loaded
    # (committed) layers mixed with fresh (uncommitted) ones compiled once per step.
    device = jax.devices()[0]
    params = jax.device_put(params, device)
    fresh = jax.device_put(model.init_params(config, key), device)
    steps = [method_maps(config, p, images, classes, methods, settings)
             for p in _reporting(randomised_networks(params, fresh, layers, kind),
                                 ("trained",) + layers, progress)]
    maps = Maps(*(jnp.stack(parts) for parts in zip(*steps)))
    return Check(kind, ("trained",) + layers, methods, maps, _against_first(maps))


def _against_first(maps: Maps) -> Similarity:
    """``compare`` of every step (leading axis) of ``maps`` with step 0."""
    return compare(Maps(*(jnp.broadcast_to(x[:1], x.shape) for x in maps)), maps)


def _reporting(trees, names, progress):
    for tree, name in zip(trees, names):
        yield tree
        if progress is not None:
            progress(name)


def data_randomisation(trained: Maps, other: Maps, methods) -> Check:
    """The maps of a network trained on permuted labels (``other``, (M, N, H, W)) against
    the trained network's (``trained``), as a ``Check`` with steps ('trained', 'random
    labels')."""
    maps = Maps(*(jnp.stack([a, b]) for a, b in zip(trained, other)))
    return Check("random_labels", ("trained", "random labels"), tuple(methods), maps,
                 _against_first(maps))


def table_rows(checks) -> list[dict]:
    """One row per (randomisation, step, method): the mean and standard deviation over the
    images of each similarity (a CSV row; ``format_table`` prints them)."""
    rows = []
    for check in checks:
        for d, step in enumerate(check.steps):
            for m, method in enumerate(check.methods):
                row = {"randomisation": check.kind, "step": d, "layer": step, "method": method}
                for field in Similarity._fields:
                    values = np.asarray(getattr(check.similarity, field))[d, m]
                    row[f"{field}_mean"] = float(values.mean())
                    row[f"{field}_std"] = float(values.std())
                row["images"] = int(np.asarray(check.similarity.ssim).shape[-1])
                rows.append(row)
    return rows


def format_table(check: Check, field: str = "rank_absolute") -> str:
    """Methods (rows) x steps (columns): the mean over images of one similarity."""
    values = np.asarray(getattr(check.similarity, field)).mean(-1)  # (D, M)
    width = max(8, *(len(s) + 1 for s in check.steps))
    head = f"{check.kind} randomisation, {field.replace('_', ' ')} (mean over images)"
    lines = [head, f"{'method':<21}" + "".join(f"{s:>{width}}" for s in check.steps)]
    for m, method in enumerate(check.methods):
        lines.append(f"{method:<21}" + "".join(f"{values[d, m]:>{width}.3f}"
                                              for d in range(len(check.steps))))
    return "\n".join(lines)


def csv_text(rows: list[dict]) -> str:
    """``table_rows`` as CSV text (floats to 4 decimals)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    return out.getvalue()
