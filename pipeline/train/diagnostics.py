"""Per-layer activation and gradient statistics: vanishing/exploding gradients, dead ReLUs.

``dead_fraction`` (the share of units that are zero for every sample of the batch) is given
only for layers whose output is a ReLU's (relu, relu6, leaky_relu with slope 0): only there is
a zero unit one whose gradient is gone for good. A flatten or pooling of ReLU maps, a tanh or
a linear output has no dead units to count (the flatten of a conv net showed 0.365).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pipeline import atomic

if TYPE_CHECKING:
    from pipeline.run import Run

# a row per layer and epoch in a run's diagnostics file
COLUMNS = ("epoch", "layer", "act_mean", "act_std", "dead_fraction", "grad_norm")


def _relu(module: nn.Module) -> bool:
    if isinstance(module, nn.ReLU | nn.ReLU6):
        return True
    return isinstance(module, nn.LeakyReLU) and module.negative_slope == 0


def ends_in_relu(module: nn.Module) -> bool:
    """Whether ``module``'s output is a ReLU's: a ReLU layer, a conv/dense block whose last
    part is one (its ``act``), a residual block with a ReLU after the sum."""
    if _relu(module):
        return True
    if isinstance(module, nn.Sequential) and len(module):
        return ends_in_relu(module[-1])
    act = getattr(module, "act", None)
    return isinstance(act, nn.Module) and _relu(act)


def layer_stats(
    model: nn.Module, loss_fn: Any, batch: tuple[torch.Tensor, torch.Tensor]
) -> list[dict[str, Any]]:
    """One forward/backward of ``batch`` in training mode, recording each top-level layer's
    output statistics and weight-gradient norm; the model's own gradients are left untouched."""
    layers = dict(model.named_children())
    stats: dict[str, dict[str, float]] = {name: {} for name in layers}

    def record(name: str):
        dead_means_something = ends_in_relu(layers[name])

        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            out = out.detach().float()
            s = stats[name]
            s["act_mean"] = out.mean().item()
            s["act_std"] = out.std().item()
            if dead_means_something and out.dim() >= 2:
                units = out.transpose(0, 1).reshape(out.shape[1], -1)
                s["dead_fraction"] = (units.amax(dim=1) <= 0).float().mean().item()

        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in layers.items()]
    saved = {p: p.grad for p in model.parameters()}
    was_training = model.training
    model.train()
    try:
        for p in saved:
            p.grad = None
        x, y = batch
        loss_fn(model(x), y).backward()
        rows = []
        for name, module in layers.items():
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            norm = torch.stack([g.norm() for g in grads]).norm().item() if grads else None
            rows.append({"layer": name, **stats[name], "grad_norm": norm})
    finally:
        for h in hooks:
            h.remove()
        for p, g in saved.items():
            p.grad = g
        model.train(was_training)
    return rows


def record(run: Run, epoch: int, model: nn.Module, loss_fn: Any, loader: Any) -> None:
    """Epoch ``epoch``'s statistics on one training batch (the next epoch's first, looked at
    without moving the loader on), appended to the run's diagnostics file."""
    next_epoch = loader.epoch
    rows = layer_stats(model, loss_fn, next(iter(loader)))
    loader.set_epoch(next_epoch)
    run.write_csv(
        run.diagnostics, ({"epoch": epoch + 1, **r} for r in rows), columns=COLUMNS,
        append=epoch > 0,
    )  # fmt: skip


def trim(run: Run, epochs: int) -> None:
    """Drop the rows after epoch ``epochs``: a resumed run's stop came after its statistics
    but before its checkpoint, and the epoch is trained again."""
    path = run.diagnostics
    if not path.is_file():
        return
    header, *rows = path.read_text().splitlines()
    kept = [r for r in rows if int(r.split(",", 1)[0]) <= epochs]
    if len(kept) < len(rows):
        atomic.write_text(path, "\n".join([header, *kept]) + "\n")
