"""Hostile input to the data pipeline (issue 9): a corpus of corrupt and unusual image
files, 16-bit images, and splits whose classes differ from the training split's."""

import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zfjax.inputs import data
from zfjax.train import trainer, training
from zfjax.train.run import DataSpec, RunSpec
from zfjax.nets.network import Network

TINY = Network(num_classes=10, image_size=64, width=0.25, init_std=None)


def _png(width, height, bit_depth, colour_type, rows: bytes, *, idat: bytes | None = None) -> bytes:
    """A PNG written by hand (PIL cannot write 48-bit RGB or lie about the size)."""
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", idat if idat is not None else zlib.compress(rows)) + chunk(b"IEND", b""))


def _rgb48(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG of uint16 (H, W, 3) pixels."""
    h, w, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))
    return _png(w, h, 16, 2, rows)


def _gray16(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def _save(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _corpus() -> dict[str, bytes | None]:
    """File name -> bytes; the decoded centre pixel each kept file must give is in KEPT."""
    ramp16 = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    jpeg = _save(Image.new("RGB", (60, 40), (0, 128, 0)), "JPEG", quality=95)
    palette = Image.new("P", (20, 20))
    palette.putpalette([0, 0, 255] * 256)
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 255, 0), (0, 0, 255))]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:], duration=100,
                   loop=0)
    bomb_rows = zlib.compress(b"\x00" * (40_000 + 1) * 4)  # 4 rows of a 40000 x 40000 image
    return {
        "good.jpg": jpeg,
        "truncated.jpg": jpeg[:len(jpeg) // 2],
        "truncated.png": _save(Image.new("RGB", (64, 64), (9, 9, 9)), "PNG")[:60],
        "zero_bytes.jpg": b"",
        "not_an_image.jpg": b"this is a text file with a .jpg name\n" * 20,
        "html.png": b"<html><body>404 Not Found</body></html>",
        # 1.6 G pixels claimed by a 100-byte file: PIL's decompression-bomb guard refuses it.
        "bomb.png": _png(40_000, 40_000, 8, 0, b"", idat=bomb_rows),
        "cmyk.jpg": _save(Image.new("CMYK", (40, 30), (255, 0, 0, 0)), "JPEG"),
        "rgba.png": _save(Image.new("RGBA", (30, 50), (255, 0, 0, 128)), "PNG"),
        "palette.png": _save(palette, "PNG", transparency=0),
        "animated.gif": animated.getvalue(),
        "one_pixel.png": _save(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
        "gray16.png": _gray16(ramp16),
        "gray16_mid.png": _gray16(np.full((8, 8), 0x8000)),
        "rgb48.png": _rgb48(np.broadcast_to(np.array([65535, 0x8080, 0], np.uint16), (8, 8, 3))),
        # 32-bit float TIFFs (PIL mode F): 0..1 and 0..255 ranges, and one of no known range.
        "float01.tif": _save(Image.fromarray(np.full((8, 8), 0.5, np.float32)), "TIFF"),
        "float255.tif": _save(Image.fromarray(np.full((8, 8), 200.0, np.float32)), "TIFF"),
        "float_range.tif": _save(Image.fromarray(np.full((8, 8), 1000.0, np.float32)), "TIFF"),
    }


# Centre pixel of each file that must be kept (stored size 73 for input 64).
KEPT = {
    "good.jpg": ((0, 128, 0), 3),
    "cmyk.jpg": ((0, 255, 255), 3),  # cyan
    "rgba.png": ((255, 0, 0), 0),  # alpha dropped
    "palette.png": ((0, 0, 255), 0),
    "animated.gif": ((255, 255, 0), 0),  # the first frame
    "one_pixel.png": ((10, 200, 30), 0),
    "gray16.png": ((128, 128, 128), 2),  # middle of a 0..65535 ramp
    "gray16_mid.png": ((128, 128, 128), 0),  # 0x8000 * 255 / 65535 = 127.5 -> 128
    "rgb48.png": ((255, 128, 0), 0),
    "float01.tif": ((128, 128, 128), 0),  # 0.5 * 255 = 127.5 -> 128, not black
    "float255.tif": ((200, 200, 200), 0),
}
SKIPPED = {"truncated.jpg", "truncated.png", "zero_bytes.jpg", "not_an_image.jpg", "html.png",
           "bomb.png", "float_range.tif"}


def test_corrupt_input_corpus_skips_exactly_the_broken_files_and_decodes_the_rest(tmp_path,
                                                                                 caplog):
    corpus = _corpus()
    assert set(corpus) == set(KEPT) | SKIPPED
    for i, (name, blob) in enumerate(sorted(corpus.items())):
        folder = tmp_path / "train" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(blob)
    with caplog.at_level(logging.WARNING):
        images = data.load_split(str(tmp_path), "train", 64, progress=False)
    names = [Path(p).name for p in images.paths]
    assert sorted(names) == sorted(KEPT)
    assert images.skipped == len(SKIPPED) and f"skipped {len(SKIPPED)}" in caplog.text
    assert images.images.shape == (len(KEPT), 73, 73, 3) and images.images.dtype == np.uint8
    for path, image, label in zip(images.paths, images.images, images.labels):
        want, tol = KEPT[Path(path).name]
        np.testing.assert_allclose(image[36, 36], want, atol=tol, err_msg=path)
        assert images.class_names[label] == Path(path).parent.name


def test_16_bit_grayscale_png_is_scaled_to_8_bits_not_clipped_white(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 73).round().astype(np.uint16), (73, 1))
    (tmp_path / "ramp.png").write_bytes(_gray16(ramp))
    image = data.load_image_files([tmp_path / "ramp.png"], 64)[0]
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    np.testing.assert_allclose(image[0, :, 0], ramp[0] / 257, atol=1)  # not 255 everywhere
    assert image.min() == 0 and image.max() == 255


# ---------------------------------------------------------------- classes of each split

def _folder(root: Path, layout: dict[str, tuple[str, ...]], n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(
                    root / split / name / f"{i}.png")
    return root


def test_val_labels_follow_the_training_classes_and_missing_ones_warn(tmp_path, caplog):
    root = _folder(tmp_path, {"train": ("a", "b", "c"), "val": ("b", "c")})
    train = data.load_split(str(root), "train", 64, progress=False)
    with caplog.at_level(logging.WARNING):
        val = data.load_split(str(root), "val", 64, progress=False, classes=train.class_names)
    assert val.class_names == ("a", "b", "c")
    assert val.labels.tolist() == [1] * 4 + [2] * 4  # not [0]*4 + [1]*4 (val's own list)
    assert "has no images of 1 training class(es): a" in caplog.text


def test_class_index_map():
    np.testing.assert_array_equal(data.class_index_map(("a", "b", "c"), ("c", "a"), "val"), [2, 0])
    with pytest.raises(ValueError, match=r"class 'z' of d \[val\] is not a training class; the "
                                         r"model only knows the 2 classes of the training split "
                                         r"\(a, b\)"):
        data.class_index_map(("a", "b"), ("a", "z"), "d [val]")


def _run(root, **kwargs):
    return RunSpec(TINY, training.TrainConfig(epochs=1, batch_size=4), DataSpec(str(root), **kwargs))


def test_training_refuses_a_val_class_it_cannot_predict(tmp_path):
    root = _folder(tmp_path / "d", {"train": ("a", "b"), "val": ("b", "x")})
    with pytest.raises(ValueError, match=r"class 'x' of .* \[val\] is not a training class"):
        trainer.fit(_run(root), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_training_refuses_a_single_class(tmp_path):
    root = _folder(tmp_path / "d", {"train": ("a",), "val": ("a",)})
    with pytest.raises(ValueError, match=r"has 1 class\(es\) \(a\); a classifier needs at least 2"):
        trainer.fit(_run(root), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
