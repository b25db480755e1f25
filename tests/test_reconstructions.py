"""Reconstructions: a whole layer and its strongest activation, projected to pixels."""

import functools

import jax
import numpy as np
from PIL import Image

from zfjax import render
from zfjax.analyses import reconstructions
from zfjax.nets import deconv, model, network
from zfjax.figures.reconstructions import plot_reconstructions
from helpers import random_params

SMALL = network.Network(num_classes=10, image_size=64, width=0.25, init_std=None)
LAYERS = ("pool1", "conv3")  # pooled 15 x 15 x 24 and unpooled 3 x 3 x 96


@functools.lru_cache(maxsize=None)
def params():
    return random_params(SMALL, bias_std=0.01)


@functools.lru_cache(maxsize=None)
def image():
    return np.random.default_rng(0).normal(0, 0.3, (64, 64, 3)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def result():
    return jax.device_get(reconstructions.reconstruct(SMALL, params(), image(), layers=LAYERS))


def test_strongest_unit_is_the_layers_largest_activation_and_projects_alone():
    res = result()
    _, aux = model.forward_jit(SMALL, params(), image()[None])
    for k, layer in enumerate(LAYERS):
        acts = np.asarray(aux["activations"][layer])[0]
        y, x, c = np.unravel_index(acts.argmax(), acts.shape)
        np.testing.assert_array_equal(res.unit[k], [c, y, x], err_msg=layer)
        assert res.value[k] == acts.max()
        # B: the projection of that one unit (dense reverse pass as the reference).
        signal = deconv.unit_signal(aux, layer, c, y, x)
        want = np.asarray(deconv.project(SMALL, params(), aux, layer, signal))[0]
        np.testing.assert_allclose(res.strongest[k], want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
        # A: the whole layer, which differs from the single unit's projection.
        whole = np.asarray(deconv.project(SMALL, params(), aux, layer, aux["activations"][layer]))[0]
        np.testing.assert_allclose(res.whole[k], whole, rtol=1e-4, atol=1e-6 * np.abs(whole).max())
        assert np.abs(res.whole[k] - res.strongest[k]).max() > 1e-3 * np.abs(whole).max()
    assert res.whole.shape == res.strongest.shape == (2, 64, 64, 3)


def test_figure_has_rows_a_and_b_with_the_input_and_each_layer():
    res = result()
    display = np.zeros((1, 64, 64, 3), np.uint8)
    fig = plot_reconstructions(display, [res], LAYERS, ["dir/img.jpg"])
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 2 * (1 + len(LAYERS))
    assert titles[1:3] == ["pool1: all activations", "conv3: all activations"]
    c, y, x = res.unit[1]
    assert titles[5] == f"conv3 map #{c} at ({y}, {x})\nvalue {res.value[1]:.3g}"
    assert fig.axes[0].get_ylabel() == "A: whole layer"
    assert fig.axes[3].get_ylabel() == "B: strongest activation"
    np.testing.assert_array_equal(fig.axes[5].get_images()[0].get_array(),
                                  render.to_display(res.strongest[1]))


# ---- command line, on a tiny real run folder (helpers shared with test_topk) ----------

from helpers import write_tiny_run  # noqa: E402


def test_cli_writes_rows_a_and_b_and_refuses_unknown_layers(tmp_path, monkeypatch, capsys, run_cli):
    run = write_tiny_run(tmp_path)
    code, out, err = run_cli([
        "reconstructions", str(run), "--layers", "pool5", "pool1"])
    assert code == 0, err
    figures = run / "figures"
    assert out.split() == [str(figures / "reconstructions.npz"), str(figures / "reconstructions.png")]
    arrays = np.load(figures / "reconstructions.npz", allow_pickle=False)
    assert arrays["layers"].tolist() == ["pool1", "pool5"]  # bottom to top
    assert arrays["whole"].shape == arrays["strongest"].shape == (1, 2, 64, 64, 3)
    assert arrays["names"].tolist() == ["alpha/alpha0.png"]
    assert Image.open(figures / "reconstructions.png").size[0] > 500
    code, out, err = run_cli([
        "reconstructions", str(run), "--layers", "pool1", "fc7", "--out", str(tmp_path / "o")])
    assert (code, out) == (2, "")
    assert err == ("visualize.py reconstructions: error: unknown layer 'fc7'; expected one of "
                   "conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5\n")
    assert not (tmp_path / "o").exists()
