"""Shared test helpers (plain functions; fixtures live in conftest.py)."""

import functools
import os
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from zfjax import artifacts
from zfjax.inputs import data
from zfjax.nets import model, network


def random_params(config, seed=0, bias_std=0.0):
    """He-normal weights and N(0, bias_std) biases, drawn with numpy.

    No device work and no compile (model.init_params compiles its sampler on first use).
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init_params(config, jax.random.key(0)))

    def draw(path, leaf):
        if path[-1].key == "bias":
            if not bias_std:
                return np.zeros(leaf.shape, np.float32)
            return rng.normal(0, bias_std, leaf.shape).astype(np.float32)
        return (rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def write_image_folder(root, classes, per_class, *, splits=("train", "val"), shape=(80, 96),
                       seed=0, ext="png"):
    """Writes random images laid out root/<split>/<class>/<i>.<ext>; returns root.

    classes: class names, or {split: class names} to give the splits different classes.
    Channel (c % 3) of class c's images is 25 * c, so the classes can be learnt.
    """
    from pathlib import Path

    from PIL import Image

    root, rng = Path(root), np.random.default_rng(seed)
    for split in splits:
        names = classes[split] if isinstance(classes, dict) else classes
        for name in names:
            c = sorted(set(names) | set(classes.get("train", ()) if isinstance(classes, dict)
                                          else names)).index(name)
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (*shape, 3), np.uint8)
                pixels[:, :, c % 3] = 25 * c
                Image.fromarray(pixels).save(root / split / name / f"{i}.{ext}")
    return root


# The tiny network most tests share. Equal configs (and equal batch shapes: use batches of
# BATCH) share compiled programs within a process, so a test that needs no other network
# takes this one, or the session fixture tiny_network (conftest.py) with its weights.
TINY10 = network.Network(num_classes=10, image_size=64, width=0.25, init_std=None)
BATCH = 16


# ---- a tiny real run folder, as train.py leaves it -------------------------------------

TINY = network.Network(num_classes=2, image_size=64, width=0.25, init_std=None)


def write_tiny_run(root: Path, config=TINY, checkpoint_config=None) -> Path:
    """A run folder as train.py leaves it (config.json, mean.npy, orbax checkpoint 1),
    with random weights and its own 2-class image folder <root>/images/{train,val}/...

    checkpoint_config: write the weights of another config (a mismatched checkpoint).
    """
    from zfjax.train import checkpoints, training

    rng = np.random.default_rng(0)
    folder = root / "images"
    for split in ("train", "val"):
        for name in ("alpha", "beta"):
            (folder / split / name).mkdir(parents=True)
            for i in range(4):
                coarse = rng.integers(0, 256, (6, 6, 3), np.uint8)
                Image.fromarray(coarse).resize((90, 80), Image.BICUBIC).save(
                    folder / split / name / f"{name}{i}.png")
    mean = data.mean_image(data.load_split(str(folder), "train", config.image_size, progress=False))
    run = root / "run"
    tcfg = training.TrainConfig(epochs=1, batch_size=4)
    weights = checkpoint_config or config
    abstract = jax.eval_shape(functools.partial(training.init_state, weights, tcfg),
                              jax.random.key(0))
    state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract).replace(
        params=random_params(weights, bias_std=0.01))
    mgr = checkpoints.manager(run / checkpoints.CHECKPOINT_DIR)
    checkpoints.save(mgr, 1, state, {"epoch": 1, "step": 4, "metrics": {}, "plateau": {}})
    mgr.wait_until_finished()
    mgr.close()
    checkpoints.save_mean(run, mean)
    artifacts.write_json(run / checkpoints.CONFIG_FILE, {
        "model": checkpoints.config_dict(config), "train": checkpoints.config_dict(tcfg),
        "data": {"source": str(folder), "data_dir": None}, "class_names": ["alpha", "beta"]})
    return run


def write_keras3(tmp_path, layers):
    """Keras 3 ``model.save_weights('x.weights.h5')``: layers/<name>/vars/<i>; layers:
    Keras layer name -> [kernel, bias]. Returns the path of tmp_path/vgg16.weights.h5."""
    import h5py

    path = tmp_path / "vgg16.weights.h5"
    with h5py.File(path, "w") as f:
        for n, arrays in layers.items():
            g = f.create_group(f"layers/{n}/vars")
            for i, a in enumerate(arrays):
                g.create_dataset(str(i), data=a)
        f.create_group("layers/flatten/vars")
    return path


def hanging_write_shard(out, name, chunk, size):
    """zfjax.inputs.store._write_shard that waits before every shard after the second (an hour,
    or $ZFJAX_TEST_SHARD_WAIT seconds), so a test can stop a preparation at a known point
    (runs in prepare's worker processes)."""
    import time

    from zfjax.inputs import store

    if int(name.rsplit("-", 1)[1]) >= 2:
        time.sleep(float(os.environ.get("ZFJAX_TEST_SHARD_WAIT", 3600)))
    return store._write_shard(out, name, chunk, size)


def write_snapshots(run_dir, *, epochs, layers, maps=3, seed=0):
    """Per-epoch Fig. 4 snapshots (zfjax.analyses.evolution's layout) for ``maps`` maps of each layer
    of the run, with random projections and patches: what a page of evolution needs."""
    from zfjax.analyses import evolution
    from zfjax.train import checkpoints
    from zfjax.nets.receptive_field import receptive_field_size

    config = checkpoints.model_config(checkpoints.read_config(run_dir))
    rng = np.random.default_rng(seed)
    for epoch in epochs:
        snapshot = {}
        for layer in layers:
            r = receptive_field_size(config, layer)
            snapshot.update({
                f"{layer}/channels": np.arange(maps, dtype=np.int32) * 2,
                f"{layer}/values": rng.random(maps).astype(np.float32),
                f"{layer}/images": np.zeros(maps, np.int32),
                f"{layer}/positions": np.zeros((maps, 2), np.int32),
                f"{layer}/projections": rng.normal(size=(maps, r, r, 3)).astype(np.float32),
                f"{layer}/patches": rng.integers(0, 256, (maps, r, r, 3), np.uint8)})
        evolution.save_snapshot(run_dir, epoch, snapshot)


def interruptible(argv: list[str]) -> list[str]:
    """The command line that runs ``python *argv`` with Ctrl-C working, for a child a test
    stops with SIGINT: a shell starts background jobs with SIGINT ignored and children
    inherit that, so Ctrl-C would not reach them when the suite runs in the background.
    A small Python resets SIGINT and execs the real one (a preexec_fn would run Python
    between fork and exec in a multi-threaded pytest, which can deadlock)."""
    import sys

    reset = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
             "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
    return [sys.executable, "-c", reset, *argv]


def press_ctrl_c_inside_a_finalizer() -> None:
    """Sends this process SIGINT while Python runs a weakref callback, as Ctrl-C can land
    while JAX's caches are being collected. Python drops an exception raised there and
    reports it to sys.unraisablehook."""
    import signal
    import weakref

    class Collected:
        pass

    thing = Collected()
    # raise_signal runs Python's handler before it returns: inside the callback.
    ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGINT))
    del thing
    assert ref() is None


def batch_norm_params(config, params, seed=0):
    """params with every batch norm given trained-looking values (scale 0.5..1.5, shift and
    running mean N(0, 0.1^2), running var 0.5..2), so the tests see it."""
    rng = np.random.default_rng(seed)
    out = dict(params)
    for stage in network.stages(config):
        if isinstance(stage, network.BatchNorm):
            c = params[stage.name]["scale"].shape
            out[stage.name] = {"scale": rng.uniform(0.5, 1.5, c), "bias": rng.normal(0, 0.1, c),
                               "mean": rng.normal(0, 0.1, c), "var": rng.uniform(0.5, 2, c)}
            out[stage.name] = {k: v.astype(np.float32) for k, v in out[stage.name].items()}
    return out
