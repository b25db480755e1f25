"""What every bench script writes beside its numbers: how it was run, on what, under
which load. Numbers from a shared machine only mean something next to these.

    write_results(path, {"rows": rows, ...})   # adds "environment", prints where it went

Also the pieces several scripts share: FLOPs from a network's shapes, random weights
drawn without compiling, and side-by-side timing in turns.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

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
            "device_count": len(devices), "devices": [str(d) for d in devices],
            "versions": versions()}


def write_results(path, results: dict) -> Path:
    """Writes {"environment": environment(), **results} as JSON to path (folders made);
    prints and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"environment": environment(), **results}, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def forward_flops(config) -> int:
    """FLOPs of one image's forward pass from the network's shapes: 2 per multiply-add
    of every conv (output side^2 x k^2 x C_in x C_out) and dense layer; pooling,
    normalisation and ReLUs left out. (ZFNet at 224: about 2.3 GFLOP.)"""
    from zfjax.nets import network

    sides = {op.name: op.output_size for op in network.spatial_ops(config)}
    total = 0
    for name, shapes in network.param_shapes(config).items():
        kernel = shapes["kernel"]
        total += 2 * math.prod(kernel) * (sides[name] ** 2 if len(kernel) == 4 else 1)
    return total


def random_params(config, seed: int = 0) -> dict:
    """He-normal kernels and zero biases for config, drawn with numpy in float32.

    Numpy only: no device work or compile before the timed part (model.init_params
    draws truncated He-normal weights with a compiled sampler).
    """
    from zfjax.nets import network

    rng = np.random.default_rng(seed)
    params = {}
    for name, shapes in network.param_shapes(config).items():
        kernel = shapes["kernel"]
        scale = np.float32(np.sqrt(2 / math.prod(kernel[:-1])))
        params[name] = {"kernel": rng.standard_normal(kernel, np.float32) * scale,
                        "bias": np.zeros(shapes["bias"], np.float32)}
    return params


def in_turns(cases: dict, rounds: int, first_calls: dict | None = None,
             pause: float = 0.0, warm_up: bool = True) -> dict[str, list[float]]:
    """Wall seconds of each zero-argument callable over `rounds` rounds, every case once
    per round in turn (so load changes hit all alike), after one warm-up call each
    (compilation; its seconds go into first_calls[name] when given). The callables'
    results are waited for (jax.block_until_ready). ``pause`` seconds before each timed
    call let the previous runtime's worker threads stop spinning (XLA's and PyTorch's
    pools compete for the cores otherwise). ``warm_up=False``: no warm-up calls (the
    caller has made them)."""
    import jax

    for name, fn in (cases.items() if warm_up else ()):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        if first_calls is not None:
            first_calls[name] = time.perf_counter() - start
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            time.sleep(pause)
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return times
