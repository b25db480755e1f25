"""Tests for zfjax.inputs.store and prepare.py: prepared ArrayRecord stores."""

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from zfjax.commands import prepare
from zfjax.inputs import data, store

from helpers import interruptible, write_image_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Training classes a, b, c (4 images each, plus one unreadable file); validation
    has only b and c (4 each)."""
    root = write_image_folder(tmp_path_factory.mktemp("images"),
                              {"train": "abc", "val": "bc"}, 4)
    (root / "train" / "a" / "broken.jpg").write_bytes(b"not a jpeg" * 20)
    return root


@pytest.fixture(scope="module")
def prepared(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "s"
    return store.prepare(str(folder), out, 32, shard_size=5, workers=1, progress=False)


def test_store_holds_what_the_in_memory_path_decodes(folder, prepared):
    manifest = json.loads((prepared.path / "manifest.json").read_text())
    assert manifest["stored_size"] == 37 and manifest["class_names"] == ["a", "b", "c"]
    train = manifest["splits"]["train"]
    assert train["count"] == 12 and train["skipped"] == 1
    assert "broken.jpg" in train["skipped_files"][0]
    assert [s["count"] for s in train["shards"]] == [4, 5, 3]  # 13 files in shards of 5
    assert manifest["splits"]["val"]["count"] == 8

    for split in ("train", "val"):
        ref = data.load_split(str(folder), split, 32, progress=False)
        got = prepared.load(split)
        assert got.paths == ref.paths and got.images.shape == (len(ref), 37, 37, 3)
        # JPEG q90 of random pixels: close, not equal.
        assert np.abs(got.images.astype(int) - ref.images).mean() < 12
        if split == "train":
            assert np.array_equal(got.labels, ref.labels)
            np.testing.assert_allclose(prepared.mean(), data.mean_image(ref), atol=1e-4)
    # validation labels index the TRAINING class list (b -> 1, c -> 2)
    assert prepared.load("val").labels.tolist() == [1] * 4 + [2] * 4


def test_record_round_trip():
    image = np.random.default_rng(0).integers(0, 256, (37, 37, 3), np.uint8)
    image[:] = image.mean((0, 1), keepdims=True).astype(np.uint8)  # smooth: JPEG ~exact
    back, label, ex_id = store.decode_record(store.encode_record(image, 7, "x/ü.jpg"), 37)
    assert label == 7 and ex_id == "x/ü.jpg" and np.abs(back.astype(int) - image).max() <= 2


def test_val_class_unknown_to_training_is_an_error(tmp_path):
    root = write_image_folder(tmp_path / "img", {"train": "ab", "val": "abz"}, 1)
    with pytest.raises(ValueError, match="class 'z' of split 'val' is not a training class"):
        store.prepare(str(root), tmp_path / "s", 32, workers=1, progress=False)
    assert not store.is_store(tmp_path / "s")


def test_missing_val_class_warns(folder, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        store.prepare(str(folder), tmp_path / "s", 32, workers=1, progress=False,
                      limits={"train": 3, "val": 2})
    assert "split 'val' has no images of 1 training class(es): a" in caplog.text


def test_a_complete_store_is_reused_and_other_settings_are_refused(folder, prepared, tmp_path):
    before = (prepared.path / "manifest.json").stat().st_mtime_ns
    again = store.prepare(str(folder), prepared.path, 32, shard_size=5, workers=1,
                          progress=False)
    assert again.manifest == prepared.manifest
    assert (prepared.path / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(store.StoreError, match=r"other settings \(stored_size 37 here, 73 asked"):
        store.prepare(str(folder), prepared.path, 64, shard_size=5, workers=1, progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    with pytest.raises(store.StoreError, match="not empty and holds no store"):
        store.prepare(str(folder), tmp_path / "busy", 32, workers=1, progress=False)
    with pytest.raises(store.StoreError, match="holds no store; prepare one with"):
        store.open_store(tmp_path / "busy")


_HANGING = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import helpers; "
            "from zfjax.inputs import store; store._write_shard = helpers.hanging_write_shard; "
            "from zfjax.commands import prepare; sys.exit(prepare.main(sys.argv[1:]))")


def _start_waiting_preparation(root, out, wait_s: float = 3600):
    """prepare.py root out (shards of 4, one worker) in its own process group, whose
    worker waits wait_s before each shard after the second; returns once shards 0 and 1
    are finished."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
           "JAX_PLATFORMS": "cpu", "ZFJAX_TEST_SHARD_WAIT": str(wait_s)}
    job = subprocess.Popen(interruptible(["-c", _HANGING, str(ROOT / "tests"), str(root),
                                          str(out), "--size", "64", "--workers", "1",
                                          "--no-progress", "--shard-size", "4"]),
                           env=env, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "train-00001.json").exists():
        assert job.poll() is None, job.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    return job


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_killed_preparation_never_looks_complete_and_continues(tmp_path):
    root = write_image_folder(tmp_path / "img", "abcd", 12, shape=(60, 60))
    out = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    run = lambda *extra: [sys.executable, str(ROOT / "prepare.py"), str(root), str(out),
                          "--size", "64", "--workers", "1", "--no-progress", *extra]
    # 48 training images in shards of 4; the worker hangs before shard 2, so kill the
    # whole process group (the command and its worker) once shards 0 and 1 are finished.
    job = _start_waiting_preparation(root, out)
    time.sleep(0.5)  # nothing more may finish: the worker hangs
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert job.returncode == -9, job.stderr.read()[-2000:]
    assert not store.is_store(out)
    with pytest.raises(store.StoreError, match="unfinished store"):
        store.open_store(out)
    assert sorted(p.name for p in out.glob("*.json")) == [
        "prepare.json", "train-00000.json", "train-00001.json"]
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("train-0000[01].*")}

    done = subprocess.run([*run(), "--shard-size", "4"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "store ready" in done.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("train-0000[01].*")} == kept
    resumed = store.open_store(out)
    assert resumed.count("train") == 48 and resumed.count("val") == 48
    fresh = store.prepare(str(root), tmp_path / "fresh", 64, shard_size=4, workers=2,
                          progress=False)
    for split in ("train", "val"):
        a, b = resumed.load(split), fresh.load(split)
        assert a.paths == b.paths and np.array_equal(a.images, b.images)
        assert np.array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(resumed.mean(), fresh.mean())


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_ctrl_c_finishes_the_shards_in_flight_says_so_in_one_line_and_continues(tmp_path):
    root = write_image_folder(tmp_path / "img", "ab", 12, shape=(60, 60))
    out = tmp_path / "store"
    # Ctrl-C in a terminal reaches the whole process group, the worker included, while
    # the worker spends 2 s on shard 2.
    job = _start_waiting_preparation(root, out, wait_s=2)
    time.sleep(0.3)
    os.killpg(job.pid, signal.SIGINT)
    stdout, stderr = job.communicate(timeout=120)
    finished = len(list(out.glob("train-*.json")))
    assert job.returncode == 130 and stdout == "", stderr
    assert [line for line in stderr.splitlines() if line.strip()] == [
        f"interrupted; {finished} finished shard(s) are kept in {out}; run the same command "
        f"again to continue"]
    assert finished >= 3  # shard 2 was in flight and finished
    assert not store.is_store(out)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("train-*.json")}
    done = prepare.main([str(root), str(out), "--size", "64", "--workers", "1",
                         "--no-progress", "--shard-size", "4"])
    assert done == 0 and store.open_store(out).count("train") == 24
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("train-*.json")
            if p.name in kept} == kept


def test_tfds_source(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6), tempfile.TemporaryDirectory() as d:
        s = store.prepare("imagenette/160px-v2", tmp_path / "s", 32, data_dir=d, workers=1,
                          progress=False)
    assert s.count("train") == 6 and len(s.class_names) == 10
    images = s.load("train")
    assert images.images.shape == (6, 37, 37, 3) and images.images.std() > 0
    assert s.mean().shape == (37, 37, 3)


def test_prepare_command_errors(tmp_path, capsys):
    assert prepare.main([str(tmp_path / "nowhere"), str(tmp_path / "s"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: image folder") and "<root>/<split>/<class>/<image>" in err
    assert not (tmp_path / "s").exists()  # the folder it made for the store is gone again
    with pytest.raises(SystemExit) as exit_:  # numbers are checked at parse time (argtypes)
        prepare.main(["x", str(tmp_path / "s"), "--size", "0"])
    assert exit_.value.code == 2
    assert ("prepare.py: error: argument --size: must be an integer from 64 to 1024, got '0'"
            in capsys.readouterr().err)


def test_restart_replaces_only_what_prepare_wrote(folder, tmp_path):
    out = tmp_path / "s"
    store.prepare(str(folder), out, 32, shard_size=5, workers=1, progress=False)
    (out / "notes.txt").write_text("mine")
    (out / "train-notes.txt").write_text("mine too")  # names like prepare's, not its files
    (out / "val-extra").mkdir()
    (out / "val-extra" / "1.png").write_bytes(b"x")
    with pytest.raises(store.StoreError, match="other settings"):
        store.prepare(str(folder), out, 64, shard_size=5, workers=1, progress=False)
    again = store.prepare(str(folder), out, 64, shard_size=5, workers=1, progress=False,
                          restart=True)
    assert again.stored_size == 73 and again.load("train").images.shape == (12, 73, 73, 3)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "train-notes.txt").read_text() == "mine too"
    assert (out / "val-extra" / "1.png").read_bytes() == b"x"
    assert sorted(p.name for p in out.glob("train-*.array_record")) == [
        "train-00000.array_record", "train-00001.array_record", "train-00002.array_record"]


def test_restart_refuses_a_folder_that_holds_no_store_and_deletes_nothing(folder, tmp_path,
                                                                         capsys):
    images = write_image_folder(tmp_path / "images", "ab", 2)  # train/, val/ and a note
    (images / "train-notes.txt").write_text("mine")
    before = sorted(str(p.relative_to(images)) for p in images.rglob("*"))
    code = prepare.main([str(folder), str(images), "--size", "64", "--restart", "--workers",
                         "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err == (f"error: --restart: {images} holds no store (no prepare.json), "
                                 f"so nothing was deleted; pass the store folder to start over, "
                                 f"or a new folder\n")
    assert sorted(str(p.relative_to(images)) for p in images.rglob("*")) == before
    # an empty folder, or a new one, is fine to restart into
    (tmp_path / "empty").mkdir()
    assert store.prepare(str(folder), tmp_path / "empty", 32, workers=1, progress=False,
                         restart=True).count("train") == 12


def _damage(shard: Path, how: str) -> None:
    if how == "deleted":
        shard.unlink()
    elif how == "truncated":
        shard.write_bytes(shard.read_bytes()[:-100])
    else:  # one byte flipped inside the first record's JPEG: the size is right
        raw = bytearray(shard.read_bytes())
        raw[raw.index(b"\xff\xd9") - 100] ^= 0xFF  # (ArrayRecord pads the file with zeros)
        shard.write_bytes(raw)


@pytest.mark.parametrize("how", ["deleted", "truncated", "flipped"])
def test_a_damaged_shard_is_named_in_one_line_and_prepare_redoes_only_it(folder, prepared,
                                                                        tmp_path, how):
    import shutil

    from zfjax.inputs import loader

    out = tmp_path / "s"
    shutil.copytree(prepared.path, out)
    before = store.open_store(out).load("train")
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("train-0000[02].*")}
    _damage(out / "train-00001.array_record", how)
    fix = (f"prepare the damaged shards again with: python prepare.py {folder} {out} --size 32 "
           f"--shard-size 5")
    if how != "flipped":  # open_store checks every shard's size
        with pytest.raises(store.DamagedStore) as caught:
            store.open_store(out)
    else:  # caught when read: by the reader in memory, or by a Grain worker mid-epoch
        with pytest.raises(store.DamagedStore) as caught:
            store.open_store(out).load("train")
        feed = loader.Streamed(store.open_store(out), "train", workers=1, threads=1)
        with pytest.raises(store.DamagedStore, match="train-00001.array_record"):
            list(feed.train(4, 32, seed=0, epoch=0))
    size = (prepared.path / "train-00001.array_record").stat().st_size
    why = {"deleted": "missing", "flipped": "its CRC-32 differs from the manifest's",
           "truncated": f"{size - 100} bytes, the manifest says {size}"}[how]
    assert str(caught.value).startswith(
        f"store {out} is damaged: shard train-00001.array_record ({why})")
    assert str(caught.value).endswith(fix) and "\n" not in str(caught.value)

    # prepare.py passes verify=True: the CRC-32 of every shard, not only its size
    store.prepare(str(folder), out, 32, shard_size=5, workers=1, progress=False, verify=True)
    again = store.open_store(out).load("train")
    assert again.paths == before.paths and np.array_equal(again.images, before.images)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("train-0000[02].*")} == kept


def test_a_store_without_sizes_and_checksums_still_opens(prepared, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(prepared.path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            del shard["bytes"], shard["crc32"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert store.open_store(old).load("val").images.shape == (8, 37, 37, 3)


def test_file_names_that_are_not_utf8_are_kept():
    image = np.zeros((37, 37, 3), np.uint8)
    name = os.fsdecode(b"train/a/\xff\xfe.png")  # as os.listdir gives it
    assert store.decode_record(store.encode_record(image, 1, name), 37)[2] == name


def _one_line_error(capsys, argv) -> str:
    assert prepare.main(argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    return err[len("error: "):-1]


def test_unusable_destinations_are_refused_in_one_line_creating_nothing(folder, tmp_path,
                                                                       capsys, monkeypatch):
    args = ["--size", "64", "--workers", "1", "--no-progress"]
    (tmp_path / "file").write_text("mine")
    for dest in (tmp_path / "file", tmp_path / "file" / "store"):
        assert _one_line_error(capsys, [str(folder), str(dest), *args]) == (
            f"{tmp_path / 'file'} is a file, not a folder; pass a folder for the store")
    assert (tmp_path / "file").read_text() == "mine"
    # (a read-only mount; the tests may run as root, whom permissions do not stop)
    monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result((0,) * 8 + (os.ST_RDONLY, 0)))
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    assert _one_line_error(capsys, [str(folder), str(tmp_path / "ro" / "s"), *args]) == (
        f"cannot write to {tmp_path} (read-only file system); pass a writable store folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_second_preparation_of_the_same_store_is_refused(folder, tmp_path, capsys):
    out = tmp_path / "s"
    with store._locked(out):  # as a running prepare.py holds it
        assert _one_line_error(capsys, [str(folder), str(out), "--size", "64"]) == (
            f"{out} is being prepared by pid {os.getpid()} on host {__import__('socket').gethostname()}; "
            f"wait for it to finish, or pass another store folder")
    assert [p.name for p in out.iterdir()] == [store.LOCK]


def test_a_full_disk_is_one_line_and_leaves_no_partial_shard(folder, tmp_path, capsys,
                                                            monkeypatch):
    import shutil

    def full(*_):  # numpy's own report of a full disk has no errno
        raise OSError("15987 requested and 8688 written")

    chunk = [(str(folder / "train" / "b" / f"{i}.png"), 1, f"b/{i}.png") for i in range(3)]
    monkeypatch.setattr(np, "save", full)
    with pytest.raises(OSError):
        store._write_shard(str(tmp_path), "train-00000", chunk, 37)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(store, "_prepare", lambda *a, **k: full())
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 4096))
    out = tmp_path / "s"
    assert _one_line_error(capsys, [str(folder), str(out), "--size", "64"]) == (
        f"cannot write the store in {out}: no space left on device (4,096 bytes free); "
        f"finished shards are kept: free some space, or pass a store folder on another disk, "
        f"and run the same command again")


def test_killing_prepare_ends_its_decoding_worker_and_resource_tracker(tmp_path):
    # about 10 s: a real prepare.py whose worker waits, killed with kill -9 (its children
    # are left running unless they end with their parent)
    root = write_image_folder(tmp_path / "img", "ab", 12, shape=(60, 60))
    job = _start_waiting_preparation(root, tmp_path / "store")
    children = [int(c) for c in subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True,
                                               text=True).stdout.split()]
    assert len(children) >= 2  # the decoding worker and multiprocessing's resource tracker
    os.kill(job.pid, signal.SIGKILL)
    job.wait()  # (not communicate: a worker left running would hold its pipes open)
    job.stdout.close(), job.stderr.close()
    deadline = time.time() + 20
    while (alive := [c for c in children if _running(c)]) and time.time() < deadline:
        time.sleep(0.1)
    for c in alive:  # (do not leave them to the other tests)
        os.kill(c, signal.SIGKILL)
    assert alive == []


def _running(pid: int) -> bool:
    """True while pid runs (a zombie, dead but not reaped, does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
