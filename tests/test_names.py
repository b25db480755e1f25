"""One name per meaning: retired aliases and indirections stay retired (read from the source)."""

import re
import subprocess
from pathlib import Path

import zfjax
from zfjax.nets import model, network

ROOT = Path(__file__).resolve().parents[1]


def python_sources() -> dict[str, str]:
    paths = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return {path: (ROOT / path).read_text() for path in paths if (ROOT / path).exists()}


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
