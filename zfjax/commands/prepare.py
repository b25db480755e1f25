"""Prepare a dataset once for streamed training: decode, resize and shard it (zfjax.inputs.store).

Examples:
  python prepare.py ../shared/data/imagenette stores/nette-224 --size 224
  python prepare.py imagenet2012 /data/stores/imagenet-224 --size 224 \\
      --data-dir ~/tensorflow_datasets                # TFDS (imagenet2012: manual_dir tars)
  python train.py --preset paper --data /data/stores/imagenet-224

Run it again after an interruption: finished shards are kept (--restart starts over).
Run on a complete store, it checks every shard and prepares damaged ones again.
train.py prepares a store itself when a split is too large for memory.
"""

from __future__ import annotations

import argparse
import logging
import sys


def parse_args(argv=None, prog: str = "prepare.py"):
    from zfjax import argtypes

    p = argparse.ArgumentParser(
        prog=prog, description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="TFDS name (e.g. imagenet2012) or image folder "
                                  "<root>/<split>/<class>/<image>")
    p.add_argument("store", help="folder to write the store into")
    p.add_argument("--size", type=argtypes.image_size, default=224,
                   help="network input side; images are stored at round(size * 256 / 224)")
    p.add_argument("--data-dir", help="TFDS data directory")
    p.add_argument("--limit", type=argtypes.positive_int, help="at most this many training images")
    p.add_argument("--val-limit", type=argtypes.positive_int, help="at most this many validation images")
    p.add_argument("--workers", type=argtypes.positive_int, help="decoding processes (default: all cores)")
    p.add_argument("--shard-size", type=argtypes.positive_int, default=1024, help="images per shard")
    p.add_argument("--restart", action="store_true",
                   help="delete an unfinished preparation in STORE and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv=None, *, prog: str = "prepare.py") -> int:
    """Runs prepare.py's command line argv (default: sys.argv[1:]) with prog in usage and
    errors. Returns the exit code: 0, 1 (source or store trouble), 130 (Ctrl-C); bad
    flags exit with 2 (argparse)."""
    args = parse_args(argv, prog)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from zfjax.inputs import store

    try:
        prepared = store.prepare(args.source, args.store, args.size, data_dir=args.data_dir,
                                 limits={"train": args.limit, "val": args.val_limit},
                                 workers=args.workers, shard_size=args.shard_size,
                                 restart=args.restart, verify=True,
                                 progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as e:  # StoreError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # store.Interrupted says what is kept
        print(f"\n{e if str(e) else 'interrupted; run the same command again to continue'}",
              file=sys.stderr)
        return 130
    m = prepared.manifest
    counts = ", ".join(f"{s} {v['count']} images ({v['skipped']} skipped)"
                       for s, v in m["splits"].items())
    print(f"store ready: {prepared.path} ({m['stored_size']} px, {counts})")
    return 0


def console_main() -> int:
    """prepare.py and the zfjax-prepare entry point: main on sys.argv."""
    from zfjax.programs import program_name

    return main(sys.argv[1:], prog=program_name("prepare.py"))
