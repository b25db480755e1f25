"""Input pipeline: TFDS datasets or local image folders -> cached uint8 images -> batches.

Preprocessing follows Zeiler & Fergus (2014): the shorter side is resized to the
stored size S = round(input_size * 256 / 224) and the centre S x S square is kept
(uint8, in memory). The network sees crops of input_size with the per-pixel mean
image subtracted, scaled by 1 / PIXEL_SCALE:

    x = (crop - mean[same window]) / PIXEL_SCALE        float32, roughly in [-1, 1]

Training takes random crops with random horizontal flips; evaluation takes the
centre crop (or ten crops: centre and four corners, plus their flips).

Both sources (a TFDS dataset or a folder <root>/<split>/<class>/<image>) yield
encoded image bytes or file paths; everything after that is one code path, decoded
with PIL in a thread pool (PIL releases the GIL; measured faster than TF decoding on
2 cores, see bench/bench_data.py).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from zfjax.progress import bar as progress_bar

PIXEL_SCALE = 255.0  # network input = (pixel - mean) / PIXEL_SCALE
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
SPLIT_ALIASES = {"val": "validation", "validation": "val"}
FOLDER_LAYOUT = "<root>/<split>/<class>/<image>"
DECODE_CHUNK = 256  # images handed to the thread pool at a time

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: == on arrays is ambiguous
class ImageSet:
    """Decoded images of one split, cropped to the stored size."""
    images: np.ndarray  # uint8 (N, S, S, 3), S = stored size
    labels: np.ndarray  # int32 (N,)
    class_names: tuple[str, ...]
    skipped: int  # files that could not be decoded
    paths: tuple[str, ...]  # source path or TFDS id per image

    def __len__(self) -> int:
        return len(self.labels)


def stored_size(input_size: int) -> int:
    """Side of the cached square images: round(input_size * 256 / 224)."""
    return round(input_size * 256 / 224)


# ----------------------------------------------------------------------------- sources

FOLDER, TFDS, STORE = "folder", "tfds", "store"


@dataclasses.dataclass(frozen=True)
class DataSource:
    """A data source classified once (``resolve_source``): what the user wrote (text;
    also what str() gives, so messages and config.json keep their words), its kind
    (FOLDER: <root>/<split>/<class>/<image>; TFDS: a dataset name; STORE: a store
    prepared by prepare.py) and the TFDS data directory (TFDS only)."""

    text: str
    kind: str
    data_dir: str | None = None

    def __str__(self) -> str:
        return self.text

    @property
    def path(self) -> Path:
        """The folder of a FOLDER or STORE source, expanded and absolute."""
        return Path(self.text).expanduser().absolute()

    def items(self, split: str, limit: int | None):
        """([(image, label, name)], class_names, count or None) of a FOLDER or TFDS
        split, undecoded; at most `limit` images spread over the classes."""
        if self.kind == FOLDER:
            return _folder_items(self.text, split, limit)
        if self.kind == TFDS:
            return _tfds_items(self.text, split, self.data_dir, limit)
        raise ValueError(f"{self.text} is a prepared store; open it with store.open_store")


def resolve_source(source: str | DataSource, data_dir: str | None = None) -> DataSource:
    """The DataSource that source names (a DataSource is returned as it is): a prepared
    store, an image folder, or a TFDS dataset name. A name with a slash that is neither
    an existing folder nor a registered TFDS dataset is taken as a folder (whose
    absence its reader then reports)."""
    if isinstance(source, DataSource):
        return source
    from zfjax.inputs import store  # store imports this module

    if store.is_store(source):
        return DataSource(source, STORE)
    if _is_folder(source):
        return DataSource(source, FOLDER)
    return DataSource(source, TFDS, data_dir)


# ----------------------------------------------------------------------------- loading

def load_split(source: str, split: str, input_size: int, *, data_dir: str | None = None,
               limit: int | None = None, progress: bool = True,
               classes: Sequence[str] | None = None) -> ImageSet:
    """Loads one split of a TFDS dataset, image folder or prepared store into memory.

    source: a TFDS name ('cifar10', 'imagenette/160px-v2', 'imagenet2012'), a folder
      laid out <root>/<split>/<class>/<image>, or a store folder (prepare.py, read with
      zfjax.inputs.store's reader). An existing directory, or a path starting with '/', '.' or
      '~', or one whose first component is not a TFDS name, is a folder.
    split: 'train', 'val', ... ('val' and 'validation' are aliases of each other).
    data_dir: the TFDS data directory (TFDS sources only; never downloads).
    limit: at most this many images, spread over the classes deterministically.
    classes: number the labels by this class list (the training split's) instead of
      the split's own (see class_index_map: an unknown class is an error).
    Returns an ImageSet with images uint8 (N, S, S, 3), S = stored_size(input_size).
    """
    from zfjax.inputs import store  # store imports this module

    source = resolve_source(source, data_dir)
    if source.kind == STORE:
        return _store_split(store.open_store(source.text), split, input_size, limit=limit,
                            progress=progress, classes=classes)
    size = stored_size(input_size)
    items, class_names, total = source.items(split, limit)
    images, labels, paths, skipped = _decode_all(
        items, size, total, desc=f"{source} [{split}]", progress=progress)
    if classes is not None:
        labels = class_index_map(classes, class_names, f"{source} [{split}]")[labels]
        class_names = tuple(classes)
    return ImageSet(images, labels, class_names, skipped, paths)


def _store_split(prepared, split: str, input_size: int, *, limit: int | None, progress: bool,
                 classes: Sequence[str] | None) -> ImageSet:
    """load_split of a prepared store (zfjax.inputs.store, written by prepare.py): its records,
    already at the stored size, decoded by the store's own reader."""
    size = stored_size(input_size)
    if prepared.stored_size != size:
        raise ValueError(
            f"store {prepared.path} holds {prepared.stored_size} px images (input size "
            f"{prepared.manifest.get('input_size', '?')}); this network needs {size} px ones "
            f"(input size {input_size}): prepare a store with --size {input_size}")
    indices = spread(prepared.labels(split), limit) if limit is not None else None
    images = prepared.load(split, indices, progress=progress)
    if classes is None:
        return images
    labels = class_index_map(classes, images.class_names, f"{prepared.path} [{split}]")
    return dataclasses.replace(images, labels=labels[images.labels], class_names=tuple(classes))


def check_classes(class_names: Sequence[str], split: str) -> None:
    """Raises ValueError unless `split` (e.g. "the training split of DATA") has at least
    2 classes: with one, any classifier is 100% right and every accuracy is meaningless."""
    if len(class_names) < 2:
        raise ValueError(f"{split} has {len(class_names)} class(es) ({', '.join(class_names)}); "
                         f"a classifier needs at least 2")


def class_index_map(classes: Sequence[str], split_classes: Sequence[str],
                    split: str) -> np.ndarray:
    """Returns int32 (len(split_classes),): the index in `classes` (the training
    split's class list, which the model's outputs follow) of each class of another split.

    Labels of every split must be numbered by the training classes, never by the
    split's own list: a class missing from it would shift every label after it.
    Raises ValueError naming a class of `split` that training does not have; logs a
    warning naming the training classes `split` lacks.
    """
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in split_classes if name not in index]
    if unknown:
        raise ValueError(
            f"class {unknown[0]!r} of {split} is not a training class"
            + (f" ({len(unknown)} such classes)" if len(unknown) > 1 else "")
            + f"; the model only knows the {len(classes)} classes of the training split "
              f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})")
    missing = sorted(set(classes) - set(split_classes))
    if missing:
        log.warning("%s has no images of %d training class(es): %s", split, len(missing),
                    ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else ""))
    return np.array([index[name] for name in split_classes], np.int32).reshape(-1)


def _is_folder(source: str) -> bool:
    """True if `source` names an image folder rather than a TFDS dataset."""
    if os.path.isdir(os.path.expanduser(source)) or source.startswith(("/", ".", "~")):
        return True
    if "/" not in source:
        return False
    tfds = _import_tfds()
    try:
        tfds.builder_cls(source.split("/")[0].split(":")[0])
        return False
    except tfds.core.registered.DatasetNotFoundError:
        return True


def _folder_items(root: str, split: str, limit: int | None):
    """Returns ([(path, label, path)], class_names, count) for <root>/<split>/<class>/<image>."""
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise FileNotFoundError(
            f"image folder {root_path} does not exist; expected a folder laid out "
            f"{FOLDER_LAYOUT}, e.g. {root_path}/train/<class>/image.jpg")
    split_dir = root_path / split
    if not split_dir.is_dir() and split in SPLIT_ALIASES:
        split_dir = root_path / SPLIT_ALIASES[split]
    if not split_dir.is_dir():
        found = sorted(p.name for p in root_path.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"split folder {root_path / split} does not exist (found: {found or 'nothing'}); "
            f"expected a folder laid out {FOLDER_LAYOUT}")
    class_names = tuple(sorted(
        e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")))
    files, labels = [], []
    for label, name in enumerate(class_names):
        names = sorted(e.name for e in os.scandir(split_dir / name) if e.is_file()
                       and not e.name.startswith(".")
                       and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
        files += [str(split_dir / name / f) for f in names]
        labels += [label] * len(names)
    if not files:
        raise FileNotFoundError(
            f"no images found in {split_dir}; expected a folder laid out {FOLDER_LAYOUT}")
    keep = spread(np.array(labels), limit) if limit is not None else range(len(files))
    items = [(files[i], labels[i], files[i]) for i in keep]
    return items, class_names, len(items)


def spread(labels: np.ndarray, limit: int) -> np.ndarray:
    """Sorted indices of at most `limit` items taken round-robin over the classes."""
    rank = np.zeros(len(labels), np.int64)  # position of each item within its class
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
    return np.sort(np.lexsort((labels, rank))[:limit])


def _import_tfds():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TF's C++ info/warning banner
    import tensorflow as tf
    try:
        tf.config.set_visible_devices([], "GPU")  # keep TF off the accelerator JAX uses
    except RuntimeError:  # TF already initialised its devices
        pass
    import tensorflow_datasets as tfds
    return tfds


def download_tfds(name: str, data_dir: str | None = None) -> None:
    """Downloads and prepares TFDS dataset `name` into data_dir unless it is prepared
    already (train.py does this for a preset's dataset unless --offline). Datasets that
    need a manual download (imagenet2012) are left to _tfds_items' message. Raises
    FileNotFoundError saying what to do when the download fails (e.g. no network)."""
    tfds = _import_tfds()
    try:
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError:
        return  # load_split's own message names the problem
    if builder.is_prepared() or builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        return
    log.warning("TFDS dataset %s is not prepared in %s: downloading and preparing it (once)",
                name, builder.data_dir_root)
    try:
        builder.download_and_prepare()  # TFDS shows its own progress bars
    except ImportError as e:  # an incomplete install, not the network
        raise ValueError(
            f"TFDS cannot prepare {name!r}: Python module {e.name or str(e)!r} is not "
            f"installed; pip install -r requirements.txt (in the zfjax folder)") from None
    except Exception as e:  # no network, a proxy, a full disk: say what happened, no trace
        raise FileNotFoundError(
            f"could not download TFDS dataset {name!r} into {builder.data_dir_root} "
            f"({type(e).__name__}: {str(e)[:200]}); on a machine without network, prepare "
            f"it elsewhere (tfds build {name} --data_dir DIR) and pass --data-dir DIR, or use "
            f"a local image folder laid out {FOLDER_LAYOUT} (--data /path/to/folder)") from None


def _tfds_items(name: str, split: str, data_dir: str | None, limit: int | None):
    """Returns (iterator of (encoded bytes, label, id), class_names, expected count)."""
    tfds = _import_tfds()
    try:
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"{name!r} is neither an existing folder nor a TFDS dataset name; pass a TFDS "
            f"name (e.g. 'imagenette/160px-v2') or a folder laid out {FOLDER_LAYOUT}") from None
    info = builder.info
    if not info.supervised_keys:
        raise ValueError(f"TFDS dataset {name!r} has no (image, label) supervised keys")
    image_key, label_key = info.supervised_keys
    class_names = tuple(info.features[label_key].names)
    id_key = next((k for k in ("id", "file_name") if k in info.features), None)

    manual_dir = Path(builder.data_dir_root) / "downloads" / "manual"
    if (builder.MANUAL_DOWNLOAD_INSTRUCTIONS and not builder.is_prepared()
            and manual_dir.is_dir() and any(manual_dir.iterdir())):
        # e.g. imagenet2012: preparing from the user's tar files needs no network.
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))

    # Splits are only known once prepared (mock_data serves any split name).
    base = split.split("[")[0]  # 'train[:10%]' -> 'train'
    if info.splits and base not in info.splits:
        if SPLIT_ALIASES.get(base) in info.splits:
            split = SPLIT_ALIASES[base] + split[len(base):]
        else:
            raise ValueError(f"TFDS dataset {name!r} has no split {split!r}; "
                             f"available: {sorted(info.splits.keys())}")
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False,
                                decoders={image_key: tfds.decode.SkipDecoding()})
    except AssertionError:  # TFDS's way of saying the data is not prepared
        manual = (f" (for {name}, put the files its manual download instructions name in "
                  f"{manual_dir})" if builder.MANUAL_DOWNLOAD_INSTRUCTIONS else "")
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir_root} and this "
            f"pipeline never downloads{manual}; prepare it on a machine with network "
            f"(tfds build {name} --data_dir DIR) and pass that DIR with --data-dir, or use a "
            f"local image folder laid out {FOLDER_LAYOUT} instead (--data /path/to/folder)") \
            from None

    total = info.splits[split].num_examples if info.splits else None
    if limit is not None:
        total = min(total, limit) if total is not None else limit

    def items():
        # With a limit, take at most ceil(limit / classes) per class in record order.
        quota = math.ceil(limit / len(class_names)) if limit is not None else None
        taken = np.zeros(len(class_names), np.int64)
        for i, ex in enumerate(tfds.as_numpy(ds)):
            label = int(ex[label_key])
            if quota is not None:
                if taken[label] >= quota:
                    continue
                taken[label] += 1
            ex_id = ex[id_key].decode() if id_key else f"{name}/{split}/{i}"
            yield ex[image_key], label, ex_id
            if limit is not None and taken.sum() >= limit:
                return

    return items(), class_names, total


# ---------------------------------------------------------------------------- decoding

def decode_square(src: str | bytes, size: int) -> np.ndarray | Exception:
    """Decodes one image file (a path or its bytes) to the stored square.

    Returns uint8 (size, size, 3): shorter side resized to `size`, centre square kept.

    Returns the exception instead if the file cannot be read or decoded.
    """
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4, 1/8 scale if still >= size
            if im.mode in _WIDE_MODES:
                im = _to_8bit(im)
            elif im.mode == "F":
                im = _float_to_8bit(im)
            if im.mode == "P":
                im = im.convert("RGBA")  # palette transparency converts cleanly via RGBA
            im = im.convert("RGB")  # L, CMYK, RGBA, ... -> RGB (alpha dropped)
            w, h = im.size
            m = min(w, h)
            box = ((w - m) / 2, (h - m) / 2, (w + m) / 2, (h + m) / 2)
            return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, box=box))
    except Exception as e:  # any decoder failure means "skip this file", never the epoch
        return e


# 16-bit and 32-bit integer grayscale (16-bit PNG and TIFF): PIL's convert() clips
# these to 255 instead of scaling, which turns a whole picture white.
_WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit grayscale image (modes I;16*, or I holding 16-bit values) as mode L,
    scaled by 255 / 65535 and rounded."""
    values = np.asarray(im, dtype=np.int64)
    if im.mode == "I" and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"32-bit integer image with values {values.min()}..{values.max()} "
                         f"outside 0..65535; cannot tell its range")
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))


def _float_to_8bit(im: Image.Image) -> Image.Image:
    """A 32-bit float grayscale image (mode F, e.g. a float TIFF) as mode L: values in
    0..1 scaled by 255 (PIL's convert() would clip them to 0 or 1: all black), values in
    0..255 rounded; any other range (or NaN/Inf) is an error, as its scale is unknown."""
    values = np.asarray(im, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("32-bit float image with NaN or Inf values")
    low, high = values.min(), values.max()
    if low < 0 or high > 255:
        raise ValueError(f"32-bit float image with values {low:g}..{high:g} outside 0..1 and "
                         f"0..255; cannot tell its range")
    if high <= 1:
        values = values * 255
    return Image.fromarray(np.rint(values).astype(np.uint8))


def _decode_all(items: Iterable[tuple[str | bytes, int, str]], size: int, total: int | None,
                desc: str, progress: bool):
    """Decodes (source, label, id) items in a thread pool.

    Returns (uint8 (N, size, size, 3), int32 (N,), ids, skipped).
    """
    images = np.empty((total or DECODE_CHUNK, size, size, 3), np.uint8)
    labels, ids, failures, n = [], [], [], 0
    items = iter(items)
    with ThreadPoolExecutor(os.cpu_count()) as pool, progress_bar(
            total=total, desc=f"loading {desc}", unit="img", disable=not progress) as bar:
        while chunk := list(itertools.islice(items, DECODE_CHUNK)):
            for (src, label, ex_id), img in zip(
                    chunk, pool.map(lambda item: decode_square(item[0], size), chunk)):
                bar.update()
                if isinstance(img, Exception):
                    failures.append(f"{ex_id}: {img}")
                    continue
                if n == len(images):  # more items than expected (e.g. TFDS mock data)
                    images = np.concatenate([images, np.empty_like(images)])
                images[n] = img
                labels.append(label)
                ids.append(ex_id)
                n += 1
    check_decoded(desc, n, failures)
    return images[:n], np.array(labels, np.int32), tuple(ids), len(failures)


def check_decoded(desc: str, count: int, failures: list[str]) -> None:
    """Raise ValueError when nothing of ``desc`` decoded; warn once about skipped files.

    failures: one 'id: reason' string per file that could not be decoded.
    """
    if count == 0:
        raise ValueError(f"no decodable images in {desc}"
                         + (f" ({len(failures)} failed, e.g. {failures[0]})" if failures else ""))
    if failures:
        log.warning("%s: skipped %d unreadable image file(s), e.g. %s",
                    desc, len(failures), failures[0])


def load_image_files(paths, input_size: int) -> np.ndarray:
    """Decode image files the way load_split does: uint8 (N, S, S, 3), S = stored_size.

    Unlike a split, a named file that is missing or unreadable is an error.
    """
    size = stored_size(input_size)
    out = []
    for path in paths:
        if os.path.isdir(path):
            raise ValueError(f"image {path} is a folder, not an image file; name the files "
                             f"(e.g. {os.path.join(path, '*.jpg')}), or pass a folder laid out "
                             f"{FOLDER_LAYOUT} with --data")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image {path} does not exist")
        img = decode_square(str(path), size)
        if isinstance(img, Exception):
            raise ValueError(f"cannot decode image {path}: {img}")
        out.append(img)
    return np.stack(out)


# ----------------------------------------------------------------------------- batches

def mean_image(images: ImageSet) -> np.ndarray:
    """Returns the per-pixel mean image, float32 (S, S, 3) in [0, 255] units."""
    total = np.zeros(images.images.shape[1:], np.float64)
    for start in range(0, len(images), DECODE_CHUNK):  # chunked: no float copy of the set
        total += images.images[start:start + DECODE_CHUNK].sum(0, dtype=np.float64)
    return (total / len(images)).astype(np.float32)


def crop_windows(images: np.ndarray, mean: np.ndarray, idx: np.ndarray, ys: np.ndarray,
                 xs: np.ndarray, flips: np.ndarray, size: int) -> np.ndarray:
    """Returns float32 (len(idx), size, size, 3): windows at (ys, xs), flipped where
    `flips`, minus the same windows of the mean image, / PIXEL_SCALE."""
    # A loop of slice copies measured 4x faster than one fancy-indexing gather.
    out = np.empty((len(idx), size, size, 3), np.float32)
    for k, (i, y, x, flip) in enumerate(zip(idx, ys, xs, flips)):
        crop, m = images[i, y:y + size, x:x + size], mean[y:y + size, x:x + size]
        if flip:
            crop, m = crop[:, ::-1], m[:, ::-1]
        np.subtract(crop, m, out=out[k])
        out[k] *= np.float32(1 / PIXEL_SCALE)
    return out


def _batch_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    # A spawn key keeps this stream distinct from default_rng([seed, epoch]) (the
    # permutation); default_rng([seed, epoch, 0]) would equal it.
    return np.random.default_rng(np.random.SeedSequence([seed, epoch], spawn_key=(step,)))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """int64 (n,): the order in which epoch visits the n training images."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def crop_params(seed: int, epoch: int, step: int, batch_size: int, size: int,
                input_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ys, xs int64 (B,), flips bool (B,)): step's random crop offsets and flips for
    stored size `size`, drawn from _batch_rng(seed, epoch, step)."""
    rng = _batch_rng(seed, epoch, step)
    ys, xs = rng.integers(0, size - input_size + 1, (2, batch_size))
    return ys, xs, rng.random(batch_size) < 0.5


def train_batches(images: ImageSet, mean: np.ndarray, batch_size: int, input_size: int,
                  *, seed: int, epoch: int, start_step: int = 0
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (float32 (B, input_size, input_size, 3), int32 (B,)) training batches.

    Random crops with random horizontal flips, in a shuffled order; everything is a
    pure function of (seed, epoch, step), so starting at start_step reproduces the
    rest of an uninterrupted epoch. len(images) // batch_size steps (the last partial
    batch is dropped). The reference for the trainer's on-device augmentation
    (training.augment), which sees exactly these inputs.
    """
    n, size = len(images), images.images.shape[1]
    order = epoch_order(seed, epoch, n)
    for step in range(start_step, n // batch_size):
        idx = order[step * batch_size:(step + 1) * batch_size]
        ys, xs, flips = crop_params(seed, epoch, step, batch_size, size, input_size)
        yield crop_windows(images.images, mean, idx, ys, xs, flips, input_size), images.labels[idx]


def ten_crop_windows(size: int, input_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ten crops of a stored `size` image: centre, top-left, top-right, bottom-left,
    bottom-right, then the same five flipped. Returns (ys int (10,), xs int (10,),
    flips bool (10,)): window offsets as ``crop_windows`` takes them."""
    c, e = (size - input_size) // 2, size - input_size
    ys = np.array([c, 0, 0, e, e] * 2)
    xs = np.array([c, 0, e, 0, e] * 2)
    return ys, xs, np.repeat([False, True], 5)


def eval_batches(images: ImageSet, mean: np.ndarray, batch_size: int, input_size: int,
                 *, ten_crop: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (float32 (B, input_size, input_size, 3), int32 (B,)) centre-crop batches
    in order, keeping the last partial batch. With ten_crop the images are
    (B, 10, input_size, input_size, 3), crop 0 being the centre crop."""
    for start in range(0, len(images), batch_size):
        labels = images.labels[start:start + batch_size]
        if not ten_crop:
            yield preprocess(images.images[start:start + batch_size], mean, input_size), labels
            continue
        b = len(labels)
        ys, xs, flips = ten_crop_windows(images.images.shape[1], input_size)
        idx = np.repeat(np.arange(start, start + b), 10)
        x = crop_windows(images.images, mean, idx, np.tile(ys, b), np.tile(xs, b), np.tile(flips, b),
                   input_size)
        yield x.reshape(b, 10, input_size, input_size, 3), labels


def centre_crop(x: np.ndarray, input_size: int) -> np.ndarray:
    """Returns the centre input_size x input_size window of (..., S, S, C) arrays."""
    o = (x.shape[-2] - input_size) // 2
    return x[..., o:o + input_size, o:o + input_size, :]


def preprocess(images_uint8: np.ndarray, mean: np.ndarray, input_size: int) -> np.ndarray:
    """Returns float32 (N, input_size, input_size, 3) network inputs for uint8
    (N, S, S, 3) stored-size images: centre crop minus the mean's centre crop."""
    x = centre_crop(images_uint8, input_size) - centre_crop(mean, input_size)
    x *= np.float32(1 / PIXEL_SCALE)
    return x


def to_pixels(images: np.ndarray, mean_crop: np.ndarray) -> np.ndarray:
    """Inverse of preprocess: returns uint8 images * PIXEL_SCALE + mean_crop, clipped to
    [0, 255]. mean_crop is the mean window the images were made with, e.g.
    centre_crop(mean, input_size)."""
    return np.clip(np.rint(images * PIXEL_SCALE + mean_crop), 0, 255).astype(np.uint8)
