"""Feature evolution during training (Zeiler & Fergus 2014, Fig. 4).

At the end of every epoch the training loop calls::

    snapshot = take_snapshot(params, config, probe)
    save_snapshot(run_dir, epoch, snapshot)

For a fixed set of feature maps (``Probe.maps``, a few per conv layer) a
snapshot holds each map's strongest activation over a fixed set of images
(``Probe.images``), projected to pixels by the deconvnet and cropped to the
unit's receptive field, with the matching image patch. ``plot_evolution``
then draws the maps (rows) over the epochs (columns).

Snapshot layout (one ``.npz`` per epoch, ``run_dir/snapshots/epoch_0001.npz``,
no pickles). Keys are ``'{layer}/{field}'`` for layer in conv1..conv5, with
K = maps followed in that layer and R = ``receptive_field_size(config, layer)``:

    {layer}/channels     int32   (K,)          feature maps followed
    {layer}/values       float32 (K,)          strongest activation over the probe
    {layer}/images       int32   (K,)          probe index of the image it is in
    {layer}/positions    int32   (K, 2)        its (y, x) on the layer's map
    {layer}/projections  float32 (K, R, R, 3)  deconvnet projection, cropped to the RF
    {layer}/patches      uint8   (K, R, R, 3)  the image patch under the RF

Receptive fields that run past the image edge are padded with zeros (black
patches, no projection signal), so all crops of a layer share one shape.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from zfjax import artifacts, data, deconv, model
from zfjax.receptive_field import receptive_field, receptive_field_size

DEFAULT_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)  # the epochs of the paper's Fig. 4
_SNAPSHOT_NAME = re.compile(r"epoch_(\d+)\.npz")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: == on arrays is ambiguous
class Probe:
    """What a run follows: fixed images and feature maps."""

    images: np.ndarray  # float32 (P, H, W, 3) network inputs (data.preprocess with the run's mean)
    display: np.ndarray  # uint8 (P, H, W, 3) the same centre crops, for showing
    maps: dict[str, np.ndarray]  # conv layer -> int32 (K,) channels to follow


def make_probe(images: data.ImageSet, mean: np.ndarray, config: model.ZFNetConfig, *,
               count: int = 1000, maps_per_layer: int = 8, seed: int = 0) -> Probe:
    """Probe of min(count, N) images spread over the classes, and random maps per conv layer.

    images: the stored-size set (e.g. the validation split); mean: the run's mean image
    (S, S, 3). The images are chosen round-robin over the classes (no randomness); the
    maps come from np.random.default_rng(seed), sorted within each layer.
    """
    idx = data.spread(images.labels, count)
    size = config.image_size
    rng = np.random.default_rng(seed)
    maps = {}
    for layer in model.CONV_LAYERS:
        channels = model.num_channels(config, layer)
        chosen = rng.choice(channels, min(maps_per_layer, channels), replace=False)
        maps[layer] = np.sort(chosen).astype(np.int32)
    stored = images.images[idx]
    return Probe(images=data.preprocess(stored, mean, size),
                 display=np.ascontiguousarray(data.centre_crop(stored, size)), maps=maps)


# ---- snapshots ---------------------------------------------------------------------


@partial(jax.jit, static_argnames="config")
def _update_running_max(params, best, images, first, count, maps, config):
    """Fold one batch into the running max of every followed map.

    best: layer -> (value f32, image, y, x), each (K,); images (B, H, W, 3) of which the
    first ``count`` are real (the rest pad the last batch); ``first``: probe index of
    images[0]. Ties keep the earlier (image, y, x) in row-major order, as argmax does.
    """
    _, aux = model.forward(params, images, config)  # logits unused: XLA drops fc6..fc8
    real = jnp.arange(images.shape[0]) < count
    out = {}
    for layer, channels in maps.items():
        value, ys, xs = deconv.strongest(aux, layer, channels)  # each (B, K)
        value = jnp.where(real[:, None], value.astype(jnp.float32), -jnp.inf)
        image = jnp.argmax(value, axis=0)  # (K,)
        pick = lambda a: jnp.take_along_axis(a, image[None], axis=0)[0]
        new = (pick(value), first + image, pick(ys), pick(xs))
        better = new[0] > best[layer][0]
        out[layer] = tuple(jnp.where(better, n, o).astype(o.dtype)
                           for n, o in zip(new, best[layer]))
    return out


def strongest_in_probe(params, config: model.ZFNetConfig, probe: Probe, *,
                       batch_size: int = 128) -> dict[str, tuple[np.ndarray, ...]]:
    """Each followed map's strongest activation over the probe.

    Streams the probe through the network in batches (the last one padded, so one
    compilation serves all), keeping only a running max on the device.
    Returns layer -> (value float32, image int32, y int32, x int32), each (K,).
    """
    maps = {layer: jnp.asarray(c, jnp.int32) for layer, c in probe.maps.items()}
    best = {layer: (jnp.full(c.shape, -jnp.inf, jnp.float32),) + (jnp.zeros(c.shape, jnp.int32),) * 3
            for layer, c in maps.items()}
    n = len(probe.images)
    batch_size = min(batch_size, n)
    for start in range(0, n, batch_size):
        batch = probe.images[start:start + batch_size]
        count = len(batch)
        if count < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - count,) + batch.shape[1:],
                                                    batch.dtype)])
        best = _update_running_max(params, best, batch, start, count, maps, config)
    return jax.device_get(best)


def crop_boxes(x: np.ndarray, top: np.ndarray, left: np.ndarray, size: int) -> np.ndarray:
    """Windows x[k, top:top+size, left:left+size] of (K, H, W, C) arrays, zero outside x.

    top, left: int (K,), may be negative or run past the far edge. Returns (K, size, size, C).
    """
    padded = np.pad(x, ((0, 0), (size, size), (size, size), (0, 0)))
    return np.stack([padded[k, t + size:t + 2 * size, l + size:l + 2 * size]
                     for k, (t, l) in enumerate(zip(top, left))])


def take_snapshot(params, config: model.ZFNetConfig, probe: Probe, *,
                  batch_size: int = 128) -> dict[str, np.ndarray]:
    """Strongest activation of each followed map over the probe, projected to pixels.

    Returns the '{layer}/{field}' arrays described in the module docstring.
    """
    best = strongest_in_probe(params, config, probe, batch_size=batch_size)
    layers = list(best)
    # Re-run the forward on just the winning images, one per unit (a fixed shape, so
    # no recompilation from epoch to epoch), to get the switches to project through.
    winners = np.concatenate([best[layer][1] for layer in layers])
    _, aux = model.forward_jit(params, probe.images[winners], config)
    snapshot, first = {}, 0
    for layer in layers:
        value, image, y, x = best[layer]
        k = len(value)
        units = deconv.Units(np.arange(first, first + k, dtype=np.int32), probe.maps[layer], y, x)
        projections = np.asarray(deconv.project_units(params, aux, layer, units, config),
                                 np.float32)
        first += k
        top, left, _, _ = receptive_field(config, layer, y, x, clip=False)
        size = receptive_field_size(config, layer)
        snapshot.update({
            f"{layer}/channels": np.asarray(probe.maps[layer], np.int32),
            f"{layer}/values": value.astype(np.float32),
            f"{layer}/images": image.astype(np.int32),
            f"{layer}/positions": np.stack([y, x], axis=1).astype(np.int32),
            f"{layer}/projections": crop_boxes(projections, top, left, size),
            f"{layer}/patches": crop_boxes(probe.display[image], top, left, size),
        })
    return snapshot


# ---- files -------------------------------------------------------------------------


def snapshot_dir(run_dir) -> pathlib.Path:
    return pathlib.Path(run_dir) / "snapshots"


def save_snapshot(run_dir, epoch: int, snapshot: dict) -> pathlib.Path:
    """Write run_dir/snapshots/epoch_NNNN.npz atomically; an existing file is replaced."""
    return artifacts.save_npz(snapshot_dir(run_dir) / f"epoch_{epoch:04d}.npz", **snapshot)


def load_snapshots(run_dir) -> dict[int, dict[str, np.ndarray]]:
    """Every saved snapshot of a run: epoch -> {key: array}, in epoch order."""
    folder = snapshot_dir(run_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no snapshot folder {folder}; save_snapshot(run_dir, epoch, take_snapshot(...)) "
            f"writes {folder}/epoch_NNNN.npz at the end of each epoch")
    files = {int(m.group(1)): p for p in folder.iterdir()
             if (m := _SNAPSHOT_NAME.fullmatch(p.name))}
    if not files:
        raise FileNotFoundError(f"snapshot folder {folder} has no epoch_NNNN.npz files")
    return {epoch: artifacts.load_npz(files[epoch]) for epoch in sorted(files)}


# ---- the figure --------------------------------------------------------------------

_CELL = 0.9  # inches per cell
_DPI = 120
_MARGIN_LEFT, _MARGIN_TOP, _MARGIN_RIGHT, _MARGIN_BOTTOM = 1.0, 0.45, 0.1, 0.1
_LAYER_GAP = 0.2  # inches between layers' blocks
_PATCH_GAP = 0.25  # inches before the patch column


def figure_size(rows_per_layer: list[int], columns: int, patches: bool = True) -> tuple[float, float]:
    """(width, height) in inches of plot_evolution's figure."""
    width = _MARGIN_LEFT + columns * _CELL + (_PATCH_GAP + _CELL) * patches + _MARGIN_RIGHT
    height = (_MARGIN_TOP + sum(rows_per_layer) * _CELL
              + _LAYER_GAP * (len(rows_per_layer) - 1) + _MARGIN_BOTTOM)
    return width, height


def default_epochs(saved) -> list[int]:
    """The saved epochs among DEFAULT_EPOCHS, or all saved epochs if none of those is."""
    return [e for e in DEFAULT_EPOCHS if e in saved] or sorted(saved)


def plot_evolution(run_dir, out_png, epochs=None) -> pathlib.Path:
    """Draw the paper's Fig. 4 from a run's snapshots; returns the PNG's path.

    Rows: the followed feature maps, grouped by layer ("conv3 #17"); columns: epochs,
    each cell the map's strongest projection that epoch (deconv.to_display, scaled per
    cell). A last column shows the image patches of the last epoch drawn.
    epochs: default those of DEFAULT_EPOCHS that were saved, or all saved if none were.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    snapshots = load_snapshots(run_dir)
    if epochs is None:
        epochs = default_epochs(snapshots)
    missing = [e for e in epochs if e not in snapshots]
    if missing or not epochs:
        raise ValueError(f"epochs {missing or list(epochs)} cannot be drawn; saved epochs "
                         f"are {sorted(snapshots)}")
    epochs = sorted(epochs)
    last = snapshots[epochs[-1]]
    layers = [layer for layer in model.CONV_LAYERS if f"{layer}/channels" in last]
    for epoch in epochs:
        for layer in layers:
            if not np.array_equal(snapshots[epoch][f"{layer}/channels"], last[f"{layer}/channels"]):
                raise ValueError(f"epoch {epoch} follows other {layer} maps than epoch "
                                 f"{epochs[-1]}; snapshots of one run must share one probe")
    rows = [len(last[f"{layer}/channels"]) for layer in layers]
    width, height = figure_size(rows, len(epochs))
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)

    def cell(top_in, left_in, image, title=None, label=None):
        ax = fig.add_axes((left_in / width, 1 - (top_in + _CELL * 0.96) / height,
                           _CELL * 0.96 / width, _CELL * 0.96 / height))
        ax.imshow(image, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if title:
            ax.set_title(title, fontsize=8, pad=3)
        if label:
            ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center", labelpad=4)

    top = _MARGIN_TOP
    for layer, k in zip(layers, rows):
        for i in range(k):
            label = f"{layer} #{int(last[f'{layer}/channels'][i])}"
            for j, epoch in enumerate(epochs):
                projection = snapshots[epoch][f"{layer}/projections"][i]
                title = f"epoch {epoch}" if top == _MARGIN_TOP else None
                cell(top, _MARGIN_LEFT + j * _CELL, deconv.to_display(projection), title,
                     label if j == 0 else None)
            title = f"patch, ep. {epochs[-1]}" if top == _MARGIN_TOP else None
            cell(top, _MARGIN_LEFT + len(epochs) * _CELL + _PATCH_GAP,
                 last[f"{layer}/patches"][i], title)
            top += _CELL
        top += _LAYER_GAP
    out_png = pathlib.Path(out_png)
    with artifacts.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return out_png


# ---- command line: visualize.py evolution RUN_DIR ----------------------------------


def add_cli(subparsers):
    parser = subparsers.add_parser(
        "evolution", help="Fig. 4: feature evolution over the epochs of a training run",
        description="Draw the per-epoch snapshots train.py saved in RUN_DIR/snapshots.")
    parser.add_argument("target", help="run folder written by train.py")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="output folder (default: <run>/figures)")
    parser.add_argument("--epochs", type=int, nargs="+", default=None,
                        help="epochs to show (default: those of 1,2,5,10,20,30,40,64 present)")
    parser.set_defaults(run=_run_cli)
    return parser


def _run_cli(args) -> list[pathlib.Path]:
    run_dir = pathlib.Path(args.target)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist; pass the --out folder "
                                f"of a train.py run")
    out = args.out if args.out is not None else run_dir / "figures"
    return [plot_evolution(run_dir, out / "evolution.png", args.epochs)]
