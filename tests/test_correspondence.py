"""Part correspondence (paper Table 1): masks, Hamming distances, Delta, parts files."""

import functools
import json

import jax
import numpy as np
import pytest
from PIL import Image

from zfjax.analyses import correspondence as corr
from zfjax.commands.correspondence import read_parts
from zfjax.inputs import data
from zfjax.nets import model, network
from helpers import random_params

# The config of test_topk.write_tiny_run, so the CLI tests reuse these compilations.
SMALL = network.Network(num_classes=2, image_size=64, width=0.25, init_std=None)
STORED = data.stored_size(64)  # 73: a 73 px image is used as is, the crop starts at 4


@functools.lru_cache(maxsize=None)
def params():
    # Committed to the device as checkpoints.load_run's are: the CLI tests reuse compilations.
    return jax.device_put(random_params(SMALL), jax.devices()[0])


def images(n=3, seed=0):
    return np.random.default_rng(seed).normal(0, 0.3, (n, 64, 64, 3)).astype(np.float32)


def test_hamming_by_hand_and_delta_averages_the_ordered_pairs():
    # signs [1, -1, 0, 1] and [1, 1, 0, -1]: 2 of 4 differ.
    assert corr.hamming([1.0, -2.0, 0.0, 3.0], [2.0, 1.0, 0.0, -1.0]) == 0.5
    assert corr.hamming([0.0, 1.0], [-1.0, 1.0]) == 0.5  # 0 is its own sign
    h = np.array([[0, 0.1, 0.2], [0.1, 0, 0.3], [0.2, 0.3, 0]])
    np.testing.assert_allclose(corr.delta(h), (0.1 + 0.2 + 0.3) * 2 / 6)
    np.testing.assert_allclose(corr.pair_values(h), [0.1, 0.2, 0.3])


def test_box_masks_are_half_open():
    masks = corr.box_masks(np.array([[1, 2, 3, 5], [0, 0, 1, 1]]), 6)
    assert masks.shape == (2, 6, 6)
    want = np.zeros((6, 6), bool)
    want[1:3, 2:5] = True
    np.testing.assert_array_equal(masks[0], want)
    assert masks[1].sum() == 1 and masks[1, 0, 0]


@functools.lru_cache(maxsize=None)
def matrices():
    """Three sets of masks on three images: a shared box, per-image boxes, and nothing."""
    boxes = np.array([[[10, 10, 30, 30]] * 3,
                      [[0, 0, 16, 16], [20, 30, 40, 50], [40, 40, 64, 64]],
                      [[0, 0, 0, 0]] * 3])
    h = corr.hamming_matrices(SMALL, params(), images(), corr.box_masks(boxes, 64),
                              layers=("pool5", "fc7", "conv3"))
    return boxes, jax.device_get(h)


def test_identical_images_and_masks_give_delta_zero():
    same = np.repeat(images(1), 3, axis=0)
    # Three sets (the shape of matrices(): no new compilation), each one box for all.
    masks = corr.box_masks(np.array([[[5, 5, 20, 25]] * 3, [[0, 0, 64, 64]] * 3,
                                     [[30, 40, 31, 41]] * 3]), 64)
    h = corr.hamming_matrices(SMALL, params(), same, masks, layers=("pool5", "fc7", "conv3"))
    for layer, mats in h.items():
        np.testing.assert_array_equal(mats, 0, err_msg=layer)
        np.testing.assert_array_equal(corr.delta(mats), 0)
    _, h = matrices()
    np.testing.assert_array_equal(h["fc7"][2], 0)  # an empty mask changes nothing


def test_hamming_matrices_match_separate_forward_passes():
    boxes, h = matrices()
    x = images()
    _, ref = model.forward_jit(SMALL, params(), x)
    for m in range(2):
        masked = np.where(corr.box_masks(boxes[m], 64)[..., None], 0, x)
        _, aux = model.forward_jit(SMALL, params(), masked)
        for layer in ("pool5", "fc7", "conv3"):
            eps = (np.asarray(ref["activations"][layer]) - np.asarray(aux["activations"][layer])
                   ).reshape(3, -1)
            want = [[corr.hamming(eps[i], eps[j]) for j in range(3)] for i in range(3)]
            np.testing.assert_allclose(h[layer][m], want, atol=0.02, err_msg=layer)
        assert h["fc7"][m].max() > 0


def make_image(path, height, width, block=None):
    """Gray image; ``block`` (top, left, bottom, right) painted red."""
    pixels = np.full((height, width, 3), 128, np.uint8)
    if block:
        t, l, b, r = block
        pixels[t:b, l:r] = (255, 0, 0)
    Image.fromarray(pixels).save(path)
    return path


def write_parts(path, entries):
    path.write_text(json.dumps({"images": entries}))
    return path


def test_boxes_follow_the_image_to_the_network_input(tmp_path):
    # 146 x 220 (h x w): shorter side 146 -> 73 (x0.5), centre square from x = 37, crop at 4.
    make_image(tmp_path / "a.png", 146, 220, block=(40, 100, 60, 130))
    make_image(tmp_path / "b.png", STORED, STORED, block=(10, 20, 30, 40))
    parts = read_parts(write_parts(tmp_path / "parts.json", [
        {"path": "a.png", "parts": {"eye": [40, 100, 60, 130]}},
        {"path": str(tmp_path / "b.png"), "parts": {"eye": [10, 20, 30, 40]}}]))
    assert parts.names == ("eye",) and parts.sizes.tolist() == [[146, 220], [STORED, STORED]]
    boxes = corr.input_boxes(parts, 64)
    assert boxes[1, 0].tolist() == [6, 16, 26, 36]
    assert boxes[0, 0].tolist() == [16, 27, 26, 43]  # floor/ceil of 16, 27.5, 26, 42.5
    crops = data.centre_crop(data.load_image_files(parts.paths, 64), 64)
    for i in range(2):
        red = (crops[i, ..., 0] > 200) & (crops[i, ..., 1] < 60)
        inside = corr.box_masks(boxes[i, 0], 64)
        assert red.sum() > 0 and not (red & ~inside).any()


def test_parts_file_errors_name_the_image_and_part(tmp_path):
    make_image(tmp_path / "a.png", 100, 120)
    ok = {"path": "a.png", "parts": {"nose": [10, 10, 20, 20]}}

    def error(entries):
        with pytest.raises((ValueError, FileNotFoundError)) as info:
            read_parts(write_parts(tmp_path / "p.json", entries))
        message = str(info.value)
        assert "\n" not in message
        return message

    message = error([ok, {"path": "a.png", "parts": {"nose": [90, 10, 110, 20]}}])
    assert message.startswith(f"image {tmp_path / 'a.png'}: part 'nose' box [top, left, bottom, "
                              f"right] = [90, 10, 110, 20] lies outside the 100x120")
    assert "need 0 <= top < bottom <= 100" in message
    assert error([ok, {"path": "missing.jpg", "parts": {"nose": [0, 0, 1, 1]}}]) == (
        f"image {tmp_path / 'missing.jpg'} (entry 1 of parts file {tmp_path / 'p.json'}) "
        f"does not exist")
    assert "has parts ['eye'] but" in error([ok, {"path": "a.png", "parts": {"eye": [0, 0, 1, 1]}}])
    assert "part 'nose' box [1, 2] is not [top, left, bottom, right]" in error(
        [ok, {"path": "a.png", "parts": {"nose": [1, 2]}}])
    assert "needs an 'images' list of at least 2 entries" in error([ok])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_parts(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="parts file .*nothing.json does not exist"):
        read_parts(tmp_path / "nothing.json")
    # Inside the file but outside the centre square the network sees.
    parts = read_parts(write_parts(tmp_path / "p.json", [
        ok, {"path": "a.png", "parts": {"nose": [10, 0, 20, 5]}}]))
    with pytest.raises(ValueError, match=r"a.png: part 'nose' box \[10, 0, 20, 5\] lies outside "
                                         r"the centre square the network sees"):
        corr.input_boxes(parts, 64)


def test_random_boxes_keep_sizes_stay_inside_and_are_seeded():
    boxes = np.array([[[0, 0, 10, 20], [5, 5, 6, 6]], [[30, 30, 64, 40], [1, 2, 3, 4]]])
    r = corr.random_boxes(boxes, 64, draws=50, seed=3)
    assert r.shape == (50, 2, 2, 4)
    np.testing.assert_array_equal(r[..., 2] - r[..., 0], np.broadcast_to(
        boxes[..., 2] - boxes[..., 0], (50, 2, 2)))
    np.testing.assert_array_equal(r[..., 3] - r[..., 1], np.broadcast_to(
        boxes[..., 3] - boxes[..., 1], (50, 2, 2)))
    assert r.min() >= 0 and r[..., 2:].max() <= 64
    np.testing.assert_array_equal(r, corr.random_boxes(boxes, 64, draws=50, seed=3))
    assert not np.array_equal(r, corr.random_boxes(boxes, 64, draws=50, seed=4))
    sets = corr.mask_sets(boxes, r[:2], 64)  # 2 parts, then 2 draws x 2 parts
    assert sets.shape == (6, 2, 64, 64)
    np.testing.assert_array_equal(sets[1], corr.box_masks(boxes[:, 1], 64))
    np.testing.assert_array_equal(sets[2 + 2 + 1], corr.box_masks(r[1, :, 1], 64))


def test_table_rows_text_and_csv():
    n, parts, draws = 3, ("eye", "nose"), 2
    h = np.zeros((2 + draws * 2, n, n))
    off = ~np.eye(n, dtype=bool)
    h[0][off] = [0.1, 0.2, 0.1, 0.3, 0.2, 0.3]  # pairs 0.1, 0.2, 0.3
    h[1][off] = 0.4
    h[2:4][:, off] = 0.5  # draw 0
    h[4:6][:, off] = 0.7  # draw 1
    rows = corr.table({"pool5": h, "fc7": h * 0}, parts, draws, layers=("pool5", "fc7"))
    eye, nose, random = rows[:3]
    assert eye == {"layer": "pool5", "part": "eye", "delta": pytest.approx(0.2),
                   "std": pytest.approx(np.std([0.1, 0.2, 0.3])), "std_over": "image pairs",
                   "count": 3}
    assert nose["delta"] == pytest.approx(0.4) and nose["std"] == pytest.approx(0)
    assert random["part"] == "random" and random["std_over"] == "draws"
    assert random["delta"] == pytest.approx(0.6) and random["std"] == pytest.approx(0.1)
    assert [r["layer"] for r in rows] == ["pool5"] * 3 + ["fc7"] * 3
    text = corr.format_table(rows)
    assert text.splitlines()[1].split() == ["eye", "0.200", "±", "0.082", "0.000", "±", "0.000"]
    csv = corr.table_csv(rows).splitlines()
    assert csv[0] == "layer,part,delta,std,std_over,count"
    assert csv[3] == "pool5,random,0.600000,0.100000,draws,2"


# ---- command line, on a tiny real run folder (test_topk.write_tiny_run) ----------------

from helpers import write_tiny_run  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("correspondence"))


def tiny_parts(run, path, nose=(20, 30, 40, 50)):
    """A parts file on three of the tiny run's 80 x 90 images, one part."""
    folder = run.parent / "images" / "val"
    return write_parts(path, [{"path": str(folder / name), "parts": {"nose": list(nose)}}
                              for name in ("alpha/alpha0.png", "alpha/alpha1.png", "beta/beta0.png")])


def test_cli_prints_the_table_and_writes_csv_npz_and_figure(tiny_run, monkeypatch, capsys, tmp_path, run_cli):
    # One part and two draws on three images: the shapes of matrices() (no new compilation).
    code, out, err = run_cli([
        "correspondence", str(tiny_run), "--parts", str(tiny_parts(tiny_run, tmp_path / "p.json")),
        "--draws", "2", "--layers", "pool5", "fc7", "conv3"])
    assert code == 0, err
    figures = tiny_run / "figures"
    lines = out.splitlines()
    assert lines[0].split() == ["part", "Delta", "pool5", "Delta", "fc7", "Delta", "conv3"]
    assert lines[1].startswith("nose") and lines[2].startswith("random")
    assert lines[-3:] == [str(figures / n) for n in (
        "correspondence.png", "correspondence.npz", "correspondence.csv")]
    csv = (figures / "correspondence.csv").read_text().splitlines()
    assert csv[0] == "layer,part,delta,std,std_over,count" and len(csv) == 7
    arrays = np.load(figures / "correspondence.npz", allow_pickle=False)
    assert arrays["pool5/hamming"].shape == (3, 3, 3)
    # 80 x 90 images: side 80 -> 73 (x 0.9125), x offset 5, crop at 4.
    assert arrays["boxes"][0, 0].tolist() == [14, 18, 33, 38]  # floor/ceil of 14.25, 18.8, 32.5, 37.1
    value = float(csv[1].split(",")[2])
    assert 0 < value < 1
    png = np.asarray(Image.open(figures / "correspondence.png").convert("L"))
    assert png.shape[1] > 900 and png.std() > 20


def test_cli_bad_input_is_one_line_and_writes_nothing(tiny_run, monkeypatch, capsys, tmp_path, run_cli):
    image = tiny_run.parent / "images" / "val" / "alpha" / "alpha0.png"
    outside = tiny_parts(tiny_run, tmp_path / "outside.json", nose=(70, 30, 90, 50))
    good = tiny_parts(tiny_run, tmp_path / "good.json")
    for argv, message in [
        (["--parts", str(outside)], f"image {image}: part 'nose' box [top, left, bottom, right] "
                                    f"= [70, 30, 90, 50] lies outside the 80x90 (height x width) "
                                    f"image or is empty; need 0 <= top < bottom <= 80 and "
                                    f"0 <= left < right <= 90"),
        (["--parts", str(tmp_path / "none.json")], f"parts file {tmp_path / 'none.json'} does not "
                                                   f"exist; write one like {{\"images\": [{{\"path\": "
                                                   f"\"dog.jpg\", \"parts\": {{\"left_eye\": [top, "
                                                   f"left, bottom, right]}}}}]}}"),
        (["--parts", str(good), "--layers", "conv9"], "unknown layer 'conv9'; expected one of "
                                                      "conv1, pool1, conv2, pool2, conv3, conv4, "
                                                      "conv5, pool5, fc6, fc7"),
    ]:
        code, out, err = run_cli([
            "correspondence", str(tiny_run), "--out", str(tmp_path / "o")] + argv)
        assert (code, out, err) == (2, "", f"visualize.py correspondence: error: {message}\n")
    assert not (tmp_path / "o").exists()
