"""What a run is: ``RunSpec`` (what to train on what), its presets, and ``RunDir``
(the files of one run).

``RunSpec(model, train, data)`` is frozen; ``settings()`` flattens it into one
namespace of named settings ('image_size', 'batch_size', 'data', 'variant', ...),
which is what train.py's flags set (``with_settings``) and what a resume compares:
a resumed run's stored spec and the requested one may differ only in ``RESUMABLE``.

``RunDir`` is the one place that knows a run folder's layout (listed in
zfjax.train.checkpoints): it reads and writes config.json, mean.npy and metrics.jsonl,
names the checkpoint, snapshot and TensorBoard folders, holds the lock, and loads a
trained network (``RunDir.load``). Every reader of metrics.jsonl (the trainer, sweep,
the atlas) goes through ``RunDir.read_metrics``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from zfjax import artifacts
from zfjax.inputs import data
from zfjax.nets import network
from zfjax.train import checkpoints
from zfjax.nets.network import Network
from zfjax.train.training import TrainConfig

METRICS_FILE, CURVES_FILE = "metrics.jsonl", "curves.png"
SNAPSHOT_DIR, TENSORBOARD_DIR = "snapshots", "tensorboard"


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where the images come from. source: a TFDS name, an image folder
    <root>/<split>/<class>/<image> or a prepared store (``resolve`` classifies it);
    train_limit / val_limit: use at most this many images (spread over the classes);
    probe_count: validation images in the Fig. 4 probe (zfjax.analyses.evolution)."""

    source: str
    data_dir: str | None = None
    train_limit: int | None = None
    val_limit: int | None = None
    probe_count: int = 1000

    def resolve(self) -> data.DataSource:
        return data.resolve_source(self.source, self.data_dir)


# Settings a resume may change (epochs, learning_rate) or keeps from the stored run
# without asking (num_classes comes from the data, dtype from the run's start).
RESUMABLE = frozenset({"epochs", "learning_rate", "num_classes", "dtype"})
_DATA_NAMES = {"source": "data"}  # DataSpec field -> setting name


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What to train on what: the network (num_classes is replaced by the data's), the
    optimisation recipe and the data."""

    model: Network
    train: TrainConfig
    data: DataSpec

    def settings(self) -> dict:
        """Every setting by name, model first, then training, then data; 'variant' (a
        name of network.VARIANTS) stands for the model's arch and variant fields."""
        model = {k: v for k, v in dataclasses.asdict(self.model).items()
                 if k not in ("arch", "variant")}
        model["variant"] = _variant_name(self.model)
        return {**model, **dataclasses.asdict(self.train),
                **{_DATA_NAMES.get(k, k): v for k, v in dataclasses.asdict(self.data).items()}}

    def with_settings(self, changes: dict) -> RunSpec:
        """The spec with settings (names of ``settings()``) replaced; ValueError for an
        unknown name."""
        sections = {"model": {}, "train": {}, "data": {}}
        fields = {name: section for section in sections
                  for name in (f.name for f in dataclasses.fields(getattr(self, section)))}
        fields.update({alias: "data" for alias in _DATA_NAMES.values()})
        unknown = sorted(set(changes) - set(fields) - {"variant"})
        if unknown:
            raise ValueError(f"no run setting is named {unknown[0]!r}")
        back = {alias: name for name, alias in _DATA_NAMES.items()}
        for name, value in changes.items():
            if name != "variant":
                sections[fields[name]][back.get(name, name)] = value
        model = dataclasses.replace(self.model, **sections["model"])
        if "variant" in changes:
            model = network.with_variant(model, changes["variant"])
        return RunSpec(model, dataclasses.replace(self.train, **sections["train"]),
                       dataclasses.replace(self.data, **sections["data"]))

    def differences(self, other: RunSpec, ignore=RESUMABLE) -> list[str]:
        """Names of the settings (not in ignore) whose values differ, in settings()
        order; two folder paths spelt differently but naming one folder are equal."""
        mine, theirs = self.settings(), other.settings()
        return [name for name in mine if name not in ignore
                and not _same(mine[name], theirs.get(name))]


def _variant_name(model: Network) -> str:
    """The model's name in network.VARIANTS."""
    return "alexnet" if model.arch == "alexnet" else (model.variant or "zfnet")


def _same(a, b) -> bool:
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str):  # the same folder spelt another way
        return Path(a).expanduser().absolute() == Path(b).expanduser().absolute()
    return False


# ------------------------------------------------------------------------ presets

# ../shared/data/imagenette beside the checkout (zfjax/train/run.py -> the checkout's parent)
IMAGENETTE_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "imagenette"
IMAGENETTE = str(IMAGENETTE_DIR) if IMAGENETTE_DIR.is_dir() else "imagenette/320px-v2"


def _he_with_paper_conv1(**model) -> Network:
    """He-normal weights, but conv1 from the paper's N(0, 1e-2) (see PRESETS)."""
    return Network(init_std=None, first_init_std=0.01, **model)


# The named runs of train.py --preset.
PRESETS = {
    # The paper: ImageNet 2012, 224 px, 70 epochs, N(0, 1e-2) init.
    "paper": RunSpec(Network(num_classes=1000), TrainConfig(epochs=70),
                     DataSpec("imagenet2012")),
    # Full ZFNet at 224 on imagenette; 64 epochs so every Fig. 4 epoch exists.
    # He-normal init (init_std=None) for this and the cpu and demo presets: with
    # N(0, 1e-2) and zero biases the signal fades through the 8 layers and the cpu
    # preset stayed at chance (loss 2.303) for 2 full epochs; imagenette has 74 steps
    # an epoch, not ImageNet's 10,000, to wait that out. conv1 alone keeps the paper's
    # N(0, 1e-2) (first_init_std): He-normal puts its filters above the renormalisation
    # radius from the start, and they stayed noise (Fig. 6); from 1e-2 the cpu preset's
    # conv1 learnt edges and colour blobs, for 1.9 points less val top-1 (0.677 vs
    # 0.696 after 10 epochs).
    "imagenette": RunSpec(_he_with_paper_conv1(num_classes=10), TrainConfig(epochs=64),
                          DataSpec(IMAGENETTE)),
    # 10 epochs of imagenette on 2 CPU cores: 64 px, half width (XLA:CPU runs
    # convolutions with few output channels slowly, so width 0.25 is no faster).
    "cpu": RunSpec(_he_with_paper_conv1(num_classes=10, image_size=64, width=0.5),
                   TrainConfig(epochs=10, batch_size=64, lr_schedule="step", lr_steps=(8,)),
                   DataSpec(IMAGENETTE)),
    # The README's figures (docs/): 112 px, half width, 20 epochs of imagenette, so
    # Fig. 4 has epochs 1, 2, 5, 10 and 20. A train step costs about 3x the cpu
    # preset's (measured side by side), so about 30 minutes on 2 quiet CPU cores;
    # on 2 cores shared with two other jobs an epoch took 150-260 s.
    "demo": RunSpec(_he_with_paper_conv1(num_classes=10, image_size=112, width=0.5),
                    TrainConfig(epochs=20, batch_size=64, lr_schedule="step", lr_steps=(15,)),
                    DataSpec(IMAGENETTE)),
}


# ---------------------------------------------------------------------- run folders

@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
    """What is known about one loaded checkpoint of a run.

    epoch: the epoch it finished; step: global training steps done (None if not
    recorded); checkpoint: its folder; run_dir: the run folder; class_names: the
    run's classes in label order (None if not recorded); metrics: that epoch's line
    of metrics.jsonl as stored with the checkpoint; train, data: config.json's sections.
    """

    epoch: int
    step: int | None
    checkpoint: Path
    run_dir: Path
    class_names: list | None
    metrics: dict | None
    train: dict | None
    data: dict | None

    def as_info(self) -> dict:
        """The record as ``zfjax.Model.info`` holds it (paths as strings)."""
        return {**dataclasses.asdict(self), "checkpoint": str(self.checkpoint),
                "run_dir": str(self.run_dir)}


class LoadedRun(NamedTuple):
    """A trained network: params (float32 arrays on the default device), its config,
    mean float32 (S, S, 3) (the training mean image) and the checkpoint's record."""

    params: dict
    config: Network
    mean: np.ndarray
    record: CheckpointRecord


@dataclasses.dataclass(frozen=True)
class RunDir:
    """One run folder (absolute path); nothing is read or made until asked."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path).absolute())

    @classmethod
    def locate(cls, target) -> tuple[RunDir, int | None]:
        """A run folder, its checkpoints/ folder or one checkpoints/<epoch> folder ->
        (the run folder, the epoch that target names or None)."""
        path = Path(target).absolute()
        if path.name.isdigit() and path.parent.name == checkpoints.CHECKPOINT_DIR:
            return cls(path.parent.parent), int(path.name)
        if (path.name == checkpoints.CHECKPOINT_DIR
                and not (path / checkpoints.CONFIG_FILE).exists()):
            return cls(path.parent), None
        return cls(path), None

    # ------------------------------------------------------------------------ paths
    @property
    def config_file(self) -> Path:
        return self.path / checkpoints.CONFIG_FILE

    @property
    def mean_file(self) -> Path:
        return self.path / checkpoints.MEAN_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def curves_file(self) -> Path:
        return self.path / CURVES_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / checkpoints.CHECKPOINT_DIR

    @property
    def step_checkpoint_dir(self) -> Path:
        return self.path / checkpoints.STEP_CHECKPOINT_DIR

    @property
    def snapshot_dir(self) -> Path:
        return self.path / SNAPSHOT_DIR

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD_DIR

    # ------------------------------------------------------------------------ files
    def is_run(self) -> bool:
        """Whether the folder holds a config.json that train.py wrote."""
        return checkpoints.is_run_folder(self.path)

    def read_config(self) -> dict:
        """config.json; FileNotFoundError / ValueError (one line) if missing or damaged."""
        return checkpoints.read_config(self.path)

    def write_config(self, run_config: dict) -> None:
        artifacts.write_json(self.config_file, run_config)

    def read_spec(self) -> RunSpec:
        """The RunSpec config.json records; ValueError naming what is missing or does
        not fit."""
        stored = self.read_config()
        sections = {key: stored.get(key) for key in ("train", "data")}
        for key, section in sections.items():
            if not isinstance(section, dict):
                raise ValueError(f"{self.config_file} has no '{key}' section; it was not "
                                 f"written by train.py or is damaged")
        d = sections["data"]
        if not isinstance(d.get("source"), str):
            raise ValueError(f"{self.config_file} has no data source ('data': {{'source': "
                             f"...}}); it was not written by train.py or is damaged")
        try:
            train = TrainConfig(**sections["train"])
        except TypeError as e:
            raise ValueError(f"the 'train' section of {self.config_file} does not fit "
                             f"TrainConfig: {e}") from None
        known = {f.name for f in dataclasses.fields(DataSpec)}
        return RunSpec(checkpoints.model_config(stored), train,
                       DataSpec(**{k: v for k, v in d.items() if k in known}))

    def read_mean(self) -> np.ndarray:
        return np.load(self.mean_file)

    def write_mean(self, mean: np.ndarray) -> None:
        checkpoints.save_mean(self.path, mean)

    def read_metrics(self) -> list[dict]:
        """metrics.jsonl: one dict per finished epoch, oldest first (empty if none)."""
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines()
                if line.strip()]

    def write_metrics(self, history: list[dict]) -> None:
        """Rewrites metrics.jsonl whole and atomically (never appended: a kill can never
        leave half a line)."""
        text = "".join(json.dumps(m) + "\n" for m in history)
        artifacts.atomic_write(self.metrics_file, lambda f: f.write(text.encode()))

    def finished_epochs(self) -> list[int]:
        return checkpoints.finished_epochs(self.path)

    def lock(self):
        """Context manager: the folder, made if needed and locked (checkpoints.lock_run_folder)."""
        return checkpoints.lock_run_folder(self.path)

    # ---------------------------------------------------------------------- loading
    def load(self, epoch: int | None = None) -> LoadedRun:
        """The trained network of checkpoint `epoch` (default: the newest).

        Raises FileNotFoundError / ValueError with one line when the folder, its config
        or the checkpoint is missing or does not fit.
        """
        run_config = self.read_config()
        config = checkpoints.model_config(run_config)
        params, meta, epoch = checkpoints.load_params(self.checkpoint_dir, config, epoch)
        record = CheckpointRecord(
            epoch=epoch, step=meta.get("step"), checkpoint=self.checkpoint_dir / str(epoch),
            run_dir=self.path, class_names=run_config.get("class_names"),
            metrics=meta.get("metrics"), train=run_config.get("train"),
            data=run_config.get("data"))
        return LoadedRun(params, config, self.read_mean(), record)
