"""Occlusion sensitivity (paper Fig. 7): batched maps, receptive fields, options, figure."""

import functools

import jax
import numpy as np
import pytest
from PIL import Image

from zfjax.analyses import occlusion
from zfjax.inputs import data
from zfjax.nets import model, network, preprocessing
from zfjax.commands.occlusion import class_index
from zfjax.nets.receptive_field import receptive_field
from helpers import random_params

# At 128 px an 8 px square changes only part of the maps up to conv3, so the
# incremental windows are exercised at strided, unpadded and padded convs and pools.
SMALL = network.Network(num_classes=10, image_size=128, width=0.25, init_std=None)
LAYER, SIZE, STRIDE = "conv2", 8, 15  # conv2 sees 27 px; 9 x 9 positions
MEAN_CROP = np.random.default_rng(2).uniform(60, 200, (128, 128, 3)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def params():
    return random_params(SMALL, bias_std=0.01)


@functools.lru_cache(maxsize=None)
def image():
    return np.random.default_rng(0).normal(0, 0.3, (128, 128, 3)).astype(np.float32)


FILL = occlusion.fill_values("white", preprocessing.run_mean(MEAN_CROP), 128)  # white minus the mean


@functools.lru_cache(maxsize=None)
def maps(label=3, incremental=True):
    out = occlusion.occlusion_maps(SMALL, params(), image(), np.int32(label), FILL,
                                   layer=LAYER, size=SIZE, stride=STRIDE, batch_size=9,
                                   incremental=incremental)
    return jax.device_get(out)


def readout_one(x, channel, y, xx, label):
    """Reference: one occluded image through the plain forward pass."""
    logits, aux = model.forward_jit(SMALL, params(), x[None])
    acts = np.asarray(aux["activations"][LAYER])[0, ..., channel]
    probs = np.asarray(jax.nn.softmax(logits[0]))
    return {"map_total": acts.sum(), "unit": acts[y, xx], "p_true": probs[label],
            "top_class": probs.argmax(), "top_prob": probs.max()}


@pytest.mark.parametrize("incremental", [True, False])
def test_batched_maps_equal_one_position_at_a_time(incremental):
    """Both batched forms (only the changed windows / whole forwards) == a plain loop."""
    res = maps(incremental=incremental)
    steps = occlusion.positions(128, SIZE, STRIDE)
    np.testing.assert_array_equal(steps, np.arange(0, 121, 15))
    # Changed windows of conv1, pool1, conv2, pool2, conv3: parts of 62, 31, 14, 7, 7.
    assert occlusion._window_sides(SMALL, SIZE)[:5] == [7, 5, 5, 4, 6]
    # The followed map and unit: the strongest on the unoccluded image.
    _, aux = model.forward_jit(SMALL, params(), image()[None])
    acts = np.asarray(aux["activations"][LAYER])[0]
    channel = acts.max(axis=(0, 1)).argmax()
    y, x = np.unravel_index(acts[..., channel].argmax(), acts.shape[:2])
    assert (res.channel, res.y, res.x, res.label) == (channel, y, x, 3)
    for i, top in enumerate(steps):
        for j, left in enumerate(steps):
            occluded = image().copy()
            occluded[top:top + SIZE, left:left + SIZE] = FILL[top:top + SIZE, left:left + SIZE]
            want = readout_one(occluded, channel, y, x, 3)
            for key, value in want.items():
                np.testing.assert_allclose(getattr(res, key)[i, j], value, rtol=2e-5, atol=1e-6,
                                           err_msg=f"{key} at ({top}, {left})")
    clean = readout_one(image(), channel, y, x, 3)
    for key, value in clean.items():
        np.testing.assert_allclose(getattr(res.clean, key), value, rtol=2e-5, atol=1e-6)
    assert res.map_total.std() > 0 and res.p_true.std() > 0


def test_occluding_outside_the_receptive_field_leaves_the_unit_unchanged():
    res = maps()
    top, left, bottom, right = receptive_field(SMALL, LAYER, int(res.y), int(res.x))
    steps = occlusion.positions(128, SIZE, STRIDE)
    outside = ((steps[:, None] + SIZE <= top) | (steps[:, None] >= bottom)
               | (steps[None, :] + SIZE <= left) | (steps[None, :] >= right))
    assert 0 < outside.sum() < outside.size
    np.testing.assert_allclose(res.unit[outside], res.clean.unit, rtol=1e-6)
    assert np.abs(res.unit[~outside] - res.clean.unit).max() > 1e-3


def test_negative_label_follows_the_predicted_class():
    res = maps(label=-1)
    assert res.label == res.clean.top_class
    assert res.clean.p_true == res.clean.top_prob
    np.testing.assert_array_equal(res.unit, maps().unit)  # same run otherwise


def test_positions_fill_and_label_options():
    assert len(occlusion.positions(224, 32, 8)) ** 2 == 625
    with pytest.raises(ValueError, match=r"^occluder size must be 1..64 and stride >= 1; got size 65"):
        occlusion.positions(64, 65, 8)
    gray = occlusion.fill_values("gray", preprocessing.run_mean(MEAN_CROP), 128)
    assert gray.shape == (128, 128, 3) and not gray.any()
    np.testing.assert_allclose(occlusion.fill_values("black", preprocessing.run_mean(MEAN_CROP), 128), -MEAN_CROP / data.PIXEL_SCALE)
    np.testing.assert_allclose(occlusion.fill_values("100", preprocessing.run_mean(MEAN_CROP), 128), (100 - MEAN_CROP) / 255, rtol=1e-6)
    for bad in ("pink", "300"):
        with pytest.raises(ValueError, match=r"^--fill must be gray, black, white or a pixel value 0..255; got"):
            occlusion.fill_values(bad, preprocessing.run_mean(MEAN_CROP), 128)
    names = ["tench", "springer"]
    assert class_index("springer", names, 2) == 1
    assert class_index("0", names, 2) == 0
    with pytest.raises(ValueError, match=r"^--label 'cat' is not a class of this run; give a class "
                                         r"name or an index 0..1$"):
        class_index("cat", names, 2)
    with pytest.raises(ValueError, match="index 0..1"):
        class_index("2", names, 2)


def test_column_c_occluders_are_where_each_readout_drops_most():
    steps = np.array([0, 8, 16])
    res = occlusion.Readouts(*(np.ones((3, 3)) for _ in occlusion.Readouts._fields))
    res.map_total[2, 1] = 0
    res.p_true[0, 2] = 0
    res.unit[1, 0] = 0
    names, picks = occlusion.chosen_occluders(res, steps)
    assert names[0] == "unoccluded"
    np.testing.assert_array_equal(picks, [[-1, -1], [16, 8], [0, 16], [8, 0]])


# ---- command line, on a tiny real run folder (helpers shared with test_topk) ----------

from helpers import write_tiny_run  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("occlusion"))


def test_cli_maps_the_splits_images_or_the_named_ones(tiny_run, monkeypatch, capsys, run_cli):
    code, out, err = run_cli([
        "occlusion", str(tiny_run), "--limit", "2", "--size", "16", "--stride", "16"])
    assert code == 0, err
    figures = tiny_run / "figures"
    assert out.split() == [str(figures / "occlusion.npz"), str(figures / "occlusion.png")]
    arrays = np.load(figures / "occlusion.npz", allow_pickle=False)
    assert arrays["map_total"].shape == arrays["p_true"].shape == (2, 4, 4)
    assert arrays["label"].tolist() == [0, 1]  # one image of each class, with its label
    np.testing.assert_array_equal(arrays["positions"], [0, 16, 32, 48])
    assert arrays["projections"].shape == (2, 4, 64, 64, 3)
    assert (arrays["projection_occluders"][:, 0] == -1).all()
    assert Image.open(figures / "occlusion.png").size[0] > 1500
    image = tiny_run.parent / "images" / "val" / "beta" / "beta1.png"
    code, out, err = run_cli([
        "occlusion", str(tiny_run), "--images", str(image), "--label", "beta", "--size", "16",
        "--stride", "16", "--batch-size", "4", "--fill", "black", "--out", str(tiny_run / "named")])
    assert code == 0, err
    arrays = np.load(tiny_run / "named" / "occlusion.npz", allow_pickle=False)
    assert arrays["names"].tolist() == ["beta1.png"] and arrays["label"].tolist() == [1]


@pytest.mark.parametrize("argv, message", [
    (["--layer", "fc6"], "unknown layer 'fc6'; expected one of conv1, pool1, conv2, pool2, conv3, "
                         "conv4, conv5, pool5"),
    (["--fill", "pink"], "--fill must be gray, black, white or a pixel value 0..255; got 'pink'"),
    (["--label", "gamma"], "--label 'gamma' is not a class of this run; give a class name or an "
                           "index 0..1"),
    (["--size", "80"], "occluder size must be 1..64 and stride >= 1; got size 80, stride 2"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tiny_run, monkeypatch, capsys, tmp_path,
                                                      argv, message, run_cli):
    code, out, err = run_cli(["occlusion", str(tiny_run), "--out", str(tmp_path / "o")] + argv)
    assert (code, out) == (2, "")
    assert err == f"visualize.py occlusion: error: {message}\n"
    assert not (tmp_path / "o").exists()
