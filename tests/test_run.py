"""zfjax.train.run: the run folder (RunDir) and what a run asks for."""

import json

import pytest

import zfjax
from zfjax import cli
from zfjax.train import checkpoints
from zfjax.train.run import CheckpointRecord, RunDir


def test_metrics_written_and_read_back_whole(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_metrics() == []  # no file yet
    history = [{"epoch": 1, "val_top1": 0.5}, {"epoch": 2, "val_top1": 0.75}]
    run.write_metrics(history)
    assert run.read_metrics() == history
    assert run.metrics_file.read_text() == "".join(json.dumps(m) + "\n" for m in history)
    run.write_metrics(history[:1])  # rewritten, not appended
    assert run.read_metrics() == history[:1]


@pytest.mark.parametrize("tail, epoch", [("", None), ("checkpoints", None),
                                         ("checkpoints/3", 3)])
def test_locate_names_the_run_folder_of_any_target(tmp_path, tail, epoch):
    assert RunDir.locate(tmp_path / tail) == (RunDir(tmp_path), epoch)


def test_load_gives_a_typed_record_and_the_model_info(tmp_path):
    from helpers import write_tiny_run

    run_dir = write_tiny_run(tmp_path)
    params, config, mean, record = checkpoints.load_run(run_dir / "checkpoints" / "1")
    assert isinstance(record, CheckpointRecord)
    assert (record.epoch, record.step, record.run_dir) == (1, 4, run_dir)
    assert record.checkpoint == run_dir / "checkpoints" / "1"
    assert record.class_names == ["alpha", "beta"] and record.data["source"].endswith("images")
    model = zfjax.load(run_dir)
    assert model.info == {**record.as_info(), "run_dir": str(run_dir),
                           "checkpoint": str(record.checkpoint)}
    assert model.class_names == ["alpha", "beta"]


def test_output_folder_of_a_checkpoint_target_is_the_runs_figures(tmp_path):
    args = cli.argparse.Namespace(out=None, target=str(tmp_path / "run" / "checkpoints" / "2"))
    (tmp_path / "run").mkdir()
    cli.check_output_folder(args)  # makes nothing, refuses nothing
    assert not (tmp_path / "run" / "figures").exists()
    (tmp_path / "run" / "figures").write_text("a file")
    with pytest.raises(ValueError, match=r"cannot make folder .*run/figures: .* is a file"):
        cli.check_output_folder(args)


def test_the_data_source_is_classified_once_per_choice(tmp_path, monkeypatch):
    """Issue 18: the source string was classified again in four places."""
    from helpers import write_image_folder
    from zfjax.inputs import data, loader

    folder = str(write_image_folder(tmp_path / "images", ["a", "b"], 2, shape=(20, 20)))
    calls = []
    classify = data._is_folder
    monkeypatch.setattr(data, "_is_folder", lambda s: calls.append(s) or classify(s))
    train, val, mean, how = loader.choose(folder, 16, download=True, progress=False)
    assert (len(train), len(val), mean.shape) == (4, 4, (18, 18, 3)) and calls == [folder]
    assert data.resolve_source(folder) == data.DataSource(folder, data.FOLDER)
    assert data.resolve_source("cifar10", "/d") == data.DataSource("cifar10", data.TFDS, "/d")
    source = data.resolve_source(folder)
    assert data.resolve_source(source) is source and f"{source}" == folder
