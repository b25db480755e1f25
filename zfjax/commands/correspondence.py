"""``visualize.py correspondence``: paper Table 1 from a parts file (core
``zfjax.analyses.correspondence``, figure ``zfjax.figures.correspondence``)."""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import numpy as np
from PIL import Image

from zfjax import argtypes, artifacts, cli
from zfjax.analyses import correspondence
from zfjax.inputs import data
from zfjax.nets import network
from zfjax.figures.correspondence import plot_correspondence


def read_parts(path) -> correspondence.Parts:
    """Read and check a parts file; one-line ValueError / FileNotFoundError otherwise."""
    path = pathlib.Path(path)
    example = '{"images": [{"path": "dog.jpg", "parts": {"left_eye": [top, left, bottom, right]}}]}'
    if not path.is_file():
        raise FileNotFoundError(f"parts file {path} does not exist; write one like {example}")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"parts file {path} is not valid JSON ({err}); expected {example}") from None
    entries = spec.get("images") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or len(entries) < 2:
        raise ValueError(f"parts file {path} needs an 'images' list of at least 2 entries; "
                         f"expected {example}")
    paths, boxes, sizes, names = [], [], [], None
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) \
                or not isinstance(entry.get("parts"), dict) or not entry["parts"]:
            raise ValueError(f"parts file {path}: entry {k} needs a 'path' string and a "
                             f"non-empty 'parts' object; expected {example}")
        image = pathlib.Path(entry["path"]).expanduser()
        image = image if image.is_absolute() else path.parent / image
        if not image.is_file():
            raise FileNotFoundError(f"image {image} (entry {k} of parts file {path}) does not exist")
        try:
            with Image.open(image) as im:
                width, height = im.size
        except Exception as err:
            raise ValueError(f"cannot read image {image} (entry {k} of {path}): {err}") from None
        parts = entry["parts"]
        if names is None:
            names = tuple(parts)
        elif set(parts) != set(names):
            raise ValueError(f"image {image} has parts {sorted(parts)} but {paths[0]} has "
                             f"{sorted(names)}; every image needs the same parts")
        row = []
        for name in names:
            box = parts[name]
            if (not isinstance(box, list) or len(box) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
                raise ValueError(f"image {image}: part {name!r} box {box!r} is not "
                                 f"[top, left, bottom, right] (4 numbers)")
            top, left, bottom, right = box
            if not (0 <= top < bottom <= height and 0 <= left < right <= width):
                raise ValueError(
                    f"image {image}: part {name!r} box [top, left, bottom, right] = {box} lies "
                    f"outside the {height}x{width} (height x width) image or is empty; need "
                    f"0 <= top < bottom <= {height} and 0 <= left < right <= {width}")
            row.append(box)
        paths.append(image)
        boxes.append(row)
        sizes.append((height, width))
    return correspondence.Parts(paths, names, np.asarray(boxes, np.float64), np.asarray(sizes, np.int64))


def add_cli(subparsers) -> argparse.ArgumentParser:
    """The ``correspondence`` subcommand (paper Table 1)."""
    parser = subparsers.add_parser(
        "correspondence", help="Table 1: consistency of feature changes when the same part "
                               "is masked in several images")
    cli.add_model_arguments(parser)
    parser.add_argument("--parts", required=True, type=pathlib.Path, metavar="JSON",
                        help='parts file: {"images": [{"path": ..., "parts": {"left_eye": '
                             '[top, left, bottom, right], ...}}, ...]} in image pixels')
    parser.add_argument("--draws", type=argtypes.positive_int, default=10,
                        help="random-box draws for the 'random' row (default 10)")
    parser.add_argument("--seed", type=argtypes.seed, default=0, help="seed of the random boxes")
    parser.add_argument("--layers", nargs="+", default=list(correspondence.LAYERS), metavar="LAYER",
                        help=f"layers to compare (default {' '.join(correspondence.LAYERS)}; any conv or "
                             f"pool map, fc6, fc7)")
    parser.set_defaults(run=run)
    return parser


def run(args) -> list[pathlib.Path]:
    """Print Table 1; write correspondence.png, .npz and .csv."""
    parts = read_parts(args.parts)
    loaded = cli.load_model(args)
    params, config, info = loaded.params, loaded.config, loaded.info
    feature_layers = network.projectable_layers(config) + network.fc_layers(config)
    for layer in args.layers:
        if layer not in feature_layers:
            raise ValueError(f"unknown layer {layer!r}; expected one of {', '.join(feature_layers)}")
    size = config.image_size
    boxes = correspondence.input_boxes(parts, size)
    stored = data.load_image_files([str(p) for p in parts.paths], size)
    inputs, display, _, _ = cli.images_for(loaded, stored)
    random = correspondence.random_boxes(boxes, size, args.draws, args.seed)
    layers = tuple(dict.fromkeys(args.layers))
    h = jax.device_get(correspondence.hamming_matrices(
        config, params, inputs, correspondence.mask_sets(boxes, random, size), layers=layers))
    rows = correspondence.table(h, parts.names, args.draws, layers)
    names = [p.name for p in parts.paths]
    fig = plot_correspondence(display, boxes, random, parts.names, rows, names,
                              title=f"{cli.run_label(args.target, info)}: {len(names)} images")
    out = cli.output_folder(args, info)
    csv_path = out / "correspondence.csv"
    with artifacts.atomic_path(csv_path) as tmp:
        tmp.write_text(correspondence.table_csv(rows))
    npz = artifacts.save_npz(
        out / "correspondence.npz", part_names=np.asarray(parts.names, dtype=str),
        images=np.asarray(names, dtype=str), boxes=boxes, random_boxes=random,
        **{f"{layer}/hamming": h[layer] for layer in layers})
    png = artifacts.save_png(fig, out / "correspondence.png")
    print(correspondence.format_table(rows))
    return [png, npz, csv_path]
