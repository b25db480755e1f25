"""Keras VGG16 weights take BGR inputs (caffe preprocessing); every figure shows their
projections in RGB: a pure red image stays red in topk, occlusion, reconstructions and
filters (whose conv1 filters are shown in RGB too)."""

import numpy as np
import pytest
from PIL import Image

from zfjax import render
from zfjax.analyses import filters
from zfjax.nets import network, weights
from helpers import random_params, write_keras3


@pytest.fixture(scope="module")
def red_on_bgr_weights(tmp_path_factory):
    """A small VGG16 Keras file whose conv1_1 reads only input channel 2 (red, in BGR
    order), with non-negative weights, and a pure red image."""
    tmp = tmp_path_factory.mktemp("bgr")
    config = network.Network(arch="vgg16", num_classes=3, width=0.0625, init_std=None)
    params = random_params(config)
    kernel = np.abs(params["conv1_1"]["kernel"])
    kernel[:, :, :2] = 0
    params["conv1_1"]["kernel"] = kernel
    names = weights.keras_names(config)
    path = write_keras3(tmp, {names[layer]: [p["kernel"], p["bias"]] for layer, p in params.items()})
    red = np.zeros((256, 256, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp / "red.png")
    return tmp, ["--arch", "vgg16", "--weights", str(path), "--images", str(tmp / "red.png")]


def assert_red(projections):
    """Projections (..., H, W, 3) carry signal in red only, and show as red on gray."""
    projections = np.asarray(projections)
    assert projections[..., 0].max() > 0 and not projections[..., 1:].any()
    shown = render.to_display(projections)
    assert shown[..., 0].max() > 128 and (shown[..., 0] >= 128).all()
    assert (shown[..., 1:] == 128).all()


@pytest.mark.parametrize("argv, key", [
    (["topk", "--layers", "conv1_1", "--channels", "0", "3", "--top", "1"], "conv1_1/projections"),
    (["occlusion", "--layer", "conv1_1", "--size", "112", "--stride", "112"], "projections"),
    (["reconstructions", "--layers", "conv1_1"], "strongest"),
    (["filters", "--maps", "2"], "run0/conv2/projections"),  # VGG16's second conv: conv1_2
])
def test_projections_of_bgr_weights_are_shown_in_rgb(red_on_bgr_weights, run_cli, monkeypatch,
                                                     argv, key):
    from zfjax.commands import filters as filters_command

    panels = []  # what the filters figure is given
    plot = filters_command.plot_filters
    monkeypatch.setattr(filters_command, "plot_filters",
                        lambda given, **kw: panels.extend(given) or plot(given, **kw))
    tmp, options = red_on_bgr_weights
    out = tmp / argv[0]
    code, _, err = run_cli(argv + options + ["--out", str(out)])
    assert code == 0, err
    arrays = np.load(out / f"{argv[0]}.npz")
    assert_red(arrays[key])
    if argv[0] == "topk":  # the image patches beside them: red where inside the image
        patches = arrays["conv1_1/patches"].reshape(-1, 3)
        assert {tuple(p) for p in patches} <= {(255, 0, 0), (0, 0, 0)}
    if argv[0] == "reconstructions":
        assert_red(arrays["whole"])
    if argv[0] == "filters":  # conv1_1 reads only red: its filters are drawn red
        patches = np.asarray(filters.filter_patches(panels[0]["kernel"]))
        assert patches[..., 0].max() == 1 and not patches[..., 1:].any()
