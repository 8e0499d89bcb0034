"""ROC and precision-recall curves, one-vs-rest per class, with micro and macro averages.

scikit-learn computes every curve and area (``roc_curve``, ``precision_recall_curve``,
``roc_auc_score``, ``average_precision_score``). The curves are then put on one grid of
points (false-positive rate for ROC, recall for PR) so that the macro average is the mean of
the classes' curves (scikit-learn's own recipe for a macro ROC curve), and so that the DVC plot
files stay small whatever the size of the test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

GRID = np.unique(np.concatenate([np.logspace(-4, 0, 81), np.linspace(0, 1, 101)]))
"""Where each curve is sampled (179 points): every 0.01, and log-spaced down to 1e-4, where
a good classifier's ROC curve climbs; a linear grid alone would cut that corner."""
MICRO, MACRO = "micro avg", "macro avg"
"""The averages' curve names (scikit-learn's classification_report calls them so)."""
PLOT_CLASSES = 20
"""Classes up to which the DVC plot files hold each class's curve; beyond, a legend of more
lines than that is unreadable, and the per-class areas are in metrics.json."""


@dataclass
class Curves:
    """Curves on the common grid (``x``) and their areas, by curve name: each class present in
    the test split, MICRO (every class-sample pair pooled) and MACRO (the classes' mean)."""

    x: np.ndarray
    roc: dict[str, np.ndarray] = field(default_factory=dict)
    pr: dict[str, np.ndarray] = field(default_factory=dict)
    roc_auc: dict[str, float] = field(default_factory=dict)
    pr_auc: dict[str, float] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    """The classes with curves: those with positives and negatives in the test split."""


def _roc_on_grid(y: np.ndarray, score: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The ROC curve at the grid's false-positive rates; it starts at the origin, as
    scikit-learn's macro-average recipe has it (at rate 0 the curve is a vertical segment)."""
    fpr, tpr, _ = roc_curve(y, score)
    out = np.interp(grid, fpr, tpr)
    out[grid == 0] = 0.0
    return out


def _pr_on_grid(y: np.ndarray, score: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Interpolated precision: the best precision at a recall of at least each grid point (the
    usual PR interpolation, so the curve never rises with recall)."""
    precision, recall, _ = precision_recall_curve(y, score)
    order = np.argsort(recall, kind="stable")
    recall, precision = recall[order], precision[order]
    best_from = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, grid, side="left").clip(max=len(recall) - 1)
    return best_from[at]


def compute(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> Curves:
    """One-vs-rest curves and areas of ``probs`` (N, K) against integer ``labels`` (N,), or
    multi-hot ones (N, K), multi-label's per-class decisions. A class without positives (or
    without negatives) in the test split has no curve and no area: it is left out of the macro
    averages."""
    n, k = probs.shape
    onehot = labels if labels.ndim == 2 else np.eye(k, dtype=np.int64)[labels]  # multi-hot as is
    positives = onehot.sum(axis=0)
    present = [c for c in range(k) if 0 < positives[c] < n]
    out = Curves(x=GRID, classes=[classes[c] for c in present])
    if not present:
        return out
    for c in present:
        name = classes[c]
        out.roc[name] = _roc_on_grid(onehot[:, c], probs[:, c], out.x)
        out.pr[name] = _pr_on_grid(onehot[:, c], probs[:, c], out.x)
    cols = onehot[:, present], probs[:, present]
    per_roc = roc_auc_score(*cols, average=None)
    per_pr = average_precision_score(*cols, average=None)
    out.roc_auc = {
        classes[c]: float(a) for c, a in zip(present, np.atleast_1d(per_roc), strict=True)
    }
    out.pr_auc = {classes[c]: float(a) for c, a in zip(present, np.atleast_1d(per_pr), strict=True)}
    out.roc[MACRO] = np.mean([out.roc[name] for name in out.classes], axis=0)
    out.pr[MACRO] = np.mean([out.pr[name] for name in out.classes], axis=0)
    out.roc_auc[MACRO] = float(np.mean(per_roc))
    out.pr_auc[MACRO] = float(np.mean(per_pr))
    flat_y, flat_p = onehot.ravel(), probs.ravel()
    out.roc[MICRO] = _roc_on_grid(flat_y, flat_p, out.x)
    out.pr[MICRO] = _pr_on_grid(flat_y, flat_p, out.x)
    out.roc_auc[MICRO] = float(roc_auc_score(flat_y, flat_p))
    out.pr_auc[MICRO] = float(average_precision_score(flat_y, flat_p))
    return out


def metrics(curves: Curves, *, per_class: bool) -> dict[str, float]:
    """The areas for metrics.json: ``roc_auc_macro``, ``roc_auc_micro``, ``pr_auc_macro``,
    ``pr_auc_micro``, and ``roc_auc/<class>``, ``pr_auc/<class>`` with ``per_class``."""
    out: dict[str, float] = {}
    for kind, areas in (("roc_auc", curves.roc_auc), ("pr_auc", curves.pr_auc)):
        for avg, name in (("macro", MACRO), ("micro", MICRO)):
            if name in areas:
                out[f"{kind}_{avg}"] = areas[name]
        if per_class:
            out |= {f"{kind}/{name}": areas[name] for name in curves.classes}
    return out


def rows(curves: Curves, kind: str) -> list[dict[str, object]]:
    """The rows of a DVC plot file: ``curve,fpr,tpr`` (kind ``roc``) or ``curve,recall,precision``
    (``pr``); micro and macro first, then each class while there are at most PLOT_CLASSES."""
    table = curves.roc if kind == "roc" else curves.pr
    x_name, y_name = ("fpr", "tpr") if kind == "roc" else ("recall", "precision")
    names = [n for n in (MICRO, MACRO) if n in table]
    if len(curves.classes) <= PLOT_CLASSES:
        names += curves.classes
    return [
        {"curve": name, x_name: round(float(x), 6), y_name: round(float(y), 6)}
        for name in names
        for x, y in zip(curves.x, table[name], strict=True)
    ]
