"""The ImageNet workflow end to end (issue 15, item 12): prepare.py -> train.py --data
STORE -> every image-using visualize.py command, on the run's own data and on --data STORE.

One prepared store and one tiny trained run serve every test (module fixture): a 1-epoch
train of a 64 px, width-0.25 ZFNet (2 epochs for convergence) on 12 images, 10-40 s of the module's cost."""

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from helpers import write_image_folder, write_snapshots
from zfjax.commands import prepare, train
from zfjax.inputs import data, store


# The module fixture (prepare.py, then two train.py epochs) is its cost: end to end.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store_run(tmp_path_factory):
    """(store folder, run folder): JPEG folder of 3 classes -> prepare.py -> train.py."""
    root = tmp_path_factory.mktemp("workflow")
    folder = write_image_folder(root / "images", ["cat", "dog", "fox"], 4, shape=(60, 72),
                                ext="jpg")
    prepared, run = root / "store", root / "run"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        assert prepare.main([str(folder), str(prepared), "--size", "64", "--workers", "1",
                             "--no-progress"]) == 0
        mp.setattr(train, "snapshot_hook", lambda: None)  # saves its compilation
        assert train.main(["--preset", "cpu", "--data", str(prepared), "--size", "64",
                           "--width", "0.25", "--batch", "4", "--epochs", "2",
                           "--no-progress", "--out", str(run)]) == 0
    write_snapshots(run, epochs=(1, 2), layers=("conv1",))  # what snapshot_hook would write
    return prepared, run


def test_load_split_reads_a_store_through_its_reader(store_run):
    prepared, _ = store_run
    opened = store.open_store(prepared)
    whole = data.load_split(str(prepared), "val", 64, progress=False)
    np.testing.assert_array_equal(whole.images, opened.load("val").images)
    assert whole.class_names == ("cat", "dog", "fox") and len(whole) == 12
    some = data.load_split(str(prepared), "validation", 64, limit=3, progress=False,
                           classes=("fox", "dog", "cat"))
    assert sorted(some.labels.tolist()) == [0, 1, 2]  # one per class, by the given list
    with pytest.raises(ValueError, match="holds 73 px images .* prepare a store with --size 96"):
        data.load_split(str(prepared), "val", 96, progress=False)


@pytest.mark.parametrize("argv", [
    ["topk", "--limit", "3", "--layers", "conv1", "--count", "2", "--top", "2"],
    ["invariance", "--limit", "1", "--translations", "0", "4", "--scales", "1", "1.2",
     "--rotations", "0", "10"],
    ["filters", "--maps", "2", "--limit", "2"],
    ["occlusion", "--limit", "1", "--size", "32", "--stride", "32"],
    ["reconstructions", "--limit", "1", "--layers", "conv1"],
    ["convergence", "--limit", "3", "--top", "2"],
    ["atlas", "--limit", "3", "--layers", "conv1", "--top", "2"],
], ids=lambda argv: argv[0])
def test_every_image_command_reads_the_runs_store(store_run, run_cli, tmp_path, argv):
    _, run = store_run
    code, printed, err = run_cli([argv[0], str(run), *argv[1:], "--out", str(tmp_path)])
    assert code == 0, err
    written = [Path(line) for line in printed.splitlines() if line.startswith(str(tmp_path))]
    assert written and all(path.exists() for path in written)


def test_data_flag_takes_a_store(store_run, run_cli, tmp_path):
    # The same load_split as the run's own data: one command shows --data STORE reaches it.
    prepared, run = store_run
    code, printed, err = run_cli(["topk", str(run), "--data", str(prepared), "--limit", "3",
                                  "--layers", "conv1", "--count", "2", "--top", "2",
                                  "--out", str(tmp_path)])
    assert code == 0, err
    written = [Path(line) for line in printed.splitlines() if line.startswith(str(tmp_path))]
    assert written and all(path.exists() for path in written)


def test_transfer_reads_a_store(store_run, run_cli, tmp_path):
    prepared, run = store_run
    code, printed, err = run_cli([
        "transfer", str(run), "--data", str(prepared), "--layers", "pool1", "fc7",
        "--steps", "5", "--l2", "0.01", "--per-class", "1", "--draws", "1",
        "--out", str(tmp_path)])
    assert code == 0, err
    assert "12 train / 12 val images, 3 classes" in printed
    assert (tmp_path / "transfer.png").exists()
