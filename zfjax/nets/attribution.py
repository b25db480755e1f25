"""Attribution methods: one reverse engine, each method a rule at the ReLUs.

The engine re-runs the forward pass over the network's stage table with two
stages swapped for rule-carrying twins whose forward is unchanged and whose
backward is the method's rule, then pulls a starting signal on the target back
to the input with ``jax.vjp`` (convs transpose, max-pools unpool through their
switches with a scatter-add, as in ``zfjax.nets.deconv``):

============  ==============================  =====================  ==================
method        backward at a ReLU (signal g)   contrast norm          starting signal
============  ==============================  =====================  ==================
deconvnet     relu(g)                         passed through         target activation
guided        relu(g) * (forward act > 0)     true gradient          1 on the target
gradient      g * (forward act > 0)           true gradient          1 on the target
============  ==============================  =====================  ==================

``gradient`` is exactly ``jax.grad`` of the target. Built on top, batched with
``vmap``: gradient x input, SmoothGrad, integrated gradients and Grad-CAM.

Targets (``Target``): one unit (layer, channel, y, x), a whole feature map
(layer, channel) or a class logit (``LOGITS``, class). Every function is pure,
jit-compiled and vmappable; each image has its own target.

A single-unit target runs ``deconv.project_units`` under the method's rule: one forward
records every map and switch, then each unit's reverse pass runs inside its receptive
field only, reading the ReLU masks and contrast normalisation's inputs from the recorded
maps on its window: the same maps as the dense pass (``attribute(..., window=False)``).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zfjax.nets import deconv, model, network
from zfjax.nets.deconv import check_range
from zfjax.nets.model import DECONVNET, ReverseRule
from zfjax.nets.network import LRN, Network, map_end, stages

LOGITS = "logits"
# The methods the methods and sanity commands compare, in their figures' order.
METHODS = ("deconvnet", "guided_backprop", "gradient", "gradient_x_input", "smoothgrad",
           "integrated_gradients", "grad_cam")


# Each method's rule (``model.ReverseRule``: relu, norm, start), the table above.
RULES = {
    "deconvnet": DECONVNET,
    "guided_backprop": ReverseRule("guided", "grad", "one"),
    "gradient": ReverseRule("mask", "grad", "one"),
}


class Target(NamedTuple):
    """What to explain, per image. ``layer``: a map layer (``network.projectable_layers``)
    or ``LOGITS``. ``channel``: the map, or the class for logits; int () or (N,).
    ``y``, ``x``: a single unit's position, int () or (N,); None for the whole map
    (and for logits)."""

    layer: str
    channel: object
    y: object = None
    x: object = None


class Attribution(NamedTuple):
    """maps float32 (N, H, W, 3): attribution per input value; outputs float32 (N,):
    the target's value at each input (a unit's activation, a map's sum, a logit)."""

    maps: jax.Array
    outputs: jax.Array


class PathAttribution(NamedTuple):
    """Integrated gradients: maps float32 (N, H, W, 3); outputs and baseline_outputs
    float32 (N,), the target at the input and at the baseline. Completeness:
    maps.sum((1, 2, 3)) ~= outputs - baseline_outputs, closer with more steps."""

    maps: jax.Array
    outputs: jax.Array
    baseline_outputs: jax.Array


class GradCam(NamedTuple):
    """maps float32 (N, h, w): relu(sum_c weights_c * activation_c) on the chosen layer's
    grid; weights float32 (N, C): the target's gradient averaged over that grid."""

    maps: jax.Array
    weights: jax.Array


# ---- the rules at ReLU and contrast normalisation ----------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ruled_relu(rule: str, x):
    return jax.nn.relu(x)


def _ruled_relu_fwd(rule, x):
    out = jax.nn.relu(x)
    return out, out


def _ruled_relu_bwd(rule, out, g):
    if rule == "rectify":
        return (jax.nn.relu(g),)
    if rule == "guided":
        return (jnp.where(out > 0, jax.nn.relu(g), 0).astype(g.dtype),)
    return (jnp.where(out > 0, g, 0).astype(g.dtype),)


_ruled_relu.defvjp(_ruled_relu_fwd, _ruled_relu_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _norm_passed_through(lrn: LRN, x):
    return model.contrast_normalize(x, lrn)


_norm_passed_through.defvjp(lambda lrn, x: (model.contrast_normalize(x, lrn), None),
                            lambda lrn, _, g: (g,))


def run_stages(config: Network, params: dict, x: jax.Array, start: int, stop: int,
               rule: ReverseRule) -> jax.Array:
    """stages(config)[start:stop] on x at inference (no dropout), with the rule's ReLU
    and contrast normalisation (``model.apply_stages``, the one interpreter of the
    stage table): the forward values are the network's, the backward is the rule's."""
    normalize = (model.contrast_normalize if rule.norm == "grad"
                 else lambda x, lrn: _norm_passed_through(lrn, x))
    out, _, _ = model.apply_stages(config, params, x, start, stop,
                                   record=False, relu=partial(_ruled_relu, rule.relu),
                                   normalize=normalize)
    return out


def stop_after(config: Network, layer: str) -> int:
    """The end (exclusive) of the stages whose output is ``layer``'s recorded map
    (after its batch norm and ReLU, before normalisation; ``network.map_end``);
    ``LOGITS``: every stage."""
    table = stages(config)
    if layer == LOGITS:
        return len(table)
    return map_end(table, next(i for i, s in enumerate(table) if getattr(s, "name", None) == layer))


# ---- one image, one target ---------------------------------------------------------


def _selection(shape, kind: str, channel, y, x) -> jax.Array:
    """1 on the target, 0 elsewhere, over one image's output (h, w, C) or (classes,)."""
    on_channel = jnp.arange(shape[-1]) == channel
    if kind == "unit":
        h, w, _ = shape
        on_channel = ((jnp.arange(h)[:, None, None] == y) & (jnp.arange(w)[None, :, None] == x)
                      & on_channel)
    return jnp.broadcast_to(on_channel, shape).astype(jnp.float32)


def _attribution_one(config, params, inputs, start, channel, y, x, layer, kind, rule):
    """One image's attribution on the input of stage ``start`` (the image for 0, the
    first ``start`` stages' output otherwise; float32, that input's shape) and the
    target's value."""
    stop = stop_after(config, layer)
    out, pull_back = jax.vjp(lambda v: run_stages(config, params, v, start, stop, rule),
                             inputs[None].astype(config.compute_dtype))
    selected = _selection(out.shape[1:], kind, channel, y, x)
    value = jnp.sum(selected * out[0])
    signal = selected * out[0] if rule.start == "activation" else selected
    (maps,) = pull_back(signal[None].astype(out.dtype))
    return maps[0].astype(jnp.float32), value.astype(jnp.float32)


MAX_CHUNKS = 32  # unrolled chunks per compiled pass; beyond, the chunks grow instead


def default_chunk() -> int:
    """Images per batched pass of ``attribute``'s dense passes (class logits, maps,
    unwindowed units) and of SmoothGrad's noisy copies and integrated gradients' path
    points: one compiled call runs its images as consecutive chunks of this many.
    CPU: 16, the fastest in ``bench/bench_gradient_chunk.py`` (full ZFNet at 224 px on a
    2-core machine: large batches outgrow the caches, and unrolled chunks beat a
    ``lax.map`` over them). GPU/TPU: 256, a guess until measured there. A pass of more
    than ``MAX_CHUNKS`` chunks uses larger ones (compile time grows with their count)."""
    return 16 if jax.default_backend() == "cpu" else 256


@partial(jax.jit, static_argnames=("config", "layer", "kind", "rule", "chunk"))
def _input_attribution(config, params, images, channel, y, x, layer, kind, rule, chunk):
    one = jax.vmap(_attribution_one, in_axes=(None, None, 0, None, 0, 0, 0, None, None, None))
    parts = [one(config, params, images[i : i + chunk], 0, channel[i : i + chunk],
                 y[i : i + chunk], x[i : i + chunk], layer, kind, rule)
             for i in range(0, images.shape[0], chunk)]
    return tuple(jnp.concatenate(part) for part in zip(*parts))


def _chunk_size(count: int) -> int:
    """Images per unrolled chunk of a pass over ``count`` inputs: ``default_chunk``, or
    more where it would make over ``MAX_CHUNKS`` chunks (compile time grows with them)."""
    return max(default_chunk(), -(-count // MAX_CHUNKS))


@partial(jax.jit, static_argnames=("config", "layer", "kind", "rule", "samples", "chunk",
                                   "path"))
def _mean_attribution(config, params, start, end, channel, y, x, layer, kind, rule, samples,
                      chunk, path):
    """Each image's attribution averaged over ``samples`` inputs: (N, H, W, 3) float32.

    path (integrated gradients): the inputs are start + alpha (end - start) at alpha =
    (s + 0.5) / samples, start and end (N, H, W, 3). Otherwise (SmoothGrad): start + end[:,
    s], start (N, H, W, 3) images, end (N, samples, H, W, 3) noise.

    The first stage (a conv) is affine in its input, so the mean of the maps is its
    linear part's transpose applied once per image to the mean of the signals on its
    output, and on a straight path its output is the same blend of its outputs at the two
    ends: the first conv runs forward twice per image instead of once per path point
    (integrated gradients) and backward once per image (both methods). Each chunk holds
    whole images' samples (``chunk // samples`` images), or part of one image's.
    """
    split = 1 if isinstance(stages(config)[0], network.Conv) else 0
    dtype = config.compute_dtype

    def first(v):  # the first stage: (M, H, W, 3) -> its output
        return run_stages(config, params, v.astype(dtype), 0, split, rule)

    one = jax.vmap(_attribution_one, in_axes=(None, None, 0, None, 0, 0, 0, None, None, None))
    count = start.shape[0]
    per_chunk = max(1, chunk // samples)  # images, when whole images fit
    part = min(chunk, samples)  # samples of an image per chunk
    maps = []
    for lo in range(0, count, per_chunk):
        held = np.arange(lo, min(lo + per_chunk, count))
        total = None
        if path:
            at_start, at_end = (first(v[held]).astype(jnp.float32) for v in (start, end))
        for s0 in range(0, samples, part):
            sample = np.arange(s0, min(s0 + part, samples))
            image = np.repeat(held, len(sample))  # image-major
            if path:
                alpha = ((sample + 0.5) / samples).astype(np.float32)[None, :, None, None, None]
                inputs = (at_start[:, None] * (1 - alpha) + at_end[:, None] * alpha)
                inputs = inputs.reshape(-1, *inputs.shape[2:])
            else:
                inputs = first(start[image] + end[image, np.tile(sample, len(held))])
            signals, _ = one(config, params, inputs, split, channel[image], y[image], x[image],
                             layer, kind, rule)
            signals = signals.reshape(len(held), len(sample), *signals.shape[1:])
            # Added one by one: XLA:CPU's reduce over an axis was 10x slower.
            summed = sum((signals[:, i] for i in range(1, len(sample))), signals[:, 0])
            total = summed if total is None else total + summed
        _, transpose = jax.vjp(first, jnp.zeros((len(held), *start.shape[1:]), dtype))
        maps.append(transpose(total.astype(dtype))[0].astype(jnp.float32))
    return jnp.concatenate(maps) / samples


# ---- single units, inside their receptive fields -----------------------------------


@partial(jax.jit, static_argnames=("config", "layer", "rule"))
def _unit_attribution(config, params, images, channel, y, x, layer, rule):
    """One unit per image: one forward, then ``deconv.project_units`` under the rule."""
    _, aux = model.forward(config, params, images)
    units = deconv.Units(jnp.arange(images.shape[0], dtype=jnp.int32), channel, y, x)
    maps = deconv.project_units(config, params, aux, layer, units, rule=rule)
    acts = aux["activations"][layer]
    value = acts[units.image, y, x, channel]
    return maps.astype(jnp.float32), value.astype(jnp.float32)


# ---- the methods -------------------------------------------------------------------


def attribute(config: Network, params: dict, images: jax.Array, target: Target,
              method: str = "gradient", *, window: bool = True) -> Attribution:
    """One engine pass per image: ``method`` in ``RULES`` (deconvnet, guided_backprop,
    gradient). images (N, H, W, 3) network inputs. Returns ``Attribution``.

    The deconvnet starts from the target's activations (a unit's value, a whole map:
    ``deconv.feature_map_signal``), as ``deconv.project`` does; the others from 1.

    ``window``: a unit target's pass runs only inside the unit's receptive field
    (``deconv.project_units``; the same maps as the dense pass, to float rounding, and
    faster); False runs the dense pass. Map and logit targets always run dense.
    """
    if method not in RULES:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(RULES)}")
    images = jnp.asarray(images)
    model.check_images(config, images)
    kind, channel, y, x = _checked_target(config, target, images.shape[0])
    if images.shape[0] == 0:
        return Attribution(jnp.zeros(images.shape, jnp.float32), jnp.zeros((0,), jnp.float32))
    if kind == "unit" and window:
        maps, outputs = _unit_attribution(config, params, images, channel, y, x, target.layer,
                                          RULES[method])
    else:
        maps, outputs = _input_attribution(config, params, images, channel, y, x, target.layer,
                                           kind, RULES[method], _chunk_size(images.shape[0]))
    return Attribution(maps, outputs)


def gradient_x_input(config: Network, params: dict, images: jax.Array,
                     target: Target) -> Attribution:
    """The target's gradient times the input, elementwise (Shrikumar et al. 2016)."""
    grads = attribute(config, params, images, target, "gradient")
    return Attribution(grads.maps * jnp.asarray(images, jnp.float32), grads.outputs)


def smoothgrad_noise(key: jax.Array, images: jax.Array, samples: int, noise: float) -> jax.Array:
    """SmoothGrad's noise: (N, samples, H, W, 3), Gaussian with standard deviation
    ``noise`` times each image's value range (max - min)."""
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples <= 0:
        raise ValueError(f"samples must be a positive whole number, got {samples!r}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a fraction of the input range >= 0, got {noise!r}")
    images = jnp.asarray(images, jnp.float32)
    spread = (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))[:, None, None, None, None]
    return noise * spread * jax.random.normal(key, (images.shape[0], samples, *images.shape[1:]))


def smoothgrad(config: Network, params: dict, images: jax.Array, target: Target, *,
               key: jax.Array, samples: int = 16, noise: float = 0.15,
               method: str = "gradient") -> Attribution:
    """SmoothGrad (Smilkov et al. 2017): ``method``'s maps averaged over ``samples``
    noisy copies of each image (``smoothgrad_noise``), batched (the first conv's
    backward once per image: ``_mean_attribution``).
    outputs: the target at the clean images."""
    images = jnp.asarray(images, jnp.float32)
    return smoothgrad_with_noise(config, params, images, target,
                                 smoothgrad_noise(key, images, samples, noise), method=method)


def smoothgrad_with_noise(config: Network, params: dict, images: jax.Array, target: Target,
                          noise: jax.Array, *, method: str = "gradient") -> Attribution:
    """SmoothGrad with given noise (N, S, H, W, 3) (``smoothgrad_noise``)."""
    images, noise = jnp.asarray(images, jnp.float32), jnp.asarray(noise, jnp.float32)
    n = images.shape[0]
    if noise.ndim != 5 or noise.shape[0] != n or noise.shape[2:] != images.shape[1:]:
        raise ValueError(f"noise must have shape (N, samples, H, W, 3) = ({n}, S, "
                         f"{', '.join(map(str, images.shape[1:]))}); got {tuple(noise.shape)}")
    samples = noise.shape[1]
    clean = attribute(config, params, images, target, method)
    kind, channel, y, x = _checked_target(config, target, n)
    if n == 0:
        return clean
    if kind == "unit":
        maps = _mean_of_unit_maps(config, params, images[:, None] + noise, target, method)
    else:
        maps = _mean_attribution(config, params, images, noise, channel, y, x, target.layer,
                                 kind, RULES[method], samples, _chunk_size(n * samples),
                                 path=False)
    return Attribution(maps, clean.outputs)


def _mean_of_unit_maps(config, params, inputs, target, method):
    """(N, H, W, 3): attribute's maps of inputs (N, S, H, W, 3) averaged over S, for a
    unit target (each pass inside the unit's receptive field)."""
    n, samples = inputs.shape[:2]
    maps = attribute(config, params, inputs.reshape(n * samples, *inputs.shape[2:]),
                     _repeat_target(target, n, samples), method).maps
    return maps.reshape(inputs.shape).mean(1)


def integrated_gradients(config: Network, params: dict, images: jax.Array, target: Target,
                         baseline: jax.Array, *, steps: int = 32) -> PathAttribution:
    """Integrated gradients (Sundararajan et al. 2017): (input - baseline) times the
    gradient averaged over ``steps`` points of the straight path, at the middle of each
    step (Riemann midpoint rule), batched (the first conv once per image and end:
    ``_mean_attribution``).

    baseline: (H, W, 3) for every image or (N, H, W, 3) per image, in network-input
    units: a black image's network input (e.g. ``-mean / 255`` for a zfjax run), or
    ``blurred_baseline(images)``.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps <= 0:
        raise ValueError(f"steps must be a positive whole number, got {steps!r}")
    images = jnp.asarray(images, jnp.float32)
    baseline = jnp.asarray(baseline, jnp.float32)
    n = images.shape[0]
    if baseline.shape == images.shape[1:]:
        baseline = jnp.broadcast_to(baseline, images.shape)
    if baseline.shape != images.shape:
        raise ValueError(f"baseline must have the shape of one image {tuple(images.shape[1:])} "
                         f"or of the images {tuple(images.shape)}; got {tuple(baseline.shape)}")
    delta = images - baseline
    ends = attribute(config, params, jnp.concatenate([images, baseline]),
                     _repeat_target(target, n, 1, copies=2), "gradient").outputs
    kind, channel, y, x = _checked_target(config, target, n)
    if n == 0:
        return PathAttribution(delta, ends[:n], ends[n:])
    if kind == "unit":
        alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps
        path = baseline[:, None] + alphas[None, :, None, None, None] * delta[:, None]
        mean_grad = _mean_of_unit_maps(config, params, path, target, "gradient")
    else:
        mean_grad = _mean_attribution(config, params, baseline, images, channel, y, x,
                                      target.layer, kind, RULES["gradient"], steps,
                                      _chunk_size(n * steps), path=True)
    return PathAttribution(delta * mean_grad, ends[:n], ends[n:])


def blurred_baseline(images: jax.Array, sigma: float = 8.0) -> jax.Array:
    """Each image blurred by a Gaussian of ``sigma`` pixels (edges: nearest value),
    per channel: (N, H, W, 3), a baseline for ``integrated_gradients``."""
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be > 0 pixels, got {sigma!r}")
    images = jnp.asarray(images, jnp.float32)
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = jnp.asarray(taps / taps.sum(), jnp.float32)
    x = jnp.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    size = images.shape[1]
    x = sum(taps[i] * x[:, i : i + size] for i in range(2 * radius + 1))
    return sum(taps[i] * x[:, :, i : i + images.shape[2]] for i in range(2 * radius + 1))


def grad_cam(config: Network, params: dict, images: jax.Array, target: Target,
             layer: str) -> GradCam:
    """Grad-CAM (Selvaraju et al. 2017) on a conv or pool ``layer`` (its recorded,
    rectified map) for a target above it (usually a class logit). Returns ``GradCam``."""
    if layer not in network.projectable_layers(config):
        raise network.unknown_layer(config, layer)
    images = jnp.asarray(images)
    model.check_images(config, images)
    kind, channel, y, x = _checked_target(config, target, images.shape[0])
    if stop_after(config, target.layer) <= stop_after(config, layer):
        raise ValueError(f"Grad-CAM on {layer} needs a target above it; got one on "
                         f"{target.layer}")
    return _grad_cam(config, params, images, channel, y, x, layer, target.layer, kind)


@partial(jax.jit, static_argnames=("config", "cam_layer", "layer", "kind"))
def _grad_cam(config, params, images, channel, y, x, cam_layer, layer, kind):
    rule = RULES["gradient"]

    def one(image, channel, y, x):
        below = stop_after(config, cam_layer)
        acts = run_stages(config, params, image[None].astype(config.compute_dtype), 0, below,
                          rule)
        out, pull_back = jax.vjp(
            lambda a: run_stages(config, params, a, below, stop_after(config, layer), rule), acts)
        (grads,) = pull_back(_selection(out.shape[1:], kind, channel, y, x)[None].astype(out.dtype))
        weights = grads[0].astype(jnp.float32).mean(axis=(0, 1))
        return jax.nn.relu(jnp.einsum("hwc,c->hw", acts[0].astype(jnp.float32), weights)), weights

    return GradCam(*jax.vmap(one)(images, channel, y, x))


# ---- targets -----------------------------------------------------------------------


def _checked_target(config: Network, target: Target, count: int):
    """(kind, channel, y, x), each int32 (count,) (y, x zeros when unused); ValueError
    for an unknown layer or a target out of range (checked unless traced)."""
    if target.layer == LOGITS:
        kind = "logit"
        check_range("class", target.channel, config.num_classes, LOGITS)
    elif target.layer in network.projectable_layers(config):
        size = network.layer_sizes(config)[target.layer]
        kind = "map" if target.y is None and target.x is None else "unit"
        if kind == "unit" and (target.y is None or target.x is None):
            raise ValueError(f"a unit target on {target.layer} needs both y and x; got "
                             f"y={target.y!r}, x={target.x!r}")
        check_range("channel", target.channel, network.num_channels(config, target.layer),
                     target.layer)
        if kind == "unit":
            check_range("y", target.y, size, target.layer)
            check_range("x", target.x, size, target.layer)
    else:
        raise ValueError(f"unknown target layer {target.layer!r}; expected one of "
                         f"{', '.join(network.projectable_layers(config))} or {LOGITS!r}")
    values = []
    for name, v in (("channel", target.channel), ("y", target.y), ("x", target.x)):
        v = jnp.zeros((), jnp.int32) if v is None else jnp.asarray(v)
        if v.ndim > 1 or (v.ndim == 1 and v.shape[0] != count):
            raise ValueError(f"target {name} must be one number or one per image ({count},); "
                             f"got shape {tuple(v.shape)}")
        values.append(jnp.broadcast_to(v.astype(jnp.int32), (count,)))
    return (kind, *values)


def _repeat_target(target: Target, count: int, times: int, copies: int = 1) -> Target:
    """The target of each of ``count`` images repeated ``times`` in a row (image-major),
    the whole ``copies`` times over."""
    def spread(v):
        if v is None or jnp.ndim(v) == 0:
            return v
        return jnp.tile(jnp.repeat(jnp.asarray(v), times), copies)

    return Target(target.layer, spread(target.channel), spread(target.y), spread(target.x))
