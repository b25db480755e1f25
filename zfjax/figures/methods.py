"""Attribution methods side by side: two rows per image (its strongest unit, its predicted
class), one column per method (core ``zfjax.analyses.methods``)."""

from __future__ import annotations

import numpy as np

from zfjax import render
from zfjax.analyses.methods import TARGETS

TITLES = {"deconvnet": "deconvnet", "guided_backprop": "guided backprop",
          "gradient": "gradient", "gradient_x_input": "gradient × input",
          "smoothgrad": "SmoothGrad", "integrated_gradients": "integrated gradients",
          "grad_cam": "Grad-CAM"}
COLOURS = "RdBu_r"  # blue negative, white zero, red positive


def shown_map(attribution_map: np.ndarray) -> np.ndarray:
    """How a map is shown: uint8 (H, W), 128 = zero, 255 / 0 = +- its scale.

    A per-input-value map (H, W, 3) is summed over the colour channels (a pixel's
    attribution) and stretched as ``render.to_display`` stretches a projection (its 99th
    percentile |value| -> 0 / 255, beyond saturates). A Grad-CAM map (H, W), >= 0, is
    scaled by its maximum: 128 .. 255.
    """
    m = np.asarray(attribution_map, np.float32)
    if m.ndim == 3:
        return render.to_display(m.sum(-1)[..., None])[..., 0]
    top = float(m.max())
    scaled = m / top if top > 0 else np.zeros_like(m)
    return np.clip(np.round(127.5 + 127.5 * scaled), 0, 255).astype(np.uint8)


def plot_methods(displays, explained, methods, layer: str, class_names, image_names,
                 labels=None, *, boxes=None, cam_layers=(None, None), notes=None):
    """Rows: per image, its strongest ``layer`` unit, then its predicted class; columns:
    the input, then one per method (``shown_map``, colours ``COLOURS`` from -1 to 1).

    displays uint8 (N, H, W, 3); explained: N ``methods.Explained``; labels int (N,) or
    None; boxes int (N, 4) each unit's receptive field (top, left, bottom, right), drawn
    on the input; cam_layers: Grad-CAM's layer for the unit and the class rows; notes:
    method -> a line under its column title. Returns a Figure.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n, cols = len(explained), len(methods) + 1
    cell = 1.9
    height = (2 * cell + 0.55) * n + 0.9
    fig = Figure(figsize=(cell * cols + 0.6, height))
    # Title above, caption below: fixed inches, whatever the number of images. An
    # image's two rows sit closer together than two images.
    outer = fig.add_gridspec(n, 1, hspace=0.14, top=1 - 0.75 / height, bottom=0.4 / height,
                             left=0.05, right=0.99)
    name_of = lambda c: (class_names[c] if class_names is not None and c < len(class_names)
                         else f"class {c}")
    for i, e in enumerate(explained):
        channel, y, x = (int(v) for v in e.unit)
        row_text = {
            "unit": f"{layer} #{channel} at ({y}, {x})\nactivation {float(e.unit_value):.3g}",
            "class": (f"class {name_of(int(e.target_class))}, p = {float(e.probability):.2f}\n"
                      + ("predicted" if int(e.target_class) == int(e.predicted)
                         else f"predicted {name_of(int(e.predicted))}")
                      + (f", true {name_of(int(labels[i]))}" if labels is not None else "")),
        }
        grid = outer[i].subgridspec(2, cols, wspace=0.05, hspace=0.12)
        for r, kind in enumerate(TARGETS):
            ax = fig.add_subplot(grid[r, 0])
            ax.imshow(displays[i], interpolation="nearest")
            if kind == "unit" and boxes is not None:
                top, left, bottom, right = (int(v) for v in boxes[i])
                ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top,
                                       fill=False, lw=1.2, edgecolor="yellow"))
            ax.set_title(image_names[i] if r == 0 else "", fontsize=8)
            ax.set_ylabel(row_text[kind], fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            for j, method in enumerate(methods):
                ax = fig.add_subplot(grid[r, j + 1])
                ax.imshow(shown_map(e.maps[method][r]), cmap=COLOURS, vmin=0, vmax=255,
                          interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if method == "grad_cam":
                    cam = cam_layers[r]
                    ax.set_xlabel(f"on {cam}" if cam else "n/a: no layer below", fontsize=7)
                if i == 0 and r == 0:
                    note = (notes or {}).get(method)
                    ax.set_title(TITLES[method] + (f"\n{note}" if note else ""), fontsize=9)
    fig.suptitle(f"Attribution methods: each image's strongest {layer} unit (upper row; "
                 f"yellow: its receptive field) and a class's logit (lower row)", fontsize=11,
                 y=1 - 0.1 / height)
    fig.text(0.5, 0.05 / height, "Colours: red positive, blue negative, white zero. Per-pixel maps are "
             "summed over RGB and each stretched to its 99th percentile |value| (beyond: "
             "saturated); Grad-CAM (>= 0) is enlarged to the image and scaled to its maximum.",
             ha="center", va="bottom", fontsize=8)
    return fig
