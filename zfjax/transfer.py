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

``visualize.py transfer RUN --data SOURCE`` runs both on a TFDS dataset or an
image folder with a training and a test split and writes CSVs and a PNG.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import pathlib
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zfjax import argtypes, artifacts, cli, data, model, network, trainer, training

L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
PER_CLASS = (1, 5, 15, 30, 60)
MAX_FEATURES = 4096
HELD_OUT = 0.2  # fraction of the training split used to pick the L2 penalty


# ---- features ----------------------------------------------------------------------


def feature_layers(config: model.Network) -> tuple[str, ...]:
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


def curve_layer(config: model.Network) -> str:
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


def feature_grids(config: model.Network, layers, max_features: int) -> tuple:
    """((layer, g or 0), ...): the pooling grid of each spatial layer, 0 for fc layers."""
    sizes = model.layer_sizes(config)
    spatial, fc = model.projectable_layers(config), model.fc_layers(config)
    out = []
    for layer in layers:
        if layer in fc:
            out.append((layer, 0))
        elif layer in spatial:
            out.append((layer, grid_side(sizes[layer], model.num_channels(config, layer),
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


def extract_features(config: model.Network, params, batches, *, layers=None,
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


def scratch_accuracy(config: model.Network, train: data.ImageSet, test: data.ImageSet, *,
                     epochs: int, batch_size: int = 32, learning_rate: float = 0.01,
                     seed: int = 0) -> float:
    """Test top-1 (centre crop) of ``config``'s architecture trained from random weights
    on ``train`` alone for ``epochs`` epochs.

    The paper's recipe at a constant learning rate: SGD with momentum 0.9, dropout,
    filter renormalisation, random crops and flips (data.train_batches), inputs minus
    the mean image of ``train``. He-normal init whatever config says: with N(0, 1e-2)
    a few hundred steps stay at chance (see trainer.presets). The batch is the largest
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


def scratch_row(config: model.Network, train: data.ImageSet, test: data.ImageSet, per_class,
                *, epochs: int, seed: int = 0, **options) -> Scratch:
    """``scratch_accuracy`` on the first draw of n images per class that ``few_shot_curve``
    uses with the same seed, for each n of per_class (one draw each: every point trains
    a network)."""
    acc = [scratch_accuracy(config, subset(train, draw_per_class(train.labels, n, 1, seed + n)[0]),
                            test, epochs=epochs, seed=seed, **options) for n in per_class]
    return Scratch(np.asarray(per_class, np.int32), np.asarray(acc, np.float32), epochs)


# ---- tables and the figure ---------------------------------------------------------


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


def plot_transfer(rows: list[LayerResult], curve: Curve | None, *, title: str | None = None,
                  chance: float | None = None, layer: str = "fc7",
                  scratch: Scratch | None = None):
    """Left: test accuracy of a linear classifier per layer (Table 7); right: the softmax
    on ``layer`` retrained on n images per class, test accuracy mean +- std over draws
    (Fig. 9), and with ``scratch`` the network trained from scratch on those images
    (Table 4's "no pretraining")."""
    from matplotlib.figure import Figure

    panels = 1 + (curve is not None)
    fig = Figure(figsize=(5.8 * panels, 4.2), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    x = np.arange(len(rows))
    axes[0].bar(x, [100 * r.test_accuracy for r in rows], color="C0", label="test")
    axes[0].plot(x, [100 * r.held_out_accuracy for r in rows], "o", color="C1",
                 label="held-out part of train (picks L2)")
    for i, r in enumerate(rows):
        axes[0].text(i, 100 * r.test_accuracy + 1, f"{100 * r.test_accuracy:.1f}", ha="center",
                     fontsize=8)
    axes[0].set_xticks(x, [f"{r.layer}\n{r.dims}" for r in rows], fontsize=8)
    axes[0].set(ylabel="accuracy (%)", ylim=(0, 105),
                title="linear classifier on each layer (Table 7)")
    if curve is not None:
        axes[1].errorbar(curve.per_class, 100 * curve.mean, yerr=100 * curve.std, fmt="o-",
                         capsize=3, label=f"{layer} softmax, {curve.accuracy.shape[1]} draws")
        if scratch is not None:
            axes[1].plot(scratch.per_class, 100 * scratch.accuracy, "s--", color="C3",
                         label=f"no pretraining (from scratch, {scratch.epochs} epochs)")
        axes[1].set(xlabel="training images per class", ylabel="test accuracy (%)",
                    ylim=(0, 105), title=f"softmax retrained on {layer} (Fig. 9)")
    for ax in axes:
        if chance is not None:
            ax.axhline(100 * chance, color="0.5", ls=":", lw=1, label="chance")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# ---- command line ------------------------------------------------------------------


def add_cli(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "transfer", help="Tables 4-7, Fig. 9: linear classifiers on each layer of the frozen "
                         "network, and the fc7 softmax against training images per class",
        description="Extract pool1..fc7 features of a dataset's training and test splits with "
                    "the frozen network; fit a multinomial logistic regression per layer (L2 "
                    "picked on a held-out part of the training split) and report test accuracy; "
                    "retrain the fc7 softmax (the top layer's) on n images per class over "
                    "random draws; with --scratch-epochs, also train the network from scratch "
                    "on those images (Table 4's 'no pretraining').")
    cli.add_model_arguments(parser)
    parser.add_argument("--data", required=True, metavar="SOURCE",
                        help="TFDS name (e.g. cifar10, caltech101) or image folder "
                             "<root>/<split>/<class>/<image> with a training and a test split")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory (never downloads)")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default=None,
                        help="default: 'test', or 'val' / 'validation' when there is no test split")
    parser.add_argument("--limit", type=argtypes.positive_int, default=None,
                        help="at most this many training images, spread over the classes")
    parser.add_argument("--test-limit", type=argtypes.positive_int, default=None,
                        help="at most this many test images, spread over the classes")
    parser.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="layers whose features are tested (default: those of pool1 pool2 "
                             "conv3 conv4 pool5 fc6 fc7 the network has, e.g. no conv3 conv4 "
                             "for --variant no-conv3-4)")
    parser.add_argument("--max-features", type=argtypes.positive_int, default=MAX_FEATURES,
                        help=f"spatial maps are average-pooled to at most this many features "
                             f"(default {MAX_FEATURES})")
    parser.add_argument("--l2", type=argtypes.nonnegative_float, nargs="+", default=list(L2_GRID),
                        help="L2 penalties tried on the held-out part (default: "
                             f"{' '.join(f'{v:g}' for v in L2_GRID)})")
    parser.add_argument("--steps", type=argtypes.positive_int, default=300, help="Adam steps per classifier")
    parser.add_argument("--per-class", type=argtypes.positive_int, nargs="*", default=list(PER_CLASS),
                        help="training images per class for the curve of the softmax on fc7 "
                             "(pool5 without fc6-7) (default: "
                             f"{' '.join(map(str, PER_CLASS))}; none: skip the curve)")
    parser.add_argument("--draws", type=argtypes.positive_int, default=5, help="random draws per point of the curve")
    parser.add_argument("--scratch-epochs", type=argtypes.positive_int, default=None,
                        metavar="E",
                        help="also train the network from random weights for E epochs on the "
                             "first draw of each --per-class point and test it (Table 4's 'no "
                             "pretraining' row; trains one network per point: slow)")
    parser.add_argument("--seed", type=argtypes.seed, default=0)
    parser.add_argument("--batch-size", type=argtypes.positive_int, default=128)
    parser.set_defaults(run=run_cli)
    return parser


def load_test_split(source, split, size, *, data_dir, limit):
    """The test split: ``split`` if given, else 'test', else 'val' (a folder's or TFDS's)."""
    if split is not None:
        return data.load_split(source, split, size, data_dir=data_dir, limit=limit,
                               progress=False), split
    try:
        return data.load_split(source, "test", size, data_dir=data_dir, limit=limit,
                               progress=False), "test"
    except (FileNotFoundError, ValueError) as first:
        try:
            return data.load_split(source, "val", size, data_dir=data_dir, limit=limit,
                                   progress=False), "val"
        except (FileNotFoundError, ValueError):
            raise first from None


def _check_args(args, config) -> tuple[str, ...]:
    """The layers to test; ValueError for what argparse's types cannot check."""
    layers = feature_layers(config) if args.layers is None else tuple(args.layers)
    feature_grids(config, layers, args.max_features)  # unknown layers fail before loading data
    top = curve_layer(config)
    if top not in layers and args.per_class:
        raise ValueError(f"the --per-class curve retrains the softmax on {top}: keep {top} in "
                         f"--layers, or pass --per-class with no values to skip the curve")
    if args.scratch_epochs and not args.per_class:
        raise ValueError("--scratch-epochs trains on the --per-class draws: give --per-class "
                         "values too")
    return layers


def run_cli(args) -> list[pathlib.Path]:
    loaded = cli.load_model(args)
    params, config, info = loaded.params, loaded.config, loaded.info
    layers = _check_args(args, config)
    size = config.image_size
    train = data.load_split(args.data, args.train_split, size, data_dir=args.data_dir,
                            limit=args.limit, progress=False)
    test, test_split = load_test_split(args.data, args.test_split, size,
                                       data_dir=args.data_dir, limit=args.test_limit)
    if tuple(test.class_names) != tuple(train.class_names):
        raise ValueError(f"the {test_split} split of {args.data} has other classes than its "
                         f"{args.train_split} split; both splits need the same class folders")
    num_classes = len(train.class_names)

    def features(split):
        return extract_features(config, params, loaded.preprocessing.batches(
                                    split.images, config.image_size, args.batch_size),
                                layers=layers, max_features=args.max_features)

    train_f, test_f = features(train), features(test)
    rows = layer_table(train_f, train.labels, test_f, test.labels, num_classes,
                       l2_grid=tuple(args.l2), steps=args.steps, seed=args.seed)
    curve = scratch = None
    top = curve_layer(config)
    if args.per_class:
        l2 = next(r.l2 for r in rows if r.layer == top)
        curve = few_shot_curve(train_f[top], train.labels, test_f[top], test.labels,
                               num_classes, args.per_class, draws=args.draws, l2=l2,
                               steps=args.steps, seed=args.seed)
    if args.scratch_epochs:
        scratch = scratch_row(config, train, test, args.per_class, epochs=args.scratch_epochs,
                              seed=args.seed)
    print(f"{args.data}: {len(train)} {args.train_split} / {len(test)} {test_split} images, "
          f"{num_classes} classes; features of {cli.run_label(args.target, info)}")
    print(format_table(rows))
    if curve is not None:
        print(f"{top} softmax, images per class: " + ", ".join(
            f"{int(n)}: {100 * m:.1f} +- {100 * s:.1f}%"
            for n, m, s in zip(curve.per_class, curve.mean, curve.std)))
    if scratch is not None:
        print(f"no pretraining (from scratch, {scratch.epochs} epoch"
              f"{'s' if scratch.epochs > 1 else ''}, 1 draw), images per class: " + ", ".join(f"{int(n)}: {100 * a:.1f}%"
                                     for n, a in zip(scratch.per_class, scratch.accuracy)))
    out = cli.output_folder(args, info)
    paths = []
    for name, text in (("transfer_layers.csv", layers_csv(rows)),
                       ("transfer_curve.csv", curve_csv(curve) if curve is not None else None),
                       ("transfer_scratch.csv",
                        scratch_csv(scratch) if scratch is not None else None)):
        if text is None:
            continue
        with artifacts.atomic_path(out / name) as tmp:
            tmp.write_text(text)
        paths.append(out / name)
    fig = plot_transfer(rows, curve, chance=1 / num_classes, layer=top, scratch=scratch, title=(
        f"Features of {cli.run_label(args.target, info)} on {args.data} ({len(train)} training, "
        f"{len(test)} test images, {num_classes} classes)"))
    return [artifacts.save_png(fig, out / "transfer.png")] + paths
