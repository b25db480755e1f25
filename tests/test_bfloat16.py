"""The bfloat16 compute path (the default on GPU/TPU) against float32, at toy sizes.

Stated tolerances (relative L2 error of bfloat16 against float32, same weights and
inputs; bfloat16 keeps 8 bits of mantissa, about 0.4% per rounding): logits 3%, the loss
of one train step 1%, its parameter update 10%, conv5 projections 10% (seven reverse
ops, each rounding). Measured here (jax 0.10.2, CPU): logits 0.47%, update 3.5%,
projections 4.3%."""

import dataclasses

import jax
import numpy as np

from helpers import BATCH, TINY10 as TINY
from zfjax.nets import deconv, model
from zfjax.train import training


def relative_error(low, high) -> float:
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    return float(np.linalg.norm(low - high) / np.linalg.norm(high))


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 0.5, (BATCH, 64, 64, 3)).astype(np.float32),
            rng.integers(0, 10, BATCH).astype(np.int32))


def _both(fn):
    """fn(config) under float32 and bfloat16 compute: (bfloat16 result, float32 result)."""
    return fn(dataclasses.replace(TINY, dtype="bfloat16")), fn(TINY)


def test_bfloat16_forward_and_projection_stay_near_float32(tiny_network):
    params = tiny_network.params
    images, _ = _inputs()

    def run(config):
        logits, aux = model.forward_jit(config, params, images)
        units = deconv.strongest_units(aux, "conv5", np.arange(8))
        projections = deconv.project_units(config, params, aux, "conv5", units)
        # Units found under float32, so both dtypes project the same ones.
        return logits, units, projections

    (low_logits, _, _), (logits, units32, projections32) = _both(run)
    assert low_logits.dtype == np.float32
    error = relative_error(low_logits, logits)
    assert 0 < error < 0.03, f"logits: {error:.2e}"

    low = model.forward_jit(dataclasses.replace(TINY, dtype="bfloat16"), params, images)[1]
    low_projections = deconv.project_units(dataclasses.replace(TINY, dtype="bfloat16"), params,
                                           low, "conv5", units32)
    assert low_projections.dtype == jax.numpy.bfloat16
    error = relative_error(low_projections, projections32)
    assert 0 < error < 0.1, f"conv5 projections: {error:.2e}"


def test_bfloat16_train_step_stays_near_float32(tiny_network):
    params = tiny_network.params
    mesh = training.make_mesh(jax.devices()[:1])
    batch = training.put_batch(mesh, *_inputs(1))

    def step(config):
        state = training.replicate(training.TrainState(
            np.int32(0), params, training.make_optimizer(0.01, 0.9).init(params)), mesh)
        new, metrics = training.make_train_step(config, 0.1, mesh)(state, batch,
                                                                   jax.random.key(0))
        updates = jax.tree.map(lambda a, b: np.asarray(a) - b, new.params, params)
        return float(metrics["loss"]), updates, new.params

    (low_loss, low_updates, low_params), (loss, updates, new_params) = _both(step)
    assert {a.dtype for a in jax.tree.leaves(low_params)} == {np.dtype("float32")}
    error = abs(low_loss - loss) / abs(loss)
    assert 0 < error < 0.01, f"loss: {error:.2e}"
    flat = lambda tree: np.concatenate([np.ravel(a) for a in jax.tree.leaves(tree)])
    error = relative_error(flat(low_updates), flat(updates))
    assert 0 < error < 0.1, f"parameter update: {error:.2e}"
