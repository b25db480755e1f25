"""The atlas as a static HTML site: an index, one page per layer, one view per map.

    index.html          the run: config, training curves, accuracy, one entry per layer
    <layer>.html        every feature map of the layer: its top-k deconvnet projections
                        beside the image patches (paper Fig. 2), its strongest classes and,
                        for runs with snapshots, its evolution over the saved epochs (Fig. 4)
    <layer>.html#map-C  map C's full view (stable URL): its top-k at full size, its
                        strongest activation under the deconvnet, guided backprop and the
                        gradient, the images they came from with the receptive field boxed,
                        its mean activation per class (shown with the CSS :target rule, no
                        script needed); each layer page also shows the layer's sanity score
    <layer>/map-CCC*.jpg  the pictures, compressed JPEG, loaded lazily
    images/NNNNN.jpg    each source image once, at its own size (boxes are drawn over it)
    style.css, atlas.json (what was built: layers, images, every file written; its
                        "format": "zfjax-atlas" marks the folder as zfjax's, see read_manifest)

Everything is local and relative: no external URLs, fonts or scripts, so the site
works from file:// and from any static server.
"""

from __future__ import annotations

import html
import json
import os
import pathlib
import re
import shutil
from typing import NamedTuple

import numpy as np
from PIL import Image

from zfjax import render
from zfjax.nets import network
from zfjax.nets.receptive_field import crop_to_receptive_field, receptive_field, receptive_field_size
from zfjax.figures.topk import mosaic

MANIFEST = "atlas.json"  # what was built; its format marker makes the folder a zfjax atlas
FORMAT, VERSION = "zfjax-atlas", 3  # version 1 (no marker, no file list): see read_manifest;
# 3 added the top-1 views of other methods (map-CCC-<view>.jpg) and "views", "sanity"
MANIFEST_MAX_BYTES = 64 << 20  # a larger atlas.json is not one zfjax wrote
CARD_SIDE = 48  # at least this many px per tile on the layer pages (whole multiples of
CARD_MAX = 64   # the receptive field's pixels), at most this many (thumbnails)
FULL_SIDE = 64  # at least this many px per tile in a map's full view (native size above)
SOURCE_SIDE = 160  # px a source image is shown at (stored once, at its own size)
JPEG_QUALITY = 85
CLASSES_ON_CARD = 3
CLASS_BARS = 30  # classes listed in a map's full view (the strongest; all if fewer)
VIEWS = {  # a map's strongest activation, beside the deconvnet: file suffix, label
    "deconvnet": ("deconvnet", "deconvnet (Zeiler &amp; Fergus 2014)"),
    "guided_backprop": ("guided", "guided backprop (Springenberg et al. 2015)"),
    "gradient": ("gradient", "gradient (Simonyan et al. 2014)"),
}
SANITY_MEASURE = ("Spearman rank correlation of |projection| summed over colour, inside the "
                  "unit's receptive field; both deconvnet reverse passes start from 1")
SANITY_RANDOMISATION = ("cascading (Adebayo et al. 2018): the trained weights with every layer "
                        "from the top down to and including this one re-initialised as for "
                        "training (model.init_params) with jax.random.key(seed)")

STYLE = """\
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d1d1f;
background:#f5f5f4}
header,main{padding:0 20px}header{background:#fff;border-bottom:1px solid #ddd;padding-top:8px;
padding-bottom:8px}
nav a,nav b{margin-right:10px}a{color:#0b57a4}h1{font-size:22px;margin:8px 0}
h2{font-size:17px;margin:18px 0 6px}p.note{color:#555;max-width:70em}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}
pre{background:#fff;border:1px solid #ddd;padding:8px;overflow:auto;max-height:30em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:10px;
margin:10px 0 40px}
.map{background:#fff;border:1px solid #ddd;border-radius:4px;padding:6px}
.map:target{grid-column:1/-1;border:2px solid #c65d00}
.card{display:block;text-decoration:none;color:inherit}
.card b{margin-right:8px}.card span{color:#666;font-size:12px}
.map img{display:block;max-width:100%;height:auto;image-rendering:pixelated;margin:4px 0}
.classes{font-size:12px;color:#444;margin:2px 0}
.evo{font-size:11px;color:#666}
.full{display:none}.map:target .full{display:block}
.full figure{margin:10px 0}.full figcaption{font-size:12px;color:#444;max-width:60em}
.sources{display:flex;flex-wrap:wrap;gap:6px}
.src{margin:0;width:160px}.src div{position:relative}.src img{width:100%;margin:0}
.src span{position:absolute;box-sizing:border-box;border:2px solid #ffd200;outline:1px solid #000}
.src figcaption{font-size:11px;overflow-wrap:anywhere}
.bars td{padding:1px 6px;font-size:12px}.bar{background:#c65d00;height:10px}
.views{display:flex;flex-wrap:wrap;gap:12px}.views figure{margin:0}
.views figcaption{max-width:14em}
.layers img{max-width:320px;height:auto;image-rendering:pixelated}
"""


# ---- pictures ----------------------------------------------------------------------


def save_jpeg(pixels: np.ndarray, path: pathlib.Path) -> tuple[int, int]:
    """uint8 (H, W, 3) -> JPEG at ``path``; returns (width, height)."""
    Image.fromarray(np.ascontiguousarray(pixels, np.uint8)).save(
        path, "JPEG", quality=JPEG_QUALITY)
    return pixels.shape[1], pixels.shape[0]


def pairs_pictures(projections: np.ndarray, patches: np.ndarray, sides) -> list[np.ndarray]:
    """Paper Fig. 2 for one map, once per tile side: its top-k projections (3x3) beside
    their image patches.

    projections float32 (k, R, R, 3) in RGB, patches uint8 (k, R, R, 3); each pair is cut
    to the image and scaled to the largest side (``render.fit_pairs``: the costly part,
    done once), smaller sides are scaled down from it (``render.fit_tile``). Returns one
    uint8 (H, W, 3) picture per side.
    """
    sides = list(sides)
    shown, patches = render.fit_pairs(projections, patches, max(sides))
    pictures = []
    for side in sides:
        if side != max(sides):
            shown_s, patches_s = ([render.fit_tile(t, side) for t in tiles] for tiles in (shown, patches))
        else:
            shown_s, patches_s = shown, patches
        grid = int(np.ceil(np.sqrt(len(shown))))
        gap = max(1, side // 24)
        left, right = mosaic(np.stack(shown_s), grid, gap), mosaic(np.stack(patches_s), grid, gap)
        spacer = np.full((left.shape[0], 4 * gap, 3), 255, np.uint8)
        pictures.append(np.concatenate([left, spacer, right], axis=1))
    return pictures


# ---- pages -------------------------------------------------------------------------


def _page(title: str, nav: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)}</title>"
            f'<link rel="icon" href="data:,">'  # no favicon.ico request (a 404 on a server)
            f'<link rel="stylesheet" href="style.css"></head>\n<body>'
            f"<header>{nav}</header>\n<main>{body}</main></body></html>\n")


def _nav(layers, current: str | None) -> str:
    links = ['<a href="index.html">index</a>'] + [
        f"<b>{layer}</b>" if layer == current else f'<a href="{layer}.html">{layer}</a>'
        for layer in layers]
    return "<nav>" + " ".join(links) + "</nav>"


def _img(src: str, size: tuple[int, int], alt: str) -> str:
    return (f'<img loading="lazy" src="{html.escape(src)}" width="{size[0]}" '
            f'height="{size[1]}" alt="{html.escape(alt)}">')


def _fmt(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.3g}"


def _class_bars(means: np.ndarray, labels: list[str], counts: np.ndarray) -> str:
    order = np.argsort(-np.nan_to_num(means, nan=-np.inf), kind="stable")[:CLASS_BARS]
    peak = np.nanmax(np.abs(means)) if np.isfinite(means).any() else 0
    rows = []
    for c in order:
        width = 0 if not peak or not np.isfinite(means[c]) else max(0, means[c]) / peak * 100
        rows.append(f"<tr><td>{html.escape(labels[c])}</td><td>{_fmt(means[c])}</td>"
                    f'<td style="width:300px"><div class="bar" style="width:{width:.1f}%">'
                    f"</div></td><td>{int(counts[c])} images</td></tr>")
    shown = "" if len(order) == len(means) else f" (the {len(order)} strongest of {len(means)})"
    return (f"<h4>Mean activation per class{shown}</h4>"
            f'<table class="bars">{"".join(rows)}</table>')


def _index_page(layers, summary: dict, run: dict, entries: list[str]) -> str:
    body = [f"<h1>{html.escape(run.get('title', 'zfjax atlas'))}</h1>"]
    facts = run.get("facts") or {}
    if facts:
        body.append("<table>" + "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in facts.items()) + "</table>")
    body.append(f'<p class="note">Each layer page shows every feature map with the {summary["k"]} '
                f"strongest activations over {summary['images']} images "
                f"({html.escape(summary['source'])}), projected to pixels by the deconvnet "
                "(left, Zeiler &amp; Fergus 2014, Fig. 2) beside the image patches under "
                "their receptive fields (right). Click a map for its full view.</p>")
    sanity = ("<th>sanity score</th>" if summary.get("sanity") else "")
    body.append("<h2>Layers</h2><table class=\"layers\"><tr><th>layer</th><th>maps</th>"
                f"<th>map size</th><th>receptive field</th>{sanity}<th>strongest map</th></tr>"
                + "".join(entries) + "</table>")
    if summary.get("sanity"):
        body.append(f'<p class="note">{SANITY_NOTE}</p>')
    if run.get("curves"):
        body.append(f"<h2>Training curves</h2>{_img('curves.png', run['curves_size'], 'training curves')}")
    if run.get("metrics"):
        keys = [k for k in run["metrics"][0] if k != "epoch"]
        head = "".join(f"<th>{html.escape(k)}</th>" for k in ["epoch"] + keys)
        rows = "".join("<tr>" + "".join(
            f"<td>{html.escape(_cell(m.get(k)))}</td>" for k in ["epoch"] + keys) + "</tr>"
            for m in run["metrics"])
        body.append(f"<h2>Metrics per epoch</h2><table><tr>{head}</tr>{rows}</table>")
    if run.get("config") is not None:
        body.append("<h2>Configuration</h2><pre>"
                    + html.escape(json.dumps(run["config"], indent=2)) + "</pre>")
    return _page(run.get("title", "zfjax atlas"), _nav(layers, None), "\n".join(body))


SANITY_NOTE = (
    "Sanity score (Adebayo et al. 2018, cascading randomisation): for each map's strongest "
    "activation, the Spearman rank correlation between its deconvnet projection in the "
    "trained network and the same unit's projection (same image, same position) in the "
    "network with every layer from the top down to and including this one re-initialised; "
    "computed on the absolute values summed over colour, inside the unit's receptive field. "
    "Mean &plusmn; standard deviation over the layer's maps. Near 1: the picture barely depends "
    "on the layer's learned weights (it shows the image and the layers below); lower: more "
    "of the picture is the trained layer.")


def _sanity_text(scores: np.ndarray) -> str:
    """'0.62 &plusmn; 0.08 (24 maps)' for a layer's per-map scores (NaN: a map with no image)."""
    shown = scores[np.isfinite(scores)]
    if not len(shown):
        return "-"
    return f"{shown.mean():.2f} &plusmn; {shown.std():.2f} ({len(shown)} maps)"


def _sanity_summary(scores: np.ndarray) -> dict:
    """A layer's sanity scores for atlas.json: mean, std, min, max over its maps with an
    image, their count, and every map's score (null for a map with no image)."""
    shown = scores[np.isfinite(scores)].astype(np.float64)
    stats = ({"mean": float(shown.mean()), "std": float(shown.std()),
              "min": float(shown.min()), "max": float(shown.max())} if len(shown)
             else {"mean": None, "std": None, "min": None, "max": None})
    return {**stats, "maps": int(len(shown)),
            "per_map": [round(float(v), 6) if np.isfinite(v) else None for v in scores]}


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


# ---- the site ----------------------------------------------------------------------


def write_site(config: network.Network, atlas, display, folder, *, names=None, class_names=None,
               rgb=None, snapshots=None, run=None, source: str = "",
               progress=None) -> list[pathlib.Path]:
    """Write the atlas site into ``folder`` (made if missing; existing files are overwritten).

    atlas: ``zfjax.analyses.atlas.Atlas``; display: uint8 (N, H, W, 3) images as shown (or lazily
    made: indexable by an int array), indexed by the atlas's image indices; names: N image
    names or None; class_names: the run's class names (WordNet ids become ImageNet names);
    rgb: the model's ``Preprocessing.rgb`` (projections of BGR networks become RGB);
    snapshots: ``evolution.load_snapshots`` of the run (passed through
    ``evolution.check_epochs``), or None; run: dict with 'title',
    'facts' (shown on the index), 'config' (JSON-able), 'metrics' (list of dicts),
    'curves' (path of curves.png); source: where the images came from, in words.
    progress(desc, total), if given, returns a tqdm-like bar advanced per map written.
    Returns the pages written (index first).
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rgb = rgb or (lambda x: x)
    run = dict(run or {})
    layers = list(atlas.layers)
    counts = atlas.class_count
    labels = render.class_labels(class_names) or (
        [f"class {i}" for i in range(len(counts))] if counts is not None else [])
    (folder / "style.css").write_text(STYLE)
    if run.get("curves"):  # read where it is, so an error names the run's file
        with Image.open(run["curves"]) as im:
            run["curves_size"] = im.size
        shutil.copyfile(run["curves"], folder / "curves.png")
    followed = _followed_maps(snapshots, layers)

    (folder / "images").mkdir(exist_ok=True)
    pages, entries, written = [], [], {}
    total = sum(len(a.top.value) for a in atlas.layers.values())
    bar = progress("writing pages", total) if progress else None
    try:
        for layer, layer_atlas in atlas.layers.items():
            page, strongest_card = _layer_page(folder, config, layer, layer_atlas, display,
                                               names, labels, counts, rgb, followed.get(layer),
                                               atlas.count, source, layers, bar, written)
            pages.append(page)
            c = network.num_channels(config, layer)
            h = network.layer_sizes(config)[layer]
            sanity = ("" if layer_atlas.sanity is None
                      else f"<td>{_sanity_text(layer_atlas.sanity)}</td>")
            entries.append(f'<tr><td><a href="{layer}.html">{layer}</a></td><td>{c}</td>'
                           f"<td>{h}&times;{h}</td><td>{receptive_field_size(config, layer)} px</td>"
                           f"{sanity}<td>{strongest_card}</td></tr>")
    finally:
        if bar is not None:
            bar.close()
    has_sanity = all(a.sanity is not None for a in atlas.layers.values())
    summary = {"k": int(next(iter(atlas.layers.values())).top.value.shape[1]),
               "images": int(atlas.count), "source": source, "sanity": has_sanity}
    index = folder / "index.html"
    index.write_text(_index_page(layers, summary, run, entries))
    files = sorted({MANIFEST} | {name for name in _walk_files(folder)
                                 if written_by_atlas(name, layers)})
    first = next(iter(atlas.layers.values()))
    manifest = {"format": FORMAT, "version": VERSION,
                "layers": {layer: int(len(a.top.value)) for layer, a in atlas.layers.items()},
                "images": int(atlas.count), "source": source, "k": summary["k"],
                "views": _views(first),
                "files": files}
    if has_sanity:
        manifest["sanity"] = {
            "method": "deconvnet", "measure": SANITY_MEASURE,
            "randomisation": SANITY_RANDOMISATION, "seed": atlas.sanity_seed,
            "layers": {layer: _sanity_summary(a.sanity) for layer, a in atlas.layers.items()}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return [index] + pages


# ---- recognising an atlas ----------------------------------------------------------


class Manifest(NamedTuple):
    """The atlas.json of a zfjax atlas. version: its format version; layers: layer -> maps;
    files: the relative paths ('conv1/map-007.jpg') of every file the atlas wrote, or None
    for version 1, which did not list them (``written_by_atlas`` names them then)."""

    version: int
    layers: dict
    files: frozenset | None


_V1_KEYS = {"zfjax_atlas", "layers", "images", "source", "k"}


def read_manifest(folder) -> Manifest | None:
    """The manifest of the zfjax atlas in ``folder``, or None when it is not one.

    An atlas is recognised by what zfjax wrote into its atlas.json, never by the file
    name alone (atlas.json is a common name: sprite atlases): {"format": "zfjax-atlas",
    "version": N, "layers": {...}, ...}. Atlases made before that marker (version 1)
    are recognised strictly by their known content: exactly the keys zfjax_atlas (= 1),
    layers (layer -> maps), images, source and k, beside index.html, style.css and a
    <layer>.html per layer.
    """
    folder = pathlib.Path(folder)
    path = folder / MANIFEST
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MANIFEST_MAX_BYTES:
            return None
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not _layer_counts(data.get("layers")):
        return None
    version = data.get("version")
    if data.get("format") == FORMAT and type(version) is int and version >= 2:
        files = data.get("files")
        if isinstance(files, list) and all(isinstance(f, str) for f in files):
            return Manifest(version, data["layers"], frozenset(files))
        return Manifest(version, data["layers"], None) if version > VERSION else None
    if (set(data) == _V1_KEYS and type(data["zfjax_atlas"]) is int and data["zfjax_atlas"] == 1
            and type(data["images"]) is int and type(data["k"]) is int
            and isinstance(data["source"], str)
            and all((folder / name).is_file() for name in
                    ["index.html", "style.css"] + [f"{layer}.html" for layer in data["layers"]])):
        return Manifest(1, data["layers"], None)
    return None


def _layer_counts(layers) -> bool:
    return (isinstance(layers, dict) and bool(layers)
            and all(isinstance(k, str) and re.fullmatch(r"[A-Za-z0-9_]+", k)
                    and type(v) is int and v > 0 for k, v in layers.items()))


_TOP_FILES = {"index.html", "style.css", MANIFEST, "curves.png"}


def written_by_atlas(name: str, layers) -> bool:
    """Whether an atlas of ``layers`` writes the file at relative path ``name`` (the
    layout in this module's docstring)."""
    parts = name.split("/")
    if len(parts) == 1:
        return name in _TOP_FILES or name in {f"{layer}.html" for layer in layers}
    if len(parts) == 2 and parts[0] == "images":
        return re.fullmatch(r"\d{5,}\.jpg", parts[1]) is not None
    if len(parts) == 2 and parts[0] in layers:
        return re.fullmatch(r"map-\d{3,}(-full|-evolution|-deconvnet|-guided|-gradient)?\.jpg",
                            parts[1]) is not None
    return False


def user_files(folder) -> list[str]:
    """What of the atlas in ``folder`` zfjax did not write: relative paths of the files,
    links and empty folders not in its manifest's list (version 1: not named by
    ``written_by_atlas`` for its layers). Empty for a folder that is not an atlas."""
    folder = pathlib.Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return []
    ours = ((lambda name: name in manifest.files) if manifest.files is not None
            else (lambda name: written_by_atlas(name, manifest.layers)))
    found = [name for name in _walk_files(folder) if not ours(name)]
    for root, dirs, files in os.walk(folder):
        base = pathlib.Path(root).relative_to(folder)
        if root != str(folder) and not dirs and not files and not (
                len(base.parts) == 1 and (base.name == "images" or base.name in manifest.layers)):
            found.append(base.as_posix())  # an empty folder of the user's
    return sorted(found)


def is_partial_site(folder) -> bool:
    """Whether ``folder`` holds only what an interrupted ``write_site`` had written (it
    writes style.css first, then pictures and pages by the layout above, atlas.json last:
    a folder with atlas.json is finished, maybe about to be swapped in)."""
    folder = pathlib.Path(folder)
    if not (folder / "style.css").is_file() or os.path.lexists(folder / MANIFEST):
        return False
    layers = {p.name for p in folder.iterdir() if p.is_dir() and not p.is_symlink()} - {"images"}
    return all(written_by_atlas(name, layers) for name in _walk_files(folder))


def _walk_files(folder: pathlib.Path):
    """Relative posix paths of every non-folder entry under ``folder`` (links not followed)."""
    for root, dirs, files in os.walk(folder):
        base = pathlib.Path(root).relative_to(folder).as_posix()
        prefix = "" if base == "." else base + "/"
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            yield prefix + name


def _followed_maps(snapshots, layers) -> dict:
    """layer -> {channel: (epochs, projections (E, R, R, 3), patch (R, R, 3))} from snapshots."""
    if not snapshots:
        return {}
    epochs = sorted(snapshots)  # checked to follow one probe (evolution.check_epochs)
    last = snapshots[epochs[-1]]
    out = {}
    for layer in layers:
        if f"{layer}/channels" not in last:
            continue
        projections = np.stack([snapshots[e][f"{layer}/projections"] for e in epochs])
        out[layer] = {int(ch): (epochs, projections[:, i], last[f"{layer}/patches"][i])
                      for i, ch in enumerate(last[f"{layer}/channels"])}
    return out


def _layer_page(folder, config, layer, layer_atlas, display, names, labels, counts, rgb,
                followed, count, source, layers, bar, written) -> tuple[pathlib.Path, str]:
    top, projections, class_mean = layer_atlas.top, layer_atlas.projections, layer_atlas.class_mean
    views, sanity = _views(layer_atlas), layer_atlas.sanity
    (folder / layer).mkdir(exist_ok=True)
    c, k = top.value.shape
    r = receptive_field_size(config, layer)
    inside = min(r, config.image_size)  # the most of a receptive field inside the image
    card_side = min(render.display_side(inside, CARD_SIDE), CARD_MAX)
    full_side = render.display_side(inside, FULL_SIDE)
    sections = []
    strongest = int(np.argmax(top.value[:, 0]))
    strongest_card = ""
    for ch in range(c):
        filled = np.flatnonzero(np.isfinite(top.value[ch]))
        image, ys, xs, values = (top.image[ch][filled], top.y[ch][filled], top.x[ch][filled],
                                 top.value[ch][filled])
        stem = f"{layer}/map-{ch:03d}"
        full_name = f"{stem}-full.jpg" if full_side != card_side else f"{stem}.jpg"
        alt = f"{layer} map {ch}"
        if len(filled):
            sources = np.asarray(display[image])
            patches = crop_to_receptive_field(config, layer, sources, ys, xs)
            shown = rgb(projections[ch][filled])
            pictures = pairs_pictures(shown, patches, sorted({card_side, full_side}))
            card = save_jpeg(pictures[0], folder / f"{stem}.jpg")
            full = save_jpeg(pictures[-1], folder / f"{full_name}") if len(pictures) > 1 else card
            if views:  # the strongest activation under each method, cut and scaled alike
                explained = np.stack([projections[ch][filled[0]]]
                                     + [layer_atlas.top1[m][ch] for m in views[1:]])
                tiles, _ = render.fit_pairs(rgb(explained), np.repeat(patches[:1], len(views), 0),
                                            full_side)
            for i, picture in zip(image.tolist(), sources):
                if i not in written:  # each source image once for the whole site
                    written[i] = save_jpeg(picture, folder / _source_path(i))
        peak = _fmt(values[0]) if len(values) else "-"
        parts = [f'<section class="map" id="map-{ch}">',
                 f'<a class="card" href="#map-{ch}" title="{alt}: full view"><b>#{ch}</b>'
                 f"<span>top activation {peak}</span>"]
        if len(filled):
            parts.append(_img(f"{stem}.jpg", card, f"{alt}: top {len(filled)} projections "
                                                   f"and image patches"))
            if ch == strongest:
                strongest_card = (f'<a href="{layer}.html#map-{ch}">#{ch}</a><br>'
                                  + _img(f"{stem}.jpg", card, f"{alt}: top projections"))
        parts.append("</a>")
        if class_mean is not None and labels:
            best = np.argsort(-np.nan_to_num(class_mean[ch], nan=-np.inf), kind="stable")
            parts.append('<p class="classes">strongest classes: ' + ", ".join(
                f"{html.escape(labels[i])} {_fmt(class_mean[ch, i])}"
                for i in best[:CLASSES_ON_CARD]) + "</p>")
        if followed and ch in followed:
            epochs, evo_projections, evo_patch = followed[ch]
            block = render.evolution_block(rgb(evo_projections)[:, None], evo_patch[None], CARD_SIDE)
            size = save_jpeg(block, folder / f"{stem}-evolution.jpg")
            parts.append(f'<div class="evo">evolution over epochs {epochs[0]}&ndash;{epochs[-1]} '
                         f"(strongest projection on the run's probe images each epoch, then the "
                         f"last one's patch)" + _img(f"{stem}-evolution.jpg", size,
                                                    f"{alt}: evolution") + "</div>")
        parts.append('<div class="full">')
        parts.append(f'<h3>{layer} map {ch} <a href="#">(close)</a></h3>')
        if len(filled):
            zoom = max(1, -(-2 * FULL_SIDE // full_side))  # tiles shown at >= 128 px
            parts.append(f"<figure>{_img(full_name, (full[0] * zoom, full[1] * zoom), f'{alt}: top projections, full size')}"
                         f"<figcaption>The {len(filled)} strongest activations over {count} "
                         f"images, strongest first: deconvnet projections (left) and the image "
                         f"patches under their {r}&times;{r} px receptive fields "
                         f"(right).</figcaption></figure>")
            if views:
                score = ("" if sanity is None or not np.isfinite(sanity[ch]) else
                         f" Sanity score of this map: {sanity[ch]:.2f} (rank correlation of "
                         f"its deconvnet projection with the same unit's in the cascade-"
                         f"randomised network; see the note at the top).")
                parts.append("<h4>The strongest activation, three ways</h4>"
                             + _view_figures(folder, stem, alt, dict(zip(views, tiles)), zoom)
                             + f'<p class="note">The first activation above explained by '
                             f"each method, each picture stretched on its own (grey is 0); its "
                             f"image patch is the first on the right above.{score}</p>")
            parts.append("<h4>The images they came from, receptive field boxed</h4>"
                         + _sources(config, layer, image, values, ys, xs, names))
        else:
            parts.append("<p>No images.</p>")
        if class_mean is not None and labels:
            parts.append(_class_bars(class_mean[ch], labels, counts))
        parts.append("</div></section>")
        sections.append("".join(parts))
        if bar is not None:
            bar.update(1)
    h = network.layer_sizes(config)[layer]
    followed_note = ""
    if followed:
        links = ", ".join(f'<a href="#map-{ch}">#{ch}</a>' for ch in sorted(followed))
        followed_note = f" The run followed maps {links} over training (their evolution is shown)."
    body = (f"<h1>{layer}</h1><p class=\"note\">{c} feature maps of {h}&times;{h}, receptive "
            f"field {r}&times;{r} px. Each map: its {k} strongest activations over {count} images "
            f"({html.escape(source)}), one per image, projected to pixels by the deconvnet (left) "
            f"beside the image patches under their receptive fields (right); each projection "
            f"is contrast-stretched on its own.{followed_note} Click a map for its full view; "
            f"its address ({layer}.html#map-N) is stable.</p>"
            + ("" if sanity is None else
               f"<p class=\"note\"><b>Sanity score of {layer}: {_sanity_text(sanity)}</b>. "
               f"{SANITY_NOTE}</p>")
            + '<div class="grid">' + "\n".join(sections) + "</div>")
    page = folder / f"{layer}.html"
    page.write_text(_page(f"{layer} | zfjax atlas", _nav(layers, layer), body))
    return page, strongest_card


def _views(layer_atlas) -> list[str]:
    """The methods a map's full view shows its strongest activation under ([] when only
    the top-k deconvnet picture): the deconvnet, then those of ``layer_atlas.top1``."""
    if not layer_atlas.top1:
        return []
    return ["deconvnet"] + [m for m in VIEWS if m in layer_atlas.top1]


def _view_figures(folder, stem: str, alt: str, tiles: dict, zoom: int) -> str:
    """A map's strongest activation under each method, one labelled picture each.

    tiles: method -> uint8 (S, S, 3), each written to ``<stem>-<suffix>.jpg``."""
    figures = []
    for method, tile in tiles.items():
        suffix, label = VIEWS[method]
        size = save_jpeg(tile, folder / f"{stem}-{suffix}.jpg")
        figures.append(f"<figure>{_img(f'{stem}-{suffix}.jpg', (size[0] * zoom, size[1] * zoom), f'{alt}: {html.unescape(label)}')}"
                       f"<figcaption>{label}</figcaption></figure>")
    return '<div class="views">' + "".join(figures) + "</div>"


def _source_path(i: int) -> str:
    return f"images/{int(i):05d}.jpg"


def _sources(config, layer, image, values, ys, xs, names) -> str:
    """The source images of a map's top k, each with its unit's receptive field (clipped to
    the image) drawn over it as a box in percent of the image side."""
    n = config.image_size
    top, left, bottom, right = receptive_field(config, layer, np.asarray(ys), np.asarray(xs))
    cells = []
    for j, i in enumerate(image.tolist()):
        box = (f"left:{100 * left[j] / n:.2f}%;top:{100 * top[j] / n:.2f}%;"
               f"width:{100 * (right[j] - left[j]) / n:.2f}%;"
               f"height:{100 * (bottom[j] - top[j]) / n:.2f}%")
        name = _name(names, i)
        cells.append(f'<figure class="src"><div>{_img(_source_path(i), (n, n), name)}'
                     f'<span style="{box}"></span></div><figcaption>{j + 1}. {html.escape(name)}: '
                     f"{_fmt(values[j])} at (y {int(ys[j])}, x {int(xs[j])})</figcaption></figure>")
    return '<div class="sources">' + "".join(cells) + "</div>"


def _name(names, i) -> str:
    return f"image {int(i)}" if names is None else str(names[int(i)])
