"""Tests for zfjax.train.checkpoints: saving, keeping, loading runs, config checks, kill -9."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from zfjax import artifacts
from zfjax.nets import model, network
from zfjax.train import checkpoints, training

ROOT = Path(__file__).resolve().parents[1]
TINY = network.Network(num_classes=10, image_size=64, width=0.25, init_std=None)


def _state(config=TINY, seed=0):
    """A TrainState with random parameters (no init_params compilation needed)."""
    rng = np.random.default_rng(seed)
    shapes = model.abstract_params(config)
    params = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32), shapes)
    opt_state = training.make_optimizer(0.01, 0.9).init(params)
    return training.TrainState(np.int32(7 * seed), params, opt_state)


def _small_state(value):
    return training.TrainState(np.int32(value), {"w": np.full((3, 2), value, np.float32)},
                               {"m": np.arange(4, dtype=np.float32) * value})


def _abstract(state):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), state)


def test_keeps_the_latest_and_the_figure_epochs_and_restores_exactly(tmp_path):
    mgr = checkpoints.manager(tmp_path, max_to_keep=3)
    for epoch in range(1, 13):
        checkpoints.save(mgr, epoch, _small_state(epoch), {"epoch": epoch, "x": [epoch, 0.5]})
    mgr.wait_until_finished()
    assert mgr.all_steps() == [1, 2, 5, 10, 11, 12]
    state, meta = checkpoints.restore(mgr, 5, _abstract(_small_state(0)))
    assert meta == {"epoch": 5, "x": [5, 0.5]}
    assert int(state.step) == 5
    np.testing.assert_array_equal(state.params["w"], np.full((3, 2), 5.0))
    np.testing.assert_array_equal(state.opt_state["m"], np.arange(4) * 5.0)


def _shapes(config):
    return model.abstract_params(config)


@pytest.mark.parametrize("saved, wanted, message", [
    (dict(width=0.25), dict(width=1.0),
     "checkpoint has conv1 kernel (7,7,3,24) but config width 1.0 expects (7,7,3,96)"),
    (dict(num_classes=10), dict(num_classes=1000),
     "checkpoint has fc8 kernel (4096,10) but config num_classes 1000 (width 1.0) expects "
     "(4096,1000)"),
    (dict(image_size=112), dict(image_size=224),
     "checkpoint has fc6 kernel (2304,4096) but config image_size 224 and width 1.0 expects "
     "(9216,4096)"),
])
def test_mismatch_says_what_differs(saved, wanted, message):
    with pytest.raises(ValueError) as err:
        checkpoints.check_shapes(_shapes(network.Network(**saved)),
                                 _shapes(network.Network(**wanted)), network.Network(**wanted))
    assert str(err.value) == message


def test_missing_layers_are_named():
    found = {"conv1": {"kernel": np.zeros((7, 7, 3, 4))}}
    with pytest.raises(ValueError, match="missing conv1/bias; unexpected none"):
        checkpoints.check_shapes(found, {"conv1": {"kernel": np.zeros((7, 7, 3, 4)),
                                                   "bias": np.zeros(4)}})


def _make_run(run_dir, state, config=TINY):
    """A run folder as the trainer writes it, with one checkpoint (epoch 1)."""
    mean = np.random.default_rng(1).uniform(0, 255, (73, 73, 3)).astype(np.float32)
    checkpoints.save_mean(run_dir, mean)
    artifacts.write_json(run_dir / "config.json", {
        "model": checkpoints.config_dict(config),
        "train": checkpoints.config_dict(training.TrainConfig()),
        "data": {"source": "somewhere"}, "class_names": [str(i) for i in range(10)]})
    mgr = checkpoints.manager(run_dir / "checkpoints")
    checkpoints.save(mgr, 1, state, {"epoch": 1, "step": 9, "metrics": {"val_top1": 0.25}})
    mgr.wait_until_finished()
    return mean


def test_load_run_from_a_run_folder_or_a_checkpoint(tmp_path):
    state = _state()
    mean = _make_run(tmp_path, state)
    for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "1"):
        params, config, got_mean, record = checkpoints.load_run(path)
        assert config == TINY
        jax.tree.map(np.testing.assert_array_equal, params, state.params)
        np.testing.assert_array_equal(got_mean, mean)
        assert record.epoch == 1 and record.step == 9 and record.run_dir == tmp_path
        assert record.metrics == {"val_top1": 0.25} and record.class_names[3] == "3"
        assert record.checkpoint == tmp_path / "checkpoints" / "1"
    # The parameters are usable as they come.
    logits, _ = model.forward_jit(config, params, np.zeros((1, 64, 64, 3), np.float32))
    assert logits.shape == (1, 10)
    with pytest.raises(FileNotFoundError, match="no checkpoint for epoch 4.*available: \\[1\\]"):
        checkpoints.load_run(tmp_path, epoch=4)


def test_load_run_refuses_a_config_that_does_not_fit(tmp_path):
    _make_run(tmp_path, _state())
    stored = json.loads((tmp_path / "config.json").read_text())
    stored["model"]["width"] = 0.5
    (tmp_path / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match=r"^checkpoint has conv1 kernel \(7,7,3,24\) but config "
                                         r"width 0.5 expects \(7,7,3,48\)$"):
        checkpoints.load_run(tmp_path)
    with pytest.raises(ValueError, match="conv1 kernel"):
        checkpoints.check_checkpoint(tmp_path / "checkpoints" / "1",
                                     network.Network(num_classes=10, image_size=64, width=0.5))
    checkpoints.check_checkpoint(tmp_path / "checkpoints" / "1", TINY)  # fits: no error


SAVER = textwrap.dedent("""
    import sys, numpy as np
    from zfjax.train import checkpoints, training
    mgr = checkpoints.manager(sys.argv[1])
    def state(v):  # 100 MB of incompressible numbers: a save takes a while
        w = np.random.default_rng(v).standard_normal(25_000_000, np.float32)
        return training.TrainState(np.int32(v), {"w": w}, {"m": np.zeros(3, np.float32)})
    checkpoints.save(mgr, 1, state(1), {"epoch": 1})
    mgr.wait_until_finished()
    two = state(2)
    print("saving 2", flush=True)
    checkpoints.save(mgr, 2, two, {"epoch": 2})
    print("saved 2", flush=True)
""")


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_kill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "saving 2"
        time.sleep(0.3)  # into the save, which takes about 2 s
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("2")]
    assert leftovers and "2" not in leftovers, f"not killed mid-save: {leftovers}"
    mgr = checkpoints.manager(tmp_path, read_only=True)
    assert mgr.all_steps() == [1]
    abstract = training.TrainState(jax.ShapeDtypeStruct((), np.int32),
                                   {"w": jax.ShapeDtypeStruct((25_000_000,), np.float32)},
                                   {"m": jax.ShapeDtypeStruct((3,), np.float32)})
    state, meta = checkpoints.restore(mgr, 1, abstract)
    assert meta == {"epoch": 1}
    saved = np.random.default_rng(1).standard_normal(25_000_000, np.float32)
    np.testing.assert_array_equal(state.params["w"], saved)
    # A writing manager clears the half-written step away; saving 2 again works.
    mgr = checkpoints.manager(tmp_path)
    checkpoints.save(mgr, 2, _small_state(2), {"epoch": 2})
    mgr.wait_until_finished()
    assert mgr.all_steps() == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]


def test_checkpoints_is_reachable_after_a_plain_import_zfjax(monkeypatch):
    """Issue 15 item 20: the README's zfjax.train.checkpoints.load_run(...) after `import zfjax`."""
    import zfjax
    import zfjax.train

    # As in a fresh process: neither zfjax.train nor its checkpoints imported yet (the
    # module moved into zfjax/train/, so zfjax itself has no checkpoints attribute).
    monkeypatch.delattr(zfjax.train, "checkpoints")
    monkeypatch.delattr(zfjax, "train")
    assert zfjax.train.checkpoints.load_run is checkpoints.load_run
    with pytest.raises(AttributeError, match="has no attribute 'no_such_module'"):
        zfjax.no_such_module
