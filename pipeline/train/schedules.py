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

Rate = Callable[[int], tuple[float, float | None]]
RateBuilder = Callable[[Any, float, int], Rate]
RATES: Builders[RateBuilder] = Builders(SCHEDULES, "schedule rate")
"""Schedule schema class -> ``(schedule, base lr, total intervals) -> t -> (lr, momentum)``:
the rate at interval t in closed form (momentum None: the optimizer's own), what
schedule-preview samples where stepping through every step would not finish. The test of the
schedules checks each against its torch scheduler above, step by step."""

Factor = Callable[[int], float]


def _lambda_kind(cls: type, factor: Callable[[Any, float, int], Factor]) -> None:
    """A schedule that is ``base lr * factor(t)``: one factor for training (torch's LambdaLR)
    and for the closed form."""

    def build(sch: Any, opt: torch.optim.Optimizer, total: int) -> Any:
        return lr_scheduler.LambdaLR(opt, factor(sch, opt.param_groups[0]["lr"], total))

    def rate(sch: Any, base: float, total: int) -> Rate:
        f = factor(sch, base, total)
        return lambda t: (base * f(t), None)

    SCHEDULE_BUILDERS.register(cls)(build)
    RATES.register(cls)(rate)


def _constant(sch: s.ConstantSchedule, base: float, total: int) -> Factor:
    return lambda t: 1.0


def _piecewise(sch: s.PiecewiseConstantSchedule, base: float, total: int) -> Factor:
    # Keras: values[i] while t <= boundaries[i].
    return lambda t: sch.values[bisect.bisect_left(sch.boundaries, t)] / base


def _exponential(sch: s.ExponentialSchedule, base: float, total: int) -> Factor:
    def factor(t: int) -> float:
        p = t / sch.decay_steps
        return sch.decay_rate ** (math.floor(p) if sch.staircase else p)

    return factor


def _power(sch: s.PowerSchedule, base: float, total: int) -> Factor:
    return lambda t: 1.0 / (1.0 + t / sch.decay_steps) ** sch.power


def _cosine(sch: s.Cosine, base: float, total: int) -> Factor:
    floor = sch.min_lr / base

    def factor(t: int) -> float:
        if t < sch.warmup:
            return (t + 1) / sch.warmup
        span = max(total - sch.warmup, 1)
        progress = min((t - sch.warmup) / span, 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


_lambda_kind(s.ConstantSchedule, _constant)
_lambda_kind(s.PiecewiseConstantSchedule, _piecewise)
_lambda_kind(s.ExponentialSchedule, _exponential)
_lambda_kind(s.PowerSchedule, _power)
_lambda_kind(s.Cosine, _cosine)


@SCHEDULE_BUILDERS.register(s.StepSchedule)
def _step(sch: s.StepSchedule, opt: torch.optim.Optimizer, total: int) -> Any:
    return lr_scheduler.StepLR(opt, step_size=sch.step_size, gamma=sch.gamma)


@RATES.register(s.StepSchedule)
def _step_rate(sch: s.StepSchedule, base: float, total: int) -> Rate:
    return lambda t: (base * sch.gamma ** (t // sch.step_size), None)


@SCHEDULE_BUILDERS.register(s.MultiStepSchedule)
def _multi_step(sch: s.MultiStepSchedule, opt: torch.optim.Optimizer, total: int) -> Any:
    return lr_scheduler.MultiStepLR(opt, milestones=sorted(sch.milestones), gamma=sch.gamma)


@RATES.register(s.MultiStepSchedule)
def _multi_step_rate(sch: s.MultiStepSchedule, base: float, total: int) -> Rate:
    milestones = sorted(sch.milestones)  # a milestone listed twice multiplies twice, as torch's
    return lambda t: (base * sch.gamma ** bisect.bisect_right(milestones, t), None)


@SCHEDULE_BUILDERS.register(s.ReduceOnPlateau)
def _plateau(sch: s.ReduceOnPlateau, opt: torch.optim.Optimizer, total: int) -> Any:
    mode = sch.mode if sch.mode != "auto" else ("max" if "acc" in sch.monitor else "min")
    return lr_scheduler.ReduceLROnPlateau(
        opt, mode=mode, factor=sch.factor, patience=sch.patience, threshold=sch.min_delta,
        threshold_mode="abs", cooldown=sch.cooldown, min_lr=sch.min_lr,
    )  # fmt: skip


@RATES.register(s.ReduceOnPlateau)
def _plateau_rate(sch: s.ReduceOnPlateau, base: float, total: int) -> Rate:
    return lambda t: (base, None)  # it follows metrics: planned as constant


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


def one_cycle_rate(sch: s.OneCycle, total: int, cycle_momentum: bool) -> Rate:
    """torch's OneCycleLR (two phases) in closed form: up from max_lr / div_factor to max_lr
    until pct_start of the run, then down to the start / final_div_factor; momentum the other
    way when it cycles."""
    total = max(total, 2)
    start = sch.max_lr / sch.div_factor
    phases = [  # (end step, lr from, lr to, momentum from, momentum to)
        (sch.pct_start * total - 1, start, sch.max_lr, sch.max_momentum, sch.base_momentum),
        (total - 1, sch.max_lr, start / sch.final_div_factor, sch.base_momentum, sch.max_momentum),
    ]

    def anneal(a: float, b: float, pct: float) -> float:
        if sch.anneal == "cos":
            return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (b - a) * pct + a

    def rate(t: int) -> tuple[float, float | None]:
        begin = 0.0
        for i, (end, lr0, lr1, m0, m1) in enumerate(phases):
            if t <= end or i == len(phases) - 1:
                pct = (t - begin) / (end - begin)
                return anneal(lr0, lr1, pct), anneal(m0, m1, pct) if cycle_momentum else None
            begin = end
        raise AssertionError("unreachable: the last phase takes every step")

    return rate


@RATES.register(s.OneCycle)
def _one_cycle_rate(sch: s.OneCycle, base: float, total: int) -> Rate:
    return one_cycle_rate(sch, total, cycle_momentum=False)  # planned() passes the optimizer's


@SCHEDULE_BUILDERS.register(s.Cyclic)
def _cyclic(sch: s.Cyclic, opt: torch.optim.Optimizer, total: int) -> Any:
    return lr_scheduler.CyclicLR(
        opt, base_lr=sch.base_lr, max_lr=sch.max_lr, step_size_up=sch.step_size_up,
        mode=sch.mode, gamma=sch.gamma, cycle_momentum=False,
    )  # fmt: skip


@RATES.register(s.Cyclic)
def _cyclic_rate(sch: s.Cyclic, base: float, total: int) -> Rate:
    """torch's CyclicLR (step_size_down = step_size_up) in closed form."""
    size = 2 * sch.step_size_up

    def rate(t: int) -> tuple[float, float | None]:
        cycle = math.floor(1 + t / size)
        x = 1.0 + t / size - cycle
        scale = x / 0.5 if x <= 0.5 else (x - 1) / (0.5 - 1)
        height = (sch.max_lr - sch.base_lr) * scale
        if sch.mode == "triangular":
            amplitude = 1.0
        elif sch.mode == "triangular2":
            amplitude = 1 / (2.0 ** (cycle - 1))
        else:
            amplitude = sch.gamma**t
        return sch.base_lr + height * amplitude, None

    return rate


SCHEDULE_BUILDERS.check_complete()
RATES.check_complete()


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


PREVIEW_POINTS = 2_000
"""schedule-preview's rows at most: every step of a shorter run, else this many, evenly spread."""


def planned(
    sch: Any,
    o: s.OptimizerBase,
    *,
    steps_per_epoch: int,
    epochs: int,
    points: int | None = None,
) -> list[dict[str, float]]:
    """The learning rate (and momentum) at optimizer steps, computed without training:
    every step, by stepping the torch scheduler as training does; with ``points``, a run of
    more steps than that gets ``points`` of them (the first and last included), each in
    closed form (:data:`RATES`), so the work is bounded whatever the step count.
    reduce_on_plateau depends on metrics, so it is planned as constant."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer(o, [param])
    steps = steps_per_epoch * epochs
    if points is not None and steps > points:
        return _sampled(sch, opt, steps_per_epoch, epochs, points)
    schedule = LRSchedule(sch, opt, steps_per_epoch=steps_per_epoch, epochs=epochs)
    rows = []
    for epoch in range(epochs):
        for i in range(steps_per_epoch):
            rows.append(_row(epoch * steps_per_epoch + i, epoch, opt.param_groups[0]))
            opt.step()
            schedule.after_step()
        if not isinstance(sch, s.ReduceOnPlateau):
            schedule.after_epoch({})
    return rows


def _momentum(group: dict[str, Any]) -> float | None:
    return group.get("momentum", group.get("betas", (None,))[0])


def _row(step: int, epoch: int, group: dict[str, Any]) -> dict[str, Any]:
    return {"step": step, "epoch": epoch, "lr": group["lr"], "momentum": _momentum(group)}


def _sampled(
    sch: Any, opt: torch.optim.Optimizer, steps_per_epoch: int, epochs: int, points: int
) -> list[dict[str, float]]:
    steps = steps_per_epoch * epochs
    by_step = sch.interval == "step"
    total = steps if by_step else epochs
    group = opt.param_groups[0]
    if isinstance(sch, s.OneCycle):
        rate = one_cycle_rate(sch, total, sch.cycle_momentum and _has_momentum(opt))
    else:
        rate = RATES[sch](sch, group["lr"], total)
    rows = []
    for step in sorted({round(k * (steps - 1) / (points - 1)) for k in range(points)}):
        epoch = step // steps_per_epoch
        lr, momentum = rate(step if by_step else epoch)
        row = {"step": step, "epoch": epoch, "lr": lr}
        rows.append(row | {"momentum": _momentum(group) if momentum is None else momentum})
    return rows
