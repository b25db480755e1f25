"""Display of projections (robust per-tile stretch, fitting, trimming) and class names."""

from pathlib import Path

import numpy as np
import pytest

from zfjax import render


def test_to_display_stretches_each_tile_by_its_own_robust_percentile():
    # Tile 0: 99 values of 1 and one outlier of 100 (plus zeros). At the 90th percentile
    # of nonzero magnitudes the scale is 1, so 1 -> 255, -1 -> 0, 0 -> 128, outlier clipped.
    a = np.zeros((2, 10, 10, 3), np.float32)
    a[0, :, :, 0] = 1.0
    a[0, 0, 0, 0] = 100.0
    a[0, 1, 1, 0] = -1.0
    a[1, 0, 0, 1] = 0.5  # tile 1: one nonzero value -> its own scale 0.5
    out = render.to_display(a, percentile=90)
    assert out.dtype == np.uint8 and out.shape == a.shape
    assert out[0, 5, 5, 0] == 255 and out[0, 1, 1, 0] == 0 and out[0, 0, 0, 0] == 255
    assert out[0, 5, 5, 1] == 128  # zero stays mid-gray
    assert out[1, 0, 0, 1] == 255 and (out[1, 1:] == 128).all()
    # Percentile 100 is scaling by the largest magnitude: 1 / 100 of the way to white.
    peak = render.to_display(a, percentile=100)
    assert peak[0, 5, 5, 0] == round(127.5 + 127.5 / 100)


@pytest.mark.parametrize("percentile", [50.0, 99.0, 100.0, 0.5])
def test_to_display_scale_is_numpys_percentile_of_the_nonzero_values(percentile):
    """Against np.nanpercentile with zeros as NaN, tile by tile: dense, sparse, one
    nonzero value, two, none."""
    import warnings

    rng = np.random.default_rng(1)
    tiles = rng.normal(size=(12, 9, 7, 3)).astype(np.float32)
    tiles[rng.random(tiles.shape) < 0.7] = 0
    tiles[3] = 0
    tiles[4] = 0
    tiles[4, 2, 5, 1] = -3.0
    tiles[5] = 0
    tiles[5, 0, 0, 0], tiles[5, 8, 6, 2] = 1.0, 5.0
    magnitudes = np.abs(tiles.reshape(len(tiles), -1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the all-zero tile
        want = np.nanpercentile(np.where(magnitudes > 0, magnitudes, np.nan), percentile, axis=1)
    want = np.where(np.isfinite(want), want, 1.0).astype(np.float32)[:, None, None, None]
    expected = np.clip(np.round(127.5 + 127.5 * tiles / want), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(render.to_display(tiles, percentile), expected)


def test_to_display_of_an_all_zero_tile_is_gray_and_bad_percentile_raises():
    assert (render.to_display(np.zeros((4, 4, 3))) == 128).all()
    with pytest.raises(ValueError, match=r"percentile must be in \(0, 100\]"):
        render.to_display(np.ones((4, 4, 3)), percentile=0)


def test_fit_enlarges_with_sharp_blocks_and_letterboxes():
    tile = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = render.fit_tile(tile, 9)
    assert out.shape == (9, 9, 3)
    # 2 x 3 -> 6 x 9 (x3, nearest), centred vertically with white rows above and below.
    np.testing.assert_array_equal(out[1:7], np.repeat(np.repeat(tile, 3, 0), 3, 1))
    assert (out[0] == 255).all() and (out[7:] == 255).all()
    # Shrinking averages areas: 4 x 4 of two halves -> 2 x 2.
    halves = np.zeros((4, 4, 3), np.uint8)
    halves[:, 2:] = 200
    np.testing.assert_array_equal(render.fit_tile(halves, 2)[..., 0], [[0, 200], [0, 200]])


def test_content_box_and_trim_cut_the_zero_padding():
    a = np.zeros((2, 8, 8, 3))
    a[0, 2, 3, 1] = 1
    b = np.zeros((8, 8, 3))
    b[5, 6, 0] = 7
    assert render.content_box(a, b) == (2, 3, 6, 7)
    assert render.trim(a, (2, 3, 6, 7)).shape == (2, 4, 4, 3)
    assert render.content_box(np.zeros((5, 6, 3))) == (0, 0, 5, 6)


def test_content_boxes_equal_content_box_tile_by_tile():
    rng = np.random.default_rng(0)
    a = np.where(rng.random((6, 2, 9, 7, 3)) < 0.01, 1.0, 0.0)
    b = np.where(rng.random((6, 9, 7, 3)) < 0.01, 5, 0).astype(np.uint8)
    a[3], b[3] = 0, 0  # an empty pair: the whole tile
    a[4, :, :, :, 1:], b[4] = 0, 0  # content in one channel only
    boxes = render.content_boxes(a, b)
    assert boxes.shape == (6, 4)
    assert tuple(boxes[3]) == (0, 0, 9, 7)
    for k in range(6):
        hit = (a[k] != 0).any(axis=(0, 3)) | (b[k] != 0).any(axis=2)
        rows, cols = np.flatnonzero(hit.any(1)), np.flatnonzero(hit.any(0))
        want = (0, 0, 9, 7) if not len(rows) else (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
        assert tuple(boxes[k]) == want == render.content_box(a[k], b[k])


def test_display_side_is_a_whole_multiple():
    assert [render.display_side(r) for r in (7, 11, 27, 48, 139)] == [49, 55, 54, 48, 139]


def test_fit_pairs_trims_projection_and_patch_to_the_same_box():
    projections = np.zeros((1, 10, 10, 3), np.float32)
    projections[0, 2:6, 2:6] = 1.0
    patches = np.zeros((1, 10, 10, 3), np.uint8)
    patches[0, 2:6, 2:6] = 90
    shown, fitted = render.fit_pairs(projections, patches, 8)
    assert shown.shape == fitted.shape == (1, 8, 8, 3)
    assert (shown == 255).all() and (fitted == 90).all()  # the box is exactly the 4x4 content


def test_imagenet_table_is_complete_and_in_class_index_order():
    names = render.imagenet_names()
    assert len(names) == 1000 and list(names) == sorted(names)
    assert names["n01440764"] == "tench" and names["n03425413"] == "gas pump"
    assert len(set(names.values())) == 1000  # duplicates (crane, maillot) told apart
    try:  # cross-check with TFDS's own list of ImageNet ids
        import tensorflow_datasets as tfds
        labels = Path(tfds.__file__).parent / "datasets" / "imagenet2012" / "labels.txt"
    except ImportError:
        labels = None
    if labels is not None and labels.is_file():
        assert labels.read_text().split() == list(names)


def test_class_labels_name_wordnet_ids_and_keep_other_names():
    assert render.class_labels(["n01440764", "n02102040", "cat", 3]) == [
        "tench", "English springer", "cat", "3"]
    assert render.class_labels(None) is None


def test_table_is_shipped_as_package_data():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert "resources/*.tsv" in text


def test_shown_paths_keep_only_the_last_name_of_file_system_paths(tmp_path):
    from zfjax.render import shown_path, shown_paths

    (tmp_path / "data" / "imagenette").mkdir(parents=True)
    assert shown_path("/home/me/shared/data/imagenette/") == "imagenette"
    assert shown_path("../shared/data/imagenette") == "imagenette"
    assert shown_path("~/weights/vgg16.safetensors") == "vgg16.safetensors"
    assert shown_path(tmp_path / "data" / "imagenette") == "imagenette"
    assert shown_path("imagenette/160px-v2") == "imagenette/160px-v2"  # a TFDS name
    assert shown_paths({"data": {"source": "/srv/x/imagenette", "limit": 3},
                        "runs": ["/a/b", "zfnet"]}) == {
        "data": {"source": "imagenette", "limit": 3}, "runs": ["b", "zfnet"]}
