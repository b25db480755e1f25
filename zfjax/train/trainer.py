"""The training loop: data, epochs, evaluation, snapshots, checkpoints, metrics.

``fit(run, out)`` trains ``run`` (a run.RunSpec: model config, training config,
data) into the run folder ``out`` (layout in zfjax.train.checkpoints) and returns the
folder. ``fit(run, out, resume=True)`` continues a stopped run from its newest
checkpoint using the folder's own config.json; it ends with the same parameters
as an uninterrupted run, because data order and dropout keys are functions of
(seed, epoch, step) only.

Several hosts: call ``jax.distributed.initialize()`` first (train.py --distributed)
on every host, with the run folder on a shared file system. Every host loads the
data and computes the same global batches; each feeds its slice to its devices.
Only process 0 writes config.json, metrics, curves and snapshots; orbax
coordinates the checkpoint writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import shlex
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from zfjax import artifacts, interrupts, programs
from zfjax.inputs import data, loader
from zfjax.train import checkpoints, tensorboard_events, training
from zfjax.train.run import RunDir, RunSpec
from zfjax.progress import bar as progress_bar

class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN, infinite or diverged (over DIVERGED_LOSS); no
    checkpoint was written after it."""


class Interrupted(KeyboardInterrupt):
    """Training was stopped with Ctrl-C; the message says where the last checkpoint is
    and how to continue."""


_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


@contextlib.contextmanager
def _lock_on_process_0(run_dir: Path):
    """Holds the run folder's lock on process 0 (the only one that writes it) while the
    block runs. Every process learns whether process 0 got it, so on several hosts a
    refused lock ends them all with one line, instead of leaving the others to fail in
    their first collective, minutes later, with a traceback."""
    if jax.process_count() == 1:
        with checkpoints.lock_run_folder(run_dir):
            yield
        return
    from jax.experimental import multihost_utils

    with contextlib.ExitStack() as held:
        refused = None
        if _is_main():
            try:
                held.enter_context(checkpoints.lock_run_folder(run_dir))
            except checkpoints.RunFolderError as e:
                refused = e
        if multihost_utils.broadcast_one_to_all(np.int32(refused is not None)):
            raise refused or checkpoints.RunFolderError(
                f"process 0 could not use the run folder {run_dir}; its message says why")
        yield


def _is_main() -> bool:
    return jax.process_index() == 0


def _say(message: str) -> None:
    if _is_main():
        tqdm.write(message)


# ---------------------------------------------------------------------------- the run

def fit(run: RunSpec | None, out, *, resume: bool = False, epochs: int | None = None,
        learning_rate: float | None = None, progress: bool = True,
        checkpoint_every: int | None = None, memory_budget: int | None = None, store_dir=None,
        workers: int | None = None, download: bool = False, snapshots=None,
        curves=None) -> Path:
    """Trains run into the folder out; returns it.

    resume: continue the run in out from its newest checkpoint with out's config.json
      (run is then ignored and may be None). epochs: train up to this epoch (default:
      the run's; on resume it may extend the stored run). learning_rate: on resume, the
      learning rate from now on (recorded in config.json under 'resumes'; for a run
      that has no checkpoint yet, a restart with it). The caller checks first that what
      it asks for matches the stored run (RunDir.read_spec, RunSpec.differences).
    checkpoint_every: also checkpoint every this many steps inside an epoch, so a
      resume continues from that step (only the newest such checkpoint is kept).
    memory_budget, store_dir, workers: how the data is fed (loader.choose): bytes a
      split may take in memory, where a store is prepared when it does not fit, and
      decoding processes when streaming. download: fetch a TFDS dataset that is not
      prepared yet (train.py does, unless --offline).
    snapshots: the per-epoch hook (train.py passes ``evolution.EpochSnapshots()``, the
      paper's Fig. 4): ``snapshots.make_probe(val_images, mean, config, seed=, count=)``
      once, then ``snapshots(run_dir, epoch, config, params, probe)`` after every epoch on
      process 0. None: no snapshots.
    curves: ``curves(history) -> matplotlib Figure`` drawn into curves.png on process 0
      after the first and the last epoch, and after any other once drawing has taken
      under a tenth of the time since the last drawing (short epochs redraw it every few
      epochs; train.py passes ``zfjax.figures.curves.plot_curves``); None: no curves.png.
    The run folder is locked while training (checkpoints.lock_run_folder).
    Raises NonFiniteLoss if the loss diverges (no exploded state is ever saved),
    Interrupted on Ctrl-C, and checkpoints.RunFolderError / CheckpointError when the
    disk refuses a write; the last good checkpoint stays loadable in each case.
    """
    run_dir = Path(out).absolute()
    options = dict(resume=resume, epochs=epochs, learning_rate=learning_rate,
                   progress=progress, checkpoint_every=checkpoint_every,
                   memory_budget=memory_budget, store_dir=store_dir, workers=workers,
                   download=download, snapshots=snapshots, curves=curves)
    try:
        if not resume:
            checkpoints.check_new_run_folder(run_dir)
        with interrupts.watched() as watch, _lock_on_process_0(run_dir):
            return _fit(run, run_dir, watch=watch, **options)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {_last_checkpoint(run_dir)}; continue with: "
                          f"{programs.command_line('train.py')} --out {shlex.quote(str(run_dir))} --resume") from None
    except checkpoints.RunFolderError:
        raise
    except OSError as e:
        if e.errno not in _DISK_ERRORS:
            raise
        where = Path(e.filename).parent if e.filename else run_dir
        raise checkpoints.RunFolderError(
            f"cannot write in {where}: {e.strerror}; {_last_checkpoint(run_dir)}; fix that "
            f"and continue with --resume") from None


def _last_checkpoint(run_dir: Path) -> str:
    return checkpoints.last_checkpoint_message(run_dir)


def _fit(run, run_dir: Path, *, watch, resume, epochs, learning_rate, progress,
         checkpoint_every, memory_budget, store_dir, workers, download, snapshots,
         curves) -> Path:
    mgr_dir = run_dir / checkpoints.CHECKPOINT_DIR
    if resume:
        run = RunDir(run_dir).read_spec()
        done = checkpoints.finished_epochs(run_dir)
        target = epochs or run.train.epochs
        if done and done[-1] >= target:
            _say(f"nothing to do: {run_dir} already has {done[-1]} epochs (asked for "
                 f"{target}); pass --epochs N with N > {done[-1]} to train further")
            return run_dir
    elif mgr_dir.exists() and any(mgr_dir.iterdir()):
        raise FileExistsError(f"run folder {run_dir} already holds checkpoints; pass --resume "
                              f"to continue it, or a new --out")
    run = dataclasses.replace(run, train=dataclasses.replace(
        run.train, epochs=epochs or run.train.epochs))
    tcfg = run.train
    mesh = training.make_mesh()
    training.check_batch_size(tcfg.batch_size, mesh)

    source = run.data.resolve()
    train_feed, val_feed, data_mean, how = loader.choose(
        source, run.model.image_size, data_dir=run.data.data_dir,
        limits={"train": run.data.train_limit, "val": run.data.val_limit}, budget=memory_budget,
        store_dir=store_dir, workers=workers, download=download,
        progress=progress and _is_main())
    data.check_classes(train_feed.class_names, f"the training split of {source}")
    if len(train_feed) < tcfg.batch_size:
        raise ValueError(f"{len(train_feed)} training images are fewer than one batch of "
                         f"{tcfg.batch_size}; pass a smaller --batch")
    if tcfg.shuffle_labels:  # recorded in config.json's train section: a resume keeps it
        train_feed = loader.PermutedLabels(train_feed, tcfg.seed)
    config = dataclasses.replace(run.model, num_classes=len(train_feed.class_names))
    run = dataclasses.replace(run, model=config)
    _say(_banner(run, run_dir, mesh, resume))
    _say(f"data: {len(train_feed)} training and {len(val_feed)} validation images, "
         f"{config.num_classes} classes\ninput: {how}"
         + ("\nlabels: training labels permuted over the images (--shuffle-labels)"
            if tcfg.shuffle_labels else ""))
    mean_file = run_dir / checkpoints.MEAN_FILE
    mean = np.load(mean_file) if resume and mean_file.exists() else data_mean
    probe_count = min(run.data.probe_count, len(val_feed))
    probe = (snapshots.make_probe(val_feed.subset(probe_count), mean, config, seed=tcfg.seed,
                                  count=probe_count)
             if snapshots else None)
    run_config = _run_config(run, train_feed, val_feed, probe)

    mgr = checkpoints.manager(mgr_dir)
    step_mgr = checkpoints.manager(run_dir / checkpoints.STEP_CHECKPOINT_DIR, max_to_keep=1,
                                   keep_epochs=())
    try:
        fresh = not (resume and (mgr.latest_step() is not None
                                 or step_mgr.latest_step() is not None))
        if not fresh:
            state, meta = _resume(run_dir, mgr, step_mgr, run_config, config, tcfg, mesh)
            run_config["resumes"] = checkpoints.read_config(run_dir).get("resumes", []) + [
                {"after_epoch": meta["epoch"], "epochs": tcfg.epochs,
                 "learning_rate": learning_rate}]
            if learning_rate is not None:
                state = training.with_learning_rate(state, learning_rate)
                _say(f"learning rate from here on: {learning_rate:g}")
        else:  # a fresh run, or one stopped before its first checkpoint was complete
            if resume and learning_rate is not None:  # nothing to continue: a restart
                tcfg = dataclasses.replace(tcfg, learning_rate=learning_rate)
                run = dataclasses.replace(run, train=tcfg)
                run_config["train"] = checkpoints.config_dict(tcfg)
                _say(f"no checkpoint yet: starting over with learning rate {learning_rate:g}")
            state, meta = training.create_state(config, tcfg, mesh), {"epoch": 0, "plateau": {}}
        if _is_main():  # config.json first: it marks the folder as a run (is_run_folder)
            artifacts.write_json(run_dir / checkpoints.CONFIG_FILE, run_config)
            if fresh:
                checkpoints.save_mean(run_dir, mean)
                RunDir(run_dir).write_metrics([])
        events = _event_writer(RunDir(run_dir)) if _is_main() else None
        try:
            _Loop(RunDir(run_dir), mgr, step_mgr, config, tcfg, mesh, train_feed, val_feed,
                  training.replicate(np.asarray(mean, np.float32), mesh), probe, snapshots,
                  progress, checkpoint_every, watch, curves, events).run(state, meta)
        finally:
            if events is not None:
                events.close()
    finally:
        mgr.close()
        step_mgr.close()
    _say(f"done: {tcfg.epochs} epochs in {run_dir}\n  checkpoints: {mgr_dir}\n"
         f"  metrics: {run_dir / 'metrics.jsonl'}\n"
         + (f"  curves: {run_dir / 'curves.png'}\n" if curves else "")
         + f"  TensorBoard: tensorboard --logdir {RunDir(run_dir).tensorboard_dir}"
         + (f"\n  snapshots: {run_dir / 'snapshots'}" if snapshots else ""))
    return run_dir


def _event_writer(run_dir: RunDir):
    """The run's TensorBoard event writer, or None (with a note) if tensorboard is not
    installed."""
    try:
        return tensorboard_events.EventWriter(run_dir.tensorboard_dir)
    except ImportError as e:
        _say(f"note: no TensorBoard events ({e}); pip install tensorboard to get them")
        return None


def _run_config(run: RunSpec, train_set, val_set, probe) -> dict:
    """The contents of config.json."""
    return {
        "format": checkpoints.RUN_FORMAT,
        "model": checkpoints.config_dict(run.model), "train": checkpoints.config_dict(run.train),
        "data": {**dataclasses.asdict(run.data), "train_images": len(train_set),
                 "val_images": len(val_set),
                 "train_skipped": train_set.skipped, "val_skipped": val_set.skipped},
        "class_names": list(train_set.class_names), "probe": _probe_info(probe),
        "devices": {"platform": jax.devices()[0].platform, "count": jax.device_count(),
                    "processes": jax.process_count()},
    }


def _resume(run_dir, mgr, step_mgr, run_config, config, tcfg, mesh):
    """Restores the newest checkpoint (a mid-epoch one if it is newer than the last
    epoch's); drops metrics lines of epochs after it."""
    stored = checkpoints.read_config(run_dir)
    if stored.get("probe") is not None and stored["probe"] != run_config["probe"]:
        raise ValueError(f"the probe rebuilt from the validation data differs from the one "
                         f"{run_dir} was started with; has the data changed?")
    abstract = training.abstract_state(config, tcfg, mesh)
    order = checkpoints.resume_order(run_dir)
    for i, checkpoint in enumerate(order):
        manager = step_mgr if checkpoint.manager_dir == Path(step_mgr.directory) else mgr
        try:
            state, meta = checkpoints.restore(manager, checkpoint.number, abstract, config)
            break
        except checkpoints.DamagedCheckpoint as e:
            # A mid-epoch checkpoint is disposable (the epoch's replaces it): go on from
            # the newest intact one. An epoch's checkpoint is the user's to move aside.
            if manager is mgr or i + 1 == len(order):
                raise
            _say(f"warning: {e.args[0].split(';')[0]}; resuming from the newest intact "
                 f"checkpoint instead, {order[i + 1].path}, and removing the damaged one")
    usable = {c.number for c in order if c.manager_dir == Path(step_mgr.directory)}
    for number in step_mgr.all_steps():  # left by a kill, or damaged: trained again
        if number not in usable or number > int(training.local_value(state.step)):
            if number not in usable:
                _say(f"note: removing {Path(step_mgr.directory) / str(number)}, a mid-epoch "
                     f"checkpoint that its epoch's checkpoint replaced (a kill cut its "
                     f"removal short)")
            step_mgr.delete(number)
    epoch = meta["epoch"]
    if _is_main():
        folder = RunDir(run_dir)
        folder.write_metrics([m for m in folder.read_metrics() if m["epoch"] <= epoch])
    _say(f"resuming after epoch {epoch}" + (
        f", at step {meta['next_step']} of epoch {epoch + 1}" if "next_step" in meta else ""))
    return state, meta


def _probe_info(probe) -> dict | None:
    """Small facts that identify the probe, so a resumed run can check it rebuilt the same."""
    if probe is None:
        return None
    return {"count": int(len(probe.images)),
            "display_sha256": hashlib.sha256(np.ascontiguousarray(probe.display)).hexdigest(),
            "maps": {k: np.asarray(v).tolist() for k, v in probe.maps.items()}}


def _banner(run: RunSpec, run_dir, mesh, resume: bool) -> str:
    config = {"model": checkpoints.config_dict(run.model),
              "train": checkpoints.config_dict(run.train),
              "data": {k: v for k, v in dataclasses.asdict(run.data).items()
                       if k != "probe_count"},
              "devices": f"{mesh.size} x {mesh.devices.flat[0].platform}"}
    text = f"{'resuming' if resume else 'training'} into {run_dir}\n{json.dumps(config)}"
    if mesh.devices.flat[0].platform == "cpu" and run.model.image_size >= 160:
        text += ("\nnote: a full-size ZFNet on CPU takes hours; --preset cpu takes minutes")
    return text


# --------------------------------------------------------------------------- the loop

@dataclasses.dataclass
class _Loop:
    """What every epoch and step of one fit shares: where to write (folder, checkpoint
    managers, TensorBoard events), what to train (config, recipe, mesh, feeds, the
    replicated mean and dropout key, compiled steps) and the hooks."""

    run_dir: RunDir
    mgr: object  # orbax CheckpointManager of the epochs' checkpoints
    step_mgr: object  # ... of the mid-epoch checkpoint
    config: object
    tcfg: training.TrainConfig
    mesh: object
    train_feed: object
    val_feed: object
    mean_dev: jax.Array
    probe: object
    snapshots: object
    progress: bool
    checkpoint_every: int | None
    watch: interrupts.Watch
    curves: object = None  # history -> Figure, or None
    events: object = None  # tensorboard_events.EventWriter on process 0, else None

    def __post_init__(self):
        self.step_fn = training.make_stored_train_step(self.config, self.tcfg.filter_radius,
                                                       self.mesh)
        self.loss_fn = training.make_stored_loss(self.config, self.mesh)
        self.eval_fn = training.make_stored_eval_step(self.config, self.mesh)
        self.rng = training.dropout_key(self.tcfg)
        self.steps = len(self.train_feed) // self.tcfg.batch_size
        self._curves_drawn = None  # (when, seconds) of the last curves.png drawing

    def run(self, state, meta: dict) -> None:
        """Trains from after meta['epoch'] (and meta['next_step'] inside the next epoch,
        when resuming there) up to tcfg.epochs."""
        tcfg, run_dir = self.tcfg, self.run_dir
        plateau = training.Plateau(**meta["plateau"])
        history = run_dir.read_metrics()
        partial = meta if "next_step" in meta else None  # resuming inside an epoch
        for epoch in range(meta["epoch"] + 1, tcfg.epochs + 1):
            lr = training.learning_rate(state)
            start = time.perf_counter()
            state, train_metrics, last_batch = self.train_epoch(state, epoch, plateau, partial)
            partial = None
            train_seconds = time.perf_counter() - start
            top1, top5 = evaluate_feed(state.params, self.eval_fn, self.val_feed, self.mean_dev,
                                       tcfg.batch_size, self.mesh, self.watch)
            eval_seconds = time.perf_counter() - start - train_seconds
            snapshot = None
            if self.snapshots and _is_main():
                snapshot = self.snapshots(run_dir.path, epoch, self.config,
                                          _local_copy(state.params), self.probe)
            snapshot_seconds = time.perf_counter() - start - train_seconds - eval_seconds
            plateau, next_lr = training.next_learning_rate(tcfg, plateau, epoch, 1 - top1, lr)
            state = training.with_learning_rate(state, next_lr)
            steps_run = train_metrics.pop("steps_run")
            metrics = {"epoch": epoch, "step": epoch * self.steps, **train_metrics,
                       "val_top1": top1, "val_top5": top5, "learning_rate": lr,
                       "images_per_s": steps_run * tcfg.batch_size / train_seconds,
                       "seconds": time.perf_counter() - start, "train_seconds": train_seconds,
                       "eval_seconds": eval_seconds, "snapshot_seconds": snapshot_seconds}
            history.append(metrics)
            if _is_main():  # metrics first: a resume drops lines after its checkpoint
                run_dir.write_metrics(history)
                if self.curves is not None and (epoch == tcfg.epochs or self._curves_due()):
                    drawing = time.perf_counter()
                    artifacts.save_png(self.curves(history), run_dir.curves_file, dpi=90)
                    self._curves_drawn = (drawing, time.perf_counter() - drawing)
                self._log_epoch(metrics, snapshot)
            self.save_if_sound(self.mgr, epoch, state, {
                "epoch": epoch, "step": metrics["step"], "plateau": dataclasses.asdict(plateau),
                "metrics": metrics}, epoch, self.steps - 1, last_batch)
            for old in self.step_mgr.all_steps():  # superseded by this epoch's checkpoint
                self.step_mgr.delete(old)
            wait = metrics["input_wait_seconds"]
            bound = "input" if wait > 0.1 * train_seconds else "step"
            _say(f"epoch {epoch}: train loss {metrics['train_loss']:.3f} top-1 "
                 f"{metrics['train_top1']:.3f} | val top-1 {top1:.3f} top-5 {top5:.3f} | lr "
                 f"{lr:g} | {metrics['images_per_s']:.0f} img/s, {metrics['seconds']:.0f} s | "
                 f"waited {wait:.1f} s of {train_seconds:.0f} s for input: {bound}-bound")

    def _curves_due(self) -> bool:
        """Whether to redraw curves.png now: drawing (about half a second) stays under a
        tenth of the training time, so short epochs redraw it only every few epochs (the
        last epoch always does)."""
        if self._curves_drawn is None:
            return True
        start, seconds = self._curves_drawn
        return seconds <= CURVES_TIME_SHARE * (time.perf_counter() - start)

    def train_epoch(self, state, epoch: int, plateau: training.Plateau, partial: dict | None):
        """One pass over the training batches (from partial['next_step'] when resuming
        inside the epoch); stops with KeyboardInterrupt between steps once watch saw
        Ctrl-C. Returns (state, {'train_loss', 'train_top1', 'input_wait_seconds',
        'steps_run'}, the last batch trained or None)."""
        tcfg, steps = self.tcfg, self.steps
        first = partial["next_step"] if partial else 0
        sums = (partial["loss_sum"], partial["acc_sum"]) if partial else (0.0, 0.0)
        host = self.train_feed.train(tcfg.batch_size, self.config.image_size, seed=tcfg.seed,
                                     epoch=epoch, start_step=first)
        # A thread reads and transfers the next batches while this one trains.
        batches = loader.prefetch(training.put_local_batch(self.mesh, *b) for b in host)
        bar = progress_bar(total=steps, initial=first, desc=f"epoch {epoch}/{tcfg.epochs}",
                           unit="step", disable=not (self.progress and _is_main()), leave=False)
        pending, start, wait, batch = None, time.perf_counter(), 0.0, None
        with bar:
            for i in range(first, steps):
                self.watch.check()
                t = time.perf_counter()
                batch = next(batches)
                wait += time.perf_counter() - t
                state, metrics = self.step_fn(state, batch, self.mean_dev, self.rng)
                # Read the previous step's numbers while this one runs.
                if pending is not None:
                    sums = self._check(pending, sums, i - 1, epoch)
                    speed = (i - first) * tcfg.batch_size / (time.perf_counter() - start)
                    bar.set_postfix(loss=f"{sums[0] / i:.3f}", acc=f"{sums[1] / i:.3f}",
                                    img_s=f"{speed:.0f}")
                    bar.update()
                pending = metrics
                every = self.checkpoint_every
                if every and (i + 1) % every == 0 and i + 1 < steps:
                    sums, pending = self._check(pending, sums, i, epoch), None
                    bar.update()
                    self.save_if_sound(
                        self.step_mgr, int(training.local_value(state.step)), state, {
                            "epoch": epoch - 1, "next_step": i + 1, "loss_sum": sums[0],
                            "acc_sum": sums[1], "plateau": dataclasses.asdict(plateau)},
                        epoch, i, batch)
            if pending is not None:
                sums = self._check(pending, sums, steps - 1, epoch)
                bar.update()
        return state, {"train_loss": sums[0] / steps, "train_top1": sums[1] / steps,
                       "input_wait_seconds": wait, "steps_run": steps - first}, batch

    def _check(self, metrics, sums: tuple[float, float], index: int, epoch: int):
        """_check of a step's metrics, its loss also logged to TensorBoard at its global step."""
        loss_sum, acc_sum = _check(metrics, *sums, index, epoch, self.run_dir.path)
        if self.events is not None:
            self.events.scalars((epoch - 1) * self.steps + index + 1, {
                "step/train_loss": loss_sum - sums[0], "step/train_top1": acc_sum - sums[1]})
        return loss_sum, acc_sum

    def _log_epoch(self, metrics: dict, snapshot) -> None:
        """The epoch's metrics (and its Fig. 4 snapshot, a saved .npz path or None) as
        TensorBoard events at the epoch's last global step."""
        if self.events is None:
            return
        self.events.scalars(metrics["step"], {f"epoch/{k}": v for k, v in metrics.items()
                                              if k not in ("epoch", "step")})
        if isinstance(snapshot, Path):  # the hook's saved .npz (evolution.EpochSnapshots)
            self.events.image("fig4_snapshot", metrics["step"], tensorboard_events.snapshot_image(
                artifacts.load_npz(snapshot)))

    def save_if_sound(self, mgr, number: int, state, meta: dict, epoch: int, index: int,
                      batch) -> None:
        """checkpoints.save, unless the state exploded: parameters or optimizer state hold
        a NaN or an infinity, or the loss of these parameters on the batch just trained
        has diverged (_diverged; the training loss of a step is that of the parameters
        before its update, so an exploded update shows there only a step later; a saved
        one made --resume diverge again at once). Then NonFiniteLoss, and the last good
        checkpoint stays the newest. batch: the last batch trained (None: not checked)."""
        sound = bool(training.local_value(_all_finite((state.params, state.opt_state))))
        what = "the parameters became non-finite"
        if sound and batch is not None:
            loss = float(training.local_value(self.loss_fn(state.params, batch, self.mean_dev,
                                                           self.rng)))
            sound, what = not _diverged(loss), f"the loss after the update became {loss:g}"
        if not sound:
            raise _non_finite(what, epoch, index, self.run_dir.path)
        checkpoints.save(mgr, number, state, meta)


TIMING_KEYS = ("images_per_s", "seconds", "train_seconds", "eval_seconds", "snapshot_seconds",
               "input_wait_seconds")


# A mean cross-entropy above this has diverged, finite or not: chance is ln(classes)
# (2.3 for 10, 6.9 for 1000), and this needs logits thousands apart. With --lr 1e6 the
# first update gave a loss of 4e21, the next NaN; resuming from a checkpoint of such
# parameters went to NaN again whatever the learning rate.
DIVERGED_LOSS = 1e4
CURVES_TIME_SHARE = 0.1  # the most of a run's time redrawing curves.png may take


def _diverged(loss: float) -> bool:
    return not math.isfinite(loss) or loss > DIVERGED_LOSS


def _check(metrics, loss_sum, acc_sum, index, epoch, run_dir):
    loss = float(training.local_value(metrics["loss"]))
    if _diverged(loss):
        raise _non_finite(f"training loss became {loss:g}", epoch, index, run_dir)
    return loss_sum + loss, acc_sum + float(training.local_value(metrics["accuracy"]))


def _non_finite(what: str, epoch: int, index: int, run_dir) -> NonFiniteLoss:
    """NonFiniteLoss (a diverged loss) naming the checkpoint --resume continues from."""
    return NonFiniteLoss(f"{what} at epoch {epoch}, step {index}; stopped without saving: "
                         f"{_last_checkpoint(Path(run_dir)).replace('last', 'last good', 1)}; "
                         f"lower --lr and --resume")


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)
                              if jnp.issubdtype(a.dtype, jnp.inexact)]))


def evaluate_feed(params, eval_fn, feed, mean_dev, batch_size, mesh, watch=None):
    """Centre-crop (top-1, top-5) accuracy of params on a loader feed (InMemory or
    Streamed); eval_fn is training.make_stored_eval_step, mean_dev the replicated mean.
    watch (interrupts.Watch): stop with KeyboardInterrupt between batches once it saw
    Ctrl-C."""
    counts = 0
    for b in loader.prefetch(training.put_local_batch(mesh, *b)
                             for b in feed.evaluate(batch_size)):
        if watch is not None:
            watch.check()
        counts = counts + eval_fn(params, *b, mean_dev)
    top1, top5, n = training.local_value(counts).tolist()
    return top1 / n, top5 / n


def evaluate(params, eval_fn, images: data.ImageSet, mean, config, batch_size, mesh):
    """Centre-crop (top-1, top-5) accuracy of params on images, preprocessed on the host
    (data.eval_batches); eval_fn is training.make_eval_step."""
    counts = 0
    for x, y in data.eval_batches(images, mean, batch_size, config.image_size):
        n = len(y)
        pad = batch_size - n
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
        y = np.concatenate([y, np.zeros(pad, y.dtype)]) if pad else y
        mask = np.arange(batch_size) < n
        counts = counts + eval_fn(params, *training.put_batch(mesh, x, y, mask))
    top1, top5, n = training.local_value(counts).tolist()
    return top1 / n, top5 / n


def _local_copy(params):
    """The replicated params as arrays on this process's first device."""
    return jax.tree.map(lambda a: a.addressable_data(0), params)
