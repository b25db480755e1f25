"""Where TensorFlow and tensorflow-datasets are not installed (a GPU machine without
network), training on an image folder, every visualize.py command and the accelerator
bench still import and run: neither package is imported on those paths."""

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = ("tensorflow", "tensorflow_datasets")

# Runs with both packages hidden: every finder answers None for them (etils, under
# orbax, asks importlib.util.find_spec('tensorflow') and breaks on a finder that raises).
WITHOUT_TENSORFLOW = textwrap.dedent("""
    import importlib, importlib.util, pkgutil, sys
    from pathlib import Path
    from unittest import mock

    HIDDEN = {hidden!r}

    class Hiding:
        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                return None
            return self.finder.find_spec(name, path, target)

    sys.meta_path[:] = [Hiding(f) for f in sys.meta_path]
    for name in HIDDEN:
        assert importlib.util.find_spec(name) is None
        try:
            importlib.import_module(name)
            raise SystemExit(f"{{name}} is still importable")
        except ModuleNotFoundError:
            pass

    root, work = Path(sys.argv[1]), Path(sys.argv[2])
    sys.path[:0] = [str(root), str(root / "bench"), str(root / "tests")]
    import zfjax.commands
    from zfjax.commands import train, visualize
    import accelerator, bench_chunk, bench_data, bench_train, common  # the accelerator bench
    for module in pkgutil.iter_modules(zfjax.commands.__path__):
        importlib.import_module(f"zfjax.commands.{{module.name}}")
    visualize.build_parser()  # every subcommand's options

    from helpers import write_image_folder
    folder = write_image_folder(work / "images", ["a", "b"], 4, shape=(80, 80))
    run = work / "run"
    # Without the per-epoch snapshots: their compiles would be most of this toy epoch.
    with mock.patch.object(train, "snapshot_hook", lambda: None):
        code = train.main(["--preset", "cpu", "--data", str(folder), "--size", "64",
                           "--width", "0.25", "--batch", "4", "--epochs", "1", "--out",
                           str(run), "--no-progress", "--offline"])
    assert code == 0, code
    code = visualize.main(["topk", str(run), "--layers", "conv1", "--count", "2"])
    assert code == 0, code
    found = sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN)
    assert not found, found
    print("ok without", *HIDDEN)
""").format(hidden=HIDDEN)


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_training_figures_and_bench_run_without_tensorflow(tmp_path):
    # One subprocess (about 20-30 s here: JAX start-up, a toy epoch, one figure): the
    # hiding must be in place before anything imports etils or orbax.
    done = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, str(ROOT), str(tmp_path)],
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "ok without tensorflow tensorflow_datasets" in done.stdout


def test_only_the_tfds_loader_imports_tensorflow():
    """Every import of either package in the code, outside function bodies included, is
    inside zfjax/inputs/data.py's _import_tfds (what the TFDS paths call): so no command or
    bench imports it where only a folder or a store is read."""
    places = []
    files = [*(ROOT / "zfjax").rglob("*.py"), *(ROOT / "bench").glob("*.py"),
             *(ROOT / name for name in ("train.py", "visualize.py", "prepare.py", "sweep.py"))]
    for path in files:
        def visit(node, where):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in HIDDEN for n in names):
                places.append((path.relative_to(ROOT).as_posix(), where))
            for child in ast.iter_child_nodes(node):
                visit(child, child.name if isinstance(child, ast.FunctionDef) else where)

        visit(ast.parse(path.read_text()), "<module>")
    assert places and set(places) == {("zfjax/inputs/data.py", "_import_tfds")}, places
