"""The forward pass of any ``network.Network``, recording what the deconvnet needs.

``forward(config, params, images)`` returns ``(logits, aux)``: aux records every
named layer's activations and the max-pooling *switches* (Zeiler & Fergus 2014,
section 2.1). Nothing here is specific to one network: the stage table in
``zfjax.network`` drives it (ZFNet, AlexNet, VGG16).

Layout: images and activations are NHWC, conv kernels HWIO, dense kernels (in, out).
Parameters: {layer name: {'kernel', 'bias'}} for every conv and dense layer.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from zfjax import network
from zfjax.network import (  # re-exported: the names model users reach for
    LRN, Conv, Dense, Dropout, Flatten, MaxPool, Network, ReLU, SpatialOp, ZFNetConfig,
    check_layers, conv_layers, dense_layers, fc_layers, grow, layer_sizes, num_channels,
    ops_below, param_shapes, pool_layers, projectable_layers, scaled, spatial_ops, stages,
    unknown_layer,
)

ZFNET_POOL = MaxPool("pool", 3, 2, 0, ceil=True)
ZFNET_LRN = LRN()


# ---- max-pooling with switches ---------------------------------------------------


def pool_output_size(size: int, pool: MaxPool = ZFNET_POOL) -> int:
    return network.pool_output_size(size, pool)


def max_pool_with_switches(x: jax.Array, pool: MaxPool = ZFNET_POOL) -> tuple[jax.Array, jax.Array]:
    """Max-pool an NHWC map, and its switches.

    Returns (pooled (N, h, w, C), switches (N, h, w, C), int8 for windows up to
    11x11). A switch is the row-major index ``dy * window + dx`` of the maximum
    inside its window. Ties go to the first position in row-major order (what
    ``jnp.argmax`` returns, and where JAX's and PyTorch's max-pool gradients send
    their signal). Padding (leading, and ceil mode's far edge) is -inf.

    Both outputs reduce the same stack of window views, so the switches come from
    the same pass; under ``jit`` an unused switch output is dead code. The gradient
    is ``unpool`` with the switches (a scatter-add where windows overlap).
    """
    pooled, switches = _pool_forward(pool, x)
    return pooled, lax.stop_gradient(switches)


def _switch_dtype(pool: MaxPool):
    return jnp.int8 if pool.window ** 2 <= 127 else jnp.int32


def _window_views(x: jax.Array, pool: MaxPool) -> jax.Array:
    """Stack (window^2, N, h, w, C) of the window elements, -inf-padded."""
    n, height, width, c = x.shape
    k, s, p = pool.window, pool.stride, pool.padding
    out_h, out_w = pool_output_size(height, pool), pool_output_size(width, pool)
    hi_h = (out_h - 1) * s + k - height - p
    hi_w = (out_w - 1) * s + k - width - p
    x = lax.pad(x, jnp.array(-jnp.inf, x.dtype),
                ((0, 0, 0), (p, hi_h, 0), (p, hi_w, 0), (0, 0, 0)))
    return jnp.stack([
        x[:, dy : dy + s * (out_h - 1) + 1 : s, dx : dx + s * (out_w - 1) + 1 : s]
        for dy in range(k) for dx in range(k)
    ])


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _pool_forward(pool, x):
    views = _window_views(x, pool)
    return jnp.max(views, axis=0), jnp.argmax(views, axis=0).astype(_switch_dtype(pool))


def _pool_fwd(pool, x):
    pooled, switches = _pool_forward(pool, x)
    return (pooled, switches), (switches, x.shape[1:3])


def _pool_bwd(pool, residuals, cotangents):
    switches, (height, width) = residuals
    g_pooled, _ = cotangents
    return (unpool(g_pooled, switches, height, width, pool),)


_pool_forward.defvjp(_pool_fwd, _pool_bwd)


def unpool(signal: jax.Array, switches: jax.Array, height: int, width: int,
           pool: MaxPool = ZFNET_POOL) -> jax.Array:
    """Scatter-add a pooled-size signal (N, h, w, C) to its switch positions.

    Returns (N, height, width, C). Overlapping windows that share an argmax add
    their values (the exact adjoint of max selection, not an overwrite).
    """
    grown = unpool_full(signal, switches, pool)
    p = pool.padding
    return fit(grown, p, height, width)


def fit(x: jax.Array, start: int, height: int, width: int) -> jax.Array:
    """x[:, start:start+height, start:start+width], zero-padded where x ends early."""
    zero = jnp.zeros((), x.dtype)
    return lax.pad(x, zero, ((0, 0, 0), (-start, height + start - x.shape[1], 0),
                             (-start, width + start - x.shape[2], 0), (0, 0, 0)))


def unpool_full(signal: jax.Array, switches: jax.Array, pool: MaxPool = ZFNET_POOL) -> jax.Array:
    """Unpool onto every position the windows cover: (N, (h-1)*stride+window, ..., C),
    the first row/column being input position -padding.

    Implemented as window^2 masked, interior-padded copies added together: a dense
    scatter-add with no gather/scatter ops, fast on CPU, GPU and TPU.
    """
    k, s = pool.window, pool.stride
    zero = jnp.zeros((), signal.dtype)
    total = None
    for dy in range(k):
        for dx in range(k):
            part = jnp.where(switches == dy * k + dx, signal, zero)
            part = lax.pad(part, zero, (
                (0, 0, 0), (dy, k - 1 - dy, s - 1), (dx, k - 1 - dx, s - 1), (0, 0, 0)))
            total = part if total is None else total + part
    return total


# ---- local response normalisation ------------------------------------------------

# ZFNet's constants (AlexNet's; the paper's "contrast normalisation across feature
# maps"). alpha is divided by the window size, as in PyTorch's LocalResponseNorm.
NORM_SIZE, NORM_ALPHA, NORM_BETA, NORM_K = ZFNET_LRN.size, ZFNET_LRN.alpha, ZFNET_LRN.beta, ZFNET_LRN.k


def contrast_normalize(x: jax.Array, lrn: LRN = ZFNET_LRN) -> jax.Array:
    """x / (k + alpha/n * sum of x^2 over n neighbouring maps)^beta, NHWC, same shape.

    Computed in float32; the channel window is a banded (C, C) matrix product,
    which maps onto the matrix units of accelerators.
    """
    c = x.shape[-1]
    idx = jnp.arange(c)
    lo, hi = lrn.size // 2, (lrn.size - 1) // 2
    # band[c, d]: input map c counts for output map d when d - lo <= c <= d + hi (PyTorch's window).
    band = ((idx[None, :] - idx[:, None] <= lo) & (idx[:, None] - idx[None, :] <= hi)).astype(jnp.float32)
    x32 = x.astype(jnp.float32)
    summed = jnp.einsum("nhwc,cd->nhwd", jnp.square(x32), band)
    return (x32 * (lrn.k + lrn.alpha / lrn.size * summed) ** -lrn.beta).astype(x.dtype)


# ---- the forward pass ------------------------------------------------------------

_DIMS = ("NHWC", "HWIO", "NHWC")


def conv(stage: Conv, params: dict, x: jax.Array, dtype, padding=None) -> jax.Array:
    """One conv stage with bias (no ReLU); ``padding`` overrides the stage's (e.g. 'VALID')."""
    p = stage.padding
    pad = padding if padding is not None else ((p, p), (p, p))
    kernel = params[stage.name]["kernel"].astype(dtype)
    y = lax.conv_general_dilated(x, kernel, (stage.stride, stage.stride), pad,
                                 dimension_numbers=_DIMS)
    return y + params[stage.name]["bias"].astype(dtype)


def dense(stage: Dense, params: dict, x: jax.Array, dtype) -> jax.Array:
    return x @ params[stage.name]["kernel"].astype(dtype) + params[stage.name]["bias"].astype(dtype)


def apply_stages(config: Network, params: dict, x: jax.Array, start: int = 0,
                 stop: int | None = None, *, train: bool = False,
                 dropout_key: jax.Array | None = None, record: bool = True,
                 relu=nn.relu, normalize=None):
    """Run stages[start:stop] on x. Returns (output, activations dict, switches dict).

    A named stage's activation is recorded after the ReLU that follows it (if
    any), before normalisation and dropout; the last dense layer (the logits)
    is returned, not recorded. ``relu(x)`` and ``normalize(x, lrn_stage)`` (default
    ``contrast_normalize``) stand for those stages: the attribution methods pass
    versions with the same values and their own backward rule (zfjax.attribution).
    """
    normalize = normalize or contrast_normalize
    dtype = config.compute_dtype
    table = stages(config)
    last_dense = dense_layers(config)[-1]
    acts, switches = {}, {}
    pending = None
    for i in range(start, len(table) if stop is None else stop):
        stage = table[i]
        if isinstance(stage, Conv):
            x = conv(stage, params, x, dtype)
        elif isinstance(stage, MaxPool):
            x, switches[stage.name] = max_pool_with_switches(x, stage)
        elif isinstance(stage, Dense):
            x = dense(stage, params, x, dtype)
        elif isinstance(stage, ReLU):
            x = relu(x)
        elif isinstance(stage, LRN):
            x = normalize(x, stage)
        elif isinstance(stage, Flatten):
            x = x.reshape(x.shape[0], -1)
        elif isinstance(stage, Dropout):
            if train and stage.rate > 0:
                keep = jax.random.bernoulli(jax.random.fold_in(dropout_key, i), 1 - stage.rate,
                                            x.shape)
                x = jnp.where(keep, x / (1 - stage.rate), 0).astype(x.dtype)
        if isinstance(stage, network.NAMED):
            pending = stage.name
        nxt = table[i + 1] if i + 1 < len(table) else None
        if record and pending is not None and not isinstance(nxt, ReLU):
            if pending != last_dense:
                acts[pending] = x
            pending = None
    return x, acts, switches


def forward(config: Network, params: dict, images: jax.Array, *,
            train: bool = False, dropout_key: jax.Array | None = None):
    """Pure forward pass: (logits float32 (N, classes), aux).

    aux = {'activations': {layer: array}, 'switches': {pool: int array}}: every
    conv map (rectified, (N, h, w, C)), pool map (before normalisation) and hidden
    dense layer (rectified, before dropout). ``dropout_key`` is required when
    ``train`` is True.
    """
    if train and dropout_key is None:
        raise ValueError("forward(train=True) needs dropout_key")
    check_images(config, images)
    logits, acts, switches = apply_stages(config, params, images.astype(config.compute_dtype),
                                          train=train, dropout_key=dropout_key)
    return logits.astype(jnp.float32), {"activations": acts, "switches": switches}


forward_jit = jax.jit(forward, static_argnames=("config", "train"))


def check_images(config: Network, images: jax.Array) -> None:
    """Raise ValueError unless images is (N, image_size, image_size, 3)."""
    want = (config.image_size, config.image_size, 3)
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(
            f"{config.arch} expects images of shape (N, {want[0]}, {want[1]}, 3) (NHWC, as set "
            f"by the config's image_size); got {tuple(images.shape)}"
        )


@partial(jax.jit, static_argnums=0)
def init_params(config: Network, key: jax.Array) -> dict:
    """Fresh float32 parameters: {'conv1': {'kernel': HWIO, 'bias'}, ..., 'fc8': ...}.

    Weights from N(0, init_std^2), or He-normal (fan-in) when init_std is None; the
    first conv layer's from N(0, first_init_std^2) when that is set; biases 0.
    """
    init = (nn.initializers.normal(config.init_std) if config.init_std is not None
            else nn.initializers.he_normal())
    shapes = param_shapes(config)
    first = next(iter(shapes))  # the first conv layer
    keys = jax.random.split(key, len(shapes))

    def kernel_init(name):
        if name == first and config.first_init_std is not None:
            return nn.initializers.normal(config.first_init_std)
        return init

    return {name: {"kernel": kernel_init(name)(k, s["kernel"], jnp.float32),
                   "bias": jnp.zeros(s["bias"], jnp.float32)}
            for k, (name, s) in zip(keys, shapes.items())}


def abstract_params(config: Network) -> dict:
    """The parameter tree as jax.ShapeDtypeStruct leaves (no arrays made)."""
    return {name: {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in layer.items()}
            for name, layer in param_shapes(config).items()}


def param_count(params: Any) -> int:
    return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
