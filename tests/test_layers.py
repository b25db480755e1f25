"""The library's layering, read from the source (every import, also inside functions).

The folders are the layers, each importing only from the ones before it:
zfjax/inputs -> zfjax/nets -> zfjax/train -> zfjax/analyses -> zfjax/figures ->
zfjax/commands, with a few helpers at the top of zfjax/ that any layer may use. Each
analysis is a pure core (zfjax/analyses/<analysis>.py), a figure module
(zfjax/figures/<analysis>.py) and a command (zfjax/commands/<analysis>.py); argparse
lives only in the commands (train, prepare, sweep and visualize among them: the top-level
scripts only call them), zfjax/cli.py and zfjax/argtypes.py.
"""

import ast
from pathlib import Path

import pytest

from zfjax.commands import SUBCOMMANDS as ANALYSES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "zfjax"
ARGPARSE_ALLOWED = {"zfjax.cli", "zfjax.argtypes"}  # besides zfjax.commands.* and scripts


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it; ``from zfjax import a`` counts as
    zfjax.a (and zfjax), ``from zfjax.b import c`` as zfjax.b and zfjax.b.c."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


MODULES = {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}
CORES = [f"zfjax.analyses.{name}" for name in ANALYSES]
# The layers in order; a module may import zfjax modules of its own layer or an earlier one.
LAYERS = ("zfjax.inputs", "zfjax.nets", "zfjax.train", "zfjax.analyses", "zfjax.figures",
          "zfjax.commands")
# Modules at the top of zfjax/: helpers any layer may use (they import only each other),
# then the public loader (after training, whose run folders it reads) and the commands' options.
HELPERS = {"zfjax._lazy", "zfjax.argtypes", "zfjax.artifacts", "zfjax.interrupts",
           "zfjax.programs", "zfjax.progress", "zfjax.render"}
TOP_LEVEL_RANK = {"zfjax": len(LAYERS), "zfjax.loading": LAYERS.index("zfjax.train") + 0.5,
                  "zfjax.cli": LAYERS.index("zfjax.figures") + 0.5}


def rank(module: str) -> float:
    """Where a zfjax module sits in LAYERS (-1 for the helpers)."""
    if module in HELPERS:
        return -1
    if module in TOP_LEVEL_RANK:
        return TOP_LEVEL_RANK[module]
    return next(i for i, layer in enumerate(LAYERS) if under(module, layer))


def test_the_import_reader_sees_imports_inside_functions():
    """The checks below are only as good as this reader: matplotlib is imported inside
    the figure function, zfjax.nets.model at the top of the core."""
    assert "matplotlib.figure" in MODULES["zfjax.figures.topk"]
    assert "zfjax.nets.model" in MODULES["zfjax.analyses.atlas"]
    assert under("zfjax.figures.topk", "zfjax.figures") and not under("zfjax.topkx", "zfjax.analyses.topk")


@pytest.mark.parametrize("name", ANALYSES)
def test_each_analysis_is_a_core_a_figure_and_a_command(name):
    missing = [f"zfjax/{where}/{name}.py" for where in ("analyses", "figures", "commands")
               if f"zfjax.{where}.{name}" not in MODULES and where != "figures"]
    assert not missing, f"missing {missing}"
    # The command draws through a figure module (zfjax/figures/<name>.py or another one).
    drawn = [n for n in MODULES[f"zfjax.commands.{name}"]
             if under(n, "zfjax.figures") and n.count(".") == 2 and n in MODULES]
    assert drawn, f"zfjax.commands.{name} imports no zfjax.figures module"


@pytest.mark.parametrize("core", CORES)
def test_cores_import_no_plotting_options_cli_or_other_analyses(core):
    forbidden = ["matplotlib", "argparse", "zfjax.cli", "zfjax.argtypes", "zfjax.commands",
                 "zfjax.figures"] + [other for other in CORES if other != core]
    bad = sorted(n for n in MODULES[core] if any(under(n, f) for f in forbidden))
    assert not bad, f"{core} imports {bad}"


def test_figures_import_no_commands_or_options():
    for module, names in MODULES.items():
        if under(module, "zfjax.figures"):
            bad = sorted(n for n in names if any(under(n, f) for f in (
                "argparse", "zfjax.cli", "zfjax.argtypes", "zfjax.commands")))
            assert not bad, f"{module} imports {bad}"


def test_argparse_lives_only_in_commands_cli_and_scripts():
    users = sorted(m for m, names in MODULES.items() if "argparse" in names
                   and not under(m, "zfjax.commands") and m not in ARGPARSE_ALLOWED)
    assert not users, f"argparse imported by {users}"


def test_nothing_below_the_commands_imports_them_and_training_imports_no_analysis():
    for module, names in MODULES.items():
        if not under(module, "zfjax.commands"):
            assert not any(under(n, "zfjax.commands") for n in names), module
    for module in ("zfjax.train.trainer", "zfjax.train.training"):
        bad = sorted(n for n in MODULES[module] if under(n, "zfjax.figures")
                     or any(under(n, core) for core in CORES))
        assert not bad, f"{module} imports {bad}"


def test_every_module_sits_in_a_layer_folder_or_is_one_of_the_few_at_the_top():
    top = sorted(m for m in MODULES if m.count(".") == 1
                 and not any(under(m, layer) for layer in LAYERS))
    assert set(top) <= HELPERS | set(TOP_LEVEL_RANK), f"unplaced modules at the top: {top}"
    assert len([m for m in top if m != "zfjax._lazy"]) <= 12
    for module in MODULES:
        rank(module)  # raises StopIteration for a module in no known folder


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_from_its_layer_or_earlier_ones(module):
    packages = {"zfjax", *LAYERS}  # ``from zfjax.nets import model`` also names zfjax.nets
    ours = sorted(n for n in MODULES[module] if n in MODULES and n not in packages)
    later = [n for n in ours if rank(n) > rank(module)]
    assert not later, f"{module} (layer {rank(module)}) imports later layers: {later}"
    if module in HELPERS:
        assert set(ours) <= HELPERS, f"helper {module} imports {set(ours) - HELPERS}"


def test_the_layer_check_would_catch_an_upward_import():
    assert rank("zfjax.nets.deconv") < rank("zfjax.analyses.topk") < rank("zfjax.figures.topk")
    assert rank("zfjax.inputs.data") < rank("zfjax.nets.preprocessing")
    assert rank("zfjax.render") < rank("zfjax.inputs.data")
