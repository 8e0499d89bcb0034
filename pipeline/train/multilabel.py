"""Metrics of multi-label classification: a class is predicted when its sigmoid reaches the
threshold (``evaluate.threshold``), each class on its own.

The same scores for the training history (:class:`MultiLabelMetrics`, sums on the device, one
sync per epoch) and for evaluate's metrics.json (:func:`test_metrics`): per-class precision,
recall and F1; micro F1 (every class's decisions pooled, so frequent classes weigh more) and
macro F1 (the classes' mean, so rare ones weigh as much); subset accuracy (every class right,
sklearn's ``accuracy_score``); Hamming loss (the fraction of wrong class decisions). A class
with no positives and no predictions scores 0, as sklearn's ``zero_division=0``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def counts(pred: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-class true positives, false positives and false negatives, and the samples with every
    class right, and the wrong decisions, of boolean (N, K) predictions against (N, K) labels."""
    y = y.bool()
    tp = (pred & y).sum(0)
    fp = (pred & ~y).sum(0)
    fn = (~pred & y).sum(0)
    wrong = pred != y
    return tp, fp, fn, (~wrong.any(1)).sum(), wrong.sum()


def scores(
    tp: Tensor, fp: Tensor, fn: Tensor, exact: float, wrong: float, n: int, classes: list[str]
) -> dict[str, float]:
    """The metrics from the counts (``n`` samples, ``len(classes)`` classes)."""
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    precision = tp / (tp + fp).clamp_min(1)
    recall = tp / (tp + fn).clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    pooled = 2 * tp.sum() + fp.sum() + fn.sum()
    n = max(n, 1)
    out = {
        "subset_accuracy": exact / n,
        "hamming_loss": wrong / (n * len(classes)),
        "micro_f1": float(2 * tp.sum() / pooled.clamp_min(1)),
        "macro_f1": float(f1.mean()),
    }
    for i, name in enumerate(classes):
        out[f"precision/{name}"] = float(precision[i])
        out[f"recall/{name}"] = float(recall[i])
        out[f"f1/{name}"] = float(f1[i])
    return out


class MultiLabelMetrics:
    """RunningMetrics' counterpart for multi-hot labels: loss and counts summed on the device,
    ``compute`` syncs once per epoch (over every rank's part when distributed)."""

    def __init__(self, classes: list[str], threshold: float, device: torch.device) -> None:
        self.classes, self.threshold, self.device = classes, threshold, device
        k = len(classes)
        self.sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss, exact, wrong
        self.per_class = torch.zeros(3, k, device=device, dtype=torch.float64)  # tp, fp, fn
        self.count = 0

    @torch.no_grad()
    def update(self, logits: Tensor, y: Tensor, loss: Tensor) -> None:
        tp, fp, fn, exact, wrong = counts(torch.sigmoid(logits) >= self.threshold, y)
        self.sums += torch.stack([loss.detach().double() * len(y), exact.double(), wrong.double()])
        self.per_class += torch.stack([tp, fp, fn]).double()
        self.count += len(y)

    def running(self) -> str:
        """This rank's loss and subset accuracy so far, for the progress bar: one host sync."""
        loss, exact, _ = self.sums.tolist()
        n = max(self.count, 1)
        return f"loss {loss / n:.4f} subset_acc {exact / n:.4f}"

    def compute(self, world: Any = None) -> dict[str, float]:
        if world is not None and world.distributed:
            n = torch.tensor([float(self.count)], dtype=torch.float64, device=self.device)
            flat = torch.cat([self.sums, self.per_class.flatten(), n])
            world.all_sum(flat)
            self.sums, self.count = flat[:3], int(flat[-1].item())
            self.per_class = flat[3:-1].view(3, -1)
        loss, exact, wrong = self.sums.tolist()
        tp, fp, fn = self.per_class
        n = max(self.count, 1)
        return {"loss": loss / n, **scores(tp, fp, fn, exact, wrong, self.count, self.classes)}


def test_metrics(
    probs: Tensor, labels: Tensor, classes: list[str], threshold: float
) -> dict[str, float]:
    """evaluate's metrics of (N, K) sigmoid probabilities against multi-hot labels: the mean
    binary cross-entropy as ``test_loss``, the scores above (summaries prefixed ``test_``)."""
    eps = 1e-7
    p, y = probs.double().clamp(eps, 1 - eps), labels.double()
    loss = float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())
    tp, fp, fn, exact, wrong = counts(probs >= threshold, labels)
    got = scores(tp, fp, fn, float(exact), float(wrong), len(labels), classes)
    return {"test_loss": loss} | {(k if "/" in k else f"test_{k}"): v for k, v in got.items()}
