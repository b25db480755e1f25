"""train.py's architecture and recipe switches: --no-renorm (Fig. 6 (a))."""

import jax
import numpy as np

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
