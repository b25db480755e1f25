"""Deconvnet reverse pass against an independent reference and its own identities."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from zfjax.nets import deconv, model, network
from zfjax.nets.receptive_field import receptive_field, receptive_field_size
from helpers import random_params

SMALL = network.Network(num_classes=5, image_size=64, width=0.25, init_std=None)
FULL = network.Network(num_classes=10, image_size=224, init_std=None)


@functools.lru_cache(maxsize=None)
def random_network(config, n_images=2, seed=0):
    """(params, images, aux) for random He-initialised weights and random images (numpy
    draws: init_params and jax.random compile a program per shape, seconds each here)."""
    params = random_params(config, seed=seed)
    size = config.image_size
    images = np.random.default_rng(seed + 1).normal(size=(n_images, size, size, 3))
    images = images.astype(np.float32)
    _, aux = model.forward_jit(config, params, images)
    return params, images, aux


# ---- independent reference: jax.vjp with the deconvnet rule at each ReLU ---------

@jax.custom_vjp
def deconv_relu(x):
    return jnp.maximum(x, 0)


deconv_relu.defvjp(lambda x: (jnp.maximum(x, 0), None), lambda _, g: (jnp.maximum(g, 0),))


@jax.custom_vjp
def identity_backward_norm(x):
    return model.contrast_normalize(x)


identity_backward_norm.defvjp(lambda x: (model.contrast_normalize(x), None), lambda _, g: (g,))

# name, kernel, stride, padding, pooled, normalised: written out again on purpose.
REFERENCE_LAYERS = [("conv1", 2, 1, "pool1", True), ("conv2", 2, 0, "pool2", True),
                    ("conv3", 1, 1, None, False), ("conv4", 1, 1, None, False),
                    ("conv5", 1, 1, "pool5", False)]


def reference_features(params, images, layer):
    """Forward to ``layer`` with XLA's max-pool, the deconvnet ReLU rule and contrast
    normalisation passed through unchanged, so that its VJP is the deconvnet."""
    x = images
    for name, stride, pad, pool, norm in REFERENCE_LAYERS:
        x = lax.conv_general_dilated(x, params[name]["kernel"], (stride, stride),
                                     [(pad, pad), (pad, pad)],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = deconv_relu(x + params[name]["bias"])
        if layer == name:
            return x
        if pool:
            n = x.shape[1]
            out = int(np.ceil((n - 3) / 2)) + 1
            extra = (out - 1) * 2 + 3 - n
            x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                  ((0, 0), (0, extra), (0, extra), (0, 0)))
            if layer == pool:
                return x
        if norm:
            x = identity_backward_norm(x)
    raise AssertionError(layer)


def reference_projection(params, images, layer, signal):
    _, pullback = jax.vjp(lambda im: reference_features(params, im, layer), images)
    return pullback(signal)[0]


def rel_err(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("layer", network.projectable_layers(SMALL))
def test_whole_layer_projection_equals_reference_small(layer):
    params, images, aux = random_network(SMALL)
    # The reference forward reproduces the recorded activations.
    np.testing.assert_allclose(reference_features(params, images, layer),
                               aux["activations"][layer], rtol=1e-4, atol=1e-5)
    signal = aux["activations"][layer]
    ours = deconv.project(SMALL, params, aux, layer, signal)
    ref = reference_projection(params, images, layer, signal)
    assert ours.shape == images.shape
    assert rel_err(ours, ref) <= 1e-5


@pytest.mark.parametrize("layer", ["conv5", "pool2", "conv1"])
def test_projection_equals_reference_at_224(layer):
    params, images, aux = random_network(FULL, n_images=1)
    for channel in (0, 17):
        signal = deconv.feature_map_signal(aux, layer, channel)
        ours = deconv.project(FULL, params, aux, layer, signal)
        ref = reference_projection(params, images, layer, signal)
        assert float(jnp.abs(ref).max()) > 0
        assert rel_err(ours, ref) <= 1e-5


@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv3", "conv4", "conv5"])
def test_each_transposed_convolution_is_the_adjoint_of_its_convolution(layer):
    params, _, aux = random_network(SMALL)
    stage = next(s for s in network.spatial_ops(SMALL) if s.name == layer)
    kernel = params[layer]["kernel"]
    kx, ky = jax.random.split(jax.random.key(7))
    x = jax.random.normal(kx, (2, stage.input_size, stage.input_size, kernel.shape[2]))
    fx = lax.conv_general_dilated(x, kernel, (stage.stride,) * 2, [(stage.padding,) * 2] * 2,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # A non-negative y, so the reverse stage's rectification changes nothing.
    y = jax.random.uniform(ky, fx.shape)
    back = deconv.reverse_stage(stage, y, params, None)
    p, n = stage.padding, stage.input_size
    back = back[:, p : p + n, p : p + n]
    assert back.shape == x.shape
    np.testing.assert_allclose(jnp.vdot(fx, y), jnp.vdot(x, back), rtol=2e-5)


@pytest.mark.parametrize("layer", network.projectable_layers(SMALL))
def test_windowed_unit_projection_equals_dense(layer):
    params, _, aux = random_network(SMALL)
    n, h, w, c = aux["activations"][layer].shape
    units = deconv.Units(image=np.array([0, 1, 1, 0]), channel=np.array([0, c - 1, 3, 5]),
                         y=np.array([0, h - 1, h // 2, h - 1]), x=np.array([0, w - 1, w // 2, 0]))
    windowed = deconv.project_units(SMALL, params, aux, layer, units)
    for k in range(4):
        signal = deconv.unit_signal(aux, layer, units.channel[k], units.y[k], units.x[k])
        signal = signal * (jnp.arange(n) == units.image[k])[:, None, None, None]
        dense = deconv.project(SMALL, params, aux, layer, signal)[units.image[k]]
        np.testing.assert_allclose(windowed[k], dense, rtol=1e-5, atol=1e-6 * float(jnp.abs(dense).max()))


def test_windowed_projection_at_224_equals_reference():
    params, images, aux = random_network(FULL, n_images=1)
    peaks = aux["activations"]["conv5"][0].max(axis=(0, 1))
    units = deconv.strongest_units(aux, "conv5", jnp.argsort(peaks)[-2:])
    ours = deconv.project_units(FULL, params, aux, "conv5", units)
    for k in range(2):
        signal = deconv.unit_signal(aux, "conv5", units.channel[k], units.y[k], units.x[k])
        ref = reference_projection(params, images, "conv5", signal)[0]
        assert rel_err(ours[k], ref) <= 1e-5


@pytest.mark.parametrize("layer", ["conv2", "pool2", "conv5", "pool5"])
def test_single_unit_projection_is_zero_outside_its_receptive_field(layer):
    params, _, aux = random_network(SMALL)
    h = aux["activations"][layer].shape[1]
    # One unit at a border, one inside; the strongest channel there, so it is not zero.
    for y, x in [(0, h - 1), (h // 2, h // 2)]:
        channel = int(jnp.argmax(aux["activations"][layer][1, y, x]))
        units = deconv.Units(np.array([1]), np.array([channel]), np.array([y]), np.array([x]))
        proj = np.asarray(deconv.project_units(SMALL, params, aux, layer, units)[0])
        top, left, bottom, right = receptive_field(SMALL, layer, y, x)
        inside = np.zeros(proj.shape[:2], bool)
        inside[top:bottom, left:right] = True
        assert np.abs(proj[~inside]).max(initial=0) == 0
        assert np.abs(proj[inside]).max() > 0


@pytest.mark.parametrize("layer", ["pool1", "conv3"])
def test_project_strongest_equals_each_units_dense_projection_cropped(tiny_network, layer):
    """Image-sorted chunks (2 units per call, the last one padded), shape S = (2, 3) with an
    unfilled slot, units at the corner and the far edge: each crop == the dense projection
    of that unit alone, cut to its receptive field with numpy."""
    config, params = tiny_network
    rng = np.random.default_rng(7)
    inputs = rng.normal(0, 0.3, (3, 64, 64, 3)).astype(np.float32)
    display = rng.integers(0, 256, inputs.shape, np.uint8)
    _, aux = model.forward_jit(config, params, inputs)
    acts = np.asarray(aux["activations"][layer])
    _, h, w, _ = acts.shape
    image = np.array([[2, 0, 2], [1, 0, -1]])
    y = np.array([[0, h - 1, h // 2], [h - 1, 1, 0]])
    x = np.array([[0, w - 1, w // 2], [0, w - 2, 0]])
    channel = acts[np.maximum(image, 0), y, x].argmax(-1)  # the strongest there: not zero
    value = np.where(image >= 0, acts[np.maximum(image, 0), y, x, channel], -np.inf)
    found = deconv.project_strongest(config, params, layer, (value, image, y, x), channel,
                                     inputs, display=display, chunk=2)
    r = receptive_field_size(config, layer)
    assert found.projections.shape == found.patches.shape == (2, 3, r, r, 3)
    assert found.positions.shape == (2, 3, 2)
    assert not found.projections[1, 2].any() and not found.patches[1, 2].any()
    past_edge = 0
    for i, j in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]:
        n, c, yy, xx = image[i, j], channel[i, j], y[i, j], x[i, j]
        signal = np.zeros_like(acts)
        signal[n, yy, xx, c] = acts[n, yy, xx, c]
        dense = np.asarray(deconv.project(config, params, aux, layer, signal))[n]
        top, left, _, _ = receptive_field(config, layer, yy, xx, clip=False)
        padded = np.pad(dense, ((r, r), (r, r), (0, 0)))  # zero past the image edge
        want = padded[top + r:top + 2 * r, left + r:left + 2 * r]
        assert np.abs(want).sum() == pytest.approx(np.abs(dense).sum(), rel=1e-6)  # all of it
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(found.projections[i, j], want, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(
            found.patches[i, j], np.pad(display[n], ((r, r), (r, r), (0, 0)))[
                top + r:top + 2 * r, left + r:left + 2 * r])
        past_edge += min(top, left) < 0 or max(top, left) + r > config.image_size
    assert past_edge >= 3  # the corner and far-edge units' crops are zero-padded


def test_project_is_vmappable_over_selections():
    params, _, aux = random_network(SMALL)
    signals = jnp.stack([deconv.feature_map_signal(aux, "conv3", c) for c in range(4)])
    batched = jax.vmap(lambda s: deconv.project(SMALL, params, aux, "conv3", s))(signals)
    for c in range(4):
        one = deconv.project(SMALL, params, aux, "conv3", signals[c])
        np.testing.assert_allclose(batched[c], one, rtol=1e-5, atol=1e-7)


def test_strongest_units_find_the_maximum():
    _, _, aux = random_network(SMALL)
    acts = np.asarray(aux["activations"]["conv4"])
    units = deconv.strongest_units(aux, "conv4", [0, 7, 9], image=1)
    for k, c in enumerate([0, 7, 9]):
        assert acts[1, units.y[k], units.x[k], c] == acts[1, :, :, c].max()
    assert list(units.image) == [1, 1, 1]


def test_bad_selections_say_what_was_expected():
    params, _, aux = random_network(SMALL)
    with pytest.raises(ValueError, match="unknown layer 'conv6'; expected one of conv1, pool1"):
        deconv.feature_map_signal(aux, "conv6", 0)
    with pytest.raises(ValueError, match=r"channel 64 is out of range for conv5: expected 0..63"):
        deconv.feature_map_signal(aux, "conv5", 64)
    with pytest.raises(ValueError, match=r"y 3 is out of range for conv5: expected 0..2"):
        deconv.project_units(SMALL, params, aux, "conv5", deconv.Units([0], [0], [3], [0]))
    with pytest.raises(ValueError, match=r"image index 2 is out of range"):
        deconv.project_units(SMALL, params, aux, "conv5", deconv.Units([2], [0], [0], [0]))
    with pytest.raises(ValueError, match=r"signal for conv3 must have the shape of its map"):
        deconv.project(SMALL, params, aux, "conv3", jnp.zeros((2, 3, 3, 3)))
    with pytest.raises(ValueError, match="unknown layer 'fc6'"):
        deconv.project(SMALL, params, aux, "fc6", aux["activations"]["fc6"])
