"""``evaluate``: the trained model on the (never augmented) test split.

Writes the run's ``metrics.json`` (flat, for ``dvc metrics show``; ``run_id`` names the run
whose checkpoint it measured), ``confusion.csv`` (``actual,predicted`` rows, for DVC's
confusion template) and ``confusion.png``, the ROC and precision-recall curves (``roc.csv``,
``pr.csv``, ``roc_pr.png``); see :class:`pipeline.run.Run`. A picture turned off (or the
confusion matrix of a multi-label task) still has its files, a table without rows and a picture
saying why: DVC's evaluate stage declares them all. Test-time augmentation adds its
``tta_`` metrics beside the plain ones. The curves, pictures and TTA are in
:mod:`pipeline.evaluation`.
"""

from __future__ import annotations

import contextlib
import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline import atomic
from pipeline.run import Run
from pipeline.spec.spec import Spec
from pipeline.train.multilabel import test_metrics


def _probabilities(model: Any, x: torch.Tensor) -> torch.Tensor:
    """Class probabilities, (N, classes) even for one sigmoid output."""
    p = model.predict_proba(x).float()
    return torch.cat([1 - p, p], dim=1) if p.shape[1] == 1 else p


@torch.inference_mode()
def collect(model: Any, loader: Any, autocast: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and labels over a loader, on the CPU (under ``autocast`` if given)."""
    model.eval()
    probs, labels = [], []
    with autocast or contextlib.nullcontext():
        for x, y in loader:
            probs.append(_probabilities(model, x).cpu())
            labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


def metrics_from(
    probs: torch.Tensor, labels: torch.Tensor, classes: list[str], *, top_k: list[int], bins: int
) -> tuple[dict[str, float], torch.Tensor]:
    """Flat metrics and the confusion matrix (rows: actual, columns: predicted)."""
    n, k = probs.shape
    pred = probs.argmax(dim=1)
    eps = torch.finfo(probs.dtype).tiny
    out: dict[str, float] = {
        "test_loss": float(-probs[torch.arange(n), labels].clamp_min(eps).log().mean()),
        "test_accuracy": float((pred == labels).float().mean()),
    }
    for t in top_k:
        if t < k:
            hit = (probs.topk(t, dim=1).indices == labels[:, None]).any(dim=1)
            out[f"test_top{t}_accuracy"] = float(hit.float().mean())
    confusion = torch.bincount(labels * k + pred, minlength=k * k).view(k, k)
    tp = confusion.diag().double()
    precision = tp / confusion.sum(dim=0).clamp_min(1)
    recall = tp / confusion.sum(dim=1).clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    for i, name in enumerate(classes):
        out[f"precision/{name}"] = float(precision[i])
        out[f"recall/{name}"] = float(recall[i])
        out[f"f1/{name}"] = float(f1[i])
    out["macro_f1"] = float(f1.mean())
    out["ece"] = expected_calibration_error(probs, labels, bins)
    return out, confusion


DROPOUTS = (
    torch.nn.Dropout,
    torch.nn.Dropout1d,
    torch.nn.Dropout2d,
    torch.nn.AlphaDropout,
    torch.nn.FeatureAlphaDropout,
)


@torch.inference_mode()
def mc_dropout(
    model: Any, loader: Any, samples: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Monte Carlo dropout (Gal and Ghahramani): ``samples`` forward passes with dropout active
    and everything else, batch norm included, in inference mode. Returns the mean probabilities,
    the per-sample spread (std over passes of the predicted class's probability), the labels."""
    model.eval()
    for m in model.modules():
        if isinstance(m, DROPOUTS):
            m.train()
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    means, spreads, labels = [], [], []
    try:
        for x, y in loader:
            draws = torch.stack([_probabilities(model, x).cpu() for _ in range(samples)])
            mean = draws.mean(dim=0)
            pred = mean.argmax(dim=1)
            spreads.append(draws[:, torch.arange(len(pred)), pred].std(dim=0))
            means.append(mean)
            labels.append(y.cpu())
    finally:
        torch.set_rng_state(state)
        model.eval()
    return torch.cat(means), torch.cat(spreads), torch.cat(labels)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int) -> float:
    """Sum over confidence bins of |accuracy - confidence| weighted by the bin's share."""
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=conf.dtype)
    which = torch.bucketize(conf, edges[1:-1], right=True)
    total = torch.zeros(())
    for b in range(bins):
        mask = which == b
        if mask.any():
            gap = (correct[mask].mean() - conf[mask].double().mean()).abs()
            total = total + gap * mask.double().mean()
    return float(total)


def evaluate(
    spec: Spec, *, out: Path | None = None, prepared: Any = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Evaluate the spec's best (or last) checkpoint on the test split; write the files into
    its run folder (``out``, by default ``runs/<name>``)."""
    from pipeline import runtime
    from pipeline.data.loader import BatchLoader
    from pipeline.data.prepare import prepare
    from pipeline.train.checkpoint import load_trained

    runtime.tune_allocator()
    run = Run(out) if out else Run.of(spec)
    prepared = prepared or prepare(spec)
    device = runtime.pick_device(spec.train.device)
    model, state = load_trained(spec, spec.evaluate.checkpoint, run=run, device=device)
    run_id = _run_of(run, spec.evaluate.checkpoint, state, log)
    fmt = runtime.memory_format(model, spec.train.channels_last)
    if fmt is not None:
        model = model.to(memory_format=fmt)
    loader = BatchLoader.from_prepared(
        prepared, "test", spec.evaluate.batch_size, device=device, memory_format=fmt
    )
    autocast, precision = runtime.inference_autocast(spec.evaluate.precision, device)
    start = time.perf_counter()
    probs, labels = collect(model, loader, autocast)
    seconds = time.perf_counter() - start
    top_k = sorted(set(spec.evaluate.top_k) | set(spec.train.top_k))
    confusion = None  # multi-label: per class at evaluate.threshold, no confusion matrix
    if prepared.meta.get("multi_label"):
        metrics = test_metrics(probs, labels, prepared.classes, spec.evaluate.threshold)
    else:
        metrics, confusion = metrics_from(
            probs, labels, prepared.classes, top_k=top_k, bins=spec.evaluate.calibration_bins
        )
    if not spec.evaluate.per_class:
        metrics = {k: v for k, v in metrics.items() if "/" not in k}
    if spec.evaluate.curves:
        metrics |= _curves(spec, run, probs, labels, prepared.classes)
    if spec.evaluate.tta is not None:
        from pipeline.evaluation import tta

        extra = tta.passes(spec, prepared, device=device, memory_format=fmt)
        tta_probs = tta.average(probs, [collect(model, p.loader, autocast)[0] for p in extra])
        metrics |= _tta_metrics(spec, metrics, tta_probs, labels, prepared.classes, top_k, log)
    if spec.evaluate.mc_dropout is not None:
        metrics |= _mc_metrics(spec, model, loader, prepared, run)
    if spec.evaluate.fold_batch_norm:
        from pipeline.export import fold_report

        folded, report = fold_report(model, prepared.image_shape)
        log(report["summary"])
        metrics["fold_batch_norms_folded"] = len(report["folded"])
        if report["folded"]:  # else the same model: no difference, accuracy or latency to report
            fp, _ = collect(folded, loader)
            metrics["fold_max_abs_diff"] = report["max_abs_diff"]
            metrics["fold_test_accuracy"] = float((fp.argmax(1) == labels).float().mean())
            for kind, ms in report["latency_ms"].items():
                for batch, value in ms.items():
                    metrics[f"latency_ms_{kind}_batch{batch}"] = value
    if spec.evaluate.export:
        from pipeline.export import export

        export(
            spec,
            model,
            run.export,
            list(spec.evaluate.export),
            fold=spec.evaluate.fold_batch_norm,
            prepared_meta=prepared.meta,
        )
    metrics["checkpoint_epoch"] = state["epoch"]
    metrics["precision"] = precision
    trained = _training_record(run)
    for key in ("precision", "world_size"):  # how the evaluated weights were trained
        if key in trained:
            metrics[f"train_{key}"] = trained[key]
    if run_id is not None:
        metrics["run_id"] = run_id
    log(
        f"evaluated {len(labels)} test images in {seconds:.2f} s "
        f"({len(labels) / seconds:,.0f} images/s, {precision}, {device.type})"
    )
    if run.history.is_file():
        training_curves(run.history, run.curves, spec.name)
    run.write_json(run.metrics, metrics)
    if spec.evaluate.confusion_matrix and confusion is not None:
        from pipeline.evaluation.plots import confusion_png

        names = prepared.classes
        pairs = zip(labels.tolist(), probs.argmax(1).tolist(), strict=True)
        run.write_csv(
            run.confusion,
            ({"actual": names[a], "predicted": names[p]} for a, p in pairs),
            columns=["actual", "predicted"],
        )
        confusion_png(confusion.numpy(), names, run.confusion_png, spec.name)
    else:
        _not_drawn(
            run, (run.confusion, ["actual", "predicted"]), png=run.confusion_png,
            title=f"{spec.name}: no confusion matrix",
            why="evaluate.confusion_matrix is false" if confusion is not None else
            "multi-label: no one confusion matrix; per-class F1 in metrics.json",
        )  # fmt: skip
    if not spec.evaluate.curves:
        _not_drawn(
            run, (run.roc, ["curve", "fpr", "tpr"]), (run.pr, ["curve", "recall", "precision"]),
            png=run.roc_pr_png, title=f"{spec.name}: no ROC or PR curves",
            why="evaluate.curves is false",
        )  # fmt: skip
    return metrics


def _not_drawn(run: Run, *tables: tuple[Path, list[str]], png: Path, title: str, why: str) -> None:
    """The files of a picture that is off (or does not apply): each table with its header and
    no rows, and a picture saying why. DVC's evaluate stage declares them, so they must exist,
    and an old run's picture must not stay behind to be taken for this one's."""
    from pipeline.evaluation.plots import notice_png

    for path, columns in tables:
        run.write_csv(path, [], columns=columns)
    notice_png(png, title, why)


def _curves(
    spec: Spec, run: Run, probs: torch.Tensor, labels: torch.Tensor, classes: list[str]
) -> dict[str, float]:
    """ROC and PR curves: the DVC plot files, the picture, and the areas for metrics.json."""
    from pipeline.evaluation import curves
    from pipeline.evaluation.plots import curves_png

    found = curves.compute(probs.double().numpy(), labels.numpy(), classes)
    run.write_csv(run.roc, curves.rows(found, "roc"), columns=["curve", "fpr", "tpr"])
    run.write_csv(run.pr, curves.rows(found, "pr"), columns=["curve", "recall", "precision"])
    curves_png(found, run.roc_pr_png, spec.name)
    return curves.metrics(found, per_class=spec.evaluate.per_class)


def _tta_metrics(
    spec: Spec,
    plain: dict[str, Any],
    probs: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    top_k: list[int],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The plain metrics' summary figures again, of the TTA-averaged probabilities, prefixed
    ``tta_``; logged beside the plain accuracy."""
    tta = spec.evaluate.tta
    assert tta is not None
    found, _ = metrics_from(
        probs, labels, classes, top_k=top_k, bins=spec.evaluate.calibration_bins
    )
    out: dict[str, Any] = {f"tta_{k}": v for k, v in found.items() if "/" not in k}
    out["tta_passes"] = 1 + int(tta.flip) + tta.augment
    log(
        f"test accuracy {plain['test_accuracy']:.4f}, with test-time augmentation "
        f"({out['tta_passes']} passes: flip {tta.flip}, augment {tta.augment}) "
        f"{out['tta_test_accuracy']:.4f}"
    )
    return out


def _run_of(run: Run, which: str, state: dict[str, Any], log: Callable[[str], None]) -> str | None:
    """The id of the run whose checkpoint this is (None for checkpoints from before run
    records); says so when the folder's record is of another run (checkpoints restored by
    ``dvc checkout``, say), as the metrics then describe the checkpoint's run."""
    run_id = state.get("run_id")
    record = run.read_record()
    if run_id is not None and record is not None and record.get("id") != run_id:
        log(
            f"note: {run.checkpoint(which)} is of run {run_id}, not of the run "
            f"{record.get('id')} that {run.record} records; metrics.json names {run_id}"
        )
    return run_id


def _mc_metrics(spec: Spec, model: Any, loader: Any, prepared: Any, run: Run) -> dict[str, float]:
    """MC-dropout metrics, and the most uncertain test samples (ids, JSON, an image grid)."""
    from torchvision.utils import save_image

    samples = spec.evaluate.mc_dropout.samples  # type: ignore[union-attr]
    mean, spread, labels = mc_dropout(model, loader, samples, spec.seed)
    mc, _ = metrics_from(
        mean, labels, prepared.classes, top_k=[], bins=spec.evaluate.calibration_bins
    )
    order = spread.argsort(descending=True)[:32]
    names = prepared.classes
    uncertain = [
        {
            "test_index": int(i),
            "label": names[int(labels[i])],
            "predicted": names[int(mean[i].argmax())],
            "spread": float(spread[i]),
            "probability": float(mean[i].max()),
        }
        for i in order
    ]
    run.write_json(run.mc_uncertain(".json"), uncertain)
    x, _ = prepared.split("test")
    images = torch.as_tensor(x[order.numpy()]).float() / 255
    with atomic.replacing(run.mc_uncertain(".png")) as tmp:
        save_image(images, tmp, nrow=8, pad_value=1.0)
    return {
        "mc_test_accuracy": mc["test_accuracy"],
        "mc_test_loss": mc["test_loss"],
        "mc_ece": mc["ece"],
        "mc_mean_spread": float(spread.mean()),
    }


def training_curves(history: Path, png: Path, title: str) -> None:
    """The seeds' two plots: training and validation accuracy, training and validation loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(history.open()))
    epochs = [int(r["epoch"]) for r in rows]
    score = "accuracy" if not rows or "accuracy" in rows[0] else "micro_f1"  # multi-label's
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, (score, "loss"), strict=True):
        ax.plot(epochs, [float(r[metric]) for r in rows], "bo", label=f"training {metric}")
        if rows and rows[0].get(f"val_{metric}"):
            ax.plot(
                epochs, [float(r[f"val_{metric}"]) for r in rows], "b", label=f"validation {metric}"
            )
        ax.set_title(f"{title}: training and validation {metric}")
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    with atomic.replacing(png) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def _training_record(run: Any) -> dict[str, Any]:
    """train.json of the run (empty when missing or unreadable)."""
    import json

    try:
        data = json.loads(run.summary.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
