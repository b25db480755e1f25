"""Writing outputs: figures and arrays land whole or not at all.

Every writer goes through a temporary file in the target folder and an atomic
``os.replace``, so an interrupted run never leaves a half-written file. Whole
folders (``atomic_folder``) are written beside their target and swapped in.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
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


@contextlib.contextmanager
def atomic_folder(path, *, replaceable=lambda folder: False):
    """Yield a fresh temporary folder beside ``path``; on success it becomes ``path``.

    An existing ``path`` is replaced only if it is empty or ``replaceable(path)`` says
    so (e.g. it holds what an earlier run wrote); otherwise FileExistsError, before
    anything is written. The swap is one atomic exchange where the kernel offers it
    (Linux renameat2), else two renames; the old folder is then deleted. On error the
    temporary folder is removed and ``path`` is left as it was.
    """
    path = Path(path).absolute()
    _check_replaceable(path, replaceable)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        _check_replaceable(path, replaceable)  # still true after the work?
        if path.exists():
            _exchange(tmp, path)  # tmp now holds the old folder
        else:
            os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_replaceable(path: Path, replaceable) -> None:
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise FileExistsError(f"{path} exists and is not a folder; choose another output folder")
    if any(path.iterdir()) and not replaceable(path):
        raise FileExistsError(f"{path} exists and holds other files; choose a new or empty "
                              f"output folder (nothing was written)")


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> None:
    """Swap two folders: atomically with renameat2(RENAME_EXCHANGE) on Linux, else by
    moving b aside, a into place, and the old b to a."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd = -100
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
    aside = Path(tempfile.mkdtemp(dir=b.parent, prefix=f".{b.name}.", suffix=".old"))
    os.rename(b, aside / "old")
    os.rename(a, b)
    os.rename(aside / "old", a)
    os.rmdir(aside)


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
