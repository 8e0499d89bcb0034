"""``evaluate``: the trained model on the (never augmented) test split.

Writes ``runs/<name>/metrics.json`` (flat, for ``dvc metrics show``) and ``confusion.csv``
(``actual,predicted`` rows, for DVC's confusion template).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.spec.spec import Spec


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
    """Evaluate the spec's best (or last) checkpoint on the test split; write the files."""
    from pipeline import runtime
    from pipeline.data.loader import BatchLoader
    from pipeline.data.prepare import prepare
    from pipeline.model.build import build_model
    from pipeline.train import checkpoint as ckpt
    from pipeline.train.loop import atomic_write, run_dir

    runtime.tune_allocator()
    out = out or run_dir(spec)
    prepared = prepared or prepare(spec)
    device = runtime.pick_device(spec.train.device)
    model = build_model(spec, device=device, load_weights=False)
    state = ckpt.load(
        out / "checkpoints" / f"{spec.evaluate.checkpoint}.pt", spec, map_location=device
    )
    model.load_state_dict(state["model"])
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
    metrics, _ = metrics_from(
        probs, labels, prepared.classes, top_k=top_k, bins=spec.evaluate.calibration_bins
    )
    if not spec.evaluate.per_class:
        metrics = {k: v for k, v in metrics.items() if "/" not in k}
    if spec.evaluate.mc_dropout is not None:
        metrics |= _mc_metrics(spec, model, loader, prepared, out)
    if spec.evaluate.fold_batch_norm:
        from pipeline.export import fold_report

        folded, report = fold_report(model, prepared.image_shape)
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
            out / "export",
            list(spec.evaluate.export),
            fold=spec.evaluate.fold_batch_norm,
            prepared_meta=prepared.meta,
        )
    metrics["checkpoint_epoch"] = state["epoch"]
    metrics["precision"] = precision
    log(
        f"evaluated {len(labels)} test images in {seconds:.2f} s "
        f"({len(labels) / seconds:,.0f} images/s, {precision}, {device.type})"
    )
    if (out / "history.csv").is_file():
        training_curves(out / "history.csv", out / "training_curves.png", spec.name)
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if spec.evaluate.confusion_matrix:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["actual", "predicted"])
        names = prepared.classes
        writer.writerows(
            (names[a], names[p])
            for a, p in zip(labels.tolist(), probs.argmax(1).tolist(), strict=True)
        )
        atomic_write(out / "confusion.csv", buf.getvalue())
    return metrics


def _mc_metrics(spec: Spec, model: Any, loader: Any, prepared: Any, out: Path) -> dict[str, float]:
    """MC-dropout metrics, and the most uncertain test samples (ids, JSON, an image grid)."""
    from torchvision.utils import save_image

    from pipeline.train.loop import atomic_write

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
    atomic_write(out / "mc_uncertain.json", json.dumps(uncertain, indent=2) + "\n")
    x, _ = prepared.split("test")
    images = torch.as_tensor(x[order.numpy()]).float() / 255
    save_image(images, out / "mc_uncertain.png", nrow=8, pad_value=1.0)
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
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        ax.plot(epochs, [float(r[metric]) for r in rows], "bo", label=f"training {metric}")
        if rows and rows[0].get(f"val_{metric}"):
            ax.plot(
                epochs, [float(r[f"val_{metric}"]) for r in rows], "b", label=f"validation {metric}"
            )
        ax.set_title(f"{title}: training and validation {metric}")
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
