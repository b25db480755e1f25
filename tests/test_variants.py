"""Architecture variants and recipe switches (Tables 2-3, Fig. 6 (a)) and the Table 3 sweep."""

import json

import jax
import numpy as np
import pytest

import train
from zfjax import training
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
    from zfjax import checkpoints
    checkpoints.write_json(run_dir / checkpoints.CONFIG_FILE,
                           {"model": checkpoints.config_dict(config)})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def test_sweep_rows_are_the_last_epochs_errors_and_the_parameter_count(tmp_path):
    from zfjax import model, sweep
    from helpers import random_params

    assert sweep.state(tmp_path / "a", 2) == "new"
    _fake_run(tmp_path / "a", TINY, [
        {"epoch": 1, "train_top1": 0.1, "val_top1": 0.2, "val_top5": 0.5},
        {"epoch": 2, "train_top1": 0.4, "val_top1": 0.35, "val_top5": 0.75}])
    assert sweep.state(tmp_path / "a", 2) == "done" and sweep.state(tmp_path / "a", 3) == "new"
    (tmp_path / "a" / "checkpoints" / "2").mkdir(parents=True)
    assert sweep.state(tmp_path / "a", 3) == "stopped"
    rows = sweep.table_rows(tmp_path, ["a", "missing"])
    want = model.param_count(random_params(TINY))
    assert rows == [sweep.Row("a", want, 2, pytest.approx(60.0), pytest.approx(65.0),
                              pytest.approx(25.0))]
    csv_path, md_path = sweep.write_table(tmp_path, rows, note="settings")
    assert csv_path.read_text().splitlines() == [
        "variant,parameters,epochs,train_top1_error,val_top1_error,val_top5_error",
        f"a,{want},2,60.00,65.00,25.00"]
    assert md_path.read_text().splitlines()[-1] == f"| a | 2 | 60.0 | 65.0 | 25.0 | {want:,} |"
