"""Fixtures shared by the tests (plain helpers: tests/helpers.py)."""

import os
import shutil
import tempfile
from typing import TYPE_CHECKING, NamedTuple

import pytest

# The suite compiles hundreds of small programs and runs most of them once or twice: XLA's
# backend optimisation costs more time than it saves (tests marked `optimized` keep it).
# Set before jax is imported, and inherited by the commands the tests start.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
OPTIMIZATIONS_OFF = "jax_disable_most_optimizations"
# XLA's newer CPU fusion emitters (its default) compile much slower than the older ones;
# the suite's programs also ran no slower without them.
CPU_FLAGS = "--xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CPU_FLAGS}".strip()

# One persistent compilation cache for every process of this run (the xdist workers and
# the commands the tests start compile many of the same programs), new for each run so
# no test depends on an earlier one, and removed at the end by the process that made it.
if "PYTEST_XDIST_WORKER" not in os.environ:
    RUN_CACHE = tempfile.mkdtemp(prefix="zfjax-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = RUN_CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
else:
    RUN_CACHE = None


def pytest_configure(config):
    # `--dist loadfile` sends the files with the most tests first, so the end-to-end files
    # (few tests, long ones) came last and one worker idled while the other ran them: the
    # order is pytest_collection_modifyitems' instead.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """Files with more `slow` tests first, then those with more tests (the longest work
    first, so two workers finish together)."""
    slow, count = {}, {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
        count[item.path] = count.get(item.path, 0) + 1
    items.sort(key=lambda item: (-slow[item.path], -count[item.path], str(item.path)))


def pytest_unconfigure(config):
    if RUN_CACHE is not None:
        shutil.rmtree(RUN_CACHE, ignore_errors=True)


if TYPE_CHECKING:
    from zfjax.nets.network import Network


class TinyNetwork(NamedTuple):
    """A network config and weights for it."""

    config: "Network"
    params: dict  # numpy arrays, shared by every test that takes them: never modify them


@pytest.fixture(autouse=True)
def _optimized(request, monkeypatch):
    """A test marked ``optimized`` (its programs run many steps, where XLA's optimisation
    pays) compiles with it, here and in the commands it starts."""
    if request.node.get_closest_marker("optimized") is None:
        yield
        return
    import jax

    before = jax.config.values[OPTIMIZATIONS_OFF]
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")
    jax.config.update(OPTIMIZATIONS_OFF, False)
    yield
    jax.config.update(OPTIMIZATIONS_OFF, before)


@pytest.fixture(scope="session")
def tiny_network() -> TinyNetwork:
    """The shared tiny ZFNet (helpers.TINY10) and one set of random weights for it."""
    from helpers import TINY10, random_params

    return TinyNetwork(TINY10, random_params(TINY10, bias_std=0.01))


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Call visualize.main(argv) with only argv[0]'s subcommand registered; returns
    (exit code, stdout, stderr)."""
    from zfjax import commands
    from zfjax.commands import visualize

    def call(argv):
        monkeypatch.setattr(commands, "SUBCOMMANDS", (argv[0],))
        code = visualize.main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    return call


@pytest.fixture
def unraisable(monkeypatch):
    """The exception types Python reports to sys.unraisablehook during the test (those it
    dropped in finalizers; reported nowhere else)."""
    import sys

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda report: reported.append(report.exc_type))
    return reported


@pytest.fixture(scope="session")
def atlas_site(tmp_path_factory):
    """A tiny run (tests/helpers.py write_tiny_run) with two epochs of conv1/conv2
    snapshots, and its atlas of conv1 and conv2 built by ``visualize.py atlas``:
    (run folder, site folder, the command's stdout)."""
    import contextlib
    import io

    from helpers import write_snapshots, write_tiny_run
    from zfjax.commands import visualize

    root = tmp_path_factory.mktemp("atlas")
    run = write_tiny_run(root)
    write_snapshots(run, epochs=(1, 2), layers=("conv1", "conv2"))
    site = root / "site"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = visualize.main(["atlas", str(run), "--out", str(site), "--layers", "conv1", "conv2"])
    assert code == 0, err.getvalue()
    return run, site, out.getvalue()
