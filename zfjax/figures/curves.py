"""Training curves of a run: loss, accuracy and learning rate per epoch (the lines of
its metrics.jsonl, ``run.RunDir.read_metrics``)."""

from __future__ import annotations


def plot_curves(history: list[dict]):
    """Training loss; train top-1, val top-1 and top-5; learning rate (log scale), each
    against the epoch. history: metrics.jsonl's dicts, oldest first. A Figure."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [m["epoch"] for m in history]
    fig = Figure(figsize=(13, 3.6), layout="tight")
    axes = fig.subplots(1, 3)
    axes[0].plot(epochs, [m["train_loss"] for m in history], "o-")
    axes[0].set(title="training loss", xlabel="epoch")
    axes[1].plot(epochs, [m["train_top1"] for m in history], "o-", label="train top-1")
    axes[1].plot(epochs, [m["val_top1"] for m in history], "o-", label="val top-1")
    axes[1].plot(epochs, [m["val_top5"] for m in history], "o--", label="val top-5")
    axes[1].set(title="accuracy", xlabel="epoch", ylim=(0, 1))
    axes[1].legend()
    axes[2].semilogy(epochs, [m["learning_rate"] for m in history], "o-")
    axes[2].set(title="learning rate", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig
