"""The evaluation's pictures for people (DVC renders its own from the CSV files): the
confusion matrix and the ROC and precision-recall curves. Sizes and fonts follow the number of
classes, so that 10 classes are read at a glance and 100 still have legible names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline import atomic
from pipeline.evaluation.curves import MACRO, MICRO, Curves

ANNOTATE_UP_TO = 20
"""Classes up to which each cell shows its number; beyond, the digits would not fit a cell."""
LEGEND_UP_TO = 10
"""Classes up to which each class's curve has its own colour and legend entry; beyond, the
classes are thin grey lines behind the averages."""


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, imported on first use (it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label_size(k: int, side: float) -> float:
    """Tick label font size in points: 60% of a row's height (``side`` inches over ``k`` rows),
    at most 10; 100 classes on the largest panel get about 7 points, 10 px at 100 dpi."""
    return float(np.clip(0.6 * side * 72 / k, 4, 10))


def confusion_png(confusion: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Two panels, rows actual and columns predicted: the counts, and each row divided by its
    total (the recall of each class on the diagonal). Cells are annotated up to ANNOTATE_UP_TO
    classes."""
    plt = _pyplot()
    k = len(classes)
    counts = np.asarray(confusion, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    normalized = counts / np.maximum(totals, 1)
    side = float(np.clip(0.5 * k + 2.5, 5.5, 17))
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.5, side + 0.8), layout="constrained")
    size = _label_size(k, side)
    panels = (
        (counts, "counts", "d", counts.max() or 1),
        (normalized, "row-normalized (recall on the diagonal)", ".2f", 1.0),
    )
    for ax, (values, name, fmt, top) in zip(axes, panels, strict=True):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=top, interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(f"{title}: {name}")
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        short = max(map(len, classes)) <= 3
        rotation, align = (0, "center") if short else (45, "right") if k <= 12 else (90, "center")
        ax.set_xticks(range(k), classes, fontsize=size, rotation=rotation, ha=align)
        ax.set_yticks(range(k), classes, fontsize=size)
        if k <= ANNOTATE_UP_TO:
            cell = 9 if k <= 10 else 7
            for (i, j), v in np.ndenumerate(values):
                # zeros in grey: the few mistakes stand out among them
                colour = "white" if v > 0.55 * top else "black" if v else "0.65"
                text = format(v, fmt) if v else "0"
                ax.text(j, i, text, ha="center", va="center", fontsize=cell, color=colour)
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def curves_png(curves: Curves, path: Path, title: str) -> None:
    """ROC (with the chance diagonal) and precision-recall, side by side, each curve labelled
    with its area; per-class curves in colour up to LEGEND_UP_TO classes, grey beyond."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 6), layout="constrained")
    many = len(curves.classes) > LEGEND_UP_TO
    panels = (
        (axes[0], curves.roc, curves.roc_auc, "false positive rate", "true positive rate", "ROC"),
        (axes[1], curves.pr, curves.pr_auc, "recall", "precision", "precision-recall"),
    )
    for ax, table, areas, x_label, y_label, name in panels:
        for cls in curves.classes:
            if many:
                ax.plot(curves.x, table[cls], color="0.75", linewidth=0.6)
            else:
                ax.plot(curves.x, table[cls], linewidth=1.2, label=f"{cls} ({areas[cls]:.3f})")
        styles = ((MICRO, "black", "-"), (MACRO, "crimson", "--"))
        for avg, colour, dash in styles:
            if avg in table:
                label = f"{avg} ({areas[avg]:.3f})"
                ax.plot(
                    curves.x, table[avg], color=colour, linestyle=dash, linewidth=2.2, label=label
                )
        if name == "ROC":
            ax.plot([0, 1], [0, 1], color="0.5", linestyle=":", linewidth=1, label="chance (0.5)")
        area = "AUC" if name == "ROC" else "average precision"
        extra = f"; the {len(curves.classes)} classes in grey" if many else ""
        ax.set_title(f"{title}: {name}, one-vs-rest\n({area} in brackets{extra})", fontsize=10)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if name == "ROC" else "lower left", fontsize=8)
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def notice_png(path: Path, title: str, why: str) -> None:
    """A small picture saying why a picture is not drawn: DVC's stage declares the file, so
    it is there either way, and says so rather than showing an old one."""
    plt = _pyplot()
    fig = plt.figure(figsize=(6, 1.6))
    fig.text(0.5, 0.62, title, ha="center", va="center", fontsize=12, weight="bold")
    fig.text(0.5, 0.3, why, ha="center", va="center", fontsize=10, wrap=True)
    try:
        with atomic.replacing(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
