"""Command-line plumbing shared by every ``visualize.py`` subcommand.

The common options (run or weights, output folder, images), loading the model
(``loading.load``) and the images an analysis works on, and where outputs go.
"""

from __future__ import annotations

import argparse
import logging
import pathlib

import numpy as np

from typing import NamedTuple

from zfjax import argtypes, artifacts, loading
from zfjax.inputs import data
from zfjax.nets import network


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The network to analyse: a run folder (positional) or --weights FILE --arch ARCH."""
    parser.add_argument("target", nargs="?", default=None,
                        help="run folder or checkpoint written by train.py (or --weights)")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="pretrained weights instead of a run: torchvision .safetensors or "
                             "Keras .h5 (with --arch)")
    parser.add_argument("--arch", default=None, choices=list(network.ARCHITECTURES),
                        help="network held by --weights")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="output folder (default: <run>/figures, or figures/ beside --weights)")


def add_input_arguments(parser: argparse.ArgumentParser, *, count_help: str | None = None) -> None:
    """Add the options every analysis takes: target or --weights/--arch, --out, --images,
    --data, --split, --limit. ``load_analysis_inputs(args, count)`` reads them back.
    """
    add_model_arguments(parser)
    parser.add_argument("--images", nargs="+", metavar="PATH", default=None,
                        help="image files to analyse (default: the run's validation data)")
    parser.add_argument("--data", default=None, metavar="SOURCE",
                        help="TFDS name or image folder <root>/<split>/<class>/<image> to "
                             "take images from (default: the one the run was trained on)")
    parser.add_argument("--split", default="val", help="split of --data (default: val)")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    parser.add_argument("--limit", type=argtypes.positive_int, default=None,
                        help=count_help or "at most this many images of the split")


class MethodSettings(NamedTuple):
    """The attribution methods' options as given (``add_method_settings``)."""
    samples: int  # SmoothGrad: noisy copies per image
    noise: float  # SmoothGrad: noise standard deviation, a fraction of the image's value range
    steps: int  # integrated gradients: points on the path
    baseline: str  # integrated gradients' starting image: black, blur or a .npy file
    cam_layer: str | None  # Grad-CAM's layer (None: the command's default)


def add_method_settings(parser: argparse.ArgumentParser, *, baseline: bool = True,
                        cam_layer: bool = True) -> None:
    """Add --samples, --noise, --steps and, where the command offers them, --baseline and
    --cam-layer. ``method_settings(args, config)`` reads them back, checked."""
    parser.add_argument("--samples", type=argtypes.positive_int, default=16,
                        help="SmoothGrad: noisy copies per image (default 16)")
    parser.add_argument("--noise", type=argtypes.nonnegative_float, default=0.15,
                        help="SmoothGrad: noise standard deviation as a fraction of the image's "
                             "value range (default 0.15)")
    parser.add_argument("--steps", type=argtypes.positive_int, default=32,
                        help="integrated gradients: points on the path (default 32)")
    if baseline:
        parser.add_argument("--baseline", default="black", metavar="black|blur|FILE.npy",
                            help="integrated gradients' starting image: black (default), blur "
                                 "(the image blurred, sigma image_size/28) or a .npy network "
                                 "input (image_size, image_size, 3)")
    if cam_layer:
        parser.add_argument("--cam-layer", default=None,
                            help="Grad-CAM's layer (default: the last conv layer)")


def method_settings(args, config: network.Network) -> MethodSettings:
    """The options of ``add_method_settings`` (black baseline, default Grad-CAM layer where
    the command has no such option). ValueError (one line) for a layer the network lacks."""
    settings = MethodSettings(args.samples, args.noise, args.steps,
                              getattr(args, "baseline", "black"), getattr(args, "cam_layer", None))
    if settings.cam_layer is not None and settings.cam_layer not in network.projectable_layers(
            config):
        raise network.unknown_layer(config, settings.cam_layer)
    return settings


def load_model(args_or_target) -> loading.Model:
    """``loading.load`` of the parsed options (target, or --weights with --arch), or of a
    run folder / checkpoint path. Raises ValueError with one line on bad options."""
    if not isinstance(args_or_target, argparse.Namespace):
        return loading.load(args_or_target)
    args = args_or_target
    target, weights, arch = args.target, getattr(args, "weights", None), getattr(args, "arch", None)
    if (target is None) == (weights is None):
        raise ValueError("give a run folder or --weights FILE --arch ARCH (exactly one)")
    if weights is not None:
        if arch is None:
            raise ValueError(f"--weights needs --arch (one of {', '.join(network.ARCHITECTURES)})")
        return loading.load(weights, arch=arch)
    if arch is not None:
        raise ValueError("--arch goes with --weights; a run folder records its own network")
    return loading.load(target)


def run_data_source(info: dict) -> tuple[str | None, str | None]:
    """(source, data_dir) the run was trained on: TFDS name or image folder, as recorded."""
    recorded = info.get("data")
    if isinstance(recorded, dict):
        return recorded.get("source"), recorded.get("data_dir")
    return (recorded if isinstance(recorded, str) else None), None


def load_stored_images(args, config, info: dict, count: int | None):
    """uint8 stored-size images (N, S, S, 3), labels int32 (N,) or None, and their names.

    From ``args.images`` if given (labels None), else up to ``count`` images of
    ``args.split`` of ``args.data`` or the run's data source, spread over the classes.
    Labels are indices into the run's class list (``info['class_names']`` when recorded).
    """
    if getattr(args, "images", None):
        stored = data.load_image_files(args.images, config.image_size)
        return stored, None, [pathlib.Path(p).name for p in args.images]
    source, data_dir = run_data_source(info)
    if getattr(args, "data", None):
        source, data_dir = args.data, None
    data_dir = getattr(args, "data_dir", None) or data_dir
    if source is None:
        what = f"run {args.target}" if getattr(args, "target", None) else "--weights"
        raise ValueError(f"{what} does not record a data source; pass --data "
                         f"SOURCE (TFDS name or image folder) or --images PATH ...")
    classes = info.get("class_names") or None
    pretrained = info.get("weights") is not None
    split = data.load_split(source, getattr(args, "split", "val"), config.image_size,
                            data_dir=data_dir, limit=count, progress=False,
                            classes=None if pretrained else classes)
    names = ["/".join(pathlib.Path(p).parts[-2:]) for p in split.paths]
    labels = split.labels.astype(np.int32)
    if pretrained:
        labels = pretrained_labels(classes, split, source)
    return split.images, labels, names


def pretrained_labels(classes, split: data.ImageSet, source: str) -> np.ndarray | None:
    """Labels of ``split`` as indices into pretrained weights' ``classes`` (WordNet ids),
    matching each folder class by WordNet id or by its ImageNet name ('tench',
    'golden_retriever', any case); None (as with --images: analyses use the predicted
    class) when some class matches none, with a warning naming it."""
    from zfjax import render

    if classes is None:
        return None
    index = {name: i for i, name in enumerate(classes)}
    key = lambda name: str(name).lower().replace("_", " ").replace("-", " ")  # noqa: E731
    index.update({key(label): i for i, label in enumerate(render.class_labels(classes))})
    found = [index.get(name, index.get(key(name))) for name in split.class_names]
    unknown = [name for name, i in zip(split.class_names, found) if i is None]
    if unknown:
        logging.getLogger(__name__).warning(
            "%s: class %r (of %d) is not one of the weights' %d classes; analysing its images "
            "without true labels, as with --images", source, unknown[0], len(unknown), len(classes))
        return None
    return np.asarray(found, np.int32)[split.labels]


class Images(NamedTuple):
    """The images an analysis works on: inputs float32 (N, H, W, 3) network inputs (the
    model's preprocessing of the centre crops), display uint8 (N, H, W, 3) the same crops
    for showing, labels int32 (N,) or None (with --images), names list[str] of N names."""

    inputs: np.ndarray
    display: np.ndarray
    labels: np.ndarray | None
    names: list


def load_analysis_inputs(args, count: int | None) -> tuple[loading.Model, Images]:
    """Load the model (``load_model``) and the images an analysis works on.

    args: parsed options of ``add_input_arguments``. count: how many images of the
    split to take (None: all; ignored with --images, which takes every file named).
    Raises ValueError / FileNotFoundError with a one-line message on bad input.
    """
    model = load_model(args)
    stored, labels, names = load_stored_images(args, model.config, model.info, count)
    return model, images_for(model, stored, labels, names)


def images_for(model: loading.Model, stored: np.ndarray, labels=None, names=None) -> Images:
    """``Images`` of uint8 stored-size images (N, S, S, 3) for ``model``."""
    size = model.config.image_size
    display = np.ascontiguousarray(data.centre_crop(stored, size))
    return Images(model.preprocessing(stored, size), display, labels, names)


def output_folder(args, info: dict) -> pathlib.Path:
    """``--out`` or <run>/figures (the run folder of the target)."""
    if args.out is not None:
        return pathlib.Path(args.out)
    if info.get("run_dir"):
        return pathlib.Path(info["run_dir"]) / "figures"
    if info.get("weights"):
        return pathlib.Path(info["weights"]).parent / "figures"
    target = pathlib.Path(args.target)
    return (target if target.is_dir() else target.parent) / "figures"


def check_output_folder(args) -> None:
    """Raises ValueError unless the output folder of ``args`` (``--out``, else the
    target's <run>/figures) exists as a writable folder or can be made; makes nothing."""
    from zfjax.train.run import RunDir

    if getattr(args, "out", None) is not None:
        folder, flag = pathlib.Path(args.out).absolute(), f"--out {args.out}"
    elif getattr(args, "target", None) is not None:
        folder, flag = RunDir.locate(args.target)[0].path / "figures", "output folder"
    elif getattr(args, "weights", None) is not None:
        folder, flag = pathlib.Path(args.weights).absolute().parent / "figures", "output folder"
    else:
        return
    problem = artifacts.unwritable(folder)
    if problem is None:
        return
    existing, why = problem
    if why == "is a file":
        raise ValueError(f"{flag}: cannot make folder {folder}: {existing} is a file")
    raise ValueError(f"{flag}: cannot write to {existing} ({why}); pass a writable --out")


def run_label(target, info: dict) -> str:
    """'<run folder name>, epoch E' for figure titles."""
    name = pathlib.Path(info.get("run_dir") or info.get("weights") or target).name
    return f"{name}, epoch {info['epoch']}" if info.get("epoch") is not None else name
