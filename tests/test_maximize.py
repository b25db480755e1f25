"""Activation maximisation: the ascent, its regularisers, unit checks, the figure."""

import functools

import jax
import numpy as np
import pytest
from PIL import Image

from zfjax import artifacts
from zfjax.analyses import maximize
from zfjax.nets import model, network
from zfjax.figures.maximize import plot_maximize
from helpers import random_params

pytestmark = pytest.mark.optimized  # hundreds of ascent steps per test

# The config of test_topk.write_tiny_run, so the CLI tests reuse these compilations.
SMALL = network.Network(num_classes=2, image_size=64, width=0.25, init_std=None)
STEPS = 25


@functools.lru_cache(maxsize=None)
def params():
    # Committed to the device as checkpoints.load_run's are: the CLI tests reuse compilations.
    return jax.device_put(random_params(SMALL), jax.devices()[0])


@functools.lru_cache(maxsize=None)
def ascent(tv_weight=0.0, layer="conv3"):
    """Two units, 25 steps; only the (traced) weights change between calls: one compilation."""
    bound = np.ones((64, 64, 3), np.float32)  # shaped like the CLI's pixel bounds
    return jax.device_get(maximize.maximize(SMALL, params(), np.array([0, 1], np.int32),
                                            jax.random.key(0), layer=layer, steps=STEPS,
                                            learning_rate=0.02, lp_weight=1e-2, p=2.0,
                                            tv_weight=tv_weight, init_std=0.1, lower=-bound,
                                            upper=bound))


def test_objective_and_response_rise_over_the_steps():
    result = ascent()
    assert result.images.shape == (2, 64, 64, 3)
    assert result.objective.shape == result.value.shape == (2, STEPS)
    obj, value = result.objective, result.value
    assert np.all(obj[:, -1] > obj[:, 0] + 1), obj[:, [0, -1]]
    assert np.all(result.final_value > value[:, 0])
    # Mostly monotone: Adam with a small step.
    assert np.mean(np.diff(obj, axis=1) > 0) > 0.9
    assert result.images.min() >= -1 and result.images.max() <= 1  # clipped to bounds
    # The recorded response is the unit's: a conv3 map's mean activation.
    _, aux = model.forward_jit(SMALL, params(), result.images)
    np.testing.assert_allclose(result.final_value,
                               np.asarray(aux["activations"]["conv3"]).mean(axis=(1, 2))[[0, 1], [0, 1]],
                               rtol=1e-4)


def test_ascent_in_chunks_reports_progress_and_equals_one_call():
    bound = np.ones((64, 64, 3), np.float32)
    done = []
    chunked = jax.device_get(maximize.maximize(
        SMALL, params(), np.array([0, 1], np.int32), jax.random.key(0), layer="conv3",
        steps=STEPS, learning_rate=0.02, lp_weight=1e-2, p=2.0, tv_weight=0.0, init_std=0.1,
        lower=-bound, upper=bound, chunk=10, on_steps=done.append))
    assert done == [10, 20, 25]
    whole = ascent()
    for name in ("images", "objective", "value", "final_value"):
        np.testing.assert_allclose(getattr(chunked, name), getattr(whole, name), rtol=1e-5,
                                   atol=1e-6, err_msg=name)


def test_a_huge_tv_weight_gives_a_smoother_image():
    rough, smooth = ascent(0.0), ascent(1e3)
    tv = lambda r: np.asarray(maximize.total_variation(r.images))
    assert np.all(tv(smooth) < 0.5 * tv(rough)), (tv(smooth), tv(rough))
    assert np.all(rough.final_value > smooth.final_value)


def test_regularisers_by_hand():
    x = np.zeros((1, 3, 3, 1), np.float32)
    x[0, 1, 1, 0] = 2.0
    # 2 of the 6 vertical and 2 of the 6 horizontal differences are +-2: squares 4.
    np.testing.assert_allclose(maximize.total_variation(x), [2 * 4 / 6 + 2 * 4 / 6])
    np.testing.assert_allclose(maximize.lp_penalty(x, 2.0), [4 / 9])
    np.testing.assert_allclose(maximize.lp_penalty(x, 1.0), [2 / 9])


def test_unit_value_of_fc8_is_the_class_logit_before_softmax():
    x = ascent().images  # the batch shape forward_jit already compiled for
    logits, aux = model.forward_jit(SMALL, params(), x)
    both = jax.jit(lambda p, image: (
        maximize.unit_value(SMALL, p, image, 1, layer="fc8"),
        maximize.unit_value(SMALL, p, image, 5, layer="fc7")))
    fc8, fc7 = both(params(), x[1])
    np.testing.assert_allclose(fc8, logits[1, 1], rtol=1e-5)
    np.testing.assert_allclose(fc7, aux["activations"]["fc7"][1, 5], rtol=1e-5)


def test_unknown_layers_and_units_out_of_range_are_one_line_errors():
    assert maximize.num_units(SMALL, "fc8") == 2
    assert maximize.num_units(SMALL, "fc7") == 1024
    assert maximize.num_units(SMALL, "pool2") == 64
    maximize.check_units(SMALL, "conv5", [0, 63])
    with pytest.raises(ValueError, match=r"^unit 64 is out of range for conv5: expected 0\.\.63$"):
        maximize.check_units(SMALL, "conv5", [0, 64])
    with pytest.raises(ValueError, match=r"^unit -1 is out of range for fc8: expected 0\.\.1$"):
        maximize.check_units(SMALL, "fc8", [-1])
    with pytest.raises(ValueError, match=r"^unknown layer 'conv6'; expected one of conv1, "):
        maximize.check_units(SMALL, "conv6", [0])


def test_figure_grid_and_curves(tmp_path):
    result = ascent()
    pictures = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), np.uint8)
    values = np.concatenate([result.value, result.final_value[:, None]], axis=1)
    values[1] = 0
    fig = plot_maximize(pictures, ["conv3 #0", "conv3 #1"], values, title="t")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("conv3 #0\nresponse ")
    assert titles[1] == "conv3 #1\nresponse 0 (inactive: no gradient)"
    assert fig.axes[-1].get_xlabel() == "step"
    png = artifacts.save_png(fig, tmp_path / "max.png")
    assert np.asarray(Image.open(png)).std() > 10


# ---- command line, on a tiny real run folder (test_topk.write_tiny_run) ----------------

from helpers import write_tiny_run  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("maximize"))


def test_cli_writes_the_grid_and_arrays(tiny_run, monkeypatch, capsys, run_cli):
    # The shapes of ascent() (no new compilation).
    code, out, err = run_cli([
        "maximize", str(tiny_run), "--layer", "conv3", "--units", "0", "1", "--steps",
        str(STEPS), "--lr", "0.02", "--tv-weight", "0"])
    assert code == 0, err
    figures = tiny_run / "figures"
    assert out.split() == [str(figures / "maximize_conv3.png"), str(figures / "maximize_conv3.npz")]
    arrays = artifacts.load_npz(figures / "maximize_conv3.npz")
    assert arrays["units"].tolist() == [0, 1] and arrays["layer"] == "conv3"
    assert arrays["pictures"].shape == (2, 64, 64, 3) and arrays["pictures"].dtype == np.uint8
    assert arrays["value"].shape == (2, STEPS + 1)
    # Map 0 rises; map 1 of this run is 0 for the starting noise (no gradient) and stays 0.
    assert arrays["value"][0, -1] > arrays["value"][0, 0] + 1
    np.testing.assert_array_equal(arrays["value"][1], 0)
    # Clipped to valid pixels: showing the image and preprocessing it again round-trips.
    mean = np.load(tiny_run / "mean.npy")
    again = (arrays["pictures"] - mean[4:68, 4:68]) / 255.0
    np.testing.assert_allclose(again, arrays["images"], atol=0.5 / 255 + 1e-6)
    png = np.asarray(Image.open(figures / "maximize_conv3.png").convert("L"))
    assert png.shape[1] > 500 and png.std() > 20
    # Progress on stderr (a log here: a line at the start and one at the end).
    assert "maximize conv3, 2 unit(s)" in err and f"{STEPS}/{STEPS}" in err


def test_cpu_defaults_fit_about_a_minute_and_help_says_the_gpu_ones(monkeypatch, capsys):
    # VGG16's GPU defaults (8 units x 200 steps) ran over 10 minutes on a 2-core CPU.
    import argparse

    from zfjax.commands import maximize as command

    vgg16 = network.Network(arch="vgg16", num_classes=1000, image_size=224)
    none_given = argparse.Namespace(units=None, steps=None)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    units, steps, note = command.default_work(vgg16, none_given)
    seconds = units * steps * maximize.step_flops(vgg16) / command.CPU_FLOPS
    assert (units, steps) == (1, 16) and seconds <= command.CPU_SECONDS
    assert note.startswith("maximize: on CPU the defaults are 1 unit(s) x 16 steps")
    assert command.default_work(SMALL, none_given) == (8, 200, None)  # a tiny network keeps them
    assert command.default_work(vgg16, argparse.Namespace(units=[3, 4], steps=None))[:2] == (2, 10)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert command.default_work(vgg16, none_given) == (8, 200, None)
    parser = argparse.ArgumentParser()
    command.add_cli(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["maximize", "--help"])
    assert "on a GPU/TPU: 200" in " ".join(capsys.readouterr().out.split())
    assert [command.progress_chunk(n) for n in (200, 32, 25, 7)] == [20, 2, 1, 1]


@pytest.mark.parametrize("argv, message", [
    (["--layer", "conv9"], "unknown layer 'conv9'; expected one of conv1, pool1, conv2, pool2, "
                           "conv3, conv4, conv5, pool5, fc6, fc7, fc8"),
    (["--layer", "conv5", "--units", "3", "64"], "unit 64 is out of range for conv5: expected 0..63"),
    (["--layer", "fc8", "--units", "2"], "unit 2 is out of range for fc8: expected 0..1"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tiny_run, monkeypatch, capsys, tmp_path,
                                                      argv, message, run_cli):
    code, out, err = run_cli([
        "maximize", str(tiny_run), "--out", str(tmp_path / "o")] + argv)
    assert (code, out, err) == (2, "", f"visualize.py maximize: error: {message}\n")
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_checkpoint_of_another_shape(tmp_path, monkeypatch, capsys, run_cli):
    run = write_tiny_run(tmp_path, checkpoint_config=network.Network(
        num_classes=2, image_size=64, width=0.5, init_std=None))
    code, out, err = run_cli(["maximize", str(run)])
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "checkpoint has conv1 kernel (7,7,3,48) but config width 0.25 expects (7,7,3,24)" in err
    assert not (run / "figures").exists()


def test_ctrl_c_is_one_line_exit_130_and_leaves_no_half_written_file(tiny_run, tmp_path,
                                                                     monkeypatch, run_cli):
    import signal

    def pressed_while_saving(fig, path):  # Ctrl-C halfway through writing the PNG
        with artifacts.atomic_path(path) as tmp:
            tmp.write_bytes(b"half a png")
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(artifacts, "save_png", pressed_while_saving)
    code, out, err = run_cli(["maximize", str(tiny_run), "--layer", "conv3", "--units", "0",
                              "--steps", "1", "--out", str(tmp_path)])
    assert (code, out) == (130, "")
    assert err.endswith("\nvisualize.py maximize: interrupted; no half-written file is left\n")
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maximize_conv3.npz"]  # whole
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
