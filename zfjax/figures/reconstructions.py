"""Deconvnet reconstructions, whole layer and strongest activation (core
``zfjax.analyses.reconstructions``)."""

from __future__ import annotations

from zfjax import render


def plot_reconstructions(displays, results, layers, image_names):
    """Rows A (whole layer) and B (strongest activation) per image; columns: input, layers.

    displays uint8 (N, H, W, 3); results: N ``reconstructions.Reconstruction`` (numpy,
    projections in RGB).
    Each projection is contrast-normalised on its own (``render.to_display``).
    """
    from matplotlib.figure import Figure

    n, cols = len(results), len(layers) + 1
    cell = 2.2
    fig = Figure(figsize=(cell * cols + 0.8, (cell + 0.45) * 2 * n + 0.7))
    grid = fig.add_gridspec(2 * n, cols, wspace=0.06, hspace=0.35)
    for i, res in enumerate(results):
        whole, strongest = render.to_display(res.whole), render.to_display(res.strongest)
        for row, (mode, shown) in enumerate((("A: whole layer", whole),
                                             ("B: strongest activation", strongest))):
            ax = fig.add_subplot(grid[2 * i + row, 0])
            ax.imshow(displays[i])
            ax.set_title("input\n" + image_names[i].replace("/", "/\n") if row == 0 else "input",
                         fontsize=8)
            ax.set_ylabel(mode, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            for j, layer in enumerate(layers):
                ax = fig.add_subplot(grid[2 * i + row, j + 1])
                ax.imshow(shown[j])
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(f"{layer}: all activations", fontsize=9)
                else:
                    c, y, x = (int(v) for v in res.unit[j])
                    ax.set_title(f"{layer} map #{c} at ({y}, {x})\nvalue {float(res.value[j]):.3g}",
                                 fontsize=9)
    fig.suptitle("Deconvnet reconstructions: (A) the whole layer, (B) its single strongest "
                 "activation", fontsize=11)
    return fig
