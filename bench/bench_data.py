"""Benchmark of the training input pipeline: one epoch streamed as train.py streams it.

Prepares FOLDER into a store (a temporary one unless --store names one to reuse),
then reads one training epoch through zfjax.inputs.loader exactly as zfjax.train.trainer does
(host batches of uint8 stored-size images plus crop parameters; the device work is
not part of this), and prints images/s, images/s per decoding worker and peak RSS
(this process, and this process plus its workers, sampled every 50 ms). Writes JSON
under bench/results/.

    python bench/bench_data.py --data ../shared/data/imagenette --size 224
    python bench/bench_data.py --data /tmp/jpegs-1000 --size 224 --workers 1 --tag 1000
    python bench/bench_data.py --data FOLDER --store /tmp/store --memory  # also in memory
    python bench/bench_data.py --make-folder /tmp/jpegs-4000 --count 4000  # 256 px JPEGs
"""

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from zfjax.inputs import data, loader, store  # noqa: E402
from common import write_results  # noqa: E402  (bench/common.py)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "imagenette"


def _tree_rss(pid: int) -> int:
    """Bytes resident in pid and all its descendants (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


class PeakRss:
    """Samples the RSS of this process tree in a thread; .peak in bytes."""

    def __enter__(self):
        self.peak, self._stop = _tree_rss(os.getpid()), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _tree_rss(os.getpid()))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def epoch_row(feed, batch, input_size, workers):
    """Reads one training epoch of feed; returns a result row."""
    with PeakRss() as rss:
        start = time.perf_counter()
        first = None
        n = 0
        for b in feed.train(batch, input_size, seed=0, epoch=1):
            n += len(b.labels)
            first = first or time.perf_counter() - start
        seconds = time.perf_counter() - start
    return {"work": f"one epoch, {feed.kind}", "workers": workers, "batch": batch,
            "images": n, "seconds": seconds, "first_batch_seconds": first,
            "images_per_s": n / seconds, "images_per_s_per_worker": n / seconds / max(workers, 1),
            "images_per_s_steady": (n - batch) / (seconds - first) if n > batch else None,
            "peak_rss_tree_mb": rss.peak / 2**20,
            "peak_rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def decode_row(prepared, count=1000):
    """The ceiling of one worker: read + decode records in one thread, no pipeline."""
    source = prepared.source("train")
    n = min(count, len(source))
    start = time.perf_counter()
    for i in range(n):
        store.decode_record(source[i], prepared.stored_size)
    seconds = time.perf_counter() - start
    return {"work": "read + decode only, one thread", "workers": 1, "images": n,
            "seconds": seconds, "images_per_s_per_worker": n / seconds}


def make_folder(source, out, count, size=256):
    """Writes `count` training and count // 4 validation images of source (spread over
    the classes), shorter side resized to `size`, as JPEG q90, laid out like source."""
    from PIL import Image
    for split, n in (("train", count), ("val", max(1, count // 4))):
        items, names, _ = data._folder_items(source, split, n)
        for path, label, _ in items:
            dst = Path(out) / split / names[label] / (Path(path).stem + ".jpg")
            dst.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as im:
                im = im.convert("RGB")
                scale = size / min(im.size)
                im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))),
                          Image.Resampling.BILINEAR).save(dst, quality=90)
    print(f"wrote {count} + {max(1, count // 4)} JPEGs ({size} px shorter side) to {out}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="image folder root (or TFDS name)")
    p.add_argument("--size", type=int, default=224, help="network input side")
    p.add_argument("--store", help="store folder to prepare into / reuse (default: temporary)")
    p.add_argument("--workers", type=int, help="decoding processes (default: cores - 1)")
    p.add_argument("--threads", type=int, default=4, help="decoding threads per process")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--limit", type=int, help="at most this many training images")
    p.add_argument("--memory", action="store_true",
                   help="also time the in-memory path (decode the split, then one epoch)")
    p.add_argument("--make-folder", metavar="OUT", help="only write a folder of 256 px JPEGs "
                                                        "made from --data, then stop")
    p.add_argument("--count", type=int, default=1000, help="images for --make-folder")
    p.add_argument("--tag", default="", help="suffix for the JSON file name")
    args = p.parse_args()
    if args.make_folder:
        make_folder(args.data, args.make_folder, args.count)
        return

    tmp = None if args.store else tempfile.TemporaryDirectory(prefix="zfjax-store-")
    out = Path(args.store or tmp.name) / "store"
    rows = []
    start = time.perf_counter()
    prepared = store.prepare(args.data, out, args.size, limits={"train": args.limit, "val": 1},
                             workers=args.workers)
    prep_seconds = time.perf_counter() - start
    rows.append({"work": "prepare (or reuse) the store", "workers": args.workers or os.cpu_count(),
                 "images": prepared.count("train") + prepared.count("val"),
                 "seconds": prep_seconds})
    rows.append(decode_row(prepared))
    workers = loader.default_workers() if args.workers is None else args.workers
    feed = loader.Streamed(prepared, "train", workers=workers, threads=args.threads)
    rows.append(epoch_row(feed, args.batch, args.size, workers))
    if args.memory:
        start = time.perf_counter()
        memory = loader.InMemory(prepared.load("train"))
        rows.append({"work": "decode the store into memory", "workers": os.cpu_count(),
                     "images": len(memory), "seconds": time.perf_counter() - start})
        rows.append(epoch_row(memory, args.batch, args.size, 1))
    for r in rows:
        r.setdefault("images_per_s", r["images"] / r["seconds"])

    print(f"{prepared.count('train')} training images, stored at {prepared.stored_size} px, "
          f"input {args.size}, batch {args.batch}")
    print(f"{'work':32} {'workers':>7} {'images':>7} {'s':>7} {'img/s':>7} {'/worker':>7} "
          f"{'steady':>7} {'RSS MB':>7} {'tree MB':>7}")
    for r in rows:
        cell = lambda k, f: (f"{r[k]:{f}}" if r.get(k) is not None else "-")
        print(f"{r['work']:32} {r['workers']:>7} {r['images']:>7} {r['seconds']:>7.2f} "
              f"{r['images_per_s']:>7.0f} {cell('images_per_s_per_worker', '>7.0f'):>7} "
              f"{cell('images_per_s_steady', '>7.0f'):>7} {cell('peak_rss_self_mb', '>7.0f'):>7} "
              f"{cell('peak_rss_tree_mb', '>7.0f'):>7}")
    name = f"data-{args.tag}.json" if args.tag else "data.json"
    path = ROOT / "bench" / "results" / name
    write_results(path, {"data": args.data, "stored_size": prepared.stored_size, "rows": rows})
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
