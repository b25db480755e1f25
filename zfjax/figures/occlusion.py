"""Paper Fig. 7: occlusion sensitivity, five columns per image (core ``zfjax.analyses.occlusion``)."""

from __future__ import annotations

import numpy as np

from zfjax import render


def plot_occlusion(results, displays, projections, picks, pick_names, steps, size: int,
                   layer: str, class_names, image_names):
    """Paper Fig. 7: per image (rows), (a) input with occluder, (b) map total, (c)
    projections, (d) p(correct class), (e) most probable class, over occluder positions.

    results: N ``occlusion.OcclusionMaps`` (numpy); displays uint8 (N, H, W, 3);
    projections float32 RGB (N, K, H, W, 3); picks int (N, K, 2). Returns a Figure.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle
    import matplotlib

    n = len(results)
    h = displays.shape[1]
    fig = Figure(figsize=(18, 3.6 * n + 0.6))
    outer = fig.add_gridspec(n, 5, width_ratios=[1, 1.25, 1, 1.25, 1.6], wspace=0.35, hspace=0.45)
    step = (steps[1] - steps[0]) if len(steps) > 1 else size
    centres = steps + size / 2
    extent = (centres[0] - step / 2, centres[-1] + step / 2, centres[-1] + step / 2,
              centres[0] - step / 2)
    name_of = lambda c: class_names[c] if class_names is not None and c < len(class_names) else str(c)
    palette = matplotlib.colormaps["tab20"].colors

    def square(ax, top, left, color):
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, lw=1.5,
                               edgecolor=color))

    def position_axes(ax, title):
        ax.set_xlim(-0.5, h - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("occluder centre x (px)", fontsize=8)
        ax.set_ylabel("occluder centre y (px)", fontsize=8)
        ax.tick_params(labelsize=7)

    for r, res in enumerate(results):
        label, channel = int(res.label), int(res.channel)
        clean = res.clean
        # (a) the input, with the occluder that hurts the correct class most.
        ax = fig.add_subplot(outer[r, 0])
        ax.imshow(displays[r])
        square(ax, *picks[r][2], "red")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"(a) {image_names[r]}\ntrue: {name_of(label)}", fontsize=9)
        ax.set_xlabel("red: occluder of lowest p(true)", fontsize=8)
        # (b) total activation of the strongest feature map.
        ax = fig.add_subplot(outer[r, 1])
        im = ax.imshow(res.map_total, extent=extent, cmap="viridis", interpolation="nearest")
        position_axes(ax, f"(b) {layer} map #{channel}: total activation\n"
                          f"(unoccluded: {float(clean.map_total):.3g})")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
        # (c) projections of the map's top activation, unoccluded and occluded.
        cells = outer[r, 2].subgridspec(2, 2, wspace=0.08, hspace=0.3)
        shown = render.to_display(projections[r])
        for k in range(min(4, len(shown))):
            ax = fig.add_subplot(cells[k // 2, k % 2])
            ax.imshow(shown[k])
            if picks[r][k][0] >= 0:
                square(ax, *picks[r][k], "black")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(("(c) " if k == 0 else "") + pick_names[k], fontsize=7, pad=2)
        # (d) probability of the correct class.
        ax = fig.add_subplot(outer[r, 3])
        im = ax.imshow(res.p_true, extent=extent, cmap="magma", vmin=0,
                       interpolation="nearest")
        position_axes(ax, f"(d) p({name_of(label)})\n(unoccluded: {float(clean.p_true):.3f})")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
        # (e) most probable class, one colour per class present.
        ax = fig.add_subplot(outer[r, 4])
        present = np.unique(res.top_class)
        index = np.searchsorted(present, res.top_class)
        colours = [palette[(2 * i) % 20 + (2 * i) // 20 % 2] for i in range(len(present))]
        ax.imshow(index, extent=extent, cmap=ListedColormap(colours), vmin=-0.5,
                  vmax=len(present) - 0.5, interpolation="nearest")
        position_axes(ax, "(e) most probable class")
        handles = [Patch(color=colours[i], label=name_of(int(c)) + (" (true)" if c == label else ""))
                   for i, c in enumerate(present)]
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1),
                  borderaxespad=0, frameon=False)
    return fig
