"""Training curves as a PNG (loss and kNN accuracy per epoch), and the one way figures are written."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .fsutil import atomic_write

if TYPE_CHECKING:
    import matplotlib.figure


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, imported when a figure is drawn (not at start-up:
    most runs of a command that can plot never do, and the import costs most of a second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: matplotlib.figure.Figure, path: str | os.PathLike) -> None:
    """Write ``fig`` as a PNG at 110 dpi, atomically (a reader never sees half a file), and close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    pyplot().close(fig)


def plot_training(history: list[dict], path: str | os.PathLike) -> None:
    rows = [r for r in history if "loss" in r]
    knn = [r for r in history if "knn_top1" in r]
    if not rows:
        return
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(10, 3.6))
    a.plot([r["epoch"] for r in rows], [r["loss"] for r in rows], marker=".")
    a.set(xlabel="epoch", ylabel="training loss", title="loss")
    if knn:
        b.plot([r["epoch"] for r in knn], [100 * r["knn_top1"] for r in knn], marker=".", label="weighted kNN")
        b.plot([r["epoch"] for r in knn], [100 * r["knn_1nn"] for r in knn], marker=".", label="1-NN")
        b.legend()
    b.set(xlabel="epoch", ylabel="top-1 (%)", title="kNN accuracy on the eval split")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)
