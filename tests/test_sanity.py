"""Sanity checks (Adebayo et al. 2018): model and data randomisation, normalisation, the
command, and train.py --shuffle-labels. Only the gradient is compiled here (each
attribution method costs its own compilation of the network)."""

import dataclasses
import functools
import json

import jax
import numpy as np
import pytest

from zfjax.analyses import sanity
from zfjax.commands import train
from zfjax.inputs import data, loader
from zfjax.nets import model
from zfjax.train import checkpoints, run
from helpers import TINY, random_params, write_tiny_run


METHODS = ("gradient",)


@functools.lru_cache(maxsize=None)
def inputs():
    images = np.random.default_rng(0).normal(0, 0.5, (2, 64, 64, 3)).astype(np.float32)
    settings = sanity.Settings(np.zeros((2, 1, 64, 64, 3), np.float32),
                               np.zeros((64, 64, 3), np.float32), steps=2)
    # Committed to the device, as loaded weights are.
    params = jax.device_put(random_params(TINY, bias_std=0.01), jax.devices()[0])
    return params, images, np.array([0, 1], np.int32), settings


@functools.lru_cache(maxsize=None)
def checks():
    params, images, classes, settings = inputs()
    return {kind: jax.device_get(sanity.model_randomisation(
        TINY, params, images, classes, METHODS, settings, jax.random.key(3), kind))
        for kind in sanity.RANDOMISATIONS}


def test_layers_are_randomised_top_down_cascading_or_one_at_a_time():
    assert model.top_down_layers(TINY) == ("fc8", "fc7", "fc6", "conv5", "conv4", "conv3",
                                            "conv2", "conv1")
    params = {name: {"kernel": 0} for name in ("conv1", "fc6", "fc7", "fc8")}
    fresh = {name: {"kernel": 1} for name in params}
    order = ("fc8", "fc7", "fc6", "conv1")
    random = lambda tree: [n for n in order if tree[n]["kernel"] == 1]  # noqa: E731
    cascading = sanity.randomised_networks(params, fresh, order, "cascading")
    independent = sanity.randomised_networks(params, fresh, order, "independent")
    assert [random(t) for t in cascading] == [[], ["fc8"], ["fc8", "fc7"],
                                              ["fc8", "fc7", "fc6"], list(order)]
    assert [random(t) for t in independent] == [[], ["fc8"], ["fc7"], ["fc6"], ["conv1"]]
    with pytest.raises(ValueError, match="unknown randomisation 'both'; expected one of "
                                         "cascading, independent"):
        sanity.randomised_networks(params, fresh, order, "both")


# Cost: one compilation of the gradient maps and one of init_params for the tiny network
# (52 s on the shared 2-core machine at load ~10; 138 s at load 24), shared by the tests
# below through checks() and the command's test.
def test_step_0_is_the_trained_networks_maps_and_randomising_changes_the_gradient():
    params, images, classes, settings = inputs()
    trained = jax.device_get(sanity.method_maps(TINY, params, images, classes, METHODS,
                                                settings))
    # Trained and random layers mixed: still one compilation for every step (the cache
    # is keyed on committed-ness too; mixing loaded and fresh arrays compiled 8 more).
    all_checks = checks()
    assert sanity._method_maps._cache_size() == 1
    for check in all_checks.values():
        assert check.steps == ("trained",) + model.top_down_layers(TINY)
        assert check.maps.absolute.shape == (9, 1, 2, 64, 64)
        np.testing.assert_array_equal(check.maps.absolute[0], trained.absolute)
        np.testing.assert_array_equal(check.maps.signed[0], trained.signed)
        for field in sanity.Similarity._fields:
            np.testing.assert_allclose(getattr(check.similarity, field)[0], 1.0, atol=1e-6)
    # A random fc8 (step 1) already scrambles the gradient of a class logit.
    assert (checks()["cascading"].similarity.rank_signed[1:] < 0.9).all()
    assert (checks()["cascading"].similarity.rank_absolute[1:] < 0.95).all()


def test_independent_and_cascading_share_step_1_and_differ_after():
    cascading, independent = checks()["cascading"], checks()["independent"]
    np.testing.assert_array_equal(cascading.maps.absolute[1], independent.maps.absolute[1])
    for step in range(2, len(cascading.steps)):
        assert not np.array_equal(cascading.maps.absolute[step], independent.maps.absolute[step])


def test_normalisation_is_adebayos_absolute_and_signed():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
    maps[1] = 0.0
    out = jax.device_get(sanity.normalize(maps))
    absolute = np.abs(maps[0]).sum(-1)
    signed = maps[0].sum(-1)
    np.testing.assert_allclose(out.absolute[0],
                               np.clip(absolute / np.percentile(absolute, 99), 0, 1), rtol=1e-5)
    np.testing.assert_allclose(out.signed[0], np.clip(signed / np.percentile(np.abs(signed), 99),
                                                      -1, 1), rtol=1e-5, atol=1e-6)
    assert out.absolute[0].max() == 1.0 and out.signed[0].min() == -1.0
    assert not out.absolute[1].any() and not out.signed[1].any()  # a zero map stays zero


def test_data_randomisation_compares_the_second_networks_maps_with_the_first():
    rng = np.random.default_rng(2)
    a = sanity.normalize(rng.normal(size=(1, 2, 16, 16, 3)).astype(np.float32))
    b = sanity.normalize(rng.normal(size=(1, 2, 16, 16, 3)).astype(np.float32))
    same = jax.device_get(sanity.data_randomisation(a, a, ("gradient",)))
    other = jax.device_get(sanity.data_randomisation(a, b, ("gradient",)))
    assert same.steps == other.steps == ("trained", "random labels")
    np.testing.assert_allclose(same.similarity.rank_absolute, 1.0, atol=1e-6)
    assert (np.abs(other.similarity.rank_absolute[1]) < 0.3).all()


def test_methods_and_targets_are_checked():
    params, images, classes, settings = inputs()
    with pytest.raises(ValueError, match="^unknown method 'lrp'; expected one of deconvnet, "):
        sanity.check_methods(["gradient", "lrp"])
    with pytest.raises(ValueError, match=r"^class 2 is out of range for logits: expected 0..1$"):
        sanity.method_maps(TINY, params, images, np.array([0, 2]), METHODS, settings)
    with pytest.raises(ValueError, match="^steps must be a positive whole number, got 0$"):
        sanity.method_maps(TINY, params, images, classes, METHODS, settings._replace(steps=0))


# ---- the command ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("sanity"))


# Cost: loading two runs and the forward's compilation (36 s at load ~10).
@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_cli_writes_figures_csv_arrays_and_prints_the_tables(tiny_run, tmp_path, run_cli):
    """With --random-labels naming a second run (here with the same weights: similarity 1)."""
    twin = write_tiny_run(tmp_path / "twin")
    out = tmp_path / "out"
    # --samples 1 --steps 2: the settings of inputs(), so the compiled maps are reused.
    code, stdout, err = run_cli(["sanity", str(tiny_run), "--methods", "gradient", "--limit",
                                 "2", "--samples", "1", "--steps", "2", "--random-labels",
                                 str(twin), "--out", str(out)])
    assert code == 0, err
    names = ["sanity_cascading.png", "sanity_independent.png", "sanity_similarity.png",
             "sanity.csv", "sanity.npz"]
    assert stdout.splitlines()[-5:] == [str(out / name) for name in names]
    assert "cascading randomisation, rank absolute (mean over images)" in stdout
    assert "random_labels randomisation, ssim (mean over images)" in stdout
    rows = (out / "sanity.csv").read_text().splitlines()
    assert rows[0] == ("randomisation,step,layer,method,rank_absolute_mean,rank_absolute_std,"
                       "rank_signed_mean,rank_signed_std,ssim_mean,ssim_std,images")
    assert len(rows) == 1 + 9 + 9 + 2
    assert rows[1].startswith("cascading,0,trained,gradient,1.0000,0.0000,1.0000,")
    assert rows[-1].startswith("random_labels,1,random labels,gradient,1.0000,0.0000,")
    arrays = np.load(out / "sanity.npz", allow_pickle=False)
    assert arrays["cascading_absolute"].shape == (9, 1, 2, 64, 64)
    assert arrays["independent_steps"].tolist()[:2] == ["trained", "fc8"]
    assert arrays["random_labels_ssim"].shape == (2, 1, 2)
    for name in names[:3]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["--methods", "lrp"], "argument --methods: invalid choice: 'lrp'"),
    (["--target", "2"], "--target 2 is out of range: expected a class 0..1"),
    (["--steps", "0"], "argument --steps: must be an integer >= 1, got '0'"),
    (["--samples", "-1"], "argument --samples: must be an integer >= 1, got '-1'"),
    (["--noise", "-0.1"], "argument --noise: must be a finite number >= 0, got '-0.1'"),
    (["--cam-layer", "fc6"], "unknown layer 'fc6'"),
])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_run, tmp_path, capsys,
                                                             run_cli, argv, message):
    out = tmp_path / "o"
    try:
        code, stdout, err = run_cli(["sanity", str(tiny_run), "--out", str(out)] + argv)
    except SystemExit as stop:  # argparse's own errors
        code, (stdout, err) = stop.code, capsys.readouterr()
        err = err.splitlines()[-1] + "\n"
    assert (code, stdout) == (2, "")
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_cli_refuses_a_random_labels_run_of_another_network(tiny_run, tmp_path, run_cli):
    wider = write_tiny_run(tmp_path / "wider", config=dataclasses.replace(TINY, width=0.5))
    code, stdout, err = run_cli(["sanity", str(tiny_run), "--random-labels", str(wider),
                                 "--out", str(tmp_path / "o")])
    assert (code, stdout) == (2, "")
    assert err.startswith(f"visualize.py sanity: error: --random-labels {wider}: its network "
                          f"(zfnet, 64 px, ") and err.endswith("--shuffle-labels\n")
    assert not (tmp_path / "o").exists()


# ---- train.py --shuffle-labels --------------------------------------------------------


def _feed(n=24):
    labels = np.arange(n, dtype=np.int32) % 3
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    return loader.InMemory(data.ImageSet(images, labels, ("a", "b", "c"), 0,
                                         tuple(map(str, range(n)))))


def test_shuffled_labels_are_a_permutation_fixed_by_the_seed_and_images_keep_their_place():
    feed = _feed()
    shuffled = loader.PermutedLabels(feed, seed=5)
    np.testing.assert_array_equal(shuffled.labels, loader.PermutedLabels(feed, seed=5).labels)
    assert not np.array_equal(shuffled.labels, loader.PermutedLabels(feed, seed=6).labels)
    assert not np.array_equal(shuffled.labels, feed.set.labels)
    np.testing.assert_array_equal(np.sort(shuffled.labels), np.sort(feed.set.labels))
    assert len(shuffled) == 24 and shuffled.class_names == ("a", "b", "c")
    plain = list(feed.train(8, 4, seed=1, epoch=2, start_step=1))
    permuted = list(shuffled.train(8, 4, seed=1, epoch=2, start_step=1))
    assert len(plain) == len(permuted) == 2
    for a, b in zip(plain, permuted):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.flips, b.flips)
        rows = a.images[:, 0, 0, 0]  # each image's index in the set
        np.testing.assert_array_equal(b.labels, shuffled.labels[rows])
        np.testing.assert_array_equal(a.labels, feed.set.labels[rows])


def test_shuffle_labels_is_recorded_and_a_resume_keeps_it_or_refuses_to_add_it(tmp_path):
    spec = train.build_run(train.parse_args(["--preset", "cpu", "--shuffle-labels"]))
    assert spec.train.shuffle_labels and not run.PRESETS["cpu"].train.shuffle_labels
    (tmp_path / "config.json").write_text(json.dumps({
        "model": checkpoints.config_dict(spec.model), "train": checkpoints.config_dict(spec.train),
        "data": dataclasses.asdict(spec.data)}))
    stored = run.RunDir(tmp_path).read_spec()
    assert stored.train.shuffle_labels
    plain = train.build_run(train.parse_args(["--preset", "cpu"]))
    asked = train.parse_args(["--resume", "--out", "x", "--shuffle-labels"])
    assert train.resume_refusal(asked, plain).startswith(
        "--shuffle-labels differs from the run's shuffle_labels False; --resume can only change")
    assert train.resume_refusal(asked, stored) is None
    assert train.resume_refusal(train.parse_args(["--resume", "--out", "x"]), stored) is None
