"""Invariance sweeps (paper Fig. 5): warps, distances, probabilities, the figure."""

import functools

import jax
import numpy as np
import pytest
from PIL import Image

from zfjax import artifacts
from zfjax.analyses import invariance
from zfjax.nets import model, network
from zfjax.figures.invariance import plot_invariance
from helpers import random_params

# The config of test_topk.write_tiny_run, so the CLI tests reuse these compilations.
SMALL = network.Network(num_classes=2, image_size=64, width=0.25, init_std=None)
# Per kind: the identity, a small and a large transformation.
SWEEPS = {"translate": [0.0, 2.0, 14.0], "scale": [1.0, 1.1, 1.6], "rotate": [0.0, 4.0, 60.0]}


@functools.lru_cache(maxsize=None)
def params():
    # Committed to the device as checkpoints.load_run's are: the CLI tests reuse compilations.
    return jax.device_put(random_params(SMALL), jax.devices()[0])


@functools.lru_cache(maxsize=None)
def smooth_images(n=2):
    """Blurry random images (N, 64, 64, 3): features change gradually under warps."""
    rng = np.random.default_rng(0)
    coarse = rng.normal(0, 0.3, (n, 8, 8, 3)).astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(c[..., k]).resize((64, 64), Image.BICUBIC))
                     for c in coarse for k in range(3)]).reshape(n, 3, 64, 64).transpose(0, 2, 3, 1)


@functools.lru_cache(maxsize=None)
def sweeps(n=2):
    """All three sweeps of the first n images (one compiled loop)."""
    return invariance.sweep(SMALL, params(), smooth_images()[:n], SWEEPS)


def test_identity_warp_is_exact_and_warps_move_pixels_the_documented_way():
    x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
    for kind, identity in (("translate", 0.0), ("scale", 1.0), ("rotate", 0.0)):
        out = np.asarray(invariance.transform(x, kind, [identity]))[0]
        np.testing.assert_array_equal(out, x)
    down = np.asarray(invariance.transform(x, "translate", [5.0]))[0]
    np.testing.assert_array_equal(down[:, 5:], x[:, :-5])  # positive = down
    np.testing.assert_array_equal(down[:, :5], 0)  # from outside the image: 0 (the mean)
    turned = np.asarray(invariance.transform(x, "rotate", [90.0]))[0]
    np.testing.assert_allclose(turned, np.rot90(x, axes=(1, 2)), atol=1e-4)  # counter-clockwise
    zoomed = np.asarray(invariance.transform(x, "scale", [2.0]))[0]
    # x2 about the centre 31.5: output pixel (31, 31) samples input (31.25, 31.25).
    np.testing.assert_allclose(zoomed[:, 31, 31], x[:, 31, 31] * 0.5625 + x[:, 32, 32] * 0.0625
                               + (x[:, 31, 32] + x[:, 32, 31]) * 0.1875, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown transformation 'shear'; expected one of "
                                         "translate, scale, rotate"):
        invariance.transform(x, "shear", [1.0])
    with pytest.raises(ValueError, match="scale ratios must be positive, got -1"):
        invariance.transform(x, "scale", [1.0, -1.0])


@pytest.mark.parametrize("kind", invariance.TRANSFORMS)
def test_identity_gives_distance_zero_and_distances_grow(kind):
    result = sweeps()[kind]
    for layer in ("layer1", "layer7"):
        d = getattr(result, layer)
        assert d.shape == (2, 3)
        np.testing.assert_array_equal(d[:, 0], 0.0)  # exactly
        assert np.all(0 < d[:, 1]) and np.all(d[:, 1] < d[:, 2]), (layer, d)
    # At the identity the probabilities are the originals'.
    np.testing.assert_array_equal(result.probs[:, 0], result.reference_probs)
    np.testing.assert_allclose(result.probs.sum(-1), 1, rtol=1e-5)


def test_sweep_matches_a_direct_forward_and_batched_equals_per_item():
    amounts = np.float32(SWEEPS["rotate"])
    images = smooth_images()
    batched = sweeps()["rotate"]
    for i in range(2):
        # Image i with itself as its batch-mate (the compiled shape of sweeps()).
        alone = invariance.sweep(SMALL, params(), images[[i, i]], SWEEPS)["rotate"]
        for key in ("layer1", "layer7", "probs"):
            np.testing.assert_allclose(getattr(alone, key)[0], getattr(batched, key)[i], rtol=1e-4, atol=1e-5)
    # Reference: warp, forward and distances by hand, at the large rotation.
    warped = np.asarray(invariance.transform(images, "rotate", amounts[2:]))[0]
    _, aux0 = model.forward_jit(SMALL, params(), images)
    logits, aux1 = model.forward_jit(SMALL, params(), warped)
    f = lambda aux, layer: np.asarray(aux["activations"][layer]).reshape(2, -1)
    np.testing.assert_allclose(batched.layer1[:, 2],
                               np.linalg.norm(f(aux0, "pool1") - f(aux1, "pool1"), axis=1),
                               rtol=1e-4)
    np.testing.assert_allclose(batched.layer7[:, 2],
                               np.linalg.norm(f(aux0, "fc7") - f(aux1, "fc7"), axis=1), rtol=1e-4)
    np.testing.assert_allclose(batched.probs[:, 2], jax.nn.softmax(logits), rtol=1e-4, atol=1e-6)


def test_true_class_probability_uses_labels_or_the_predicted_class():
    result = invariance.Sweep(None, None, np.array([[[0.1, 0.9], [0.6, 0.4]], [[0.3, 0.7], [0.8, 0.2]]]),
                              np.array([[0.2, 0.8], [0.9, 0.1]]))
    np.testing.assert_array_equal(invariance.true_class_probability(result, [0, 1]),
                                  [[0.1, 0.6], [0.7, 0.2]])
    np.testing.assert_array_equal(invariance.true_class_probability(result, None),
                                  [[0.9, 0.4], [0.3, 0.8]])


def test_default_amounts_follow_the_paper():
    np.testing.assert_allclose(invariance.default_amounts("translate", 224), np.arange(-60, 61, 10))
    np.testing.assert_allclose(invariance.default_amounts("scale", 64), np.arange(10, 19) / 10,
                               rtol=1e-6)
    np.testing.assert_array_equal(invariance.default_amounts("rotate", 64), np.arange(0, 360, 10))
    np.testing.assert_array_equal(invariance.example_amounts(np.arange(9.0)), [0, 3, 5, 8])


def test_figure_has_three_rows_of_four_panels():
    curves, examples = {}, {}
    for kind in invariance.TRANSFORMS:
        amounts = np.float32(SWEEPS[kind])
        curves[kind] = {"amounts": amounts, "layer1": np.outer([1, 2], amounts),
                        "layer7": np.outer([2, 1], amounts), "prob": np.full((2, 3), 0.5)}
        examples[kind] = (amounts, np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3),
                                                                      np.uint8))
    fig = plot_invariance(curves, examples, ["a.jpg", "b.jpg"], title="t")
    assert len(fig.axes) == 12
    assert [ax.get_ylabel() for ax in fig.axes[1:4]] == [
        "distance, layer 1 (pool1)", "distance, layer 7 (fc7)", "P(true class)"]
    assert fig.axes[9].get_xlabel() == "rotation (degrees)"
    assert len(fig.axes[1].get_lines()) == 2 and len(fig.legends) == 1  # the CLI test saves one


# ---- command line, on a tiny real run folder (test_topk.write_tiny_run) ----------------

from helpers import write_tiny_run  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("invariance"))


def test_cli_writes_the_figure_and_arrays(tiny_run, monkeypatch, capsys, run_cli):
    code, out, err = run_cli([
        "invariance", str(tiny_run), "--limit", "2", "--translations", "0", "2", "14",
        "--scales", "1", "1.1", "1.6", "--rotations", "0", "4", "60"])
    assert code == 0, err
    figures = tiny_run / "figures"
    assert out.split() == [str(figures / "invariance.png"), str(figures / "invariance.npz")]
    arrays = artifacts.load_npz(figures / "invariance.npz")
    assert arrays["names"].tolist() == ["alpha/alpha0.png", "beta/beta0.png"]
    assert arrays["labels"].tolist() == [0, 1]
    for kind in invariance.TRANSFORMS:
        assert arrays[f"{kind}/layer1_distance"].shape == (2, 3)
        np.testing.assert_array_equal(arrays[f"{kind}/layer7_distance"][:, 0], 0)
        assert arrays[f"{kind}/examples"].dtype == np.uint8
    prob = arrays["rotate/true_class_probability"]
    assert prob.shape == (2, 3) and 0 < prob.min() and prob.max() < 1
    png = np.asarray(Image.open(figures / "invariance.png").convert("L"))
    assert png.shape[1] > 1500 and png.std() > 20


@pytest.mark.parametrize("argv, message", [
    (["--images", "/nonexistent/cat.jpg"], "image /nonexistent/cat.jpg does not exist"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tiny_run, monkeypatch, capsys, tmp_path,
                                                      argv, message, run_cli):
    code, out, err = run_cli([
        "invariance", str(tiny_run), "--out", str(tmp_path / "o")] + argv)
    assert (code, out, err) == (2, "", f"visualize.py invariance: error: {message}\n")
    assert not (tmp_path / "o").exists()
