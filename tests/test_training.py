"""Tests for zfjax.train.training: filter renormalisation, the step, learning-rate rules, devices."""

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import BATCH, TINY10 as TINY  # the shared tiny network: one compile per process
from zfjax.nets import model, network
from zfjax.train import training

ROOT = Path(__file__).resolve().parents[1]


def _batch(seed=0, n=BATCH):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 0.3, (n, 64, 64, 3)).astype(np.float32),
            rng.integers(0, 10, n).astype(np.int32))


def _rms(kernel):
    return np.sqrt(np.mean(np.square(np.asarray(kernel)), axis=(0, 1, 2)))


# ------------------------------------------------------------------ filter renormalisation

def test_renormalize_filters_rescales_only_filters_over_the_radius():
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 1, (3, 3, 4, 5)).astype(np.float32)
    kernel[..., 0] *= 0.05 / _rms(kernel)[0]  # under the radius: untouched
    kernel[..., 1] *= 0.1 / _rms(kernel)[1]   # exactly on it: untouched
    kernel[..., 2:] *= 3.0                    # over it: rescaled to RMS 0.1
    dense = rng.normal(0, 5, (6, 2)).astype(np.float32)
    params = {"conv3": {"kernel": jnp.asarray(kernel), "bias": jnp.full(5, 7.0)},
              "fc6": {"kernel": jnp.asarray(dense), "bias": jnp.zeros(2)}}
    out = training.renormalize_filters(params, 0.1)
    rms = _rms(out["conv3"]["kernel"])
    np.testing.assert_allclose(rms, [0.05, 0.1, 0.1, 0.1, 0.1], rtol=1e-5)
    np.testing.assert_array_equal(out["conv3"]["kernel"][..., :2], kernel[..., :2])
    # Rescaled filters keep their direction.
    np.testing.assert_allclose(out["conv3"]["kernel"][..., 2:],
                               kernel[..., 2:] * (0.1 / _rms(kernel)[2:]), rtol=1e-5)
    np.testing.assert_array_equal(out["conv3"]["bias"], params["conv3"]["bias"])
    np.testing.assert_array_equal(out["fc6"]["kernel"], dense)  # fully connected: untouched


# ------------------------------------------------------------------------- the step

@pytest.fixture(scope="module")
def step():
    mesh = training.make_mesh(jax.devices()[:1])
    return mesh, training.make_train_step(TINY, 0.1, mesh)


def _state(mesh, lr=0.01):
    return training.create_state(TINY, training.TrainConfig(learning_rate=lr, seed=0), mesh)


def test_train_step_updates_params_and_keeps_filters_within_the_radius(step):
    mesh, fn = step
    state = _state(mesh)
    before = jax.tree.map(np.asarray, state.params)
    batch = training.put_batch(mesh, *_batch())
    state, metrics = fn(state, batch, jax.random.key(1))
    assert int(state.step) == 1
    assert np.isfinite(float(metrics["loss"])) and 0 <= float(metrics["accuracy"]) <= 1
    assert not np.allclose(state.params["fc8"]["kernel"], before["fc8"]["kernel"])
    # He-normal conv1 filters start above RMS 0.1; after the step none is.
    assert _rms(before["conv1"]["kernel"]).max() > 0.1
    for layer in network.conv_layers(TINY):
        assert _rms(state.params[layer]["kernel"]).max() <= 0.1 * (1 + 1e-5)


def test_train_step_donates_the_state(step):
    mesh, fn = step
    state = _state(mesh)
    old = state.params["fc8"]["kernel"]
    fn(state, training.put_batch(mesh, *_batch()), jax.random.key(1))
    assert old.is_deleted()


def test_learning_rate_lives_in_the_state_and_changing_it_does_not_recompile(step):
    mesh, fn = step
    batch = training.put_batch(mesh, *_batch())
    state = training.with_learning_rate(_state(mesh), 0.0)
    assert training.learning_rate(state) == 0.0
    # Renormalise first so that a zero-rate step is the identity.
    state = state.replace(params=training.renormalize_filters(state.params, 0.1))
    before = jax.tree.map(np.asarray, state.params)
    compiled = fn._cache_size()
    state, _ = fn(state, batch, jax.random.key(1))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
                 jax.tree.map(np.asarray, state.params), before)
    state, _ = fn(training.with_learning_rate(state, 0.05), batch, jax.random.key(1))
    assert not np.allclose(state.params["fc8"]["kernel"], before["fc8"]["kernel"])
    assert fn._cache_size() == compiled


def test_dropout_key_is_a_function_of_the_step(step):
    mesh, fn = step
    batch = training.put_batch(mesh, *_batch())
    rng = jax.random.key(3)
    a = fn(_state(mesh), batch, rng)[1]["loss"]
    b = fn(_state(mesh), batch, rng)[1]["loss"]
    later = _state(mesh).replace(step=jnp.asarray(5, jnp.int32))
    c = fn(jax.device_put(later, training.replicated(mesh)), batch, rng)[1]["loss"]
    assert float(a) == float(b)  # same step, same masks: bitwise the same
    assert float(a) != float(c)  # another step draws other masks


def test_hit_counts_top1_top5_and_ignore_padding():
    logits = jnp.array([[9.0, 8, 7, 6, 5, 4, 3],    # label 0: top-1
                        [9.0, 8, 7, 6, 5, 4, 3],    # label 4: top-5 only
                        [9.0, 8, 7, 6, 5, 4, 3],    # label 6: neither
                        [0.0, 1, 0, 0, 0, 0, 0]])   # padding row: a top-1 hit, not counted
    counts = training.hit_counts(logits, jnp.array([0, 4, 6, 1]),
                                 jnp.array([True, True, True, False]))
    np.testing.assert_array_equal(counts, [1, 2, 3])
    # Fewer than five classes: top-5 is every class.
    two = training.hit_counts(jnp.array([[1.0, 0.0]]), jnp.array([1]), jnp.array([True]))
    np.testing.assert_array_equal(two, [0, 1, 1])


def test_batch_that_does_not_split_over_devices_is_refused():
    mesh = training.make_mesh(jax.devices()[:1])
    training.check_batch_size(7, mesh)
    fake = type("M", (), {"size": 4})()
    with pytest.raises(ValueError, match="not divisible by the 4 devices"):
        training.check_batch_size(30, fake)


# ---------------------------------------------------------------------- learning rate

def test_plateau_rule_decays_after_patience_epochs_without_improvement():
    tcfg = training.TrainConfig(plateau_patience=2, plateau_threshold=0.01, lr_decay=0.1,
                                min_learning_rate=1e-4)
    plateau, lr, rates = training.Plateau(), 0.01, []
    for epoch, err in enumerate([0.9, 0.8, 0.795, 0.79, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7], 1):
        plateau, lr = training.next_learning_rate(tcfg, plateau, epoch, err, lr)
        rates.append(lr)
    # 0.795 and 0.79 improve by less than the threshold: two bad epochs -> decay;
    # then 0.7 improves; four flat epochs decay once more, then the floor stops it.
    np.testing.assert_allclose(rates, [0.01, 0.01, 0.01, 0.001, 0.001, 0.001, 1e-4, 1e-4,
                                       1e-4, 1e-4])


def test_step_schedule_and_constant():
    tcfg = training.TrainConfig(lr_schedule="step", lr_steps=(2, 4), learning_rate=0.1)

    def rates(lr, epochs):  # the rate each epoch hands to the next, as trainer does
        out = []
        for e in epochs:
            lr = training.next_learning_rate(tcfg, training.Plateau(), e, 0.5, lr)[1]
            out.append(lr)
        return out

    np.testing.assert_allclose(rates(0.1, range(1, 6)), [0.1, 0.01, 0.01, 0.001, 0.001])
    # Resumed after epoch 2 with --lr 0.05: that rate holds until the next step (4).
    np.testing.assert_allclose(rates(0.05, range(3, 6)), [0.05, 0.005, 0.005])
    const = training.TrainConfig(lr_schedule="constant")
    assert training.next_learning_rate(const, training.Plateau(), 3, 0.9, 0.02)[1] == 0.02
    with pytest.raises(ValueError, match="lr_schedule"):
        training.TrainConfig(lr_schedule="cosine")


# ------------------------------------------------------------------------------ devices

def _two_steps(devices: int) -> dict[str, np.ndarray]:
    """Losses and parameters after two steps on the first `devices` devices, from fixed
    random parameters (made without compiling init_params, which is slow on CPU)."""
    rng = np.random.default_rng(0)
    shapes = model.abstract_params(TINY)
    params = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32), shapes)
    state = training.TrainState(np.int32(0), params,
                                training.make_optimizer(0.01, 0.9).init(params))
    mesh = training.make_mesh(jax.devices()[:devices])
    state = training.replicate(state, mesh)
    step = training.make_train_step(TINY, 0.1, mesh)
    losses = []
    for _ in range(2):
        state, metrics = step(state, training.put_batch(mesh, *_batch(rng.integers(1000))),
                              jax.random.key(7))
        losses.append(float(metrics["loss"]))
    assert len(state.params["conv1"]["kernel"].sharding.device_set) == devices
    flat = {"/".join(str(k.key) for k in path): np.asarray(a) for path, a in
            jax.tree_util.tree_flatten_with_path(state.params)[0]}
    return {"losses": np.array(losses), **flat}


def test_bfloat16_compute_keeps_float32_parameters_and_tracks_float32():
    mesh = training.make_mesh(jax.devices()[:1])
    images, labels = _batch()
    stored = np.clip(images * 255 + 128, 0, 255).astype(np.uint8)  # as if stored at 64 px
    zeros = np.zeros(BATCH, np.int32)
    batch = training.put_batch(mesh, stored, labels, zeros, zeros, zeros.astype(bool))
    mean = training.replicate(np.full((64, 64, 3), 128, np.float32), mesh)
    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = dataclasses.replace(TINY, dtype=dtype)
        step = training.make_stored_train_step(config, 0.1, mesh)
        state, metrics = step(_state(mesh), batch, mean, jax.random.key(1))
        assert {a.dtype for a in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
        losses[dtype] = float(metrics["loss"])
    assert losses["bfloat16"] != losses["float32"]  # really computed in bfloat16
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.05)


def test_stored_loss_is_the_steps_loss_and_compiles_once_per_config_and_mesh():
    """The divergence check's loss (trainer, before each checkpoint): the loss a stored
    step reports for the same parameters and dropout key, and one compiled program per
    (config, mesh) in a process, however many runs build it."""
    mesh = training.make_mesh(jax.devices()[:1])
    images, labels = _batch()
    stored = np.clip(images * 255 + 128, 0, 255).astype(np.uint8)
    zeros = np.zeros(BATCH, np.int32)
    batch = training.put_batch(mesh, stored, labels, zeros, zeros, zeros.astype(bool))
    mean = training.replicate(np.full((64, 64, 3), 128, np.float32), mesh)
    rng = jax.random.key(1)
    loss_fn = training.make_stored_loss(TINY, mesh)
    # Another run: an equal config read back, a new mesh over the same devices.
    assert training.make_stored_loss(dataclasses.replace(TINY),
                                     training.make_mesh(jax.devices()[:1])) is loss_fn
    state = _state(mesh)
    loss = float(loss_fn(state.params, batch, mean, jax.random.fold_in(rng, 0)))
    _, metrics = training.make_stored_train_step(TINY, 0.1, mesh)(state, batch, mean, rng)
    np.testing.assert_allclose(loss, float(metrics["loss"]), rtol=1e-6)
    compiled = loss_fn._cache_size()  # other tests of the session may have added their own
    loss_fn(_state(mesh, lr=0.5).params, batch, mean, rng)
    assert loss_fn._cache_size() == compiled


def test_train_py_dtype_defaults_to_float32_on_cpu():
    sys.path.insert(0, str(ROOT))
    from zfjax.commands import train
    assert train.build_run(train.parse_args(["--preset", "cpu"])).model.dtype == "float32"
    assert train.build_run(train.parse_args(["--preset", "cpu", "--dtype", "bfloat16"])
                           ).model.dtype == "bfloat16"
