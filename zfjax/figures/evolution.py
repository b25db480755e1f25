"""Paper Fig. 4: feature evolution, one block per layer, maps (rows) over epochs (columns),
from the snapshots of ``zfjax.analyses.evolution``."""

from __future__ import annotations

import numpy as np

from zfjax import render
from zfjax.nets import model

DPI = 100
_SCREEN_WIDTH = 1900  # pixels the whole figure aims to fit
_BLOCK_GAP = 44  # pixels between blocks
_HEADER, _FOOTER = 44, 30  # pixels for the title and column heads, and the layer names


def tile_side(layers: int, columns: int, screen: int = _SCREEN_WIDTH) -> int:
    """Pixel side of one tile so that ``layers`` blocks of ``columns`` tiles fit ``screen``."""
    per_block = (screen - _BLOCK_GAP * (layers + 1)) / layers - render.PATCH_GAP
    return int(min(96, max(32, per_block // columns - render.TILE_GAP)))


def evolution_figure(snapshots: dict, epochs, *, title: str | None = None):
    """Paper Fig. 4 from loaded snapshots (epoch -> arrays); returns a matplotlib Figure.

    One block per conv layer, side by side as in the paper: rows are the
    followed maps ("#17" at the left), columns the epochs, each tile the map's
    strongest projection that epoch; a last column shows the image patch of the
    last epoch drawn. Drawn pixel for pixel (one image per block), sized to fit
    a screen about 1900 px wide.
    """
    from matplotlib.figure import Figure

    epochs = sorted(epochs)
    last = snapshots[epochs[-1]]
    layers = sorted((key.split("/")[0] for key in last if key.endswith("/channels")),
                    key=model.network.layer_order)
    side = tile_side(len(layers), len(epochs) + 1)
    blocks = [render.evolution_block(
        np.stack([snapshots[e][f"{layer}/projections"] for e in epochs]),
        last[f"{layer}/patches"], side) for layer in layers]
    width = _BLOCK_GAP + sum(b.shape[1] + _BLOCK_GAP for b in blocks)
    height = _HEADER + max(b.shape[0] for b in blocks) + _FOOTER
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    x = _BLOCK_GAP
    for layer, block in zip(layers, blocks):
        bh, bw = block.shape[:2]
        ax = fig.add_axes((x / width, 1 - (_HEADER + bh) / height, bw / width, bh / height))
        ax.imshow(block, interpolation="nearest")
        ax.set_axis_off()
        step = side + render.TILE_GAP
        heads = [str(e) for e in epochs] + ["patch"]
        for j, head in enumerate(heads):
            cx = j * step + side / 2 + (render.PATCH_GAP if j == len(epochs) else 0)
            ax.text(cx, -4, head, ha="center", va="bottom", fontsize=7)
        for i, channel in enumerate(last[f"{layer}/channels"]):
            ax.text(-4, i * step + side / 2, f"#{int(channel)}", ha="right", va="center",
                    fontsize=6)
        ax.text(bw / 2, bh + 6, layer, ha="center", va="top", fontsize=10, weight="bold")
        x += bw + _BLOCK_GAP
    fig.text(0.5, 1 - 4 / height, (title + ": " if title else "")
             + "strongest projection of followed feature maps (rows) at epochs (columns)",
             ha="center", va="top", fontsize=9)
    return fig
