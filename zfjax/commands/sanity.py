"""``visualize.py sanity``: the sanity checks of Adebayo et al. 2018 (core ``zfjax.analyses.sanity``,
figures ``zfjax.figures.sanity``)."""

from __future__ import annotations

import argparse
import pathlib

import jax
import numpy as np

from zfjax import argtypes, artifacts, cli
from zfjax.analyses import sanity
from zfjax.nets import attribution, model, network
from zfjax.figures.sanity import plot_maps, plot_similarity
from zfjax.progress import bar as progress_bar

IMAGES = 4  # the similarity is averaged over them; the figure shows the first


def add_cli(subparsers) -> argparse.ArgumentParser:
    """The ``sanity`` subcommand (Adebayo et al. 2018)."""
    parser = subparsers.add_parser(
        "sanity", help="sanity checks of attribution maps (Adebayo et al. 2018): how much each "
                       "method's maps change as the network is randomised layer by layer, or "
                       "trained on permuted labels")
    cli.add_input_arguments(parser, count_help=f"images taken from the split (default {IMAGES})")
    parser.add_argument("--methods", nargs="+", choices=attribution.METHODS, default=None,
                        metavar="NAME", help=f"methods to check (default: all: "
                                             f"{', '.join(attribution.METHODS)})")
    parser.add_argument("--target", type=int, default=None, metavar="CLASS", dest="target_class",
                        help="class logit to explain (default: each image's class predicted by "
                             "the trained network; the same for every randomised network)")
    parser.add_argument("--random-labels", default=None, metavar="OTHER_RUN",
                        help="a run of the same recipe trained with train.py --shuffle-labels: "
                             "compare its maps with the trained network's")
    cli.add_method_settings(parser, baseline=False)
    parser.add_argument("--seed", type=argtypes.seed, default=0,
                        help="seed of the random weights and of SmoothGrad's noise (default 0)")
    parser.set_defaults(run=run)
    return parser


def _settings(loaded, inputs, given: cli.MethodSettings, key) -> sanity.Settings:
    """SmoothGrad's noise and a black image's network input as the IG baseline."""
    size = loaded.config.image_size
    black = loaded.preprocessing(np.zeros((1, size, size, 3), np.float32), size)[0]
    return sanity.Settings(attribution.smoothgrad_noise(key, inputs, given.samples, given.noise),
                           black, given.steps, given.cam_layer)


def _same_network(config, other, path) -> None:
    if (network.param_shapes(config) != network.param_shapes(other)
            or config.image_size != other.image_size):
        raise ValueError(f"--random-labels {path}: its network ({other.arch}, "
                         f"{other.image_size} px, {network.parameter_count(other):,} parameters) "
                         f"is not the one checked ({config.arch}, {config.image_size} px, "
                         f"{network.parameter_count(config):,}); train it with the same recipe and "
                         f"--shuffle-labels")


def run(args) -> list[pathlib.Path]:
    """Model (and, with --random-labels, data) randomisation of every method; print the
    tables; write sanity_cascading.png, sanity_independent.png, sanity_similarity.png,
    sanity.csv and sanity.npz."""
    methods = sanity.check_methods(args.methods or attribution.METHODS)
    loaded = cli.load_model(args)
    config, params, info = loaded.config, loaded.params, loaded.info
    given = cli.method_settings(args, config)
    target_class = args.target_class
    if target_class is not None and not 0 <= target_class < config.num_classes:
        raise ValueError(f"--target {target_class} is out of range: expected a class "
                         f"0..{config.num_classes - 1}")
    other = None
    if args.random_labels is not None:
        other = cli.load_model(args.random_labels)
        _same_network(config, other.config, args.random_labels)
    stored, labels, names = cli.load_stored_images(args, config, info, args.limit or IMAGES)
    images = cli.images_for(loaded, stored, labels, names)
    key_weights, key_noise = jax.random.split(jax.random.key(args.seed))
    settings = _settings(loaded, images.inputs, given, key_noise)
    classes = (np.full(len(images.inputs), target_class, np.int32) if target_class is not None
               else np.asarray(sanity.predicted_classes(config, params, images.inputs)))

    layers = model.top_down_layers(config)
    total = 2 * (len(layers) + 1) + (other is not None)
    checks = []
    with progress_bar(total=total, desc=f"sanity: {len(methods)} method(s), "
                                        f"{len(images.inputs)} image(s)", unit="net") as bar:
        for kind in sanity.RANDOMISATIONS:
            checks.append(jax.device_get(sanity.model_randomisation(
                config, params, images.inputs, classes, methods, settings, key_weights, kind,
                progress=lambda _: bar.update())))
        random_labels = None
        if other is not None:
            other_inputs = cli.images_for(other, stored).inputs
            other_maps = sanity.method_maps(other.config, other.params, other_inputs, classes,
                                            methods, _settings(other, other_inputs, args,
                                                               key_noise))
            trained = sanity.Maps(*(x[0] for x in checks[0].maps))
            random_labels = jax.device_get(sanity.data_randomisation(trained, other_maps,
                                                                     methods))
            bar.update()
    every = checks + ([random_labels] if random_labels is not None else [])
    for check in every:
        for field in sanity.Similarity._fields:
            print(sanity.format_table(check, field))
            print()

    label = cli.run_label(args.target or args.weights, info)
    target = ("the class given" if target_class is not None
              else "the class the trained network predicts")
    figures = {}
    for check in checks:
        figures[f"sanity_{check.kind}.png"] = plot_maps(
            check, images.display, extra=random_labels,
            title=f"{label}: {check.kind} randomisation, {images.names[0]}, target {target} "
                  f"(class {int(classes[0])}); normalised |map|")
    figures["sanity_similarity.png"] = plot_similarity(
        checks, random_labels, title=f"{label}: similarity to the trained network's maps "
                                     f"({len(images.inputs)} images, mean +- std)")
    arrays = {"methods": np.array(methods), "classes": classes, "names": np.array(images.names)}
    for check in every:
        arrays[f"{check.kind}_steps"] = np.array(check.steps)
        arrays[f"{check.kind}_absolute"] = np.asarray(check.maps.absolute)
        arrays[f"{check.kind}_signed"] = np.asarray(check.maps.signed)
        for field in sanity.Similarity._fields:
            arrays[f"{check.kind}_{field}"] = np.asarray(getattr(check.similarity, field))
    out = cli.output_folder(args, info)
    csv_path = out / "sanity.csv"
    with artifacts.atomic_path(csv_path) as tmp:
        tmp.write_text(sanity.csv_text(sanity.table_rows(every)))
    return ([artifacts.save_png(fig, out / name) for name, fig in figures.items()]
            + [csv_path, artifacts.save_npz(out / "sanity.npz", **arrays)])
