"""bench/bench_attribution.py: the three races run at toy size, agree with Captum and
land in one JSON file."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_toy_attribution_bench_races_captum_and_writes_json(tmp_path, capsys):
    pytest.importorskip("captum.attr")
    # In-process, so JAX starts once; three small compiled programs (64 px, width 0.25).
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_attribution

    out = tmp_path / "attribution.json"
    argv = ["--size", "64", "--width", "0.25", "--units", "3", "--unit-sample", "2",
            "--images", "2", "--steps", "2", "--samples", "2", "--rounds", "1", "--out", str(out)]
    assert bench_attribution.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["environment"]["load_average"] and result["torch_threads"] >= 1
    assert result["command"].startswith("python bench/bench_attribution.py --size 64")
    assert set(result["races"]) == {"guided", "ig", "smoothgrad"}
    for name, race in result["races"].items():
        assert race["ratio"] > 0 and race["captum_way"].startswith("Captum"), name
        assert all(v < 1e-4 for v in race["checks_relative_l2"].values()), (name, race)
        ways = [r for r in result["rows"] if r["race"] == name]
        assert any("compile_seconds" in r for r in ways), name
        assert any(r["way"] == race["captum_way"] for r in ways), name
    assert "ratio Captum / zfjax" in printed and str(out) in printed


def test_unknown_race_is_a_usage_error(capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_attribution

    with pytest.raises(SystemExit) as exited:
        bench_attribution.main(["--only", "lrp"])
    assert exited.value.code == 2
    assert "unknown race lrp" in capsys.readouterr().err


def test_gradient_chunk_bench_times_one_batch_and_each_chunk_and_writes_json(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_gradient_chunk
    from zfjax.nets import attribution

    default = attribution.default_chunk
    out = tmp_path / "chunk.json"
    argv = ["--images", "4", "--size", "64", "--width", "0.25", "--chunks", "2,3,8",
            "--rounds", "1", "--out", str(out)]
    assert bench_gradient_chunk.main(argv) == 0
    result = json.loads(out.read_text())
    assert [row["way"] for row in result["rows"]] == ["one batch", "chunks of 2", "chunks of 3"]
    assert all(row["images_per_second"] > 0 for row in result["rows"])
    assert result["command"].startswith("python bench/bench_gradient_chunk.py --images 4")
    assert attribution.default_chunk is default  # restored
    assert "chunks of 3" in capsys.readouterr().out
