"""Look before training: the learning-rate range test, the planned schedule, and per-layer
activation/gradient statistics at initialization (vanishing/exploding gradients, dead ReLUs)."""

from __future__ import annotations

import copy
import csv
import io
import math
from pathlib import Path
from typing import Any

import torch

from pipeline import atomic
from pipeline.spec.spec import Spec
from pipeline.train.diagnostics import layer_stats
from pipeline.train.metrics import spec_loss


def _plot(
    path: Path,
    xs: list[float],
    series: dict[str, list[float]],
    *,
    xlabel: str,
    logx: bool = False,
    marker: float | None = None,
    title: str = "",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, ys in series.items():
        ax.plot(xs, ys, label=label)
    if logx:
        ax.set_xscale("log")
    if marker is not None:
        ax.axvline(marker, color="red", linestyle="--", label=f"suggested {marker:.2g}")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buf.getvalue())


def _setup(spec: Spec, prepared: Any) -> tuple[Any, Any, Any, torch.device]:
    from pipeline import runtime
    from pipeline.data.augment import build_augment
    from pipeline.data.loader import BatchLoader
    from pipeline.model.build import build_model

    runtime.tune_allocator()
    device = runtime.pick_device(spec.train.device)
    runtime.seed_everything(spec.seed)
    model = build_model(spec, device=device)
    loader = BatchLoader.from_prepared(
        prepared,
        "train",
        spec.train.batch_size,
        shuffle=True,
        seed=spec.seed,
        device=device,
        transform=build_augment(spec.augment),
        balanced=spec.train.sampler == "balanced",
    )
    return model, loader, spec_loss(spec, prepared), device


def lr_find(
    spec: Spec,
    prepared: Any,
    out: Path,
    *,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 200,
    smooth: float = 0.98,
) -> dict[str, Any]:
    """Smith's range test: raise the rate exponentially from ``start`` to ``end``, record the
    smoothed loss, stop when it diverges (4x its minimum). The model and optimizer are copies,
    so nothing of the run is changed. Suggests the rate of steepest descent."""
    from pipeline.train.optim import build_optimizer

    model, loader, loss_fn, _ = _setup(spec, prepared)
    model = copy.deepcopy(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(spec.optimizer.model_copy(update={"lr": start}), params)
    factor = (end / start) ** (1 / max(steps - 1, 1))
    rows: list[dict[str, float]] = []
    avg, best = 0.0, math.inf
    step = 0
    while step < steps:
        for x, y in loader:
            lr = start * factor**step
            for g in optimizer.param_groups:
                g["lr"] = lr
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            avg = smooth * avg + (1 - smooth) * value
            smoothed = avg / (1 - smooth ** (step + 1))
            rows.append({"step": step, "lr": lr, "loss": value, "smoothed_loss": smoothed})
            best = min(best, smoothed)
            step += 1
            if not math.isfinite(value) or smoothed > 4 * best or step >= steps:
                break
        else:
            continue
        break
    suggestion = _steepest(rows)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "lr_find.csv", rows)
    _plot(
        out / "lr_find.png",
        [r["lr"] for r in rows],
        {"smoothed loss": [r["smoothed_loss"] for r in rows]},
        xlabel="learning rate",
        logx=True,
        marker=suggestion,
        title=f"{spec.name}: learning-rate range test",
    )
    return {
        "suggested_lr": suggestion,
        "steps": len(rows),
        "min_loss_lr": min(rows, key=lambda r: r["smoothed_loss"])["lr"],
    }


def _steepest(rows: list[dict[str, float]]) -> float:
    """The rate where the smoothed loss falls fastest per log-lr, before its minimum."""
    usable = rows[: min(range(len(rows)), key=lambda i: rows[i]["smoothed_loss"]) + 1]
    if len(usable) < 3:
        return rows[0]["lr"]
    slopes = [
        (usable[i + 1]["smoothed_loss"] - usable[i - 1]["smoothed_loss"])
        / (math.log(usable[i + 1]["lr"]) - math.log(usable[i - 1]["lr"]))
        for i in range(1, len(usable) - 1)
    ]
    return usable[1 + min(range(len(slopes)), key=slopes.__getitem__)]["lr"]


def schedule_preview(spec: Spec, out: Path, *, steps_per_epoch: int) -> list[dict[str, float]]:
    """The planned learning rate (and momentum) per step, as CSV and a plot, without training:
    every step of a short run, at most PREVIEW_POINTS of a long one (sampled evenly)."""
    from pipeline.train.schedules import PREVIEW_POINTS, planned

    rows: list[dict[str, float]] = []
    phases = list(spec.train.phases) or [None]
    points = max(2, PREVIEW_POINTS // len(phases))
    step0 = epoch0 = 0
    for phase in phases:
        epochs = phase.epochs if phase else spec.train.epochs
        opt = phase.optimizer if phase and phase.optimizer else spec.optimizer
        if phase and phase.lr is not None:
            opt = opt.model_copy(update={"lr": phase.lr})
        sch = phase.schedule if phase and phase.schedule else spec.schedule
        plan = planned(sch, opt, steps_per_epoch=steps_per_epoch, epochs=epochs, points=points)
        for r in plan:
            rows.append(r | {"step": r["step"] + step0, "epoch": r["epoch"] + epoch0})
        step0, epoch0 = step0 + epochs * steps_per_epoch, epoch0 + epochs
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "schedule.csv", rows)
    series = {"lr": [r["lr"] for r in rows]}
    _plot(
        out / "schedule.png",
        [r["step"] for r in rows],
        series,
        xlabel="step",
        title=f"{spec.name}: planned learning rate",
    )
    return rows


def diagnose(spec: Spec, prepared: Any) -> list[dict[str, Any]]:
    """Per layer, on a real training batch at initialization: activation mean/std, the
    fraction of dead ReLU units (zero for the whole batch), and the weight-gradient norm."""
    model, loader, loss_fn, _ = _setup(spec, prepared)
    return layer_stats(model, loss_fn, next(iter(loader)))
