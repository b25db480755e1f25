"""Pretrained weights from files, without torch, TensorFlow or pickle.

Two sources, each bringing its own preprocessing (``zfjax.nets.preprocessing``):

* torchvision state dicts saved as ``.safetensors`` (``features.N.weight``,
  ``classifier.N.bias``, ...), read with safetensors' numpy loader; e.g.::

      import torchvision, safetensors.torch
      safetensors.torch.save_file(torchvision.models.vgg16(weights="DEFAULT").state_dict(),
                                  "vgg16.safetensors")

  Conv kernels OIHW -> HWIO; dense (out, in) -> (in, out); the first dense
  layer's rows are reordered from PyTorch's NCHW flatten to zfjax's NHWC.
* Keras applications HDF5 weight files (``block1_conv1`` ... ``fc1``, ``fc2``,
  ``predictions``), read with h5py: the legacy layout of
  ``vgg16_weights_tf_dim_ordering_tf_kernels.h5`` and Keras 3 ``.weights.h5``
  (``layers/<name>/vars/0``). Already HWIO and NHWC.

The torchvision key of a layer is derived from the network description: its
index among the stages before the flatten (``features``) or after it
(``classifier``), as torchvision's ``nn.Sequential`` numbers them (vgg19_bn:
conv1_1 is features.0, its batch norm features.1 with ``weight``, ``bias``,
``running_mean``, ``running_var``, its ReLU features.2).
A file of another architecture fails with one line naming the first missing key
or mismatched shape.
"""

from __future__ import annotations

import pathlib
from typing import NamedTuple

import numpy as np

from zfjax.nets import network, preprocessing
from zfjax.nets.network import Network

SAFETENSORS_SUFFIXES = (".safetensors",)
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
# zfjax param entry -> torchvision state dict suffix (a conv's or linear's 'weight' is its
# kernel; a batch norm's, its scale).
TORCH_SUFFIXES = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean",
                  "var": "running_var"}


class Pretrained(NamedTuple):
    """A network with weights from a file: config, params (HWIO float32), preprocessing."""

    config: Network
    params: dict
    preprocessing: preprocessing.Preprocessing


# ---- key tables derived from the description --------------------------------------


def torchvision_keys(config: Network) -> dict[str, tuple[str, ...]]:
    """zfjax layer -> its torchvision keys, one per entry of ``network.param_shapes`` in
    that order: (weight key, bias key) of a conv or dense layer; (weight, bias,
    running_mean, running_var) of a batch norm."""
    table = network.stages(config)
    flat = next(i for i, s in enumerate(table) if isinstance(s, network.Flatten))
    shapes = network.param_shapes(config)
    keys = {}
    for i, stage in enumerate(table):
        if getattr(stage, "name", None) in shapes:
            prefix = f"features.{i}" if i < flat else f"classifier.{i - flat - 1}"
            keys[stage.name] = tuple(f"{prefix}.{TORCH_SUFFIXES[entry]}"
                                     for entry in shapes[stage.name])
    return keys


def torchvision_shapes(config: Network) -> dict[str, tuple[int, ...]]:
    """Every torchvision key with its shape (OIHW kernels, (out, in) dense weights)."""
    shapes = network.param_shapes(config)
    out = {}
    for layer, keys in torchvision_keys(config).items():
        for entry, key in zip(shapes[layer], keys):
            shape = shapes[layer][entry]
            if entry == "kernel":
                shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
            out[key] = shape
    return out


def keras_names(config: Network) -> dict[str, str]:
    """zfjax layer -> Keras applications layer name (VGG16 only)."""
    if config.arch != "vgg16":
        raise ValueError(f"Keras applications weights exist for vgg16, not {config.arch}")
    names = {"fc6": "fc1", "fc7": "fc2", "fc8": "predictions"}
    for layer in network.conv_layers(config):
        block, i = layer[len("conv"):].split("_")
        names[layer] = f"block{block}_conv{i}"
    return names


# ---- reading files ----------------------------------------------------------------


def load(path, arch: str) -> Pretrained:
    """Read a weight file for ``arch``; the format follows the suffix.

    The width and the number of classes follow from the file (first conv's
    channels, last layer's outputs); the input size is 224 (the classifier's
    input is the 224 px map). Raises ValueError with one line for a file that
    does not hold ``arch`` weights, FileNotFoundError for a missing file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} not found")
    if arch not in network.ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(network.ARCHITECTURES)}")
    if path.suffix in SAFETENSORS_SUFFIXES:
        tensors = _read_safetensors(path)
        config = _config_from(arch, path, tensors, "features.0.weight", _last_torch_key(tensors), 0, 0)
        return Pretrained(config, from_torchvision(config, tensors, path.name), preprocessing.TORCHVISION)
    if path.suffix in KERAS_SUFFIXES:
        layers = _read_keras(path)
        config = Network(arch=arch)
        names = keras_names(config)
        first, last = names[network.conv_layers(config)[0]], names[network.dense_layers(config)[-1]]
        flat = {f"{name}/{i}": arrays[i] for name, arrays in layers.items()
                for i in range(len(arrays))}
        config = _config_from(arch, path, flat, f"{first}/0", f"{last}/0", -1, -1)
        return Pretrained(config, from_keras(config, layers, path.name), preprocessing.CAFFE)
    raise ValueError(f"{path.name}: unknown weight file type {path.suffix!r}; expected a "
                     f"torchvision .safetensors file or a Keras .h5 file")


def _read_safetensors(path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path.name} is not a readable .safetensors file: {err}") from None


def _last_torch_key(tensors) -> str:
    keys = [k for k in tensors if k.startswith("classifier.") and k.endswith(".weight")]
    return max(keys, key=lambda k: int(k.split(".")[1])) if keys else "classifier.?.weight"


def _config_from(arch, path, arrays, first_key, last_key, first_axis, last_axis) -> Network:
    """The Network whose width and classes match the file's first and last layers."""
    for key in (first_key, last_key):
        if key not in arrays:
            raise ValueError(f"{path.name} does not hold {arch} weights: missing key {key}")
    width = arrays[first_key].shape[first_axis] / network.stages(Network(arch=arch))[0].features
    return Network(arch=arch, num_classes=int(arrays[last_key].shape[last_axis]),
                   width=width, init_std=None)


def _check(path_name: str, config: Network, arrays: dict, expected: dict) -> None:
    for key, shape in expected.items():
        if key not in arrays:
            raise ValueError(f"{path_name} does not hold {config.arch} weights: missing key {key}")
        if tuple(arrays[key].shape) != tuple(shape):
            raise ValueError(f"{path_name} does not hold {config.arch} weights: {key} has shape "
                             f"{tuple(arrays[key].shape)} but {config.arch} expects {tuple(shape)}")
    extra = sorted(set(arrays) - set(expected))
    if extra:
        raise ValueError(f"{path_name} does not hold {config.arch} weights: unexpected key {extra[0]}")
    for key in expected:
        array = np.asarray(arrays[key])
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{path_name}: tensor {key} holds {array.dtype} values, not floating "
                             f"point; weight files must hold float weights")
        finite = np.isfinite(array)
        if not finite.all():
            raise ValueError(f"{path_name}: tensor {key} holds {finite.size - finite.sum()} "
                             f"non-finite value(s) (NaN or Inf); the weights are damaged "
                             f"(a diverged training or a broken conversion)")


def from_torchvision(config: Network, tensors: dict, path_name: str = "state dict") -> dict:
    """zfjax params (HWIO, NHWC flatten) from a torchvision state dict of numpy arrays."""
    tensors = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    _check(path_name, config, tensors, torchvision_shapes(config))
    first_dense = network.dense_layers(config)[0]
    conv_channels = network.param_shapes(config)[network.conv_layers(config)[-1]]["bias"][0]
    params, shapes = {}, network.param_shapes(config)
    for layer, keys in torchvision_keys(config).items():
        if "kernel" not in shapes[layer]:  # a batch norm: per-map vectors, as they are
            params[layer] = {entry: np.asarray(tensors[key], np.float32)
                             for entry, key in zip(shapes[layer], keys)}
            continue
        weight, bias = keys
        w = np.asarray(tensors[weight], np.float32)
        if w.ndim == 4:
            kernel = w.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif layer == first_dense:
            out, inputs = w.shape
            side = int(round((inputs // conv_channels) ** 0.5))
            # PyTorch flattens (C, h, w); zfjax flattens (h, w, C).
            kernel = w.reshape(out, conv_channels, side, side).transpose(2, 3, 1, 0).reshape(inputs, out)
        else:
            kernel = w.T
        params[layer] = {"kernel": np.ascontiguousarray(kernel),
                         "bias": np.asarray(tensors[bias], np.float32)}
    return params


def _read_keras(path) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> [kernel, bias] from a legacy or Keras 3 HDF5 weight file."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path.name} is not a readable HDF5 file: {err}") from None
    with f:
        try:
            return _keras_layers(f, path)
        except (KeyError, TypeError, AttributeError, OSError) as err:  # h5py's missing member, a
            # dataset where a group belongs, ...: malformed, whatever the detail
            raise ValueError(f"{path.name} is not a readable Keras weight file: "
                             f"{type(err).__name__}: {err}") from None


def _keras_layers(f, path) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> [kernel, bias] of an open HDF5 file, in the file's dtypes
    (_check refuses non-float ones)."""
    root = f["model_weights"] if "model_weights" in f else f  # a whole saved model
    out = {}
    if "layer_names" in root.attrs:  # Keras 2 / applications layout
        for name in root.attrs["layer_names"]:
            name = name.decode() if isinstance(name, bytes) else str(name)
            group = root[name]
            weight_names = [w.decode() if isinstance(w, bytes) else str(w)
                            for w in group.attrs.get("weight_names", [])]
            if weight_names:
                out[name] = [np.asarray(group[w]) for w in weight_names]
    elif "layers" in root:  # Keras 3 .weights.h5: layers/<name>/vars/<i>
        for name, group in root["layers"].items():
            if "vars" in group and len(group["vars"]):
                out[name] = [np.asarray(group["vars"][str(i)]) for i in range(len(group["vars"]))]
    else:
        raise ValueError(f"{path.name} is not a Keras weight file (no layer_names, no layers/)")
    return out


def from_keras(config: Network, layers: dict, path_name: str = "weights") -> dict:
    """zfjax params from Keras layer name -> [kernel (HWIO or (in, out)), bias]."""
    names = keras_names(config)
    flat = {f"{name}/{i}": arrays[i] for name, arrays in layers.items() for i in range(len(arrays))}
    expected = {}
    for layer, shapes in network.param_shapes(config).items():
        expected[f"{names[layer]}/0"] = shapes["kernel"]
        expected[f"{names[layer]}/1"] = shapes["bias"]
    _check(path_name, config, flat, expected)
    return {layer: {"kernel": np.ascontiguousarray(layers[names[layer]][0], np.float32),
                    "bias": np.asarray(layers[names[layer]][1], np.float32)}
            for layer in network.param_shapes(config)}
