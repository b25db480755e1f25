"""The deconvnet reverse pass (Zeiler & Fergus 2014, section 2.1).

A signal placed on one layer's map is sent down to pixels, one stage at a
time, by the inverse of each forward stage:

* max-pool     -> unpool: scatter-add to the recorded switch positions;
* relu + conv  -> rectify the signal with ReLU, then filter it with the same
  filters transposed (``lax.conv_transpose(..., transpose_kernel=True)``);
  a batch norm between them is folded into the conv's filters.

The rule of each stage kind lives in ``model.STAGE_RULES`` (the one interpreter of
the stage table); this module walks the conv/pool ops and their windows. The same walk
runs guided backpropagation and the gradient (``rule=``, ``model.ReverseRule``;
``zfjax.nets.attribution``): they differ at the ReLUs (masked where the forward
output, read from the recorded map, is 0) and at contrast normalisation (its true
gradient).

Contrast normalisation is *not* inverted: the reverse pass treats it as the
identity, as the paper does. Biases are not used. Overlapping pooling windows
that share an argmax add their values (exact adjoint of max selection); ties
inside a window were resolved to the first position in row-major order by the
forward pass (see ``model.max_pool_with_switches``).

Two ways to run it, with identical results:

* ``project(config, params, aux, layer, signal)``: dense; any signal shaped
  like the layer's map (one unit, one map, the whole layer).
* ``project_units(config, params, aux, layer, units)``: many single units at
  once; each unit's reverse pass only touches the window of its receptive
  field: 0.47 GFLOP per ZFNet conv5 unit at 224 px, against 2.2 dense.

Both are pure, jit-compiled and vmappable; ``aux`` is the record returned by
``model.forward``. ``project_strongest`` projects the winners of a search over a
set of images (``strongest``), each cropped to its receptive field: the one used
by topk, atlas, filters and evolution.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zfjax.nets import model, network
from zfjax.nets import strongest as strongest_activations
from zfjax.nets.model import DECONVNET, ReverseRule
from zfjax.nets.network import Network, SpatialOp, grow, layer_order, ops_below
from zfjax.nets.receptive_field import crop_to_receptive_field, receptive_field_size

def reverse_stage(op: SpatialOp, signal: jax.Array, params: dict, switches: jax.Array | None,
                  rule: ReverseRule = DECONVNET, recorded: jax.Array | None = None, *,
                  top: bool = False):
    """Invert one conv or pool on an NHWC window, onto every input position it touches.

    signal (N, w, w, C_out) -> (N, (w-1)*stride + kernel, ..., C_in); the result's
    first row/column is input position ``offset * stride - padding``. A conv
    followed by a ReLU first rectifies the signal (the deconvnet rule). The stages of
    the op's segment are inverted by their rules in ``model.STAGE_RULES`` under
    ``rule``; params with batch norm folded into the convs (``model.fold_batch_norm``).
    recorded: the op's recorded map on the signal's window (N, w, w, C_out), read by the
    rules of guided backprop and the gradient. ``top``: the signal is on the op's
    recorded map itself, so the stages after it (contrast normalisation) are not crossed.
    """
    segment = op.segment[: op.recorded] if top else op.segment
    return model.reverse_segment(segment, params, signal, switches, rule, recorded)


def check_layer_signal(aux: dict, layer: str, signal_shape) -> None:
    """Raise ValueError unless ``signal_shape`` matches the layer's recorded map."""
    want = tuple(_layer_activations(aux, layer).shape)
    if tuple(signal_shape) != want:
        raise ValueError(f"signal for {layer} must have the shape of its map {want} (NHWC); "
                         f"got {tuple(signal_shape)}")


@partial(jax.jit, static_argnames=("config", "layer", "rule"))
def _project_dense(config, params, aux, layer, signal, rule):
    params = model.fold_batch_norm(config, params)
    x = signal
    for op in ops_below(config, layer):
        x = reverse_stage(op, x, params, aux["switches"].get(op.name), rule,
                          aux["activations"][op.name], top=op.name == layer)
        # The full-grown output starts at input position -padding.
        x = model.fit_window(x, op.padding, op.input_size, op.input_size)
    return x


def project(config: Network, params: dict, aux: dict, layer: str, signal: jax.Array, *,
            rule: ReverseRule = DECONVNET) -> jax.Array:
    """Project a signal on ``layer``'s map down to pixels.

    signal: (N, h, w, C), shaped like ``aux['activations'][layer]``; zero
    everywhere except the activations to visualise. Returns (N, H, W, 3) in
    the signal's dtype. Layers: ``network.projectable_layers(config)`` (conv
    maps, rectified, and pool maps). ``rule``: the deconvnet's (the paper) or a
    successor's (``zfjax.nets.attribution.RULES``), whose signal is the gradient to
    start from (1 on the target; ``rule.start`` is read by ``project_units`` only).
    """
    if layer not in network.projectable_layers(config):
        raise network.unknown_layer(config, layer)
    check_layer_signal(aux, layer, signal.shape)
    model.check_rule(rule)
    return _project_dense(config, params, aux, layer, signal, rule)


# ---- selections of the paper's modes -----------------------------------------------


def feature_map_signal(aux: dict, layer: str, channel) -> jax.Array:
    """The layer's activations with every channel but ``channel`` zeroed: (N, h, w, C)."""
    acts = _layer_activations(aux, layer)
    _check_channels(channel, acts.shape[-1], layer)
    return jnp.where(jnp.arange(acts.shape[-1]) == channel, acts, 0)


def unit_signal(aux: dict, layer: str, channel, y, x) -> jax.Array:
    """Only the activation at (channel, y, x) kept, per image: (N, h, w, C)."""
    acts = _layer_activations(aux, layer)
    _check_units(layer, acts.shape, channel, y, x)
    n, h, w, c = acts.shape
    keep = ((jnp.arange(h)[:, None, None] == y) & (jnp.arange(w)[None, :, None] == x)
            & (jnp.arange(c) == channel))
    return jnp.where(keep, acts, 0)


def strongest(aux: dict, layer: str, channels) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Where each image's given feature maps are strongest.

    channels: int (K,). Returns (value, y, x), each (N, K). Ties go to the
    first position in row-major order.
    """
    acts = _layer_activations(aux, layer)
    _check_channels(channels, acts.shape[-1], layer)
    return strongest_activations.per_image(acts[..., jnp.asarray(channels)])


class Units(NamedTuple):
    """A batch of single activations: image index, channel, y, x; each int (K,)."""

    image: jax.Array
    channel: jax.Array
    y: jax.Array
    x: jax.Array


def strongest_units(aux: dict, layer: str, channels, image: int = 0) -> Units:
    """The strongest activation of each given feature map of one image (paper's mode)."""
    channels = jnp.atleast_1d(jnp.asarray(channels, jnp.int32))
    one_image = {"activations": {layer: _layer_activations(aux, layer)[image : image + 1]}}
    _, ys, xs = strongest(one_image, layer, channels)
    return Units(jnp.full(channels.shape, image, jnp.int32), channels, ys[0], xs[0])


def project_units(config: Network, params: dict, aux: dict, layer: str, units: Units, *,
                  batch_size: int | None = None, rule: ReverseRule = DECONVNET) -> jax.Array:
    """Project K single activations, each alone, down to pixels: (K, H, W, 3).

    Each unit keeps its recorded activation value (or 1, by ``rule.start``); everything
    else on its layer is zero. Equal to ``project`` of ``unit_signal`` for that unit, but
    each reverse pass only computes inside the unit's receptive field window.
    ``rule``: the deconvnet's (the paper) or a successor's (``zfjax.nets.attribution``:
    guided backprop, the gradient), whose masks are read from the recorded maps.

    The K reverse passes run inside one compiled call, ``batch_size`` at a time
    (``lax.map``); default: ``default_batch_size``.
    """
    if layer not in network.projectable_layers(config):
        raise network.unknown_layer(config, layer)
    acts = _layer_activations(aux, layer)
    units = Units(*(jnp.atleast_1d(jnp.asarray(u, jnp.int32)) for u in units))
    _check_units(layer, acts.shape, units.channel, units.y, units.x, units.image)
    model.check_rule(rule)
    if batch_size is None:
        batch_size = default_batch_size(config, layer, units.channel.shape[0])
    return _project_units(config, params, aux, layer, units, batch_size, rule)


def default_batch_size(config: Network, layer: str, count: int) -> int:
    """Units ``project_units`` projects per step when not told (at most ``count``).

    CPU, every network: 8, the best or within 25% of the best of 1/4/8/16/64 for ZFNet
    conv3 and conv5 at 64, 112 and 224 px on a quiet 2-core machine (1.2-2.8x faster
    than one at a time, 1.4x faster than all 256 at once; bench/bench_chunk.py). Up to
    8 units that is all of them at once: VGG16's 8 conv5_3 units run the very program
    of vmapping all 8 (bench_core.py: bit-identical; its 2.34 s against 1.28 s came
    from the order of the timings). Larger steps also compile far longer: the unit loop
    is unrolled (64 conv5 units per step: 111 s against 13 s for 8, loaded machine).
    GPU/TPU: all units up to 64 per step, a guess until bench/accelerator.py has run
    there (its projection table times 1/8/64/256/all and their first calls).
    """
    del config, layer  # the same on every network so far
    return min(count, 8 if jax.default_backend() == "cpu" else 64)


def window_sizes(config: Network, layer: str) -> list[int]:
    """Static side of a unit's window at each op's output, top first (``ops_below``).

    A window that would outgrow the map below becomes the whole map from there on.
    """
    sizes, size = [], 1
    for op in ops_below(config, layer):
        sizes.append(size)
        size, _ = grow(op, size, 0)
        size = min(size, op.input_size)
    return sizes


@partial(jax.jit, static_argnames=("config", "layer", "batch_size", "rule"))
def _project_units(config, params, aux, layer, units, batch_size, rule):
    params = model.fold_batch_norm(config, params)
    below = ops_below(config, layer)
    sizes = window_sizes(config, layer)
    # Pad each switch map by its window so every dynamic slice stays in bounds. The pad
    # value, window**2, names no position: unpooling sends nothing from outside the map.
    padded = {
        op.name: jnp.pad(aux["switches"][op.name], ((0, 0), (w, w), (w, w), (0, 0)),
                         constant_values=op.kernel ** 2)
        for op, w in zip(below, sizes) if op.kind == "pool"
    }
    # The recorded maps the rule reads (not the deconvnet's), padded the same way with 0:
    # off the map a ReLU mask is 0 and whatever crosses there is cut off below anyway.
    maps = {} if (rule.relu, rule.norm) == (DECONVNET.relu, DECONVNET.norm) else {
        op.name: jnp.pad(aux["activations"][op.name], ((0, 0), (w, w), (w, w), (0, 0)))
        for op, w in zip(below, sizes)
    }
    acts = aux["activations"][layer]
    count = units.channel.shape[0]
    batch_size = max(1, min(batch_size, count))
    groups = -(-count // batch_size)
    # The last group is filled up with copies of the last unit, dropped at the end.
    fill = groups * batch_size - count
    grouped = Units(*(jnp.concatenate([u, jnp.repeat(u[-1:], fill)]).reshape(groups, batch_size)
                      for u in units))

    def group(unit: Units) -> jax.Array:
        """batch_size units side by side: (B, H, W, 3). Switch windows are sliced and
        results pasted one unit at a time: vmapped, each slice would become a gather and
        each paste a scatter, which made the whole pass 1.2-1.3x slower on CPU."""
        channels = acts.shape[-1]
        value = (acts[unit.image, unit.y, unit.x, unit.channel] if rule.start == "activation"
                 else jnp.ones(unit.channel.shape, acts.dtype))
        x = jnp.where(jnp.arange(channels) == unit.channel[:, None], value[:, None], 0)
        x = x[:, None, None, :]
        offset = jnp.stack([unit.y, unit.x], axis=1)  # (B, 2): the window's top-left

        def windows(full, w):
            return jnp.concatenate([
                lax.dynamic_slice(full, (unit.image[i], offset[i, 0] + w, offset[i, 1] + w, 0),
                                  (1, w, w, full.shape[-1])) for i in range(batch_size)])

        for op, w, next_op in zip(below, sizes, below[1:] + (None,)):
            switches = windows(padded[op.name], w) if op.kind == "pool" else None
            recorded = windows(maps[op.name], w) if maps else None
            x = reverse_stage(op, x, params, switches, rule, recorded, top=op is below[0])
            grown, offset = grow(op, w, offset)
            if next_op is None or grown >= op.input_size:
                # Onto the whole map (last op: the image); the rest is cut off.
                x = jnp.stack([_paste(x[i], offset[i], op.input_size) for i in range(batch_size)])
                offset = jnp.zeros_like(offset)
            elif next_op.kind == "conv":
                # Zero what falls outside the map (the forward conv's zero padding). An
                # unpooling below needs no mask: outside the map its switches are the pad
                # value, and unpooled values only land on switch positions, inside.
                # (Masking there too made the whole pass 1.4x slower on CPU: XLA fused the
                # mask into the unpooling once per window position.)
                pos = offset[:, :, None] + jnp.arange(grown)
                inside = (pos >= 0) & (pos < op.input_size)
                x = x * (inside[:, 0, :, None] & inside[:, 1, None, :])[..., None]
        return x

    out = lax.map(group, grouped)
    return out.reshape(groups * batch_size, *out.shape[2:])[:count]


def _paste(window: jax.Array, offset: jax.Array, size: int) -> jax.Array:
    """Place a (w, w, C) window at a (possibly negative) offset on a zero (size, size, C) canvas."""
    w = window.shape[0]
    canvas = jnp.zeros((size + 2 * w, size + 2 * w, window.shape[-1]), window.dtype)
    canvas = lax.dynamic_update_slice(canvas, window, (offset[0] + w, offset[1] + w, 0))
    return canvas[w : w + size, w : w + size]


# ---- argument checks (skipped for traced values) -----------------------------------


def _layer_activations(aux: dict, layer: str) -> jax.Array:
    acts = aux["activations"]
    if layer not in acts or acts[layer].ndim != 4:
        maps = sorted((name for name, a in acts.items() if a.ndim == 4), key=layer_order)
        raise ValueError(f"unknown layer {layer!r}; expected one of {', '.join(maps)}")
    return acts[layer]



def _concrete(v):
    """v as a numpy array, or None when it is traced (checks then happen nowhere)."""
    if isinstance(v, jax.core.Tracer):
        return None
    return np.asarray(v)


def check_range(what: str, v, limit: int, layer: str) -> None:
    """Raises ValueError naming the first of v (int or array; skipped while traced) not in
    0..limit-1."""
    arr = _concrete(v)
    if arr is not None and arr.size and (arr.min() < 0 or arr.max() >= limit):
        bad = arr[(arr < 0) | (arr >= limit)].ravel()[0]
        raise ValueError(f"{what} {int(bad)} is out of range for {layer}: expected 0..{limit - 1}")


def _check_channels(channel, num: int, layer: str) -> None:
    check_range("channel", channel, num, layer)


def _check_units(layer, shape, channel, y, x, image=None) -> None:
    n, h, w, c = shape
    _check_channels(channel, c, layer)
    check_range("y", y, h, layer)
    check_range("x", x, w, layer)
    if image is not None:
        check_range("image index", image, n, layer)



# ---- the strongest activations of a search, projected and cropped -----------------

PROJECTION_CHUNK = 128  # units per call of project_strongest (one forward of their images)


class StrongestProjections(NamedTuple):
    """``project_strongest`` of activations of one layer, in the shape S they were given
    (K units, or (M, k) top-k slots), R = receptive_field_size: channels int32 S the map of
    each; values float32 S the activation; images int32 S the index of its image (-1: an
    unfilled slot); positions int32 (*S, 2) its (y, x) on the map; projections float32
    (*S, R, R, 3) its deconvnet projection and patches (*S, R, R, 3) the image patch under
    it (display's dtype, or None without a display), both cropped to its receptive field
    (zero-padded past the image edge; all zero for an unfilled slot)."""

    channels: np.ndarray
    values: np.ndarray
    images: np.ndarray
    positions: np.ndarray
    projections: np.ndarray
    patches: np.ndarray | None


@partial(jax.jit, static_argnames=("config", "layer", "from_one"))
def _project_chunk(config, params, images, units, layer, from_one):
    """images (B, H, W, 3); units index into them -> projections (K, H, W, 3). The forward
    stops at ``layer`` (XLA drops what is above), so a chunk costs its images' forward once."""
    _, aux = model.forward(config, params, images)
    rule = ReverseRule(DECONVNET.relu, DECONVNET.norm, "one") if from_one else DECONVNET
    return project_units(config, params, aux, layer, units, rule=rule)


def project_strongest(config: Network, params, layer: str, found, channels, inputs, *,
                      display=None, from_one: bool = False, chunk: int = PROJECTION_CHUNK,
                      progress=None) -> StrongestProjections:
    """Activations found by a search, each projected alone to pixels and cropped to its
    receptive field (paper Fig. 2, 4, 6; the one projection of every analysis's winners).

    found: (value, image, y, x) arrays of one shape S: a ``strongest.TopK`` (or rows of
    it) or a layer of ``strongest.strongest_over``; a slot whose value is not finite is
    unfilled. channels: int, broadcast to S, the map of each. image indexes ``inputs``
    (float32 (N, H, W, 3) network inputs, or lazily preprocessed ones indexable by an int
    array) and ``display`` (the images as shown, (N, H, W, 3), for the patches; optional).
    Units go sorted by image, ``chunk`` at a time: one forward of the chunk's distinct
    images, then one windowed reverse pass per unit (``project_units``). Every call has
    the same shapes (chunks split evenly and padded; as many images as the chunk with the
    most, rounded up to a power of two), so one compilation per layer and few across
    calls, and memory stays bounded for any count.
    ``from_one``: each reverse pass starts from 1, not from the unit's activation
    (defined for a silent unit; the rules are positively homogeneous, so an active unit's
    projection only changes scale). ``progress``: a tqdm-like bar updated per chunk.
    Returns ``StrongestProjections`` of shape S.
    """
    value, image, y, x = (np.asarray(a) for a in found)
    shape = value.shape
    channels = np.broadcast_to(np.asarray(channels, np.int32), shape)
    image_of, ys, xs, channel_of = (np.asarray(a, np.int32).reshape(-1)
                                    for a in (image, y, x, channels))
    r = receptive_field_size(config, layer)
    projections = np.zeros((image_of.size, r, r, 3), np.float32)
    filled = np.flatnonzero(np.isfinite(value.reshape(-1)))
    order = filled[np.argsort(image_of[filled], kind="stable")]
    if len(order):
        chunk = -(-len(order) // -(-len(order) // chunk))  # even chunks: little padding
        chunks = [order[start:start + chunk] for start in range(0, len(order), chunk)]
        # Images per call: the most any chunk has, up to a power of two, so that calls on
        # other winners (evolution's every epoch) seldom compile anew.
        most = max(len(np.unique(image_of[slots])) for slots in chunks)
        batch = min(chunk, 1 << (most - 1).bit_length())
        size = config.image_size
        for slots in chunks:
            used, local = np.unique(image_of[slots], return_inverse=True)
            images = np.zeros((batch, size, size, 3), np.float32)
            images[:len(used)] = inputs[used]
            pad = chunk - len(slots)  # copies of the first unit: one shape for every call
            units = Units(*(np.concatenate([a, np.repeat(a[:1], pad)]).astype(np.int32)
                            for a in (local, channel_of[slots], ys[slots], xs[slots])))
            full = np.asarray(_project_chunk(config, params, images, units, layer,
                                             from_one))[:len(slots)]
            projections[slots] = crop_to_receptive_field(config, layer, full, ys[slots],
                                                         xs[slots])
            if progress is not None:
                progress.update(len(slots))
    patches = None
    if display is not None:
        patches = np.zeros((image_of.size, r, r, 3), np.asarray(display[:0]).dtype)
        patches[filled] = crop_to_receptive_field(config, layer, display[image_of[filled]],
                                                  ys[filled], xs[filled])
    return StrongestProjections(
        channels.astype(np.int32), value.astype(np.float32), image.astype(np.int32),
        np.stack([y, x], axis=-1).astype(np.int32), projections.reshape(*shape, r, r, 3),
        None if patches is None else patches.reshape(*shape, r, r, 3))
