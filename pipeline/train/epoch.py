"""One training epoch of the :class:`~pipeline.train.loop.Trainer`: forward and backward of each
batch, an optimizer step every ``train.accumulate`` batches, the running metrics.

Gradient accumulation: the batches of one optimizer step form a *window*; each batch's loss
is weighed by its share of the window's samples (all ranks' together), so the summed gradient
is the mean over the window, that of the one large batch. The weight also covers a
distributed run's short last batch: DDP averages over ranks, the shares make that the mean
over samples. Within a window, DDP's gradient all-reduce waits for the window's last batch
(``no_sync``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Protocol

import torch
from torch import nn

from pipeline.data.loader import epoch_seed
from pipeline.train import params as P
from pipeline.train.live import progress
from pipeline.train.optim import clip_gradients
from pipeline.train.outcome import TrainingDiverged
from pipeline.train.schedules import LRSchedule


class Training(Protocol):
    """What an epoch uses of the :class:`~pipeline.train.loop.Trainer` (named here, not
    imported: the Trainer imports this module)."""

    spec: Any
    world: Any
    device: torch.device
    model: nn.Module
    forward: Any
    ddp: nn.parallel.DistributedDataParallel | None
    train_loader: Any
    loss: Any
    mix: Any
    """``(x, y, epoch, step) -> (x, target, y)``: mixup/cutmix (:mod:`.mix`)."""
    metrics: Any
    """A device -> the running metrics (multi-label's or not)."""
    constraints: Any
    scaler: torch.amp.GradScaler
    opt_spec: Any
    amp: torch.dtype | None
    ema: Any


def optimizer_steps(batches: int, accumulate: int) -> int:
    """Optimizer steps of an epoch of ``batches``: a short last window steps too."""
    return math.ceil(batches / accumulate)


def window_samples(loader: Any, step: int, accumulate: int, batches: int) -> int:
    """Samples (all ranks') of the accumulation window that batch ``step`` belongs to (a
    :class:`~pipeline.data.loader.BatchLoader`'s ``global_batch``)."""
    first = step - step % accumulate
    end = min(first + accumulate, batches)
    return sum(loader.global_batch(s) for s in range(first, end))


def train_epoch(
    t: Training, epoch: int, optimizer: torch.optim.Optimizer, schedule: LRSchedule, *, swa: bool
) -> dict[str, float]:
    """Train one epoch; the epoch's training metrics. ``swa``: an averaged epoch, whose rate
    SWALR sets at the epoch's end (the schedule stands still)."""
    t.model.train()
    t.train_loader.set_epoch(epoch)
    world, loader, accumulate = t.world, t.train_loader, t.spec.train.accumulate
    if world.distributed:  # dropout and friends: their own stream per rank and epoch
        torch.manual_seed(epoch_seed(t.spec.seed, epoch, 100 + world.rank))
    metrics = t.metrics(t.device)
    reg_total = torch.zeros((), device=t.device)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    # a host sync (CUDA) or a collective (several ranks) every 25 steps, not every step
    check_every = 1 if t.device.type == "cpu" and not world.distributed else 25
    bad = torch.zeros((), dtype=torch.bool, device=t.device)
    autocast = torch.autocast(t.device.type, dtype=t.amp) if t.amp else contextlib.nullcontext()
    batches = len(loader)
    for step, (x, y) in enumerate(progress(loader, f"epoch {epoch + 1}", metrics.running)):
        last = (step + 1) % accumulate == 0 or step + 1 == batches
        if step % accumulate == 0:
            optimizer.zero_grad(set_to_none=True)
        x, target, y = t.mix(x, y, epoch, step)  # mixup/cutmix: soft targets, dominant y
        deferred = t.ddp.no_sync() if t.ddp is not None and not last else contextlib.nullcontext()
        with deferred:
            with autocast:
                logits = t.forward(x)
            loss = t.loss(logits.float(), target)  # the loss in fp32 whatever the autocast
            total = loss
            reg = P.penalty(t.constraints)
            if reg is not None:
                total = loss + reg
                reg_total += reg.detach()
            share = len(y) * world.size / window_samples(loader, step, accumulate, batches)
            if share != 1.0:
                total = total * share
            t.scaler.scale(total).backward()
        if last:
            if t.opt_spec.clip_value or t.opt_spec.clip_norm:
                t.scaler.unscale_(optimizer)
                clip_gradients(t.opt_spec, params)
            t.scaler.step(optimizer)
            t.scaler.update()
            P.apply_max_norm(t.constraints)
            if not swa:
                schedule.after_step()
            if t.ema is not None:
                t.ema.update()
        metrics.update(logits.float(), y, loss.float())
        bad |= ~torch.isfinite(loss.detach())
        if step % check_every == 0 and world.any(bad):
            raise TrainingDiverged(
                f"the loss became NaN/inf at epoch {epoch + 1}, step {step + 1}"
                + ("" if check_every == 1 else f" (checked every {check_every} steps)")
            )
    if world.any(bad):
        raise TrainingDiverged(f"the loss became NaN/inf during epoch {epoch + 1}")
    out = metrics.compute(world)
    if t.constraints:
        out["reg_loss"] = reg_total.item() / max(batches, 1)
    return out
