"""The atlas of a network: every feature map's top 9, projected, and its class profile.

One batched, jitted stream over a set of images yields, for every layer at once,

* each feature map's k strongest activations (one per image, as in the paper's
  Fig. 2; ``strongest.merge`` over ``strongest.padded`` batches, as ``strongest.mine``), and
* each map's mean activation per class: the map's spatial mean on an image,
  averaged over the images of each class.

Then each winner is projected to pixels with the deconvnet and cropped to its
receptive field (``deconv.project_strongest``: winners grouped by image, so each image
is run forward once per chunk of units that need it, not once per unit).
Beside the deconvnet, each map's strongest activation is explained by guided
backprop and by the plain gradient (``attribution.attribute``, batched over the
layer's maps), and each layer gets a sanity score (Adebayo et al. 2018): the rank
correlation of its maps' strongest projections with the same units' projections
in the cascade-randomised network (``cascade_randomised``, ``sanity_scores``).
``figures.atlas_site`` turns the result into a static HTML site.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zfjax.analyses import similarity
from zfjax.nets import attribution, deconv, model, network, strongest
from zfjax.nets.receptive_field import crop_to_receptive_field, receptive_field, receptive_field_size

TOP = strongest.TOP  # activations kept per feature map (the paper's 3x3 grids)
METHODS = ("guided_backprop", "gradient")  # shown beside the deconvnet for each map's top 1
ATTRIBUTION_CHUNK = 32  # top-1 targets per attribution call (dense passes: memory)
SANITY_SEED = 0  # jax.random.key of the re-initialised weights (recorded in atlas.json)


class LayerAtlas(NamedTuple):
    """One layer of the atlas; C maps, k kept activations, R = receptive_field_size.

    top: ``strongest.TopK`` of numpy (C, k) fields (value, image index, y, x on the map);
    projections: float32 (C, k, R, R, 3), each winner's deconvnet projection cropped to its
    receptive field (zero-padded past the image edge; all zero for unfilled slots);
    class_mean: float32 (C, classes), the map's spatial mean activation averaged over each
    class's images (NaN for a class with no image), or None when there are no labels;
    top1: method name (``METHODS``) -> float32 (C, R, R, 3), each map's strongest
    activation explained by that method, cropped like the projections (zero for a map
    with no image), or None when not computed;
    sanity: float32 (C,), each map's ``sanity_scores`` (NaN for a map with no image), or None.
    """

    top: strongest.TopK
    projections: np.ndarray
    class_mean: np.ndarray | None
    top1: dict | None = None
    sanity: np.ndarray | None = None


class Atlas(NamedTuple):
    """layers: layer -> LayerAtlas, in network order; class_count int64 (classes,) images
    per class (None without labels); count: images streamed; sanity_seed: the
    ``jax.random.key`` seed of the cascade-randomised weights (None: no sanity scores)."""

    layers: dict
    class_count: np.ndarray | None
    count: int
    sanity_seed: int | None = None


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


def mine(config: network.Network, params, inputs, labels=None, *, layers=None, k: int = TOP,
         num_classes: int | None = None, batch_size: int = 64, progress=None):
    """Stream ``inputs`` once: every layer's running top-k and per-class sums.

    inputs: float32 (N, H, W, 3) network inputs, or any object with ``len`` whose
    slices ``inputs[a:b]`` are such arrays (preprocessed on demand). labels: int (N,)
    class indices or None. Returns (layer -> TopK of numpy (C, k), layer -> float32
    (classes, C) sums or None, class_count int64 (classes,) or None).
    """
    layers = network.check_layers(config, network.conv_layers(config) if layers is None else layers)
    n = len(inputs)
    classes = 0
    if labels is not None:
        labels = np.asarray(labels, np.int32)
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} images")
        classes = max(num_classes or 0, int(labels.max(initial=-1)) + 1)
    state = ({layer: strongest.empty_top(network.num_channels(config, layer), k) for layer in layers},
             {layer: jnp.zeros((max(classes, 1), network.num_channels(config, layer)), jnp.float32)
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


# ---- other methods and the sanity check, on each map's strongest activation ----------


def top1_attributions(config: network.Network, params, layer: str, top: strongest.TopK, inputs,
                      method: str, *, chunk: int = ATTRIBUTION_CHUNK,
                      progress=None) -> np.ndarray:
    """Each map's strongest activation (slot 0 of ``top``) explained by ``method``
    (``attribution.attribute``: 'guided_backprop', 'gradient', ...), cropped to the unit's
    receptive field like the projections (``deconv.project_strongest``).

    The maps' targets go ``chunk`` at a time (the last chunk padded with copies of its first
    target), so every call has one shape: one compilation per layer and method.
    Returns float32 (C, R, R, 3); zero for a map with no image.
    """
    r = receptive_field_size(config, layer)
    out = np.zeros((top.value.shape[0], r, r, 3), np.float32)
    maps = np.flatnonzero(np.isfinite(np.asarray(top.value)[:, 0])).astype(np.int32)
    if not len(maps):
        return out
    chunk = -(-len(maps) // -(-len(maps) // chunk))  # even chunks: little padding
    image, ys, xs = (np.asarray(a)[:, 0].astype(np.int32) for a in (top.image, top.y, top.x))
    for start in range(0, len(maps), chunk):
        chosen = maps[start:start + chunk]
        padded = np.concatenate([chosen, np.repeat(chosen[:1], chunk - len(chosen))])
        target = attribution.Target(layer, padded, ys[padded], xs[padded])
        explained = attribution.attribute(config, params, np.asarray(inputs[image[padded]]),
                                          target, method)
        out[chosen] = crop_to_receptive_field(config, layer,
                                              np.asarray(explained.maps)[:len(chosen)],
                                              ys[chosen], xs[chosen])
        if progress is not None:
            progress.update(len(chosen))
    return out


def cascade_randomised(config: network.Network, trained: dict, fresh: dict, layer: str) -> dict:
    """Cascading randomisation (Adebayo et al. 2018) down to ``layer``: the ``trained``
    parameters with every layer from the top down to and including ``layer`` taken from
    ``fresh`` (a re-initialised tree, ``model.init_params``). The layers above ``layer``
    do not change its projections; they are swapped too, as the method defines it."""
    order = model.top_down_layers(config)
    if layer not in order:
        raise network.unknown_layer(config, layer)
    return model.with_layers(trained, fresh, order[:order.index(layer) + 1])


def sanity_scores(trained: np.ndarray, randomised: np.ndarray) -> np.ndarray:
    """How alike two stacks of projections are: per map, the Spearman rank correlation
    (``similarity.rank_correlation``) of their absolute values summed over colour.

    trained, randomised: float (C, h, w, 3). Returns float32 (C,) in [-1, 1]; 0 where
    either picture is constant.
    """
    if not len(trained):
        return np.zeros((0,), np.float32)
    return np.asarray(similarity.rank_correlation(np.abs(trained).sum(-1),
                                                  np.abs(randomised).sum(-1)), np.float32)


def layer_sanity(config: network.Network, params, fresh: dict, layer: str, top: strongest.TopK,
                 inputs, *, progress=None) -> np.ndarray:
    """Each map's sanity score: its strongest unit (slot 0 of ``top``) projected by the
    deconvnet in the trained network and in ``cascade_randomised(..., layer)`` (same
    image, same position; both reverse passes start from 1, so a unit silent in the
    randomised network still projects), compared by ``sanity_scores``. 1: the picture
    does not depend on the layer's trained weights. Returns float32 (C,), NaN for a map
    with no image.
    """
    top1 = strongest.TopK(*(np.asarray(a)[:, :1] for a in top))
    maps = np.arange(len(top1.value))[:, None]
    trained = deconv.project_strongest(config, params, layer, top1, maps, inputs, from_one=True,
                                       progress=progress).projections
    # Placed as the trained leaves are: a committed and an uncommitted array are
    # different arguments to jit, and the compiled projection would not be reused.
    swapped = jax.tree.map(lambda new, old: (jax.device_put(new, old.sharding)
                                             if isinstance(old, jax.Array) else np.asarray(new)),
                           cascade_randomised(config, params, fresh, layer), params)
    randomised = deconv.project_strongest(config, swapped, layer, top1, maps, inputs,
                                          from_one=True, progress=progress).projections
    scores = inside_image_scores(config, layer, trained[:, 0], randomised[:, 0],
                                 top1.y[:, 0], top1.x[:, 0])
    return np.where(np.isfinite(top1.value[:, 0]), scores, np.nan).astype(np.float32)


def inside_image_scores(config: network.Network, layer: str, trained: np.ndarray,
                        randomised: np.ndarray, ys, xs) -> np.ndarray:
    """``sanity_scores`` of receptive-field crops (C, R, R, 3) of units at (ys, xs) (C,),
    each on the part of its crop inside the image: the zero padding past the edge is
    equal in both and would count as agreement. Crops of one shape go together (few
    compilations). Returns float32 (C,)."""
    ys, xs = np.asarray(ys), np.asarray(xs)
    top, left, _, _ = receptive_field(config, layer, ys, xs, clip=False)
    c_top, c_left, c_bottom, c_right = receptive_field(config, layer, ys, xs, clip=True)
    boxes = np.stack([c_top - top, c_bottom - top, c_left - left, c_right - left], axis=1)
    scores = np.zeros(len(boxes), np.float32)
    for box in np.unique(boxes, axis=0) if len(boxes) else ():
        same = np.flatnonzero((boxes == box).all(axis=1))
        y0, y1, x0, x1 = box.tolist()
        scores[same] = sanity_scores(trained[same, y0:y1, x0:x1], randomised[same, y0:y1, x0:x1])
    return scores


def build(config: network.Network, params, inputs, labels=None, *, layers=None, k: int = TOP,
          num_classes: int | None = None, batch_size: int = 64, methods=METHODS,
          sanity_seed: int | None = SANITY_SEED, progress=None) -> Atlas:
    """The atlas of ``layers`` (default: every conv layer) over ``inputs``.

    inputs: float32 (N, H, W, 3) network inputs (or lazily preprocessed, see ``mine``);
    labels: int (N,) class indices, or None. One streamed pass (``mine``), then the
    projections of every map's winners (``deconv.project_strongest``), each map's top 1 under
    ``methods`` (``top1_attributions``; () for none) and, unless ``sanity_seed`` is None,
    the maps' sanity scores against weights re-initialised with ``jax.random.key(sanity_seed)``
    (``layer_sanity``). ``progress(desc, total)``, if given, returns a tqdm-like bar (a
    context manager with ``update(n)``), made for the images streamed, the units
    projected and the maps explained.
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
            maps = np.arange(len(top.value))[:, None]
            projected = deconv.project_strongest(config, params, layer, top, maps, inputs,
                                                 progress=bar)
            result[layer] = LayerAtlas(top, projected.projections, class_mean)
    methods = tuple(methods)
    if not methods and sanity_seed is None:
        return Atlas(result, class_count, len(inputs))
    fresh = None if sanity_seed is None else model.init_params(config, jax.random.key(sanity_seed))
    maps = sum(int(np.isfinite(top.value[:, 0]).sum()) for top in tops.values())
    with progress("explaining", maps * (len(methods) + 2 * (fresh is not None))) as bar:
        for layer, layer_atlas in result.items():
            top1 = {method: top1_attributions(config, params, layer, layer_atlas.top, inputs,
                                              method, progress=bar) for method in methods}
            sanity = (None if fresh is None else
                      layer_sanity(config, params, fresh, layer, layer_atlas.top, inputs,
                                   progress=bar))
            result[layer] = layer_atlas._replace(top1=top1 or None, sanity=sanity)
    return Atlas(result, class_count, len(inputs), sanity_seed)


class _no_progress:
    def __init__(self, desc, total):
        pass

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False

