"""ZFNet (Zeiler & Fergus 2014, Fig. 3) as a pure Flax forward pass.

One call returns ``(logits, aux)``. ``aux`` records what the deconvnet needs:
every layer's activations and the max-pooling *switches* (section 2.1).

Layout: images and activations are NHWC, conv kernels HWIO.

Layer names, in order::

    conv1 (7x7/2, 96)  -> relu -> pool1 (3x3/2) -> contrast norm
    conv2 (5x5/2, 256) -> relu -> pool2 (3x3/2) -> contrast norm
    conv3 (3x3/1, 384) -> relu
    conv4 (3x3/1, 384) -> relu
    conv5 (3x3/1, 256) -> relu -> pool5 (3x3/2)
    fc6 (4096) -> relu -> dropout -> fc7 (4096) -> relu -> dropout -> fc8 (classes)

At 224 px the map sizes are 110/55/26/13/13/13/13/6. Pooling is "ceil mode":
windows that run over the bottom/right edge are padded with -inf, so
110 -> 55 and 26 -> 13 as in the paper.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

POOL_WINDOW = 3
POOL_STRIDE = 2


class ConvSpec(NamedTuple):
    """One conv stage: conv -> relu [-> max-pool] [-> contrast norm]."""

    name: str
    features: int
    kernel: int
    stride: int
    padding: int
    pool: str | None  # name of the max-pool that follows, if any
    norm: bool  # contrast normalisation after the (pooled) output


# (name, features at width 1, kernel, stride, padding, pool, norm): paper Fig. 3.
_CONV_TABLE = (
    ("conv1", 96, 7, 2, 1, "pool1", True),
    ("conv2", 256, 5, 2, 0, "pool2", True),
    ("conv3", 384, 3, 1, 1, None, False),
    ("conv4", 384, 3, 1, 1, None, False),
    ("conv5", 256, 3, 1, 1, "pool5", False),
)
FC_FEATURES = 4096

CONV_LAYERS = tuple(row[0] for row in _CONV_TABLE)
POOL_LAYERS = tuple(row[5] for row in _CONV_TABLE if row[5])
# Layers the deconvnet can project from, bottom to top.
PROJECTABLE_LAYERS = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")
FC_LAYERS = ("fc6", "fc7")


@dataclasses.dataclass(frozen=True)
class ZFNetConfig:
    """Architecture settings. Frozen and hashable, so it can be a static jit argument.

    num_classes: size of fc8.
    image_size: square input side in pixels (64 to 256 tested; 224 in the paper).
    width: multiplier on every layer's channel count (conv and fc).
    contrast_norm: contrast normalisation across feature maps after pool1 and pool2.
    dtype: compute dtype ('float32', or 'bfloat16' on accelerators); params stay float32.
    dropout_rate: dropout after fc6 and fc7 in training.
    init_std: std of the zero-mean Gaussian for all weights (paper: 1e-2); None
        uses He-normal (fan-in) scaling instead. Biases start at 0.
    """

    num_classes: int = 1000
    image_size: int = 224
    width: float = 1.0
    contrast_norm: bool = True
    dtype: str = "float32"
    dropout_rate: float = 0.5
    init_std: float | None = 0.01

    def __post_init__(self):
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.width <= 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be 'float32', 'bfloat16' or 'float16', got {self.dtype!r}")
        layer_sizes(self)  # raises for an image size the network cannot take

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


def scaled(features: int, width: float) -> int:
    return max(1, int(round(features * width)))


def conv_specs(config: ZFNetConfig) -> tuple[ConvSpec, ...]:
    """The five conv stages with channel counts scaled by ``config.width``."""
    return tuple(
        ConvSpec(name, scaled(f, config.width), k, s, p, pool, norm)
        for name, f, k, s, p, pool, norm in _CONV_TABLE
    )


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def pool_output_size(size: int) -> int:
    """Ceil-mode 3x3/2 pooling: every input row is covered by some window."""
    return -(-(size - POOL_WINDOW) // POOL_STRIDE) + 1


def layer_sizes(config: ZFNetConfig) -> dict[str, int]:
    """Spatial side of every projectable layer's map, e.g. {'conv1': 110, ...} at 224.

    Also contains 'input'. Raises ValueError when the image is too small.
    """
    sizes = {"input": config.image_size}
    size = config.image_size
    for spec in conv_specs(config):
        if size + 2 * spec.padding < spec.kernel:
            raise _too_small(config.image_size, spec.name)
        size = conv_output_size(size, spec.kernel, spec.stride, spec.padding)
        sizes[spec.name] = size
        if spec.pool:
            if size < POOL_WINDOW:
                raise _too_small(config.image_size, spec.pool)
            size = pool_output_size(size)
            sizes[spec.pool] = size
    return sizes


def _too_small(image_size: int, layer: str) -> ValueError:
    return ValueError(
        f"image_size {image_size} is too small for ZFNet: the map before {layer} is smaller "
        f"than its window; use image_size >= 64"
    )


def num_channels(config: ZFNetConfig, layer: str) -> int:
    """Channels of a projectable layer's map (pooled maps keep their conv's channels)."""
    for spec in conv_specs(config):
        if layer in (spec.name, spec.pool):
            return spec.features
    raise unknown_layer(layer)


def unknown_layer(layer: Any) -> ValueError:
    return ValueError(
        f"unknown layer {layer!r}; expected one of {', '.join(PROJECTABLE_LAYERS)}"
    )


def max_pool_with_switches(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Ceil-mode 3x3/2 max-pool of an NHWC map, and its switches.

    Returns (pooled (N, h, w, C), switches int8 (N, h, w, C)). A switch is the
    row-major index ``dy * 3 + dx`` of the maximum inside its window. Ties go to
    the first position in row-major order (what ``jnp.argmax`` returns, and where
    the max-pool gradients of JAX and PyTorch send their signal).

    Both outputs reduce the same stack of nine strided window views, so the
    switches come from the same pass; under ``jit`` an unused switch output is
    dead code and costs nothing. The gradient is ``unpool`` with the switches.
    """
    pooled, switches = _pool_forward(x)
    return pooled, lax.stop_gradient(switches)


def _window_views(x: jax.Array) -> jax.Array:
    """Stack (9, N, h, w, C) of the window elements, -inf-padded at the far edges."""
    n, height, width, c = x.shape
    out_h, out_w = pool_output_size(height), pool_output_size(width)
    pad_h = (out_h - 1) * POOL_STRIDE + POOL_WINDOW - height
    pad_w = (out_w - 1) * POOL_STRIDE + POOL_WINDOW - width
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=-jnp.inf)
    return jnp.stack([
        x[:, dy : dy + POOL_STRIDE * (out_h - 1) + 1 : POOL_STRIDE,
          dx : dx + POOL_STRIDE * (out_w - 1) + 1 : POOL_STRIDE]
        for dy in range(POOL_WINDOW) for dx in range(POOL_WINDOW)
    ])


@jax.custom_vjp
def _pool_forward(x):
    views = _window_views(x)
    return jnp.max(views, axis=0), jnp.argmax(views, axis=0).astype(jnp.int8)


def _pool_fwd(x):
    pooled, switches = _pool_forward(x)
    return (pooled, switches), (switches, x.shape[1:3])


def _pool_bwd(residuals, cotangents):
    switches, (height, width) = residuals
    g_pooled, _ = cotangents
    return (unpool(g_pooled, switches, height, width),)


_pool_forward.defvjp(_pool_fwd, _pool_bwd)


def unpool(signal: jax.Array, switches: jax.Array, height: int, width: int) -> jax.Array:
    """Scatter-add a pooled-size signal (N, h, w, C) to its switch positions.

    Returns (N, height, width, C). Overlapping windows that share an argmax add
    their values (the exact adjoint of max selection, not an overwrite).
    """
    grown = unpool_full(signal, switches)
    return grown[:, :height, :width]


def unpool_full(signal: jax.Array, switches: jax.Array) -> jax.Array:
    """Unpool onto every position the windows cover: (N, (h-1)*2+3, (w-1)*2+3, C).

    Implemented as nine masked, interior-padded copies added together: a dense
    scatter-add with no gather/scatter ops, fast on CPU, GPU and TPU.
    """
    zero = jnp.zeros((), signal.dtype)
    total = None
    for dy in range(POOL_WINDOW):
        for dx in range(POOL_WINDOW):
            part = jnp.where(switches == dy * POOL_WINDOW + dx, signal, zero)
            part = lax.pad(part, zero, (
                (0, 0, 0),
                (dy, POOL_WINDOW - 1 - dy, POOL_STRIDE - 1),
                (dx, POOL_WINDOW - 1 - dx, POOL_STRIDE - 1),
                (0, 0, 0),
            ))
            total = part if total is None else total + part
    return total


# Local response normalisation across feature maps (AlexNet's constants; the
# paper's "contrast normalisation across feature maps"). alpha is divided by
# the window size, as in PyTorch's LocalResponseNorm.
NORM_SIZE, NORM_ALPHA, NORM_BETA, NORM_K = 5, 1e-4, 0.75, 2.0


def contrast_normalize(x: jax.Array) -> jax.Array:
    """x / (k + alpha/n * sum of x^2 over n neighbouring maps)^beta, NHWC, same shape.

    Computed in float32; the channel window is a banded (C, C) matrix product,
    which maps onto the matrix units of accelerators.
    """
    c = x.shape[-1]
    idx = jnp.arange(c)
    band = (jnp.abs(idx[:, None] - idx[None, :]) <= NORM_SIZE // 2).astype(jnp.float32)
    x32 = x.astype(jnp.float32)
    summed = jnp.einsum("nhwc,cd->nhwd", jnp.square(x32), band)
    return (x32 * (NORM_K + NORM_ALPHA / NORM_SIZE * summed) ** -NORM_BETA).astype(x.dtype)


class ZFNet(nn.Module):
    """ZFNet. ``__call__(images, train) -> (logits float32 (N, classes), aux)``.

    aux = {'activations': {layer: array}, 'switches': {pool: int8 array}} with
    activations for conv1..conv5 (rectified, (N, h, w, C)), pool1/pool2/pool5
    (pooled, before contrast norm) and fc6/fc7 (rectified, before dropout).
    """

    config: ZFNetConfig

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False):
        cfg = self.config
        check_images(images, cfg)
        dtype = cfg.compute_dtype
        kernel_init = (
            nn.initializers.normal(cfg.init_std) if cfg.init_std is not None
            else nn.initializers.he_normal()
        )
        acts, switches = {}, {}
        x = images.astype(dtype)
        for spec in conv_specs(cfg):
            x = nn.Conv(
                spec.features, (spec.kernel, spec.kernel), (spec.stride, spec.stride),
                padding=((spec.padding, spec.padding),) * 2, dtype=dtype,
                kernel_init=kernel_init, name=spec.name,
            )(x)
            x = nn.relu(x)
            acts[spec.name] = x
            if spec.pool:
                x, switches[spec.pool] = max_pool_with_switches(x)
                acts[spec.pool] = x
            if spec.norm and cfg.contrast_norm:
                x = contrast_normalize(x)
        x = x.reshape(x.shape[0], -1)
        for name in FC_LAYERS:
            x = nn.relu(nn.Dense(scaled(FC_FEATURES, cfg.width), dtype=dtype,
                                 kernel_init=kernel_init, name=name)(x))
            acts[name] = x
            x = nn.Dropout(cfg.dropout_rate, deterministic=not train)(x)
        logits = nn.Dense(cfg.num_classes, dtype=dtype, kernel_init=kernel_init, name="fc8")(x)
        return logits.astype(jnp.float32), {"activations": acts, "switches": switches}


# ---- geometry shared by the reverse pass and receptive fields ----------------------


class Stage(NamedTuple):
    """One forward stage the reverse pass inverts: a conv (with its relu) or a pool."""

    name: str
    kind: str  # 'conv' or 'pool'
    kernel: int
    stride: int
    padding: int  # leading padding of the forward op (pools: 0, ceil mode pads the end)
    input_size: int  # spatial side of the map the stage reads


def stages(config: ZFNetConfig) -> tuple[Stage, ...]:
    """Forward stages in order, bottom to top, named as the layers they produce."""
    sizes = layer_sizes(config)
    out, below = [], "input"
    for spec in conv_specs(config):
        out.append(Stage(spec.name, "conv", spec.kernel, spec.stride, spec.padding, sizes[below]))
        below = spec.name
        if spec.pool:
            out.append(Stage(spec.pool, "pool", POOL_WINDOW, POOL_STRIDE, 0, sizes[below]))
            below = spec.pool
    return tuple(out)


def stages_below(config: ZFNetConfig, layer: str) -> tuple[Stage, ...]:
    """Stages from ``layer`` down to the input, top first. Raises for an unknown layer."""
    if layer not in PROJECTABLE_LAYERS:
        raise unknown_layer(layer)
    all_stages = stages(config)
    top = [s.name for s in all_stages].index(layer)
    return tuple(reversed(all_stages[: top + 1]))


def grow(stage: Stage, size, offset):
    """Window (size, offset) on a stage's output -> the window its inputs span.

    Works on Python ints and on integer arrays (offsets may be traced).
    """
    return (size - 1) * stage.stride + stage.kernel, offset * stage.stride - stage.padding


def check_images(images: jax.Array, config: ZFNetConfig) -> None:
    """Raise ValueError unless images is (N, image_size, image_size, 3)."""
    want = (config.image_size, config.image_size, 3)
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(
            f"ZFNet expects images of shape (N, {want[0]}, {want[1]}, 3) (NHWC, as set by "
            f"ZFNetConfig.image_size); got {tuple(images.shape)}"
        )


@partial(jax.jit, static_argnums=0)
def init_params(config: ZFNetConfig, key: jax.Array) -> dict:
    """Fresh float32 parameters: {'conv1': {'kernel': HWIO, 'bias'}, ..., 'fc8': ...}."""
    dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    return ZFNet(config).init(key, dummy)["params"]


def forward(params: dict, images: jax.Array, config: ZFNetConfig, *,
            train: bool = False, dropout_key: jax.Array | None = None):
    """Pure forward pass: (logits float32 (N, classes), aux). See ``ZFNet``.

    ``dropout_key`` is required when ``train`` is True.
    """
    if train and dropout_key is None:
        raise ValueError("forward(train=True) needs dropout_key")
    rngs = {"dropout": dropout_key} if train else {}
    return ZFNet(config).apply({"params": params}, images, train, rngs=rngs)


forward_jit = jax.jit(forward, static_argnames=("config", "train"))


def param_count(params: Any) -> int:
    return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
