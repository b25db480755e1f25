"""Run folders and orbax checkpoints.

A run folder holds::

    config.json     model and training config, data source, class names, probe
    mean.npy        training mean image, float32 (S, S, 3) (data.mean_image)
    checkpoints/    orbax, one step per finished epoch: <epoch>/{params, opt, meta}
    checkpoints-steps/  the newest mid-epoch checkpoint, <global step>/..., deleted once
                    its epoch's checkpoint exists
    metrics.jsonl   one line per finished epoch
    curves.png      training curves
    snapshots/      per-epoch Fig. 4 snapshots (zfjax.evolution)

Orbax writes each checkpoint to a temporary folder and renames it when complete,
so a kill at any moment leaves the previous checkpoints loadable. The manager keeps
the newest ``max_to_keep`` epochs plus every epoch in ``KEEP_EPOCHS`` (those the
evolution figure shows).

``load_run(path)`` is what visualisation code uses: it returns the parameters,
model config, mean image and a few facts about the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from zfjax import model
from zfjax.model import ZFNetConfig

KEEP_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)
MAX_TO_KEEP = 3
CONFIG_FILE, MEAN_FILE, CHECKPOINT_DIR = "config.json", "mean.npy", "checkpoints"
STEP_CHECKPOINT_DIR = "checkpoints-steps"  # the newest mid-epoch checkpoint (train.py --checkpoint-every)

_HANDLERS = {"params": ocp.StandardCheckpointHandler, "opt": ocp.StandardCheckpointHandler,
             "meta": ocp.JsonCheckpointHandler}


def manager(directory, *, max_to_keep: int = MAX_TO_KEEP, keep_epochs=KEEP_EPOCHS,
            read_only: bool = False) -> ocp.CheckpointManager:
    """An orbax CheckpointManager over directory whose steps are epochs."""
    policies = ocp.checkpoint_managers
    # Synchronous saves: the next train step donates (reuses) the state's buffers, so
    # the write must be finished before it runs; a save takes seconds per epoch.
    options = ocp.CheckpointManagerOptions(
        create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=False, save_interval_steps=0 if read_only else 1,
        preservation_policy=policies.AnyPreservationPolicy(
            [policies.LatestN(max_to_keep), policies.CustomSteps(list(keep_epochs))]))
    return ocp.CheckpointManager(Path(directory).absolute(), options=options,
                                 item_handlers={k: h() for k, h in _HANDLERS.items()})


def save(mgr: ocp.CheckpointManager, epoch: int, state, meta: dict) -> None:
    """Saves state (a training.TrainState) and meta (JSON) as checkpoint `epoch`."""
    mgr.save(epoch, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
        meta=ocp.args.JsonSave(meta)))


def restore(mgr: ocp.CheckpointManager, epoch: int, abstract, config: ZFNetConfig | None = None):
    """Returns (state like `abstract`, meta dict) of checkpoint `epoch`.

    abstract: training.abstract_state(...) (shapes, dtypes, shardings); config, if
    given, is named in the error when the checkpoint's shapes differ.
    """
    check_shapes(_params_shapes(mgr, epoch), abstract.params, config)
    out = mgr.restore(epoch, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract.params),
        opt=ocp.args.StandardRestore({"step": abstract.step, "opt_state": abstract.opt_state}),
        meta=ocp.args.JsonRestore()))
    state = abstract.replace(params=out["params"], step=out["opt"]["step"],
                             opt_state=out["opt"]["opt_state"])
    return state, out["meta"]


def _params_shapes(mgr, epoch: int):
    """The saved params tree of checkpoint `epoch`, with leaves that have .shape."""
    return mgr.item_metadata(epoch)["params"].tree


# ---------------------------------------------------------------------- config checks

def _fmt(shape) -> str:
    return "(" + ",".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _shape_table(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{('conv1', 'kernel'): (7, 7, 3, 96), ...} for any tree whose leaves have .shape."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda a: hasattr(a, "shape"))
    return {tuple(str(getattr(k, "key", k)) for k in path): tuple(a.shape) for path, a in flat}


def _layer_order(key: tuple[str, ...]):
    """Bottom layer first, kernel before bias."""
    order = model.CONV_LAYERS + model.FC_LAYERS
    return (order.index(key[0]) if key[0] in order else len(order), key[-1] != "kernel", key)


def check_shapes(found, expected, config: ZFNetConfig | None = None) -> None:
    """Raises a one-line ValueError naming the first parameter whose shape differs.

    found, expected: params trees whose leaves have .shape (checkpoint metadata,
    arrays, jax.ShapeDtypeStruct); config, if given, is named in the message as the
    setting that decides the differing shape.
    """
    have, want = _shape_table(found), _shape_table(expected)
    if set(have) != set(want):
        names = lambda keys: ", ".join("/".join(k) for k in sorted(keys)) or "none"
        missing, unexpected = names(set(want) - set(have)), names(set(have) - set(want))
        raise ValueError(f"checkpoint parameters do not fit the config: missing {missing}; "
                         f"unexpected {unexpected}")
    for key in sorted(want, key=_layer_order):
        if have[key] != want[key]:
            setting = _setting(key[0], key[-1], config) if config else "the config"
            raise ValueError(f"checkpoint has {' '.join(key)} {_fmt(have[key])} but {setting} "
                             f"expects {_fmt(want[key])}")


def _setting(layer: str, name: str, config: ZFNetConfig) -> str:
    """Which config values decide this parameter's shape, e.g. 'config width 1.0'."""
    if layer == "fc8":
        return f"config num_classes {config.num_classes} (width {config.width})"
    if layer == "fc6" and name == "kernel":
        return f"config image_size {config.image_size} and width {config.width}"
    return f"config width {config.width}"


def check_checkpoint(path, config: ZFNetConfig) -> None:
    """Raises ValueError if the checkpoint (a checkpoints/<epoch> folder) does not fit config."""
    path = Path(path)
    mgr = manager(path.parent, read_only=True)
    expected = jax.eval_shape(model.init_params, config, jax.random.key(0))
    check_shapes(_params_shapes(mgr, int(path.name)), expected, config)


# ------------------------------------------------------------------------- run folders

def write_json(path, obj) -> None:
    """Writes obj as JSON atomically (temporary file + rename)."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def save_mean(run_dir, mean: np.ndarray) -> None:
    atomic_write(Path(run_dir) / MEAN_FILE, lambda f: np.save(f, mean))


def atomic_write(path, write) -> None:
    """Calls write(binary file) on a temporary file next to path, then renames it to path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_config(run_dir) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; {run_dir} is not a run folder made by train.py")
    return json.loads(path.read_text())


def model_config(run_config: dict) -> ZFNetConfig:
    return ZFNetConfig(**run_config["model"])


def config_dict(config) -> dict:
    """A frozen config dataclass as a JSON-ready dict."""
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(config).items()}


def _locate(path) -> tuple[Path, int | None]:
    """A run folder, its checkpoints/ folder or one checkpoints/<epoch> -> (run_dir, epoch)."""
    path = Path(path).absolute()
    if path.name.isdigit() and path.parent.name == CHECKPOINT_DIR:
        return path.parent.parent, int(path.name)
    if path.name == CHECKPOINT_DIR and not (path / CONFIG_FILE).exists():
        return path.parent, None
    return path, None


def load_run(path, epoch: int | None = None):
    """Loads a trained network for use: (params, config, mean, info).

    path: a run folder (its newest checkpoint, or `epoch`), or one checkpoint folder
    run/checkpoints/<epoch>. params are float32 arrays on the default device; mean is
    float32 (S, S, 3); info has 'epoch', 'step', 'checkpoint', 'run_dir',
    'class_names', 'metrics' (that epoch's line of metrics.jsonl), 'train', 'data'.
    """
    run_dir, found_epoch = _locate(path)
    run_config = read_config(run_dir)
    config = model_config(run_config)
    mgr = manager(run_dir / CHECKPOINT_DIR, read_only=True)
    steps = mgr.all_steps()
    epoch = epoch if epoch is not None else found_epoch
    if epoch is None:
        if not steps:
            raise FileNotFoundError(f"{run_dir / CHECKPOINT_DIR} holds no finished checkpoint")
        epoch = max(steps)
    if epoch not in steps:
        raise FileNotFoundError(f"no checkpoint for epoch {epoch} in {run_dir / CHECKPOINT_DIR}; "
                                f"available: {sorted(steps)}")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                            jax.eval_shape(model.init_params, config, jax.random.key(0)))
    check_shapes(_params_shapes(mgr, epoch), abstract, config)
    out = mgr.restore(epoch, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    mean = np.load(run_dir / MEAN_FILE)
    meta = out["meta"]
    info = {"epoch": epoch, "step": meta.get("step"),
            "checkpoint": str(run_dir / CHECKPOINT_DIR / str(epoch)), "run_dir": str(run_dir),
            "class_names": run_config.get("class_names"), "metrics": meta.get("metrics"),
            "train": run_config.get("train"), "data": run_config.get("data")}
    return out["params"], config, mean, info
