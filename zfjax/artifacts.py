"""Writing outputs: figures and arrays land whole or not at all.

Every writer goes through a temporary file in the target folder and an atomic
``os.replace``, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it; set back at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success move it into place.

    The file gets the permissions a plain open() would give (0o666 less the umask),
    not mkstemp's private 0o600, so others can read a run where the umask allows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_npz(path, **arrays) -> Path:
    """Write arrays to ``path`` (.npz) atomically. Object arrays are refused (no pickles)."""
    path = Path(path)
    arrays = {key: np.asarray(value) for key, value in arrays.items()}
    for key, value in arrays.items():
        if value.dtype == object:
            raise ValueError(f"array {key!r} for {path} holds Python objects; only numeric "
                             f"arrays are written (files are read with allow_pickle=False)")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
    return path


def load_npz(path) -> dict[str, np.ndarray]:
    """Read an .npz written by ``save_npz`` (pickles refused)."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def save_png(fig, path, dpi: int = 120) -> Path:
    """Render a matplotlib figure to ``path`` as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
