"""Architecture variants and recipe switches (Tables 2-3, Fig. 6 (a)) and the Table 3 sweep."""

import json

import jax
import numpy as np
import pytest

import csv

from zfjax import artifacts
from zfjax.commands import train
from zfjax.nets import deconv, model, network
from zfjax.train import checkpoints, training
from zfjax.train.run import RunDir
from helpers import random_params
from test_training import TINY, _batch, _rms


def test_no_renorm_switches_off_filter_renormalisation():
    assert train.build_run(train.parse_args(["--preset", "cpu"])).train.filter_radius == 0.1
    run = train.build_run(train.parse_args(["--preset", "cpu", "--no-renorm"]))
    assert run.train.filter_radius is None
    # A step without renormalisation leaves He-initialised conv1 filters above RMS 0.1.
    mesh = training.make_mesh(jax.devices()[:1])
    step = training.make_train_step(TINY, run.train.filter_radius, mesh)
    state = training.create_state(TINY, training.TrainConfig(seed=0), mesh)
    state, _ = step(state, training.put_batch(mesh, *_batch()), jax.random.key(1))
    assert _rms(np.asarray(state.params["conv1"]["kernel"])).max() > 0.1


# ---- the Table 3 sweep: reading run folders back -------------------------------------

def _fake_run(run_dir, config, metrics):
    from zfjax.train import checkpoints
    artifacts.write_json(run_dir / checkpoints.CONFIG_FILE,
                           {"model": checkpoints.config_dict(config)})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def test_sweep_rows_are_the_last_epochs_errors_and_the_parameter_count(tmp_path):
    from zfjax.nets import model
    from zfjax.train import sweep
    from helpers import random_params

    assert sweep.state(tmp_path / "a", 2) == "new"
    _fake_run(tmp_path / "a", TINY, [
        {"epoch": 1, "train_top1": 0.1, "val_top1": 0.2, "val_top5": 0.5},
        {"epoch": 2, "train_top1": 0.4, "val_top1": 0.35, "val_top5": 0.75}])
    assert sweep.state(tmp_path / "a", 2) == "done" and sweep.state(tmp_path / "a", 3) == "new"
    (tmp_path / "a" / "checkpoints" / "2").mkdir(parents=True)
    assert sweep.state(tmp_path / "a", 3) == "stopped"
    rows = sweep.table_rows(tmp_path, ["a", "missing"])
    want = model.count_params(random_params(TINY))
    assert rows == [sweep.Row("a", want, 2, pytest.approx(60.0), pytest.approx(65.0),
                              pytest.approx(25.0))]
    csv_path, md_path = sweep.write_table(tmp_path, rows, note="settings")
    assert csv_path.read_text().splitlines() == [
        "variant,parameters,epochs,train_top1_error,val_top1_error,val_top5_error",
        f"a,{want},2,60.00,65.00,25.00"]
    assert md_path.read_text().splitlines()[-1] == f"| a | 2 | 60.0 | 65.0 | 25.0 | {want:,} |"


# ---- Table 3's variants as changes to the description --------------------------------

SMALL = network.Network(num_classes=10, image_size=64, width=0.25, init_std=None)


def shapes(name):
    return network.param_shapes(network.with_variant(SMALL, name))


def test_variant_shapes_by_hand():
    # width 0.25: conv1..5 24, 64, 96, 96, 64 maps; fc 1024 units; pool5 at 64 px is 1 x 1.
    base = shapes("zfnet")
    assert base["conv5"]["kernel"] == (3, 3, 96, 64) and base["fc6"]["kernel"] == (64, 1024)
    s = shapes("no-conv3-4")
    assert "conv3" not in s and "conv4" not in s and s["conv5"]["kernel"] == (3, 3, 64, 64)
    s = shapes("no-fc6-7")
    assert set(s) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc8"}
    assert s["fc8"]["kernel"] == (64, 10)
    s = shapes("no-conv3-4-fc6-7")
    assert list(s) == ["conv1", "conv2", "conv5", "fc8"]
    assert shapes("fc-2048")["fc7"]["kernel"] == (512, 512)
    assert shapes("fc-8192")["fc6"]["kernel"] == (64, 2048)
    s = shapes("conv3-5-512-1024-512")
    assert [s[c]["kernel"] for c in ("conv3", "conv4", "conv5")] == [
        (3, 3, 64, 128), (3, 3, 128, 256), (3, 3, 256, 128)]
    assert s["fc6"]["kernel"] == (128, 1024)
    alex = network.with_variant(SMALL, "alexnet")
    assert alex.arch == "alexnet" and network.param_shapes(alex)["conv1"]["kernel"] == (11, 11, 3, 16)
    # The stage table itself: ZFNet without fc6/fc7 goes Flatten -> fc8, no dropout left.
    table = network.stages(network.with_variant(SMALL, "no-fc6-7"))
    assert [type(s).__name__ for s in table[-2:]] == ["Flatten", "Dense"]


def test_variant_networks_run_forward_and_deconvnet():
    net = network.with_variant(SMALL, "no-conv3-4-fc6-7")
    params = random_params(net)
    x = np.random.default_rng(0).normal(0, 0.3, (2, 64, 64, 3)).astype(np.float32)
    logits, aux = model.forward_jit(net, params, x)
    assert logits.shape == (2, 10) and set(aux["activations"]) >= {"conv5", "pool5"}
    assert "conv3" not in aux["activations"]
    units = deconv.strongest_units(aux, "conv5", [0, 3])
    projection = deconv.project_units(net, params, aux, "conv5", units)
    assert projection.shape == (2, 64, 64, 3) and np.abs(np.asarray(projection)).max() > 0


def test_variant_config_round_trips_and_bad_variants_fail():
    net = network.with_variant(SMALL, "fc-8192")
    written = json.loads(json.dumps(checkpoints.config_dict(net)))  # as config.json holds it
    assert network.from_dict(written) == net and net.variant == "fc-8192"
    assert network.with_variant(net, "zfnet").variant == ""
    with pytest.raises(ValueError, match="unknown variant 'no-conv9'"):
        network.with_variant(SMALL, "no-conv9")
    with pytest.raises(ValueError, match="variant 'no-fc6-7' changes ZFNet's stages"):
        network.Network(arch="vgg16", variant="no-fc6-7")


def test_train_py_variant_flag():
    run = train.build_run(train.parse_args(["--preset", "cpu", "--variant", "no-conv3-4"]))
    assert run.model.variant == "no-conv3-4" and run.model.arch == "zfnet"
    assert train.build_run(train.parse_args(["--preset", "cpu", "--variant", "alexnet"])).model.arch == "alexnet"
    with pytest.raises(SystemExit):
        train.parse_args(["--variant", "resnet"])


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_sweep_trains_each_variant_once_resumes_and_writes_table3(tmp_path, capsys,
                                                                  monkeypatch):
    from zfjax.commands import sweep as sweep_cli
    from PIL import Image

    # Without train.py's per-epoch Fig. 4 snapshots (nothing here reads them): their
    # compiles, every layer's projections for each variant, were 40% of this test's CPU.
    monkeypatch.setattr(train, "snapshot_hook", lambda: None)

    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    for split, n in (("train", 8), ("val", 4)):
        for c in ("a", "b"):
            (folder / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (80, 80, 3), np.uint8)).save(
                    folder / split / c / f"{i}.png")
    out = tmp_path / "sweep"
    common = ["--data", str(folder), "--size", "64", "--width", "0.25", "--batch", "4",
              "--no-progress"]
    argv = ["--out", str(out), "--variants", "no-fc6-7", "alexnet", "--"] + common
    assert sweep_cli.main(argv + ["--epochs", "1"]) == 0
    rows = list(csv.DictReader(open(out / "table3.csv")))
    assert [r["variant"] for r in rows] == ["no-fc6-7", "alexnet"]
    for r in rows:
        net = network.with_variant(network.Network(num_classes=2, image_size=64, width=0.25),
                                   r["variant"])
        assert int(r["parameters"]) == network.parameter_count(net) and r["epochs"] == "1"
        assert 0 <= float(r["val_top1_error"]) <= 100
    capsys.readouterr()
    # Again: nothing left to train. With --epochs 2: the stopped run is resumed.
    assert sweep_cli.main(argv + ["--epochs", "1"]) == 0
    assert capsys.readouterr().out.count("already trained") == 2
    assert sweep_cli.main(["--out", str(out), "--variants", "no-fc6-7", "--"] + common
                          + ["--epochs", "2"]) == 0
    assert "resuming no-fc6-7" in capsys.readouterr().out
    assert [m["epoch"] for m in RunDir(out / "no-fc6-7").read_metrics()] == [1, 2]
    with pytest.raises(SystemExit):
        sweep_cli.parse_args(["--out", str(out), "--variants", "resnet"])
    with pytest.raises(SystemExit):
        sweep_cli.parse_args(["--out", str(out), "--", "--resume"])
