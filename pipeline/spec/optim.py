"""The ``optimizer`` and ``schedule`` sections.

Where Keras and PyTorch defaults differ, Keras's are taken (the seeds are Keras) and the field's
description says what PyTorch would have used.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipeline.spec.base import (
    OPTIMIZERS,
    SCHEDULES,
    Kind,
    NonNegativeFloat,
    PositiveFloat,
    StrictModel,
)

Beta = Annotated[float, Field(ge=0, lt=1)]

MAX_STEPS = 100_000_000
"""The most optimizer steps a run may take: at a millisecond a step (a small model on a fast
GPU) that is over a day; more is a typo that would never finish (``1e9``)."""
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
"""A duration in schedule intervals: at most MAX_STEPS (a longer one is never reached)."""


class ParamGroup(StrictModel):
    """Different settings for some layers' parameters (discriminative learning rates)."""

    layers: list[str]
    """Layer names or globs (``backbone_1``, ``block5_*``)."""
    lr: PositiveFloat | None = None
    """Absolute learning rate for these layers ..."""
    lr_scale: PositiveFloat | None = None
    """... or a multiple of the optimizer's (schedules scale it along)."""
    weight_decay: NonNegativeFloat | None = None


class OptimizerBase(Kind):
    lr: PositiveFloat = 1e-3
    """Learning rate (a schedule starts from it)."""
    weight_decay: NonNegativeFloat = 0.0
    """L2 added to the gradient (coupled); for adamw it is decoupled weight decay."""
    clip_norm: PositiveFloat | None = None
    """Rescale all gradients together so their global L2 norm is at most this."""
    clip_value: PositiveFloat | None = None
    """Clip each gradient element to [-clip_value, clip_value] (Keras clipvalue)."""
    param_groups: list[ParamGroup] = []


@OPTIMIZERS.register
class SGD(OptimizerBase):
    type: Literal["sgd"] = "sgd"
    lr: PositiveFloat = 0.01
    momentum: Beta = 0.0
    nesterov: bool = False
    """Nesterov accelerated gradient; needs momentum > 0."""


@OPTIMIZERS.register
class Adagrad(OptimizerBase):
    type: Literal["adagrad"] = "adagrad"
    initial_accumulator: NonNegativeFloat = 0.1
    """Keras's 0.1 (PyTorch starts at 0)."""
    eps: PositiveFloat = 1e-7


@OPTIMIZERS.register
class RMSprop(OptimizerBase):
    type: Literal["rmsprop"] = "rmsprop"
    rho: Beta = 0.9
    """Decay of the squared-gradient average (Keras's 0.9; PyTorch calls it alpha, default 0.99)."""
    momentum: Beta = 0.0
    centered: bool = False
    eps: PositiveFloat = 1e-7
    """Keras's 1e-7 (PyTorch: 1e-8)."""


class AdamFamily(OptimizerBase):
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    """(beta_1, beta_2) decay of the gradient and squared-gradient averages."""
    eps: PositiveFloat = 1e-7
    """Keras's 1e-7 (PyTorch: 1e-8)."""


@OPTIMIZERS.register
class Adam(AdamFamily):
    type: Literal["adam"] = "adam"
    amsgrad: bool = False


@OPTIMIZERS.register
class AdamW(AdamFamily):
    """Adam with decoupled weight decay (Loshchilov and Hutter)."""

    type: Literal["adamw"] = "adamw"
    weight_decay: NonNegativeFloat = 0.01
    amsgrad: bool = False


@OPTIMIZERS.register
class Adamax(AdamFamily):
    type: Literal["adamax"] = "adamax"


@OPTIMIZERS.register
class NAdam(AdamFamily):
    type: Literal["nadam"] = "nadam"


@OPTIMIZERS.register
class RAdam(AdamFamily):
    """Rectified Adam: variance-adaptive warm-up built in."""

    type: Literal["radam"] = "radam"
    eps: PositiveFloat = 1e-8


# ---- learning-rate schedules --------------------------------------------------------------

Interval = Literal["epoch", "step"]


class ScheduleBase(Kind):
    interval: Interval = "epoch"
    """When the rate changes: after every epoch or every optimizer step. Durations below count
    in this unit."""


@SCHEDULES.register
class ConstantSchedule(ScheduleBase):
    type: Literal["constant"] = "constant"


@SCHEDULES.register
class StepSchedule(ScheduleBase):
    """lr * gamma^floor(t / step_size) (PyTorch StepLR)."""

    type: Literal["step"] = "step"
    step_size: Steps
    gamma: PositiveFloat = 0.1


@SCHEDULES.register
class MultiStepSchedule(ScheduleBase):
    """Multiply by gamma at each milestone."""

    type: Literal["multi_step"] = "multi_step"
    milestones: list[Steps]
    gamma: PositiveFloat = 0.1


@SCHEDULES.register
class PiecewiseConstantSchedule(ScheduleBase):
    """values[i] while t <= boundaries[i] (Keras PiecewiseConstantDecay); values are rates."""

    type: Literal["piecewise_constant"] = "piecewise_constant"
    boundaries: list[Steps]
    values: list[PositiveFloat]

    @model_validator(mode="after")
    def _lengths(self) -> PiecewiseConstantSchedule:
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(
                f"values needs one more entry than boundaries ({len(self.boundaries) + 1}), "
                f"got {len(self.values)}"
            )
        if self.boundaries != sorted(set(self.boundaries)):
            raise ValueError("boundaries must be strictly increasing")
        return self


@SCHEDULES.register
class ExponentialSchedule(ScheduleBase):
    """lr * decay_rate^(t / decay_steps): divided by 10 every decay_steps with the default."""

    type: Literal["exponential"] = "exponential"
    decay_steps: Annotated[float, Field(gt=0, le=MAX_STEPS)]
    decay_rate: PositiveFloat = 0.1
    staircase: bool = False
    """Use floor(t / decay_steps): change in jumps."""


@SCHEDULES.register
class PowerSchedule(ScheduleBase):
    """lr / (1 + t / decay_steps)^power (inverse-time decay)."""

    type: Literal["power"] = "power"
    decay_steps: Annotated[float, Field(gt=0, le=MAX_STEPS)]
    power: PositiveFloat = 1.0


@SCHEDULES.register
class ReduceOnPlateau(ScheduleBase):
    """Multiply by factor when ``monitor`` has not improved for ``patience`` epochs."""

    type: Literal["reduce_on_plateau"] = "reduce_on_plateau"
    interval: Literal["epoch"] = "epoch"
    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    """auto: max for accuracy-like metrics, min otherwise."""
    factor: Annotated[float, Field(gt=0, lt=1)] = 0.1
    patience: Annotated[int, Field(ge=0)] = 10
    min_delta: NonNegativeFloat = 1e-4
    cooldown: Annotated[int, Field(ge=0)] = 0
    min_lr: NonNegativeFloat = 0.0


@SCHEDULES.register
class OneCycle(ScheduleBase):
    """Smith's 1cycle: warm up to max_lr, anneal far below the start; momentum moves inversely."""

    type: Literal["one_cycle"] = "one_cycle"
    interval: Interval = "step"
    max_lr: PositiveFloat
    pct_start: Annotated[float, Field(gt=0, lt=1)] = 0.3
    """Fraction of the run spent increasing the rate."""
    div_factor: PositiveFloat = 25.0
    """Start at max_lr / div_factor."""
    final_div_factor: PositiveFloat = 1e4
    """End at start / final_div_factor."""
    anneal: Literal["cos", "linear"] = "cos"
    cycle_momentum: bool = True
    base_momentum: Beta = 0.85
    max_momentum: Beta = 0.95


@SCHEDULES.register
class Cyclic(ScheduleBase):
    """Cyclical learning rates (Smith 2017) between base_lr and max_lr."""

    type: Literal["cyclic"] = "cyclic"
    interval: Interval = "step"
    base_lr: PositiveFloat
    max_lr: PositiveFloat
    step_size_up: Steps = 2000
    """Half a cycle, in intervals (Smith suggests 2-10 epochs' worth of steps)."""
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"
    gamma: PositiveFloat = 1.0
    """exp_range: amplitude multiplied by gamma^t."""

    @model_validator(mode="after")
    def _order(self) -> Cyclic:
        if self.max_lr <= self.base_lr:
            raise ValueError(f"max_lr ({self.max_lr}) must exceed base_lr ({self.base_lr})")
        return self


@SCHEDULES.register
class Cosine(ScheduleBase):
    """Linear warm-up from 0, then cosine decay to min_lr at the end of training."""

    type: Literal["cosine"] = "cosine"
    interval: Interval = "step"
    warmup: Annotated[int, Field(ge=0, le=MAX_STEPS)] = 0
    """Warm-up length in intervals."""
    min_lr: NonNegativeFloat = 0.0


OptimizerSpec = OPTIMIZERS.union()
ScheduleSpec = SCHEDULES.union()
