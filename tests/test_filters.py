"""Filters and second-layer features (paper Fig. 6): patches, grid layout, comparisons."""

import functools

import jax
import numpy as np
import pytest
from PIL import Image

from zfjax import artifacts
from zfjax.analyses import filters
from zfjax.nets import model, network
from zfjax.figures import filters as filters_figure
from zfjax.nets.receptive_field import receptive_field_size
from helpers import random_params

# The config of test_topk.write_tiny_run, so the CLI tests reuse these compilations.
SMALL = network.Network(num_classes=2, image_size=64, width=0.25, init_std=None)


@functools.lru_cache(maxsize=None)
def params():
    # Committed to the device as checkpoints.load_run's are: the CLI tests reuse compilations.
    return jax.device_put(random_params(SMALL), jax.devices()[0])


@functools.lru_cache(maxsize=None)
def images(n=2):  # batches of 2, as the other analyses' tests: forward_jit is compiled once
    rng = np.random.default_rng(0)
    display = rng.integers(0, 256, (n, 64, 64, 3), np.uint8)
    return (display / 255.0 - 0.5).astype(np.float32), display


def test_grid_puts_patch_k_at_row_k_div_columns_and_column_k_mod_columns():
    patches = np.arange(7)[:, None, None, None] * np.ones((7, 3, 2, 1))  # patch k is all k
    out = filters_figure.grid(patches, columns=3, pad=1, fill=-1)
    assert out.shape == (3 * 4 + 1, 3 * 3 + 1, 1)
    for k in range(7):
        top, left = filters_figure.cell_origin(k, 3, 3, 2, 1)
        assert (top, left) == (1 + (k // 3) * 4, 1 + (k % 3) * 3)
        np.testing.assert_array_equal(out[top:top + 3, left:left + 2], k)
    assert (out == -1).sum() == out.size - 7 * 6  # gaps and the two unused cells
    np.testing.assert_array_equal(out[9:12, 4:6], -1)  # cell 7 (row 2, column 1) is empty
    assert filters_figure.grid(patches).shape[1] == 3 * 3 + 1  # default columns: ceil(sqrt(7))


def test_a_planted_filter_shows_in_its_cell_contrast_normalised():
    kernel = np.asarray(params()["conv1"]["kernel"]).copy()  # (7, 7, 3, 24)
    kernel[..., 5] = 0
    kernel[:, 3, 0, 5] = 0.01  # filter 5: a faint red vertical bar
    kernel[..., 6] = 0.2  # filter 6: constant
    patches = np.asarray(filters.filter_patches(kernel))
    assert patches.shape == (24, 7, 7, 3) and patches.min() >= 0 and patches.max() <= 1
    bar = np.zeros((7, 7, 3))
    bar[:, 3, 0] = 1  # stretched min..max however weak it was
    np.testing.assert_array_equal(patches[5], bar)
    np.testing.assert_array_equal(patches[6], 0.5)
    picture = filters_figure.grid(patches, columns=6)
    top, left = filters_figure.cell_origin(5, 6, 7, 7)
    np.testing.assert_array_equal(picture[top:top + 7, left:left + 7], bar)
    np.testing.assert_allclose(filters.filter_rms(kernel)[5], np.sqrt(7 * 0.01 ** 2 / 147),
                               rtol=1e-6)
    np.testing.assert_allclose(filters.filter_rms(kernel)[6], 0.2, rtol=1e-6)


def test_comparing_runs_with_other_conv1_shapes_is_a_clear_error():
    a = np.zeros((7, 7, 3, 24))
    filters.check_comparable(a, np.ones((7, 7, 3, 24)), "runA", "runB")
    with pytest.raises(ValueError, match=r"^cannot compare filters: runA has conv1 filters "
                                         r"24 x \(7x7x3\) but runB has 48 x \(7x7x3\); compare "
                                         r"runs of the same architecture"):
        filters.check_comparable(a, np.zeros((7, 7, 3, 48)), "runA", "runB")


@functools.lru_cache(maxsize=None)
def strongest_features():
    inputs, display = images()
    maps = filters.strongest_maps(SMALL, params(), inputs, 2)
    return maps, filters.layer2_features(SMALL, params(), inputs, display, maps)


def test_strongest_maps_and_their_projections():
    inputs, _ = images()
    maps, features = strongest_features()
    _, aux = model.forward_jit(SMALL, params(), inputs)
    peak = np.asarray(aux["activations"]["conv2"]).max(axis=(0, 1, 2))
    np.testing.assert_array_equal(maps, np.argsort(-peak, kind="stable")[:2])
    np.testing.assert_array_equal(features.channels, maps)
    np.testing.assert_allclose(features.values, peak[maps], rtol=1e-5)
    size = receptive_field_size(SMALL, "conv2")
    assert features.projections.shape == (2, size, size, 3)
    assert features.patches.shape == (2, size, size, 3)
    assert np.abs(features.projections).max() > 0


def test_figure_side_by_side(tmp_path):
    _, features = strongest_features()
    panels = [{"name": name, "kernel": np.asarray(random_params(SMALL, seed)["conv1"]["kernel"]),
               "radius": radius, "features": features, "images": 2}
              for name, seed, radius in [("with", 0, 0.1), ("without", 1, None)]]
    fig = filters_figure.plot_filters(panels, title="t")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("with\nconv1: 24 filters, 7x7")
    assert any(t.startswith("without\nconv1") for t in titles)
    assert sum("conv2: strongest activation" in t for t in titles) == 2
    png = artifacts.save_png(fig, tmp_path / "filters.png")
    assert np.asarray(Image.open(png)).std() > 10


# ---- command line, on tiny real run folders (test_topk.write_tiny_run) -----------------

from helpers import write_tiny_run  # noqa: E402


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two runs of one architecture (A, B) and one twice as wide."""
    wide = network.Network(num_classes=2, image_size=64, width=0.5, init_std=None)
    return (write_tiny_run(tmp_path_factory.mktemp("filters_a")),
            write_tiny_run(tmp_path_factory.mktemp("filters_b")),
            write_tiny_run(tmp_path_factory.mktemp("filters_wide"), config=wide))


def test_cli_compares_two_runs_side_by_side(tiny_runs, monkeypatch, capsys, run_cli):
    a, b, _ = tiny_runs
    code, out, err = run_cli([
        "filters", str(a), "--compare", str(b), "--maps", "2", "--limit", "2"])
    assert code == 0, err
    figures = a / "figures"
    assert out.split() == [str(figures / "filters_compare.png"), str(figures / "filters_compare.npz")]
    arrays = artifacts.load_npz(figures / "filters_compare.npz")
    for run in ("run0", "run1"):
        assert arrays[f"{run}/conv1_kernel"].shape == (7, 7, 3, 24)
        assert arrays[f"{run}/conv2/projections"].shape == (2, 27, 27, 3)
    assert arrays["run1/target"] == str(b)
    png = np.asarray(Image.open(figures / "filters_compare.png").convert("L"))
    assert png.shape[1] > 1000 and png.std() > 20
    # Filters only: no images needed.
    code, out, err = run_cli(["filters", str(a), "--maps", "0"])
    assert code == 0 and out.split()[0] == str(figures / "filters.png")


def test_cli_bad_input_is_one_line_and_writes_nothing(tiny_runs, monkeypatch, capsys, tmp_path, run_cli):
    a, _, wide = tiny_runs
    for argv, message in [
        (["--compare", str(wide)], f"cannot compare filters: {a} has conv1 filters 24 x (7x7x3) "
                                   f"but {wide} has 48 x (7x7x3); compare runs of the same "
                                   f"architecture (width, image size)"),
        (["--compare", str(tmp_path / "nothing")], f"{tmp_path / 'nothing' / 'config.json'} not "
                                                   f"found; {tmp_path / 'nothing'} is not a run "
                                                   f"folder made by train.py"),
        (["--images", "/nonexistent/cat.jpg"], "image /nonexistent/cat.jpg does not exist"),
    ]:
        code, out, err = run_cli([
            "filters", str(a), "--out", str(tmp_path / "o")] + argv)
        assert (code, out, err) == (2, "", f"visualize.py filters: error: {message}\n")
    assert not (tmp_path / "o").exists()
