"""Paper Fig. 5: invariance to translation, scale and rotation (core ``zfjax.analyses.invariance``)."""

from __future__ import annotations

import numpy as np

from zfjax.analyses.invariance import LAYER7, TRANSFORMS

AXIS_LABELS = {"translate": "vertical translation (pixels)", "scale": "scale (ratio)",
               "rotate": "rotation (degrees)"}


def plot_invariance(curves: dict, examples: dict, names, *, layer1: str = "pool1",
                    title: str | None = None):
    """The paper's Fig. 5 layout: rows translate / scale / rotate; columns: example
    transformed images, layer-1 distance, layer-7 distance, P(true class).

    curves: kind -> {'amounts' (T,), 'layer1' (N, T), 'layer7' (N, T), 'prob' (N, T)};
    examples: kind -> (amounts (E,), uint8 images (E, H, W, 3)) of the first image.
    Returns a matplotlib Figure.
    """
    from matplotlib.figure import Figure

    kinds = [k for k in TRANSFORMS if k in curves]
    fig = Figure(figsize=(17, 3.6 * len(kinds)), layout="constrained")
    axes = fig.subplots(len(kinds), 4, squeeze=False, width_ratios=[1.5, 1, 1, 1])
    colours = [f"C{i}" for i in range(len(names))]
    for row, kind in zip(axes, kinds):
        c = curves[kind]
        amounts, pictures = examples[kind]
        row[0].imshow(np.concatenate(list(pictures), axis=1), interpolation="nearest")
        row[0].set_xticks([(i + 0.5) * pictures.shape[2] for i in range(len(amounts))],
                          [_amount_label(kind, a) for a in amounts], fontsize=8)
        row[0].set_yticks([])
        row[0].set_title(f"{kind}: {names[0]}", fontsize=9)
        for ax, key, label in ((row[1], "layer1", f"distance, layer 1 ({layer1})"),
                               (row[2], "layer7", f"distance, layer 7 ({LAYER7})"),
                               (row[3], "prob", "P(true class)")):
            for i, name in enumerate(names):
                ax.plot(c["amounts"], c[key][i], "-o", ms=3, color=colours[i], label=name)
            ax.set_xlabel(AXIS_LABELS[kind], fontsize=9)
            ax.set_ylabel(label, fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
        row[3].set_ylim(-0.02, 1.02)
    fig.legend(*axes[0, 1].get_legend_handles_labels(), loc="outside lower center",
               ncol=min(len(names), 5), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _amount_label(kind: str, amount: float) -> str:
    return {"translate": f"{amount:+.0f} px", "scale": f"x{amount:.2f}",
            "rotate": f"{amount:.0f}°"}[kind]
