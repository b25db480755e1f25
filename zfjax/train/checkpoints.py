"""Run folders and orbax checkpoints.

A run folder holds::

    config.json     model and training config, data source, class names, probe
    mean.npy        training mean image, float32 (S, S, 3) (data.mean_image)
    checkpoints/    orbax, one step per finished epoch: <epoch>/{params, opt, meta}
    checkpoints-steps/  the newest mid-epoch checkpoint, <global step>/..., deleted once
                    its epoch's checkpoint exists
    metrics.jsonl   one line per finished epoch
    curves.png      training curves
    snapshots/      per-epoch Fig. 4 snapshots (zfjax.analyses.evolution)
    tensorboard/    TensorBoard event files (zfjax.train.tensorboard_events)

``zfjax.train.run.RunDir`` reads and writes these files.

Orbax writes each checkpoint to a temporary folder and renames it when complete,
so a kill at any moment leaves the previous checkpoints loadable. The manager keeps
the newest ``max_to_keep`` epochs plus every epoch in ``KEEP_EPOCHS`` (those the
evolution figure shows).

``load_run(path)`` (``run.RunDir.load``) is what visualisation code uses: it returns
the parameters, model config, mean image and a record of the checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from zfjax import artifacts, interrupts
from zfjax.nets import model, network
from zfjax.nets.network import Network

KEEP_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)
MAX_TO_KEEP = 3
CONFIG_FILE, MEAN_FILE, CHECKPOINT_DIR = "config.json", "mean.npy", "checkpoints"
STEP_CHECKPOINT_DIR = "checkpoints-steps"  # the newest mid-epoch checkpoint (train.py --checkpoint-every)
LOCK_FILE = ".lock"  # held (flock) by the train.py process writing the run
RUN_FORMAT = "zfjax run"  # config.json's "format": marks a folder train.py made

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


class CheckpointError(ValueError):
    """A checkpoint could not be written or read; the message says which one, why, and
    which checkpoint is still good."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint whose data could not be read (e.g. a truncated file).

    orbax abandons the other reads of that checkpoint on background threads; at
    interpreter shutdown they may still print "Event loop is closed" tracebacks.
    A command reporting this error should end with ``leave_now``.
    """


def leave_now(code: int):
    """Flush stdout/stderr and end the process with ``code`` at once, skipping the
    interpreter shutdown in which abandoned orbax reads print tracebacks. For commands
    after a DamagedCheckpoint: nothing is left to write by then (all writes are atomic)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@contextlib.contextmanager
def _quiet_orbax():
    """Keeps orbax's absl log lines (a warning on every read-only load, tracebacks from
    its writer threads when a write fails) off the user's terminal; failures still
    reach the caller as exceptions, which the callers turn into one-line errors."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        absl.setLevel(level)


def _last_good(mgr, before: int | None = None) -> str:
    steps = [s for s in mgr.all_steps() if before is None or s < before]
    if not steps:
        return "no earlier checkpoint exists"
    return f"the last good checkpoint is {Path(mgr.directory) / str(max(steps))}"


def _nbytes(tree) -> int:
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
               for a in jax.tree.leaves(tree) if hasattr(a, "shape"))


def save(mgr: ocp.CheckpointManager, epoch: int, state, meta: dict) -> None:
    """Saves state (a training.TrainState) and meta (JSON) as checkpoint `epoch`.

    Raises CheckpointError (naming the last good checkpoint, which stays loadable) if
    the disk has too little free space or the write fails.
    """
    directory = Path(mgr.directory)
    need = _nbytes((state.params, state.opt_state)) + (1 << 20)
    free = shutil.disk_usage(directory).free
    if jax.process_index() == 0 and free < need:
        raise CheckpointError(
            f"not enough free space in {directory} for checkpoint {epoch}: it needs about "
            f"{need / 1e6:.1f} MB, {free / 1e6:.1f} MB are free; {_last_good(mgr)}; free some "
            f"space and continue with --resume")

    def write():
        with interrupts.deferred():
            mgr.save(epoch, args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params),
                opt=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
                meta=ocp.args.JsonSave(meta)))

    def failed(e: Exception) -> CheckpointError:
        full = "No space left on device" in str(e) or getattr(e, "errno", None) == errno.ENOSPC
        return CheckpointError(
            f"writing checkpoint {epoch} into {directory} failed"
            + (": the disk is full" if full else f": {_first_line(e)}")
            + f"; {_last_good(mgr, epoch)}; "
            + ("free some space and " if full else "") + "continue with --resume")

    _quietly(write, failed)


def _first_line(error: BaseException) -> str:
    """The first line of the innermost cause (orbax wraps TensorStore's precise error)."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def _damaged(mgr, epoch: int, error: BaseException) -> DamagedCheckpoint:
    others = sorted(s for s in mgr.all_steps() if s != epoch)
    path = Path(mgr.directory) / str(epoch)
    hint = (f"load another with {Path(mgr.directory) / str(others[-1])} (epochs "
            f"{', '.join(map(str, others))} exist), or move {path} aside and --resume"
            if others else "no other checkpoint exists")
    return DamagedCheckpoint(f"checkpoint {path} cannot be read, it is damaged or truncated "
                           f"({_first_line(error)}); {hint}")


def _read(mgr, epoch: int, read):
    """read() (an orbax read of checkpoint `epoch`), or CheckpointError if it is damaged."""
    return _quietly(read, lambda e: _damaged(mgr, epoch, e))


def _quietly(io, failure):
    """io() (an orbax read or write); if it raises, raises failure(its exception) instead.

    When one array fails, orbax abandons the reads or writes of the others; their
    coroutines, freed later, would each print "Exception ignored ...", and TensorStore
    finishing them prints "Event loop is closed" tracebacks (a full disk did, 3 runs
    in 10). They are freed here and silenced, before the one-line error goes on.
    """
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        try:
            with _quiet_orbax():
                return io()
        except Exception as e:
            error = failure(e)
        _silence_abandoned_io()
        gc.collect()
    finally:
        sys.unraisablehook = hook
    raise error


def _silence_abandoned_io():
    """From now on, keeps the noise of orbax's abandoned reads and writes off the
    terminal: when TensorStore completes them on its own threads after orbax's event
    loop closed, they print "Event loop is closed" tracebacks (straight to sys.stderr,
    at any moment up to exit) and log "Task exception was never retrieved". Only the
    main thread's writes to stderr, which carry the one-line error, still get through."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    if not isinstance(sys.stderr, _MainThreadOnly):
        sys.stderr = _MainThreadOnly(sys.stderr)


class _MainThreadOnly:
    """A text stream that passes on only what the main thread writes."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if threading.current_thread() is threading.main_thread():
            return self._stream.write(text)
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def restore(mgr: ocp.CheckpointManager, epoch: int, abstract, config: Network | None = None):
    """Returns (state like `abstract`, meta dict) of checkpoint `epoch`.

    abstract: training.abstract_state(...) (shapes, dtypes, shardings); config, if
    given, is named in the error when the checkpoint's shapes differ.
    """
    check_shapes(_params_shapes(mgr, epoch), abstract.params, config)
    out = _read(mgr, epoch, lambda: mgr.restore(epoch, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract.params),
        opt=ocp.args.StandardRestore({"step": abstract.step, "opt_state": abstract.opt_state}),
        meta=ocp.args.JsonRestore())))
    state = abstract.replace(params=out["params"], step=out["opt"]["step"],
                             opt_state=out["opt"]["opt_state"])
    return state, out["meta"]


def _params_shapes(mgr, epoch: int):
    """The saved params tree of checkpoint `epoch`, with leaves that have .shape."""
    return _read(mgr, epoch, lambda: mgr.item_metadata(epoch)["params"].tree)


# ---------------------------------------------------------------------- config checks

def _fmt(shape) -> str:
    return "(" + ",".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _shape_table(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{('conv1', 'kernel'): (7, 7, 3, 96), ...} for any tree whose leaves have .shape."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda a: hasattr(a, "shape"))
    return {tuple(str(getattr(k, "key", k)) for k in path): tuple(a.shape) for path, a in flat}


def _layer_order(key: tuple[str, ...]):
    """Bottom layer first, kernel before bias."""
    return network.layer_order(key[0]), key[-1] != "kernel", key


def check_shapes(found, expected, config: Network | None = None) -> None:
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
            setting = network.shape_setting(config, key[0], key[-1]) if config else "the config"
            raise ValueError(f"checkpoint has {' '.join(key)} {_fmt(have[key])} but {setting} "
                             f"expects {_fmt(want[key])}")


def check_checkpoint(path, config: Network) -> None:
    """Raises ValueError if the checkpoint (a checkpoints/<epoch> folder) does not fit config."""
    path = Path(path)
    expected = model.abstract_params(config)
    with _reading(path.parent) as mgr:
        check_shapes(_params_shapes(mgr, int(path.name)), expected, config)


# ------------------------------------------------------------------------- run folders

def save_mean(run_dir, mean: np.ndarray) -> None:
    artifacts.atomic_write(Path(run_dir) / MEAN_FILE, lambda f: np.save(f, mean))


@contextlib.contextmanager
def lock_run_folder(run_dir):
    """Creates run_dir if needed and holds an exclusive lock on it while the block runs.

    The lock is an flock on run_dir/.lock, which the kernel drops when the process
    ends, even by kill -9, so a stale lock never blocks a --resume. Raises
    RunFolderBusy naming the holder's pid and host if another process holds it, and
    OSError (e.g. PermissionError) if the folder cannot be made.
    """
    run_dir = Path(run_dir)
    with contextlib.ExitStack() as stack:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(artifacts.held_lock(
                run_dir / LOCK_FILE, f" (since {time.strftime('%Y-%m-%d %H:%M:%S')})"))
        except artifacts.LockHeld as e:
            raise RunFolderBusy(f"run folder {run_dir} is in use by {e.holder}; wait for it "
                                f"to finish or stop it, or pass another --out") from None
        except OSError as e:
            raise RunFolderError(f"cannot use {run_dir} as the run folder: {e.strerror}"
                                 + (f" ({e.filename})" if e.filename else "")
                                 + "; pass another --out") from None
        yield run_dir


class RunFolderError(OSError):
    """The run folder cannot be made, written or used; the message says why."""


class RunFolderBusy(RunFolderError):
    """Another process is training into the same run folder."""


def is_run_folder(run_dir) -> bool:
    """Whether run_dir holds a config.json that train.py wrote: one marked with
    ``RUN_FORMAT``, or (runs from before the mark) a JSON object with zfjax's
    'model', 'train' and 'data' sections. A file merely named config.json is not."""
    try:
        run_config = json.loads((Path(run_dir) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(run_config, dict):
        return False
    return run_config.get("format") == RUN_FORMAT or all(
        isinstance(run_config.get(key), dict) for key in ("model", "train", "data"))


def check_new_run_folder(run_dir) -> None:
    """Raises RunFolderError if run_dir is a folder that holds anything (but a stale
    lock file) and is not a zfjax run: a new run would overwrite the user's
    config.json, metrics.jsonl, curves.png or mean.npy there."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or is_run_folder(run_dir):
        return
    if any(entry.name != LOCK_FILE for entry in run_dir.iterdir()):
        raise RunFolderError(
            f"--out {run_dir} is a folder that holds files and is not a zfjax run (it has no "
            f"{CONFIG_FILE} written by train.py); pick a new or empty folder, or pass "
            f"--resume with the --out of a run to continue it")


def finished_epochs(run_dir) -> list[int]:
    """Epochs with a complete checkpoint in run_dir (orbax renames a checkpoint to its
    epoch number only once it is complete), without starting orbax."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) \
        if folder.is_dir() else []


class Checkpoint(NamedTuple):
    """One complete checkpoint of a run: path (its folder), manager_dir (the orbax folder
    holding it: checkpoints/ or checkpoints-steps/), number (its orbax step: the epoch,
    or the global step of a mid-epoch one), epoch (the epoch it finished, or the one it
    is inside), step (None for an epoch's checkpoint, else the step inside that epoch;
    None too where the run's config does not say)."""

    path: Path
    manager_dir: Path
    number: int
    epoch: int | None
    step: int | None

    def describe(self) -> str:
        """'epoch 3', or 'step 4 of epoch 2' for a mid-epoch checkpoint."""
        if self.manager_dir.name == CHECKPOINT_DIR:
            return f"epoch {self.epoch}"
        if self.step is None:
            return f"global step {self.number}"
        return f"step {self.step} of epoch {self.epoch}"


def resume_order(run_dir) -> list[Checkpoint]:
    """The complete checkpoints of run_dir that ``train.py --resume`` may continue from,
    newest first: the mid-epoch checkpoint where it is newer than the last epoch's, then
    the epochs' checkpoints. A mid-epoch checkpoint at or before the last epoch's end is
    left over from a deletion that a kill cut short, and is skipped. Reads folder names
    and config.json only (no orbax)."""
    run_dir = Path(run_dir)
    epochs = finished_epochs(run_dir)
    steps_folder = run_dir / STEP_CHECKPOINT_DIR
    numbers = sorted((int(p.name) for p in steps_folder.iterdir() if p.name.isdigit()),
                     reverse=True) if steps_folder.is_dir() else []
    per_epoch = _steps_per_epoch(run_dir)
    found = []
    for number in numbers[:1]:
        if per_epoch is None:
            found.append(Checkpoint(steps_folder / str(number), steps_folder, number, None, None))
        elif number > (epochs[-1] if epochs else 0) * per_epoch:
            found.append(Checkpoint(steps_folder / str(number), steps_folder, number,
                                    number // per_epoch + 1, number % per_epoch))
    folder = run_dir / CHECKPOINT_DIR
    return found + [Checkpoint(folder / str(e), folder, e, e, None) for e in reversed(epochs)]


def _steps_per_epoch(run_dir) -> int | None:
    """Training steps in one epoch of the run, from its config.json (None if unknown)."""
    try:
        run_config = json.loads((Path(run_dir) / CONFIG_FILE).read_text())
        return int(run_config["data"]["train_images"]) // int(run_config["train"]["batch_size"])
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


def last_checkpoint_message(run_dir) -> str:
    """'the last checkpoint (epoch 3) is PATH', naming the one --resume continues from,
    or 'no checkpoint was written yet'."""
    order = resume_order(run_dir)
    if not order:
        return "no checkpoint was written yet"
    return f"the last checkpoint ({order[0].describe()}) is {order[0].path}"


def read_config(run_dir) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; {run_dir} is not a run folder made by train.py")
    try:
        run_config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); it is damaged") from None
    if not isinstance(run_config, dict) or not isinstance(run_config.get("model"), dict):
        raise ValueError(f"{path} has no 'model' section; it was not written by train.py or "
                         f"is damaged")
    return run_config


def model_config(run_config: dict) -> Network:
    """The run's network; config.json files written before ``arch`` existed are ZFNet."""
    try:
        return network.from_dict(run_config["model"])
    except TypeError as e:
        raise ValueError(f"the 'model' section of {CONFIG_FILE} does not fit zfjax.Network: {e}") \
            from None


def config_dict(config) -> dict:
    """A frozen config dataclass as a JSON-ready dict."""
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(config).items()}


def load_run(path, epoch: int | None = None):
    """Loads a trained network for use: a run.LoadedRun (params, config, mean, record).

    path: a run folder (its newest checkpoint, or `epoch`), or one checkpoint folder
    run/checkpoints/<epoch>. params are float32 arrays on the default device; mean is
    float32 (S, S, 3); record (run.CheckpointRecord) has the epoch, step, checkpoint
    folder, run folder, class names, that epoch's metrics and config.json's sections.
    """
    from zfjax.train import run  # run builds on this module

    run_dir, found_epoch = run.RunDir.locate(path)
    return run_dir.load(epoch if epoch is not None else found_epoch)


@contextlib.contextmanager
def _reading(directory):
    """A read-only manager over directory, closed afterwards (an open one leaves
    orbax threads that fail noisily at interpreter exit)."""
    with _quiet_orbax():
        mgr = manager(directory, read_only=True)
    try:
        yield mgr
    finally:
        mgr.close()


def load_params(checkpoint_dir, config: Network, epoch: int | None = None):
    """(params, meta, epoch) of checkpoint `epoch` (default: the newest) in a run's
    checkpoints/ folder; params on the default device. FileNotFoundError or ValueError
    (one line) when there is no such checkpoint or its shapes do not fit config."""
    checkpoint_dir = Path(checkpoint_dir)
    with _reading(checkpoint_dir) as mgr:
        return _load_params(mgr, checkpoint_dir, config, epoch)


def _load_params(mgr, checkpoint_dir: Path, config, epoch):
    steps = mgr.all_steps()
    if epoch is None:
        if not steps:
            raise FileNotFoundError(f"{checkpoint_dir} holds no finished checkpoint")
        epoch = max(steps)
    if epoch not in steps:
        raise FileNotFoundError(f"no checkpoint for epoch {epoch} in {checkpoint_dir}; "
                                f"available: {sorted(steps)}")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                            model.abstract_params(config))
    check_shapes(_params_shapes(mgr, epoch), abstract, config)
    out = _read(mgr, epoch, lambda: mgr.restore(epoch, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())))
    return out["params"], out["meta"], epoch
