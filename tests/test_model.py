"""ZFNet forward: sizes, parameter count, switches, pooling gradient, input checks."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from zfjax.nets import model, network
from zfjax.train import training
from helpers import batch_norm_params, random_params

SMALL = network.Network(num_classes=7, image_size=64, width=0.25, init_std=None)


def test_size_table_and_parameter_count_at_224():
    config = network.Network(num_classes=10)
    assert network.layer_sizes(config) == {
        "input": 224, "conv1": 110, "pool1": 55, "conv2": 26, "pool2": 13,
        "conv3": 13, "conv4": 13, "conv5": 13, "pool5": 6,
    }
    params = jax.eval_shape(lambda: model.init_params(config, jax.random.key(0)))
    assert model.count_params(params) == 58_301_578
    assert params["conv1"]["kernel"].shape == (7, 7, 3, 96)
    assert params["fc6"]["kernel"].shape == (6 * 6 * 256, 4096)


@pytest.mark.parametrize("size, pool5", [(64, 1), (112, 3), (160, 4), (256, 7)])
def test_other_input_sizes_build(size, pool5):
    config = network.Network(num_classes=3, image_size=size, width=0.25)
    assert network.layer_sizes(config)["pool5"] == pool5
    params = jax.eval_shape(lambda: model.init_params(config, jax.random.key(0)))
    assert params["fc6"]["kernel"].shape[0] == pool5 * pool5 * 64


@pytest.mark.parametrize("arch", ["zfnet", "vgg16"])
def test_first_init_std_sets_only_the_first_conv_layer(arch):
    config = network.Network(arch=arch, num_classes=7, image_size=64, width=0.25, init_std=None)
    he = model.init_params(config, jax.random.key(0))
    mixed = model.init_params(dataclasses.replace(config, first_init_std=0.01), jax.random.key(0))
    first = "conv1" if arch == "zfnet" else "conv1_1"
    he_std = np.sqrt(2 / np.prod(he[first]["kernel"].shape[:3]))  # fan-in
    assert abs(float(jnp.std(he[first]["kernel"])) - he_std) < 0.15 * he_std
    assert abs(float(jnp.std(mixed[first]["kernel"])) - 0.01) < 0.0015
    others = [name for name in he if name != first]
    assert len(others) == len(he) - 1
    for name in others:  # the same draws as He-normal throughout
        np.testing.assert_array_equal(mixed[name]["kernel"], he[name]["kernel"])


def test_init_params_draws_every_shape_with_one_compiled_sampler():
    """A new architecture compiles no new sampler, and He-normal is flax's: truncated at two
    standard deviations, rescaled to std sqrt(2 / fan-in)."""
    model.init_params(network.Network(num_classes=3, image_size=64, width=0.25, init_std=None),
                      jax.random.key(0))
    compiled = model._standard_chunk._cache_size()
    vgg = network.Network(arch="vgg11_bn", num_classes=5, image_size=32, width=0.125, init_std=None)
    params = model.init_params(vgg, jax.random.key(1))
    assert model._standard_chunk._cache_size() == compiled
    kernel = np.asarray(params["conv2_1"]["kernel"])
    he_std = np.sqrt(2 / np.prod(kernel.shape[:3]))
    assert abs(kernel.std() - he_std) < 0.1 * he_std
    assert np.abs(kernel).max() <= 2 * he_std / 0.87962566103423978 + 1e-6
    big = np.asarray(model._standard_draws(jax.random.key(2), (3, model._DRAW_CHUNK), False))
    assert not np.array_equal(big[0], big[1]) and abs(big.std() - 1) < 0.01  # chunks differ


def test_forward_records_every_layer():
    params = random_params(SMALL)
    images = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
    logits, aux = model.forward_jit(SMALL, params, images)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    sizes = network.layer_sizes(SMALL)
    for layer in network.projectable_layers(SMALL):
        channels = network.num_channels(SMALL, layer)
        assert aux["activations"][layer].shape == (2, sizes[layer], sizes[layer], channels)
    assert aux["activations"]["fc6"].shape == (2, 1024)
    assert set(aux["switches"]) == {"pool1", "pool2", "pool5"}


def _gather_at_switches(x, switches):
    """Independent selection: the element each switch names, window by window."""
    n, h, w, c = switches.shape
    dy, dx = np.divmod(np.asarray(switches).astype(int), 3)
    rows = 2 * np.arange(h)[None, :, None, None] + dy
    cols = 2 * np.arange(w)[None, None, :, None] + dx
    return np.asarray(x)[np.arange(n)[:, None, None, None], rows, cols, np.arange(c)]


@pytest.mark.parametrize("size", [110, 26, 13, 9])
def test_switches_point_at_the_pooled_values(size):
    x = np.random.default_rng(size).normal(size=(2, size, size, 5)).astype(np.float32)
    pooled, switches = model.max_pool_with_switches(x)
    out = model.pool_output_size(size)
    assert pooled.shape == switches.shape == (2, out, out, 5)
    np.testing.assert_array_equal(_gather_at_switches(x, switches), pooled)
    # Same values as XLA's own max-pool with ceil-mode padding.
    pad = (out - 1) * 2 + 3 - size
    ref = lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                            ((0, 0), (0, pad), (0, pad), (0, 0)))
    np.testing.assert_array_equal(pooled, ref)


def test_ties_go_to_the_first_position_in_row_major_order():
    x = jnp.zeros((1, 5, 5, 1)).at[0, 1, 2, 0].set(1.0).at[0, 2, 1, 0].set(1.0)
    _, switches = model.max_pool_with_switches(x)
    # Window (0,0) covers rows 0-2, cols 0-2: maxima at (1,2)=5 and (2,1)=7 -> 5.
    assert int(switches[0, 0, 0, 0]) == 5
    # Window (1,1) covers rows 2-4, cols 2-4: all zero -> first position.
    assert int(switches[0, 1, 1, 0]) == 0


def test_unpool_is_the_adjoint_of_selection():
    x = np.random.default_rng(2).normal(size=(2, 26, 26, 4)).astype(np.float32)
    pooled, switches = model.max_pool_with_switches(x)
    y = np.random.default_rng(3).normal(size=pooled.shape).astype(np.float32)
    lhs = jnp.vdot(_gather_at_switches(x, switches), y)
    rhs = jnp.vdot(x, model.unpool(y, switches, 26, 26))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5)


def test_unpool_adds_where_windows_share_an_argmax():
    # One big value at (2,2) is the max of the four windows that overlap there.
    x = jnp.zeros((1, 5, 5, 1)).at[0, 2, 2, 0].set(9.0) - 1.0
    _, switches = model.max_pool_with_switches(x)
    back = model.unpool(jnp.ones((1, 2, 2, 1)), switches, 5, 5)
    assert float(back[0, 2, 2, 0]) == 4.0
    assert float(jnp.abs(back).sum()) == 4.0


def test_pooling_gradient_matches_xla_max_pool():
    x = jax.random.normal(jax.random.key(3), (2, 26, 26, 3))
    w = jax.random.normal(jax.random.key(4), (2, 13, 13, 3))
    ours = jax.grad(lambda v: jnp.vdot(model.max_pool_with_switches(v)[0], w))(x)
    ref = jax.grad(lambda v: jnp.vdot(lax.reduce_window(
        v, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (0, 1), (0, 1), (0, 0))), w))(x)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)


def test_contrast_norm_matches_a_direct_loop():
    x = np.random.default_rng(5).normal(size=(1, 3, 3, 8)).astype(np.float32) * 30
    ours = np.asarray(model.contrast_normalize(x))
    xs = np.asarray(x, np.float64)
    ref = np.empty_like(xs)
    for c in range(8):
        lo, hi = max(0, c - 2), min(8, c + 3)
        ref[..., c] = xs[..., c] / (2.0 + 1e-4 / 5 * (xs[..., lo:hi] ** 2).sum(-1)) ** 0.75
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


def test_training_forward_uses_dropout_and_needs_a_key():
    params = random_params(SMALL)
    images = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="dropout_key"):
        model.forward(SMALL, params, images, train=True)
    a, _ = model.forward(SMALL, params, images, train=True, dropout_key=jax.random.key(1))
    b, _ = model.forward(SMALL, params, images, train=True, dropout_key=jax.random.key(2))
    c, _ = model.forward(SMALL, params, images)
    assert not np.allclose(a, b) and not np.allclose(a, c)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    config = network.Network(num_classes=7, image_size=64, width=0.25, dtype="bfloat16")
    params = model.init_params(config, jax.random.key(0))
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    logits, aux = model.forward_jit(config, params, jnp.ones((1, 64, 64, 3)))
    assert logits.dtype == jnp.float32
    assert aux["activations"]["conv3"].dtype == jnp.bfloat16


@pytest.mark.parametrize("shape", [(64, 64, 3), (1, 64, 64, 1), (1, 65, 64, 3), (1, 3, 64, 64)])
def test_wrong_image_shape_says_what_was_expected(shape):
    params = jax.eval_shape(lambda: model.init_params(SMALL, jax.random.key(0)))
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 64, 64, 3\)"):
        jax.eval_shape(lambda p: model.forward(SMALL, p, jnp.zeros(shape)), params)


def test_bad_config_values_are_refused():
    with pytest.raises(ValueError, match="too small"):
        network.Network(image_size=32)
    with pytest.raises(ValueError, match="dtype"):
        network.Network(dtype="float64")
    with pytest.raises(ValueError, match="width"):
        network.Network(width=0)


def test_unused_switches_are_not_computed_under_jit():
    params = jax.eval_shape(lambda: model.init_params(SMALL, jax.random.key(0)))
    images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)

    def compiled_hlo(fn):
        return jax.jit(fn).lower(params, images).compile().as_text()

    # Switches are the only int8 values in the network.
    assert "s8[" in compiled_hlo(lambda p, x: model.forward(SMALL, p, x))
    assert "s8[" not in compiled_hlo(lambda p, x: model.forward(SMALL, p, x)[0])


def test_a_train_step_updates_batch_norm_running_statistics_and_checkpoints_keep_them(tmp_path):
    """vgg11_bn: training normalises with the batch's statistics and moves the running
    ones 10% towards them (torchvision's momentum 0.1, unbiased variance); the running
    statistics are params (no gradient reaches them) and a checkpoint round trip keeps
    them."""
    from zfjax.train import checkpoints

    config = network.Network(arch="vgg11_bn", num_classes=3, image_size=32, width=0.0625,
                           init_std=None)
    tcfg = training.TrainConfig(batch_size=4, learning_rate=0.1, filter_radius=None)
    # Random weights and running statistics: init_state's init_params compiles a program
    # per kernel shape (seconds each here).
    params = batch_norm_params(config, random_params(config))
    optimizer = training.make_optimizer(tcfg.learning_rate, tcfg.momentum)
    state = training.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    images = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype(np.float32)
    labels = jnp.array([0, 1, 2, 0], jnp.int32)
    new, _ = jax.jit(functools.partial(training.train_step, config=config, filter_radius=None))(
        state, (images, labels), jax.random.key(2))
    # conv1_1's output on the batch, before its batch norm: the batch statistics.
    conv1 = model.conv(network.stages(config)[0], state.params, images, jnp.float32)
    n = conv1.size // conv1.shape[-1]
    mean, var = conv1.mean((0, 1, 2)), conv1.var((0, 1, 2)) * n / (n - 1)
    old = params["bn1_1"]
    np.testing.assert_allclose(new.params["bn1_1"]["mean"], 0.9 * old["mean"] + 0.1 * mean,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new.params["bn1_1"]["var"], 0.9 * old["var"] + 0.1 * var,
                               rtol=1e-4, atol=1e-6)
    assert np.any(np.asarray(new.params["bn1_1"]["scale"]) != old["scale"])  # SGD trains it
    mgr = checkpoints.manager(tmp_path / "ckpt")
    checkpoints.save(mgr, 1, new, {"epoch": 1})
    mgr.wait_until_finished()
    restored, _ = checkpoints.restore(mgr, 1, jax.eval_shape(lambda: new), config)
    for key in ("mean", "var", "scale"):
        np.testing.assert_array_equal(restored.params["bn5_2"][key], new.params["bn5_2"][key])
