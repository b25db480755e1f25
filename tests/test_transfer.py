"""Transfer (Tables 4-7, Fig. 9): layer features, linear classifiers, few-shot curve, CLI."""

import csv
import functools
import tempfile

import numpy as np
import pytest

from zfjax.analyses import transfer
from zfjax.inputs import data
from zfjax.nets import model, network
from helpers import random_params
from helpers import TINY, write_image_folder, write_tiny_run


def test_pool_matrix_equals_torch_adaptive_average_pooling():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(2, 7, 7, 3)).astype(np.float32)
    for g in (1, 2, 3, 5, 7):
        p = transfer.pool_matrix(7, g)
        ours = np.einsum("gh,nhwc,kw->ngkc", p, x, p)
        ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), g)
        np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6)


def test_pool_matrix_bins_by_hand_and_grid_side():
    np.testing.assert_allclose(transfer.pool_matrix(5, 2), [[1 / 3] * 3 + [0, 0], [0, 0] + [1 / 3] * 3])
    assert transfer.grid_side(15, 48, 4096) == 9  # 9 * 9 * 48 = 3888 <= 4096 < 10 * 10 * 48
    assert transfer.grid_side(3, 192, 4096) == 3 and transfer.grid_side(13, 10 ** 6, 5) == 1


@functools.lru_cache(maxsize=None)
def tiny_params():
    return random_params(TINY, bias_std=0.01)


def test_features_are_the_forward_activations_pooled_batch_by_batch():
    x = np.random.default_rng(1).normal(0, 0.3, (7, 64, 64, 3)).astype(np.float32)
    layers = ("pool1", "conv3", "fc7")
    feats = transfer.extract_features(TINY, tiny_params(), (x[i:i + 4] for i in (0, 4)),
                                      layers=layers, max_features=600)
    _, aux = model.forward_jit(TINY, tiny_params(), x)
    acts = {k: np.asarray(v) for k, v in aux["activations"].items()}
    np.testing.assert_allclose(feats["fc7"], acts["fc7"], rtol=1e-4, atol=1e-5)
    # conv3 at 64 px, width 0.25: 3 x 3 x 96 = 864 > 600 -> a 2 x 2 grid (384 features).
    grids = dict(transfer.feature_grids(TINY, layers, 600))
    assert grids == {"pool1": 5, "conv3": 2, "fc7": 0}
    p = transfer.pool_matrix(3, 2)
    want = np.einsum("gh,nhwc,kw->ngkc", p, acts["conv3"], p).reshape(7, -1)
    np.testing.assert_allclose(feats["conv3"], want, rtol=1e-4, atol=1e-5)
    assert feats["pool1"].shape == (7, 5 * 5 * 24)
    with pytest.raises(ValueError, match="unknown layer 'fc8' for features"):
        transfer.feature_grids(TINY, ("fc8",), 100)


def test_fit_softmax_reaches_the_optimum_of_the_penalised_loss():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = np.where(x[:, 2] > 1, 2, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32))
    l2 = 0.1
    clf = transfer.fit_softmax(x, y, np.ones(60, np.float32), l2, num_classes=3, steps=3000,
                               learning_rate=0.05)
    w, b = np.asarray(clf.weight, np.float64), np.asarray(clf.bias, np.float64)
    logits = x @ w + b
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    residual = (prob - np.eye(3)[y]) / len(y)  # gradient of the mean cross-entropy
    start = x.T @ (np.full((60, 3), 1 / 3) - np.eye(3)[y]) / len(y)  # gradient at zero
    assert np.abs(start).max() > 0.1
    np.testing.assert_allclose(x.T @ residual + l2 * w, 0, atol=2e-3)  # stationary point
    np.testing.assert_allclose(residual.sum(0), 0, atol=2e-3)
    assert float(transfer.accuracy(clf, x, y)) > 0.9
    # Zero weights drop examples: only the first 30 count.
    half = transfer.fit_softmax(x, y, (np.arange(60) < 30).astype(np.float32), l2,
                                num_classes=3, steps=300)
    only = transfer.fit_softmax(x[:30], y[:30], np.ones(30, np.float32), l2, num_classes=3,
                                steps=300)
    np.testing.assert_allclose(half.weight, only.weight, atol=1e-5)


def test_held_out_split_and_draws_per_class():
    labels = np.repeat(np.arange(3), [10, 5, 1])
    fit, held = transfer.held_out_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([fit, held])) == list(range(16))
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]
    picks = transfer.draw_per_class(labels[:15], 4, draws=3, seed=1)
    assert picks.shape == (3, 8)
    for row in picks:
        assert np.bincount(labels[row]).tolist() == [4, 4] and len(set(row)) == 8
    with pytest.raises(ValueError, match="6 training images per class asked, but class 1 has only 5"):
        transfer.draw_per_class(labels[:15], 6, draws=1, seed=0)


def test_layer_table_and_curve_on_separable_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 8))
    train_y, test_y = np.repeat(np.arange(3), 20), np.repeat(np.arange(3), 10)
    good = lambda y: (centres[y] + rng.normal(size=(len(y), 8))).astype(np.float32)
    noise = lambda y: rng.normal(size=(len(y), 8)).astype(np.float32)
    rows = transfer.layer_table({"fc6": noise(train_y), "fc7": good(train_y)}, train_y,
                                {"fc6": noise(test_y), "fc7": good(test_y)}, test_y, 3,
                                steps=200)
    assert [r.layer for r in rows] == ["fc6", "fc7"] and rows[1].dims == 8
    assert rows[1].test_accuracy > 0.95 and rows[0].test_accuracy < 0.7
    assert rows[1].l2 in transfer.L2_GRID
    curve = transfer.few_shot_curve(good(train_y), train_y, good(test_y), test_y, 3, [1, 5],
                                    draws=4, steps=200)
    assert curve.accuracy.shape == (2, 4) and curve.per_class.tolist() == [1, 5]
    np.testing.assert_allclose(curve.mean, curve.accuracy.mean(1))
    assert curve.mean[1] > 0.9


ZFNET_LAYERS = ["pool1", "pool2", "conv3", "conv4", "pool5", "fc6", "fc7"]


@pytest.mark.parametrize("arch, variant, layers", [
    ("zfnet", "", ZFNET_LAYERS),
    ("zfnet", "no-conv3-4", ["pool1", "pool2", "pool5", "fc6", "fc7"]),
    ("zfnet", "no-fc6-7", ["pool1", "pool2", "conv3", "conv4", "pool5"]),
    ("zfnet", "no-conv3-4-fc6-7", ["pool1", "pool2", "pool5"]),
    ("alexnet", "", ZFNET_LAYERS),
    ("vgg16", "", ["pool1", "pool2", "pool3", "pool4", "pool5", "fc6", "fc7"]),
])
def test_feature_layers_are_table7s_layers_that_the_network_has(arch, variant, layers):
    config = network.Network(num_classes=3, image_size=64 if arch == "zfnet" else 224,
                             width=0.25, arch=arch, variant=variant)
    assert list(transfer.feature_layers(config)) == layers
    assert transfer.curve_layer(config) == layers[-1]


def two_colour_images(per_class, seed):
    """2 classes at the stored size of 64 px: reddish and bluish noise."""
    rng = np.random.default_rng(seed)
    size = data.stored_size(64)
    labels = np.repeat(np.arange(2, dtype=np.int32), per_class)
    images = rng.integers(0, 120, (len(labels), size, size, 3))
    images[labels == 0, ..., 0] += 120
    images[labels == 1, ..., 2] += 120
    return data.ImageSet(images.astype(np.uint8), labels, ("red", "blue"), 0,
                         tuple(f"{i}.png" for i in range(len(labels))))


def test_no_pretraining_row_trains_from_random_weights_on_the_curves_first_draw():
    train, test = two_colour_images(12, seed=0), two_colour_images(10, seed=1)
    # The row trains on the first draw few_shot_curve makes with the same seed.
    np.testing.assert_array_equal(transfer.draw_per_class(train.labels, 4, 1, seed=7)[0],
                                  transfer.draw_per_class(train.labels, 4, 5, seed=7)[0])
    picked = transfer.subset(train, np.array([3, 14]))
    assert picked.labels.tolist() == [0, 1] and picked.paths == ("3.png", "14.png")
    np.testing.assert_array_equal(picked.images[1], train.images[14])
    # A network that learnt nothing is at chance (0.5) on this balanced test split.
    row = transfer.scratch_row(TINY, train, test, [12], epochs=10, batch_size=8)
    assert row.per_class.tolist() == [12] and row.epochs == 10
    assert row.accuracy[0] >= 0.9, row


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("transfer"))


def test_cli_refuses_bad_numbers_at_parse_time(tiny_run, monkeypatch, capsys, run_cli):
    with pytest.raises(SystemExit) as exit:
        run_cli(["transfer", str(tiny_run), "--data", "x", "--steps", "0"])
    assert exit.value.code == 2
    assert "argument --steps: must be an integer >= 1, got '0'" in capsys.readouterr().err


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_cli_on_an_image_folder_takes_val_as_the_test_split(tiny_run, monkeypatch, capsys, run_cli):
    folder = tiny_run.parent / "images"  # train/ and val/, 2 classes of 4 images
    code, out, err = run_cli([
        "transfer", str(tiny_run), "--data", str(folder), "--per-class", "1", "2", "--draws", "2",
        "--steps", "20", "--batch-size", "3", "--scratch-epochs", "1"])
    assert code == 0, err
    figures = tiny_run / "figures"
    assert out.splitlines()[-4:] == [str(figures / n) for n in (
        "transfer.png", "transfer_layers.csv", "transfer_curve.csv", "transfer_scratch.csv")]
    assert "8 train / 8 val images, 2 classes" in out
    assert "no pretraining (from scratch, 1 epoch, 1 draw), images per class: 1: " in out
    rows = list(csv.DictReader(open(figures / "transfer_layers.csv")))
    assert [r["layer"] for r in rows] == ZFNET_LAYERS
    assert all(0 <= float(r["test_accuracy"]) <= 1 for r in rows)
    curve = list(csv.DictReader(open(figures / "transfer_curve.csv")))
    assert [(c["per_class"], c["draws"]) for c in curve] == [("1", "2"), ("2", "2")]
    scratch = list(csv.DictReader(open(figures / "transfer_scratch.csv")))
    assert [(c["per_class"], c["epochs"]) for c in scratch] == [("1", "1"), ("2", "1")]
    assert all(float(c["accuracy"]) in (0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1)
               for c in scratch)  # a fraction of the 8 val images


@pytest.mark.parametrize("variant, layers", [
    ("no-conv3-4", ["pool1", "pool2", "pool5", "fc6", "fc7"]),
    ("no-fc6-7", ["pool1", "pool2", "conv3", "conv4", "pool5"]),
])
def test_cli_default_layers_on_a_variant_are_those_it_has(tmp_path, run_cli, variant, layers):
    variant_run = write_tiny_run(tmp_path, config=network.with_variant(TINY, variant))
    code, out, err = run_cli([
        "transfer", str(variant_run), "--data", str(tmp_path / "images"), "--per-class", "1",
        "--draws", "2", "--steps", "10", "--out", str(tmp_path / "o")])
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "o" / "transfer_layers.csv")))
    assert [r["layer"] for r in rows] == layers
    assert f"{layers[-1]} softmax, images per class: 1: " in out  # the curve's layer


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_cli_on_a_tfds_dataset(tiny_run, monkeypatch, capsys, tmp_path, run_cli):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12), tempfile.TemporaryDirectory() as d:
        code, out, err = run_cli([
            "transfer", str(tiny_run), "--data", "cifar10", "--data-dir", d, "--per-class",
            "--layers", "pool5", "fc7", "--steps", "10", "--out", str(tmp_path)])
    assert code == 0, err
    assert "cifar10: 12 train / 12 test images, 10 classes" in out
    rows = list(csv.DictReader(open(tmp_path / "transfer_layers.csv")))
    assert [r["layer"] for r in rows] == ["pool5", "fc7"]
    assert not (tmp_path / "transfer_curve.csv").exists()


@pytest.mark.parametrize("argv, message", [
    (["--layers", "fc8", "fc7"], "unknown layer 'fc8' for features"),
    (["--layers", "pool5"], "the --per-class curve retrains the softmax on fc7: keep fc7"),
    (["--per-class", "--scratch-epochs", "3"], "--scratch-epochs trains on the --per-class draws"),
    (["--per-class", "9"], "9 training images per class asked, but class 0 has only 4"),
])
def test_cli_bad_input_is_one_line(tiny_run, monkeypatch, capsys, tmp_path, argv, message, run_cli):
    folder = tiny_run.parent / "images"
    code, out, err = run_cli([
        "transfer", str(tiny_run), "--data", str(folder), "--steps", "5", "--out",
        str(tmp_path / "o")] + argv)
    assert code == 2 and out == ""
    assert err.startswith("visualize.py transfer: error: ") and message in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


def test_cli_refuses_a_one_class_folder_as_train_py_does(tiny_run, tmp_path, run_cli):
    # Any classifier of one class is 100% right: the table would say 100% at every layer.
    folder = write_image_folder(tmp_path / "one", ["only"], 3, shape=(40, 40))
    code, out, err = run_cli(["transfer", str(tiny_run), "--data", str(folder), "--steps", "5",
                              "--per-class", "--out", str(tmp_path / "o")])
    assert (code, out) == (2, "")
    assert err == (f"visualize.py transfer: error: the train split of {folder} has 1 class(es) "
                   f"(only); a classifier needs at least 2\n")
    assert not (tmp_path / "o").exists()
