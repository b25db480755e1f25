"""One name per meaning: retired aliases and indirections stay retired (read from the source)."""

import argparse
import ast
import re
import subprocess
from pathlib import Path

import zfjax
from zfjax.nets import deconv, model, network

ROOT = Path(__file__).resolve().parents[1]


def python_sources() -> dict[str, str]:
    paths = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    this = Path(__file__).resolve().relative_to(ROOT).as_posix()  # it names the retired names
    return {path: (ROOT / path).read_text() for path in paths
            if path != this and (ROOT / path).exists()}


def uses(pattern: str) -> list[str]:
    """'path:line' of every match of a regex in the project's Python files."""
    found = []
    for path, text in python_sources().items():
        for number, line in enumerate(text.splitlines(), 1):
            if re.search(pattern, line):
                found.append(f"{path}:{number}")
    return found


def test_network_names_are_reached_through_network_not_model():
    defined = sorted(name for name, value in vars(network).items()
                     if getattr(value, "__module__", None) == network.__name__
                     and getattr(getattr(model, name, None), "__module__", None) != model.__name__)
    assert uses(r"(?<![\w.])model\.(%s)\b" % "|".join(defined)) == []


def test_zfnetconfig_is_retired_for_network():
    assert not hasattr(network, "ZFNetConfig")
    assert "ZFNetConfig" not in zfjax.__all__
    assert uses(r"\bZFNetConfig\b") == []


def test_one_projection_of_the_strongest_activations():
    """deconv.project_strongest replaced deconv.strongest_projections, topk.project_top
    and atlas.project_top (three batchings of one computation)."""
    assert not hasattr(deconv, "strongest_projections")
    assert uses(r"\b(strongest_projections|project_top|_project_winners)\b") == []


def test_each_of_these_function_names_has_one_meaning():
    """param_count (a network's or a params tree's), to_display (projections' or images')
    and fit (crop a window, scale a tile, train a run) once meant two or three things."""
    defined_in = {}
    for path in sorted((ROOT / "zfjax").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef):
                defined_in.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    assert {name: defined_in[name] for name in ("param_count", "to_display", "fit")
            if len(defined_in.get(name, [])) > 1} == {}


def test_no_module_calls_a_private_helper_of_another():
    """A helper another module needs is public, with a name and docstring to match."""
    reaching = []
    for path in sorted((ROOT / "zfjax").rglob("*.py")):
        tree = ast.parse(path.read_text())
        modules = {alias.asname or alias.name for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("zfjax")
                   for alias in node.names}
        reaching += [f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}"
                     for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                     and node.value.id in modules and node.attr.startswith("_")
                     and not node.attr.startswith("__")]
    assert reaching == []


def test_methods_and_sanity_share_one_methods_tuple_and_one_set_of_method_options():
    from zfjax.analyses import methods as methods_core, sanity as sanity_core
    from zfjax.commands import methods, sanity

    assert not hasattr(methods_core, "METHODS") and not hasattr(sanity_core, "METHODS")
    subparsers = argparse.ArgumentParser().add_subparsers()
    options = [{action.dest: (action.default, action.type, action.help)
                for action in command.add_cli(subparsers)._actions
                if action.dest in ("samples", "noise", "steps")} for command in (methods, sanity)]
    assert options[0] == options[1] and len(options[0]) == 3
