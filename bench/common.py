"""What every bench script writes beside its numbers: how it was run, on what, under
which load. Numbers from a shared machine only mean something next to these.

    write_results(path, {"rows": rows, ...})   # adds "environment", prints where it went
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "pillow", "grain", "array-record",
            "torch", "captum")


def versions() -> dict[str, str | None]:
    """Installed version of each of PACKAGES (None where absent)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def environment() -> dict:
    """The command line, machine, load average (1, 5, 15 min), JAX devices and versions."""
    import jax

    devices = jax.devices()
    return {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "machine": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "backend": devices[0].platform, "device": str(devices[0].device_kind),
            "device_count": len(devices), "versions": versions()}


def write_results(path, results: dict) -> Path:
    """Writes {"environment": environment(), **results} as JSON to path (folders made);
    prints and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"environment": environment(), **results}, indent=2) + "\n")
    print(f"wrote {path}")
    return path
