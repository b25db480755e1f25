"""The commands live in zfjax.commands: the top-level scripts (train.py, prepare.py,
visualize.py, sweep.py) and the ``zfjax-*`` entry points of pyproject.toml both call
their ``console_main``, which owns the process; ``main(argv)`` is for in-process
callers (issue 18, item 4). All in-process: the scripts run through runpy."""

import ast
import importlib
import runpy
import sys
import tomllib
from pathlib import Path

import pytest

from zfjax import commands
from zfjax.commands import sweep, train, visualize
from zfjax.train import checkpoints, trainer

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "prepare", "visualize", "sweep")


class LeftNow(Exception):
    """Raised by the stand-in for checkpoints.leave_now (the real one ends pytest)."""


@pytest.fixture
def leave_now(monkeypatch) -> list:
    """The codes checkpoints.leave_now was called with; each call raises LeftNow."""
    codes = []

    def record(code):
        codes.append(code)
        raise LeftNow

    monkeypatch.setattr(checkpoints, "leave_now", record)
    return codes


def test_each_entry_point_is_the_console_main_of_its_command_module():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {f"zfjax-{name}": f"zfjax.commands.{name}:console_main"
                       for name in COMMANDS}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


@pytest.mark.parametrize("name", COMMANDS)
def test_each_top_level_script_is_a_thin_shim_of_console_main(name):
    tree = ast.parse((ROOT / f"{name}.py").read_text())
    imported = [(node.module, [a.name for a in node.names]) for node in tree.body
                if isinstance(node, ast.ImportFrom)]
    assert imported == [(f"zfjax.commands.{name}", ["console_main"])]
    assert len(tree.body) <= 4  # docstring, import sys, the import, the __main__ guard


@pytest.mark.parametrize("name", COMMANDS)
def test_the_script_and_the_entry_point_name_themselves_in_usage(name, monkeypatch, capsys):
    """The script runs (runpy, as python NAME.py) and calls itself NAME.py; the entry
    point calls itself zfjax-NAME."""
    monkeypatch.setattr(commands, "SUBCOMMANDS", ("topk",))  # visualize: one is enough
    for argv0, prog in ((str(ROOT / f"{name}.py"), f"{name}.py"),
                        (f"/venv/bin/zfjax-{name}", f"zfjax-{name}")):
        monkeypatch.setattr(sys, "argv", [argv0, "--help"])
        with pytest.raises(SystemExit) as done:
            if prog.endswith(".py"):
                runpy.run_path(argv0, run_name="__main__")
            else:
                importlib.import_module(f"zfjax.commands.{name}").console_main()
        assert done.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: {prog} ")


def test_an_interrupted_train_leaves_at_once_only_where_it_owns_the_process(
        tmp_path, monkeypatch, capsys, leave_now):
    """Ctrl-C: XLA's threads may still be busy, and the interpreter's teardown under them
    crashed (SIGSEGV): the script and the entry point end at once; main() returns 130."""
    def interrupted(*args, **kwargs):
        raise trainer.Interrupted("interrupted; no checkpoint was written yet")

    monkeypatch.setattr(trainer, "fit", interrupted)
    monkeypatch.setattr(train, "snapshot_hook", lambda: None)
    argv = ["--preset", "cpu", "--out", str(tmp_path / "run"), "--no-progress"]
    assert train.main(argv) == 130 and leave_now == []
    monkeypatch.setattr(sys, "argv", ["zfjax-train", *argv])
    with pytest.raises(LeftNow):
        train.console_main()
    assert leave_now == [130]
    assert capsys.readouterr().err.count("\ninterrupted; no checkpoint was written yet\n") == 2

    def damaged(*args, **kwargs):
        raise checkpoints.DamagedCheckpoint("checkpoint 3 is damaged")

    monkeypatch.setattr(trainer, "fit", damaged)
    with pytest.raises(LeftNow):
        train.console_main()
    assert leave_now == [130, 1]
    assert capsys.readouterr().err == "error: checkpoint 3 is damaged\n"


def test_an_interrupted_visualize_names_its_program_and_leaves_only_from_console_main(
        tmp_path, monkeypatch, capsys, leave_now):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "SUBCOMMANDS", ("topk",))
    monkeypatch.setattr(visualize.cli, "check_output_folder", interrupted)
    argv = ["topk", str(tmp_path / "run")]
    assert visualize.main(argv) == 130 and leave_now == []
    assert capsys.readouterr().err == (
        "\nvisualize.py topk: interrupted; no half-written file is left\n")
    monkeypatch.setattr(sys, "argv", ["/venv/bin/zfjax-visualize", *argv])
    with pytest.raises(LeftNow):
        visualize.console_main()
    assert leave_now == [130]
    assert capsys.readouterr().err == (
        "\nzfjax-visualize topk: interrupted; no half-written file is left\n")


def test_a_failed_sweep_variant_writes_the_table_then_leaves_at_once_from_console_main(
        tmp_path, monkeypatch, capsys, leave_now):
    monkeypatch.setattr(train, "main", lambda argv: 130)  # the variant's train.py: Ctrl-C
    argv = ["--out", str(tmp_path / "sweep"), "--variants", "no-fc6-7", "--", "--preset", "cpu"]
    assert sweep.main(argv) == 130 and leave_now == []
    monkeypatch.setattr(sys, "argv", ["sweep.py", *argv])
    with pytest.raises(LeftNow):
        sweep.console_main()
    assert leave_now == [130]
    assert (tmp_path / "sweep" / "table3.md").is_file()
    assert capsys.readouterr().err.count("sweep: no-fc6-7 failed; fix the cause") == 2


def test_hints_name_the_command_the_way_this_process_was_started(tmp_path, monkeypatch):
    """A hint to run another command names the entry point under an entry point and the
    script otherwise (the store's "prepare one with", here)."""
    from zfjax.inputs import store

    for argv0, hint in (("/venv/bin/zfjax-train", "zfjax-prepare SOURCE"),
                        (str(ROOT / "train.py"), "python prepare.py SOURCE")):
        monkeypatch.setattr(sys, "argv", [argv0])
        with pytest.raises(store.StoreError, match=f"prepare one with: {hint} "):
            store.open_store(tmp_path)
