"""Tests for zfjax.train.trainer and train.py: a real smoke run, exact resume after kill -9, errors."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from zfjax import artifacts
from zfjax.analyses import evolution
from zfjax.commands import train
from zfjax.nets import network
from zfjax.train import checkpoints, trainer, training
from zfjax.figures.curves import plot_curves
from zfjax.train.run import PRESETS, DataSpec, RunSpec

ROOT = Path(__file__).resolve().parents[1]
from helpers import press_ctrl_c_inside_a_finalizer  # noqa: E402

IMAGENETTE = ROOT.parent / "shared" / "data" / "imagenette"
# The tiny network all training tests share (one compilation per process); it is
# what `train.py --preset cpu --size 64 --width 0.25` builds for 10 classes.
TINY = network.Network(num_classes=10, image_size=64, width=0.25, init_std=None,
                         first_init_std=0.01)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 10-class image folder: 5 training and 4 validation images per class."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("val", 4)):
        for c in range(10):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (80, 96, 3), np.uint8)
                pixels[:, :, c % 3] = 25 * c  # something to learn
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i}.png")
    return root


def _metrics(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_presets_step_schedule_decays_before_its_last_epoch(name):
    train_cfg = PRESETS[name].train
    assert all(1 <= step < train_cfg.epochs for step in train_cfg.lr_steps), train_cfg


def test_demo_preset_saves_the_paper_fig4_epochs_up_to_its_last():
    run = train.build_run(train.parse_args(["--preset", "demo"]))
    assert run.model.image_size > PRESETS["cpu"].model.image_size
    saved = range(1, run.train.epochs + 1)
    assert evolution.default_epochs(saved) == [1, 2, 5, 10, 20]
    assert run.data.source == (str(IMAGENETTE) if IMAGENETTE.is_dir() else "imagenette/320px-v2")


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
@pytest.mark.skipif(not IMAGENETTE.is_dir(), reason=f"real images not found at {IMAGENETTE}")
def test_smoke_run_on_real_images_learns_and_writes_everything(tmp_path):
    # He-normal conv1 too: 40 steps leave its high starting loss behind, while the
    # preset's N(0, 1e-2) conv1 starts at chance (2.30) and stays there that long.
    he = dataclasses.replace(TINY, first_init_std=None)
    run = RunSpec(he, training.TrainConfig(epochs=2, batch_size=16, lr_schedule="constant"),
                  DataSpec(str(IMAGENETTE), train_limit=320, val_limit=100, probe_count=40))
    out = trainer.fit(run, tmp_path / "run", progress=False, snapshots=evolution.EpochSnapshots(),
                      curves=plot_curves)
    metrics = _metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert metrics[1]["train_loss"] < metrics[0]["train_loss"] < 2.4, metrics
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = json.loads((out / "config.json").read_text())
    assert stored["model"] == checkpoints.config_dict(he)
    assert stored["data"]["train_images"] == 320 and len(stored["class_names"]) == 10

    # The newest checkpoint loads and scores what the run logged for it.
    params, config, mean, record = checkpoints.load_run(out)
    assert config == he and record.epoch == 2 and mean.shape == (73, 73, 3)
    assert record.metrics["val_top1"] == metrics[1]["val_top1"]
    mesh = training.make_mesh()
    from zfjax.inputs import data
    val = data.load_split(str(IMAGENETTE), "val", 64, limit=100, progress=False)
    top1, top5 = trainer.evaluate(training.replicate(params, mesh),
                                  training.make_eval_step(config, mesh), val, mean, config, 16,
                                  mesh)
    assert (top1, top5) == (metrics[1]["val_top1"], metrics[1]["val_top5"])

    snapshots = evolution.load_snapshots(out)
    assert sorted(snapshots) == [1, 2]
    assert not np.array_equal(snapshots[1]["conv1/projections"], snapshots[2]["conv1/projections"])


# Snapshots are left out of every run here to save their compilation (about a dozen
# programs): they touch neither the weights nor the metrics compared, and resuming with
# a snapshots hook is tested in test_tensorboard.py.
KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from zfjax.train import training
    from zfjax.commands import train
    train.snapshot_hook = lambda: None
    make_step = training.make_stored_train_step
    def dying(*args):  # kill -9 before step 3 of epoch 2 (6 steps an epoch)
        step = make_step(*args)
        def run(state, *rest):
            if int(training.local_value(state.step)) == 6 + 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return step(state, *rest)
        return run
    training.make_stored_train_step = dying
    sys.exit(train.main(sys.argv[1:]))
""")


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_resume_after_kill_mid_epoch_ends_where_an_uninterrupted_run_ends(folder, tmp_path,
                                                                          capsys, monkeypatch):
    # 50 images in batches of 8: 6 steps an epoch; a checkpoint after steps 2 and 4.
    args = ["--preset", "cpu", "--data", str(folder), "--size", "64", "--width", "0.25",
            "--batch", "8", "--epochs", "3", "--no-progress", "--checkpoint-every", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, *args, "--out",
                             str(tmp_path / "killed")], env=env, capture_output=True, text=True,
                            timeout=400)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert [m["epoch"] for m in _metrics(tmp_path / "killed")] == [1]
    assert (tmp_path / "killed" / "checkpoints-steps" / "8").is_dir()

    monkeypatch.setattr(train, "snapshot_hook", lambda: None)  # as in KILLED_RUN
    assert train.main([*args, "--out", str(tmp_path / "killed"), "--resume"]) == 0
    assert "resuming after epoch 1, at step 2 of epoch 2" in capsys.readouterr().out
    assert train.main([*args, "--out", str(tmp_path / "whole")]) == 0

    resumed, _, _, record = checkpoints.load_run(tmp_path / "killed")
    whole, config, _, _ = checkpoints.load_run(tmp_path / "whole")
    assert config == TINY and record.epoch == 3
    jax.tree.map(np.testing.assert_array_equal, resumed, whole)  # bit for bit
    strip = lambda ms: [{k: v for k, v in m.items() if k not in trainer.TIMING_KEYS}
                        for m in ms]
    assert strip(_metrics(tmp_path / "killed")) == strip(_metrics(tmp_path / "whole"))
    assert not list((tmp_path / "killed" / "checkpoints-steps").iterdir())  # superseded


class _PressAfterEpoch:
    """A snapshots hook that presses Ctrl-C where Python drops it, after epoch 1."""

    def make_probe(self, images, mean, config, *, seed, count):
        return None

    def __call__(self, run_dir, epoch, config, params, probe):
        if epoch == 1:
            press_ctrl_c_inside_a_finalizer()


def test_ctrl_c_that_python_drops_in_a_finalizer_still_stops_training(folder, tmp_path,
                                                                      unraisable):
    """CI once saw train.py train on for 300 s after Ctrl-C: the KeyboardInterrupt was
    raised inside a weakref callback, where Python drops it."""
    run = RunSpec(TINY, training.TrainConfig(epochs=3, batch_size=16), DataSpec(str(folder)))
    with pytest.raises(trainer.Interrupted, match=r"the last checkpoint \(epoch 1\) is .*"
                                                  r"continue with: python train.py --out"):
        trainer.fit(run, tmp_path, progress=False, snapshots=_PressAfterEpoch())
    assert checkpoints.finished_epochs(tmp_path) == [1]
    assert unraisable == []  # and quietly: no "Exception ignored" traceback


def test_ctrl_c_names_the_mid_epoch_checkpoint_that_resume_uses(folder, tmp_path, monkeypatch,
                                                                 unraisable):
    """Issue 15 item 15: 3 steps an epoch, a checkpoint after each of steps 0 and 1;
    Ctrl-C during step 1. The hint named epoch checkpoints only ("no checkpoint")."""
    make = training.make_stored_train_step

    def make_pressing(*args):
        step = make(*args)

        def run(state, *rest):
            if int(training.local_value(state.step)) == 1:
                press_ctrl_c_inside_a_finalizer()
            return step(state, *rest)
        return run

    monkeypatch.setattr(training, "make_stored_train_step", make_pressing)
    run = RunSpec(TINY, training.TrainConfig(epochs=1, batch_size=16), DataSpec(str(folder)))
    with pytest.raises(trainer.Interrupted) as err:
        trainer.fit(run, tmp_path, progress=False, checkpoint_every=1)
    assert str(err.value).startswith(
        f"interrupted; the last checkpoint (step 2 of epoch 1) is "
        f"{tmp_path / 'checkpoints-steps' / '2'}; continue with")


def test_curves_are_drawn_after_the_first_and_last_epoch_and_when_drawing_is_cheap(
        folder, tmp_path, monkeypatch):
    """curves.png is redrawn only while drawing takes under CURVES_TIME_SHARE of the
    time since the last drawing (a second of matplotlib per tiny epoch was most of a
    short run); the first epoch of each start and the last epoch always draw."""
    drawn = []

    def curves(history):
        drawn.append(history[-1]["epoch"])
        return plot_curves(history)

    run = RunSpec(TINY, training.TrainConfig(epochs=3, batch_size=16), DataSpec(str(folder)))
    monkeypatch.setattr(trainer, "CURVES_TIME_SHARE", 0.0)  # never cheap enough
    trainer.fit(run, tmp_path, progress=False, curves=curves)
    assert drawn == [1, 3]
    monkeypatch.setattr(trainer, "CURVES_TIME_SHARE", float("inf"))  # always
    trainer.fit(None, tmp_path, resume=True, epochs=5, progress=False, curves=curves)
    assert drawn == [1, 3, 4, 5]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_existing_run_needs_resume(folder, tmp_path):
    (tmp_path / "checkpoints" / "1").mkdir(parents=True)
    artifacts.write_json(tmp_path / "config.json", {"format": checkpoints.RUN_FORMAT})
    run = RunSpec(TINY, training.TrainConfig(batch_size=16), DataSpec(str(folder)))
    with pytest.raises(FileExistsError, match="already holds checkpoints; pass --resume"):
        trainer.fit(run, tmp_path, progress=False)


def test_non_finite_loss_stops_and_points_at_the_last_good_checkpoint(tmp_path):
    mgr = checkpoints.manager(tmp_path / "checkpoints")
    state = training.TrainState(np.int32(3), {"w": np.ones(2, np.float32)}, {})
    checkpoints.save(mgr, 1, state, {"epoch": 1})
    with pytest.raises(trainer.NonFiniteLoss,
                       match=r"loss became nan at epoch 2, step 5; .*last good checkpoint "
                             r"\(epoch 1\) is .*checkpoints/1; lower --lr"):
        trainer._check({"loss": jnp.float32(np.nan), "accuracy": jnp.float32(0)}, 0.0, 0.0, 5, 2,
                       tmp_path)
    assert mgr.all_steps() == [1]
    good = {"loss": jnp.float32(2.0), "accuracy": jnp.float32(0.5)}
    assert trainer._check(good, 1.0, 0.25, 5, 2, tmp_path) == (3.0, 0.75)


def _exploding_at(global_step: int):
    """training.make_stored_train_step whose update at `global_step` turns every parameter
    into NaN while the loss it reports (computed before the update) stays finite."""
    make = training.make_stored_train_step

    def make_exploding(*args):
        step = make(*args)

        def run(state, *rest):
            explode = int(training.local_value(state.step)) == global_step
            state, metrics = step(state, *rest)
            if explode:
                state = state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
            return state, metrics
        return run
    return make_exploding


def test_an_exploded_update_is_never_saved_and_resume_uses_the_checkpoint_named(
        folder, tmp_path, monkeypatch, capsys):
    """Issue 15 item 7: the update of step 1 explodes; its loss shows only at step 2, but
    the mid-epoch checkpoint after step 1 must not hold it. 50 images in batches of 16:
    3 steps an epoch, a checkpoint after steps 0 and 1 (global steps 1 and 2)."""
    run = RunSpec(TINY, training.TrainConfig(epochs=1, batch_size=16), DataSpec(str(folder)))
    with monkeypatch.context() as patch:
        patch.setattr(training, "make_stored_train_step", _exploding_at(1))
        with pytest.raises(trainer.NonFiniteLoss) as err:
            trainer.fit(run, tmp_path, progress=False, checkpoint_every=1)
    good = tmp_path / "checkpoints-steps" / "1"
    assert str(err.value) == (
        f"the parameters became non-finite at epoch 1, step 1; stopped without saving: the "
        f"last good checkpoint (step 1 of epoch 1) is {good}; lower --lr and --resume")
    assert sorted(p.name for p in good.parent.iterdir()) == ["1"]
    capsys.readouterr()
    trainer.fit(None, tmp_path, resume=True, progress=False)
    assert "resuming after epoch 0, at step 1 of epoch 1" in capsys.readouterr().out
    params = checkpoints.load_run(tmp_path)[0]
    assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))


def test_resume_with_lr_of_a_run_that_never_saved_restarts_with_that_lr(folder, tmp_path,
                                                                          capsys):
    """With --lr 1e6 the first update leaves finite parameters whose loss is ~1e22 (NaN
    a step later): not a checkpoint to continue from, whatever the learning rate."""
    run = RunSpec(TINY, training.TrainConfig(epochs=1, batch_size=16, learning_rate=1e6),
                  DataSpec(str(folder)))
    with pytest.raises(trainer.NonFiniteLoss, match=r"^the loss after the update became .*e\+"
                                                    r".* at epoch 1, step 0; stopped without "
                                                    r"saving: no checkpoint was written yet"):
        trainer.fit(run, tmp_path, progress=False, checkpoint_every=1)
    assert not list((tmp_path / "checkpoints-steps").iterdir())
    trainer.fit(None, tmp_path, resume=True, learning_rate=0.0042, progress=False)
    assert "starting over with learning rate 0.0042" in capsys.readouterr().out
    assert json.loads((tmp_path / "config.json").read_text())["train"]["learning_rate"] == 0.0042
    assert _metrics(tmp_path)[0]["learning_rate"] == pytest.approx(0.0042)


def test_resume_passes_over_a_half_removed_or_damaged_mid_epoch_checkpoint(folder, tmp_path,
                                                                           capsys):
    """Issue 15 item 17. 50 images in batches of 16: 3 steps an epoch."""
    run = RunSpec(TINY, training.TrainConfig(epochs=1, batch_size=16), DataSpec(str(folder)))
    trainer.fit(run, tmp_path, progress=False)
    steps = tmp_path / "checkpoints-steps"
    # A kill -9 while removing mid-epoch checkpoint 2 once epoch 1's was written.
    shutil.copytree(tmp_path / "checkpoints" / "1", steps / "2")
    for path in sorted(p for p in (steps / "2").rglob("*") if p.is_file())[::2]:
        path.unlink()
    capsys.readouterr()
    trainer.fit(None, tmp_path, resume=True, epochs=2, progress=False)
    out = capsys.readouterr().out
    assert f"note: removing {steps / '2'}, a mid-epoch checkpoint that its epoch's" in out
    assert "resuming after epoch 1\n" in out
    # A damaged mid-epoch checkpoint newer than epoch 2's (global step 7: inside epoch 3).
    shutil.copytree(tmp_path / "checkpoints" / "2", steps / "7")
    biggest = max((p for p in (steps / "7").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    os.truncate(biggest, biggest.stat().st_size // 2)
    assert checkpoints.last_checkpoint_message(tmp_path).startswith(
        f"the last checkpoint (step 1 of epoch 3) is {steps / '7'}")
    trainer.fit(None, tmp_path, resume=True, epochs=3, progress=False)
    out = capsys.readouterr().out
    assert f"warning: checkpoint {steps / '7'} cannot be read, it is damaged or truncated" in out
    assert (f"resuming from the newest intact checkpoint instead, "
            f"{tmp_path / 'checkpoints' / '2'}, and removing the damaged one") in out
    assert checkpoints.finished_epochs(tmp_path) == [1, 2, 3]
    assert list(steps.iterdir()) == []


def test_unprepared_tfds_dataset_fails_at_once_saying_what_to_do(tmp_path, capsys):
    code = train.main(["--data", "imagenette/160px-v2", "--data-dir", str(tmp_path / "tfds"),
                       "--out", str(tmp_path / "run"), "--no-progress", "--offline"])
    assert code == 1
    err = capsys.readouterr().err
    assert "is not prepared" in err and "local image folder" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_without_network_the_download_fails_with_one_clear_line(tmp_path, capsys, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def no_network(self, *args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
    code = train.main(["--data", "imagenette/160px-v2", "--data-dir", str(tmp_path / "tfds"),
                       "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not download TFDS dataset 'imagenette/160px-v2'")
    assert "ConnectionError: Name or service not known" in err and "--data-dir" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_a_tfds_dataset_is_downloaded_then_trained_on(tmp_path, capsys, caplog):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=16):  # download_and_prepare: a no-op here
        code = train.main(["--preset", "cpu", "--data", "imagenette/160px-v2", "--data-dir",
                           str(tmp_path / "tfds"), "--size", "64", "--width", "0.25", "--batch",
                           "8", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    assert "downloading and preparing it (once)" in caplog.text
    assert [m["epoch"] for m in _metrics(tmp_path / "run")] == [1]


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_a_split_over_the_memory_budget_trains_streamed_from_a_store(folder, tmp_path, capsys):
    # 50 training images at 73 px take 0.8 MB decoded; allow 0.1 MB.
    args = ["--preset", "cpu", "--data", str(folder), "--size", "64", "--width", "0.25",
            "--batch", "16", "--epochs", "1", "--no-progress", "--memory-budget", "0.0001",
            "--store", str(tmp_path / "store"), "--workers", "1", "--out", str(tmp_path / "run")]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert f"input: streamed from store {tmp_path / 'store'} with 1 decoding worker(s)" in out
    assert "over the 0.00 GiB budget" in out
    assert [m["epoch"] for m in _metrics(tmp_path / "run")] == [1]
    assert json.loads((tmp_path / "store" / "manifest.json").read_text())[
        "splits"]["train"]["count"] == 50
    np.testing.assert_array_equal(np.load(tmp_path / "run" / "mean.npy"),
                                  np.load(tmp_path / "store" / "mean.npy"))
