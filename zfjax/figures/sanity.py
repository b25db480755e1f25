"""Sanity checks (Adebayo et al. 2018): the maps as the network is randomised (their
Fig. 2) and the similarity to the trained network's maps against randomisation depth
(core ``zfjax.analyses.sanity``)."""

from __future__ import annotations

import numpy as np

SIMILARITY_TITLES = {"rank_absolute": "Spearman rank correlation (absolute)",
                     "rank_signed": "Spearman rank correlation (signed)",
                     "ssim": "SSIM (absolute)"}


def plot_maps(check, display: np.ndarray, image: int = 0, extra=None, title: str = ""):
    """Adebayo's Fig. 2 for one image: rows are methods, columns the trained network
    then each randomisation step (its normalised absolute maps, black 0 to white 1).

    check: a ``sanity.Check`` (numpy); display uint8 (N, H, W, 3) the images as shown;
    extra: another Check over the same methods whose last step is added as a column
    (the random-labels network). Returns a Figure.
    """
    from matplotlib.figure import Figure

    columns = [(name, np.asarray(check.maps.absolute)[d]) for d, name in enumerate(check.steps)]
    if extra is not None:
        columns.append((extra.steps[-1], np.asarray(extra.maps.absolute)[-1]))
    rows = len(check.methods)
    fig = Figure(figsize=(1.25 * (len(columns) + 1.3) + 0.4, 1.3 * rows + 0.8))
    # A narrow empty column keeps the method names off the input image.
    grid = fig.add_gridspec(rows, len(columns) + 2, width_ratios=[1, 0.3] + [1] * len(columns),
                            wspace=0.05, hspace=0.08, top=1 - 0.5 / (1.3 * rows + 0.8))
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(display[image])
    ax.set_title("input", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    for r, method in enumerate(check.methods):
        for c, (name, maps) in enumerate(columns):
            ax = fig.add_subplot(grid[r, c + 2])
            ax.imshow(maps[r, image], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(method.replace("_", "\n"), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_similarity(checks, random_labels=None, title: str = ""):
    """Similarity to the trained network's maps against randomisation depth: a row per
    model randomisation, a column per measure, a line per method (mean over the images,
    the band one standard deviation). random_labels: a data-randomisation Check drawn as
    one more point per method at the right ('random labels'). Returns a Figure."""
    import matplotlib
    from matplotlib.figure import Figure

    fields = list(SIMILARITY_TITLES)
    fig = Figure(figsize=(5.2 * len(fields), 3.6 * len(checks) + 0.6), layout="constrained")
    axes = fig.subplots(len(checks), len(fields), squeeze=False)
    colours = matplotlib.colormaps["tab10"].colors
    for row, check in zip(axes, checks):
        names = list(check.steps)
        extra = random_labels is not None and check.kind == "cascading"
        for ax, field in zip(row, fields):
            values = np.asarray(getattr(check.similarity, field))  # (D, M, N)
            x = np.arange(len(names))
            for m, method in enumerate(check.methods):
                mean, std = values[:, m].mean(-1), values[:, m].std(-1)
                ax.plot(x, mean, "o-", ms=3, color=colours[m % 10], label=method)
                ax.fill_between(x, mean - std, mean + std, color=colours[m % 10], alpha=0.12)
                if extra:
                    other = np.asarray(getattr(random_labels.similarity, field))[-1, m]
                    ax.errorbar([len(names)], [other.mean()], [other.std()], fmt="s",
                                ms=5, color=colours[m % 10])
            ticks = names + (["random\nlabels"] if extra else [])
            ax.set_xticks(np.arange(len(ticks)), ticks, rotation=60, fontsize=7)
            ax.axhline(0, color="0.6", lw=0.6)
            ax.set_ylim(-0.1 if field == "ssim" else -1.05, 1.05)
            ax.set_title(f"{check.kind}: {SIMILARITY_TITLES[field]}", fontsize=9)
            ax.set_xlabel("randomised " + ("down to" if check.kind == "cascading" else "alone"),
                          fontsize=8)
            ax.tick_params(axis="y", labelsize=7)
    axes[0, -1].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
