"""The atlas: its one-pass core against brute force, and the static site it writes."""

import functools
import html.parser
import json
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from zfjax.analyses import atlas
from zfjax.nets import deconv, model, network
from zfjax.figures import atlas_site as site_writer
from zfjax.nets.receptive_field import crop_to_receptive_field
from helpers import TINY, random_params

N = 11  # streamed in batches of 4: two full batches and a padded one of 3
LABELS = np.array([0, 2, 1, 0, 0, 2, 1, 2, 0, 0, 2], np.int32)  # 3 classes; class 3 has none


@functools.lru_cache(maxsize=None)
def params():
    return random_params(TINY, bias_std=0.01)


@functools.lru_cache(maxsize=None)
def images():
    x = np.random.default_rng(1).normal(0, 0.3, (N, 64, 64, 3)).astype(np.float32)
    x[7] = x[2]  # a tie between two images in every map
    return x


@functools.lru_cache(maxsize=None)
def activations():
    _, aux = model.forward_jit(TINY, params(), images())
    return {layer: np.asarray(aux["activations"][layer]) for layer in network.conv_layers(TINY)}


@functools.lru_cache(maxsize=None)
def built():  # no sanity scores: model.init_params compiles for seconds (the CLI tests have them)
    return atlas.build(TINY, params(), images(), LABELS, layers=("conv1", "conv2"), k=5,
                       num_classes=4, batch_size=4, sanity_seed=None)


@functools.lru_cache(maxsize=None)
def mined():
    return atlas.mine(TINY, params(), images(), LABELS, num_classes=4, batch_size=4)


def test_one_pass_top_k_of_every_layer_equals_a_brute_force_sort():
    tops, _, _ = mined()
    assert list(tops) == list(network.conv_layers(TINY))
    for layer, acts in activations().items():
        n, h, w, c = acts.shape
        flat = acts.reshape(n, h * w, c)
        per_image, where = flat.max(axis=1), flat.argmax(axis=1)  # (N, C)
        top = tops[layer]
        for ch in range(c):
            order = np.lexsort((np.arange(n), -per_image[:, ch]))[:atlas.TOP]  # ties: earlier
            np.testing.assert_array_equal(top.image[ch], order, err_msg=f"{layer} #{ch}")
            # Two programs (batches of 4 and of 11): XLA may round the last bit differently
            # (seen under the suite's compiler settings, tests/conftest.py).
            np.testing.assert_allclose(top.value[ch], per_image[order, ch], rtol=1e-6,
                                       atol=1e-6 * acts.max())
            np.testing.assert_array_equal(top.y[ch] * w + top.x[ch], where[order, ch])


def test_class_means_equal_numpy_means_of_each_maps_spatial_mean():
    _, sums, counts = mined()
    np.testing.assert_array_equal(counts, [5, 2, 4, 0])
    for layer, acts in activations().items():
        spatial = acts.mean(axis=(1, 2))  # (N, C)
        for k in range(4):
            want = spatial[LABELS == k].sum(axis=0)
            np.testing.assert_allclose(sums[layer][k], want, rtol=1e-5, atol=1e-6)
    class_mean = built().layers["conv2"].class_mean  # (C, classes)
    spatial = activations()["conv2"].mean(axis=(1, 2))
    for k in (0, 1, 2):
        np.testing.assert_allclose(class_mean[:, k], spatial[LABELS == k].mean(axis=0),
                                   rtol=1e-5, atol=1e-6)
    assert np.isnan(class_mean[:, 3]).all()  # no image of class 3


def test_projections_equal_the_dense_reverse_pass_of_each_winner():
    """Chunked, image-sorted unit projections == deconv.project of a one-unit signal."""
    for layer in ("conv1", "conv2"):
        layer_atlas = built().layers[layer]
        top = layer_atlas.top
        live = np.flatnonzero(top.value[:, 4] > 0)  # a map silent on every image projects zeros
        assert len(live) >= 3
        for ch in live[[0, len(live) // 2, -1]]:
            for j in (0, 4):
                i, y, x = int(top.image[ch, j]), int(top.y[ch, j]), int(top.x[ch, j])
                _, aux = model.forward_jit(TINY, params(), images()[i:i + 1])
                signal = deconv.unit_signal(aux, layer, ch, y, x)
                dense = np.asarray(deconv.project(TINY, params(), aux, layer, signal))
                want = crop_to_receptive_field(TINY, layer, dense, [y], [x])[0]
                np.testing.assert_allclose(layer_atlas.projections[ch, j], want, rtol=1e-4,
                                           atol=1e-5 * np.abs(want).max())
                assert np.abs(want).max() > 0


def test_top1_views_equal_the_gradient_of_each_maps_strongest_unit():
    """Chunked, padded, batched attributions == jax.grad of the unit, cropped (guided
    backprop goes through the same code: it is only checked to be another picture)."""
    import jax

    layer = "conv2"
    layer_atlas = built().layers[layer]
    top, top1 = layer_atlas.top, layer_atlas.top1
    assert set(top1) == set(atlas.METHODS) and top1["gradient"].shape == (64, 27, 27, 3)
    live = np.flatnonzero(top.value[:, 0] > 0)  # a silent unit has no gradient
    assert live[0] < 32 <= live[-1]  # 64 maps go in two chunks of 32: both checked
    for ch in live[[0, len(live) // 2, -1]]:
        i, y, x = int(top.image[ch, 0]), int(top.y[ch, 0]), int(top.x[ch, 0])
        unit = lambda im: model.forward(TINY, params(), im)[1]["activations"][layer][0, y, x, ch]
        grad = np.asarray(jax.grad(unit)(images()[i:i + 1]))
        want = crop_to_receptive_field(TINY, layer, grad, [y], [x])[0]
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(top1["gradient"][ch], want, rtol=1e-4,
                                   atol=1e-5 * np.abs(want).max())
        guided = top1["guided_backprop"][ch]
        assert np.abs(guided).max() > 0 and not np.allclose(guided, want)
    assert layer_atlas.sanity is None and built().sanity_seed is None


def test_sanity_score_is_1_against_the_trained_network_and_lower_against_a_random_one():
    layer = "conv2"
    top = built().layers[layer].top
    same = atlas.layer_sanity(TINY, params(), params(), layer, top, images())
    np.testing.assert_allclose(same, 1.0, atol=1e-6)
    fresh = random_params(TINY, seed=7)
    randomised = atlas.cascade_randomised(TINY, params(), fresh, layer)
    assert randomised["conv1"] is params()["conv1"]  # below: trained
    assert all(randomised[name] is fresh[name] for name in ("conv2", "conv3", "fc6", "fc8"))
    scores = atlas.layer_sanity(TINY, params(), fresh, layer, top, images())
    assert scores.shape == (64,) and (np.abs(scores) <= 1).all() and scores.mean() < 0.9
    a = np.random.default_rng(0).normal(size=(2, 5, 5, 3))
    np.testing.assert_allclose(atlas.sanity_scores(a, -2 * a), 1.0, atol=1e-6)  # |.|, scale-free


def test_sanity_scores_only_count_the_part_of_a_crop_inside_the_image():
    """A crop's zero padding past the image edge is equal in both pictures: not agreement."""
    from zfjax.nets.receptive_field import receptive_field

    ys, xs = np.array([0, 6]), np.array([0, 6])  # conv2 units: a corner one and an inner one
    r = 27
    trained = np.zeros((2, r, r, 3), np.float32)
    randomised = np.zeros_like(trained)
    top, left, _, _ = receptive_field(TINY, "conv2", ys, xs, clip=False)
    inside = np.stack(receptive_field(TINY, "conv2", ys, xs), axis=1)
    values = np.random.default_rng(0).uniform(1, 2, (2, r, r, 1)).astype(np.float32)
    for i in range(2):  # inside the image: opposite rankings of |value|
        y0, y1, x0, x1 = inside[i, [0, 2, 1, 3]] - [top[i], top[i], left[i], left[i]]
        trained[i, y0:y1, x0:x1] = values[i, y0:y1, x0:x1]
        randomised[i, y0:y1, x0:x1] = 1 / values[i, y0:y1, x0:x1]
    assert -top[0] > 0 and top[1] >= 0  # the corner unit's field runs past the edge
    np.testing.assert_allclose(atlas.inside_image_scores(TINY, "conv2", trained, randomised, ys, xs),
                               -1, atol=1e-6)
    assert atlas.sanity_scores(trained, randomised)[0] > -0.9  # the padding counted as agreement


def test_fewer_images_than_k_leave_unfilled_slots_with_zero_projections():
    few = atlas.build(TINY, params(), images()[:3], layers=("conv1",), k=5)
    layer = few.layers["conv1"]
    assert (layer.top.image[:, 3:] == -1).all() and np.isneginf(layer.top.value[:, 3:]).all()
    assert not layer.projections[:, 3:].any() and layer.projections[:, :3].any()
    assert layer.class_mean is None and few.class_count is None and few.count == 3


# ---- the site ----------------------------------------------------------------------


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids, self.lazy_images, self.images = [], set(), 0, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("href", "src"):
            if key in attrs:
                self.links.append(attrs[key])
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images += 1
            self.lazy_images += attrs.get("loading") == "lazy"


def parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text())
    return parser


def test_every_link_of_every_page_resolves_inside_the_site(atlas_site):
    _, site, _ = atlas_site
    pages = sorted(site.glob("*.html"))
    assert [p.name for p in pages] == ["conv1.html", "conv2.html", "index.html"]
    parsed = {p.name: parse(p) for p in pages}
    checked = 0
    for name, links in parsed.items():
        assert links.images and links.lazy_images == links.images
        for link in links.links:
            if link == "data:,":  # the empty favicon (no favicon.ico request)
                continue
            parts = urlsplit(link)
            assert not parts.scheme and not parts.netloc, f"{name}: external link {link}"
            target = (site / unquote(parts.path)) if parts.path else site / name
            assert target.is_file(), f"{name}: {link} -> {target} missing"
            assert target.resolve().is_relative_to(site.resolve())
            if parts.fragment:
                assert parts.fragment in parsed[target.name].ids, f"{name}: {link}"
            checked += 1
    assert checked > 100
    for path in site.rglob("*"):
        if path.suffix in (".html", ".css", ".json"):
            assert not re.search(r"(https?:)?//[a-z]", path.read_text()), path


def test_layer_pages_show_every_map_with_a_stable_anchor_and_its_pictures(atlas_site):
    run, site, out = atlas_site
    assert out.strip() == str(site / "index.html")
    for layer, maps in (("conv1", 24), ("conv2", 64)):
        links = parse(site / f"{layer}.html")
        assert {f"map-{c}" for c in range(maps)} <= links.ids
        assert len(list((site / layer).glob("map-???.jpg"))) == maps
        assert len(list((site / layer).glob("map-???-full.jpg"))) == maps
        # the snapshots follow maps 0, 2 and 4: their evolution strips, nothing else
        assert sorted(p.name for p in (site / layer).glob("*-evolution.jpg")) == [
            "map-000-evolution.jpg", "map-002-evolution.jpg", "map-004-evolution.jpg"]
    index = (site / "index.html").read_text()
    assert "Configuration" in index and "alpha" in (site / "conv2.html").read_text()
    manifest = json.loads((site / site_writer.MANIFEST).read_text())
    assert manifest["layers"] == {"conv1": 24, "conv2": 64} and manifest["images"] == 8
    from PIL import Image

    with Image.open(site / "conv2" / "map-007.jpg") as im:
        assert im.format == "JPEG" and np.asarray(im).std() > 10  # pictures, not blanks


def test_full_views_show_three_methods_and_atlas_json_the_sanity_score_of_each_layer(atlas_site):
    _, site, _ = atlas_site
    manifest = json.loads((site / site_writer.MANIFEST).read_text())
    assert manifest["version"] == 3 and manifest["views"] == ["deconvnet", "guided_backprop",
                                                               "gradient"]
    sanity = manifest["sanity"]
    assert sanity["seed"] == atlas.SANITY_SEED and "cascading" in sanity["randomisation"]
    for layer, maps in (("conv1", 24), ("conv2", 64)):
        score = sanity["layers"][layer]
        assert len(score["per_map"]) == maps == score["maps"]
        assert -1 <= score["min"] <= score["mean"] <= score["max"] <= 1 and score["std"] >= 0
        assert np.isclose(score["mean"], np.mean(score["per_map"]))
        for view in ("deconvnet", "guided", "gradient"):
            assert len(list((site / layer).glob(f"map-???-{view}.jpg"))) == maps
        page = (site / f"{layer}.html").read_text()
        assert f"Sanity score of {layer}: {score['mean']:.2f} &plusmn; {score['std']:.2f}" in page
        assert page.count("<figcaption>guided backprop (Springenberg") == maps
    assert "<th>sanity score</th>" in (site / "index.html").read_text()


def test_rerun_over_a_version_2_atlas_replaces_it(atlas_site, run_cli, tmp_path):
    """An atlas written before the methods views (version 2: no views, no sanity) is still
    recognised and replaced; --deconvnet-only writes neither views nor scores."""
    import shutil

    run, site, _ = atlas_site
    out = tmp_path / "site"
    shutil.copytree(site, out)
    manifest = json.loads((out / site_writer.MANIFEST).read_text())
    for name in manifest["files"]:
        if re.search(r"-(deconvnet|guided|gradient)\.jpg$", name):
            (out / name).unlink()
    manifest = {**{k: v for k, v in manifest.items() if k not in ("views", "sanity")},
                "version": 2, "files": sorted(p.relative_to(out).as_posix()
                                              for p in out.rglob("*") if p.is_file())}
    (out / site_writer.MANIFEST).write_text(json.dumps(manifest))
    assert site_writer.read_manifest(out).version == 2
    code, _, err = run_cli(["atlas", str(run), "--out", str(out), "--layers", "conv1",
                            "--deconvnet-only"])
    assert code == 0 and "kept" not in err, err
    rewritten = json.loads((out / site_writer.MANIFEST).read_text())
    assert rewritten["version"] == 3 and rewritten["views"] == [] and "sanity" not in rewritten
    assert not list((out / "conv1").glob("*-guided.jpg")) and not (out / "conv2").exists()
    assert "Sanity score" not in (out / "conv1.html").read_text()


def test_rerun_replaces_the_site_keeps_the_users_files_and_writes_nothing_beside_it(
        atlas_site, run_cli, tmp_path):
    run, _, _ = atlas_site
    out = tmp_path / "site"
    out.mkdir()
    (out / "stale.txt").write_text("not ours")
    code, _, err = run_cli(["atlas", str(run), "--out", str(out), "--layers", "conv1"])
    assert code == 2 and "holds other files" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["stale.txt"]  # nothing lost
    (out / "stale.txt").unlink()
    code, _, err = run_cli(["atlas", str(run), "--out", str(out), "--layers", "conv2"])
    assert code == 0, err  # an empty folder is used
    mine = {"extra.txt": "left in an atlas", "notes/todo.md": "look at map 7",
            "conv2/my-crop.png": "a picture of mine", "images/README": "about the images"}
    for name, text in mine.items():
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text(text)
    (out / "empty-folder").mkdir()
    (out / "index.html").write_text("edited")  # zfjax's: replaced
    code, stdout, err = run_cli(["atlas", str(run), "--out", str(out), "--layers", "conv1"])
    assert code == 0, err  # the atlas is replaced, the user's files are kept
    assert stdout.strip() == str(out / "index.html")
    assert (out / "conv1.html").is_file() and not (out / "conv2.html").exists()
    assert not list((out / "conv2").glob("*.jpg")) and "edited" not in (out / "index.html").read_text()
    assert {name: (out / name).read_text() for name in mine} == mine
    assert (out / "empty-folder").is_dir()
    said = [line for line in err.splitlines() if line.startswith("visualize.py atlas:")]
    assert len(said) == 1 and "kept 5 files" in said[0] and "conv2/my-crop.png" in said[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no temporary folders
    (out / "conv1.html").rename(out / "conv1-mine.html")  # ours, renamed by the user: kept
    (out / "conv2.html").write_text("mine")  # a name the new atlas writes: refused
    code, _, err = run_cli(["atlas", str(run), "--out", str(out), "--layers", "conv2"])
    assert code == 2 and "conv2.html" in err and len(err.strip().splitlines()) == 1
    assert (out / "conv2.html").read_text() == "mine" and (out / "conv1-mine.html").is_file()


def test_a_folder_holding_only_a_failed_runs_lock_is_used(atlas_site, run_cli, tmp_path):
    """A failed train.py leaves its folder holding only .lock: that is no user's file."""
    from zfjax.train import checkpoints
    from zfjax.commands import atlas as command

    run, _, _ = atlas_site
    out = tmp_path / "failed-run"
    with checkpoints.lock_run_folder(out):
        assert not command._is_atlas(out)  # train.py still runs there
    assert command._is_atlas(out)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / checkpoints.LOCK_FILE).write_text("my own lock file")
    assert not command._is_atlas(mine)
    code, _, err = run_cli(["atlas", str(run), "--out", str(out), "--layers", "conv1"])
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {
        name.split("/")[0] for name in site_writer.read_manifest(out).files}  # no .lock


def _kill_inside_atomic_folder(path: Path, leave_file: bool) -> None:
    """A process that starts an atomic folder for ``path`` and is killed by SIGKILL in it."""
    import subprocess
    import sys

    code = ("import os, signal, sys; from zfjax import artifacts\n"
            "with artifacts.atomic_folder(sys.argv[1]) as tmp:\n"
            "    if sys.argv[2] == '1': (tmp / 'style.css').write_text('body{}')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path), str(int(leave_file))])
    assert done.returncode == -9


def test_leftovers_of_killed_runs_are_removed_and_nothing_else(atlas_site, tmp_path):
    """kill -9 leaves .NAME.*.tmp (and .NAME.*.old) folders: the next run removes those that
    zfjax made (name AND content: its unlocked marker, or a pre-marker partial site), never
    one a live writer holds, never a user's."""
    import fcntl
    import shutil

    from zfjax import artifacts

    _, site, _ = atlas_site
    out = tmp_path / "site"
    _kill_inside_atomic_folder(out, leave_file=True)
    killed = [p.name for p in tmp_path.iterdir()]
    assert len(killed) == 1 and re.fullmatch(r"\.site\.\w{8}\.tmp", killed[0])
    made = {".site.aaaaaaa1.tmp": {}, ".site.aaaaaaa2.tmp": {"style.css": "", "conv1/map-000.jpg": ""},
            ".site.aaaaaaa3.tmp": {"style.css": "", "thesis.tex": "mine"},  # not an atlas's
            ".site.aaaaaaa4.tmp": {artifacts.PARTIAL_MARKER: "zfjax: site being written"},
            ".site.aaaaaaa5.tmp": {artifacts.PARTIAL_MARKER: "a file of mine"},
            ".site.aaaaaaa6.old": {}, ".site.toolong99.tmp": {}, ".other.aaaaaaa7.tmp": {},
            ".site.aaaaaa12.new": {},  # a writer about to put its marker in
            ".site.aaaaaa13.tmp": {"style.css": "", site_writer.MANIFEST: "{}"},  # finished
            ".site.aaaaaaa8.old": {"old/thesis.tex": "mine"}}
    for folder, files in made.items():
        (tmp_path / folder).mkdir()
        for name, text in files.items():
            (tmp_path / folder / name).parent.mkdir(exist_ok=True)
            (tmp_path / folder / name).write_text(text)
    live = tmp_path / ".site.aaaaaaa9.tmp"  # a writer that is still running
    live.mkdir()
    (live / artifacts.PARTIAL_MARKER).write_text("zfjax: site being written")
    shutil.copytree(site, tmp_path / ".site.aaaaaa10.old" / "old")  # an old atlas, swapped out
    shutil.copytree(site, out)
    with open(live / artifacts.PARTIAL_MARKER) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        removed = artifacts.remove_leftovers(out, replaceable=site_writer.read_manifest,
                                             carry=site_writer.user_files,
                                             leftover=site_writer.is_partial_site)
    assert sorted(p.name for p in removed) == sorted(killed + [
        ".site.aaaaaaa1.tmp", ".site.aaaaaaa2.tmp", ".site.aaaaaaa4.tmp", ".site.aaaaaaa6.old",
        ".site.aaaaaa10.old"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".site.aaaaaaa3.tmp", ".site.aaaaaaa5.tmp", ".site.toolong99.tmp", ".other.aaaaaaa7.tmp",
         ".site.aaaaaaa8.old", ".site.aaaaaaa9.tmp", ".site.aaaaaa12.new", ".site.aaaaaa13.tmp",
         "site"])
    shutil.rmtree(out)  # killed between the two renames: the old atlas is put back
    shutil.copytree(site, tmp_path / ".site.aaaaaa11.old" / "old")
    artifacts.remove_leftovers(out, replaceable=site_writer.read_manifest)
    assert site_writer.read_manifest(out) is not None
    assert not (tmp_path / ".site.aaaaaa11.old").exists()


def test_an_atlas_json_that_zfjax_did_not_write_is_refused_and_left_untouched(
        atlas_site, run_cli, tmp_path):
    """atlas.json is a common name (sprite atlases): only zfjax's marker makes an atlas."""
    run, _, _ = atlas_site
    for i, manifest in enumerate([{"frames": {"hero.png": {"x": 0, "y": 0}}},
                                  {"zfjax_atlas": 1, "layers": {"conv1": 24}}]):
        out = tmp_path / f"sprites{i}"
        out.mkdir()
        (out / site_writer.MANIFEST).write_text(json.dumps(manifest))
        (out / "sprites.png").write_bytes(b"\x89PNG not really")
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        code, _, err = run_cli(["atlas", str(run), "--out", str(out), "--layers", "conv1"])
        assert code == 2 and "holds other files" in err and len(err.strip().splitlines()) == 1
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sprites0", "sprites1"]


def test_atlases_are_recognised_by_their_marker_and_old_ones_by_their_exact_content(
        atlas_site, tmp_path):
    _, site, _ = atlas_site
    manifest = site_writer.read_manifest(site)
    assert manifest.version == site_writer.VERSION and manifest.layers == {"conv1": 24, "conv2": 64}
    assert "index.html" in manifest.files and "conv2/map-063-full.jpg" in manifest.files
    assert manifest.files == {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    old = tmp_path / "old"  # as the code before the marker wrote it
    for name in ("index.html", "style.css", "conv1.html", "conv2.html"):
        (old / name).parent.mkdir(exist_ok=True)
        (old / name).write_text("")
    v1 = {"zfjax_atlas": 1, "layers": {"conv1": 24, "conv2": 64}, "images": 8,
          "source": "images [val]", "k": 5}
    (old / site_writer.MANIFEST).write_text(json.dumps(v1))
    assert site_writer.read_manifest(old) == (1, v1["layers"], None)
    for changed in ({**v1, "extra": 1}, {**v1, "zfjax_atlas": True}, {**v1, "layers": {}},
                    {k: v for k, v in v1.items() if k != "k"}, [v1]):
        (old / site_writer.MANIFEST).write_text(json.dumps(changed))
        assert site_writer.read_manifest(old) is None, changed
    (old / site_writer.MANIFEST).write_text(json.dumps(v1))
    (old / "conv2.html").unlink()  # a page of a layer it lists is missing
    assert site_writer.read_manifest(old) is None
    (old / site_writer.MANIFEST).write_text("{not json")
    assert site_writer.read_manifest(old) is None


def test_a_mount_point_is_refused_before_the_work(atlas_site, run_cli, tmp_path, monkeypatch):
    """A mount point cannot be renamed: refuse it at once, not with 'Device or resource
    busy' after the whole build (which also left a .NAME.*.old folder)."""
    import os

    run, _, _ = atlas_site
    out = tmp_path / "mounted"
    out.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) == str(out) or real_ismount(p))
    monkeypatch.setattr(atlas, "build", lambda *a, **k: pytest.fail("built before refusing"))
    code, _, err = run_cli(["atlas", str(run), "--out", str(out), "--layers", "conv1"])
    assert code == 2 and "mount point" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mounted"] and not any(out.iterdir())


def test_a_swap_that_fails_at_the_end_leaves_both_folders_as_they_were(tmp_path, monkeypatch):
    import ctypes
    import errno
    import os

    from zfjax import artifacts

    new, old = tmp_path / "new", tmp_path / "old"
    for folder in (new, old):
        folder.mkdir()
        (folder / "file").write_text(folder.name)

    class Libc:
        def __init__(self, code):
            self.code = code

        def renameat2(self, *args):
            ctypes.set_errno(self.code)
            return -1

    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: Libc(errno.EBUSY))
    with pytest.raises(OSError, match="Device or resource busy"):
        artifacts._exchange(new, old)  # busy: no two-rename fallback, no .old left
    real_rename = os.rename

    def rename(a, b):
        if Path(a) == new:
            raise OSError(errno.EBUSY, "busy")
        real_rename(a, b)

    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: Libc(errno.EINVAL))  # no exchange here
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError):
        artifacts._exchange(new, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old"]
    assert [(f / "file").read_text() for f in (new, old)] == ["new", "old"]


def test_no_page_of_the_site_names_a_path_of_the_machine_it_ran_on(atlas_site):
    """A published atlas leaks nothing: the run folder, weights and data folder are shown by
    their last name, image names relative to the split (class/file)."""
    run, site, _ = atlas_site
    machine = str(run.parent)  # the tiny run and its image folder live under it
    for path in site.rglob("*"):
        if path.suffix in (".html", ".css", ".json"):
            assert machine not in path.read_text(), path
    index = (site / "index.html").read_text()
    assert "<th>run folder</th><td>run</td>" in index and "images [val]" in index
    assert "&quot;source&quot;: &quot;images&quot;" in index and "alpha/alpha0.png" in (site / "conv1.html").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--layers", "fc9"], "fc9"),
    (["--top", "0"], "--top"),
])
def test_bad_input_is_one_line_and_writes_nothing(atlas_site, run_cli, tmp_path, argv, message):
    run, _, _ = atlas_site
    out = tmp_path / "site"
    try:
        code, _, err = run_cli(["atlas", str(run), "--out", str(out)] + argv)
    except SystemExit as stop:  # argparse's own errors
        code, err = stop.code, ""
    assert code == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []
    if err:
        assert message in err and len(err.strip().splitlines()) == 1


def test_given_image_files_make_an_atlas_without_classes(atlas_site, run_cli, tmp_path):
    run, _, _ = atlas_site
    files = sorted((run.parent / "images" / "val").glob("*/*.png"))[:5]
    out = tmp_path / "site"
    code, _, err = run_cli(["atlas", str(run), "--out", str(out), "--layers", "conv1",
                            "--images"] + [str(f) for f in files])
    assert code == 0, err
    page = (out / "conv1.html").read_text()
    assert "strongest classes" not in page and "Mean activation per class" not in page
    assert files[0].name in page  # sources are named by their files
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:05d}.jpg" for i in range(5)]
    assert json.loads((out / site_writer.MANIFEST).read_text())["images"] == 5
