"""Writing outputs: figures and arrays land whole or not at all.

Every writer goes through a temporary file in the target folder and an atomic
``os.replace``, so an interrupted run never leaves a half-written file. Whole
folders (``atomic_folder``) are written beside their target and swapped in; what an
interrupted swap left behind is cleaned up by the next one (``remove_leftovers``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import stat
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


PARTIAL_MARKER = ".zfjax-partial"  # inside a folder being written; its writer holds an flock
_TEMPORARY = r"[a-z0-9_]{8}"  # tempfile.mkdtemp's random part


@contextlib.contextmanager
def atomic_folder(path, *, replaceable=lambda folder: False, carry=lambda folder: (),
                  leftover=lambda folder: False):
    """Yield a fresh temporary folder beside ``path``; on success it becomes ``path``.

    An existing ``path`` is replaced only if it is empty or ``replaceable(path)`` says
    so (e.g. it holds what an earlier run wrote); otherwise FileExistsError, before
    anything is written. ``carry(path)`` names (relative posix paths) what of the
    existing folder to keep: those entries are hard-linked (copied where links fail) into
    the new folder just before the swap, so they survive it and a failure loses nothing.
    The swap is one atomic exchange where the kernel offers it (Linux renameat2), else
    two renames; the old folder is then deleted. On error the temporary folder is
    removed and ``path`` is left as it was.

    Leftovers of earlier interrupted runs (kill -9) beside ``path`` are removed first:
    see ``remove_leftovers``.
    """
    path = Path(path).absolute()
    _check_replaceable(path, replaceable)
    _check_swappable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path, replaceable=replaceable, carry=carry, leftover=leftover)
    tmp, marker = _marked_temporary(path)
    try:
        yield tmp
        _check_replaceable(path, replaceable)  # still true after the work?
        os.unlink(tmp / PARTIAL_MARKER)
        if path.exists():
            _carry(path, tmp, carry(path))
            _exchange(tmp, path)  # tmp now holds the old folder
        else:
            os.rename(tmp, path)
    finally:
        os.close(marker)
        shutil.rmtree(tmp, ignore_errors=True)


def _marked_temporary(path: Path) -> tuple[Path, int]:
    """A new folder .NAME.XXXXXXXX.tmp beside ``path`` holding PARTIAL_MARKER, flocked by
    this process (the kernel drops the lock when it ends, even by kill -9); returns the
    folder and the marker's open descriptor. It is made under a .new name and renamed,
    so no .tmp folder of a live writer is ever without its locked marker."""
    new = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".new"))
    try:
        os.chmod(new, 0o777 & ~_umask())
        fd = os.open(new / PARTIAL_MARKER, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"zfjax: {path.name} being written by pid {os.getpid()}\n".encode())
        tmp = new.with_suffix(".tmp")
        os.rename(new, tmp)
    except BaseException:
        os.close(fd)
        shutil.rmtree(new, ignore_errors=True)
        raise
    return tmp, fd


def remove_leftovers(path, *, replaceable=lambda folder: False, carry=lambda folder: (),
                     leftover=lambda folder: False) -> list[Path]:
    """Remove what interrupted ``atomic_folder`` runs for ``path`` left beside it; returns
    what was removed (or put back). Only folders named as atomic_folder names them, and
    only by their content:

    * .NAME.XXXXXXXX.tmp / .new: when they hold PARTIAL_MARKER and no live process holds
      its lock, or (.tmp made before the marker) are empty or ``leftover(folder)`` says
      so (it must not say so of a finished folder: the marker is gone just before the swap);
    * .NAME.XXXXXXXX.old (the two-rename swap): when empty; when its old/ is
      ``replaceable`` and ``path`` is missing, old/ is put back as ``path``; when ``path``
      exists, it is deleted only if everything ``carry(old)`` names is in ``path``.
    Anything else is left alone.
    """
    path = Path(path).absolute()
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{_TEMPORARY}\.(tmp|new|old)")
    done = []
    try:
        entries = sorted(path.parent.iterdir())
    except OSError:
        return done
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            if match.group(1) != "old":
                if _abandoned(entry, leftover if match.group(1) == "tmp" else None):
                    shutil.rmtree(entry)
                    done.append(entry)
            elif _settle_aside(entry, path, replaceable, carry):
                done.append(entry)
        except OSError:
            continue  # someone else's, or gone meanwhile: leave it
    return done


def _abandoned(folder: Path, leftover) -> bool:
    """leftover: the test for a .tmp folder made before the marker; None for .new ones
    (always marked: an empty one is a writer about to put its marker in)."""
    marker = folder / PARTIAL_MARKER
    if marker.is_symlink() or not marker.exists():
        return leftover is not None and (not any(folder.iterdir()) or bool(leftover(folder)))
    fd = os.open(marker, os.O_RDONLY)
    try:
        if not os.pread(fd, 64, 0).startswith(b"zfjax: "):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: its writer lives
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _settle_aside(aside: Path, path: Path, replaceable, carry) -> bool:
    inside = list(aside.iterdir())
    if not inside:
        aside.rmdir()
        return True
    old = aside / "old"
    if inside != [old] or old.is_symlink() or not old.is_dir() or not replaceable(old):
        return False
    if not os.path.lexists(path):
        os.rename(old, path)  # killed between the two renames: put the old folder back
    elif all(os.path.lexists(path / name) for name in carry(old)):
        shutil.rmtree(old)
    else:
        return False
    aside.rmdir()
    return True


def _carry(old: Path, new: Path, names) -> None:
    """Hard-link (or copy) each relative ``name`` of ``old`` to the same place in ``new``."""
    for name in names:
        source, target = old / name, new / name
        if os.path.lexists(target):
            raise FileExistsError(f"{source} is not part of what was written before, but the "
                                  f"new output has a file of that name; move it away and run "
                                  f"again (nothing was changed)")
        missing = [p for p in Path(name).parents if p != Path(".") and not (new / p).exists()]
        for folder in reversed(missing):
            (new / folder).mkdir()
            shutil.copymode(old / folder, new / folder)
        if source.is_dir() and not source.is_symlink():
            target.mkdir()
            shutil.copymode(source, target)
            continue
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError:
            shutil.copy2(source, target, follow_symlinks=False)


def _check_replaceable(path: Path, replaceable) -> None:
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise FileExistsError(f"{path} exists and is not a folder; choose another output folder")
    if any(path.iterdir()) and not replaceable(path):
        raise FileExistsError(f"{path} exists and holds other files; choose a new or empty "
                              f"output folder (nothing was written)")


def _check_swappable(path: Path) -> None:
    """Raises OSError, before any work, where ``path`` could not be swapped for a new
    folder at the end: a mount point, a parent folder this process cannot write, or a
    sticky parent (like /tmp) where ``path`` belongs to another user."""
    if os.path.ismount(path):
        raise OSError(f"{path} is a mount point, which cannot be swapped for a new folder; "
                      f"give a folder inside it (nothing was written)")
    parent = path.parent
    if not parent.is_dir():
        return  # made later; cli.check_output_folder names an ancestor that cannot be written
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OSError(f"cannot write to {parent}, where the new {path.name} is made and swapped "
                      f"in; choose an output folder in a writable place (nothing was written)")
    if path.exists() and parent.stat().st_mode & stat.S_ISVTX and os.geteuid() not in (
            0, path.stat().st_uid, parent.stat().st_uid):
        raise OSError(f"{path} belongs to another user in the sticky folder {parent}, so it "
                      f"cannot be replaced; choose another output folder (nothing was written)")


_RENAME_EXCHANGE = 2
_NO_EXCHANGE = (errno.ENOSYS, errno.EINVAL)  # renameat2 or RENAME_EXCHANGE unsupported here


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
        code = ctypes.get_errno()
        if code not in _NO_EXCHANGE:
            raise OSError(f"cannot swap the new folder into {b}: {os.strerror(code)}; "
                          f"{b} is left as it was")
    aside = Path(tempfile.mkdtemp(dir=b.parent, prefix=f".{b.name}.", suffix=".old"))
    try:
        os.rename(b, aside / "old")
    except OSError:
        os.rmdir(aside)
        raise
    try:
        os.rename(a, b)
    except OSError:
        os.rename(aside / "old", b)  # put the old folder back
        os.rmdir(aside)
        raise
    os.rename(aside / "old", a)
    os.rmdir(aside)


def write_json(path, obj) -> None:
    """Writes obj as JSON atomically (temporary file + rename)."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def atomic_write(path, write) -> None:
    """Calls write(binary file) on a temporary file next to path, then renames it to
    path (atomic_path: all or nothing, with the umask's permissions)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


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


def unwritable(folder) -> tuple[Path, str] | None:
    """Why ``folder`` could not be made and written: ``(place, reason)`` with place the
    folder or, while it does not exist yet, its nearest existing ancestor, and reason one
    of 'is a file', 'read-only file system', 'permission denied'; None if it can be."""
    place = Path(folder)
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        return place, "is a file"
    if not os.access(place, os.W_OK | os.X_OK):
        read_only = os.statvfs(place).f_flag & os.ST_RDONLY
        return place, "read-only file system" if read_only else "permission denied"
    return None


class LockHeld(Exception):
    """Another process holds the lock; ``holder`` is what it wrote in the lock file."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


@contextlib.contextmanager
def held_lock(path, note: str = ""):
    """Holds an exclusive flock on the file ``path`` (made if missing) while the block
    runs, with 'pid P on host H' + ``note`` written in it. The kernel drops the lock when
    the process ends, even by kill -9, so a stale lock file never blocks. Raises LockHeld
    (naming the holder) if another process holds it, OSError if the file cannot be made."""
    import socket

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
            raise LockHeld(holder or "another process") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}{note}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
