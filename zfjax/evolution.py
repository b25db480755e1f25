"""Feature evolution during training (Zeiler & Fergus 2014, Fig. 4).

At the end of every epoch the training loop calls::

    snapshot = take_snapshot(config, params, probe)
    save_snapshot(run_dir, epoch, snapshot)

For a fixed set of feature maps (``Probe.maps``, a few per conv layer) a
snapshot holds each map's strongest activation over a fixed set of images
(``Probe.images``), projected to pixels by the deconvnet and cropped to the
unit's receptive field, with the matching image patch. ``plot_evolution``
then draws one block per layer, maps (rows) over epochs (columns).

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

from zfjax import argtypes, artifacts, data, deconv, model, render, strongest
from zfjax.receptive_field import crop_to_receptive_field

DEFAULT_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)  # the epochs of the paper's Fig. 4
_SNAPSHOT_NAME = re.compile(r"epoch_(\d+)\.npz")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: == on arrays is ambiguous
class Probe:
    """What a run follows: fixed images and feature maps."""

    images: np.ndarray  # float32 (P, H, W, 3) network inputs (data.preprocess with the run's mean)
    display: np.ndarray  # uint8 (P, H, W, 3) the same centre crops, for showing
    maps: dict[str, np.ndarray]  # conv layer -> int32 (K,) channels to follow


def make_probe(images: data.ImageSet, mean: np.ndarray, config: model.Network, *,
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
    for layer in model.conv_layers(config):
        channels = model.num_channels(config, layer)
        chosen = rng.choice(channels, min(maps_per_layer, channels), replace=False)
        maps[layer] = np.sort(chosen).astype(np.int32)
    stored = images.images[idx]
    return Probe(images=data.preprocess(stored, mean, size),
                 display=np.ascontiguousarray(data.centre_crop(stored, size)), maps=maps)


# ---- snapshots ---------------------------------------------------------------------


@partial(jax.jit, static_argnames="config")
def _update_running_max(config, params, best, images, first, count, maps):
    """Fold one batch into the running max of every followed map.

    best: layer -> (value f32, image, y, x), each (K,); images (B, H, W, 3) of which the
    first ``count`` are real (the rest pad the last batch); ``first``: probe index of
    images[0]. Ties keep the earlier (image, y, x) in row-major order, as argmax does.
    """
    _, aux = model.forward(config, params, images)  # logits unused: XLA drops fc6..fc8
    out = {}
    for layer, channels in maps.items():
        running = strongest.TopK(*(a[:, None] for a in best[layer]))  # k = 1
        acts = aux["activations"][layer][..., channels]
        out[layer] = tuple(a[:, 0] for a in strongest.merge(running, acts, first, count))
    return out


def strongest_in_probe(config: model.Network, params, probe: Probe, *,
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
        best = _update_running_max(config, params, best, batch, start, count, maps)
    return jax.device_get(best)


class EpochSnapshots:
    """The training loop's per-epoch hook for Fig. 4 (``trainer.fit(..., snapshots=)``)."""

    def make_probe(self, images, mean, config, *, seed: int, count: int) -> Probe:
        return make_probe(images, mean, config, seed=seed, count=count)

    def __call__(self, run_dir, epoch: int, config, params, probe: Probe) -> pathlib.Path:
        return save_snapshot(run_dir, epoch, take_snapshot(config, params, probe))


def take_snapshot(config: model.Network, params, probe: Probe, *,
                  batch_size: int = 128) -> dict[str, np.ndarray]:
    """Strongest activation of each followed map over the probe, projected to pixels.

    Returns the '{layer}/{field}' arrays described in the module docstring.
    """
    best = strongest_in_probe(config, params, probe, batch_size=batch_size)
    layers = list(best)
    # Re-run the forward on just the winning images, one per unit (a fixed shape, so
    # no recompilation from epoch to epoch), to get the switches to project through.
    winners = np.concatenate([best[layer][1] for layer in layers])
    _, aux = model.forward_jit(config, params, probe.images[winners])
    snapshot, first = {}, 0
    for layer in layers:
        value, image, y, x = best[layer]
        k = len(value)
        units = deconv.Units(np.arange(first, first + k, dtype=np.int32), probe.maps[layer], y, x)
        projections = np.asarray(deconv.project_units(config, params, aux, layer, units),
                                 np.float32)
        first += k
        snapshot.update({
            f"{layer}/channels": np.asarray(probe.maps[layer], np.int32),
            f"{layer}/values": value.astype(np.float32),
            f"{layer}/images": image.astype(np.int32),
            f"{layer}/positions": np.stack([y, x], axis=1).astype(np.int32),
            f"{layer}/projections": crop_to_receptive_field(config, layer, projections, y, x),
            f"{layer}/patches": crop_to_receptive_field(config, layer, probe.display[image], y, x),
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

_DPI = 100
_SCREEN_WIDTH = 1900  # pixels the whole figure aims to fit
_GAP, _PATCH_GAP, _BLOCK_GAP = 2, 8, 44  # pixels between tiles, before patches, between blocks
_HEADER, _FOOTER = 44, 30  # pixels for the title and column heads, and the layer names


def default_epochs(saved) -> list[int]:
    """The saved epochs among DEFAULT_EPOCHS and the last saved one, or all saved epochs
    if none of DEFAULT_EPOCHS is."""
    chosen = [e for e in DEFAULT_EPOCHS if e in saved]
    if not chosen:
        return sorted(saved)
    return chosen + [max(saved)] if max(saved) not in chosen else chosen


def tile_side(layers: int, columns: int, screen: int = _SCREEN_WIDTH) -> int:
    """Pixel side of one tile so that ``layers`` blocks of ``columns`` tiles fit ``screen``."""
    per_block = (screen - _BLOCK_GAP * (layers + 1)) / layers - _PATCH_GAP
    return int(min(96, max(32, per_block // columns - _GAP)))


def evolution_block(projections: np.ndarray, patches: np.ndarray, side: int) -> np.ndarray:
    """One layer's block of Fig. 4: rows = maps, columns = epochs, then the patch column.

    projections float32 (E, K, R, R, 3) (epoch-major), patches uint8 (K, R, R, 3).
    Each tile is cut to the part inside the image (``render.content_box``; the
    patch with the last epoch's projection), each projection stretched on its own
    (``render.to_display``) and scaled to ``side`` px. Returns uint8
    (K*(side+gap)-gap, (E+1)*(side+gap)-gap+patch_gap, 3) on white.
    """
    e, k = projections.shape[:2]
    step = side + _GAP
    out = np.full((k * step - _GAP, (e + 1) * step - _GAP + _PATCH_GAP, 3), 255, np.uint8)
    shown = render.to_display(projections)
    for i in range(k):
        y = i * step
        for j in range(e):  # each epoch's winner may sit elsewhere: trim each tile alone
            box = render.content_box(projections[j, i])
            out[y:y + side, j * step:j * step + side] = render.fit(
                render.trim(shown[j, i], box), side)
        box = render.content_box(projections[-1, i], patches[i])
        x = e * step + _PATCH_GAP
        out[y:y + side, x:x + side] = render.fit(render.trim(patches[i], box), side)
    return out


def evolution_figure(snapshots: dict, epochs, *, title: str | None = None):
    """Paper Fig. 4 from loaded snapshots (epoch -> arrays); returns a matplotlib Figure.

    One block per conv layer, side by side as in the paper: rows are the
    followed maps ("#17" at the left), columns the epochs, each tile the map's
    strongest projection that epoch; a last column shows the image patch of the
    last epoch drawn. Drawn pixel for pixel (one image per block), sized to fit
    a screen about 1900 px wide.
    """
    from matplotlib.figure import Figure

    epochs = sorted(epochs)
    last = snapshots[epochs[-1]]
    layers = sorted((key.split("/")[0] for key in last if key.endswith("/channels")),
                    key=model.network.layer_order)
    side = tile_side(len(layers), len(epochs) + 1)
    blocks = [evolution_block(
        np.stack([snapshots[e][f"{layer}/projections"] for e in epochs]),
        last[f"{layer}/patches"], side) for layer in layers]
    width = _BLOCK_GAP + sum(b.shape[1] + _BLOCK_GAP for b in blocks)
    height = _HEADER + max(b.shape[0] for b in blocks) + _FOOTER
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    x = _BLOCK_GAP
    for layer, block in zip(layers, blocks):
        bh, bw = block.shape[:2]
        ax = fig.add_axes((x / width, 1 - (_HEADER + bh) / height, bw / width, bh / height))
        ax.imshow(block, interpolation="nearest")
        ax.set_axis_off()
        step = side + _GAP
        heads = [str(e) for e in epochs] + ["patch"]
        for j, head in enumerate(heads):
            cx = j * step + side / 2 + (_PATCH_GAP if j == len(epochs) else 0)
            ax.text(cx, -4, head, ha="center", va="bottom", fontsize=7)
        for i, channel in enumerate(last[f"{layer}/channels"]):
            ax.text(-4, i * step + side / 2, f"#{int(channel)}", ha="right", va="center",
                    fontsize=6)
        ax.text(bw / 2, bh + 6, layer, ha="center", va="top", fontsize=10, weight="bold")
        x += bw + _BLOCK_GAP
    fig.text(0.5, 1 - 4 / height, (title + ": " if title else "")
             + "strongest projection of followed feature maps (rows) at epochs (columns)",
             ha="center", va="top", fontsize=9)
    return fig


def plot_evolution(run_dir, out_png, epochs=None) -> pathlib.Path:
    """Draw the paper's Fig. 4 from a run's snapshots into out_png; returns its path.

    epochs: default those of DEFAULT_EPOCHS that were saved and the last saved one.
    Raises ValueError for an epoch not saved or snapshots that follow other maps.
    """
    snapshots = load_snapshots(run_dir)
    epochs = check_epochs(snapshots, epochs)
    fig = evolution_figure(snapshots, epochs, title=pathlib.Path(run_dir).name)
    out_png = pathlib.Path(out_png)
    with artifacts.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return out_png


def check_epochs(snapshots: dict, epochs=None) -> list[int]:
    """The epochs to draw, sorted (default: ``default_epochs``); ValueError when one is not
    saved or the snapshots do not follow the same maps."""
    if epochs is None:
        epochs = default_epochs(snapshots)
    missing = [e for e in epochs if e not in snapshots]
    if missing or not epochs:
        raise ValueError(f"epochs {missing or list(epochs)} cannot be drawn; saved epochs "
                         f"are {sorted(snapshots)}")
    epochs = sorted(epochs)
    last = snapshots[epochs[-1]]
    for epoch in epochs:
        for key in last:
            if key.endswith("/channels") and not np.array_equal(snapshots[epoch].get(key),
                                                                 last[key]):
                raise ValueError(f"epoch {epoch} follows other {key.split('/')[0]} maps than "
                                 f"epoch {epochs[-1]}; snapshots of one run must share one probe")
    return epochs


# ---- command line: visualize.py evolution RUN_DIR ----------------------------------


def add_cli(subparsers):
    parser = subparsers.add_parser(
        "evolution", help="Fig. 4: feature evolution over the epochs of a training run",
        description="Draw the per-epoch snapshots train.py saved in RUN_DIR/snapshots.")
    parser.add_argument("target", help="run folder written by train.py")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="output folder (default: <run>/figures)")
    parser.add_argument("--epochs", type=argtypes.positive_int, nargs="+", default=None,
                        help="epochs to show (default: those of 1,2,5,10,20,30,40,64 present, "
                             "and the last)")
    parser.set_defaults(run=_run_cli)
    return parser


def _run_cli(args) -> list[pathlib.Path]:
    run_dir = pathlib.Path(args.target)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist; pass the --out folder "
                                f"of a train.py run")
    out = args.out if args.out is not None else run_dir / "figures"
    return [plot_evolution(run_dir, out / "evolution.png", args.epochs)]
