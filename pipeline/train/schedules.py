"""Learning-rate schedules from the spec's ``schedule`` section, on torch's own schedulers.

``t`` counts intervals (optimizer steps or epochs, as the spec declares) from 0.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import lr_scheduler

from pipeline.errors import ConfigurationError
from pipeline.registry import Builders
from pipeline.spec import optim as s
from pipeline.spec.base import SCHEDULES
from pipeline.train.optim import build_optimizer

ScheduleBuilder = Callable[[Any, torch.optim.Optimizer, int], Any]
SCHEDULE_BUILDERS: Builders[ScheduleBuilder] = Builders(SCHEDULES, "schedule")
"""Schedule schema class -> ``(schedule, optimizer, total intervals) -> torch scheduler``."""


def _lambda(opt: torch.optim.Optimizer, factor: Callable[[int], float]) -> lr_scheduler.LambdaLR:
    return lr_scheduler.LambdaLR(opt, factor)


@SCHEDULE_BUILDERS.register(s.ConstantSchedule)
def _constant(sch: s.ConstantSchedule, opt: torch.optim.Optimizer, total: int) -> Any:
    return _lambda(opt, lambda t: 1.0)


@SCHEDULE_BUILDERS.register(s.StepSchedule)
def _step(sch: s.StepSchedule, opt: torch.optim.Optimizer, total: int) -> Any:
    return lr_scheduler.StepLR(opt, step_size=sch.step_size, gamma=sch.gamma)


@SCHEDULE_BUILDERS.register(s.MultiStepSchedule)
def _multi_step(sch: s.MultiStepSchedule, opt: torch.optim.Optimizer, total: int) -> Any:
    return lr_scheduler.MultiStepLR(opt, milestones=sorted(sch.milestones), gamma=sch.gamma)


@SCHEDULE_BUILDERS.register(s.PiecewiseConstantSchedule)
def _piecewise(sch: s.PiecewiseConstantSchedule, opt: torch.optim.Optimizer, total: int) -> Any:
    base = opt.param_groups[0]["lr"]
    # Keras: values[i] while t <= boundaries[i].
    return _lambda(opt, lambda t: sch.values[bisect.bisect_left(sch.boundaries, t)] / base)


@SCHEDULE_BUILDERS.register(s.ExponentialSchedule)
def _exponential(sch: s.ExponentialSchedule, opt: torch.optim.Optimizer, total: int) -> Any:
    def factor(t: int) -> float:
        p = t / sch.decay_steps
        return sch.decay_rate ** (math.floor(p) if sch.staircase else p)

    return _lambda(opt, factor)


@SCHEDULE_BUILDERS.register(s.PowerSchedule)
def _power(sch: s.PowerSchedule, opt: torch.optim.Optimizer, total: int) -> Any:
    return _lambda(opt, lambda t: 1.0 / (1.0 + t / sch.decay_steps) ** sch.power)


@SCHEDULE_BUILDERS.register(s.ReduceOnPlateau)
def _plateau(sch: s.ReduceOnPlateau, opt: torch.optim.Optimizer, total: int) -> Any:
    mode = sch.mode if sch.mode != "auto" else ("max" if "acc" in sch.monitor else "min")
    return lr_scheduler.ReduceLROnPlateau(
        opt, mode=mode, factor=sch.factor, patience=sch.patience, threshold=sch.min_delta,
        threshold_mode="abs", cooldown=sch.cooldown, min_lr=sch.min_lr,
    )  # fmt: skip


def _has_momentum(opt: torch.optim.Optimizer) -> bool:
    d = opt.defaults
    return "betas" in d or d.get("momentum", 0) > 0


@SCHEDULE_BUILDERS.register(s.OneCycle)
def _one_cycle(sch: s.OneCycle, opt: torch.optim.Optimizer, total: int) -> Any:
    return lr_scheduler.OneCycleLR(
        opt, max_lr=sch.max_lr, total_steps=max(total, 2), pct_start=sch.pct_start,
        anneal_strategy=sch.anneal, div_factor=sch.div_factor,
        final_div_factor=sch.final_div_factor,
        cycle_momentum=sch.cycle_momentum and _has_momentum(opt),
        base_momentum=sch.base_momentum, max_momentum=sch.max_momentum,
    )  # fmt: skip


@SCHEDULE_BUILDERS.register(s.Cyclic)
def _cyclic(sch: s.Cyclic, opt: torch.optim.Optimizer, total: int) -> Any:
    return lr_scheduler.CyclicLR(
        opt, base_lr=sch.base_lr, max_lr=sch.max_lr, step_size_up=sch.step_size_up,
        mode=sch.mode, gamma=sch.gamma, cycle_momentum=False,
    )  # fmt: skip


@SCHEDULE_BUILDERS.register(s.Cosine)
def _cosine(sch: s.Cosine, opt: torch.optim.Optimizer, total: int) -> Any:
    base = opt.param_groups[0]["lr"]
    floor = sch.min_lr / base

    def factor(t: int) -> float:
        if t < sch.warmup:
            return (t + 1) / sch.warmup
        span = max(total - sch.warmup, 1)
        progress = min((t - sch.warmup) / span, 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return _lambda(opt, factor)


SCHEDULE_BUILDERS.check_complete()


class LRSchedule:
    """Steps the torch scheduler at the spec's interval: call ``after_step`` after every
    optimizer step and ``after_epoch`` at the end of every epoch."""

    def __init__(
        self, sch: Any, opt: torch.optim.Optimizer, *, steps_per_epoch: int, epochs: int
    ) -> None:
        self.spec = sch
        total = epochs * steps_per_epoch if sch.interval == "step" else epochs
        self.scheduler = SCHEDULE_BUILDERS[sch](sch, opt, total)

    def after_step(self) -> None:
        if self.spec.interval == "step":
            self.scheduler.step()

    def after_epoch(self, metrics: dict[str, float]) -> None:
        if isinstance(self.spec, s.ReduceOnPlateau):
            if self.spec.monitor not in metrics:
                raise ConfigurationError(
                    f"reduce_on_plateau monitors {self.spec.monitor!r}, which this "
                    f"run does not record (it has {', '.join(sorted(metrics))})"
                )
            self.scheduler.step(metrics[self.spec.monitor])
        elif self.spec.interval == "epoch":
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def planned(
    sch: Any, o: s.OptimizerBase, *, steps_per_epoch: int, epochs: int
) -> list[dict[str, float]]:
    """The learning rate (and momentum) at every optimizer step, computed without training.
    reduce_on_plateau depends on metrics, so it is planned as constant."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer(o, [param])
    schedule = LRSchedule(sch, opt, steps_per_epoch=steps_per_epoch, epochs=epochs)
    rows = []
    for epoch in range(epochs):
        for i in range(steps_per_epoch):
            group = opt.param_groups[0]
            momentum = group.get("momentum", group.get("betas", (None,))[0])
            rows.append(
                {
                    "step": epoch * steps_per_epoch + i,
                    "epoch": epoch,
                    "lr": group["lr"],
                    "momentum": momentum,
                }
            )
            opt.step()
            schedule.after_step()
        if not isinstance(sch, s.ReduceOnPlateau):
            schedule.after_epoch({})
    return rows
