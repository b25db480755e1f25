"""Paper Fig. 2: per feature map, its top-k projections beside their image patches."""

from __future__ import annotations

import numpy as np

from zfjax import render


def mosaic(cells: np.ndarray, side: int, gap: int) -> np.ndarray:
    """uint8 cells (k, R, R, 3) -> one (side*R + (side-1)*gap)^2 image, row-major, white gaps."""
    k, r = cells.shape[:2]
    n = side * r + (side - 1) * gap
    out = np.full((n, n, 3), 255, np.uint8)
    for j in range(k):
        y, x = (j // side) * (r + gap), (j % side) * (r + gap)
        out[y:y + r, x:x + r] = cells[j]
    return out


def plot_topk(layer: str, channels, values: np.ndarray, projections: np.ndarray,
              patches: np.ndarray, *, title: str | None = None, columns: int = 3):
    """Paper Fig. 2 for one layer: per map, its top-k projections (3x3) beside their patches.

    channels int (M,); values float32 (M, k); projections float32 RGB and patches
    uint8 (M, k, R, R, 3) (``deconv.project_strongest``). Each pair is cut to the image and
    enlarged by whole pixels to at least 48 px, each projection stretched on its own
    (``render.fit_pairs``). Returns a matplotlib Figure.
    """
    from matplotlib.figure import Figure

    m, k = values.shape
    r = render.display_side(projections.shape[2])
    shown, patches = render.fit_pairs(projections, patches, r)
    side = int(np.ceil(np.sqrt(k)))
    gap = max(1, r // 20)
    columns = max(1, min(columns, m))
    rows = -(-m // columns)
    block = 1.9  # inches per 3x3 grid
    fig = Figure(figsize=(columns * (2 * block + 0.5) + 0.3, rows * (block + 0.45) + 0.9))
    grid = fig.add_gridspec(rows, columns, wspace=0.08, hspace=0.25, top=1 - 0.75 / fig.get_figheight(),
                            bottom=0.02, left=0.02, right=0.98)
    for i, c in enumerate(np.asarray(channels)):
        left = mosaic(shown[i], side, gap)
        right = mosaic(patches[i], side, gap)
        spacer = np.full((left.shape[0], 4 * gap + r // 6, 3), 255, np.uint8)
        ax = fig.add_subplot(grid[i // columns, i % columns])
        ax.imshow(np.concatenate([left, spacer, right], axis=1), interpolation="nearest")
        ax.set_axis_off()
        best = values[i][np.isfinite(values[i])]
        peak = f"{best.max():.3g}" if best.size else "-"
        ax.set_title(f"{layer} map #{int(c)}   (top activation {peak})", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
