"""Fixtures shared by the tests (plain helpers: tests/helpers.py)."""

import pytest


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Call visualize.main(argv) with only argv[0]'s subcommand registered; returns
    (exit code, stdout, stderr)."""
    import visualize

    def call(argv):
        monkeypatch.setattr(visualize, "ANALYSES", (argv[0],))
        code = visualize.main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    return call
