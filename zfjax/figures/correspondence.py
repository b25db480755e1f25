"""Paper Table 1 as a figure: the images with their part boxes, and Delta per part and layer
(core ``zfjax.analyses.correspondence``)."""

from __future__ import annotations

import numpy as np


def plot_correspondence(display: np.ndarray, boxes: np.ndarray, random: np.ndarray,
                        part_names, rows: list[dict], names, title: str | None = None):
    """Images with their part boxes (solid) and the first random draw (dashed),
    and Delta per part and layer with error bars. Returns a matplotlib Figure."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n = len(display)
    fig = Figure(figsize=(max(2.4 * n, 8), 6.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.3])
    axes = np.atleast_1d(top.subplots(1, n))
    for i, ax in enumerate(axes):
        ax.imshow(display[i], interpolation="nearest")
        for p, name in enumerate(part_names):
            for box, style in ((boxes[i, p], "-"), (random[0, i, p], ":")):
                t, l, b, r = box
                ax.add_patch(Rectangle((l - 0.5, t - 0.5), r - l, b - t, fill=False, lw=1.5,
                                       ls=style, color=f"C{p}",
                                       label=name if style == "-" and i == 0 else None))
        ax.set_title(names[i], fontsize=8)
        ax.axis("off")
    top.legend(loc="outside right center", fontsize=8,
               title="parts (dotted: a random box\nof the same size)", title_fontsize=7)
    ax = bottom.subplots()
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    parts = list(dict.fromkeys(r["part"] for r in rows))
    width = 0.8 / len(layers)
    for k, layer in enumerate(layers):
        sel = [next(r for r in rows if r["layer"] == layer and r["part"] == p) for p in parts]
        ax.bar(np.arange(len(parts)) + (k - (len(layers) - 1) / 2) * width,
               [r["delta"] for r in sel], width, yerr=[r["std"] for r in sel], capsize=3,
               label=f"layer {layer}", color=f"C{k}")
    ax.set_xticks(np.arange(len(parts)), parts)
    ax.set_ylabel("Delta: mean sign disagreement\nof feature changes over image pairs")
    ax.set_title("Part correspondence (Table 1): lower = more consistent; error bars: std "
                 "over image pairs (parts) or draws (random)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
