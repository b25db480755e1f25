"""Per-epoch snapshots (paper Fig. 4): running max, crops, files and the figure."""

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zfjax import render
from zfjax.analyses import evolution
from zfjax.inputs import data
from zfjax.nets import deconv, model, network, strongest
from zfjax.commands.evolution import plot_evolution
from zfjax.figures import evolution as evolution_figure
from zfjax.nets.receptive_field import receptive_field, receptive_field_size
from helpers import random_params

SMALL = network.Network(num_classes=10, image_size=64, width=0.25, init_std=None)
IMAGENETTE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette"
PROBE_COUNT = 40  # with batch_size 16: two full batches and a padded one of 8
# The snapshot tests follow maps in these layers only: each followed layer costs one compile
# of deconv.project_strongest (about 6 s CPU from conv3 up), and conv3/conv4 are conv5's kind.
FOLLOWED = ("conv1", "conv2", "conv5")


def random_image_set(n=60, classes=6, seed=0):
    size = data.stored_size(SMALL.image_size)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), np.uint8)
    labels = (np.arange(n) % classes).astype(np.int32)
    return data.ImageSet(images, labels, tuple(f"c{i}" for i in range(classes)), 0,
                         tuple(f"img{i}" for i in range(n)))


@functools.lru_cache(maxsize=None)
def probe_and_mean():
    images = random_image_set()
    mean = data.mean_image(images)
    probe = evolution.make_probe(images, mean, SMALL, count=PROBE_COUNT, maps_per_layer=4)
    return dataclasses.replace(probe, maps={layer: probe.maps[layer] for layer in FOLLOWED}), mean


@functools.lru_cache(maxsize=None)
def params(seed=0):
    return random_params(SMALL, seed=seed)  # init_params would compile a program per shape


@functools.lru_cache(maxsize=None)
def snapshot(seed=0):
    probe, _ = probe_and_mean()
    return evolution.take_snapshot(SMALL, params(seed), probe, batch_size=16)


def forward_in_batches(images, batch=20):
    """Activations of every image, in batches of 20."""
    out = {layer: [] for layer in network.conv_layers(SMALL)}
    for start in range(0, len(images), batch):
        chunk = np.resize(images[start:start + batch], (batch,) + images.shape[1:])
        _, aux = model.forward_jit(SMALL, params(), chunk)
        for layer in out:
            out[layer].append(np.asarray(aux["activations"][layer])[:len(images) - start])
    return {layer: np.concatenate(acts) for layer, acts in out.items()}


def rf_crop(image, layer, y, x):
    """Reference crop of an (H, W, C) array to a unit's RF, zero-padded where it leaves the image."""
    size = receptive_field_size(SMALL, layer)
    top, left, _, _ = receptive_field(SMALL, layer, y, x, clip=False)
    ctop, cleft, cbottom, cright = receptive_field(SMALL, layer, y, x)
    out = np.zeros((size, size, image.shape[-1]), image.dtype)
    out[ctop - top:cbottom - top, cleft - left:cright - left] = image[ctop:cbottom, cleft:cright]
    return out


def test_running_max_equals_brute_force_over_the_whole_probe():
    probe, _ = probe_and_mean()
    snap = snapshot()
    activations = forward_in_batches(probe.images)
    for layer in FOLLOWED:
        acts = activations[layer]  # (P, h, w, C)
        assert len(acts) == PROBE_COUNT
        np.testing.assert_array_equal(snap[f"{layer}/channels"], probe.maps[layer])
        for k, c in enumerate(probe.maps[layer]):
            image, y, x = np.unravel_index(np.argmax(acts[..., c]), acts.shape[:3])
            assert snap[f"{layer}/images"][k] == image, (layer, c)
            np.testing.assert_array_equal(snap[f"{layer}/positions"][k], [y, x])
            np.testing.assert_allclose(snap[f"{layer}/values"][k], acts[image, y, x, c], rtol=1e-5)
    assert snap["conv1/values"].min() > 0


def test_padding_of_the_last_batch_never_wins():
    # Images of -1 and positive conv1 filters with bias 1: every real conv1 unit is
    # relu(1 - sum|w|) = 0, while an all-zero padding image would give 1.
    probe, _ = probe_and_mean()
    p = dict(params())
    p["conv1"] = {"kernel": abs(p["conv1"]["kernel"]), "bias": p["conv1"]["bias"] + 1}
    n = 17  # batches of 16: the last holds one image and 15 of padding
    dark = evolution.Probe(-np.ones((n, 64, 64, 3), np.float32), probe.display[:n], probe.maps)
    best = strongest.strongest_over(SMALL, p, dark.images, dark.maps, batch_size=16)
    value, image, y, x = best["conv1"]
    np.testing.assert_array_equal(value, 0)
    np.testing.assert_array_equal(image, 0)


def test_projections_and_patches_are_the_units_crops():
    probe, _ = probe_and_mean()
    snap = snapshot()
    for layer in FOLLOWED:
        size = receptive_field_size(SMALL, layer)
        assert snap[f"{layer}/projections"].shape == (4, size, size, 3)
        assert snap[f"{layer}/projections"].dtype == np.float32
        assert snap[f"{layer}/patches"].shape == (4, size, size, 3)
        assert snap[f"{layer}/patches"].dtype == np.uint8
        # Project each unit alone on 4 copies of its image: the snapshot's shapes (4 units,
        # 4 images), so nothing new is compiled. deconv.project_strongest itself is checked
        # against the dense reverse pass in test_deconv.
        images, (ys, xs) = snap[f"{layer}/images"], snap[f"{layer}/positions"].T
        for k, c in enumerate(probe.maps[layer]):
            i, y, x = images[k], ys[k], xs[k]
            alone = (np.ones(4, np.float32), np.arange(4), np.full(4, y), np.full(4, x))
            want = deconv.project_strongest(SMALL, params(), layer, alone, c,
                                            np.repeat(probe.images[i:i + 1], 4, 0)).projections[0]
            np.testing.assert_allclose(snap[f"{layer}/projections"][k], want, rtol=1e-4,
                                       atol=1e-6 * np.abs(want).max())
            np.testing.assert_array_equal(snap[f"{layer}/patches"][k],
                                          rf_crop(probe.display[i], layer, y, x))
    # conv5's RF (139 px) is larger than the 64 px image: padded on every side.
    assert snap["conv5/patches"][:, 0].max() == 0
    assert np.abs(snap["conv2/projections"]).max() > 0


def test_snapshots_differ_between_params():
    a, b = snapshot(0), snapshot(1)
    assert not np.allclose(a["conv2/projections"], b["conv2/projections"])


def test_make_probe_is_deterministic_and_spread_over_classes():
    images = random_image_set()
    mean = data.mean_image(images)
    one = evolution.make_probe(images, mean, SMALL, count=30, maps_per_layer=5, seed=3)
    two = evolution.make_probe(images, mean, SMALL, count=30, maps_per_layer=5, seed=3)
    other = evolution.make_probe(images, mean, SMALL, count=30, maps_per_layer=5, seed=4)
    assert one.images.shape == (30, 64, 64, 3) and one.images.dtype == np.float32
    assert one.display.shape == (30, 64, 64, 3) and one.display.dtype == np.uint8
    np.testing.assert_array_equal(one.images, two.images)
    np.testing.assert_array_equal(one.display, two.display)
    # The inputs are the displayed crops, preprocessed with the run's mean.
    np.testing.assert_allclose(
        one.images, (one.display - data.centre_crop(mean, 64)) / data.PIXEL_SCALE, atol=1e-6)
    # 30 of 60 images over 6 classes: 5 per class (first five of each), no repeats.
    crops = data.centre_crop(images.images, 64)
    picked = [int(np.flatnonzero((crops == d).all(axis=(1, 2, 3)))[0]) for d in one.display]
    assert sorted(picked) == picked and len(set(picked)) == 30
    assert np.bincount(images.labels[picked]).tolist() == [5] * 6
    for layer in network.conv_layers(SMALL):
        maps = one.maps[layer]
        assert maps.dtype == np.int32 and maps.shape == (5,)
        assert len(set(maps)) == 5 and 0 <= maps.min() and maps.max() < network.num_channels(SMALL, layer)
        np.testing.assert_array_equal(maps, two.maps[layer])
    assert any(not np.array_equal(one.maps[l], other.maps[l]) for l in network.conv_layers(SMALL))
    wide = evolution.make_probe(images, mean, SMALL, count=100, maps_per_layer=1000)
    assert len(wide.images) == 60 and len(wide.maps["conv1"]) == network.num_channels(SMALL, "conv1")


@pytest.mark.skipif(not (IMAGENETTE / "val").is_dir(), reason=f"no images at {IMAGENETTE}/val")
def test_make_probe_on_real_images_takes_every_class():
    images = data.load_split(str(IMAGENETTE), "val", 64, limit=30, progress=False)
    probe = evolution.make_probe(images, data.mean_image(images), SMALL, count=20)
    assert len(probe.images) == 20
    # Per class, the first images in path order: 2 of each of the 10 classes.
    kept = [np.flatnonzero((data.centre_crop(images.images, 64) == d).all(axis=(1, 2, 3)))[0]
            for d in probe.display]
    assert np.bincount(images.labels[kept], minlength=10).tolist() == [2] * 10


def test_save_load_round_trip_and_replace(tmp_path):
    snap0, snap1 = snapshot(0), snapshot(1)
    path = evolution.save_snapshot(tmp_path, 1, snap0)
    assert path == tmp_path / "snapshots" / "epoch_0001.npz"
    evolution.save_snapshot(tmp_path, 12, snap1)
    loaded = evolution.load_snapshots(tmp_path)
    assert list(loaded) == [1, 12]
    for epoch, snap in [(1, snap0), (12, snap1)]:
        assert set(loaded[epoch]) == set(snap)
        for key, value in snap.items():
            assert loaded[epoch][key].dtype == value.dtype
            np.testing.assert_array_equal(loaded[epoch][key], value)
    # Replacing an existing epoch swaps the file whole.
    evolution.save_snapshot(tmp_path, 1, snap1)
    np.testing.assert_array_equal(evolution.load_snapshots(tmp_path)[1]["conv2/projections"],
                                  snap1["conv2/projections"])
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == [
        "epoch_0001.npz", "epoch_0012.npz"]


def test_failed_save_leaves_no_temp_file_and_the_old_snapshot(tmp_path, monkeypatch):
    evolution.save_snapshot(tmp_path, 1, snapshot(0))

    def broken_savez(file, **arrays):
        file.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        evolution.save_snapshot(tmp_path, 1, snapshot(1))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="holds Python objects"):
        evolution.save_snapshot(tmp_path, 1, {"conv1/channels": np.array([None])})
    assert [p.name for p in (tmp_path / "snapshots").iterdir()] == ["epoch_0001.npz"]
    np.testing.assert_array_equal(evolution.load_snapshots(tmp_path)[1]["conv1/values"],
                                  snapshot(0)["conv1/values"])


def test_load_snapshots_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no snapshot folder .*snapshots; save_snapshot"):
        evolution.load_snapshots(tmp_path)
    (tmp_path / "snapshots").mkdir()
    (tmp_path / "snapshots" / "epoch_0001.npz.abc.tmp").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="has no epoch_NNNN.npz files"):
        evolution.load_snapshots(tmp_path)


def test_default_epochs_are_the_papers_or_all():
    assert evolution.default_epochs({1: 0, 3: 0, 5: 0, 64: 0, 70: 0}) == [1, 5, 64, 70]
    assert evolution.default_epochs({1: 0, 2: 0, 3: 0}) == [1, 2, 3]  # the last always shown
    assert evolution.default_epochs({4: 0, 3: 0}) == [3, 4]


def test_plot_evolution_draws_one_block_per_layer_side_by_side(tmp_path):
    for epoch, seed in [(1, 0), (5, 1), (10, 2)]:
        evolution.save_snapshot(tmp_path, epoch, snapshot(seed))
    evolution.save_snapshot(tmp_path, 3, snapshot(0))  # not one of the paper's epochs
    out = plot_evolution(tmp_path, tmp_path / "fig" / "evolution.png")
    assert out == tmp_path / "fig" / "evolution.png"
    png = np.asarray(Image.open(out).convert("RGB"))
    # 5 blocks of 4 maps x (3 epochs + patch), side by side: wide, not tall; fits a screen.
    assert png.shape[1] > 2 * png.shape[0] and png.shape[1] <= 1900
    assert png.std() > 20
    with pytest.raises(ValueError, match=r"epochs \[2\] cannot be drawn; saved epochs are \[1, 3, 5, 10\]"):
        plot_evolution(tmp_path, tmp_path / "x.png", epochs=[1, 2])


def test_evolution_block_places_each_map_epoch_and_patch():
    side = evolution_figure.tile_side(5, 4)
    rng = np.random.default_rng(0)
    projections = rng.normal(size=(3, 2, 9, 9, 3)).astype(np.float32)  # 3 epochs, 2 maps
    patches = rng.integers(1, 256, (2, 9, 9, 3), np.uint8)
    block = render.evolution_block(projections, patches, side)
    step = side + render.TILE_GAP
    assert block.shape == (2 * step - render.TILE_GAP, 4 * step - render.TILE_GAP + render.PATCH_GAP, 3)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(block[i * step:i * step + side, j * step:j * step + side],
                                          render.fit_tile(render.to_display(projections[j, i]), side))
        x = 3 * step + render.PATCH_GAP
        np.testing.assert_array_equal(block[i * step:i * step + side, x:x + side],
                                      render.fit_tile(patches[i], side))
