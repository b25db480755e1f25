"""The host side of training input: which images each step takes, from memory or streamed.

Every step of every epoch is a pure function of (seed, epoch, step), as in
data.train_batches: epoch e visits the training images in data.epoch_order(seed, e, n),
step k takes the k-th run of B (the global batch) of that order, and its crops and
flips are data.crop_params(seed, e, k, ...). Process p of P takes the p-th slice of
B / P of each global batch (and of its crop parameters), so each host reads only its
share. The host ships uint8 images at the stored size; crops, flips and the mean
run on the device (training.augment). A resumed run that starts an epoch at step k
therefore sees exactly the batches an uninterrupted run sees.

Two sources give the same batches:

* ``InMemory``: a data.ImageSet decoded into memory (small sets: imagenette).
* ``Streamed``: a prepared store (zfjax.inputs.store) read by Grain: random access into the
  ArrayRecord shards, decoding in worker processes (``workers``) with threads in
  each, a few batches buffered. Memory holds the epoch's index (8 bytes per image)
  and a few batches, whatever the size of the dataset.

``choose`` decides between them (and prepares a store where one is needed).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import queue
import threading
import weakref
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from zfjax import interrupts, programs
from zfjax.inputs import data, store

log = logging.getLogger(__name__)

MEMORY_FRACTION = 0.25  # default budget for an in-memory split: this share of the RAM

_OPEN: "weakref.WeakSet[Streamed]" = weakref.WeakSet()  # closed at exit (Streamed.close)


class HostBatch(NamedTuple):
    """This process's share b = B / process_count of one global batch."""
    images: np.ndarray  # uint8 (b, S, S, 3)
    labels: np.ndarray  # int32 (b,)
    ys: np.ndarray  # int32 (b,) crop offsets
    xs: np.ndarray  # int32 (b,)
    flips: np.ndarray  # bool (b,)


class EvalBatch(NamedTuple):
    images: np.ndarray  # uint8 (b, S, S, 3)
    labels: np.ndarray  # int32 (b,)
    mask: np.ndarray  # bool (b,): False on padding


def _process() -> tuple[int, int]:
    import jax
    return jax.process_index(), jax.process_count()


def share(batch_size: int, process_index: int, process_count: int) -> slice:
    """The slice of a global batch that process_index feeds."""
    per = batch_size // process_count
    return slice(process_index * per, (process_index + 1) * per)


def train_indices(n: int, batch_size: int, *, seed: int, epoch: int, start_step: int = 0,
                  process: tuple[int, int] | None = None) -> np.ndarray:
    """int64 (steps - start_step, B / P): this process's image indices of each step."""
    p, count = process or _process()
    steps = n // batch_size
    order = data.epoch_order(seed, epoch, n)[:steps * batch_size].reshape(steps, batch_size)
    return order[start_step:, share(batch_size, p, count)]


def eval_indices(n: int, batch_size: int, process: tuple[int, int] | None = None):
    """(int64 (steps, B / P) indices, bool mask): global batch k covers images
    [kB, (k+1)B), the last one padded (mask False, index 0)."""
    p, count = process or _process()
    steps = math.ceil(n / batch_size)
    idx = np.arange(steps * batch_size).reshape(steps, batch_size)[:, share(batch_size, p, count)]
    mask = idx < n
    return np.where(mask, idx, 0), mask


def _crops(seed, epoch, step, batch_size, size, input_size, process):
    ys, xs, flips = data.crop_params(seed, epoch, step, batch_size, size, input_size)
    s = share(batch_size, *process)
    return ys[s].astype(np.int32), xs[s].astype(np.int32), flips[s]


class InMemory:
    """Batches gathered from a decoded data.ImageSet."""

    kind = "in memory"

    def __init__(self, images: data.ImageSet):
        self.set = images

    def __len__(self):
        return len(self.set)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.set.class_names

    @property
    def skipped(self) -> int:
        return self.set.skipped

    def subset(self, count: int) -> data.ImageSet:
        """min(count, N) images spread over the classes (data.spread), in memory."""
        idx = data.spread(self.set.labels, count)
        s = self.set
        return data.ImageSet(s.images[idx], s.labels[idx], s.class_names, 0,
                             tuple(s.paths[i] for i in idx))

    @property
    def stored_size(self) -> int:
        return self.set.images.shape[1]

    def _gather(self, idx):
        for rows in idx:
            yield self.set.images[rows], self.set.labels[rows]

    def train(self, batch_size, input_size, *, seed, epoch, start_step=0) -> Iterator[HostBatch]:
        """This process's HostBatch of each step from start_step to the epoch's end."""
        process = _process()
        idx = train_indices(len(self), batch_size, seed=seed, epoch=epoch, start_step=start_step,
                            process=process)
        for step, (images, labels) in enumerate(self._gather(idx), start_step):
            yield HostBatch(images, labels,
                            *_crops(seed, epoch, step, batch_size, self.stored_size, input_size,
                                    process))

    def evaluate(self, batch_size) -> Iterator[EvalBatch]:
        idx, mask = eval_indices(len(self), batch_size)
        for (images, labels), m in zip(self._gather(idx), mask):
            yield EvalBatch(images, labels, m)


# Seeds the label permutation of --shuffle-labels apart from the epoch orders of the same seed.
LABEL_PERMUTATION_STREAM = 0x5A1E


def permuted_labels(labels: np.ndarray, seed: int) -> np.ndarray:
    """int32 (N,): ``labels`` permuted over the images by a permutation drawn from ``seed``
    (the same classes in the same numbers, no longer tied to the images)."""
    order = np.random.default_rng([seed, LABEL_PERMUTATION_STREAM]).permutation(len(labels))
    return np.asarray(labels, np.int32)[order]


class PermutedLabels:
    """A training feed (``InMemory`` or ``Streamed``) whose batches carry
    ``permuted_labels`` of its labels; images, order, crops and the rest are the feed's.
    The data randomisation of Adebayo et al. 2018 (train.py --shuffle-labels)."""

    def __init__(self, feed, seed: int):
        self.feed = feed
        labels = (feed.set.labels if isinstance(feed, InMemory)
                  else feed.store.labels(feed.split)[feed.records])
        self.labels = permuted_labels(labels, seed)

    def __len__(self):
        return len(self.feed)

    def __getattr__(self, name):
        return getattr(self.feed, name)

    def train(self, batch_size, input_size, *, seed, epoch, start_step=0) -> Iterator[HostBatch]:
        """The feed's batches, each image's label replaced by its permuted one."""
        idx = train_indices(len(self), batch_size, seed=seed, epoch=epoch, start_step=start_step)
        batches = self.feed.train(batch_size, input_size, seed=seed, epoch=epoch,
                                  start_step=start_step)
        for batch, rows in zip(batches, idx):
            yield batch._replace(labels=self.labels[rows])


class _ReadDecode:
    """Grain map: record index -> (uint8 image, label), read and decoded in a worker."""

    def __init__(self, source, size):
        self.source, self.size = source, size

    def __call__(self, index):
        image, label, _ = store.decode_record(self.source[int(index)], self.size)
        return image, np.int32(label)


def _stack(items):
    return np.stack([i[0] for i in items]), np.array([i[1] for i in items], np.int32)


class _TrainBatch:
    """Grain map: position epoch * steps + step -> this process's (uint8 images, labels)
    of that step, read and decoded in a worker. Caches one epoch's order at a time, so
    one iterator serves every epoch of a run."""

    def __init__(self, source, size, records, batch_size, seed, process):
        self.source, self.size, self.records = source, size, records
        n = self.n = len(records)
        self.batch_size, self.seed, self.process = batch_size, seed, process
        self.steps = n // batch_size
        self._epoch, self._rows = None, None

    def __call__(self, position):
        epoch, step = divmod(int(position), self.steps)
        if epoch != self._epoch:
            self._epoch, self._rows = epoch, train_indices(
                self.n, self.batch_size, seed=self.seed, epoch=epoch, process=self.process)
        records = self.source.__getitems__([int(i) for i in self.records[self._rows[step]]])
        decoded = [store.decode_record(r, self.size) for r in records]
        return (np.stack([d[0] for d in decoded]),
                np.array([d[1] for d in decoded], np.int32))


def _released(array: np.ndarray) -> np.ndarray:
    """A plain copy of an array a Grain worker sent in shared memory, whose block is
    unlinked now: Grain unlinks it in a background thread once the array is collected,
    which at exit comes too late (multiprocessing's resource tracker then reports
    "leaked shared_memory objects"). Copying a 25 MB batch took 5-9 ms here; sending
    it pickled through a pipe instead (no shared memory) took 150-240 ms."""
    shm = getattr(array, "shm", None)
    if shm is None:
        return array
    plain = np.array(array)
    array._unlink_on_del = False
    shm.unlink()
    return plain


@contextlib.contextmanager
def _shared_memory_freed_now():
    """Inside the block, Grain's shared-memory arrays that are collected unlink their
    blocks at once instead of in Grain's background thread, whose queue is then waited
    for (what it has not done by exit, the resource tracker reports as leaked)."""
    from grain._src.python.ipc.shared_memory_array import SharedMemoryArray

    pending = getattr(SharedMemoryArray, "_del_thread_pool", None)
    if pending is None or not hasattr(SharedMemoryArray, "_disable_async_del"):
        yield
        return
    SharedMemoryArray._disable_async_del()  # re-enabled by Grain's next worker start
    try:
        yield
    finally:
        pending.close()
        pending.join()


class Streamed:
    """Batches read from a prepared store with Grain (see the module docstring).

    records: int64 (N,) the split's record indices to feed (default: every record);
    image i of the feed is record records[i]. workers: decoding processes (0: threads
    in this process only); threads: decoding threads per process; buffer: batches each
    worker keeps ready.
    """

    kind = "streamed"

    def __init__(self, prepared: store.Store, split: str, *, records=None,
                 workers: int | None = None, threads: int = 4, buffer: int = 2):
        self.store, self.split = prepared, split
        self.records = (np.arange(prepared.count(split)) if records is None
                        else np.asarray(records, np.int64))
        self.workers = default_workers() if workers is None else workers
        self.threads, self.buffer = threads, buffer
        self._run = None  # (key, grain iterator, next (epoch, step)) kept across epochs
        _OPEN.add(self)

    def close(self) -> None:
        """Stops the worker processes of the iterator kept across epochs and frees the
        shared memory of the batches it buffered (also done at exit: Grain closing it
        while Python shuts down prints errors and leaves blocks behind)."""
        if self._run is not None:
            run, self._run = self._run, None
            with _shared_memory_freed_now():
                run[1].close()
                run[1] = None  # collected now, not at shutdown (a paused train() holds run)

    def __len__(self):
        return len(self.records)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.store.class_names

    @property
    def skipped(self) -> int:
        return int(self.store.manifest["splits"][self.split]["skipped"])

    def subset(self, count: int) -> data.ImageSet:
        """min(count, N) images spread over the classes (data.spread), in memory."""
        labels = self.store.labels(self.split)[self.records]
        return self.store.load(self.split, self.records[data.spread(labels, count)])

    @property
    def stored_size(self) -> int:
        return self.store.stored_size

    def _iterate(self, ds, workers, threads):
        """A Grain iterator over ds: `threads` threads in each of `workers` processes
        (0: in this process)."""
        import grain

        it = ds.to_iter_dataset(grain.ReadOptions(
            num_threads=threads, prefetch_buffer_size=max(threads, self.buffer)))
        if workers:
            from absl import flags  # Grain's workers read absl flags, parsed or not
            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()
            it = it.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=workers, per_worker_buffer_size=self.buffer),
                worker_init_fn=interrupts.ignore)
        return iter(it)

    def train(self, batch_size, input_size, *, seed, epoch, start_step=0) -> Iterator[HostBatch]:
        """This process's HostBatch of each step from start_step to the epoch's end.

        One Grain iterator (and its worker processes) serves consecutive epochs: asking
        for epoch e + 1 from step 0 right after epoch e ended continues it.
        """
        import grain

        process = _process()
        steps = len(self) // batch_size
        key = (batch_size, seed, process)
        if self._run is None or self._run[0] != key or self._run[2] != (epoch, start_step):
            self.close()
            ds = (grain.MapDataset.range(epoch * steps + start_step, 2**62)
                  .map(_TrainBatch(self.store.source(self.split), self.stored_size,
                                   self.records, batch_size, seed, process)))
            self._run = [key, self._iterate(ds, self.workers, self.threads), (epoch, start_step)]
        run = self._run
        for step in range(start_step, steps):
            images, labels = map(_released, next(run[1]))
            run[2] = (epoch, step + 1) if step + 1 < steps else (epoch + 1, 0)
            yield HostBatch(images, labels,
                            *_crops(seed, epoch, step, batch_size, self.stored_size, input_size,
                                    process))

    def _gather(self, idx: np.ndarray):
        """Yields (images, labels) of each row of idx, in order, decoded by threads in
        this process (no worker processes to start)."""
        import grain

        if len(idx):
            yield from self._iterate(
                grain.MapDataset.source(self.records[idx.reshape(-1)])
                .map(_ReadDecode(self.store.source(self.split), self.stored_size))
                .batch(idx.shape[1], batch_fn=_stack), workers=0,
                threads=self.threads * max(1, self.workers))

    def evaluate(self, batch_size) -> Iterator[EvalBatch]:
        idx, mask = eval_indices(len(self), batch_size)
        for (images, labels), m in zip(self._gather(idx), mask):
            yield EvalBatch(images, labels, m)


@atexit.register
def _close_streams() -> None:
    for feed in list(_OPEN):
        feed.close()


def default_workers() -> int:
    """Decoding processes for a streamed split: the cores this process may use, less one
    for the training loop."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - 1)


def prefetch(iterator, size: int = 2):
    """Runs iterator in a background thread, keeping up to `size` items ready."""
    items: queue.Queue = queue.Queue(size)
    done = object()

    def work():
        try:
            for item in iterator:
                items.put(item)
            items.put(done)
        except BaseException as e:  # handed to the consumer
            items.put(e)

    threading.Thread(target=work, daemon=True).start()
    while (item := items.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


# ------------------------------------------------------------------------- the choice

def memory_budget() -> int:
    """Default bytes a split may take in memory: MEMORY_FRACTION of the physical RAM."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 << 30
    return int(total * MEMORY_FRACTION)


def default_store_dir(source: str | data.DataSource, input_size: int, limits: dict) -> Path:
    """Where train.py keeps the store it prepares for source: $ZFJAX_CACHE (default
    ~/.cache/zfjax)/stores/<name>-<S>px[-limits]-<hash of the source path>."""
    import hashlib
    cache = Path(os.environ.get("ZFJAX_CACHE", Path.home() / ".cache" / "zfjax"))
    source = data.resolve_source(source)
    key = str(source.path) if source.kind == data.FOLDER else source.text
    digest = hashlib.sha256(f"{key}|{_limits_key(limits)}".encode()).hexdigest()[:10]
    name = Path(source.text.rstrip("/")).name.replace(":", "_") or "data"
    return cache / "stores" / f"{name}-{data.stored_size(input_size)}px-{digest}"


def _limits_key(limits: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(limits.items()) if v is not None)


def split_count(source: str | data.DataSource, split: str, *, data_dir=None, limit=None) -> int:
    """Images in a split of a folder or TFDS dataset, without decoding any."""
    _, _, total = data.resolve_source(source, data_dir).items(split, limit)
    return total if total is not None else 0


def choose(source: str | data.DataSource, input_size: int, *, data_dir=None, limits=None,
           budget=None, store_dir=None, workers=None, download=False, progress=True):
    """Returns (train, val, mean, how): the training and validation feeds, the mean
    image float32 (S, S, 3), and a sentence saying which path was taken and why.

    limits: {'train': n, 'val': m}: at most this many images of each split, spread over
    the classes, whether source is a folder, a TFDS dataset or a store (whose mean image,
    over all its training images, is kept).

    A split whose decoded size fits `budget` bytes (default memory_budget()) is held
    in memory: decoded straight from the source, or from the store if source is one.
    Otherwise the splits are streamed from a store: source itself, or one prepared
    (once) into store_dir (default: default_store_dir). download: fetch a TFDS
    source that is not prepared yet (data.download_tfds).
    """
    limits = {"train": None, "val": None, **(limits or {})}
    budget = memory_budget() if budget is None else budget
    source = data.resolve_source(source, data_dir)
    if source.kind == data.STORE:
        prepared = store.open_store(source.text)
        check_stored_size(prepared, input_size)
        records = {s: limited_records(prepared, s, limits[s]) for s in ("train", "val")}
        size, n = prepared.stored_size, len(records["train"])
        need = n * size * size * 3
        if need <= budget:
            train = InMemory(prepared.load("train", records["train"], progress=progress))
            val = InMemory(prepared.load("val", records["val"], progress=progress))
            return train, val, prepared.mean(), (
                f"in memory: {n} training images from store {prepared.path} take "
                f"{need / 2**30:.2f} GiB of a {budget / 2**30:.2f} GiB budget")
        return _streamed(prepared, workers, need, budget, records)
    if download and source.kind == data.TFDS:
        data.download_tfds(source.text, data_dir)
    size = data.stored_size(input_size)
    n = split_count(source, "train", data_dir=data_dir, limit=limits["train"])
    need = n * size * size * 3
    if need <= budget:
        train_set = data.load_split(source, "train", input_size, data_dir=data_dir,
                                    limit=limits["train"], progress=progress)
        val_set = data.load_split(source, "val", input_size, data_dir=data_dir,
                                  limit=limits["val"], progress=progress,
                                  classes=train_set.class_names)
        return InMemory(train_set), InMemory(val_set), data.mean_image(train_set), (
            f"in memory: {n} training images take {need / 2**30:.2f} GiB of a "
            f"{budget / 2**30:.2f} GiB budget")
    out = Path(store_dir) if store_dir else default_store_dir(source, input_size, limits)
    log.warning("%d training images take %.2f GiB decoded, more than the %.2f GiB budget: "
                "preparing a store in %s (once)", n, need / 2**30, budget / 2**30, out)
    prepared = _prepare_once(source, out, input_size, data_dir=data_dir, limits=limits,
                             progress=progress)
    return _streamed(prepared, workers, need, budget)


def check_stored_size(prepared: store.Store, input_size: int) -> None:
    """Raises StoreError, saying what to run, unless the store holds the image side that
    input_size crops from (data.stored_size): other sides would train on crops of the
    wrong share of each image, or fail mid-run."""
    need = data.stored_size(input_size)
    if prepared.stored_size != need:
        made_for = prepared.manifest.get("input_size")
        raise store.StoreError(
            f"store {prepared.path} holds {prepared.stored_size} px images"
            + (f" (prepared for --size {made_for})" if made_for else "")
            + f"; --size {input_size} needs {need} px images: "
            + (f"train with --size {made_for}, or " if made_for else "")
            + f"prepare a store for it with: {programs.command_line('prepare.py')} "
              f"{prepared.manifest.get('source', 'SOURCE')} NEW_STORE --size {input_size}")


def limited_records(prepared: store.Store, split: str, limit: int | None) -> np.ndarray:
    """int64 (min(limit, N),): the records of a store's split that a --limit keeps, spread
    over the classes as data.load_split spreads a folder's files (all N without limit)."""
    labels = prepared.labels(split)
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    return data.spread(labels, limit)


def _prepare_once(source, out, input_size, **kwargs) -> store.Store:
    """store.prepare on process 0 only; the other processes wait for it, then open the
    store (out must be on a file system every host sees)."""
    p, count = _process()
    if count == 1:
        return store.prepare(source, out, input_size, **kwargs)
    from jax.experimental import multihost_utils
    prepared = store.prepare(source, out, input_size, **kwargs) if p == 0 else None
    multihost_utils.sync_global_devices(f"zfjax store {out}")
    if prepared is None:
        try:
            prepared = store.open_store(out)
        except store.StoreError as e:
            raise store.StoreError(f"process {p} cannot see the store process 0 prepared ({e}); "
                                   f"put --store on a file system every host shares") from None
    return prepared


def _streamed(prepared, workers, need, budget, records=None):
    records = records or {}
    train = Streamed(prepared, "train", records=records.get("train"), workers=workers)
    val = Streamed(prepared, "val", records=records.get("val"), workers=workers)
    return train, val, prepared.mean(), (
        f"streamed from store {prepared.path} with {train.workers} decoding worker(s): "
        f"{len(train)} training images take {need / 2**30:.2f} GiB decoded, "
        f"over the {budget / 2**30:.2f} GiB budget")
