"""Paper Table 7 and Fig. 9: accuracy of linear classifiers per layer, and of the top
layer's softmax against training images per class (core ``zfjax.analyses.transfer``)."""

from __future__ import annotations

import numpy as np

from zfjax.analyses.transfer import Curve, LayerResult, Scratch


def plot_transfer(rows: list[LayerResult], curve: Curve | None, *, title: str | None = None,
                  chance: float | None = None, layer: str = "fc7",
                  scratch: Scratch | None = None):
    """Left: test accuracy of a linear classifier per layer (Table 7); right: the softmax
    on ``layer`` retrained on n images per class, test accuracy mean +- std over draws
    (Fig. 9), and with ``scratch`` the network trained from scratch on those images
    (Table 4's "no pretraining")."""
    from matplotlib.figure import Figure

    panels = 1 + (curve is not None)
    fig = Figure(figsize=(5.8 * panels, 4.2), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    x = np.arange(len(rows))
    axes[0].bar(x, [100 * r.test_accuracy for r in rows], color="C0", label="test")
    axes[0].plot(x, [100 * r.held_out_accuracy for r in rows], "o", color="C1",
                 label="held-out part of train (picks L2)")
    for i, r in enumerate(rows):  # inside the bar's foot: clear of the held-out dots
        axes[0].text(i, 1.5, f"{100 * r.test_accuracy:.1f}", ha="center", va="bottom",
                     fontsize=8, color="white", fontweight="bold")
    axes[0].set_xticks(x, [f"{r.layer}\n{r.dims}" for r in rows], fontsize=8)
    axes[0].set(ylabel="accuracy (%)",
                title="linear classifier on each layer (Table 7)")
    if curve is not None:
        axes[1].errorbar(curve.per_class, 100 * curve.mean, yerr=100 * curve.std, fmt="o-",
                         capsize=3, label=f"{layer} softmax, {curve.accuracy.shape[1]} draws")
        if scratch is not None:
            axes[1].plot(scratch.per_class, 100 * scratch.accuracy, "s--", color="C3",
                         label=f"no pretraining (from scratch, {scratch.epochs} epochs)")
        axes[1].set(xlabel="training images per class", ylabel="test accuracy (%)",
                    title=f"softmax retrained on {layer} (Fig. 9)")
    for ax in axes:
        if chance is not None:
            ax.axhline(100 * chance, color="0.5", ls=":", lw=1, label="chance")
        ax.grid(alpha=0.3, axis="y")
        # Accuracies stay under 100%: the band above holds the legend, so it covers no data.
        ax.set_ylim(0, 128)
        ax.set_yticks(range(0, 101, 20))
        ax.legend(fontsize=8, loc="upper center", ncol=2, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
