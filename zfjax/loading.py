"""One loader for every analysis: a trained run or a pretrained weight file.

    model = zfjax.load("runs/cpu")                              # a train.py run folder
    model = zfjax.load("vgg16.safetensors", arch="vgg16")       # torchvision weights
    model = zfjax.load("vgg16_weights_tf_dim_ordering_tf_kernels.h5", arch="vgg16")  # Keras
    inputs = model.preprocessing(uint8_images, model.config.image_size)
    logits, aux = zfjax.forward(model.config, model.params, inputs)

``Model`` holds what every analysis needs: the network config, its params, the
preprocessing that belongs to them, and the class names (WordNet ids for
ImageNet-1k weights; ``render.class_labels`` turns them into names).
"""

from __future__ import annotations

import pathlib
from typing import NamedTuple

import jax
import numpy as np

from zfjax.inputs import data
from zfjax.nets import network, preprocessing, weights
from zfjax.nets.network import Network


class Model(NamedTuple):
    """config; params {layer: {'kernel', 'bias'}} on the default device; preprocessing
    (uint8 images -> network inputs); class_names list[str] or None; info dict
    ('run_dir', 'epoch', 'weights', 'data', ... where known)."""

    config: Network
    params: dict
    preprocessing: preprocessing.Preprocessing
    class_names: list | None
    info: dict


def is_weight_file(target) -> bool:
    return pathlib.Path(target).suffix in weights.SAFETENSORS_SUFFIXES + weights.KERAS_SUFFIXES


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet WordNet ids in class-index order (torchvision's and Keras's)."""
    from zfjax import render

    return list(render.imagenet_names())


def load(target, *, arch: str | None = None, epoch: int | None = None) -> Model:
    """A run folder / checkpoint (train.py) or a weight file (with ``arch``).

    Raises ValueError / FileNotFoundError with a one-line message on bad input.
    """
    if arch is not None or is_weight_file(target):
        if arch is None:
            raise ValueError(f"{target} is a weight file; say which network it holds with "
                             f"--arch (one of {', '.join(network.ARCHITECTURES)})")
        loaded = weights.load(target, arch)
        classes = imagenet_classes() if loaded.config.num_classes == 1000 else None
        info = {"weights": str(pathlib.Path(target).absolute()), "run_dir": None, "epoch": None,
                "class_names": classes, "data": None}
        return Model(loaded.config, jax.device_put(loaded.params), loaded.preprocessing, classes,
                     info)
    from zfjax.train.run import RunDir

    run_dir, found_epoch = RunDir.locate(target)
    params, config, mean, record = run_dir.load(epoch if epoch is not None else found_epoch)
    mean = np.asarray(mean, np.float32)
    size = data.stored_size(config.image_size)
    if mean.shape != (size, size, 3):
        raise ValueError(f"mean image of {target} is {mean.shape}, expected ({size}, {size}, 3) "
                         f"for image_size {config.image_size}; the run's files do not match")
    return Model(config, params, preprocessing.run_mean(mean), record.class_names,
                 record.as_info())
