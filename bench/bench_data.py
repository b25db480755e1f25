"""Benchmark of the input pipeline on the real image folder.

Measures decode+cache (load_split) and train_batches throughput at input sizes 224
and 112, prints a table and writes JSON with platform info.

    python bench/bench_data.py --limit 2000 --out bench/results/data.json
    python bench/bench_data.py --compare-tf   # also time TF decoding of the same files
"""

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zfjax import data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "imagenette"


def versions():
    """Returns {package: version} for the packages the pipeline uses (None if absent)."""
    out = {}
    for name in ("numpy", "pillow", "tqdm", "tensorflow-cpu", "tensorflow-datasets"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def tf_decode_seconds(paths, size):
    """Returns seconds to decode, crop and resize `paths` to (size, size) with tf.data."""
    data._import_tfds()  # imports TensorFlow with its GPUs hidden
    import tensorflow as tf

    def load(path):
        img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        h, w = tf.shape(img)[0], tf.shape(img)[1]
        m = tf.minimum(h, w)
        img = tf.image.crop_to_bounding_box(img, (h - m) // 2, (w - m) // 2, m, m)
        img = tf.image.resize(img, (size, size), antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)

    start = time.perf_counter()
    ds = tf.data.Dataset.from_tensor_slices(list(paths)).map(
        load, num_parallel_calls=tf.data.AUTOTUNE).batch(256)
    for _ in ds.as_numpy_iterator():
        pass
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="image folder root")
    parser.add_argument("--limit", type=int, default=2000, help="training images to load")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "data.json"))
    parser.add_argument("--compare-tf", action="store_true",
                        help="also time decoding the same files with tf.io + tf.data")
    args = parser.parse_args()

    rows = []
    for input_size in (224, 112):
        start = time.perf_counter()
        images = data.load_split(args.data, "train", input_size, limit=args.limit,
                                 progress=False)
        seconds = time.perf_counter() - start
        rows.append(dict(work="decode+cache (PIL, threads)", input_size=input_size,
                         batch=None, images=len(images), seconds=seconds))
        if args.compare_tf:
            seconds = tf_decode_seconds(images.paths, data.stored_size(input_size))
            rows.append(dict(work="decode (tf.io, tf.data)", input_size=input_size,
                             batch=None, images=len(images), seconds=seconds))
        mean = data.mean_image(images)
        for batch in (32, 128):
            start = time.perf_counter()
            count = sum(len(y) for _, y in data.train_batches(
                images, mean, batch, input_size, seed=0, epoch=0))
            rows.append(dict(work="train_batches", input_size=input_size, batch=batch,
                             images=count, seconds=time.perf_counter() - start))
    for row in rows:
        row["images_per_s"] = row["images"] / row["seconds"]

    print(f"{'work':30} {'input':>5} {'batch':>5} {'images':>6} {'seconds':>8} {'img/s':>8}")
    for r in rows:
        print(f"{r['work']:30} {r['input_size']:>5} {r['batch'] or '-':>5} {r['images']:>6} "
              f"{r['seconds']:>8.2f} {r['images_per_s']:>8.0f}")

    result = dict(platform=platform.platform(), python=platform.python_version(),
                  cpu_count=os.cpu_count(), versions=versions(), data=args.data,
                  limit=args.limit, rows=rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
