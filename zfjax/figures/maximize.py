"""Activation maximisation: the optimised images and their responses over the steps (core
``zfjax.analyses.maximize``)."""

from __future__ import annotations

import numpy as np


def plot_maximize(pictures: np.ndarray, labels, values: np.ndarray, *, title: str | None = None,
                  columns: int = 4):
    """Grid of the optimised images (uint8 (K, H, W, 3)) titled with their labels and
    final responses, and the response of each unit over the steps. Returns a Figure."""
    from matplotlib.figure import Figure

    k = len(pictures)
    columns = min(columns, k)
    rows = -(-k // columns)
    fig = Figure(figsize=(2.6 * columns, 2.8 * rows + 2.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.8 * rows, 2.4])
    axes = np.atleast_1d(top.subplots(rows, columns)).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < k:
            ax.imshow(pictures[i], interpolation="nearest")
            stuck = " (inactive: no gradient)" if not np.any(values[i]) else ""
            ax.set_title(f"{labels[i]}\nresponse {values[i, -1]:.3g}{stuck}", fontsize=8)
    ax = bottom.subplots()
    for i in range(k):
        ax.plot(values[i], color=f"C{i % 10}", label=labels[i], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("unit response")
    ax.set_title("response during gradient ascent", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=max(1, k // 10), loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
