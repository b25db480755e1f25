"""``visualize.py transfer``: paper Tables 4-7 and Fig. 9 (core ``zfjax.analyses.transfer``, figure
``zfjax.figures.transfer``)."""

from __future__ import annotations

import argparse
import pathlib

from zfjax import argtypes, artifacts, cli
from zfjax.analyses import transfer
from zfjax.inputs import data
from zfjax.figures.transfer import plot_transfer
from zfjax.render import shown_path


def add_cli(subparsers) -> argparse.ArgumentParser:
    """The ``transfer`` subcommand (paper Tables 4-7, Fig. 9)."""
    parser = subparsers.add_parser(
        "transfer", help="Tables 4-7, Fig. 9: linear classifiers on each layer of the frozen "
                         "network, and the fc7 softmax against training images per class",
        description="Extract pool1..fc7 features of a dataset's training and test splits with "
                    "the frozen network; fit a multinomial logistic regression per layer (L2 "
                    "picked on a held-out part of the training split) and report test accuracy; "
                    "retrain the fc7 softmax (the top layer's) on n images per class over "
                    "random draws; with --scratch-epochs, also train the network from scratch "
                    "on those images (Table 4's 'no pretraining').")
    cli.add_model_arguments(parser)
    parser.add_argument("--data", required=True, metavar="SOURCE",
                        help="TFDS name (e.g. cifar10, caltech101) or image folder "
                             "<root>/<split>/<class>/<image> with a training and a test split")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory (never downloads)")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default=None,
                        help="default: 'test', or 'val' / 'validation' when there is no test split")
    parser.add_argument("--limit", type=argtypes.positive_int, default=None,
                        help="at most this many training images, spread over the classes")
    parser.add_argument("--test-limit", type=argtypes.positive_int, default=None,
                        help="at most this many test images, spread over the classes")
    parser.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="layers whose features are tested (default: those of pool1 pool2 "
                             "conv3 conv4 pool5 fc6 fc7 the network has, e.g. no conv3 conv4 "
                             "for --variant no-conv3-4)")
    parser.add_argument("--max-features", type=argtypes.positive_int, default=transfer.MAX_FEATURES,
                        help=f"spatial maps are average-pooled to at most this many features "
                             f"(default {transfer.MAX_FEATURES})")
    parser.add_argument("--l2", type=argtypes.nonnegative_float, nargs="+", default=list(transfer.L2_GRID),
                        help="L2 penalties tried on the held-out part (default: "
                             f"{' '.join(f'{v:g}' for v in transfer.L2_GRID)})")
    parser.add_argument("--steps", type=argtypes.positive_int, default=300, help="Adam steps per classifier")
    parser.add_argument("--per-class", type=argtypes.positive_int, nargs="*", default=list(transfer.PER_CLASS),
                        help="training images per class for the curve of the softmax on fc7 "
                             "(pool5 without fc6-7) (default: "
                             f"{' '.join(map(str, transfer.PER_CLASS))}; none: skip the curve)")
    parser.add_argument("--draws", type=argtypes.positive_int, default=5, help="random draws per point of the curve")
    parser.add_argument("--scratch-epochs", type=argtypes.positive_int, default=None,
                        metavar="E",
                        help="also train the network from random weights for E epochs on the "
                             "first draw of each --per-class point and test it (Table 4's 'no "
                             "pretraining' row; trains one network per point: slow)")
    parser.add_argument("--seed", type=argtypes.seed, default=0)
    parser.add_argument("--batch-size", type=argtypes.positive_int, default=128)
    parser.set_defaults(run=run)
    return parser


def load_test_split(source, split, size, *, data_dir, limit):
    """The test split: ``split`` if given, else 'test', else 'val' (a folder's or TFDS's)."""
    if split is not None:
        return data.load_split(source, split, size, data_dir=data_dir, limit=limit,
                               progress=False), split
    try:
        return data.load_split(source, "test", size, data_dir=data_dir, limit=limit,
                               progress=False), "test"
    except (FileNotFoundError, ValueError) as first:
        try:
            return data.load_split(source, "val", size, data_dir=data_dir, limit=limit,
                                   progress=False), "val"
        except (FileNotFoundError, ValueError):
            raise first from None


def _check_args(args, config) -> tuple[str, ...]:
    """The layers to test; ValueError for what argparse's types cannot check."""
    layers = transfer.feature_layers(config) if args.layers is None else tuple(args.layers)
    transfer.feature_grids(config, layers, args.max_features)  # unknown layers fail before loading data
    top = transfer.curve_layer(config)
    if top not in layers and args.per_class:
        raise ValueError(f"the --per-class curve retrains the softmax on {top}: keep {top} in "
                         f"--layers, or pass --per-class with no values to skip the curve")
    if args.scratch_epochs and not args.per_class:
        raise ValueError("--scratch-epochs trains on the --per-class draws: give --per-class "
                         "values too")
    return layers


def run(args) -> list[pathlib.Path]:
    """Print Table 7's column and the curve; write transfer.png and the CSVs."""
    loaded = cli.load_model(args)
    params, config, info = loaded.params, loaded.config, loaded.info
    layers = _check_args(args, config)
    size = config.image_size
    train = data.load_split(args.data, args.train_split, size, data_dir=args.data_dir,
                            limit=args.limit, progress=False)
    data.check_classes(train.class_names, f"the {args.train_split} split of {args.data}")
    test, test_split = load_test_split(args.data, args.test_split, size,
                                       data_dir=args.data_dir, limit=args.test_limit)
    if tuple(test.class_names) != tuple(train.class_names):
        raise ValueError(f"the {test_split} split of {args.data} has other classes than its "
                         f"{args.train_split} split; both splits need the same class folders")
    num_classes = len(train.class_names)

    def features(split):
        batches = loaded.preprocessing.batches(split.images, config.image_size, args.batch_size)
        return transfer.extract_features(config, params, batches, layers=layers,
                                         max_features=args.max_features)

    train_f, test_f = features(train), features(test)
    rows = transfer.layer_table(train_f, train.labels, test_f, test.labels, num_classes,
                                l2_grid=tuple(args.l2), steps=args.steps, seed=args.seed)
    curve = scratch = None
    top = transfer.curve_layer(config)
    if args.per_class:
        l2 = next(r.l2 for r in rows if r.layer == top)
        curve = transfer.few_shot_curve(train_f[top], train.labels, test_f[top], test.labels,
                                        num_classes, args.per_class, draws=args.draws, l2=l2,
                                        steps=args.steps, seed=args.seed)
    if args.scratch_epochs:
        scratch = transfer.scratch_row(config, train, test, args.per_class,
                                       epochs=args.scratch_epochs, seed=args.seed)
    print(f"{args.data}: {len(train)} {args.train_split} / {len(test)} {test_split} images, "
          f"{num_classes} classes; features of {cli.run_label(args.target, info)}")
    print(transfer.format_table(rows))
    if curve is not None:
        print(f"{top} softmax, images per class: " + ", ".join(
            f"{int(n)}: {100 * m:.1f} +- {100 * s:.1f}%"
            for n, m, s in zip(curve.per_class, curve.mean, curve.std)))
    if scratch is not None:
        print(f"no pretraining (from scratch, {scratch.epochs} epoch"
              f"{'s' if scratch.epochs > 1 else ''}, 1 draw), images per class: " + ", ".join(f"{int(n)}: {100 * a:.1f}%"
                                     for n, a in zip(scratch.per_class, scratch.accuracy)))
    out = cli.output_folder(args, info)
    paths = []
    for name, text in (("transfer_layers.csv", transfer.layers_csv(rows)),
                       ("transfer_curve.csv",
                        transfer.curve_csv(curve) if curve is not None else None),
                       ("transfer_scratch.csv",
                        transfer.scratch_csv(scratch) if scratch is not None else None)):
        if text is None:
            continue
        with artifacts.atomic_path(out / name) as tmp:
            tmp.write_text(text)
        paths.append(out / name)
    fig = plot_transfer(rows, curve, chance=1 / num_classes, layer=top, scratch=scratch, title=(
        f"Features of {cli.run_label(args.target, info)} on {shown_path(args.data)} "
        f"({len(train)} training, "
        f"{len(test)} test images, {num_classes} classes)"))
    return [artifacts.save_png(fig, out / "transfer.png")] + paths
