"""Tests for zfjax.inputs.data: folder and TFDS loading, preprocessing and batches."""

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zfjax.inputs import data

IMAGENETTE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenette"
needs_imagenette = pytest.mark.skipif(
    not IMAGENETTE.is_dir(), reason=f"real images not found at {IMAGENETTE}")
WNIDS = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
         "n03394916", "n03417042", "n03425413", "n03445777", "n03888257")


@pytest.fixture(scope="module")
def real():
    """200 real training images at input size 224 and their mean."""
    if not IMAGENETTE.is_dir():
        pytest.skip(f"real images not found at {IMAGENETTE}")
    images = data.load_split(str(IMAGENETTE), "train", 224, limit=200, progress=False)
    return images, data.mean_image(images)


def _synthetic(n=40, size=16, seed=0):
    """An ImageSet whose pixels encode (image, row, col) and a mean encoding (row, col)."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    images = np.stack([np.broadcast_to(np.arange(n)[:, None, None], (n, size, size)),
                       np.broadcast_to(rows, (n, size, size)),
                       np.broadcast_to(cols, (n, size, size))], -1).astype(np.uint8)
    labels = np.random.default_rng(seed).integers(0, 5, n).astype(np.int32)
    mean = np.zeros((size, size, 3), np.float32)
    mean[..., 0] = 1000 * rows + cols
    return data.ImageSet(images, labels, tuple("abcde"), 0, ("",) * n), mean


# ------------------------------------------------------------------------ folder loading

def test_stored_size():
    assert [data.stored_size(s) for s in (224, 112, 227, 32)] == [256, 128, 259, 37]


@needs_imagenette
def test_real_folder(real):
    images, mean = real
    assert images.images.shape == (200, 256, 256, 3) and images.images.dtype == np.uint8
    assert images.labels.dtype == np.int32 and images.labels.shape == (200,)
    assert images.class_names == WNIDS
    assert np.bincount(images.labels).tolist() == [20] * 10  # limit spreads over classes
    assert images.skipped == 0 and len(images.paths) == 200
    assert all(Path(p).parent.name == WNIDS[y] for p, y in zip(images.paths, images.labels))
    assert mean.shape == (256, 256, 3) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, images.images.mean(0), atol=1e-3)


@needs_imagenette
def test_split_alias_validation_reads_val():
    images = data.load_split(str(IMAGENETTE), "validation", 112, limit=10, progress=False)
    assert images.images.shape == (10, 128, 128, 3)
    assert images.class_names == WNIDS
    assert all("/val/" in p for p in images.paths)


@needs_imagenette
def test_grayscale_becomes_rgb(tmp_path):
    gray = next(p for p in sorted((IMAGENETTE / "train" / WNIDS[1]).glob("*.JPEG"))
                if Image.open(p).mode == "L")
    (tmp_path / "train" / "a").mkdir(parents=True)
    shutil.copy(gray, tmp_path / "train" / "a")
    img = data.load_split(str(tmp_path), "train", 224, progress=False).images[0]
    assert img.shape == (256, 256, 3)
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])
    assert img.std() > 10  # a real picture, not a blank


@needs_imagenette
def test_resize_shorter_side_then_centre_crop(tmp_path):
    # 60x30 image: left third red, middle third green, right third blue. The shorter
    # side (30) goes to 37 and the centre square keeps only the green middle.
    arr = np.zeros((30, 90, 3), np.uint8)
    arr[:, :30, 0] = arr[:, 30:60, 1] = arr[:, 60:, 2] = 255
    (tmp_path / "train" / "c").mkdir(parents=True)
    Image.fromarray(arr).save(tmp_path / "train" / "c" / "x.png")
    img = data.load_split(str(tmp_path), "train", 32, progress=False).images[0]
    assert img.shape == (37, 37, 3)
    np.testing.assert_array_equal(img[:, 1:-1], np.broadcast_to([0, 255, 0], (37, 35, 3)))


def test_missing_folder_message(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        data.load_split(str(missing), "train", 224, progress=False)
    assert str(missing) in str(err.value)
    assert "<root>/<split>/<class>/<image>" in str(err.value)


def test_missing_split_message(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
        data.load_split(str(tmp_path), "test", 224, progress=False)
    assert str(tmp_path / "test") in str(err.value)
    assert "found: ['train']" in str(err.value)
    assert "<root>/<split>/<class>/<image>" in str(err.value)


def test_empty_or_undecodable_split_message(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images found"):
        data.load_split(str(tmp_path), "train", 224, progress=False)
    (tmp_path / "train" / "a" / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"no decodable images .* \(1 failed, e.g. .*bad.jpg"):
        data.load_split(str(tmp_path), "train", 224, progress=False)


# ------------------------------------------------------------------------------ batches

def test_train_crops_match_windows_of_image_and_mean():
    images, mean = _synthetic()
    size, seen_flips, seen_offsets = 13, set(), set()
    for x, y in data.train_batches(images, mean, 8, size, seed=3, epoch=0):
        assert x.shape == (8, size, size, 3) and x.dtype == np.float32
        v = np.rint(x * data.PIXEL_SCALE).astype(np.int64)
        rows, cols = v[..., 1], v[..., 2]
        index = v[..., 0] + 1000 * rows + cols  # image index, if the mean window matches
        for k in range(8):
            i = index[k, 0, 0]
            assert (index[k] == i).all() and y[k] == images.labels[i]
            assert (np.diff(rows[k], axis=0) == 1).all()
            dc = np.diff(cols[k], axis=1)
            assert (dc == 1).all() or (dc == -1).all()
            seen_flips.add(int(dc[0, 0]))
            seen_offsets.add((rows[k].min(), cols[k].min()))
    assert seen_flips == {1, -1}
    assert len(seen_offsets) > 3 and {r for r, _ in seen_offsets} <= {0, 1, 2, 3}


def test_train_epoch_covers_a_permutation():
    images, mean = _synthetic(n=43)
    batches = list(data.train_batches(images, mean, 8, 13, seed=0, epoch=0))
    assert len(batches) == 43 // 8
    seen = [int(np.rint(x[k, 0, 0, 0] * 255 + 1000 * x[k, 0, 0, 1] * 255 + x[k, 0, 0, 2] * 255))
            for x, _ in batches for k in range(8)]
    assert len(set(seen)) == 40


@needs_imagenette
def test_train_batches_deterministic_and_resumable(real):
    images, mean = real
    run = lambda **kw: list(data.train_batches(images, mean, 32, 224, seed=7, **kw))
    first, again, other = run(epoch=0), run(epoch=0), run(epoch=1)
    assert len(first) == 200 // 32
    for (x1, y1), (x2, y2) in zip(first, again):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(first[0][0], other[0][0])
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other))
    resumed = run(epoch=0, start_step=4)
    assert len(resumed) == len(first) - 4
    for (x1, y1), (x2, y2) in zip(first[4:], resumed):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)


@needs_imagenette
def test_eval_batches_centre_and_ten_crop(real):
    images, mean = real
    batches = list(data.eval_batches(images, mean, 64, 224))
    assert [len(y) for _, y in batches] == [64, 64, 64, 8]
    x, y = batches[-1]
    assert np.array_equal(x, data.preprocess(images.images[192:], mean, 224))
    assert np.array_equal(y, images.labels[192:])

    x10, y10 = next(data.eval_batches(images, mean, 8, 224, ten_crop=True))
    assert x10.shape == (8, 10, 224, 224, 3) and x10.dtype == np.float32
    centre = data.preprocess(images.images[:8], mean, 224)
    assert np.array_equal(x10[:, 0], centre)
    assert np.array_equal(x10[:, 5], centre[:, :, ::-1])
    top_left = (images.images[:8, :224, :224] - mean[:224, :224]) / data.PIXEL_SCALE
    np.testing.assert_allclose(x10[:, 1], top_left, atol=1e-6)
    bottom_right = (images.images[:8, 32:, 32:] - mean[32:, 32:]) / data.PIXEL_SCALE
    np.testing.assert_allclose(x10[:, 4], bottom_right, atol=1e-6)


@needs_imagenette
def test_to_pixels_inverts_preprocess(real):
    images, mean = real
    x = data.preprocess(images.images[:4], mean, 224)
    assert x.dtype == np.float32 and -1.01 < x.min() and x.max() < 1.01
    back = data.to_pixels(x, data.centre_crop(mean, 224))
    assert back.dtype == np.uint8
    assert np.array_equal(back, images.images[:4, 16:240, 16:240])


# --------------------------------------------------------------------------------- TFDS

@pytest.mark.parametrize("name, input_size, stored", [
    ("imagenette/160px-v2", 112, 128), ("cifar10", 32, 37)])
def test_tfds_mock(name, input_size, stored):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=8), tempfile.TemporaryDirectory() as d:
        images = data.load_split(name, "train", input_size, data_dir=d, progress=False)
        limited = data.load_split(name, "train", input_size, data_dir=d, limit=4,
                                  progress=False)
    assert isinstance(images, data.ImageSet)
    assert images.images.shape == (8, stored, stored, 3) and images.images.dtype == np.uint8
    assert images.labels.dtype == np.int32 and len(images.class_names) == 10
    assert ((0 <= images.labels) & (images.labels < 10)).all()
    assert images.skipped == 0 and len(images.paths) == 8 and all(images.paths)
    assert images.images.std() > 0  # decoded mock pixels, not an empty buffer
    assert len(limited) <= 4
    x, y = next(data.train_batches(images, data.mean_image(images), 4, input_size,
                                   seed=0, epoch=0))
    assert x.shape == (4, input_size, input_size, 3)


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    """A prepared two-class TFDS dataset 'zfjax_tiny' (train 6, validation 4 images);
    returns its data_dir. Image i is a constant (20 + i) x 30 image of value 10 * i."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class ZfjaxTiny(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        pkg_dir_path = tmp_path_factory.mktemp("pkg")  # tests/ is not a package

        def _info(self):
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=["even", "odd"])}),
                supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6),
                    "validation": self._generate_examples(4)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full((20 + i, 30, 3), 10 * i, np.uint8), "label": i % 2}

    data_dir = tmp_path_factory.mktemp("tfds")
    ZfjaxTiny(data_dir=str(data_dir)).download_and_prepare()
    return str(data_dir)


def test_tfds_prepared_dataset(tiny_tfds):
    images = data.load_split("zfjax_tiny", "val", 32, data_dir=tiny_tfds, progress=False)
    assert images.images.shape == (4, 37, 37, 3) and images.class_names == ("even", "odd")
    values = images.images[:, 0, 0, 0].astype(int)
    assert sorted(values) == [0, 10, 20, 30]
    assert (images.images == values[:, None, None, None]).all()
    assert ((values // 10) % 2 == images.labels).all()
    assert sorted(images.paths) == [f"zfjax_tiny/validation/{i}" for i in range(4)]
    limited = data.load_split("zfjax_tiny", "train", 32, data_dir=tiny_tfds, limit=2,
                              progress=False)
    assert sorted(limited.labels) == [0, 1]
    sliced = data.load_split("zfjax_tiny", "val[:3]", 32, data_dir=tiny_tfds, progress=False)
    assert len(sliced) == 3
    with pytest.raises(ValueError, match=r"no split 'test'; available: \['train', 'validation'\]"):
        data.load_split("zfjax_tiny", "test", 32, data_dir=tiny_tfds, progress=False)


def test_tfds_not_prepared_fails_fast(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    data._import_tfds()  # exclude the one-off TensorFlow import from the timing
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        data.load_split("imagenette/160px-v2", "train", 224, data_dir=str(tmp_path),
                        progress=False)
    assert time.perf_counter() - start < 10
    assert "not prepared" in str(err.value) and "--data-dir" in str(err.value)
    assert "<root>/<split>/<class>/<image>" in str(err.value)


def test_unknown_source_message():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match="neither an existing folder nor a TFDS dataset"):
        data.load_split("no_such_dataset_xyz", "train", 224, progress=False)
    # a relative path whose first part is not a TFDS name is treated as a folder
    with pytest.raises(FileNotFoundError, match="no_such_dir_xyz/sub does not exist"):
        data.load_split("no_such_dir_xyz/sub", "train", 224, progress=False)


def test_tfds_imagenette_download_manager_can_be_built_offline(tmp_path):
    # The README's path: train.py without the local folder downloads TFDS imagenette. Before
    # any network, TFDS reads the builder's checksums (url_infos), which imports
    # importlib_resources: missing in a fresh install, it failed as "could not download".
    tfds = pytest.importorskip("tensorflow_datasets")
    builder = tfds.builder("imagenette/160px-v2", data_dir=str(tmp_path), try_gcs=False)
    assert builder.url_infos and not builder.is_prepared()
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing downloaded


def test_a_missing_module_is_not_reported_as_a_network_failure(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    class Builder:
        MANUAL_DOWNLOAD_INSTRUCTIONS = None
        data_dir_root = str(tmp_path)

        def is_prepared(self):
            return False

        def download_and_prepare(self):
            raise ModuleNotFoundError("No module named 'importlib_resources'",
                                      name="importlib_resources")

    monkeypatch.setattr(tfds, "builder", lambda *args, **kwargs: Builder())
    with pytest.raises(ValueError, match=r"^TFDS cannot prepare 'imagenette': Python module "
                                         r"'importlib_resources' is not installed; pip install "
                                         r"-r requirements.txt"):
        data.download_tfds("imagenette", str(tmp_path))
