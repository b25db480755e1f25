"""Paper Fig. 6: conv1 filters, their strengths and conv2 features, one column per run
(core ``zfjax.analyses.filters``)."""

from __future__ import annotations

import math

import numpy as np

from zfjax import render
from zfjax.analyses import filters


def grid(patches: np.ndarray, columns: int | None = None, *, pad: int = 1,
         fill=1.0) -> np.ndarray:
    """Lay K patches (K, h, w, C) out row-major: (rows*(h+pad)+pad, columns*(w+pad)+pad, C).

    Patch k goes to row k // columns, column k % columns, its top-left pixel at
    ``cell_origin(k, ...)``; gaps and unused cells hold ``fill``. columns
    defaults to ceil(sqrt(K)).
    """
    patches = np.asarray(patches)
    k, h, w, c = patches.shape
    columns = columns or math.ceil(math.sqrt(k))
    rows = math.ceil(k / columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), fill, patches.dtype)
    for i, patch in enumerate(patches):
        top, left = cell_origin(i, columns, h, w, pad)
        out[top:top + h, left:left + w] = patch
    return out


def cell_origin(index: int, columns: int, h: int, w: int, pad: int = 1) -> tuple[int, int]:
    """Top-left pixel (y, x) of patch ``index`` in ``grid``'s layout."""
    row, col = divmod(index, columns)
    return pad + row * (h + pad), pad + col * (w + pad)


def plot_filters(panels: list[dict], title: str | None = None):
    """One column per run: conv1 filter grid, conv1 filter RMS, conv2 features.

    Each panel: {'name', 'kernel' HWIO conv1 kernel with RGB inputs, 'radius' float or
    None, 'features' (``filters.layer2_features``, projections in RGB, or None), 'images'
    int (searched)}.
    Returns a matplotlib Figure.
    """
    from matplotlib.figure import Figure

    has_features = any(p.get("features") is not None for p in panels)
    rows = 3 if has_features else 2
    fig = Figure(figsize=(6.2 * len(panels), 6.4 + 5.4 * has_features), layout="constrained")
    axes = fig.subplots(rows, len(panels), squeeze=False,
                        height_ratios=[3, 1.4, 3.4][:rows])
    top = max(float(np.asarray(filters.filter_rms(p["kernel"])).max()) for p in panels)
    for col, panel in zip(axes.T, panels):
        kernel = np.asarray(panel["kernel"])
        k, _, _, n = kernel.shape
        col[0].imshow(grid(np.asarray(filters.filter_patches(kernel))), interpolation="nearest")
        col[0].set_title(f"{panel['name']}\nconv1: {n} filters, {k}x{k}, each stretched "
                         f"min..max", fontsize=9)
        col[0].axis("off")
        rms = np.asarray(filters.filter_rms(kernel))
        col[1].bar(np.arange(n), rms, width=1.0, color="C0")
        if panel.get("radius"):
            col[1].axhline(panel["radius"], color="C3", ls="--", lw=1,
                           label=f"renormalisation radius {panel['radius']:g}")
            col[1].legend(fontsize=7, loc="upper right")
        col[1].set_ylim(0, top * 1.1)
        col[1].set_xlim(-0.5, n - 0.5)
        col[1].set_xlabel("conv1 filter", fontsize=8)
        col[1].set_ylabel("RMS", fontsize=8)
        col[1].set_title("conv1 filter strength (RMS of weights)", fontsize=9)
        col[1].tick_params(labelsize=7)
        if has_features:
            f = panel.get("features")
            if f is None:
                col[2].axis("off")
                continue
            cells, _ = render.fit_pairs(f.projections, f.patches,
                                        render.display_side(f.projections.shape[1]))
            col[2].imshow(grid(cells, fill=255), interpolation="nearest")
            col[2].set_title(f"conv2: strongest activation of its {len(cells)} most active "
                             f"maps\nover {panel['images']} images, deconvnet projections "
                             f"({f.projections.shape[1]} px RF)", fontsize=9)
            col[2].axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
