"""What only runs on several accelerators, checked on 8 CPU devices: the data-parallel
train and eval steps (stored and host-fed), atlas mining and project_units (64 units per
step) over 8 devices give one device's results (to float tolerance)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import test_training
from helpers import TINY10, random_params
from zfjax.analyses import atlas
from zfjax.inputs import data
from zfjax.nets import deconv, model
from zfjax.train import training

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY10
BATCH = 16  # two images per device; helpers.BATCH, so one device's programs are shared


def results(devices: int) -> dict[str, np.ndarray]:
    """Two stored train steps, a stored eval step, atlas mining and 64 conv2 projections,
    with the state replicated and the batches sharded over the first `devices` devices."""
    mesh = training.make_mesh(jax.devices()[:devices])
    rng = np.random.default_rng(0)
    params = random_params(TINY, bias_std=0.01)
    stored = data.stored_size(TINY.image_size)
    images = rng.integers(0, 256, (BATCH, stored, stored, 3), np.uint8)
    labels = rng.integers(0, 10, BATCH).astype(np.int32)
    crops = data.crop_params(0, 1, 0, BATCH, stored, TINY.image_size)
    mean = training.replicate(np.full((stored, stored, 3), 120, np.float32), mesh)
    state = training.replicate(training.TrainState(
        np.int32(0), params, training.make_optimizer(0.01, 0.9).init(params)), mesh)
    step = training.make_stored_train_step(TINY, 0.1, mesh)
    out = {}
    for i in range(2):
        state, metrics = step(state, training.put_batch(mesh, images, labels, *crops), mean,
                              jax.random.key(7))
        out[f"loss{i}"] = np.asarray(metrics["loss"])
    assert len(state.params["conv1"]["kernel"].sharding.device_set) == devices
    out.update({f"params/{name}/{key}": np.asarray(a) for name, layer in state.params.items()
                for key, a in layer.items()})
    mask = np.arange(BATCH) < BATCH - 3  # a padded last batch
    evaluate = training.make_stored_eval_step(TINY, mesh)
    out["eval_counts"] = np.asarray(evaluate(state.params, *training.put_batch(
        mesh, images, labels, mask), mean))

    inputs = rng.normal(0, 0.5, (BATCH, TINY.image_size, TINY.image_size, 3)).astype(np.float32)
    replicated = training.replicate(params, mesh)
    tops, sums, _ = atlas.mine(TINY, replicated, inputs, labels, layers=("conv2", "conv5"),
                               batch_size=BATCH // 2)
    for layer, top in tops.items():
        out.update({f"mine/{layer}/{field}": np.asarray(getattr(top, field))
                    for field in top._fields})
        out[f"mine/{layer}/class_sums"] = sums[layer]
    (sharded,) = training.put_batch(mesh, inputs)
    logits, aux = model.forward_jit(TINY, replicated, sharded)
    # conv2, not conv5: project_units unrolls its 64 units per step, and each pooling
    # below the layer adds 64 slices to compile (conv5's two took 111 s here, conv2 36 s).
    units = deconv.strongest_units(aux, "conv2", np.arange(64), image=3)
    out["logits"] = np.asarray(logits)
    out["projections"] = np.asarray(deconv.project_units(TINY, replicated, aux, "conv2", units,
                                                         batch_size=64))
    # The host-fed train step (test_training's two steps) on the same devices.
    out.update({f"host/{name}": a for name, a in test_training._two_steps(devices).items()})
    return out


EIGHT_DEVICES = textwrap.dedent("""
    import sys
    import jax, numpy as np
    assert jax.device_count() == 8, jax.devices()
    sys.path.insert(0, sys.argv[1])
    import test_multidevice
    np.savez(sys.argv[2], **test_multidevice.results(8))
""")


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_eight_devices_give_one_devices_results(tmp_path):
    # One subprocess for every 8-device check (JAX reads the device count once, at start).
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, str(ROOT / "tests"),
                           str(tmp_path / "eight.npz")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one, eight = results(1), dict(np.load(tmp_path / "eight.npz"))
    assert sorted(one) == sorted(eight)
    assert one["eval_counts"][2] == BATCH - 3
    np.testing.assert_array_equal(eight["eval_counts"], one["eval_counts"])
    for name in ("mine/conv2/image", "mine/conv5/image", "mine/conv5/y", "mine/conv5/x"):
        np.testing.assert_array_equal(eight[name], one[name], err_msg=name)
    for name in one:
        np.testing.assert_allclose(eight[name], one[name], rtol=1e-4, atol=1e-5 *
                                   max(1.0, float(np.abs(one[name]).max())), err_msg=name)
