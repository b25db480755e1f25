"""``visualize.py methods`` (zfjax.analyses.methods): attribution methods side by side, and its bad
input (issue 17, items 3 and 6)."""

import jax
import numpy as np
import pytest
from helpers import TINY, random_params, write_tiny_run

from zfjax.analyses import methods
from zfjax.nets import attribution, model, strongest


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("methods"))


def test_explains_the_strongest_unit_and_the_predicted_class():
    # conv5, the command's default layer, and weights committed to the device as loaded
    # checkpoints are: the command test below reuses these compiled programs.
    params = jax.device_put(random_params(TINY, seed=2, bias_std=0.1), jax.devices()[0])
    image = np.random.default_rng(0).normal(size=(64, 64, 3)).astype(np.float32)
    settings = methods.Settings("conv5")
    got = methods.explain(TINY, params, image, settings, "blur", ("gradient", "grad_cam"))
    logits, aux = model.forward_jit(TINY, params, image[None])
    value, channel, y, x = strongest.strongest_map(aux["activations"]["conv5"][0])
    assert got.unit.tolist() == [int(channel), int(y), int(x)]
    np.testing.assert_allclose(got.unit_value, value)
    assert got.target_class == got.predicted == int(np.argmax(logits[0]))
    assert got.maps["gradient"].shape == (2, 64, 64, 3)
    assert got.maps["grad_cam"].shape == (2, 64, 64)  # enlarged from conv4 / conv5's 3 x 3
    assert set(got.maps) == {"gradient", "grad_cam"}
    assert methods.cam_layer_below(TINY, "conv4") == "conv3"
    assert methods.cam_layer_below(TINY, "conv1") is None


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_command_writes_the_figure_and_every_map(tiny_run, run_cli, tmp_path):
    """All seven methods on two images of the tiny run, a chosen map and class. Costly:
    about 14 small programs to compile (234 s on the shared 2-core machine at load 20+;
    the one end-to-end run of the command)."""
    out = tmp_path / "out"
    code, stdout, err = run_cli(["methods", str(tiny_run), "--out", str(out), "--limit", "2",
                                 "--samples", "2", "--steps", "2", "--baseline", "blur",
                                 "--channel", "1", "--label", "beta"])
    assert code == 0, err
    assert stdout.split() == [str(out / "methods.npz"), str(out / "methods.png")]
    arrays = np.load(out / "methods.npz")
    assert arrays["methods"].tolist() == list(attribution.METHODS)
    for method in attribution.METHODS:
        for kind in methods.TARGETS:
            shape = (2, 64, 64) if method == "grad_cam" else (2, 64, 64, 3)
            assert arrays[f"{method}_{kind}"].shape == shape, method
            assert np.isfinite(arrays[f"{method}_{kind}"]).all()
            assert np.abs(arrays[f"{method}_{kind}"]).max() > 0, (method, kind)
    assert arrays["units"][:, 0].tolist() == [1, 1] and arrays["classes"].tolist() == [1, 1]
    assert arrays["layer"] == "conv5" and arrays["receptive_fields"].shape == (2, 4)


def write_npy(folder, shape):
    path = folder / "baseline.npy"
    np.save(path, np.zeros(shape, np.float32))
    return str(path)


@pytest.mark.parametrize("argv, message", [
    (["--methods", "gradient", "lrp"], "invalid choice: 'lrp' (choose from 'deconvnet'"),
    (["--channel", "64"], "channel 64 is out of range for conv5: expected 0..63"),
    (["--layer", "fc9"], "unknown layer 'fc9'; expected one of conv1"),
    (["--label", "7"], "--label '7' is not a class of this run; give a class name or an index 0..1"),
    (["--baseline", "npy:(32, 32, 3)"], "expected a numeric array of shape (64, 64, 3) (one "
                                        "network input); got float32 (32, 32, 3)"),
    (["--baseline", "grey"], "--baseline 'grey': expected black, blur or a .npy file"),
    (["--steps", "0"], "argument --steps: must be an integer >= 1, got '0'"),
    (["--samples", "-2"], "argument --samples: must be an integer >= 1, got '-2'"),
    (["--noise", "-0.1"], "argument --noise: must be a finite number >= 0, got '-0.1'"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_run, run_cli, tmp_path, capsys, argv,
                                                  message):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    argv = [write_npy(inputs, eval(a[4:])) if a.startswith("npy:") else a for a in argv]
    out = tmp_path / "out"
    try:
        code, _, err = run_cli(["methods", str(tiny_run), "--out", str(out)] + argv)
    except SystemExit as stop:  # argparse's own errors: usage, then one line
        code, err = stop.code, capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
