"""A network is data: a sequence of stages, from which everything else is derived.

``Network`` is the one config every function takes first (frozen and hashable, so
it is a static ``jax.jit`` argument). Its ``arch`` picks a stage table:

* ``zfnet``: Zeiler & Fergus 2014, Fig. 3 (7x7/2 conv1, ceil-mode 3x3/2 pools,
  contrast normalisation after pool1 and pool2);
* ``alexnet``: AlexNet in torchvision's layout (11x11/4 pad 2 conv1, floor-mode
  3x3/2 pools, 64-192-384-256-256, classifier 4096-4096-classes, no LRN);
* ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19``: Simonyan & Zisserman's configurations
  A, B, D, E in torchvision's layout (3x3/1 pad 1 convs, five 2x2/2 pools; conv1_1 ...
  conv5_x, pool1 ... pool5, fc6, fc7, fc8); ``vgg11_bn`` ... ``vgg19_bn`` add a batch
  norm (bn1_1, ...) between each conv and its ReLU.

From the stage table this module derives, without touching arrays: layer names
and kinds, map sizes, channel counts, parameter shapes and the geometry of every
spatial operation (``spatial_ops``) that the forward pass (``zfjax.nets.model``), the
deconvnet (``zfjax.nets.deconv``), receptive fields and occlusion's incremental
forward read. The classifier's input size follows from ``image_size`` (torchvision
puts an adaptive average pool there; at 224 px it is the identity, and pretrained
classifiers only fit at 224).

Layout conventions: maps NHWC, conv kernels HWIO, flatten in NHWC order.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Callable, NamedTuple, Union


# ---- the stages ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Conv:
    """2-D convolution with bias: ``features`` maps, square kernel, symmetric zero padding."""

    name: str
    features: int
    kernel: int
    stride: int = 1
    padding: int = 0


@dataclasses.dataclass(frozen=True)
class ReLU:
    """Rectification. A named stage's recorded activation is taken after its ReLU."""


@dataclasses.dataclass(frozen=True)
class MaxPool:
    """Max-pooling with switches. ``ceil``: windows may run over the far edge (padded
    with -inf), as ZFNet's 110 -> 55; otherwise floor mode (PyTorch's default)."""

    name: str
    window: int
    stride: int
    padding: int = 0
    ceil: bool = False


@dataclasses.dataclass(frozen=True)
class LRN:
    """Local response normalisation across feature maps (the paper's "contrast
    normalisation"): x / (k + alpha/size * sum of x^2 over size maps)^beta."""

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 2.0


@dataclasses.dataclass(frozen=True)
class BatchNorm:
    """Batch normalisation of the conv map before it (torchvision's BatchNorm2d): per map,
    (x - mean) / sqrt(var + eps) * scale + bias. Params {'scale', 'bias', 'mean', 'var'};
    mean and var are running averages (updated with ``momentum`` in training, used at
    inference), not trained. Must directly follow a Conv (it folds into it)."""

    name: str
    eps: float = 1e-5
    momentum: float = 0.1


@dataclasses.dataclass(frozen=True)
class Flatten:
    """(N, h, w, C) -> (N, h*w*C), NHWC order."""


@dataclasses.dataclass(frozen=True)
class Dense:
    name: str
    features: int


@dataclasses.dataclass(frozen=True)
class Dropout:
    rate: float = 0.5


Stage = Union[Conv, ReLU, MaxPool, LRN, BatchNorm, Flatten, Dense, Dropout]
NAMED = (Conv, MaxPool, Dense)  # stages whose output map is recorded under their name
# Stages that belong to the map of the named stage before them: its recorded activation
# is taken after them (conv -> batch norm -> ReLU: after the ReLU).
MAP_STAGES = (BatchNorm, ReLU)
BATCH_NORM_STATS = ("mean", "var")  # BatchNorm params that are running averages, not trained


# ---- the config ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Network:
    """Which network, at which size. Frozen and hashable (a static jit argument).

    num_classes: size of the last dense layer (fc8).
    image_size: square input side in pixels.
    width: multiplier on every conv and hidden dense layer's channel count.
    contrast_norm: ZFNet's normalisation after pool1 and pool2 (zfnet only).
    dtype: compute dtype ('float32', 'bfloat16', 'float16'); params stay float32.
    dropout_rate: rate of every dropout stage in training.
    init_std: std of the zero-mean Gaussian for all weights (paper: 1e-2); None
        uses He-normal (fan-in) scaling instead. Biases start at 0.
    first_init_std: when set, the first conv layer's weights start from N(0, this^2)
        whatever init_std says. The presets that train with He-normal set it to the
        paper's 1e-2: a He-normal conv1 (ZFNet: std 0.117) starts above the filter
        renormalisation radius of 0.1, is clamped from the first step and stays
        noise; from 1e-2 its filters grow into edges and colour blobs (Fig. 6).
    arch: 'zfnet', 'alexnet', 'vgg11', 'vgg13', 'vgg16', 'vgg19' or one of these with
        '_bn' (batch norm; torchvision's names) (``ARCHITECTURES``).
    variant: '' or one of ``VARIANT_CHANGES`` (zfnet only): a named change to the
        stage table, the paper's Table 3 (``with_variant`` sets it by name).
    """

    num_classes: int = 1000
    image_size: int = 224
    width: float = 1.0
    contrast_norm: bool = True
    dtype: str = "float32"
    dropout_rate: float = 0.5
    init_std: float | None = 0.01
    arch: str = "zfnet"
    variant: str = ""
    first_init_std: float | None = None

    def __post_init__(self):
        if self.variant and self.variant not in VARIANT_CHANGES:
            raise ValueError(f"unknown variant {self.variant!r}; expected one of "
                             f"{', '.join(VARIANT_CHANGES)}")
        if self.variant and self.arch != "zfnet":
            raise ValueError(f"variant {self.variant!r} changes ZFNet's stages; arch "
                             f"{self.arch!r} takes no variant")
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of "
                             f"{', '.join(ARCHITECTURES)}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.width <= 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be 'float32', 'bfloat16' or 'float16', got {self.dtype!r}")
        layer_sizes(self)  # raises for an image size the network cannot take

    @property
    def compute_dtype(self):
        import jax.numpy as jnp

        return jnp.dtype(self.dtype)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return stages(self)




def from_dict(d: dict) -> Network:
    """A Network from a run's config.json "model" dict (runs before ``arch`` existed are ZFNet)."""
    known = {f.name for f in dataclasses.fields(Network)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"model config has unknown keys {', '.join(unknown)}; expected some of "
                         f"{', '.join(sorted(known))}")
    return Network(**d)


def scaled(features: int, width: float) -> int:
    return max(1, int(round(features * width)))


# ---- the architectures -----------------------------------------------------------


def _classifier(net: Network, hidden: int, *, dropout_first: bool) -> list[Stage]:
    h = scaled(hidden, net.width)
    drop = Dropout(net.dropout_rate)
    if dropout_first:  # torchvision AlexNet: Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear
        return [Flatten(), drop, Dense("fc6", h), ReLU(), drop, Dense("fc7", h), ReLU(),
                Dense("fc8", net.num_classes)]
    return [Flatten(), Dense("fc6", h), ReLU(), drop, Dense("fc7", h), ReLU(), drop,
            Dense("fc8", net.num_classes)]


def zfnet_stages(net: Network) -> tuple[Stage, ...]:
    """ZFNet, paper Fig. 3: conv1 7x7/2 pad 1 (96), ceil 3x3/2 pools, LRN after pool1/2."""
    w = net.width
    pool = lambda name: MaxPool(name, 3, 2, 0, ceil=True)
    norm = [LRN()] if net.contrast_norm else []
    return tuple([
        Conv("conv1", scaled(96, w), 7, 2, 1), ReLU(), pool("pool1"), *norm,
        Conv("conv2", scaled(256, w), 5, 2, 0), ReLU(), pool("pool2"), *norm,
        Conv("conv3", scaled(384, w), 3, 1, 1), ReLU(),
        Conv("conv4", scaled(384, w), 3, 1, 1), ReLU(),
        Conv("conv5", scaled(256, w), 3, 1, 1), ReLU(), pool("pool5"),
        *_classifier(net, 4096, dropout_first=False),
    ])


def alexnet_stages(net: Network) -> tuple[Stage, ...]:
    """torchvision's AlexNet (features.0 ... features.12, classifier.1/4/6)."""
    w = net.width
    pool = lambda name: MaxPool(name, 3, 2, 0, ceil=False)
    return tuple([
        Conv("conv1", scaled(64, w), 11, 4, 2), ReLU(), pool("pool1"),
        Conv("conv2", scaled(192, w), 5, 1, 2), ReLU(), pool("pool2"),
        Conv("conv3", scaled(384, w), 3, 1, 1), ReLU(),
        Conv("conv4", scaled(256, w), 3, 1, 1), ReLU(),
        Conv("conv5", scaled(256, w), 3, 1, 1), ReLU(), pool("pool5"),
        *_classifier(net, 4096, dropout_first=True),
    ])


# torchvision's VGG configurations: maps per block, convs per block (Simonyan & Zisserman's
# A, B, D, E). 2x2/2 pools end each block.
VGG_BLOCK_FEATURES = (64, 128, 256, 512, 512)
VGG_BLOCK_CONVS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3),
                   19: (2, 2, 4, 4, 4)}
VGG16_BLOCKS = VGG_BLOCK_FEATURES, VGG_BLOCK_CONVS[16]


def vgg_stages(net: Network, depth: int = 16, batch_norm: bool = False) -> tuple[Stage, ...]:
    """VGG ``depth`` (11, 13, 16, 19) in torchvision's layer order (conv1_1 ... conv5_x,
    pool1 ... pool5, fc6, fc7, fc8); with ``batch_norm`` a BatchNorm ('bn1_1', ...)
    between each conv and its ReLU, as torchvision's ``vgg*_bn``."""
    out: list[Stage] = []
    for b, (features, convs) in enumerate(zip(VGG_BLOCK_FEATURES, VGG_BLOCK_CONVS[depth]), 1):
        for i in range(1, convs + 1):
            out.append(Conv(f"conv{b}_{i}", scaled(features, net.width), 3, 1, 1))
            out += [BatchNorm(f"bn{b}_{i}")] if batch_norm else []
            out.append(ReLU())
        out.append(MaxPool(f"pool{b}", 2, 2, 0, ceil=False))
    return tuple(out + _classifier(net, 4096, dropout_first=False))


def vgg16_stages(net: Network) -> tuple[Stage, ...]:
    """VGG16 (configuration D), torchvision's / Keras's layer order."""
    return vgg_stages(net, 16)


ARCHITECTURES: dict[str, Callable[[Network], tuple[Stage, ...]]] = {
    "zfnet": zfnet_stages, "alexnet": alexnet_stages,
    **{f"vgg{depth}{suffix}": functools.partial(vgg_stages, depth=depth, batch_norm=bool(suffix))
       for depth in VGG_BLOCK_CONVS for suffix in ("", "_bn")},
}


@functools.lru_cache(maxsize=256)
def stages(net: Network) -> tuple[Stage, ...]:
    """The network's stage table, bottom to top."""
    return apply_variant(net, ARCHITECTURES[net.arch](net))


# ---- Table 3's variants: named changes to a stage table --------------------------

# Zeiler & Fergus 2014, Table 3 (and Table 2's AlexNet row). Each name is a change to
# ZFNet's description; ``Network.variant`` holds it (zfnet only), ``with_variant``
# also maps 'zfnet' (no change) and 'alexnet' (arch alexnet).
VARIANT_CHANGES = {
    "no-conv3-4": "without layers 3 and 4 (conv3, conv4)",
    "no-fc6-7": "without layers 6 and 7 (fc6, fc7): pool5 -> fc8",
    "no-conv3-4-fc6-7": "without layers 3, 4, 6 and 7",
    "fc-2048": "layers 6 and 7 with 2048 units",
    "fc-8192": "layers 6 and 7 with 8192 units",
    "conv3-5-512-1024-512": "layers 3, 4, 5 with 512, 1024, 512 maps",
}
VARIANTS = {"zfnet": "ZFNet as in Fig. 3", **VARIANT_CHANGES,
            "alexnet": "AlexNet (torchvision's layout)"}
TABLE3_VARIANTS = tuple(VARIANTS)


def _without(table, names) -> tuple[Stage, ...]:
    """The table without the named stages and the ReLU / Dropout that follow each."""
    out, dropping = [], False
    for stage in table:
        if getattr(stage, "name", None) in names:
            dropping = True
            continue
        if dropping and isinstance(stage, (ReLU, Dropout)):
            continue
        dropping = False
        out.append(stage)
    return tuple(out)


def _resized(table, features: dict, width: float) -> tuple[Stage, ...]:
    """The table with the named Conv / Dense stages given ``features`` (at width 1)."""
    return tuple(dataclasses.replace(s, features=scaled(features[s.name], width))
                 if getattr(s, "name", None) in features else s for s in table)


def apply_variant(net: Network, table) -> tuple[Stage, ...]:
    """``table`` (ZFNet's) changed as ``net.variant`` says; unchanged for ''."""
    v, w = net.variant, net.width
    if not v:
        return tuple(table)
    if v.startswith("no-"):
        drop = ({"conv3", "conv4"} if "conv3-4" in v else set()) | (
            {"fc6", "fc7"} if "fc6-7" in v else set())
        return _without(table, drop)
    if v.startswith("fc-"):
        units = int(v.split("-")[1])
        return _resized(table, {"fc6": units, "fc7": units}, w)
    if v == "conv3-5-512-1024-512":
        return _resized(table, {"conv3": 512, "conv4": 1024, "conv5": 512}, w)
    raise ValueError(f"unknown variant {v!r}")


def with_variant(net: Network, name: str) -> Network:
    """``net`` as Table 3's variant ``name`` (one of VARIANTS): 'zfnet' is ZFNet
    unchanged, 'alexnet' the AlexNet arch, the others a change to ZFNet's stages."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; expected one of {', '.join(VARIANTS)}")
    if name == "alexnet":
        return dataclasses.replace(net, arch="alexnet", variant="")
    return dataclasses.replace(net, arch="zfnet", variant="" if name == "zfnet" else name)


# ---- derived: geometry, names, sizes, shapes -------------------------------------


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def pool_output_size(size: int, pool: MaxPool) -> int:
    """PyTorch's rule: floor or ceil, and in ceil mode the last window starts inside."""
    span = size + 2 * pool.padding - pool.window
    out = (-(-span // pool.stride) if pool.ceil else span // pool.stride) + 1
    if pool.ceil and (out - 1) * pool.stride >= size + pool.padding:
        out -= 1
    return out


class SpatialOp(NamedTuple):
    """One conv or max-pool as the deconvnet, occlusion and receptive fields see it.

    relu: a ReLU is among the stages of its recorded map (the map is rectified; the
    reverse pass rectifies the signal before the transposed filter). norm: the LRN
    applied to the recorded map before the next op, or None. ``index``: position in
    stages. ``segment``: stages[index:end], the op and every stage up to the next op
    (or the flatten); its first ``recorded`` stages make the recorded map (the op,
    then its ``MAP_STAGES``: batch norm, ReLU). ``model.apply_stages`` runs a segment
    forward, ``model.reverse_segment`` backward.
    """

    name: str
    kind: str  # 'conv' or 'pool'
    kernel: int
    stride: int
    padding: int  # leading padding of the forward op
    input_size: int  # spatial side of the map the op reads
    output_size: int
    channels: int  # output channels
    relu: bool
    norm: LRN | None
    stage: Any  # the Conv or MaxPool
    index: int
    segment: tuple = ()
    recorded: int = 1

    @property
    def end(self) -> int:
        """Index (in stages) after the op's segment."""
        return self.index + len(self.segment)

    @property
    def map_end(self) -> int:
        """Index (in stages) after the stages of the op's recorded map."""
        return self.index + self.recorded


def map_end(table, i: int) -> int:
    """Index after the stages that make named stage ``i``'s recorded map: ``i`` and the
    ``MAP_STAGES`` (batch norm, ReLU) that follow it directly."""
    j = i + 1
    while j < len(table) and isinstance(table[j], MAP_STAGES):
        j += 1
    return j


@functools.lru_cache(maxsize=256)
def spatial_ops(net: Network) -> tuple[SpatialOp, ...]:
    """Every conv and max-pool in order, with sizes; raises ValueError for a too-small image
    (or a batch norm that does not follow a conv)."""
    out, size, channels = [], net.image_size, 3
    table = stages(net)
    flatten = next((i for i, s in enumerate(table) if isinstance(s, (Flatten, Dense))), len(table))
    starts = [i for i, s in enumerate(table[:flatten]) if isinstance(s, (Conv, MaxPool))]
    for i, stage in enumerate(table):
        if isinstance(stage, BatchNorm) and not (i and isinstance(table[i - 1], Conv)):
            raise ValueError(f"batch norm {stage.name} of {net.arch} must directly follow a conv")
    for i, end in zip(starts, starts[1:] + [flatten]):
        stage = table[i]
        if isinstance(stage, Conv):
            if size + 2 * stage.padding < stage.kernel:
                raise _too_small(net, stage.name)
            new = conv_output_size(size, stage.kernel, stage.stride, stage.padding)
            channels = stage.features
            kind, kernel = "conv", stage.kernel
        else:
            if size + 2 * stage.padding < stage.window:
                raise _too_small(net, stage.name)
            new = pool_output_size(size, stage)
            kind, kernel = "pool", stage.window
        recorded = map_end(table, i) - i
        segment = table[i:end]
        relu = any(isinstance(s, ReLU) for s in segment[:recorded])
        norm = next((s for s in segment[recorded:] if isinstance(s, LRN)), None)
        out.append(SpatialOp(stage.name, kind, kernel, stage.stride, stage.padding, size, new,
                             channels, relu, norm, stage, i, segment, recorded))
        size = new
    return tuple(out)


def _too_small(net: Network, layer: str) -> ValueError:
    return ValueError(
        f"image_size {net.image_size} is too small for {net.arch}: the map before {layer} is "
        f"smaller than its window; use a larger image_size (zfnet: >= 64)")


def layer_sizes(net: Network) -> dict[str, int]:
    """Spatial side of every conv/pool map, e.g. {'input': 224, 'conv1': 110, ...}."""
    return {"input": net.image_size, **{op.name: op.output_size for op in spatial_ops(net)}}


def projectable_layers(net: Network) -> tuple[str, ...]:
    """Layers the deconvnet projects from (conv and pool maps), bottom to top."""
    return tuple(op.name for op in spatial_ops(net))


def conv_layers(net: Network) -> tuple[str, ...]:
    return tuple(op.name for op in spatial_ops(net) if op.kind == "conv")


def pool_layers(net: Network) -> tuple[str, ...]:
    return tuple(op.name for op in spatial_ops(net) if op.kind == "pool")


def dense_layers(net: Network) -> tuple[str, ...]:
    """Every dense layer, the logits last (fc6, fc7, fc8)."""
    return tuple(s.name for s in stages(net) if isinstance(s, Dense))


def fc_layers(net: Network) -> tuple[str, ...]:
    """Hidden dense layers whose activations are recorded (fc6, fc7): all but the logits."""
    return dense_layers(net)[:-1]


def num_channels(net: Network, layer: str) -> int:
    """Channels of a conv/pool map, or units of a dense layer (fc8: num_classes)."""
    for op in spatial_ops(net):
        if op.name == layer:
            return op.channels
    for s in stages(net):
        if isinstance(s, Dense) and s.name == layer:
            return s.features
    raise unknown_layer(net, layer)


def unknown_layer(net: Network, layer: Any) -> ValueError:
    return ValueError(f"unknown layer {layer!r}; expected one of "
                      f"{', '.join(projectable_layers(net))}")


def layer_order(name: str):
    """Sort key that puts layer names in network order without the network:
    conv1 < pool1 < conv2 ... < fc6 < fc8, and conv5_3 < pool5."""
    numbers = [int(n) for n in re.findall(r"\d+", name)] or [0]
    return numbers[0], name.startswith("pool"), numbers[1:], name


def check_layers(net: Network, layers) -> tuple[str, ...]:
    """The layer names (conv/pool maps), or ValueError naming the first unknown one."""
    known = projectable_layers(net)
    for layer in layers:
        if layer not in known:
            raise unknown_layer(net, layer)
    return tuple(layers)


def ops_below(net: Network, layer: str) -> tuple[SpatialOp, ...]:
    """Spatial ops from ``layer`` down to the input, top first. Raises for an unknown layer."""
    ops = spatial_ops(net)
    names = [op.name for op in ops]
    if layer not in names:
        raise unknown_layer(net, layer)
    return tuple(reversed(ops[: names.index(layer) + 1]))


def grow(op: SpatialOp, size, offset):
    """Window (size, offset) on an op's output -> the window its inputs span.

    Works on Python ints and on integer arrays (offsets may be traced).
    """
    return (size - 1) * op.stride + op.kernel, offset * op.stride - op.padding


def param_shapes(net: Network) -> dict[str, dict[str, tuple[int, ...]]]:
    """{'conv1': {'kernel': (7, 7, 3, 96) HWIO, 'bias': (96,)}, ..., 'fc8': {'kernel': (in, out), ...}};
    a batch norm: {'bn1_1': {'scale', 'bias', 'mean', 'var'}, each (channels,)}."""
    shapes, channels, flat = {}, 3, None
    ops = {op.index: op for op in spatial_ops(net)}
    for i, stage in enumerate(stages(net)):
        if isinstance(stage, Conv):
            shapes[stage.name] = {"kernel": (stage.kernel, stage.kernel, channels, stage.features),
                                  "bias": (stage.features,)}
            channels = stage.features
        elif isinstance(stage, BatchNorm):
            shapes[stage.name] = {key: (channels,) for key in ("scale", "bias", *BATCH_NORM_STATS)}
        elif isinstance(stage, Flatten):
            last = [op for j, op in ops.items() if j < i][-1]
            flat = last.output_size ** 2 * channels
        elif isinstance(stage, Dense):
            shapes[stage.name] = {"kernel": (flat, stage.features), "bias": (stage.features,)}
            flat = stage.features
    return shapes


def parameter_count(net: Network) -> int:
    """Trained parameters (batch norm running statistics not counted, as in torchvision)."""
    return sum(math.prod(s) for layer in param_shapes(net).values()
               for key, s in layer.items() if key not in BATCH_NORM_STATS)


def shape_setting(net: Network, layer: str, name: str) -> str:
    """Which config values decide a parameter's shape, for error messages."""
    dense = dense_layers(net)
    if layer == dense[-1]:
        return f"config num_classes {net.num_classes} (width {net.width})"
    if dense and layer == dense[0] and name == "kernel":
        return f"config image_size {net.image_size} and width {net.width}"
    return f"config width {net.width}"
