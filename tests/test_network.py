"""A network is data: AlexNet and VGG16 from the same description as ZFNet.

The forward pass, the switches, the deconvnet (dense and windowed) and receptive
fields of every architecture are checked against independent references written
with XLA's own max-pool (lax.reduce_window) and jax.vjp.
"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from zfjax.nets import deconv, model, network
from zfjax.train import checkpoints
from zfjax.nets.receptive_field import receptive_field
from helpers import batch_norm_params, random_params

ALEX = network.Network(arch="alexnet", num_classes=5, image_size=64, width=0.125, init_std=None)
VGG = network.Network(arch="vgg16", num_classes=5, image_size=32, width=0.0625, init_std=None)
ZF = network.Network(num_classes=5, image_size=64, width=0.25, init_std=None)
VGG_BN = network.Network(arch="vgg11_bn", num_classes=5, image_size=32, width=0.0625, init_std=None)


def test_alexnet_in_torchvision_layout_at_224():
    net = network.Network(arch="alexnet")
    assert network.layer_sizes(net) == {"input": 224, "conv1": 55, "pool1": 27, "conv2": 27,
                                      "pool2": 13, "conv3": 13, "conv4": 13, "conv5": 13,
                                      "pool5": 6}
    shapes = network.param_shapes(net)
    assert shapes["conv1"]["kernel"] == (11, 11, 3, 64)
    assert [shapes[f"conv{i}"]["bias"][0] for i in range(1, 6)] == [64, 192, 384, 256, 256]
    assert shapes["fc6"]["kernel"] == (6 * 6 * 256, 4096)
    assert network.parameter_count(net) == 61_100_840  # torchvision's alexnet()


def test_vgg16_names_sizes_and_parameter_count_at_224():
    net = network.Network(arch="vgg16")
    assert network.conv_layers(net) == ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1",
                                      "conv3_2", "conv3_3", "conv4_1", "conv4_2", "conv4_3",
                                      "conv5_1", "conv5_2", "conv5_3")
    assert network.pool_layers(net) == ("pool1", "pool2", "pool3", "pool4", "pool5")
    assert network.fc_layers(net) == ("fc6", "fc7") and network.dense_layers(net)[-1] == "fc8"
    sizes = network.layer_sizes(net)
    assert [sizes[f"pool{i}"] for i in range(1, 6)] == [112, 56, 28, 14, 7]
    assert sizes["conv5_3"] == 14
    assert network.param_shapes(net)["fc6"]["kernel"] == (7 * 7 * 512, 4096)
    assert network.parameter_count(net) == 138_357_544  # torchvision's / Keras's vgg16


def test_zfnet_is_unchanged():
    net = network.Network(num_classes=10)
    assert network.projectable_layers(net) == ("conv1", "pool1", "conv2", "pool2", "conv3",
                                             "conv4", "conv5", "pool5")
    assert network.parameter_count(net) == 58_301_578
    assert net == network.Network(num_classes=10) and net.arch == "zfnet"


def test_config_is_hashable_and_old_run_configs_load_as_zfnet():
    old = {"num_classes": 10, "image_size": 64, "width": 0.5, "contrast_norm": True,
           "dtype": "float32", "dropout_rate": 0.5, "init_std": None}  # a run of session 1
    net = network.from_dict(old)
    assert net.arch == "zfnet" and net == network.Network(num_classes=10, image_size=64, width=0.5,
                                                        init_std=None)
    written = json.loads(json.dumps(checkpoints.config_dict(VGG)))  # as config.json holds it
    assert network.from_dict(written) == VGG and hash(network.from_dict(written)) == hash(VGG)
    assert checkpoints.config_dict(VGG)["arch"] == "vgg16"
    with pytest.raises(ValueError, match="unknown keys depth"):
        network.from_dict({**old, "depth": 3})
    with pytest.raises(ValueError, match="unknown arch 'resnet'; expected one of zfnet, alexnet, vgg11, vgg11_bn, "
                                         "vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn$"):
        network.Network(arch="resnet")
    with pytest.raises(ValueError, match="image_size 16 is too small for vgg16"):
        network.Network(arch="vgg16", image_size=16)


@pytest.mark.parametrize("pool", [network.MaxPool("p", 2, 2), network.MaxPool("p", 3, 2),
                                  network.MaxPool("p", 3, 2, ceil=True), network.MaxPool("p", 3, 1, 1)])
@pytest.mark.parametrize("size", [7, 8, 13])
def test_switches_for_any_window_match_xla_max_pool(pool, size):
    x = np.random.default_rng(size).normal(size=(2, size, size, 3)).astype(np.float32)
    pooled, switches = model.max_pool_with_switches(x, pool)
    ref = _xla_pool(x, pool)
    np.testing.assert_array_equal(pooled, ref)
    assert switches.dtype == jnp.int8 and int(switches.max()) < pool.window ** 2
    # The unpool is the adjoint of max selection: <select(x), y> == <x, unpool(y)>.
    y = np.random.default_rng(1).normal(size=pooled.shape).astype(np.float32)
    _, vjp = jax.vjp(lambda v: _xla_pool(v, pool), x)
    np.testing.assert_allclose(model.unpool(y, switches, size, size, pool), vjp(y)[0],
                               rtol=1e-6, atol=1e-6)


def _xla_pool(x, pool):
    n, k, s, p = x.shape[1], pool.window, pool.stride, pool.padding
    extra = (model.pool_output_size(n, pool) - 1) * s + k - n - p
    if extra < 0:  # floor mode leaves rows no window reads (XLA's VJP wants no negative padding)
        x, extra = x[:, :n + extra, :n + extra], 0
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, s, s, 1),
                             ((0, 0), (p, extra), (p, extra), (0, 0)))


# ---- an independent forward whose VJP is the deconvnet -----------------------------

@jax.custom_vjp
def deconv_relu(x):
    return jnp.maximum(x, 0)


deconv_relu.defvjp(lambda x: (jnp.maximum(x, 0), None), lambda _, g: (jnp.maximum(g, 0),))


def reference_features(config, params, images, layer):
    """Up to ``layer`` with XLA's conv and max-pool, batch norm written out, the
    deconvnet ReLU rule, no LRN in the backward direction (the test networks here have
    none)."""
    x, named = images, None
    table = network.stages(config)
    for i, stage in enumerate(table):
        if isinstance(stage, network.Conv):
            p = stage.padding
            x = lax.conv_general_dilated(x, params[stage.name]["kernel"], (stage.stride,) * 2,
                                         [(p, p), (p, p)], dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = x + params[stage.name]["bias"]
        elif isinstance(stage, network.BatchNorm):
            p = params[stage.name]
            x = (x - p["mean"]) / jnp.sqrt(p["var"] + stage.eps) * p["scale"] + p["bias"]
        elif isinstance(stage, network.ReLU) and x.ndim == 4:  # every conv here has a ReLU
            x = deconv_relu(x)
        elif isinstance(stage, network.MaxPool):
            x = _xla_pool(x, stage)
        if isinstance(stage, (network.Conv, network.MaxPool, network.Dense)):
            named = stage.name
        after = table[i + 1] if i + 1 < len(table) else None
        if named == layer and not isinstance(after, (network.BatchNorm, network.ReLU)):
            return x  # the map after the conv's batch norm and ReLU
    raise AssertionError(layer)


@functools.lru_cache(maxsize=None)
def setup(config):
    params = batch_norm_params(config, random_params(config, bias_std=0.05))
    # numpy draws: jax.random compiles a program per shape (seconds each here)
    images = np.random.default_rng(3).normal(
        size=(2, config.image_size, config.image_size, 3)).astype(np.float32)
    logits, aux = model.forward_jit(config, params, images)
    return params, images, logits, aux


@pytest.mark.parametrize("config", [ALEX, VGG, VGG_BN], ids=["alexnet", "vgg16", "vgg11_bn"])
def test_forward_records_every_layer_like_the_reference(config):
    params, images, logits, aux = setup(config)
    assert logits.shape == (2, 5)
    assert set(aux["switches"]) == set(network.pool_layers(config))
    for layer in network.projectable_layers(config):
        np.testing.assert_allclose(aux["activations"][layer],
                                   reference_features(config, params, images, layer),
                                   rtol=1e-4, atol=1e-5)
    assert aux["activations"]["fc7"].shape == (2, network.num_channels(config, "fc7"))


# vgg11_bn checks every VGG layer kind at every depth (3x3 convs, 2x2 pools, batch norm);
# vgg16 adds blocks of two and three convs: the layers ending them, and the deepest. All 18
# of its layers cost a compile of each pass per layer (60 s of the suite for no new stage).
PROJECTED_LAYERS = {VGG: ("conv1_2", "conv3_3", "conv5_3", "pool5")}


@pytest.mark.parametrize("config", [ALEX, VGG, VGG_BN], ids=["alexnet", "vgg16", "vgg11_bn"])
def test_dense_and_windowed_projections_equal_the_reference_vjp(config):
    params, images, _, aux = setup(config)
    for layer in PROJECTED_LAYERS.get(config, network.projectable_layers(config)):
        acts = aux["activations"][layer]
        ours = deconv.project(config, params, aux, layer, acts)
        _, pullback = jax.vjp(lambda im: reference_features(config, params, im, layer), images)
        ref = pullback(acts)[0]
        assert float(jnp.linalg.norm(ours - ref) / jnp.linalg.norm(ref)) <= 1e-5, layer
        # Windowed single units equal dense ones and stay inside their receptive field.
        n, h, w, c = acts.shape
        units = deconv.Units(np.array([0, 1]), np.array([0, c - 1]), np.array([0, h - 1]),
                             np.array([w - 1, h // 2]))
        windowed = deconv.project_units(config, params, aux, layer, units)
        for k in range(2):
            signal = deconv.unit_signal(aux, layer, units.channel[k], units.y[k], units.x[k])
            signal = signal * (jnp.arange(n) == units.image[k])[:, None, None, None]
            dense = deconv.project(config, params, aux, layer, signal)[units.image[k]]
            np.testing.assert_allclose(windowed[k], dense, rtol=1e-5,
                                       atol=1e-6 * float(jnp.abs(dense).max()) + 1e-30)
            top, left, bottom, right = receptive_field(config, layer, units.y[k], units.x[k])
            outside = np.ones(dense.shape[:2], bool)
            outside[top:bottom, left:right] = False
            assert np.abs(np.asarray(dense)[outside]).max(initial=0) == 0


def test_unknown_layer_names_the_networks_layers():
    _, _, _, aux = setup(VGG)
    with pytest.raises(ValueError, match="unknown layer 'conv5'; expected one of conv1_1, "
                                         "conv1_2, pool1, conv2_1"):
        deconv.feature_map_signal(aux, "conv5", 0)
    with pytest.raises(ValueError, match="unknown layer 'conv5'; expected one of conv1_1"):
        network.check_layers(VGG, ["conv5"])


@pytest.mark.parametrize("config, layer", [(ALEX, "conv5"), (VGG, "conv4_2"), (VGG_BN, "conv4_2")],
                         ids=["alexnet", "vgg16", "vgg11_bn"])
def test_incremental_occlusion_forward_equals_whole_forwards(config, layer):
    from zfjax.analyses import occlusion

    params, images, _, _ = setup(config)
    size = config.image_size // 4
    run = lambda incremental: jax.device_get(occlusion.occlusion_maps(
        config, params, images[0], np.int32(-1), np.zeros(images.shape[1:], np.float32),
        layer=layer, size=size, stride=size // 2, batch_size=4, incremental=incremental))
    fast, slow = run(True), run(False)
    for key in ("map_total", "unit", "p_true", "top_prob"):
        np.testing.assert_allclose(getattr(fast, key), getattr(slow, key), rtol=2e-4, atol=1e-5,
                                   err_msg=key)
    np.testing.assert_array_equal(fast.top_class, slow.top_class)


def test_batch_norm_folded_into_its_conv_gives_the_same_forward():
    """fold_batch_norm: vgg11_bn's params folded run as vgg11 (the same convs, no batch norm)
    and give the same maps and logits; a network without batch norm is left as it is."""
    params, images, logits, aux = setup(VGG_BN)
    folded = model.fold_batch_norm(VGG_BN, params)
    assert not any(name.startswith("bn") for name in folded)
    plain = dataclasses.replace(VGG_BN, arch="vgg11")
    folded_logits, folded_aux = model.forward_jit(plain, folded, images)
    np.testing.assert_allclose(folded_logits, logits, rtol=1e-4, atol=1e-5)
    for layer in network.projectable_layers(VGG_BN):
        np.testing.assert_allclose(folded_aux["activations"][layer], aux["activations"][layer],
                                   rtol=1e-4, atol=1e-5, err_msg=layer)
    vgg_params = setup(VGG)[0]
    assert model.fold_batch_norm(VGG, vgg_params) is vgg_params
