"""Prepared stores: each split decoded once, at the stored size, into ArrayRecord shards.

Decoding full-size JPEGs and resizing them is the slow part of an input pipeline
(about 350 img/s per core on ImageNet, FACTS.md); the same images re-encoded at
256 px decode at about 2,100 img/s per core. ``prepare`` therefore does the resize
once: every image becomes the centre S x S square of data.decode_square (S =
data.stored_size(input_size)), re-encoded as a JPEG (quality JPEG_QUALITY), in
ArrayRecord shards that Grain (zfjax.inputs.loader) reads by random access.

A store folder holds::

    prepare.json                    what is being prepared (source, size, limit); a
                                    store is never reused for other settings
    train-00000.array_record ...    records (encode_record); group_size 1 for random access
    train-00000.json                sidecar of a finished shard: count, failures
    train-00000.sum.npy             float64 (S, S, 3) pixel sum of the shard (for the mean)
    mean.npy                        float32 (S, S, 3) training mean image
    manifest.json                   written LAST, atomically: only a store with a
                                    manifest is complete (open_store refuses others);
                                    it records each shard's bytes and CRC-32
    .prepare.lock                   flock held by the preparation writing the store

Shards are written under a temporary name and renamed when closed, and a shard
counts as done only once its sidecar exists, so ``prepare`` run again after an
interruption keeps the finished shards and redoes the rest (``restart=True``
starts over). Labels of every split index the training split's class names.
Unreadable images are skipped and counted in the manifest.

Damage is caught without reading the whole store at each start: ``open_store``
compares every shard's size with the manifest (a missing or truncated shard); a
flipped byte fails ArrayRecord's own hashes when its record is read, and
``Store.source`` turns that into a DamagedStore naming the shard (found by its
CRC-32). ``prepare`` run again on the store (prepare.py verifies every CRC-32)
prepares the damaged shards again and keeps the rest.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from zfjax import artifacts, interrupts, programs
from zfjax.inputs import data
from zfjax.progress import bar as progress_bar

FORMAT = "zfjax-store-1"
MANIFEST, PARAMS, MEAN = "manifest.json", "prepare.json", "mean.npy"
LOCK = ".prepare.lock"  # held by the preparation writing the store (never deleted)
JPEG_QUALITY = 90
SHARD_SIZE = 1024  # images per shard (and per unit of work handed to a process)
SPLITS = ("train", "val")
_HEADER = struct.Struct("<iI")  # label int32, id length uint32; then id bytes, then JPEG


class StoreError(ValueError):
    """A store folder that is incomplete or was prepared with other settings."""


class DamagedStore(StoreError):
    """A shard of a complete store is missing, truncated or corrupt; the message names
    it and the command that prepares it again."""


# ---------------------------------------------------------------------------- records

def encode_record(image: np.ndarray, label: int, example_id: str,
                  quality: int = JPEG_QUALITY) -> bytes:
    """One record: label (int32), id (UTF-8; a file name that is not valid UTF-8 keeps
    its bytes, os.fsencode) and the uint8 (S, S, 3) image as JPEG."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    key = os.fsencode(example_id)
    return _HEADER.pack(label, len(key)) + key + buf.getvalue()


def decode_record(record: bytes, size: int) -> tuple[np.ndarray, int, str]:
    """Inverse of encode_record: (uint8 (size, size, 3), label, id). Decoded with
    data.decode_square, the decoder of the in-memory path."""
    label, n = _HEADER.unpack_from(record)
    start = _HEADER.size + n
    example_id = os.fsdecode(record[_HEADER.size:start])
    image = data.decode_square(record[start:], size)
    if isinstance(image, Exception):
        raise ValueError(f"corrupt record {example_id!r}: {image}")
    return image, label, example_id


# ---------------------------------------------------------------------------- the store

@dataclasses.dataclass(frozen=True)
class Store:
    """A complete prepared store (see the module docstring)."""

    path: Path
    manifest: dict

    @property
    def stored_size(self) -> int:
        return int(self.manifest["stored_size"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.manifest["class_names"])

    def count(self, split: str) -> int:
        return int(self._split(split)["count"])

    def shard_paths(self, split: str) -> list[str]:
        return [str(self.path / s["file"]) for s in self._split(split)["shards"] if s["count"]]

    def labels(self, split: str) -> np.ndarray:
        """int32 (N,): the split's labels in record order (no image is read)."""
        return np.load(self.path / self._split(split)["labels_file"])

    def mean(self) -> np.ndarray:
        """float32 (S, S, 3): the training split's mean image."""
        return np.load(self.path / self.manifest["mean_file"])

    def source(self, split: str) -> "CheckedSource":
        """A grain data source over the split's records (CheckedSource)."""
        return CheckedSource(self, split)

    def damaged_shards(self, split: str | None = None, *,
                       checksums: bool = True) -> dict[str, str]:
        """{file name: what is wrong} of the shards (of split, or of every split) that
        are missing, of another size than the manifest says or (checksums) of another
        CRC-32. Shards of stores written before sizes were recorded pass unchecked."""
        damaged = {}
        for name in [split] if split else list(self.manifest["splits"]):
            for entry in self._split(name)["shards"]:
                if entry["count"] and (
                        what := _shard_damage(self.path / entry["file"], entry, checksums)):
                    damaged[entry["file"]] = what
        return damaged

    def damage(self, split: str, error: BaseException | None = None, *,
               checksums: bool = True) -> DamagedStore:
        """The one-line DamagedStore to raise when reading split failed (with error)."""
        bad = self.damaged_shards(split, checksums=checksums)
        if bad:
            what = "shard " + ", ".join(f"{f} ({why})" for f, why in bad.items())
        else:
            reason = str(error).splitlines()[0] if error and str(error) else type(error).__name__
            what = f"its {split!r} records could not be read ({reason})"
        return DamagedStore(f"store {self.path} is damaged: {what}; prepare the damaged "
                            f"shards again with: {prepare_command(self.path)}")

    def load(self, split: str, indices=None, *, progress: bool = False) -> data.ImageSet:
        """Decodes the split (or the records at `indices`) into memory."""
        source, size = self.source(split), self.stored_size
        indices = np.arange(self.count(split)) if indices is None else np.asarray(indices)
        n = len(indices)
        images = np.empty((n, size, size, 3), np.uint8)
        labels, ids = np.empty(n, np.int32), []
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool, progress_bar(
                total=n, desc=f"loading {self.path.name} [{split}]", unit="img",
                disable=not progress) as bar:
            for start in range(0, n, data.DECODE_CHUNK):
                chunk = source.__getitems__(
                    [int(i) for i in indices[start:start + data.DECODE_CHUNK]])
                for i, (img, label, ex_id) in enumerate(
                        pool.map(lambda r: decode_record(r, size), chunk), start):
                    images[i], labels[i] = img, label
                    ids.append(ex_id)
                bar.update(len(chunk))
        return data.ImageSet(images, labels, self.class_names,
                             int(self._split(split)["skipped"]), tuple(ids))

    def _split(self, split: str) -> dict:
        splits = self.manifest["splits"]
        key = split if split in splits else data.SPLIT_ALIASES.get(split, split)
        if key not in splits:
            raise StoreError(f"store {self.path} has no split {split!r}; it has "
                             f"{sorted(splits)}")
        return splits[key]


class CheckedSource:
    """The records of a store's split (grain's ArrayRecordDataSource, opened on first
    use in each process): a read that fails raises Store.damage's one-line DamagedStore
    instead of ArrayRecord's RuntimeError."""

    def __init__(self, prepared: Store, split: str):
        self.store, self.split = prepared, split
        self._source = None

    def __getstate__(self):  # sent to Grain's workers unopened
        return {**self.__dict__, "_source": None}

    def _read(self, read):
        try:
            if self._source is None:
                import grain
                self._source = grain.sources.ArrayRecordDataSource(
                    self.store.shard_paths(self.split))
            return read(self._source)
        except (RuntimeError, OSError) as e:
            raise self.store.damage(self.split, e) from None

    def __len__(self) -> int:
        return self._read(len)

    def __getitem__(self, index: int) -> bytes:
        return self._read(lambda source: source[index])

    def __getitems__(self, indices) -> list[bytes]:
        return self._read(lambda source: source.__getitems__(indices))


def _shard_damage(path: Path, entry: dict, checksums: bool) -> str | None:
    """What is wrong with a shard file against its manifest entry, or None."""
    if "bytes" not in entry:
        return None
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"{size} bytes, the manifest says {entry['bytes']}"
    if checksums and _crc32(path) != entry["crc32"]:
        return "its CRC-32 differs from the manifest's"
    return None


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            crc = zlib.crc32(block, crc)
    return crc


def prepare_command(path) -> str:
    """The prepare.py command line that prepared (and completes or repairs) the store
    at path, from its prepare.json."""
    import shlex

    params = json.loads((Path(path) / PARAMS).read_text())
    size = json.loads((Path(path) / MANIFEST).read_text()).get("input_size") \
        if (Path(path) / MANIFEST).is_file() else None
    words = ["python", "prepare.py", params["source"], str(path)]
    words += ["--size", str(size)] if size else []
    words += ["--data-dir", params["data_dir"]] if params.get("data_dir") else []
    for flag, split in (("--limit", "train"), ("--val-limit", "val")):
        if (params.get("limits") or {}).get(split):
            words += [flag, str(params["limits"][split])]
    if params.get("shard_size", SHARD_SIZE) != SHARD_SIZE:
        words += ["--shard-size", str(params["shard_size"])]
    return shlex.join(words)


def is_store(path) -> bool:
    """True if path is a complete store folder."""
    return (Path(path).expanduser() / MANIFEST).is_file()


def open_store(path) -> Store:
    """The complete store at path; StoreError if it is missing or unfinished."""
    path = Path(path).expanduser().absolute()
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        state = ("is an unfinished store (run the preparation again to complete it)"
                 if (path / PARAMS).is_file() else "holds no store")
        prepare = programs.command_line("prepare.py")
        raise StoreError(f"{path} {state}; prepare one with: {prepare} SOURCE {path}")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise StoreError(f"{manifest_path} is not a {FORMAT} manifest")
    prepared = Store(path, manifest)
    for split in manifest["splits"]:  # sizes only: a checksum would read the whole store
        if prepared.damaged_shards(split, checksums=False):
            raise prepared.damage(split, checksums=False)
    return prepared


# --------------------------------------------------------------------------- preparing

def prepare(source: str | data.DataSource, out, input_size: int, *, data_dir: str | None = None,
            limits: dict[str, int | None] | None = None, workers: int | None = None,
            shard_size: int = SHARD_SIZE, restart: bool = False, verify: bool = False,
            progress: bool = True) -> Store:
    """Prepares (or completes) the store of source's 'train' and 'val' splits in out.

    source: a TFDS name or a folder <root>/<split>/<class>/<image>, as data.load_split.
    input_size: the network input side; images are stored at data.stored_size(input_size).
    limits: {'train': n, 'val': m}: at most this many images per split (spread over
      the classes). workers: decoding processes (default: all cores).
    restart: delete what an earlier preparation left in out and start over.
    verify: check the CRC-32 of every shard of a complete store too (not only sizes).
    Returns the complete Store. A complete store with the same settings is returned
    as is, after its damaged shards (Store.damaged_shards) are prepared again; one
    with other settings raises StoreError, as do a destination that is a file, not
    writable, not empty without a store, or being prepared by another process, and a
    write that fails (disk full): one line each, leaving no partly written file.
    """
    out = Path(out).expanduser().absolute()
    _check_destination(out, restart)
    created = not out.exists()
    try:
        with _locked(out):
            return _prepare(source, out, input_size, data_dir=data_dir, limits=limits,
                            workers=workers, shard_size=shard_size, restart=restart,
                            verify=verify, progress=progress)
    except BaseException as e:
        if created:
            _remove_if_unstarted(out)
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            # (FileNotFoundError: a source that is not there says so itself)
            raise StoreError(_write_failure(out, e)) from None
        raise


def _remove_if_unstarted(out: Path) -> None:
    """Removes out, a folder this preparation made, if it failed before any shard was
    finished (e.g. a source that does not exist): no store folder of one prepare.json."""
    try:
        if any(out.glob("*-[0-9][0-9][0-9][0-9][0-9].json")):
            return
        for p in out.iterdir():
            if (_WRITTEN.fullmatch(p.name) or p.name == LOCK) and p.is_file():
                p.unlink()
        out.rmdir()  # only if nothing else is left
    except OSError:
        pass


def _check_destination(out: Path, restart: bool) -> None:
    """Raises StoreError unless out is (or can become) a folder prepare may write a
    store into; creates nothing."""
    problem = artifacts.unwritable(out)
    if problem:
        existing, why = problem
        if why == "is a file":
            raise StoreError(f"{existing} is a file, not a folder; pass a folder for the store")
        raise StoreError(f"cannot write to {existing} ({why}); pass a writable store folder")
    if out.is_dir() and not ((out / PARAMS).is_file() or (out / MANIFEST).is_file()) and any(
            p.name != LOCK for p in out.iterdir()):
        if restart:
            raise StoreError(f"--restart: {out} holds no store (no {PARAMS}), so nothing was "
                             f"deleted; pass the store folder to start over, or a new folder")
        raise StoreError(f"{out} is not empty and holds no store; pass an empty or new folder")


@contextlib.contextmanager
def _locked(out: Path):
    """Creates out if needed and holds an exclusive lock on it (an flock on out/LOCK,
    dropped by the kernel when the process ends, even by kill -9) while the block runs.
    Raises StoreError naming the holder if another preparation holds it."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        with artifacts.held_lock(out / LOCK):
            yield
    except artifacts.LockHeld as e:
        raise StoreError(f"{out} is being prepared by {e.holder}; wait for it to finish, "
                         f"or pass another store folder") from None


def _write_failure(out: Path, error: OSError) -> str:
    """One line for a write into out that failed (numpy reports a full disk without
    an errno, as 'N requested and M written')."""
    import errno as errnos

    try:
        free = shutil.disk_usage(out).free
    except OSError:
        free = None
    if error.errno in (errnos.ENOSPC, errnos.EDQUOT) or (free is not None and free < 1 << 20):
        reason = "no space left on device" + (f" ({free:,} bytes free)" if free is not None
                                               else "")
        fix = "free some space, or pass a store folder on another disk"
    else:
        reason = (error.strerror or str(error)) + (f" ({error.filename})" if error.filename
                                                   else "")
        fix = "fix that"
    return (f"cannot write the store in {out}: {reason}; finished shards are kept: {fix}, "
            f"and run the same command again")


def _prepare(source: str | data.DataSource, out: Path, input_size: int, *, data_dir, limits, workers,
             shard_size, restart, verify, progress) -> Store:
    """prepare's work, in a checked and locked out."""
    source = data.resolve_source(source, data_dir)
    size = data.stored_size(input_size)
    limits = {s: (limits or {}).get(s) for s in SPLITS}
    params = {"format": FORMAT, "source": str(source), "data_dir": data_dir,
              "stored_size": size, "limits": limits, "jpeg_quality": JPEG_QUALITY,
              "shard_size": shard_size}
    if restart and out.exists():
        _clear(out)  # refuses a folder that holds no store
    if (out / PARAMS).is_file():
        found = json.loads((out / PARAMS).read_text())
        if found != params:
            raise StoreError(
                f"{out} holds a store prepared with other settings ({_diff(found, params)}); "
                f"pass another store folder, or restart to overwrite it")
        if is_store(out):
            complete = Store(out, json.loads((out / MANIFEST).read_text()))
            damaged = complete.damaged_shards(checksums=verify)
            if not damaged:
                return complete
            logging.getLogger(__name__).warning(
                "store %s: %d damaged shard(s) (%s); preparing them again", out, len(damaged),
                ", ".join(damaged))
            (out / MANIFEST).unlink()  # incomplete until the shards are redone
            for file in damaged:
                name = file.removesuffix(".array_record")
                for done in (f"{name}.json", file, f"{name}.sum.npy"):
                    (out / done).unlink(missing_ok=True)
    elif not restart and out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        raise StoreError(f"{out} is not empty and holds no store; pass an empty or new folder")
    artifacts.write_json(out / PARAMS, params)

    workers = workers or os.cpu_count() or 1
    class_names, splits = None, {}
    # spawn: the parent may hold TensorFlow's and JAX's threads, which fork would copy.
    with interrupts.watched() as watch, concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(os.getpid(),)) as pool:
        try:
            for split in SPLITS:
                items, names, total = source.items(split, limits[split])
                if class_names is None:
                    class_names = names
                items = _relabel(items, names, class_names, split)
                splits[split] = _write_split(
                    out, split, items, total, size, pool, workers, shard_size,
                    desc=f"preparing {Path(str(source)).name} [{split}]", progress=progress,
                    watch=watch)
        except KeyboardInterrupt:
            pool.shutdown(wait=True, cancel_futures=True)  # shards being written finish
            finished = sum(1 for _ in out.glob("*-[0-9][0-9][0-9][0-9][0-9].json"))
            raise Interrupted(f"interrupted; {finished} finished shard(s) are kept in {out}; "
                              f"run the same command again to continue") from None
    train = splits["train"]
    total = sum((np.load(out / s["sum_file"]) for s in train["shards"] if s["count"]),
                np.zeros((size, size, 3)))
    artifacts.atomic_write(out / MEAN,
                             lambda f: np.save(f, (total / train["count"]).astype(np.float32)))
    manifest = {"format": FORMAT, "source": str(source), "stored_size": size,
                "input_size": input_size, "jpeg_quality": JPEG_QUALITY,
                "class_names": list(class_names), "mean_file": MEAN, "splits": splits}
    artifacts.write_json(out / MANIFEST, manifest)  # last: now the store is complete
    return Store(out, manifest)


class Interrupted(KeyboardInterrupt):
    """prepare was stopped with Ctrl-C; the message says what is kept and how to go on."""


def _diff(found: dict, wanted: dict) -> str:
    return ", ".join(f"{k} {found.get(k)!r} here, {wanted[k]!r} asked"
                     for k in wanted if found.get(k) != wanted[k])


# Every file name prepare writes (temporary names included), and nothing else: a shard
# and its sidecars, a split's labels, the mean, prepare.json, manifest.json.
_WRITTEN = re.compile(
    r"\.?(?:(?:%s)-(?:\d{5}(?:\.array_record|\.json|\.sum\.npy|\.sum\.tmp\.npy)|labels\.npy)"
    r"|%s|%s|%s)(?:\.tmp|\..+\.tmp|\.tmp\.npy)?" % (
        "|".join(SPLITS), *(re.escape(n) for n in (MANIFEST, PARAMS, MEAN))))


def _clear(out: Path) -> None:
    """Deletes the files prepare wrote in out, and nothing else (no folder, no file of
    another name). Raises StoreError, deleting nothing, if out is not a folder with a
    store in it (finished or not): --restart pointed at the wrong folder."""
    if not out.is_dir():
        return  # nothing to delete; prepare says what is wrong with out
    if not ((out / PARAMS).is_file() or (out / MANIFEST).is_file()):
        if any(p.name != LOCK for p in out.iterdir()):
            raise StoreError(f"--restart: {out} holds no store (no {PARAMS}), so nothing was "
                             f"deleted; pass the store folder to start over, or a new folder")
        return
    for p in out.iterdir():
        if _WRITTEN.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            p.unlink()


def _relabel(items, names, train_names, split):
    """Re-indexes labels from this split's class list to the training split's
    (data.class_index_map: an unknown class is an error, a missing one a warning)."""
    index = data.class_index_map(tuple(train_names), tuple(names), f"split {split!r}")
    return ((src, int(index[label]), ex_id) for src, label, ex_id in items)


def _write_split(out: Path, split, items, total, size, pool, workers, shard_size, desc,
                 progress, watch):
    """Writes the split's shards in the process pool; returns its manifest entry.
    Raises KeyboardInterrupt between shards once watch (interrupts.Watch) saw Ctrl-C."""
    shards, failures = [], []
    with progress_bar(total=total, desc=desc, unit="img", disable=not progress,
                      smoothing=0.1) as bar:
        pending = set()

        def collect(limit):  # wait until at most `limit` shards are in flight
            while len(pending) > limit:
                finished, _ = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for f in finished:
                    pending.discard(f)
                    info = f.result()
                    bar.update(info["count"] + len(info["failures"]))
                watch.check()

        items, index = iter(items), 0
        while chunk := _take(items, shard_size):
            name = f"{split}-{index:05d}"
            if (out / f"{name}.json").is_file():  # finished by an earlier run
                bar.update(len(chunk))
            else:
                collect(2 * workers - 1)  # bounds the memory of TFDS bytes in flight
                pending.add(pool.submit(_write_shard, str(out), name, chunk, size))
            shards.append(name)
            index += 1
        collect(0)
    entries, count, labels = [], 0, []
    for name in shards:
        info = json.loads((out / f"{name}.json").read_text())
        labels += info["labels"]
        if "crc32" not in info:  # a sidecar written before sizes and checksums were kept
            info.update(_shard_check(out / f"{name}.array_record"))
        entries.append({"file": f"{name}.array_record", "count": info["count"],
                        "sum_file": f"{name}.sum.npy", "bytes": info["bytes"],
                        "crc32": info["crc32"]})
        count += info["count"]
        failures += info["failures"]
    data.check_decoded(desc, count, failures)
    labels_file = f"{split}-labels.npy"
    artifacts.atomic_write(out / labels_file, lambda f: np.save(f, np.array(labels, np.int32)))
    return {"count": count, "skipped": len(failures), "skipped_files": failures[:1000],
            "shards": entries, "labels_file": labels_file}


def _take(items, n) -> list:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            break
    return chunk


def _start_worker(parent: int) -> None:
    """Start-up of a decoding process: Ctrl-C is left to the parent (interrupts.ignore),
    and the process ends with its parent, even one killed by kill -9 (which would leave
    it, ~220 MB, and multiprocessing's resource tracker running): on Linux by the
    kernel's parent-death signal, elsewhere by a thread polling the parent's pid."""
    import signal
    import threading
    import time

    interrupts.ignore()
    try:
        import ctypes
        set_parent_death_signal = 1  # PR_SET_PDEATHSIG, <sys/prctl.h>
        watched_by_kernel = ctypes.CDLL(None, use_errno=True).prctl(
            set_parent_death_signal, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no prctl: not Linux
        watched_by_kernel = False
    if os.getppid() != parent:  # the parent died before the signal was set
        os._exit(1)
    if not watched_by_kernel:
        def poll():
            while os.getppid() == parent:
                time.sleep(1)
            os._exit(1)
        threading.Thread(target=poll, daemon=True).start()


def _write_shard(out: str, name: str, chunk, size: int) -> dict:
    """Decodes chunk [(source, label, id)] into out/name.array_record (in a worker process);
    writes the pixel sum and, last, the sidecar. Returns the sidecar's contents."""
    from array_record.python import array_record_module

    out = Path(out)
    final, tmp = out / f"{name}.array_record", out / f".{name}.array_record.tmp"
    total = np.zeros((size, size, 3), np.float64)
    failures, labels, count = [], [], 0
    try:
        writer = array_record_module.ArrayRecordWriter(str(tmp), "group_size:1,uncompressed")
        try:
            for src, label, ex_id in chunk:
                image = data.decode_square(src, size)
                if isinstance(image, Exception):
                    failures.append(f"{ex_id}: {image}")
                    continue
                writer.write(encode_record(image, label, ex_id))
                total += image
                labels.append(int(label))
                count += 1
        finally:
            writer.close()
        artifacts.atomic_write(out / f"{name}.sum.npy", lambda f: np.save(f, total))
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)  # a write that failed (disk full) leaves no shard
    info = {"count": count, "failures": failures, "labels": labels, **_shard_check(final)}
    artifacts.write_json(out / f"{name}.json", info)
    return info


def _shard_check(path: Path) -> dict:
    """What the manifest records to catch a damaged shard: its bytes and CRC-32."""
    return {"bytes": path.stat().st_size, "crc32": _crc32(path)}
