"""TensorBoard events of a run (zfjax.train.tensorboard_events), read back with tensorboard's
own EventAccumulator."""

import io
import sys

import numpy as np
import pytest
from PIL import Image

from zfjax.train import tensorboard_events

pytest.importorskip("tensorboard")


def _accumulator(logdir, monkeypatch):
    """tensorboard's EventAccumulator over logdir, loaded. TensorFlow hidden while it is
    made (when tensorboard has not picked its file API yet it imports TensorFlow where
    installed, ~10 s; its own stub reads local files the same way)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if "tensorflow" not in sys.modules:
        monkeypatch.setitem(sys.modules, "tensorflow", None)
    return EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0}).Reload()


def test_scalars_and_an_image_read_back_without_tensorflow(tmp_path, monkeypatch):
    image = np.random.default_rng(0).integers(0, 256, (6, 9, 3), np.uint8)
    with tensorboard_events.EventWriter(tmp_path / "tb") as events:
        events.scalars(1, {"step/train_loss": 2.5})
        events.scalars(2, {"step/train_loss": 1.25, "epoch/val_top1": 0.5})
        events.image("fig4_snapshot", 2, image)
    acc = _accumulator(tmp_path / "tb", monkeypatch)
    assert [(e.step, e.value) for e in acc.Scalars("step/train_loss")] == [(1, 2.5), (2, 1.25)]
    assert [(e.step, e.value) for e in acc.Scalars("epoch/val_top1")] == [(2, 0.5)]
    (stored,) = acc.Images("fig4_snapshot")
    assert (stored.step, stored.width, stored.height) == (2, 9, 6)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(stored.encoded_image_string))),
                                  image)


def test_a_snapshot_becomes_one_image_of_its_layers_blocks():
    rng = np.random.default_rng(0)
    snapshot = {}
    for layer, r in (("conv2", 9), ("conv1", 7)):  # order by layer, not by key
        snapshot[f"{layer}/projections"] = rng.normal(size=(3, r, r, 3)).astype(np.float32)
        snapshot[f"{layer}/patches"] = rng.integers(0, 256, (3, r, r, 3), np.uint8)
    image = tensorboard_events.snapshot_image(snapshot, side=10)
    # Each block: 3 rows of 10 px tiles (2 px apart); projection + patch columns.
    assert image.dtype == np.uint8 and image.shape[0] == 3 * 12 - 2
    assert image.shape[1] == 2 * (2 * 12 - 2 + 8) + 16


class _RandomSnapshots:
    """A Fig. 4 hook that saves random snapshots (no probe, nothing to compile)."""

    def make_probe(self, images, mean, config, *, seed, count):
        return None

    def __call__(self, run_dir, epoch, config, params, probe):
        from zfjax.analyses import evolution

        rng = np.random.default_rng(epoch)
        return evolution.save_snapshot(run_dir, epoch, {
            "conv1/projections": rng.normal(size=(2, 7, 7, 3)).astype(np.float32),
            "conv1/patches": rng.integers(0, 256, (2, 7, 7, 3), np.uint8)})


def test_a_run_and_its_resume_write_step_and_epoch_scalars_and_snapshots(tmp_path, monkeypatch):
    """A tiny training run (its step compiles: about 10 s): 8 images in batches of 4."""
    from helpers import TINY, write_image_folder
    from zfjax.train import trainer, training
    from zfjax.train.run import DataSpec, RunDir, RunSpec

    folder = write_image_folder(tmp_path / "images", ["a", "b"], 4, shape=(40, 40))
    spec = RunSpec(TINY, training.TrainConfig(epochs=1, batch_size=4), DataSpec(str(folder)))
    run = RunDir(tmp_path / "run")
    trainer.fit(spec, run.path, progress=False, snapshots=_RandomSnapshots())
    trainer.fit(None, run.path, resume=True, epochs=2, progress=False, snapshots=_RandomSnapshots())
    assert len(list(run.tensorboard_dir.iterdir())) == 2  # one event file per process start
    acc = _accumulator(run.tensorboard_dir, monkeypatch)
    metrics = run.read_metrics()
    assert [(e.step, e.value) for e in acc.Scalars("epoch/val_top1")] == [
        (2, pytest.approx(metrics[0]["val_top1"])), (4, pytest.approx(metrics[1]["val_top1"]))]
    losses = acc.Scalars("step/train_loss")
    assert [e.step for e in losses] == [1, 2, 3, 4]
    assert sum(e.value for e in losses[2:]) / 2 == pytest.approx(metrics[1]["train_loss"])
    assert [e.step for e in acc.Images("fig4_snapshot")] == [2, 4]
