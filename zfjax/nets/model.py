"""The forward pass of any ``network.Network``, recording what the deconvnet needs.

``forward(config, params, images)`` returns ``(logits, aux)``: aux records every
named layer's activations and the max-pooling *switches* (Zeiler & Fergus 2014,
section 2.1). Nothing here is specific to one network: the stage table in
``zfjax.nets.network`` drives it (ZFNet, AlexNet, VGG, VGG with batch norm).

This module is the one interpreter of the stage table: ``STAGE_RULES`` says, per stage
kind, how it runs forward (``apply_stages``: the forward, occlusion's windowed
incremental forward, the attribution methods) and backward (``reverse_segment``:
``zfjax.nets.deconv``) under a ``ReverseRule``: the deconvnet's, guided backprop's or
the gradient's. A new stage kind is a stage in ``zfjax.nets.network`` and a rule here.

Layout: images and activations are NHWC, conv kernels HWIO, dense kernels (in, out).
Parameters: {layer name: {'kernel', 'bias'}} for every conv and dense layer,
{'scale', 'bias', 'mean', 'var'} for a batch norm.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from zfjax.nets import network
from zfjax.nets.network import (
    LRN, BatchNorm, Conv, Dense, Dropout, Flatten, MaxPool, Network, ReLU, dense_layers,
    param_shapes, stages,
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

    Both outputs come from the same window views, so the switches come from the
    same pass; under ``jit`` an unused switch output is dead code. The gradient
    is ``unpool`` with the switches (a scatter-add where windows overlap).
    """
    pooled, switches = _pool_forward(pool, x)
    return pooled, lax.stop_gradient(switches)


def _switch_dtype(pool: MaxPool):
    return jnp.int8 if pool.window ** 2 <= 127 else jnp.int32


def _window_views(x: jax.Array, pool: MaxPool) -> list[jax.Array]:
    """The window^2 strided views (N, h, w, C) of the window elements, row-major,
    -inf-padded."""
    n, height, width, c = x.shape
    k, s, p = pool.window, pool.stride, pool.padding
    out_h, out_w = pool_output_size(height, pool), pool_output_size(width, pool)
    hi_h = (out_h - 1) * s + k - height - p
    hi_w = (out_w - 1) * s + k - width - p
    x = lax.pad(x, jnp.array(-jnp.inf, x.dtype),
                ((0, 0, 0), (p, hi_h, 0), (p, hi_w, 0), (0, 0, 0)))
    return [x[:, dy : dy + s * (out_h - 1) + 1 : s, dx : dx + s * (out_w - 1) + 1 : s]
            for dy in range(k) for dx in range(k)]


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _pool_forward(pool, x):
    # A fold of maximum and a chain of selects, not a stack with max and argmax: XLA:CPU's
    # argmax (a variadic reduce) and the stacked copy made the pool five times slower.
    views = _window_views(x, pool)
    pooled = views[0]
    for view in views[1:]:
        pooled = jnp.maximum(pooled, view)
    dtype = _switch_dtype(pool)
    switches = jnp.full(pooled.shape, len(views) - 1, dtype)
    for index in reversed(range(len(views) - 1)):  # the first maximum wins
        switches = jnp.where(views[index] == pooled, jnp.asarray(index, dtype), switches)
    return pooled, switches


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
    return fit_window(grown, p, height, width)


def fit_window(x: jax.Array, start: int, height: int, width: int) -> jax.Array:
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
    """One conv stage with bias (no ReLU); ``padding='VALID'`` overrides the stage's."""
    p = stage.padding
    pad = ((0, 0), (0, 0)) if padding == "VALID" else padding or ((p, p), (p, p))
    kernel = params[stage.name]["kernel"].astype(dtype)
    return convolve(x, kernel, stage.stride, pad) + params[stage.name]["bias"].astype(dtype)


def convolve(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
    """x (N, H, W, C) convolved with kernel (k, k, C, O), ``stride``, ``padding``
    ((top, bottom), (left, right)): (N, h, w, O).

    On CPU a stride-2 convolution runs as one matrix product over its patches
    (``patch_convolve``): XLA:CPU's own is slower there, forward and backward, above
    all its filter gradient (``bench/bench_conv.py``). Elsewhere, and for other
    strides (AlexNet's stride-4 conv1 measured no faster), XLA's convolution.
    """
    if stride != 2:
        return xla_convolve(x, kernel, stride, padding)
    return lax.platform_dependent(x, kernel,
                                  default=partial(xla_convolve, stride=stride, padding=padding),
                                  cpu=partial(patch_convolve, stride=stride, padding=padding))


def xla_convolve(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
    """``convolve`` as XLA's convolution."""
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                    dimension_numbers=_DIMS)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def patch_convolve(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
    """``convolve`` as im2col: the (N, h, w, k*k*C) patches times the (k*k*C, O) kernel.
    Its gradient: the kernel's from the same patches, the input's from XLA's transposed
    convolution (differentiating the patches' slices instead made the whole network's
    input gradient slower: XLA fused them with what came after)."""
    return _patch_forward(x, kernel, stride, padding)[0]


def _patch_forward(x, kernel, stride, padding):
    n = x.shape[0]
    k, _, c, out = kernel.shape
    x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))
    h, w = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    patches = jnp.concatenate([
        x[:, dy : dy + stride * (h - 1) + 1 : stride, dx : dx + stride * (w - 1) + 1 : stride]
        for dy in range(k) for dx in range(k)], axis=-1).reshape(-1, k * k * c)  # HWIO's order
    return (patches @ kernel.reshape(k * k * c, out)).reshape(n, h, w, out), patches


def _patch_fwd(x, kernel, stride, padding):
    y, patches = _patch_forward(x, kernel, stride, padding)
    return y, (patches, x, kernel)


def _patch_bwd(stride, padding, residuals, g):
    patches, x, kernel = residuals
    _, pull_back = jax.vjp(lambda x: xla_convolve(x, kernel, stride, padding), x)
    g_kernel = (patches.T @ g.reshape(-1, g.shape[-1])).reshape(kernel.shape)
    return pull_back(g)[0], g_kernel


patch_convolve.defvjp(_patch_fwd, _patch_bwd)


def dense(stage: Dense, params: dict, x: jax.Array, dtype) -> jax.Array:
    return x @ params[stage.name]["kernel"].astype(dtype) + params[stage.name]["bias"].astype(dtype)


def batch_norm(stage: BatchNorm, params: dict, x: jax.Array, dtype,
               batch_stats: dict | None = None) -> jax.Array:
    """Batch norm, per channel (last axis), in ``dtype``: (x - mean) * scale / sqrt(var +
    eps) + bias with the running statistics (inference), or, given a ``batch_stats`` dict
    (training), with the batch's; then the batch's mean and unbiased variance (what
    torchvision averages) go into ``batch_stats[stage.name]`` as {'mean', 'var'}."""
    p = params[stage.name]
    if batch_stats is None:
        inverse = p["scale"] * lax.rsqrt(p["var"] + stage.eps)
        return ((x - p["mean"].astype(dtype)) * inverse.astype(dtype) + p["bias"].astype(dtype))
    x32 = x.astype(jnp.float32)
    mean, var = x32.mean(axis=(0, 1, 2)), x32.var(axis=(0, 1, 2))
    count = x.size // x.shape[-1]
    batch_stats[stage.name] = {"mean": lax.stop_gradient(mean),
                               "var": lax.stop_gradient(var * count / max(count - 1, 1))}
    inverse = p["scale"] * lax.rsqrt(var + stage.eps)
    return ((x32 - mean) * inverse + p["bias"]).astype(dtype)


def update_batch_norm(config: Network, params: dict, batch_stats: dict) -> dict:
    """``params`` with each batch norm's running statistics moved towards the batch's
    (``forward(train=True)``'s aux['batch_stats']): running = (1 - momentum) * running +
    momentum * batch, torchvision's rule. The same dict without batch norm."""
    if not batch_stats:
        return params
    out = dict(params)
    for stage in stages(config):
        if isinstance(stage, BatchNorm):
            m = stage.momentum
            out[stage.name] = {**params[stage.name], **{
                key: (1 - m) * params[stage.name][key] + m * batch_stats[stage.name][key]
                for key in network.BATCH_NORM_STATS}}
    return out


def fold_batch_norm(config: Network, params: dict) -> dict:
    """``params`` with every batch norm folded into the conv before it (at inference the
    two are one conv): kernel * s, (bias - mean) * s + beta, s = scale / sqrt(var + eps)
    per output map; the batch norm entries dropped. The same dict for a network without
    batch norm. The deconvnet's reverse pass runs on these (``reverse_segment``)."""
    table = stages(config)
    norms = [(table[i - 1], s) for i, s in enumerate(table) if isinstance(s, BatchNorm)]
    if not norms:
        return params
    folded = dict(params)
    for conv_stage, norm in norms:
        p, c = params[norm.name], params[conv_stage.name]
        s = p["scale"] * lax.rsqrt(p["var"] + norm.eps)
        folded[conv_stage.name] = {"kernel": c["kernel"] * s,
                                   "bias": (c["bias"] - p["mean"]) * s + p["bias"]}
        del folded[norm.name]
    return folded


# ---- the interpreter: one rule per stage kind ------------------------------------


class StageRun(NamedTuple):
    """How ``apply_stages`` runs a stage: compute dtype, training mode and dropout key,
    the stage's index in the table, the ReLU and normalisation to use, ``window``: the
    input is a window that already holds the padding (spatial stages run unpadded), and
    ``batch_stats``: in training, the dict batch norms put their batch statistics in."""

    dtype: Any
    train: bool
    dropout_key: jax.Array | None
    index: int
    relu: Callable
    normalize: Callable
    window: bool
    batch_stats: dict | None = None


class StageRule(NamedTuple):
    """One stage kind in the interpreter.

    forward(stage, params, x, run: StageRun) -> (x, switches or None).
    reverse(stage, params, signal, switches, rule: ReverseRule, recorded) -> signal: its
    inverse under the rule (on a window, onto every input position it touches; recorded:
    the op's recorded map on the same window, read by the ReLU and contrast
    normalisation rules); None: not below a projectable map.
    """

    forward: Callable
    reverse: Callable | None


class ReverseRule(NamedTuple):
    """How a reverse pass crosses a ReLU and a contrast normalisation, and what it starts
    from: the deconvnet (``DECONVNET``, the paper's section 2.1) and its successors
    (``zfjax.nets.attribution.RULES``).

    relu: 'rectify' (ReLU of the signal: the deconvnet) | 'guided' (that, and only where
    the forward ReLU's output is > 0: guided backpropagation) | 'mask' (the signal where
    the output is > 0: the gradient). norm: 'pass' (identity: the deconvnet) | 'grad' (the
    true gradient). start: 'activation' (the target's forward value) | 'one'.
    """

    relu: str
    norm: str
    start: str


DECONVNET = ReverseRule("rectify", "pass", "activation")
RULE_CHOICES = {"relu": ("rectify", "guided", "mask"), "norm": ("pass", "grad"),
                "start": ("activation", "one")}


def check_rule(rule: ReverseRule) -> None:
    """Raises ValueError naming the first field of ``rule`` that is not one of its choices."""
    for field, choices in RULE_CHOICES.items():
        if getattr(rule, field) not in choices:
            raise ValueError(f"reverse rule {field} must be one of {', '.join(choices)}; "
                             f"got {getattr(rule, field)!r}")


def _conv_forward(stage, params, x, run):
    return conv(stage, params, x, run.dtype, padding="VALID" if run.window else None), None


def _pool_forward_rule(stage, params, x, run):
    pool = (stage if not run.window
            else dataclasses.replace(stage, padding=0, ceil=False))  # the window holds the padding
    return max_pool_with_switches(x, pool)


def _dropout_forward(stage, params, x, run):
    if not (run.train and stage.rate > 0):
        return x, None
    keep = jax.random.bernoulli(jax.random.fold_in(run.dropout_key, run.index), 1 - stage.rate,
                                x.shape)
    return jnp.where(keep, x / (1 - stage.rate), 0).astype(x.dtype), None


def _conv_reverse(stage, params, signal, switches, rule, recorded):
    """The transposed filter, full padding: each output position to every input it read."""
    kernel = params[stage.name]["kernel"].astype(signal.dtype)
    k = stage.kernel
    return lax.conv_transpose(
        signal, kernel, (stage.stride, stage.stride),
        padding=((k - 1, k - 1), (k - 1, k - 1)), dimension_numbers=_DIMS,
        transpose_kernel=True,
    )


def _identity_reverse(stage, params, signal, switches, rule, recorded):
    return signal


def _relu_reverse(stage, params, signal, switches, rule, recorded):
    if rule.relu == "rectify":
        return jax.nn.relu(signal)
    zero = jnp.zeros((), signal.dtype)
    if rule.relu == "guided":
        return jnp.where(recorded > 0, jax.nn.relu(signal), zero)
    return jnp.where(recorded > 0, signal, zero)


def _contrast_norm_reverse(stage, params, signal, switches, rule, recorded):
    if rule.norm == "pass":
        return signal
    _, pull_back = jax.vjp(lambda x: contrast_normalize(x, stage), recorded.astype(signal.dtype))
    return pull_back(signal)[0]


STAGE_RULES: dict[type, StageRule] = {
    Conv: StageRule(_conv_forward, _conv_reverse),
    # Unpooling to the switches with a scatter-add: the deconvnet's and the gradient's.
    MaxPool: StageRule(_pool_forward_rule,
                       lambda stage, params, signal, switches, rule, recorded:
                       unpool_full(signal, switches, stage)),
    # The deconvnet rectifies the signal on the way down; its successors mask it too.
    ReLU: StageRule(lambda stage, params, x, run: (run.relu(x), None), _relu_reverse),
    # The paper passes the signal through contrast normalisation; the gradient does not.
    LRN: StageRule(lambda stage, params, x, run: (run.normalize(x, stage), None),
                   _contrast_norm_reverse),
    # Its scale is folded into the conv's filters (fold_batch_norm); its shift is a bias,
    # which the deconvnet does not use.
    BatchNorm: StageRule(lambda stage, params, x, run: (batch_norm(
        stage, params, x, run.dtype, run.batch_stats if run.train else None), None),
                         _identity_reverse),
    Flatten: StageRule(lambda stage, params, x, run: (x.reshape(x.shape[0], -1), None), None),
    Dense: StageRule(lambda stage, params, x, run: (dense(stage, params, x, run.dtype), None),
                     None),
    Dropout: StageRule(_dropout_forward, None),
}


def apply_stages(config: Network, params: dict, x: jax.Array, start: int = 0,
                 stop: int | None = None, *, train: bool = False,
                 dropout_key: jax.Array | None = None, record: bool = True,
                 relu=nn.relu, normalize=None, window: bool = False,
                 batch_stats: dict | None = None):
    """Run stages[start:stop] on x. Returns (output, activations dict, switches dict).

    A named stage's activation is recorded after the batch norm and ReLU that follow
    it (if any; ``network.map_end``), before normalisation and dropout; the last dense
    layer (the logits) is returned, not recorded. ``relu(x)`` and ``normalize(x,
    lrn_stage)`` (default ``contrast_normalize``) stand for those stages: the attribution
    methods pass versions with the same values and their own backward rule
    (zfjax.nets.attribution). ``window``: x is a window of the map that already holds the
    padding (occlusion's incremental forward): convs and pools run unpadded. With
    ``train``, batch norms normalise with the batch's statistics and put them in
    ``batch_stats`` (a dict, filled in place: {name: {'mean', 'var'}}).
    """
    table = stages(config)
    stop = len(table) if stop is None else stop
    last_dense = dense_layers(config)[-1]
    record_at = {network.map_end(table, i) - 1: s.name for i, s in enumerate(table)
                 if isinstance(s, network.NAMED) and start <= i < stop and s.name != last_dense}
    run = StageRun(config.compute_dtype, train, dropout_key, start, relu,
                   normalize or contrast_normalize, window,
                   ({} if batch_stats is None else batch_stats) if train else None)
    acts, switches = {}, {}
    for i in range(start, stop):
        stage = table[i]
        x, stage_switches = STAGE_RULES[type(stage)].forward(stage, params, x,
                                                             run._replace(index=i))
        if stage_switches is not None:
            switches[stage.name] = stage_switches
        if record and i in record_at:
            acts[record_at[i]] = x
    return x, acts, switches


def reverse_segment(segment, params: dict, signal: jax.Array, switches: jax.Array | None,
                    rule: ReverseRule = DECONVNET, recorded: jax.Array | None = None):
    """The inverse of ``segment`` (a ``SpatialOp.segment``: a conv or pool and the stages
    up to the next one, or its first ``recorded`` stages) under ``rule``, last stage
    first, on an NHWC window. params: with batch norm folded (``fold_batch_norm``).
    recorded: the op's recorded map on the signal's window (needed unless the rule is
    the deconvnet's). Returns the signal on every input position the op touches:
    (N, (w-1)*stride + kernel, ..., C_in)."""
    for stage in reversed(segment):
        reverse = STAGE_RULES[type(stage)].reverse
        if reverse is None:
            raise ValueError(f"the deconvnet cannot reverse a {type(stage).__name__} stage")
        signal = reverse(stage, params, signal, switches, rule, recorded)
    return signal


def forward(config: Network, params: dict, images: jax.Array, *,
            train: bool = False, dropout_key: jax.Array | None = None):
    """Pure forward pass: (logits float32 (N, classes), aux).

    aux = {'activations': {layer: array}, 'switches': {pool: int array}}: every
    conv map (rectified, (N, h, w, C)), pool map (before normalisation) and hidden
    dense layer (rectified, before dropout). ``dropout_key`` is required when
    ``train`` is True; then aux also holds 'batch_stats' ({batch norm: {'mean', 'var'}}
    of this batch, empty without batch norm; ``update_batch_norm`` takes it).
    """
    if train and dropout_key is None:
        raise ValueError("forward(train=True) needs dropout_key")
    check_images(config, images)
    batch_stats: dict = {}
    logits, acts, switches = apply_stages(config, params, images.astype(config.compute_dtype),
                                          train=train, dropout_key=dropout_key,
                                          batch_stats=batch_stats)
    aux = {"activations": acts, "switches": switches}
    if train:
        aux["batch_stats"] = batch_stats
    return logits.astype(jnp.float32), aux


forward_jit = jax.jit(forward, static_argnames=("config", "train"))


def check_images(config: Network, images: jax.Array) -> None:
    """Raise ValueError unless images is (N, image_size, image_size, 3)."""
    want = (config.image_size, config.image_size, 3)
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(
            f"{config.arch} expects images of shape (N, {want[0]}, {want[1]}, 3) (NHWC, as set "
            f"by the config's image_size); got {tuple(images.shape)}"
        )


_DRAW_CHUNK = 1 << 18  # values per compiled sampler call: one program serves every shape


@partial(jax.jit, static_argnames="truncated")
def _standard_chunk(key: jax.Array, truncated: bool) -> jax.Array:
    if truncated:  # flax's he_normal: a normal truncated to two standard deviations
        return jax.random.truncated_normal(key, -2.0, 2.0, (_DRAW_CHUNK,), jnp.float32)
    return jax.random.normal(key, (_DRAW_CHUNK,), jnp.float32)


def _standard_draws(key: jax.Array, shape: tuple[int, ...], truncated: bool) -> jax.Array:
    """Standard-normal values of ``shape`` (or truncated to [-2, 2]), drawn in chunks of a
    fixed size, so that the one compiled sampler serves every layer of every network (a
    sampler per shape compiles anew for each layer of each new network)."""
    count = math.prod(shape)
    chunks = [_standard_chunk(jax.random.fold_in(key, i), truncated)
              for i in range(-(-count // _DRAW_CHUNK))]
    return jnp.concatenate(chunks)[:count].reshape(shape)


def init_params(config: Network, key: jax.Array) -> dict:
    """Fresh float32 parameters: {'conv1': {'kernel': HWIO, 'bias'}, ..., 'fc8': ...}.

    Weights from N(0, init_std^2), or He-normal (fan-in; a normal truncated at two
    standard deviations and rescaled, as flax's ``he_normal``) when init_std is None; the
    first conv layer's from N(0, first_init_std^2) when that is set; biases 0; batch
    norms the identity (scale 1, bias 0, mean 0, var 1). Each layer draws from its own
    key (``jax.random.split(key, layers)``), so changing one layer's rule leaves the
    others' weights as they were.
    """
    shapes = {name: s for name, s in param_shapes(config).items() if "kernel" in s}
    first = next(iter(shapes))  # the first conv layer
    keys = jax.random.split(key, len(shapes))

    def kernel(name, key, shape):
        std = config.first_init_std if name == first else None
        std = config.init_std if std is None else std
        if std is not None:
            return _standard_draws(key, shape, truncated=False) * std
        he_std = math.sqrt(2.0 / math.prod(shape[:-1])) / 0.87962566103423978  # fan-in
        return _standard_draws(key, shape, truncated=True) * he_std

    params = {name: {"kernel": kernel(name, k, tuple(s["kernel"])),
                     "bias": jnp.zeros(s["bias"], jnp.float32)}
              for k, (name, s) in zip(keys, shapes.items())}
    # Batch norm starts as the identity (torchvision's init): scale 1, shift 0, var 1.
    params.update({name: {entry: (jnp.ones if entry in ("scale", "var") else jnp.zeros)(s, jnp.float32)
                          for entry, s in layer.items()}
                   for name, layer in param_shapes(config).items() if "kernel" not in layer})
    return {name: params[name] for name in param_shapes(config)}


def top_down_layers(config: Network) -> tuple[str, ...]:
    """The parameter layers from the logits down to the first conv (the stage table in
    reverse): the order of cascading randomisation (Adebayo et al. 2018). ZFNet: fc8,
    fc7, fc6, conv5 .. conv1."""
    return tuple(reversed(list(param_shapes(config))))


def with_layers(params: dict, fresh: dict, layers) -> dict:
    """``params`` with the named layers' parameters taken from ``fresh`` (e.g. an
    ``init_params`` tree): a partly re-initialised network."""
    chosen = set(layers)
    return {name: fresh[name] if name in chosen else value for name, value in params.items()}


def abstract_params(config: Network) -> dict:
    """The parameter tree as jax.ShapeDtypeStruct leaves (no arrays made)."""
    return {name: {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in layer.items()}
            for name, layer in param_shapes(config).items()}


def count_params(params: Any) -> int:
    """Number of values in a params tree (every leaf, batch norm statistics included)."""
    return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
