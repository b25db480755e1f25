"""Feature transfer: linear classifiers on a frozen network's layers (Zeiler & Fergus
2014, section 5.2: Tables 4-5 and 7, Fig. 9).

* ``feature_layers``: the layers of Table 7 that a network has: the top map of each
  conv layer (pool1, pool2, conv3, conv4, pool5 for ZFNet) and the hidden fc layers
  (fc6, fc7), bottom to top; a Table 3 variant without conv3-4 or fc6-7 lacks those.
* ``extract_features``: the features of those layers for a set of images, in
  batched, jitted forward passes of the frozen network. Spatial maps are average-pooled onto a g x g grid so that a layer
  has at most ``max_features`` dimensions (g = the map's side when it fits).
* ``fit_softmax``: multinomial logistic regression with an L2 penalty, trained
  full-batch with optax (Adam), vmapped over several penalties or draws at once.
* ``layer_table``: per layer, the L2 penalty picked on a held-out part of the
  training split, then the test accuracy of a classifier retrained on the whole
  training split with it (Table 7's column for one dataset).
* ``few_shot_curve``: the softmax retrained on the top layer (fc7; ``curve_layer``)
  with n training images per class, over several random draws: mean and std test
  accuracy against n (Fig. 9, Tables 4-5).
* ``scratch_accuracy``: the same network trained from random weights on one draw's
  few images (Table 4's "no pretraining" row); optional, it trains a whole network.

``visualize.py transfer RUN --data SOURCE`` (``zfjax.commands.transfer``, figure
``zfjax.figures.transfer``) runs both on a TFDS dataset or an image folder with a
training and a test split and writes CSVs and a PNG.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zfjax.inputs import data
from zfjax.nets import model, network
from zfjax.train import trainer, training

L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
PER_CLASS = (1, 5, 15, 30, 60)
MAX_FEATURES = 4096
HELD_OUT = 0.2  # fraction of the training split used to pick the L2 penalty


# ---- features ----------------------------------------------------------------------


def feature_layers(config: network.Network) -> tuple[str, ...]:
    """Table 7's layers that config has, bottom to top: the top map of each numbered
    conv layer (its pool where it has one), then the hidden fc layers.

    ZFNet and AlexNet: pool1, pool2, conv3, conv4, pool5, fc6, fc7; without conv3-4:
    pool1, pool2, pool5, fc6, fc7; without fc6-7: pool1 ... pool5; VGG16: pool1 ...
    pool5, fc6, fc7.
    """
    tops = {}
    for name in network.projectable_layers(config):  # bottom to top: a pool overrides its conv
        tops[network.layer_order(name)[0]] = name
    return tuple(tops.values()) + network.fc_layers(config)


def curve_layer(config: network.Network) -> str:
    """The layer under the classifier, whose softmax Fig. 9 retrains (fc7 for ZFNet;
    pool5 without fc6-7)."""
    return feature_layers(config)[-1]



def grid_side(side: int, channels: int, max_features: int) -> int:
    """Largest g <= side with g * g * channels <= max_features (at least 1)."""
    g = side
    while g > 1 and g * g * channels > max_features:
        g -= 1
    return g


def pool_matrix(side: int, g: int) -> np.ndarray:
    """(g, side) float32 matrix averaging ``side`` positions onto ``g`` equal-as-possible bins."""
    edges = np.linspace(0, side, g + 1)
    m = np.zeros((g, side), np.float32)
    for i in range(g):
        lo, hi = int(np.floor(edges[i])), int(np.ceil(edges[i + 1]))
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def feature_grids(config: network.Network, layers, max_features: int) -> tuple:
    """((layer, g or 0), ...): the pooling grid of each spatial layer, 0 for fc layers."""
    sizes = network.layer_sizes(config)
    spatial, fc = network.projectable_layers(config), network.fc_layers(config)
    out = []
    for layer in layers:
        if layer in fc:
            out.append((layer, 0))
        elif layer in spatial:
            out.append((layer, grid_side(sizes[layer], network.num_channels(config, layer),
                                         max_features)))
        else:
            raise ValueError(f"unknown layer {layer!r} for features; expected some of "
                             f"{', '.join(spatial + fc)}")
    return tuple(out)


@partial(jax.jit, static_argnames=("config", "grids"))
def _features_batch(config, params, images, grids):
    _, aux = model.forward(config, params, images)
    out = {}
    for layer, g in grids:
        a = aux["activations"][layer].astype(jnp.float32)
        if a.ndim == 4:
            if g < a.shape[1]:
                p = jnp.asarray(pool_matrix(a.shape[1], g))
                a = jnp.einsum("gh,nhwc,kw->ngkc", p, a, p)
            a = a.reshape(a.shape[0], -1)
        out[layer] = a
    return out


def extract_features(config: network.Network, params, batches, *, layers=None,
                     max_features: int = MAX_FEATURES) -> dict[str, np.ndarray]:
    """Features of each layer (default: ``feature_layers(config)``) for a stream of
    network-input batches (float32 (B, H, W, 3)).

    Every batch is padded to the first one's size (one compilation). Returns
    layer -> float32 (N, D): fc layers as they are (rectified, no dropout), spatial
    maps average-pooled onto ``feature_grids`` and flattened (NHWC order).
    """
    layers = feature_layers(config) if layers is None else tuple(layers)
    grids = feature_grids(config, layers, max_features)
    parts, size = {layer: [] for layer in layers}, None
    for batch in batches:
        batch = np.asarray(batch, np.float32)
        count = len(batch)
        size = size or count
        if count < size:
            batch = np.concatenate([batch, np.zeros((size - count,) + batch.shape[1:], batch.dtype)])
        out = jax.device_get(_features_batch(config, params, batch, grids))
        for layer in layers:
            parts[layer].append(out[layer][:count])
    return {layer: np.concatenate(p) for layer, p in parts.items()}


# ---- linear classifiers ------------------------------------------------------------


def standardize(train: np.ndarray, *others: np.ndarray):
    """Scale features to zero mean and unit variance using the training set's statistics.

    Constant features become 0. Returns the standardized train followed by the others.
    """
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 1e-8, std, np.inf)
    return tuple(((x - mean) / std).astype(np.float32) for x in (train,) + others)


class Softmax(NamedTuple):
    """A linear classifier: logits = x @ weight + bias; weight (D, C), bias (C,)."""

    weight: jax.Array
    bias: jax.Array


@partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_softmax(x, y, weights, l2, *, num_classes: int, steps: int = 300,
                learning_rate: float = 0.01) -> Softmax:
    """Multinomial logistic regression, full batch, ``steps`` Adam steps from zero.

    x float32 (N, D), y int (N,), weights float32 (N,) per-example weights (0 drops
    an example; lets draws of different sizes share one shape); l2: the penalty
    l2 / 2 * |W|^2 added to the weighted mean cross-entropy. vmap over (weights, l2)
    to fit several at once. Returns a Softmax.
    """
    params = Softmax(jnp.zeros((x.shape[1], num_classes), jnp.float32),
                     jnp.zeros((num_classes,), jnp.float32))
    onehot = jax.nn.one_hot(y, num_classes)
    total = jnp.maximum(weights.sum(), 1e-12)

    def loss(p):
        logits = x @ p.weight + p.bias
        ce = -(onehot * jax.nn.log_softmax(logits)).sum(axis=1)
        return (weights * ce).sum() / total + 0.5 * l2 * jnp.sum(p.weight ** 2)

    opt = optax.adam(learning_rate)

    def step(carry, _):
        p, state = carry
        grads = jax.grad(loss)(p)
        updates, state = opt.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params


@jax.jit
def accuracy(classifier: Softmax, x, y) -> jax.Array:
    """Fraction of rows of x (N, D) whose arg-max logit is y (N,)."""
    return jnp.mean(jnp.argmax(x @ classifier.weight + classifier.bias, axis=1) == y)


def held_out_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held) index arrays: ``fraction`` of each class held out (at least one image
    of each class with two or more stays in fit), chosen with np.random.default_rng(seed)."""
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n = min(len(members) - 1, int(round(fraction * len(members)))) if len(members) > 1 else 0
        held.append(members[:n])
        fit.append(members[n:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


class LayerResult(NamedTuple):
    """One row of Table 7: the layer's feature size, the L2 picked, held-out and test accuracy."""

    layer: str
    dims: int
    l2: float
    held_out_accuracy: float
    test_accuracy: float


def layer_result(layer: str, train_x, train_y, test_x, test_y, num_classes: int, *,
                 l2_grid=L2_GRID, steps: int = 300, seed: int = 0) -> LayerResult:
    """Pick the L2 penalty on a held-out part of the training split, retrain on all of it,
    and measure test accuracy."""
    fit, held = held_out_split(train_y, HELD_OUT, seed)
    grid = jnp.asarray(l2_grid, jnp.float32)
    fx, hx = standardize(train_x[fit], train_x[held])
    held_acc = np.asarray(_grid_accuracy(fx, train_y[fit], hx, train_y[held], grid,
                                         num_classes=num_classes, steps=steps))
    best = int(np.argmax(held_acc))  # ties: the smallest penalty
    tx, sx = standardize(train_x, test_x)
    final = fit_softmax(tx, train_y, jnp.ones(len(train_y)), grid[best],
                        num_classes=num_classes, steps=steps)
    return LayerResult(layer, int(train_x.shape[1]), float(l2_grid[best]),
                       float(held_acc[best]), float(accuracy(final, sx, test_y)))


@partial(jax.jit, static_argnames=("num_classes", "steps"))
def _grid_accuracy(x, y, held_x, held_y, grid, *, num_classes, steps):
    """Held-out accuracy (L,) of a classifier fitted on (x, y) for each L2 penalty of grid (L,)."""
    def one(l2):
        clf = fit_softmax(x, y, jnp.ones(x.shape[0]), l2, num_classes=num_classes, steps=steps)
        return accuracy(clf, held_x, held_y)
    return jax.vmap(one)(grid)


def layer_table(features_train: dict, train_y, features_test: dict, test_y, num_classes: int,
                **options) -> list[LayerResult]:
    """``layer_result`` for every layer of the feature dicts, in their order."""
    return [layer_result(layer, features_train[layer], train_y, features_test[layer], test_y,
                         num_classes, **options) for layer in features_train]


class Curve(NamedTuple):
    """Fig. 9: test accuracy against training images per class.

    per_class int (P,); accuracy float32 (P, R) over R random draws; mean, std (P,).
    """

    per_class: np.ndarray
    accuracy: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def draw_per_class(labels: np.ndarray, n: int, draws: int, seed: int) -> np.ndarray:
    """int (draws, n * classes): n random training images of every class per draw
    (np.random.default_rng(seed)); ValueError if a class has fewer than n."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    short = [(int(c), len(m)) for c, m in zip(classes, members) if len(m) < n]
    if short:
        raise ValueError(f"{n} training images per class asked, but class {short[0][0]} has "
                         f"only {short[0][1]}; pass smaller --per-class values or a larger --limit")
    return np.stack([np.concatenate([rng.choice(m, n, replace=False) for m in members])
                     for _ in range(draws)])


def few_shot_curve(train_x, train_y, test_x, test_y, num_classes: int, per_class, *,
                   draws: int = 5, l2: float = 1e-2, steps: int = 300, seed: int = 0) -> Curve:
    """Retrain the softmax on n images per class (each of ``per_class``), ``draws`` times.

    Features are standardized with each draw's own training images. Returns a Curve.
    """
    acc = []
    for n in per_class:
        picks = draw_per_class(train_y, n, draws, seed + n)
        acc.append(np.asarray(_draw_accuracy(train_x, train_y, test_x, test_y, picks,
                                             jnp.float32(l2), num_classes=num_classes,
                                             steps=steps)))
    acc = np.stack(acc).astype(np.float32)
    return Curve(np.asarray(per_class, np.int32), acc, acc.mean(axis=1), acc.std(axis=1))


@partial(jax.jit, static_argnames=("num_classes", "steps"))
def _draw_accuracy(train_x, train_y, test_x, test_y, picks, l2, *, num_classes, steps):
    """Test accuracy (R,) of a softmax fitted on each draw's training rows picks (R, M)."""
    def one(idx):
        x = train_x[idx]
        mean, std = x.mean(axis=0), x.std(axis=0)
        std = jnp.where(std > 1e-8, std, jnp.inf)
        clf = fit_softmax((x - mean) / std, train_y[idx], jnp.ones(idx.shape[0]), l2,
                          num_classes=num_classes, steps=steps)
        return accuracy(clf, (test_x - mean) / std, test_y)
    return jax.lax.map(one, picks)


# ---- no pretraining (Table 4) ------------------------------------------------------


class Scratch(NamedTuple):
    """Table 4's "no pretraining" row: test top-1 of the network trained from random
    weights on n training images per class. per_class int (P,); accuracy float32 (P,);
    epochs: training epochs of each."""

    per_class: np.ndarray
    accuracy: np.ndarray
    epochs: int


def subset(images: data.ImageSet, idx: np.ndarray) -> data.ImageSet:
    """The images at idx (int (M,)) of a split."""
    return data.ImageSet(images.images[idx], images.labels[idx], images.class_names, 0,
                         tuple(images.paths[i] for i in idx))


def scratch_accuracy(config: network.Network, train: data.ImageSet, test: data.ImageSet, *,
                     epochs: int, batch_size: int = 32, learning_rate: float = 0.01,
                     seed: int = 0) -> float:
    """Test top-1 (centre crop) of ``config``'s architecture trained from random weights
    on ``train`` alone for ``epochs`` epochs.

    The paper's recipe at a constant learning rate: SGD with momentum 0.9, dropout,
    filter renormalisation, random crops and flips (data.train_batches), inputs minus
    the mean image of ``train``. He-normal init whatever config says: with N(0, 1e-2)
    a few hundred steps stay at chance (see run.PRESETS). The batch is the largest
    multiple of the device count <= min(batch_size, len(train)).
    """
    config = dataclasses.replace(config, num_classes=len(train.class_names), init_std=None)
    mesh = training.make_mesh()
    devices = mesh.devices.size
    batch = min(batch_size, len(train)) // devices * devices
    if batch < 1:
        raise ValueError(f"{len(train)} training images are fewer than the {devices} devices")
    tcfg = training.TrainConfig(epochs=epochs, batch_size=batch, learning_rate=learning_rate,
                                lr_schedule="constant", seed=seed)
    mean = data.mean_image(train)
    state = training.create_state(config, tcfg, mesh)
    step = training.make_train_step(config, tcfg.filter_radius, mesh)
    rng = training.dropout_key(tcfg)
    for epoch in range(1, epochs + 1):
        for x, y in data.train_batches(train, mean, batch, config.image_size, seed=seed,
                                       epoch=epoch):
            state, _ = step(state, training.put_batch(mesh, x, y), rng)
    top1, _ = trainer.evaluate(state.params, training.make_eval_step(config, mesh), test, mean,
                               config, batch, mesh)
    return float(top1)


def scratch_row(config: network.Network, train: data.ImageSet, test: data.ImageSet, per_class,
                *, epochs: int, seed: int = 0, **options) -> Scratch:
    """``scratch_accuracy`` on the first draw of n images per class that ``few_shot_curve``
    uses with the same seed, for each n of per_class (one draw each: every point trains
    a network)."""
    acc = [scratch_accuracy(config, subset(train, draw_per_class(train.labels, n, 1, seed + n)[0]),
                            test, epochs=epochs, seed=seed, **options) for n in per_class]
    return Scratch(np.asarray(per_class, np.int32), np.asarray(acc, np.float32), epochs)


# ---- tables ---------------------------------------------------------------------


def layers_csv(rows: list[LayerResult]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LayerResult._fields)
    for r in rows:
        writer.writerow([r.layer, r.dims, f"{r.l2:g}", f"{r.held_out_accuracy:.4f}",
                         f"{r.test_accuracy:.4f}"])
    return out.getvalue()


def curve_csv(curve: Curve) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["per_class", "draws", "mean_accuracy", "std_accuracy"])
    for n, acc, m, s in zip(curve.per_class, curve.accuracy, curve.mean, curve.std):
        writer.writerow([int(n), len(acc), f"{m:.4f}", f"{s:.4f}"])
    return out.getvalue()


def scratch_csv(scratch: Scratch) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["per_class", "epochs", "accuracy"])
    for n, acc in zip(scratch.per_class, scratch.accuracy):
        writer.writerow([int(n), scratch.epochs, f"{acc:.4f}"])
    return out.getvalue()


def format_table(rows: list[LayerResult]) -> str:
    """Table 7's column as text: layer, feature size, L2, held-out and test accuracy (%)."""
    lines = [f"{'layer':<6} {'dims':>6} {'L2':>7} {'held-out %':>10} {'test %':>7}"]
    for r in rows:
        lines.append(f"{r.layer:<6} {r.dims:>6} {r.l2:>7g} {100 * r.held_out_accuracy:>10.1f} "
                     f"{100 * r.test_accuracy:>7.1f}")
    return "\n".join(lines)
