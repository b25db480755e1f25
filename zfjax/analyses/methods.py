"""Attribution methods side by side (``visualize.py methods``).

For each image two targets are explained by every method of ``zfjax.nets.attribution``:

* its strongest unit on a layer (conv5 by default: the largest activation over every
  map and position, as ``reconstructions`` finds it);
* its predicted class (the logit of the most probable class).

Methods (``attribution.METHODS``): the deconvnet (Zeiler & Fergus 2014) and its successors,
guided backprop, the gradient, gradient x input, SmoothGrad, integrated gradients
and Grad-CAM. Grad-CAM needs a layer below its target: the class is explained on the
unit's layer, the unit on the layer just below it (conv4 for conv5).

The figure is ``zfjax.figures.methods``, the command ``zfjax.commands.methods``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zfjax.nets import attribution, model, network, strongest
from zfjax.nets.attribution import LOGITS, Target
from zfjax.nets.deconv import check_range
from zfjax.nets.network import Network

TARGETS = ("unit", "class")  # axis 0 of every map in ``Explained.maps``


class Settings(NamedTuple):
    """How the methods run. layer: the unit's layer (and Grad-CAM's for the class);
    channel: explain the strongest unit of this map (None: of any map); label: explain
    this class (None: the predicted one); samples, noise: SmoothGrad's noisy copies and
    their standard deviation as a fraction of the image's value range; steps: integrated
    gradients' path points; seed: SmoothGrad's noise."""

    layer: str
    channel: int | None = None
    label: int | None = None
    samples: int = 16
    noise: float = 0.15
    steps: int = 32
    seed: int = 0


class Explained(NamedTuple):
    """One image explained. unit int32 (3,): (channel, y, x) of the explained unit on the
    layer; unit_value float32: its activation; target_class int32: the explained class;
    probability float32: its softmax probability; predicted int32: the most probable
    class; maps: method -> float32 (2, H, W, 3) attribution per input value, or (2, H, W)
    for ``grad_cam`` (its map enlarged bilinearly to the image); row 0 explains the unit, row 1 the class
    (``TARGETS``)."""

    unit: np.ndarray
    unit_value: np.ndarray
    target_class: np.ndarray
    probability: np.ndarray
    predicted: np.ndarray
    maps: dict


def check_methods(methods) -> tuple[str, ...]:
    """The method names in ``attribution.METHODS`` order, or ValueError naming the first unknown one."""
    for method in methods:
        if method not in attribution.METHODS:
            raise ValueError(f"unknown method {method!r}; expected some of {', '.join(attribution.METHODS)}")
    return tuple(m for m in attribution.METHODS if m in methods)


def check_settings(config: Network, settings: Settings) -> None:
    """ValueError (one line) for a layer the network lacks, a channel or class out of
    range, samples or steps <= 0, or negative or non-finite noise."""
    (layer,) = network.check_layers(config, [settings.layer])
    if settings.channel is not None:
        check_range("channel", settings.channel, network.num_channels(config, layer), layer)
    if settings.label is not None:
        check_range("class", settings.label, config.num_classes, LOGITS)
    for name in ("samples", "steps"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    if not np.isfinite(settings.noise) or settings.noise < 0:
        raise ValueError(f"noise must be a fraction of the image's value range >= 0, got "
                         f"{settings.noise!r}")


def check_baseline(config: Network, baseline) -> None:
    """ValueError (one line) unless ``baseline`` is 'blur' or one network input
    (image_size, image_size, 3)."""
    want = (config.image_size, config.image_size, 3)
    if isinstance(baseline, str):
        if baseline != "blur":
            raise ValueError(f"unknown baseline {baseline!r}; expected 'blur' or an array of "
                             f"shape {want}")
    elif tuple(np.shape(baseline)) != want:
        raise ValueError(f"baseline must have the shape of one network input {want}; got "
                         f"{tuple(np.shape(baseline))}")


def cam_layer_below(config: Network, layer: str) -> str | None:
    """The conv or pool layer just below ``layer`` (Grad-CAM's layer for a unit of
    ``layer``), or None for the first one."""
    layers = network.projectable_layers(config)
    i = layers.index(layer)
    return layers[i - 1] if i > 0 else None


def blur_sigma(config: Network) -> float:
    """The blurred baseline's Gaussian, in pixels: image_size / 28 (8 px at 224)."""
    return config.image_size / 28


def explain(config: Network, params: dict, image: np.ndarray, settings: Settings,
            baseline, methods=attribution.METHODS, *, key: jax.Array | None = None) -> Explained:
    """Every method in ``methods`` on one image's strongest unit and its class.

    image: (H, W, 3) network input; baseline: integrated gradients' baseline, 'blur'
    (``attribution.blurred_baseline`` with ``blur_sigma``) or (H, W, 3) network input
    (e.g. that of a black image). key: SmoothGrad's noise (default: from
    ``settings.seed``). Returns ``Explained`` (numpy).
    """
    check_settings(config, settings)
    check_baseline(config, baseline)
    methods = check_methods(methods)
    layer = settings.layer
    images = jnp.asarray(image, jnp.float32)[None]
    model.check_images(config, images)
    logits, aux = model.forward_jit(config, params, images)
    probabilities = jax.nn.softmax(logits[0])
    predicted = jnp.argmax(probabilities).astype(jnp.int32)
    label = predicted if settings.label is None else jnp.int32(settings.label)
    acts = aux["activations"][layer][0]
    if settings.channel is None:
        value, channel, y, x = strongest.strongest_map(acts)
    else:
        c = settings.channel
        value, y, x = (a[0, 0] for a in strongest.per_image(acts[None, ..., c:c + 1]))
        channel = jnp.int32(c)
    targets = {"unit": Target(layer, channel, y, x), "class": Target(LOGITS, label)}
    key = jax.random.key(settings.seed) if key is None else key
    baseline = (attribution.blurred_baseline(images, blur_sigma(config))
                if isinstance(baseline, str) else jnp.asarray(baseline, jnp.float32))
    below = cam_layer_below(config, layer)

    def one(method: str, kind: str) -> jax.Array:
        target = targets[kind]
        if method in attribution.RULES:
            return attribution.attribute(config, params, images, target, method).maps[0]
        if method == "gradient_x_input":
            return attribution.gradient_x_input(config, params, images, target).maps[0]
        if method == "smoothgrad":
            return attribution.smoothgrad(config, params, images, target, key=key,
                                          samples=settings.samples, noise=settings.noise).maps[0]
        if method == "integrated_gradients":
            return attribution.integrated_gradients(config, params, images, target, baseline,
                                                    steps=settings.steps).maps[0]
        cam_layer = layer if kind == "class" else below
        side = config.image_size
        if cam_layer is None:  # a unit of the first layer: nothing below to weigh
            return jnp.zeros((side, side), jnp.float32)
        cam = attribution.grad_cam(config, params, images, target, cam_layer).maps[0]
        return jax.image.resize(cam, (side, side), "bilinear")

    maps = {m: np.stack([np.asarray(one(m, kind), np.float32) for kind in TARGETS])
            for m in methods}
    return Explained(np.array([channel, y, x], np.int32), np.float32(value), np.int32(label),
                     np.float32(probabilities[label]), np.int32(predicted), maps)


def explain_images(config: Network, params: dict, images: np.ndarray, settings: Settings,
                   baseline, methods=attribution.METHODS) -> list[Explained]:
    """``explain`` of each of images (N, H, W, 3), one at a time (every image runs the
    same compiled programs); image i's SmoothGrad noise from fold_in(key(seed), i)."""
    key = jax.random.key(settings.seed)
    return [explain(config, params, image, settings, baseline, methods,
                    key=jax.random.fold_in(key, i)) for i, image in enumerate(images)]
