"""Fig. 4 quantified: projection correlation and top-9 overlap with the final epoch."""

import csv

import jax
import numpy as np
import pytest

from zfjax.analyses import convergence, evolution
from zfjax.inputs import data
from zfjax.nets import network, strongest
from zfjax.train import checkpoints
from zfjax.figures.convergence import plot_convergence
from helpers import random_params
from helpers import TINY, write_snapshots, write_tiny_run


def test_correlation_equals_numpy_corrcoef_and_broadcasts():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 2, 5, 5, 3)).astype(np.float32)
    b = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
    got = np.asarray(convergence.correlation(a, b))
    assert got.shape == (3, 2)
    for e in range(3):
        for k in range(2):
            want = np.corrcoef(a[e, k].ravel(), b[k].ravel())[0, 1]
            assert got[e, k] == pytest.approx(want, abs=1e-5)
    assert np.asarray(convergence.correlation(b, 2 * b + 1)) == pytest.approx(1.0, abs=1e-5)
    assert np.asarray(convergence.correlation(b, -b)) == pytest.approx(-1.0, abs=1e-5)
    assert np.asarray(convergence.correlation(np.zeros((5, 5, 3)), b[0])) == 0.0  # constant
    assert np.asarray(convergence.correlation(np.zeros((5, 5, 3)), np.ones((5, 5, 3)))) == 1.0


def test_top_overlap_counts_shared_images_and_never_unfilled_slots():
    images = np.array([[[0, 1, 2], [3, 4, -1]], [[7, 8, 9], [5, 6, -1]]])  # (F=2, C=2, k=3)
    reference = np.array([[2, 1, 9], [5, 6, -1]])
    got = np.asarray(convergence.top_overlap(images, reference))
    np.testing.assert_allclose(got, [[2 / 3, 0.0], [1 / 3, 1.0]])  # map 1: 2 filled slots


@pytest.mark.parametrize("values, want", [
    ([0.5, 0.9, 0.7, 1.0], 10), ([0.9, 0.85, 0.95, 1.0], 1), ([0.9, 0.95, 0.9, 0.5], None)])
def test_settled_epoch_is_where_values_stay_above_the_threshold(values, want):
    assert convergence.settled_epoch(np.array([1, 2, 5, 10]), np.array(values), 0.8) == want


def synthetic_snapshots():
    """Three epochs of 2 conv1 maps: epoch 3 the reference, epoch 1 its negative, epoch 2
    the reference plus a ramp (a hand-checkable correlation)."""
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(2, 7, 7, 3)).astype(np.float32)
    base = {"conv1/channels": np.array([4, 9], np.int32), "conv1/images": np.array([0, 5], np.int32)}
    snaps = {3: {**base, "conv1/projections": ref}}
    snaps[1] = {**base, "conv1/projections": -ref, "conv1/images": np.array([0, 6], np.int32)}
    snaps[2] = {**base, "conv1/projections": ref + 0.5}
    return snaps, ref


def test_snapshot_convergence_compares_every_epoch_with_the_last():
    snaps, ref = synthetic_snapshots()
    epochs, corr, same = convergence.snapshot_convergence(snaps)
    assert epochs.tolist() == [1, 2, 3]
    np.testing.assert_allclose(corr["conv1"], [[-1, -1], [1, 1], [1, 1]], atol=1e-5)
    assert same["conv1"].tolist() == [[True, False], [True, True], [True, True]]
    result = convergence.Convergence(epochs, corr, same, np.array([1, 3]),
                                     {"conv1": np.array([[0.5, 1 / 3], [1.0, 1.0]])})
    rows = convergence.table_rows(result)
    assert [(r["epoch"], r["projection_corr_median"], r["top9_overlap_mean"]) for r in rows] == [
        (1, pytest.approx(-1, abs=1e-5), pytest.approx(5 / 12)), (2, pytest.approx(1, abs=1e-5), None),
        (3, pytest.approx(1, abs=1e-5), 1.0)]
    assert rows[0]["same_image"] == 0.5
    assert convergence.summary(result) == [
        "conv1: median projection correlation with epoch 3 >= 0.8 settled from epoch 2 "
        "(ep 1 -1.00, ep 2 1.00)"]
    table = convergence.format_table(result).splitlines()
    assert table[1].split() == ["conv1", "-1.00", "[0.42]", "1.00", "1.00", "[1.00]"]
    fig = plot_convergence(result)
    assert len(fig.axes) == 2


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_cli_on_a_run_with_two_checkpoints_and_snapshots(tmp_path, monkeypatch, capsys, run_cli):
    run = write_tiny_run(tmp_path)
    # A second epoch: other weights, saved as checkpoint 2; snapshots of both epochs.
    from zfjax.train import training
    tcfg = training.TrainConfig(epochs=2, batch_size=4)
    import functools
    abstract = jax.eval_shape(functools.partial(training.init_state, TINY, tcfg), jax.random.key(0))
    params2 = random_params(TINY, seed=5, bias_std=0.01)
    state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract).replace(params=params2)
    mgr = checkpoints.manager(run / checkpoints.CHECKPOINT_DIR)
    checkpoints.save(mgr, 2, state, {"epoch": 2, "step": 8, "metrics": {}, "plateau": {}})
    mgr.wait_until_finished()
    mgr.close()
    params1, _, mean, _ = checkpoints.load_run(run, 1)
    val = data.load_split(str(tmp_path / "images"), "val", 64, progress=False)
    probe = evolution.make_probe(val, mean, TINY, count=8, maps_per_layer=3)
    # Random snapshots, not take_snapshot's (a projection program to compile per layer):
    # the correlations are checked on synthetic snapshots above; here, the command's flow.
    write_snapshots(run, epochs=(1, 2), layers=network.conv_layers(TINY))

    code, out, err = run_cli(["convergence", str(run), "--batch-size", "4",
                                                      "--top", "3"])
    assert code == 0, err
    figures = run / "figures"
    assert out.splitlines()[-2:] == [str(figures / "convergence.png"), str(figures / "convergence.csv")]
    rows = list(csv.DictReader(open(figures / "convergence.csv")))
    assert [(r["layer"], r["epoch"]) for r in rows] == [
        (layer, e) for layer in network.conv_layers(TINY) for e in ("1", "2")]
    final = [r for r in rows if r["epoch"] == "2"]
    assert all(float(r["projection_corr_median"]) == pytest.approx(1, abs=1e-3) for r in final)
    assert all(r["top9_overlap_mean"] == "1.0000" for r in final)
    # Epoch 1's overlap: the top 3 of the 8 val images at each checkpoint, compared by hand.
    tops = {e: strongest.mine(TINY, p, [probe.images], k=3) for e, p in ((1, params1), (2, params2))}
    for layer in ("conv2", "conv5"):
        want = np.mean([len(set(a) & set(b)) / 3 for a, b in zip(tops[1][layer].image,
                                                                  tops[2][layer].image)])
        row = next(r for r in rows if r["layer"] == layer and r["epoch"] == "1")
        assert float(row["top9_overlap_mean"]) == pytest.approx(want, abs=1e-4)
        assert 0 < want < 1
    assert "conv1: median projection correlation with epoch 2" in out


def test_cli_says_when_the_folder_is_not_a_run(tmp_path, monkeypatch, capsys, run_cli):
    code, out, err = run_cli(["convergence", str(tmp_path)])
    assert code == 2 and out == ""
    assert err.startswith("visualize.py convergence: error: ") and "not a run folder" in err
