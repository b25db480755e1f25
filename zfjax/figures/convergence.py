"""Paper Fig. 4 measured: features compared with the final epoch's, against epochs (core
``zfjax.analyses.convergence``)."""

from __future__ import annotations

import numpy as np

from zfjax.analyses.convergence import SETTLED, Convergence


def plot_convergence(result: Convergence, *, title: str | None = None,
                     threshold: float = SETTLED):
    """Left: median (line) and quartiles (band) of the projection correlation with the final
    epoch, per layer; right: mean top-9 image overlap per kept checkpoint. A Figure."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = 2 if len(result.overlap_epochs) else 1
    fig = Figure(figsize=(6.2 * panels, 4.2), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for layer, corr in result.projection_corr.items():
        q1, median, q3 = np.percentile(corr, [25, 50, 75], axis=1)
        line, = axes[0].plot(result.epochs, median, "o-", ms=3, label=layer)
        axes[0].fill_between(result.epochs, q1, q3, color=line.get_color(), alpha=0.12)
    axes[0].axhline(threshold, color="0.5", ls=":", lw=1)
    axes[0].set(xlabel="epoch", ylabel=f"correlation with epoch {int(result.epochs[-1])}",
                title="strongest projection of followed maps\n(median, quartile band)",
                ylim=(-0.1, 1.05))
    axes[0].legend(fontsize=8)
    if panels == 2:
        for layer, overlap in result.top_overlap.items():
            axes[1].plot(result.overlap_epochs, overlap.mean(axis=1), "s-", ms=4, label=layer)
        axes[1].set(xlabel="epoch (kept checkpoints)",
                    ylabel=f"top-9 overlap with epoch {int(result.overlap_epochs[-1])}",
                    title="top-9 probe images of every map\n(mean over maps)", ylim=(-0.05, 1.05))
        axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, not 2.5
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
