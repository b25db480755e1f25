"""bench/accelerator.py: every part runs (--quick) and lands in one JSON file."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_quick_accelerator_bench_runs_every_part_and_writes_one_json(tmp_path, capsys):
    # Long: about a dozen small compilations, Grain worker processes and one train.py
    # epoch (98-131 s alone at load 2-4 on the shared 2-core machine, 248 s at load 9).
    # In-process, so JAX starts once.
    sys.path.insert(0, str(ROOT / "bench"))
    import accelerator

    out = tmp_path / "bench.json"
    assert accelerator.main(["--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    env = result["environment"]
    assert env["device_count"] >= 1 and env["versions"]["jax"] and env["machine"]
    train = result["train_step"]
    assert {r["work"].split("(")[-1] for r in train} == {"bfloat16)", "float32)"}
    for row in train:
        assert row["images_per_s"] > 0 and row["ms_per_step"] > 0 and row["gflop_per_image"] > 0
    streamed = {r["work"]: r for r in result["streamed"]}
    epoch = streamed["train.py, one streamed epoch"]
    assert epoch["exit_code"] == 0 and epoch["bound"] in ("input", "step")
    assert streamed["one epoch, streamed"]["images_per_s_per_worker"] > 0
    projections = result["projections"]
    assert {r["work"].split(" ", 2)[1] for r in projections} == {"zfnet", "vgg16"}
    for work in {r["work"] for r in projections}:
        rows = [r for r in projections if r["work"] == work]
        assert min(r["over_best"] for r in rows) == 1.0 and rows[-1]["all_at_once"]
    works = " | ".join(r["work"] for r in result["analyses"])
    assert "atlas mining" in works and "occlusion" in works and "maximize vgg16" in works
    assert "scaling" in result or "data-parallel scaling: skipped (one device)" in printed
    assert "whole run" in printed and str(out) in printed


def test_default_units_per_step_by_backend(monkeypatch):
    import jax

    from zfjax.nets import deconv, network

    zfnet, vgg = network.Network(), network.Network(arch="vgg16")
    # CPU: 8 per step (bench_chunk); VGG16's 8 conv5_3 units all at once, the program of
    # vmapping all of them, so never slower than it.
    assert deconv.default_batch_size(zfnet, "conv5", 256) == 8
    assert deconv.default_batch_size(vgg, "conv5_3", 8) == 8
    assert deconv.default_batch_size(vgg, "conv5_3", 3) == 3
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert deconv.default_batch_size(zfnet, "conv5", 256) == 64  # all up to 64: a guess
    assert deconv.default_batch_size(vgg, "conv5_3", 8) == 8
