"""Feature evolution during training (Zeiler & Fergus 2014, Fig. 4).

At the end of every epoch the training loop calls::

    snapshot = take_snapshot(config, params, probe)
    save_snapshot(run_dir, epoch, snapshot)

For a fixed set of feature maps (``Probe.maps``, a few per conv layer) a
snapshot holds each map's strongest activation over a fixed set of images
(``Probe.images``), projected to pixels by the deconvnet and cropped to the
unit's receptive field, with the matching image patch. ``zfjax.figures.evolution``
then draws one block per layer, maps (rows) over epochs (columns); the command is
``zfjax.commands.evolution``.

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

import numpy as np

from zfjax import artifacts
from zfjax.inputs import data
from zfjax.nets import deconv, network, strongest

DEFAULT_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)  # the epochs of the paper's Fig. 4
_SNAPSHOT_NAME = re.compile(r"epoch_(\d+)\.npz")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: == on arrays is ambiguous
class Probe:
    """What a run follows: fixed images and feature maps."""

    images: np.ndarray  # float32 (P, H, W, 3) network inputs (data.preprocess with the run's mean)
    display: np.ndarray  # uint8 (P, H, W, 3) the same centre crops, for showing
    maps: dict[str, np.ndarray]  # conv layer -> int32 (K,) channels to follow


def make_probe(images: data.ImageSet, mean: np.ndarray, config: network.Network, *,
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
    for layer in network.conv_layers(config):
        channels = network.num_channels(config, layer)
        chosen = rng.choice(channels, min(maps_per_layer, channels), replace=False)
        maps[layer] = np.sort(chosen).astype(np.int32)
    stored = images.images[idx]
    return Probe(images=data.preprocess(stored, mean, size),
                 display=np.ascontiguousarray(data.centre_crop(stored, size)), maps=maps)


# ---- snapshots ---------------------------------------------------------------------


class EpochSnapshots:
    """The training loop's per-epoch hook for Fig. 4 (``trainer.fit(..., snapshots=)``)."""

    def make_probe(self, images, mean, config, *, seed: int, count: int) -> Probe:
        return make_probe(images, mean, config, seed=seed, count=count)

    def __call__(self, run_dir, epoch: int, config, params, probe: Probe) -> pathlib.Path:
        return save_snapshot(run_dir, epoch, take_snapshot(config, params, probe))


def take_snapshot(config: network.Network, params, probe: Probe, *,
                  batch_size: int = 128) -> dict[str, np.ndarray]:
    """Strongest activation of each followed map over the probe, projected to pixels
    (``strongest.strongest_over``, ``deconv.project_strongest``). Returns the
    '{layer}/{field}' arrays described in the module docstring.
    """
    best = strongest.strongest_over(config, params, probe.images, probe.maps,
                                    batch_size=batch_size)
    snapshot = {}
    for layer, found in best.items():
        projected = deconv.project_strongest(config, params, layer, found, probe.maps[layer],
                                             probe.images, display=probe.display)
        snapshot.update({f"{layer}/{field}": value
                         for field, value in projected._asdict().items()})
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


def default_epochs(saved) -> list[int]:
    """The saved epochs among DEFAULT_EPOCHS and the last saved one, or all saved epochs
    if none of DEFAULT_EPOCHS is."""
    chosen = [e for e in DEFAULT_EPOCHS if e in saved]
    if not chosen:
        return sorted(saved)
    return chosen + [max(saved)] if max(saved) not in chosen else chosen


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
