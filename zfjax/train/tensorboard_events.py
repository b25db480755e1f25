"""TensorBoard event files of a run, written without TensorFlow.

``EventWriter(logdir)`` appends scalars and images to one new
``events.out.tfevents.<time>.<host>.<pid>`` file (each process start, e.g. a
resume, makes its own; TensorBoard merges the files of a folder). It uses
tensorboard's protocol buffers and record framing (``tensorboard.compat.proto``,
``RecordWriter``) on a plain file: tensorboard's own EventFileWriter goes through
``tensorboard.compat.tf``, which imports TensorFlow whenever it is installed.

    tensorboard --logdir runs/cpu/tensorboard
"""

from __future__ import annotations

import io
import os
import socket
import time
from pathlib import Path

import numpy as np


class EventWriter:
    """Appends events to a new event file in logdir (made if needed); every write is
    flushed, so a killed run keeps every event written before."""

    def __init__(self, logdir):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event_pb2 = event_pb2
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        self.path = logdir / (f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}"
                              f".{os.getpid()}")
        self._records = RecordWriter(open(self.path, "xb"))
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())
        self._records.flush()

    def _summary(self, step: int, values: list) -> None:
        from tensorboard.compat.proto import summary_pb2

        self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                          summary=summary_pb2.Summary(value=values)))

    def scalars(self, step: int, values: dict) -> None:
        """One scalar per tag (tag -> number) at step."""
        from tensorboard.compat.proto import summary_pb2

        self._summary(step, [summary_pb2.Summary.Value(tag=tag, simple_value=float(v))
                             for tag, v in values.items()])

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        """A uint8 (H, W, 3) image at step, stored as PNG."""
        from PIL import Image

        from tensorboard.compat.proto import summary_pb2

        png = io.BytesIO()
        Image.fromarray(np.asarray(image, np.uint8)).save(png, format="PNG")
        h, w = image.shape[:2]
        self._summary(step, [summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
            height=h, width=w, colorspace=3, encoded_image_string=png.getvalue()))])

    def close(self) -> None:
        self._records.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def snapshot_image(snapshot: dict, side: int = 48) -> np.ndarray:
    """One epoch's Fig. 4 snapshot (zfjax.analyses.evolution's '{layer}/{field}' arrays) as one
    uint8 (H, W, 3) image: per conv layer, bottom layer first, a block of its followed
    maps (rows: projection, then image patch; ``render.evolution_block``),
    blocks side by side on white, 16 px apart."""
    from zfjax.nets import network
    from zfjax import render

    layers = sorted((key.split("/")[0] for key in snapshot if key.endswith("/projections")),
                    key=network.layer_order)
    blocks = [render.evolution_block(snapshot[f"{layer}/projections"][None],
                              snapshot[f"{layer}/patches"], side) for layer in layers]
    gap = 16
    height = max(b.shape[0] for b in blocks)
    out = np.full((height, sum(b.shape[1] + gap for b in blocks) - gap, 3), 255, np.uint8)
    x = 0
    for block in blocks:
        out[:block.shape[0], x:x + block.shape[1]] = block
        x += block.shape[1] + gap
    return out
