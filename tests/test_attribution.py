"""Attribution methods (zfjax.nets.attribution): the engine's rules, gradient == jax.grad,
deconvnet == zfjax.nets.deconv, Captum references, completeness, batching, bad input."""

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY, batch_norm_params, random_params

from zfjax.nets import attribution, deconv, model, network
from zfjax.nets.attribution import LOGITS, Target


@pytest.fixture(scope="module")
def net():
    """TINY (64 px, contrast norm on) with biases, and two random images."""
    params = random_params(TINY, seed=1, bias_std=0.1)
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    return params, jnp.asarray(images)


def strongest_conv5_units(params, images):
    """Each image's strongest conv5 unit, on channels 1 and 2: Target (2 units)."""
    _, aux = model.forward_jit(TINY, params, images)
    units = [deconv.strongest_units(aux, "conv5", [i + 1], image=i) for i in range(2)]
    return Target("conv5", jnp.array([1, 2]), jnp.array([int(u.y[0]) for u in units]),
                  jnp.array([int(u.x[0]) for u in units]))


def relative_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_relu_rules_by_hand():
    g = jnp.array([-1.0, 2.0, -3.0, 4.0])
    forward_out = jnp.array([0.0, 1.0, 1.0, 0.0])
    rules = {rule: attribution._ruled_relu_bwd(rule, forward_out, g)[0]
             for rule in ("rectify", "guided", "mask")}
    np.testing.assert_array_equal(rules["rectify"], [0, 2, 0, 4])  # deconvnet
    np.testing.assert_array_equal(rules["guided"], [0, 2, 0, 0])
    np.testing.assert_array_equal(rules["mask"], [0, 2, -3, 0])  # the true gradient


def test_gradient_equals_jax_grad_for_each_target_kind(net):
    params, images = net
    units = strongest_conv5_units(params, images)

    @jax.jit
    @jax.vmap
    @jax.grad
    def reference(image, on_conv5, on_pool2, on_logits):
        """jax.grad of the selected activations' sum: one compile for the three kinds."""
        logits, aux = model.forward(TINY, params, image[None])
        acts = aux["activations"]
        return (jnp.sum(on_conv5 * acts["conv5"][0]) + jnp.sum(on_pool2 * acts["pool2"][0])
                + jnp.sum(on_logits * logits[0]))

    _, aux = model.forward_jit(TINY, params, images)
    none = {k: jnp.zeros((2, *aux["activations"][k].shape[1:])) for k in ("conv5", "pool2")}
    none["logits"] = jnp.zeros((2, TINY.num_classes))
    rows = jnp.arange(2)
    selections = {
        "conv5": none["conv5"].at[rows, units.y, units.x, units.channel].set(1),
        "pool2": none["pool2"].at[rows, ..., jnp.array([0, 3])].set(1),
        "logits": none["logits"].at[rows, jnp.array([1, 0])].set(1),
    }
    targets = {"conv5": units, "pool2": Target("pool2", jnp.array([0, 3])),
               "logits": Target(LOGITS, jnp.array([1, 0]))}
    cases = [(targets[k], reference(images, *({**none, k: selections[k]}.values())))
             for k in selections]
    for target, want in cases:
        got = attribution.attribute(TINY, params, images, target, "gradient")
        assert float(jnp.abs(want).max()) > 0, target.layer
        np.testing.assert_allclose(got.maps, want, rtol=1e-5, atol=1e-6 * float(jnp.abs(want).max()))


def test_deconvnet_equals_deconv_project(net):
    params, images = net
    units = strongest_conv5_units(params, images)
    got = attribution.attribute(TINY, params, images, units, "deconvnet")
    _, aux = model.forward_jit(TINY, params, images)
    want = deconv.project_units(TINY, params, aux, "conv5",
                                deconv.Units(jnp.arange(2), units.channel, units.y, units.x))
    assert relative_error(got.maps, want) < 1e-5
    np.testing.assert_allclose(got.outputs, aux["activations"]["conv5"][jnp.arange(2), units.y,
                                                                      units.x, units.channel])


ALEXNET = network.Network(arch="alexnet", num_classes=3, image_size=128, width=0.125,
                        init_std=None)
VGG_BN = network.Network(arch="vgg11_bn", num_classes=3, image_size=32, width=0.0625, init_std=None)


def edge_units(config, layer):
    """Target: six units of ``layer`` on one channel each: the four corners, the middle
    of the top edge and one inside, where windows run past the map (padding)."""
    size = network.layer_sizes(config)[layer]
    ys, xs = [0, 0, size - 1, size - 1, 0, size // 2], [0, size - 1, 0, size - 1, size // 2, 1]
    channels = np.arange(6) % network.num_channels(config, layer)
    return Target(layer, jnp.array(channels), jnp.array(ys), jnp.array(xs))


@pytest.mark.parametrize("config, layer", [(TINY, "pool2"), (ALEXNET, "conv3"),
                                           (VGG_BN, "conv2_1")],
                         ids=["tiny-pool2", "alexnet-conv3", "vgg11_bn-conv2_1"])
def test_windowed_unit_attribution_equals_dense(config, layer):
    """Windows down to the image: ZFNet's ceil pools, padding 1 and contrast norm (its
    true gradient read from the recorded maps on each window); AlexNet's floor pools and
    padding 2. (TINY conv5's window covers conv4's whole map, which then runs dense: the
    jax.grad and project_units tests above cover it.) Units at the edges, where windows
    run past the map; biases > 0, so a mask read off the map as relu(bias) instead of the
    padding would differ there. vgg11_bn: the map is recorded after the batch norm and
    ReLU that follow the conv, and the batch norm is folded into the conv."""
    params = batch_norm_params(config, random_params(config, seed=1, bias_std=0.1))
    n = config.image_size
    image = np.random.default_rng(0).normal(size=(1, n, n, 3)).astype(np.float32)
    images = jnp.asarray(np.repeat(image, 6, axis=0))
    target = edge_units(config, layer)
    _, aux = model.forward_jit(config, params, images)
    for method in attribution.RULES:
        windowed = attribution.attribute(config, params, images, target, method)
        dense = attribution.attribute(config, params, images, target, method, window=False)
        scale = float(jnp.abs(dense.maps).max())
        assert scale > 0
        np.testing.assert_allclose(windowed.maps, dense.maps, rtol=1e-5, atol=1e-6 * scale,
                                   err_msg=method)
        np.testing.assert_allclose(windowed.outputs, dense.outputs, rtol=1e-5, atol=1e-6)
        # The reverse engine's dense pass under the same rule, from the same start.
        rule = attribution.RULES[method]
        selected = np.zeros(aux["activations"][layer].shape, np.float32)
        selected[np.arange(6), target.y, target.x, target.channel] = 1
        signal = selected * aux["activations"][layer] if rule.start == "activation" else selected
        projected = deconv.project(config, params, aux, layer, jnp.asarray(signal), rule=rule)
        np.testing.assert_allclose(projected, dense.maps, rtol=1e-5, atol=1e-6 * scale,
                                   err_msg=method)


def test_batched_equals_one_at_a_time(net):
    params, images = net
    units = strongest_conv5_units(params, images)
    logit = Target(LOGITS, jnp.array([1, 0]))
    batched = [
        attribution.attribute(TINY, params, images, units, "guided_backprop").maps,
        attribution.integrated_gradients(TINY, params, images, logit, jnp.zeros((64, 64, 3)),
                                         steps=2).maps,
        attribution.grad_cam(TINY, params, images, logit, "conv5").maps,
    ]
    for i in range(2):
        one = Target(units.layer, units.channel[i], units.y[i], units.x[i])
        one_logit = Target(LOGITS, logit.channel[i])
        singles = [
            attribution.attribute(TINY, params, images[i : i + 1], one, "guided_backprop").maps,
            attribution.integrated_gradients(TINY, params, images[i : i + 1], one_logit,
                                             jnp.zeros((64, 64, 3)), steps=2).maps,
            attribution.grad_cam(TINY, params, images[i : i + 1], one_logit, "conv5").maps,
        ]
        for b, s in zip(batched, singles):
            np.testing.assert_allclose(b[i], s[0], rtol=1e-5, atol=1e-5 * float(jnp.abs(s).max()))


def test_passes_in_chunks_equal_one_batch(net, monkeypatch):
    """Integrated gradients runs its path points in chunks of default_chunk() (3: each
    image's 5 steps as 3 + 2); the ends' outputs through attribute's chunks (3 + 1)."""
    params, images = net
    logit = Target(LOGITS, jnp.array([1, 0]))
    baseline = jnp.zeros((64, 64, 3))
    whole = attribution.integrated_gradients(TINY, params, images, logit, baseline, steps=5)
    monkeypatch.setattr(attribution, "default_chunk", lambda: 3)
    chunked = attribution.integrated_gradients(TINY, params, images, logit, baseline, steps=5)
    np.testing.assert_allclose(chunked.maps, whole.maps, rtol=1e-5,
                               atol=1e-6 * float(jnp.abs(whole.maps).max()))
    np.testing.assert_allclose(chunked.outputs, whole.outputs, rtol=1e-5, atol=1e-6)


def test_averaged_methods_equal_the_mean_of_plain_passes(net, monkeypatch):
    """Integrated gradients and SmoothGrad reverse the first conv once per image and blend
    its outputs along the path: the same as averaging attribute's maps over the path
    points and noisy copies, in chunks that split an image's samples (3 of 2 x 4)."""
    params, images = net
    monkeypatch.setattr(attribution, "default_chunk", lambda: 3)
    baseline = jnp.asarray(np.random.default_rng(2).normal(size=(2, 64, 64, 3)), jnp.float32)
    noise = 0.3 * jax.random.normal(jax.random.key(3), (2, 4, 64, 64, 3))
    alphas = (jnp.arange(4) + 0.5) / 4
    path = baseline[:, None] + alphas[None, :, None, None, None] * (images - baseline)[:, None]
    logit, feature_map = Target(LOGITS, jnp.array([1, 0])), Target("conv4", jnp.array([3, 5]))

    def plain_mean(inputs, target, method):
        maps = attribution.attribute(TINY, params, inputs.reshape(8, 64, 64, 3),
                                     attribution._repeat_target(target, 2, 4), method).maps
        return maps.reshape(2, 4, 64, 64, 3).mean(1)

    cases = [  # (got, want): the gradient's on a logit, the deconvnet's (its own start) on a map
        (attribution.integrated_gradients(TINY, params, images, logit, baseline, steps=4).maps,
         (images - baseline) * plain_mean(path, logit, "gradient")),
        (attribution.smoothgrad_with_noise(TINY, params, images, logit, noise).maps,
         plain_mean(images[:, None] + noise, logit, "gradient")),
        (attribution.smoothgrad_with_noise(TINY, params, images, feature_map, noise,
                                           method="deconvnet").maps,
         plain_mean(images[:, None] + noise, feature_map, "deconvnet")),
    ]
    for got, want in cases:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.abs(want).max()))


def test_no_images_give_empty_maps(net):
    params, images = net
    none = images[:0]
    for target in (Target(LOGITS, 0), Target("conv5", 0, 0, 0), Target("conv5", 0)):
        got = attribution.attribute(TINY, params, none, target, "guided_backprop")
        assert got.maps.shape == (0, 64, 64, 3) and got.outputs.shape == (0,), target
    path = attribution.integrated_gradients(TINY, params, none, Target(LOGITS, 0),
                                            jnp.zeros((64, 64, 3)), steps=2)
    assert path.maps.shape == (0, 64, 64, 3)


def test_a_bfloat16_network_takes_float32_images_and_gradient_signals(net):
    params, images = net
    config = dataclasses.replace(TINY, dtype="bfloat16")
    got = attribution.attribute(config, params, images, Target(LOGITS, 0), "gradient")
    assert got.maps.dtype == jnp.float32 and bool(jnp.isfinite(got.maps).all())
    _, aux = model.forward_jit(config, params, images)
    signal = jnp.zeros(aux["activations"]["pool2"].shape, jnp.float32).at[:, 0, 0, 0].set(1)
    for method in ("guided_backprop", "gradient"):  # contrast norm's gradient at a bf16 map
        projected = deconv.project(config, params, aux, "pool2", signal,
                                   rule=attribution.RULES[method])
        assert bool(jnp.isfinite(projected).all()), method


def test_a_misspelt_rule_is_refused(net):
    params, images = net
    _, aux = model.forward_jit(TINY, params, images)
    units = deconv.Units(jnp.array([0]), jnp.array([0]), jnp.array([0]), jnp.array([0]))
    with pytest.raises(ValueError, match="reverse rule relu must be one of rectify, guided, "
                                         "mask; got 'guide'"):
        deconv.project_units(TINY, params, aux, "conv5", units,
                             rule=model.ReverseRule("guide", "grad", "one"))


def test_vmap_over_targets_equals_separate_calls(net):
    params, images = net
    classes = jnp.array([[1, 0], [0, 1]])
    mapped = jax.vmap(lambda c: attribution.attribute(TINY, params, images, Target(LOGITS, c)).maps)(
        classes)
    for k in range(2):
        separate = attribution.attribute(TINY, params, images, Target(LOGITS, classes[k])).maps
        np.testing.assert_allclose(mapped[k], separate, rtol=1e-5,
                                   atol=1e-5 * float(jnp.abs(separate).max()))


def test_smoothgrad_noise_is_a_fraction_of_each_images_range():
    images = np.stack([np.linspace(0, 1, 16 * 16 * 3), np.linspace(-5, 5, 16 * 16 * 3)])
    images = images.reshape(2, 16, 16, 3)
    noise = np.asarray(attribution.smoothgrad_noise(jax.random.key(0), images, 16, 0.1))
    assert noise.shape == (2, 16, 16, 16, 3)
    np.testing.assert_allclose(noise.std(axis=(1, 2, 3, 4)), [0.1, 1.0], rtol=0.03)
    assert not np.asarray(attribution.smoothgrad_noise(jax.random.key(0), images, 2, 0.0)).any()


@pytest.mark.parametrize("baseline", ["black", "blurred"])
def test_integrated_gradients_completeness(net, baseline):
    params, images = net
    base = (jnp.full((64, 64, 3), -0.5) if baseline == "black"
            else attribution.blurred_baseline(images, sigma=4.0))
    ig = attribution.integrated_gradients(TINY, params, images, Target(LOGITS, jnp.array([0, 1])),
                                          base, steps=64)
    gap = ig.outputs - ig.baseline_outputs
    # A ReLU network is piecewise linear along the path: the midpoint rule's error comes
    # from the kinks, and shrinks with the steps.
    scale = float(jnp.maximum(jnp.abs(ig.outputs), jnp.abs(ig.baseline_outputs)).max())
    np.testing.assert_allclose(ig.maps.sum((1, 2, 3)), gap, atol=0.03 * scale)
    coarse = attribution.integrated_gradients(TINY, params, images, Target(LOGITS, jnp.array([0, 1])),
                                              base, steps=2)
    assert (float(jnp.abs(ig.maps.sum((1, 2, 3)) - gap).sum())
            < float(jnp.abs(coarse.maps.sum((1, 2, 3)) - gap).sum()))


# ---- Captum on the same weights -------------------------------------------------------


def torch_network(params, config):
    """bench/torch_reference.py's torch copy of the network (skips without torch)."""
    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import torch_reference

    return torch_reference.torch_network(params, config)


def test_methods_equal_captum(net):
    """Guided backprop, gradient x input, integrated gradients (midpoint rule), SmoothGrad
    (the same noise: Captum's gradient averaged over our noisy copies) and Grad-CAM."""
    torch = pytest.importorskip("torch")
    captum = pytest.importorskip("captum.attr")
    params, images = net
    torch_net, modules = torch_network(params, TINY)
    classes = jnp.array([1, 0])
    target = Target(LOGITS, classes)

    def nchw(a):
        return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 3, 1, 2)))

    def nhwc(t):
        return t.detach().numpy().transpose(0, 2, 3, 1)

    inputs, torch_classes = nchw(images), torch.tensor(np.asarray(classes))
    np.testing.assert_allclose(torch_net(inputs).detach().numpy(),
                               model.forward(TINY, params, images)[0], rtol=1e-4, atol=1e-5)
    baseline = attribution.blurred_baseline(images, sigma=4.0)
    # 2 steps, 2 samples: every batch of 4 inputs runs one compiled program.
    noise = attribution.smoothgrad_noise(jax.random.key(0), images, 2, 0.2)
    noisy = (images[:, None] + noise).reshape(4, 64, 64, 3)
    saliency = nhwc(captum.Saliency(torch_net).attribute(
        nchw(noisy), target=torch_classes.repeat_interleave(2), abs=False))
    cases = {
        "guided backprop": (attribution.attribute(TINY, params, images, target, "guided_backprop").maps,
                            nhwc(captum.GuidedBackprop(torch_net).attribute(inputs, target=torch_classes))),
        "gradient x input": (attribution.gradient_x_input(TINY, params, images, target).maps,
                             nhwc(captum.InputXGradient(torch_net).attribute(inputs, target=torch_classes))),
        "integrated gradients": (
            attribution.integrated_gradients(TINY, params, images, target, baseline, steps=2).maps,
            nhwc(captum.IntegratedGradients(torch_net).attribute(
                inputs, nchw(baseline), target=torch_classes, n_steps=2, method="riemann_middle"))),
        "smoothgrad": (attribution.smoothgrad_with_noise(TINY, params, images, target, noise).maps,
                       saliency.reshape(2, 2, 64, 64, 3).mean(1)),
        "grad-cam": (attribution.grad_cam(TINY, params, images, target, "conv5").maps,
                     captum.LayerGradCam(torch_net, modules["conv5"]).attribute(
                         inputs, target=torch_classes, relu_attributions=True)[:, 0].detach().numpy()),
    }
    for name, (got, want) in cases.items():
        assert np.abs(want).max() > 0, name
        assert relative_error(got, want) < 1e-4, name


# ---- bad input --------------------------------------------------------------------------


def one_line_error(call, *words):
    with pytest.raises(ValueError) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_bad_input_is_one_clear_line(net):
    params, images = net
    logit = Target(LOGITS, 0)
    black = jnp.zeros((64, 64, 3))
    attribute = attribution.attribute
    one_line_error(lambda: attribute(TINY, params, images, logit, "lrp"), "unknown method 'lrp'",
                   "guided_backprop")
    one_line_error(lambda: attribute(TINY, params, images, Target(LOGITS, 2)), "class 2", "0..1")
    one_line_error(lambda: attribute(TINY, params, images, Target("conv5", 99)), "channel 99")
    one_line_error(lambda: attribute(TINY, params, images, Target("conv5", 0, 3, 0)), "y 3", "0..2")
    one_line_error(lambda: attribute(TINY, params, images, Target("conv5", 0, 0)), "both y and x")
    one_line_error(lambda: attribute(TINY, params, images, Target("fc9", 0)), "unknown target layer")
    one_line_error(lambda: attribute(TINY, params, images, Target(LOGITS, [0, 1, 1])),
                   "one per image (2,)")
    ig = attribution.integrated_gradients
    one_line_error(lambda: ig(TINY, params, images, logit, jnp.zeros((32, 32, 3))),
                   "baseline must have the shape", "(64, 64, 3)")
    one_line_error(lambda: ig(TINY, params, images, logit, black, steps=0), "steps must be a positive")
    noise = attribution.smoothgrad_noise
    one_line_error(lambda: noise(jax.random.key(0), images, 0, 0.1), "samples must be a positive")
    one_line_error(lambda: noise(jax.random.key(0), images, 2, -0.1), "noise must be", ">= 0")
    cam = attribution.grad_cam
    one_line_error(lambda: cam(TINY, params, images, logit, "fc6"), "unknown layer 'fc6'")
    one_line_error(lambda: cam(TINY, params, images, Target("conv3", 0), "conv5"),
                   "needs a target above it")
