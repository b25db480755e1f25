"""Top-9 per feature map (paper Fig. 2): streamed mining (strongest.mine), projections,
figure, CLI."""

import functools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zfjax import render
from zfjax.analyses import topk
from zfjax.nets import deconv, model, network, strongest
from zfjax.figures import topk as topk_figure
from zfjax.nets.receptive_field import receptive_field, receptive_field_size
from helpers import random_params

SMALL = network.Network(num_classes=10, image_size=64, width=0.25, init_std=None)
IMAGENETTE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette"
N = 23  # streamed in batches of 5: four full batches and a padded one of 3


@functools.lru_cache(maxsize=None)
def params():
    return random_params(SMALL, bias_std=0.01)


@functools.lru_cache(maxsize=None)
def images():
    """N inputs; image 12 repeats image 4, so every map ties between them."""
    x = np.random.default_rng(0).normal(0, 0.3, (N, 64, 64, 3)).astype(np.float32)
    x[12] = x[4]
    return x


@functools.lru_cache(maxsize=None)
def activations():
    _, aux = model.forward_jit(SMALL, params(), images())
    return {layer: np.asarray(aux["activations"][layer]) for layer in network.conv_layers(SMALL)}


@functools.lru_cache(maxsize=None)
def streamed():
    x = images()
    return strongest.mine(SMALL, params(), (x[i:i + 5] for i in range(0, N, 5)))


def test_streamed_topk_equals_topk_over_the_whole_set_at_once():
    """Batches of 5 merged on device == one stable sort of every image's map maxima."""
    for layer, acts in activations().items():
        top, (n, h, w, c) = streamed()[layer], acts.shape
        flat = acts.reshape(n, h * w, c)
        per_image, where = flat.max(axis=1), flat.argmax(axis=1)  # (N, C) each
        for ch in range(c):
            order = np.lexsort((np.arange(n), -per_image[:, ch]))[:strongest.TOP]  # ties: earlier image
            np.testing.assert_array_equal(top.image[ch], order, err_msg=f"{layer} #{ch}")
            np.testing.assert_array_equal(top.value[ch], per_image[order, ch])
            np.testing.assert_array_equal(top.y[ch] * w + top.x[ch], where[order, ch])
            assert len(set(top.image[ch])) == strongest.TOP  # one activation per image
        # Image 12 duplicates image 4: where 4 is kept, 12 ranks right after it.
        both = [(list(i).index(4), list(i).index(12)) for i in top.image if 4 in i and 12 in i]
        assert both and all(b == a + 1 for a, b in both)


def test_strongest_mined_unit_equals_brute_force_search():
    for layer, acts in activations().items():
        top = streamed()[layer]
        for ch in range(acts.shape[-1]):
            flat = acts[..., ch].reshape(-1)  # (image, y, x) row-major: ties -> first
            image, y, x = np.unravel_index(np.argmax(flat), acts.shape[:3])
            assert (top.image[ch, 0], top.y[ch, 0], top.x[ch, 0]) == (image, y, x), (layer, ch)
            assert top.value[ch, 0] == flat.max()


def test_fewer_images_than_k_leave_unfilled_slots():
    top = strongest.mine(SMALL, params(), [images()[:5]])["conv2"]  # 5 images, 9 slots
    assert (np.sort(top.image[:, :5], axis=1) == np.arange(5)).all()
    assert np.isfinite(top.value[:, :5]).all()
    assert (top.image[:, 5:] == -1).all() and np.isneginf(top.value[:, 5:]).all()


def test_projections_are_cropped_to_the_receptive_field_and_patches_match():
    layer, channels = "conv2", np.array([3, 40])
    top = streamed()[layer]
    display = np.random.default_rng(1).integers(0, 256, (N, 64, 64, 3), np.uint8)
    drawn = strongest.TopK(*(a[channels] for a in top))
    found = deconv.project_strongest(SMALL, params(), layer, drawn, channels[:, None], images(),
                                     display=display)
    projections, patches = found.projections, found.patches
    size = receptive_field_size(SMALL, layer)
    assert projections.shape == patches.shape == (2, strongest.TOP, size, size, 3)
    _, aux = model.forward_jit(SMALL, params(), images())
    edge = 0
    for i, c in enumerate(channels):
        for j in range(strongest.TOP):
            image, y, x = top.image[c, j], top.y[c, j], top.x[c, j]
            full = np.asarray(deconv.project_units(SMALL, params(), aux, layer,
                                                   deconv.Units([image], [c], [y], [x])))[0]
            t, l, b, r = receptive_field(SMALL, layer, y, x)  # clipped to the image
            ct, cl, _, _ = receptive_field(SMALL, layer, y, x, clip=False)
            crop = projections[i, j, t - ct:b - ct, l - cl:r - cl]
            np.testing.assert_allclose(crop, full[t:b, l:r], rtol=1e-5, atol=1e-7)
            # Nothing of the projection lies outside the crop; outside the image is zero pad.
            assert np.abs(full).sum() == pytest.approx(np.abs(projections[i, j]).sum(), rel=1e-5)
            np.testing.assert_array_equal(patches[i, j, t - ct:b - ct, l - cl:r - cl],
                                          display[image, t:b, l:r])
            assert patches[i, j].astype(int).sum() == display[image, t:b, l:r].astype(int).sum()
            edge += (b - t) < size
    assert edge  # some winners sit at the image edge, where the crop is padded


def test_choose_maps_and_channel_checks():
    top = streamed()["conv3"]
    one, two = topk.choose_maps(top, 9, 0), topk.choose_maps(top, 9, 0)
    np.testing.assert_array_equal(one, two)
    assert len(set(one)) == 9 and list(one) == sorted(one) and (top.value[one, 0] > 0).all()
    assert not np.array_equal(one, topk.choose_maps(top, 9, 1))
    assert len(topk.choose_maps(top, 1000, 0)) == 96
    with pytest.raises(ValueError, match=r"^channel 96 is out of range for conv3: this run's "
                                         r"conv3 has 96 feature maps, 0..95$"):
        topk.check_channels(SMALL, "conv3", [0, 96])
    with pytest.raises(ValueError, match=r"^unknown layer 'conv6'; expected one of conv1, pool1"):
        network.check_layers(SMALL, ["conv1", "conv6"])


def test_figure_has_one_panel_per_map_with_its_label(tmp_path):
    m, k, r = 4, 9, 11
    rng = np.random.default_rng(0)
    projections = rng.normal(size=(m, k, r, r, 3)).astype(np.float32)
    patches = rng.integers(0, 256, (m, k, r, r, 3), np.uint8)
    values = np.sort(rng.random((m, k)))[:, ::-1]
    fig = topk_figure.plot_topk("pool1", [2, 5, 7, 11], values, projections, patches, title="T")
    assert [ax.get_title().split("   ")[0] for ax in fig.axes] == [
        f"pool1 map #{c}" for c in (2, 5, 7, 11)]
    # Each panel: a 3x3 grid of projections, a spacer, a 3x3 grid of patches.
    # Cells are enlarged x5 to 55 px (nearest neighbour: 11 px -> 55 px, blocks of 5x5).
    shown = fig.axes[1].get_images()[0].get_array()
    fitted_projections, fitted_patches = render.fit_pairs(projections[1], patches[1], 55)
    grid = topk_figure.mosaic(fitted_patches, 3, 2)
    np.testing.assert_array_equal(shown[:, -grid.shape[1]:], grid)
    np.testing.assert_array_equal(shown[:, :grid.shape[1]],
                                  topk_figure.mosaic(fitted_projections, 3, 2))
    np.testing.assert_array_equal(fitted_patches[0],
                                  np.repeat(np.repeat(patches[1, 0], 5, 0), 5, 1))


# ---- command line, on a tiny real run folder -------------------------------------------

from helpers import TINY, write_tiny_run  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("topk"))


def test_cli_writes_a_figure_per_layer_and_the_arrays(tiny_run, monkeypatch, capsys, run_cli):
    code, out, err = run_cli([
        "topk", str(tiny_run), "--layers", "pool2", "conv1", "--channels", "5", "1", "--top", "4",
        "--batch-size", "3"])
    assert code == 0, err
    figures = tiny_run / "figures"
    assert out.split() == [str(figures / n) for n in ("topk.npz", "topk_pool2.png", "topk_conv1.png")]
    arrays = np.load(figures / "topk.npz", allow_pickle=False)
    # The run's validation split, in folder order, with its labels.
    assert arrays["names"].tolist() == [f"{c}/{c}{i}.png" for c in ("alpha", "beta") for i in range(4)]
    assert arrays["labels"].tolist() == [0] * 4 + [1] * 4
    assert arrays["conv1/value"].shape == (24, 4) and arrays["conv1/channels"].tolist() == [5, 1]
    size = receptive_field_size(TINY, "pool2")
    assert arrays["pool2/projections"].shape == (2, 4, size, size, 3)
    assert arrays["pool2/patches"].dtype == np.uint8
    png = np.asarray(Image.open(figures / "topk_conv1.png").convert("L"))
    assert png.shape[1] > 800 and png.std() > 20


def test_cli_titles_name_the_data_folder_not_its_path(tiny_run, monkeypatch, run_cli, tmp_path):
    import matplotlib.pyplot as plt

    from zfjax.commands import topk as command

    titles = []

    def record(*args, title, **kwargs):
        titles.append(title)
        return plt.figure()

    monkeypatch.setattr(command, "plot_topk", record)
    code, _, err = run_cli(["topk", str(tiny_run), "--layers", "conv1", "--count", "2",
                            "--out", str(tmp_path)])
    assert code == 0, err
    assert "images [val]" in titles[0] and str(tiny_run.parent) not in titles[0]


@pytest.mark.parametrize("argv, message", [
    (["--layers", "conv9"], "unknown layer 'conv9'; expected one of conv1, pool1, conv2, pool2, conv3, conv4, "
     "conv5, pool5"),
    (["--layers", "conv1", "--channels", "3", "24"],
     "channel 24 is out of range for conv1: this run's conv1 has 24 feature maps, 0..23"),
    (["--images", "/nonexistent/cat.jpg"], "image /nonexistent/cat.jpg does not exist"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tiny_run, monkeypatch, capsys, tmp_path,
                                                      argv, message, run_cli):
    code, out, err = run_cli(["topk", str(tiny_run), "--out", str(tmp_path / "o")]
                             + argv)
    assert code == 2 and out == ""
    assert err == f"visualize.py topk: error: {message}\n"
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_checkpoint_of_another_shape(tmp_path, monkeypatch, capsys, run_cli):
    run = write_tiny_run(tmp_path, checkpoint_config=network.Network(
        num_classes=2, image_size=64, width=0.5, init_std=None))
    code, out, err = run_cli(["topk", str(run)])
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "checkpoint has conv1 kernel (7,7,3,48) but config width 0.25 expects (7,7,3,24)" in err
    assert not (run / "figures").exists()
    code, _, err = run_cli(["topk", str(tmp_path / "nothing")])
    assert code == 2 and len(err.splitlines()) == 1 and "is not a run folder made by train.py" in err
