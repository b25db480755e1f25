"""The atlas of a network: every feature map's top 9, projected, and its class profile.

One batched, jitted stream over a set of images yields, for every layer at once,

* each feature map's k strongest activations (one per image, as in the paper's
  Fig. 2; ``strongest.merge`` over ``strongest.padded`` batches, as ``strongest.mine``), and
* each map's mean activation per class: the map's spatial mean on an image,
  averaged over the images of each class.

Then each winner is projected to pixels with the deconvnet (``deconv.project_units``)
and cropped to its receptive field. Winners are grouped by image, so each image
is run forward once per chunk of units that need it, not once per unit.
``figures.atlas_site`` turns the result into a static HTML site.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zfjax import deconv, model, strongest
from zfjax.receptive_field import crop_to_receptive_field, receptive_field_size

TOP = strongest.TOP  # activations kept per feature map (the paper's 3x3 grids)
PROJECTION_CHUNK = 128  # units projected per compiled call (one forward of their images)


class LayerAtlas(NamedTuple):
    """One layer of the atlas; C maps, k kept activations, R = receptive_field_size.

    top: ``strongest.TopK`` of numpy (C, k) fields (value, image index, y, x on the map);
    projections: float32 (C, k, R, R, 3), each winner's deconvnet projection cropped to its
    receptive field (zero-padded past the image edge; all zero for unfilled slots);
    class_mean: float32 (C, classes), the map's spatial mean activation averaged over each
    class's images (NaN for a class with no image), or None when there are no labels.
    """

    top: strongest.TopK
    projections: np.ndarray
    class_mean: np.ndarray | None


class Atlas(NamedTuple):
    """layers: layer -> LayerAtlas, in network order; class_count int64 (classes,) images
    per class (None without labels); count: images streamed."""

    layers: dict
    class_count: np.ndarray | None
    count: int


# ---- the one pass over the images --------------------------------------------------


@partial(jax.jit, static_argnames=("config", "layers", "classes"))
def _atlas_batch(config, params, state, images, labels, first, count, layers, classes):
    """Fold one batch into the running top-k and per-class sums of every layer.

    state: (layer -> TopK, layer -> float32 (classes, C) sums). labels int32 (B,), -1
    for none; only the first ``count`` images are real (the rest pad the last batch).
    """
    tops, sums = state
    _, aux = model.forward(config, params, images)  # logits unused: XLA drops what is above
    real = jnp.arange(images.shape[0]) < count
    onehot = jax.nn.one_hot(jnp.where(real, labels, -1), classes, dtype=jnp.float32)  # (B, K)
    new_tops, new_sums = {}, {}
    for layer in layers:
        acts = aux["activations"][layer]
        new_tops[layer] = strongest.merge(tops[layer], acts, first, count)
        new_sums[layer] = sums[layer] + onehot.T @ acts.astype(jnp.float32).mean(axis=(1, 2))
    return new_tops, new_sums


def mine(config: model.Network, params, inputs, labels=None, *, layers=None, k: int = TOP,
         num_classes: int | None = None, batch_size: int = 64, progress=None):
    """Stream ``inputs`` once: every layer's running top-k and per-class sums.

    inputs: float32 (N, H, W, 3) network inputs, or any object with ``len`` whose
    slices ``inputs[a:b]`` are such arrays (preprocessed on demand). labels: int (N,)
    class indices or None. Returns (layer -> TopK of numpy (C, k), layer -> float32
    (classes, C) sums or None, class_count int64 (classes,) or None).
    """
    layers = model.check_layers(config, model.conv_layers(config) if layers is None else layers)
    n = len(inputs)
    classes = 0
    if labels is not None:
        labels = np.asarray(labels, np.int32)
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} images")
        classes = max(num_classes or 0, int(labels.max(initial=-1)) + 1)
    state = ({layer: strongest.empty_top(model.num_channels(config, layer), k) for layer in layers},
             {layer: jnp.zeros((max(classes, 1), model.num_channels(config, layer)), jnp.float32)
              for layer in layers})
    if labels is None:
        labels_padded = np.full(n + batch_size, -1, np.int32)
    else:
        labels_padded = np.concatenate([labels, np.full(batch_size, -1, np.int32)])
    stream = (inputs[start:start + batch_size] for start in range(0, n, batch_size))
    for batch, first, count in strongest.padded(stream):
        batch_labels = labels_padded[first:first + len(batch)]  # -1 past the real images
        state = _atlas_batch(config, params, state, batch, batch_labels, first, count, layers,
                             max(classes, 1))
        if progress is not None:
            progress.update(int(count))
    tops, sums = jax.device_get(state)
    tops = {layer: strongest.TopK(*(np.asarray(a) for a in top)) for layer, top in tops.items()}
    if labels is None:
        return tops, None, None
    return tops, {layer: np.asarray(s) for layer, s in sums.items()}, np.bincount(labels, minlength=classes)


# ---- projections of the winners ----------------------------------------------------


@partial(jax.jit, static_argnames=("config", "layer"))
def _project_chunk(config, params, images, units, layer):
    """images (B, H, W, 3); units index into them -> projections (K, H, W, 3)."""
    _, aux = model.forward(config, params, images)
    return deconv.project_units(config, params, aux, layer, units)


def project_top(config: model.Network, params, layer: str, top: strongest.TopK, inputs, *,
                chunk: int = PROJECTION_CHUNK, progress=None) -> np.ndarray:
    """Every filled slot of ``top`` projected to pixels, cropped to its receptive field.

    top: the layer's TopK (C, k) with image indices into ``inputs`` (array or lazily
    preprocessed, indexable by an int array). Units are sorted by image and projected
    ``chunk`` at a time: one forward of the chunk's distinct images, then one reverse
    pass per unit (``deconv.project_units``); every call has the same shapes (at most
    ``chunk`` units, split evenly; as many images as the chunk with the most distinct
    ones), so one compilation per layer. Returns float32 (C, k, R, R, 3); unfilled slots are zero.
    """
    c, k = top.value.shape
    size = config.image_size
    r = receptive_field_size(config, layer)
    out = np.zeros((c, k, r, r, 3), np.float32)
    filled = np.flatnonzero(np.isfinite(np.asarray(top.value)).reshape(-1))
    order = filled[np.argsort(np.asarray(top.image).reshape(-1)[filled], kind="stable")]
    image, ys, xs = (np.asarray(a).reshape(-1) for a in (top.image, top.y, top.x))
    if not len(order):
        return out
    chunk = -(-len(order) // -(-len(order) // chunk))  # even chunks: little padding
    chunks = [order[start:start + chunk] for start in range(0, len(order), chunk)]
    batch = max((len(np.unique(image[slots])) for slots in chunks), default=1)  # images per call
    for slots in chunks:
        used, local = np.unique(image[slots], return_inverse=True)
        images = np.zeros((batch, size, size, 3), np.float32)
        images[:len(used)] = inputs[used]
        pad = chunk - len(slots)  # pad with copies of the first unit: one shape for every call
        units = deconv.Units(*(np.concatenate([a, np.repeat(a[:1], pad)]).astype(np.int32)
                               for a in (local, slots // k, ys[slots], xs[slots])))
        full = np.asarray(_project_chunk(config, params, images, units, layer))[:len(slots)]
        out.reshape(c * k, r, r, 3)[slots] = crop_to_receptive_field(
            config, layer, full, ys[slots], xs[slots])
        if progress is not None:
            progress.update(len(slots))
    return out


def build(config: model.Network, params, inputs, labels=None, *, layers=None, k: int = TOP,
          num_classes: int | None = None, batch_size: int = 64, progress=None) -> Atlas:
    """The atlas of ``layers`` (default: every conv layer) over ``inputs``.

    inputs: float32 (N, H, W, 3) network inputs (or lazily preprocessed, see ``mine``);
    labels: int (N,) class indices, or None. One streamed pass (``mine``), then the
    projections of every map's winners (``project_top``). ``progress(desc, total)``, if
    given, returns a tqdm-like bar (a context manager with ``update(n)``), made once for
    the images streamed and once for the units projected.
    """
    progress = progress or _no_progress
    with progress("mining", len(inputs)) as bar:
        tops, sums, class_count = mine(config, params, inputs, labels, layers=layers, k=k,
                                       num_classes=num_classes, batch_size=batch_size,
                                       progress=bar)
    units = sum(int(np.isfinite(top.value).sum()) for top in tops.values())
    result = {}
    with progress("projecting", units) as bar:
        for layer, top in tops.items():
            class_mean = None
            if sums is not None:
                with np.errstate(invalid="ignore", divide="ignore"):
                    class_mean = (sums[layer] / class_count[:, None]).T.astype(np.float32)
            result[layer] = LayerAtlas(top, project_top(config, params, layer, top, inputs,
                                                        progress=bar), class_mean)
    return Atlas(result, class_count, len(inputs))


class _no_progress:
    def __init__(self, desc, total):
        pass

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False

