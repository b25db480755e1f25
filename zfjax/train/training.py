"""The paper's training recipe (Zeiler & Fergus 2014, section 3) as pure functions.

* Weights ~ N(0, 1e-2^2), biases 0: we read "initialized to 10^-2" as the std of a
  zero-mean Gaussian (Network.init_std=0.01). init_std=None gives He-normal,
  which small, short CPU runs need to leave the initial plateau quickly; their
  presets keep conv1 at 1e-2 (first_init_std), or its filters stay noise.
* SGD, momentum 0.9, learning rate 1e-2, batch 128, dropout 0.5 (in the model).
* The learning rate drops (x0.1) when the validation error plateaus (``plateau``),
  or at fixed epochs (``step``). It lives in the optimizer state
  (``optax.inject_hyperparams``), so changing it does not recompile the step.
* After every update each conv filter (one output channel's k x k x C_in kernel,
  ``kernel[..., o]`` in HWIO) whose RMS exceeds 0.1 is rescaled to RMS 0.1.

Data parallel: a 1-D ``Mesh`` over all devices with axis 'data'; batches are
sharded along it (``NamedSharding(mesh, P('data'))``), the state is replicated, and
XLA inserts the gradient all-reduce. Several hosts work the same way after
``jax.distributed.initialize()``: every process computes the same global batch from
(seed, epoch, step) and hands its own slice to ``put_batch``.
"""

from __future__ import annotations

import dataclasses
import math
import functools
from functools import partial
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from zfjax.inputs import data
from zfjax.nets import model
from zfjax.nets.network import Network

SCHEDULES = ("plateau", "step", "constant")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (paper values by default).

    lr_schedule: 'plateau' (x lr_decay after plateau_patience epochs without the
        validation error improving by plateau_threshold), 'step' (x lr_decay after
        each epoch in lr_steps) or 'constant'.
    filter_radius: conv filters with a larger RMS are rescaled to it (None: off).
    shuffle_labels: train on the training labels permuted over the images, from the seed
        (``loader.PermutedLabels``): the data randomisation of the sanity checks.
    """

    epochs: int = 70
    batch_size: int = 128
    learning_rate: float = 1e-2
    momentum: float = 0.9
    lr_schedule: str = "plateau"
    lr_decay: float = 0.1
    plateau_patience: int = 3
    plateau_threshold: float = 1e-3
    min_learning_rate: float = 1e-5
    lr_steps: tuple[int, ...] = ()
    filter_radius: float | None = 0.1
    seed: int = 0
    shuffle_labels: bool = False

    def __post_init__(self):
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ValueError(f"epochs, batch_size and learning_rate must be positive, got "
                             f"{self.epochs}, {self.batch_size}, {self.learning_rate}")
        object.__setattr__(self, "lr_steps", tuple(int(s) for s in self.lr_steps))


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; a replicated pytree."""

    step: jax.Array  # int32 (), updates done so far
    params: dict
    opt_state: Any  # optax.inject_hyperparams(sgd) state; holds the learning rate


def make_optimizer(learning_rate: float, momentum: float) -> optax.GradientTransformation:
    """SGD with momentum whose hyperparameters live in its state (set at init)."""
    return optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate, momentum=momentum)


def init_state(config: Network, tcfg: TrainConfig, key: jax.Array) -> TrainState:
    params = model.init_params(config, key)
    opt_state = make_optimizer(tcfg.learning_rate, tcfg.momentum).init(params)
    return TrainState(jnp.zeros((), jnp.int32), params, opt_state)


def local_value(x: jax.Array) -> np.ndarray:
    """A replicated array's value, read from this process's own copy (works across hosts)."""
    return np.asarray(x.addressable_data(0))


def learning_rate(state: TrainState) -> float:
    return float(local_value(state.opt_state.hyperparams["learning_rate"]))


def with_learning_rate(state: TrainState, lr: float) -> TrainState:
    """The same state with the optimizer's learning rate set to lr (same sharding)."""
    old = state.opt_state.hyperparams["learning_rate"]
    value = np.asarray(lr, old.dtype)
    new = jax.make_array_from_callback(value.shape, old.sharding, lambda index: value[index])
    hyper = {**state.opt_state.hyperparams, "learning_rate": new}
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyper))


def renormalize_filters(params: dict, radius: float) -> dict:
    """Rescales every conv filter whose RMS exceeds radius to RMS radius.

    A filter is one output channel's kernel[..., o] (k, k, C_in) in HWIO layout.
    Biases and fully connected layers are left alone.
    """
    def fix(kernel):
        rms = jnp.sqrt(jnp.mean(jnp.square(kernel), axis=(0, 1, 2), keepdims=True))
        return kernel * jnp.where(rms > radius, radius / rms, 1.0).astype(kernel.dtype)

    return {name: ({**layer, "kernel": fix(layer["kernel"])}
                   if "kernel" in layer and layer["kernel"].ndim == 4 else layer)
            for name, layer in params.items()}


def loss_and_accuracy(params, images, labels, config: Network, dropout_key):
    """Mean softmax cross-entropy and (top-1 accuracy, the batch norms' batch statistics)
    of a training-mode forward."""
    logits, aux = model.forward(config, params, images, train=True, dropout_key=dropout_key)
    logits = logits.astype(jnp.float32)  # bfloat16 compute: the loss in float32
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (jnp.mean(jnp.argmax(logits, -1) == labels), aux["batch_stats"])


def train_step(state: TrainState, batch, rng: jax.Array, *, config: Network,
               filter_radius: float | None = 0.1) -> tuple[TrainState, dict]:
    """One SGD update on batch = (images float32 (B, H, W, 3), labels int32 (B,)).

    rng is the run's dropout key; this step's key is fold_in(rng, state.step), so a
    resumed run draws the same masks. Learning rate and momentum come from the state.
    Batch norms' running statistics live in params (no gradient reaches them, so SGD
    leaves them) and move towards the batch's after the update
    (``model.update_batch_norm``). Returns (new state, {'loss', 'accuracy'}).
    """
    images, labels = batch
    key = jax.random.fold_in(rng, state.step)
    (loss, (acc, batch_stats)), grads = jax.value_and_grad(loss_and_accuracy, has_aux=True)(
        state.params, images, labels, config, key)
    # The numbers given here are unused: update() reads them from state.opt_state.
    updates, opt_state = make_optimizer(0.0, 0.0).update(grads, state.opt_state, state.params)
    params = model.update_batch_norm(config, optax.apply_updates(state.params, updates),
                                     batch_stats)
    if filter_radius is not None:
        params = renormalize_filters(params, filter_radius)
    return TrainState(state.step + 1, params, opt_state), {"loss": loss, "accuracy": acc}


def augment(images, mean, ys, xs, flips, input_size: int) -> jax.Array:
    """On-device crops: float32 (B, input_size, input_size, 3) network inputs.

    images uint8 (B, S, S, 3) at the stored size; mean float32 (S, S, 3); ys, xs int
    (B,) window offsets; flips bool (B,). Each input is (window - mean's window) /
    PIXEL_SCALE, mirrored left-right where flips: the arithmetic of data.crop_windows, so
    the network sees the same numbers as data.train_batches.
    """
    shape = (input_size, input_size, 3)

    def one(image, y, x, flip):
        crop = jax.lax.dynamic_slice(image, (y, x, 0), shape).astype(jnp.float32)
        diff = crop - jax.lax.dynamic_slice(mean, (y, x, 0), shape)
        return jnp.where(flip, diff[:, ::-1], diff) * np.float32(1 / data.PIXEL_SCALE)

    return jax.vmap(one)(images, ys.astype(jnp.int32), xs.astype(jnp.int32), flips)


def stored_train_step(state: TrainState, batch, mean, rng: jax.Array, *, config: Network,
                      filter_radius: float | None = 0.1) -> tuple[TrainState, dict]:
    """train_step on a stored-size batch = (uint8 images (B, S, S, 3), int32 labels (B,),
    ys (B,), xs (B,), flips (B,)): crops, flips and mean subtraction (augment) run here,
    on the device. mean: float32 (S, S, 3)."""
    images, labels, ys, xs, flips = batch
    x = augment(images, mean, ys, xs, flips, config.image_size)
    return train_step(state, (x, labels), rng, config=config, filter_radius=filter_radius)


def stored_eval_step(params, images, labels, mask, mean, *, config: Network,
                     ten_crop: bool = False) -> jax.Array:
    """eval_step on uint8 stored-size images (B, S, S, 3): the centre crop, or with
    ten_crop the mean softmax of the ten crops (centre, four corners and their mirror
    images, data.ten_crop_windows). Returns float32 (3,) counts as eval_step."""
    size, n = images.shape[1], images.shape[0]
    if not ten_crop:
        c = jnp.full((n,), (size - config.image_size) // 2, jnp.int32)
        x = augment(images, mean, c, c, jnp.zeros(n, bool), config.image_size)
        return eval_step(params, x, labels, mask, config=config)
    probs = 0.0
    for y, x, flip in zip(*data.ten_crop_windows(size, config.image_size)):
        crops = augment(images, mean, jnp.full((n,), y), jnp.full((n,), x),
                        jnp.full((n,), bool(flip)), config.image_size)
        probs = probs + jax.nn.softmax(model.forward(config, params, crops)[0].astype(
            jnp.float32))
    return hit_counts(probs, labels, mask)


def eval_step(params, images, labels, mask, *, config: Network) -> jax.Array:
    """Counts over one padded batch: float32 (3,) = [top-1 correct, top-5 correct, n].

    mask (B,) bool marks the real examples; padding keeps the batch shape fixed.
    """
    logits, _ = model.forward(config, params, images)
    return hit_counts(logits, labels, mask)


def hit_counts(logits, labels, mask) -> jax.Array:
    """float32 (3,) = [top-1 hits, top-5 hits, examples] over the rows where mask is True."""
    top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    m = mask.astype(jnp.float32)
    hit5 = jnp.any(top == labels[:, None], axis=-1)
    return jnp.stack([jnp.sum(m * (top[:, 0] == labels)), jnp.sum(m * hit5), jnp.sum(m)])


# ------------------------------------------------------------------------------ devices

def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis 'data' over devices (default: every device of every host)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    if batch_size % mesh.size:
        raise ValueError(f"batch size {batch_size} is not divisible by the {mesh.size} devices; "
                         f"pass a batch size that is a multiple of {mesh.size}")


def put_batch(mesh: Mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Global host batches (B, ...) -> arrays sharded over 'data'.

    Every process holds the same global batch and contributes its own contiguous
    slice (on one host: all of it).
    """
    sharding = batch_sharding(mesh)
    count, index = jax.process_count(), jax.process_index()
    out = []
    for a in arrays:
        per = len(a) // count
        out.append(jax.make_array_from_process_local_data(
            sharding, a[index * per:(index + 1) * per], a.shape))
    return tuple(out)


def put_local_batch(mesh: Mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """This process's share (B / process_count, ...) of global batches -> arrays of
    global shape (B, ...) sharded over 'data' (each host reads only its share)."""
    sharding, count = batch_sharding(mesh), jax.process_count()
    return tuple(jax.make_array_from_process_local_data(
        sharding, a, (len(a) * count, *a.shape[1:])) for a in arrays)


@functools.cache
def make_stored_train_step(config: Network, filter_radius: float | None, mesh: Mesh):
    """jit(stored_train_step): state replicated and donated, batch over 'data', mean and
    dropout key replicated."""
    repl, data_ = replicated(mesh), batch_sharding(mesh)
    return jax.jit(partial(stored_train_step, config=config, filter_radius=filter_radius),
                   donate_argnums=0, in_shardings=(repl, (data_,) * 5, repl, repl),
                   out_shardings=(repl, repl))


@functools.cache  # one compilation per (config, mesh) in a process, not one per run
def make_stored_loss(config: Network, mesh: Mesh):
    """jit: (params, stored batch, mean, dropout key) -> the float32 scalar training loss
    of params on the batch (stored_train_step's loss, without the update). The batch is
    stored_train_step's; params, mean and key replicated."""
    repl, data_ = replicated(mesh), batch_sharding(mesh)

    def loss(params, batch, mean, key):
        images, labels, ys, xs, flips = batch
        x = augment(images, mean, ys, xs, flips, config.image_size)
        return loss_and_accuracy(params, x, labels, config, key)[0]
    return jax.jit(loss, in_shardings=(repl, (data_,) * 5, repl, repl), out_shardings=repl)


@functools.cache
def make_stored_eval_step(config: Network, mesh: Mesh, ten_crop: bool = False):
    repl, data_ = replicated(mesh), batch_sharding(mesh)
    return jax.jit(partial(stored_eval_step, config=config, ten_crop=ten_crop),
                   in_shardings=(repl, data_, data_, data_, repl), out_shardings=repl)


@functools.cache  # one compiled step per (config, radius, mesh) in a process
def make_train_step(config: Network, filter_radius: float | None, mesh: Mesh):
    """jit(train_step) for this mesh: state replicated and donated, batch over 'data'."""
    repl, data = replicated(mesh), batch_sharding(mesh)
    return jax.jit(partial(train_step, config=config, filter_radius=filter_radius),
                   donate_argnums=0, in_shardings=(repl, (data, data), repl),
                   out_shardings=(repl, repl))


@functools.cache
def make_eval_step(config: Network, mesh: Mesh):
    repl, data = replicated(mesh), batch_sharding(mesh)
    return jax.jit(partial(eval_step, config=config),
                   in_shardings=(repl, data, data, data), out_shardings=repl)


def create_state(config: Network, tcfg: TrainConfig, mesh: Mesh) -> TrainState:
    """init_state from tcfg.seed, replicated over the mesh."""
    return replicate(init_state(config, tcfg, jax.random.key(tcfg.seed)), mesh)


def replicate(tree, mesh: Mesh):
    """Copies every array of tree to every device of the mesh (works across hosts)."""
    sharding = replicated(mesh)

    def put(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(put, tree)


def abstract_state(config: Network, tcfg: TrainConfig, mesh: Mesh) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of the state, for restoring."""
    shapes = jax.eval_shape(partial(init_state, config, tcfg), jax.random.key(0))
    repl = replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), shapes)


def dropout_key(tcfg: TrainConfig) -> jax.Array:
    """The run's dropout key; step keys are fold_in(key, step) inside train_step."""
    return jax.random.fold_in(jax.random.key(tcfg.seed), 1)


# ------------------------------------------------------------------ learning-rate rules

@dataclasses.dataclass(frozen=True)
class Plateau:
    """State of the plateau rule (JSON-serialisable, stored with each checkpoint)."""

    best_error: float = math.inf
    bad_epochs: int = 0


def next_learning_rate(tcfg: TrainConfig, plateau: Plateau, epoch: int, val_error: float,
                       lr: float) -> tuple[Plateau, float]:
    """The learning rate for epoch + 1, given epoch's validation top-1 error and rate."""
    if tcfg.lr_schedule == "step":
        # x lr_decay from the current rate (not recomputed from the initial one), so a
        # rate given on --resume holds until the next step.
        return plateau, lr * tcfg.lr_decay if epoch in tcfg.lr_steps else lr
    if tcfg.lr_schedule == "constant":
        return plateau, lr
    if val_error < plateau.best_error - tcfg.plateau_threshold:
        return Plateau(val_error, 0), lr
    bad = plateau.bad_epochs + 1
    if bad >= tcfg.plateau_patience and lr * tcfg.lr_decay >= tcfg.min_learning_rate:
        return Plateau(plateau.best_error, 0), lr * tcfg.lr_decay
    return Plateau(plateau.best_error, bad), lr
