"""Tests for zfjax.inputs.loader and on-device augmentation: the network sees what data.py's
numpy path gives, from memory or streamed from a store, on one host or several."""

import jax
import numpy as np
import pytest

from zfjax.inputs import data, loader, store
from zfjax.nets import model, network
from zfjax.train import trainer, training

from helpers import random_params, write_image_folder

TINY = network.Network(num_classes=3, image_size=64, width=0.25, init_std=None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"), "abc", 12)


@pytest.fixture(scope="module")
def prepared(folder, tmp_path_factory):
    return store.prepare(str(folder), tmp_path_factory.mktemp("s") / "s", 64, shard_size=7,
                         workers=1, progress=False)


def _augment(mesh, batch, mean):
    fn = jax.jit(lambda *a: training.augment(*a, TINY.image_size))
    return np.asarray(fn(batch.images, mean, batch.ys, batch.xs, batch.flips))


def test_device_augmentation_equals_the_numpy_path(prepared):
    images = prepared.load("train")
    mean = data.mean_image(images)
    feed = loader.InMemory(images)
    mesh = training.make_mesh(jax.devices()[:1])
    for epoch in (0, 3):
        reference = list(data.train_batches(images, mean, 8, 64, seed=5, epoch=epoch))
        ours = list(feed.train(8, 64, seed=5, epoch=epoch))
        assert len(ours) == len(reference) == 36 // 8
        for (x, y), b in zip(reference, ours):
            np.testing.assert_array_equal(_augment(mesh, b, mean), x)  # bit for bit
            np.testing.assert_array_equal(b.labels, y)
        assert any(b.flips.any() and not b.flips.all() for b in ours)
    # starting at a step gives the rest of the epoch
    late = list(feed.train(8, 64, seed=5, epoch=3, start_step=2))
    assert len(late) == 2
    np.testing.assert_array_equal(_augment(mesh, late[0], mean), reference[2][0])


def test_streamed_batches_equal_in_memory_batches(prepared):
    memory, streamed = loader.InMemory(prepared.load("train")), loader.Streamed(
        prepared, "train", workers=0)
    a = list(memory.train(8, 64, seed=1, epoch=2, start_step=1))
    b = list(streamed.train(8, 64, seed=1, epoch=2, start_step=1))
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    ea, eb = list(memory.evaluate(16)), list(streamed.evaluate(16))
    assert [e.mask.sum() for e in eb] == [16, 16, 4]
    for x, y in zip(ea, eb):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_worker_processes_decode_the_same_batches_and_serve_every_epoch(prepared):
    memory = loader.InMemory(prepared.load("train"))
    streamed = loader.Streamed(prepared, "train", workers=2, threads=2)
    runs = []
    for epoch, start in ((1, 0), (2, 0), (3, 0), (5, 2)):
        a = list(memory.train(8, 64, seed=0, epoch=epoch, start_step=start))
        b = list(streamed.train(8, 64, seed=0, epoch=epoch, start_step=start))
        assert len(a) == len(b) == 4 - start
        for x, y in zip(a, b):
            for u, v in zip(x, y):
                np.testing.assert_array_equal(u, v)
        runs.append(streamed._run[1])
    # consecutive epochs continue one iterator (one set of worker processes); a jump
    # to another (epoch, step) starts a new one
    assert runs[0] is runs[1] is runs[2] and runs[3] is not runs[2]


def test_each_process_reads_its_share_of_every_global_batch():
    full = loader.train_indices(40, 8, seed=2, epoch=1, process=(0, 1))
    shares = [loader.train_indices(40, 8, seed=2, epoch=1, process=(p, 4)) for p in range(4)]
    assert all(s.shape == (5, 2) for s in shares)
    np.testing.assert_array_equal(np.concatenate(shares, axis=1), full)
    np.testing.assert_array_equal(full.reshape(-1), data.epoch_order(2, 1, 40))
    idx, mask = loader.eval_indices(10, 4, process=(1, 2))
    np.testing.assert_array_equal(idx, [[2, 3], [6, 7], [0, 0]])
    np.testing.assert_array_equal(mask, [[True, True], [True, True], [False, False]])


def test_eval_step_on_stored_images_equals_the_host_path(prepared):
    images = prepared.load("val")
    mean = prepared.mean()
    mesh = training.make_mesh(jax.devices()[:1])
    params = training.replicate(random_params(TINY, bias_std=0.1), mesh)
    mean_dev = training.replicate(mean, mesh)
    host = trainer.evaluate(params, training.make_eval_step(TINY, mesh), images, mean, TINY, 16,
                            mesh)
    device = trainer.evaluate_feed(params, training.make_stored_eval_step(TINY, mesh),
                                   loader.InMemory(images), mean_dev, 16, mesh)
    assert host == device
    # ten crops: the mean softmax of the ten windows data.eval_batches cuts
    x10, y = next(data.eval_batches(images, mean, 8, 64, ten_crop=True))
    logits = jax.vmap(lambda x: model.forward(TINY, params, x)[0], 1)(x10)
    probs = jax.nn.softmax(logits).mean(0)
    want = training.hit_counts(probs, y, np.ones(8, bool))
    got = training.make_stored_eval_step(TINY, mesh, ten_crop=True)(
        params, images.images[:8], images.labels[:8], np.ones(8, bool), mean_dev)
    np.testing.assert_array_equal(got, want)


def test_choose_keeps_small_sets_in_memory_and_streams_large_ones(folder, tmp_path, monkeypatch):
    train, val, mean, how = loader.choose(str(folder), 64, progress=False)
    assert isinstance(train, loader.InMemory) and how.startswith("in memory: 36 training")
    monkeypatch.setenv("ZFJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "load_split", None)  # the streamed path never decodes a split
    train, val, mean, how = loader.choose(str(folder), 64, budget=10_000, workers=0,
                                          progress=False)
    assert isinstance(train, loader.Streamed) and how.startswith("streamed from store")
    assert str(tmp_path / "cache" / "stores") in how and len(train) == 36 and len(val) == 36
    assert mean.shape == (73, 73, 3)
    # a store given as the source: in memory when it fits
    train, _, _, how = loader.choose(str(train.store.path), 64, progress=False)
    assert isinstance(train, loader.InMemory) and "from store" in how


def test_limits_apply_to_a_store_in_memory_and_streamed(folder, prepared):
    limits = {"train": 10, "val": 4}
    train, val, _, _ = loader.choose(str(prepared.path), 64, limits=limits, progress=False)
    assert isinstance(train, loader.InMemory) and (len(train), len(val)) == (10, 4)
    # the images data.load_split keeps for the same --limit of the folder itself
    for feed, split, n in ((train, "train", 10), (val, "val", 4)):
        assert feed.set.paths == data.load_split(str(folder), split, 64, limit=n,
                                                 progress=False).paths
    streamed, sval, _, how = loader.choose(str(prepared.path), 64, limits=limits, budget=1,
                                           workers=0, progress=False)
    assert isinstance(streamed, loader.Streamed) and (len(streamed), len(sval)) == (10, 4)
    assert how.startswith("streamed") and "10 training images" in how
    a = list(train.train(4, 64, seed=3, epoch=1))
    b = list(streamed.train(4, 64, seed=3, epoch=1))
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    for x, y in zip(val.evaluate(4), sval.evaluate(4)):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    assert streamed.subset(3).paths == train.subset(3).paths


def test_a_store_of_another_size_is_refused_in_one_line(folder, prepared):
    for size in (96, 128):  # crops of a wrong share of each image, or "high <= 0" mid-run
        with pytest.raises(store.StoreError) as refused:
            loader.choose(str(prepared.path), size, progress=False)
        assert str(refused.value) == (
            f"store {prepared.path} holds 73 px images (prepared for --size 64); --size {size} "
            f"needs {data.stored_size(size)} px images: train with --size 64, or prepare a "
            f"store for it with: python prepare.py {folder} NEW_STORE --size {size}")


_STREAM_AND_EXIT = """
import sys
from zfjax.inputs import loader, store
if __name__ == "__main__":  # (Grain starts its workers by spawn)
    feed = loader.Streamed(store.open_store(sys.argv[1]), "train", workers=1, threads=1)
    for epoch in range(2):
        batches = list(feed.train(8, 64, seed=0, epoch=epoch))
    paused = feed.train(8, 64, seed=0, epoch=5, start_step=1)  # left unfinished at exit
    print(len(batches), next(paused).images.shape[0])
"""


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_a_streamed_run_exits_without_leaking_shared_memory(prepared, tmp_path):
    # about 10 s: a fresh Python, whose exit is what is checked, with one Grain worker
    import os
    import subprocess
    import sys

    script = tmp_path / "stream.py"
    script.write_text(_STREAM_AND_EXIT)
    done = subprocess.run([sys.executable, str(script), str(prepared.path)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0 and done.stdout == "4 8\n", done.stderr[-2000:]
    assert "leaked shared_memory" not in done.stderr and "Exception ignored" not in done.stderr, \
        done.stderr[-2000:]
