"""The search file's schema: a base spec, objectives, a space of spec fields, sampler, pruner,
budget and storage. Torch-free and Optuna-free, like the spec's: ``pipeline validate`` and the
JSON Schema need neither.

A search file (``searches/*.yaml``)::

    base: ../specs/mnist_convnet.yaml
    overrides: [train.epochs=3]            # -S style, fixed for every trial
    objective: {metric: val_accuracy}      # or a list of them: a Pareto front
    space:
      optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      train.batch_size: {type: choice, values: [64, 128, 256]}
      model.layers[6].units: {type: int, low: 32, high: 256, step: 32}
      optimizer.type: {type: choice, values: [adam, sgd]}
      optimizer.momentum: {type: float, low: 0.5, high: 0.99, when: {optimizer.type: sgd}}
    sampler: {type: tpe, seed: 0}
    pruner: {type: median, warmup_epochs: 1}
    budget: {trials: 20, timeout: 1h, parallel: 2}
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, WithJsonSchema, field_validator, model_validator

from pipeline.spec.base import StrictModel

SEARCH_FORMAT = 1

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(s|m|min|h|d)?\s*$")
_UNIT_S = {None: 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def duration_s(value: Any) -> float:
    """Seconds of ``90``, ``"90s"``, ``"15m"``, ``"1.5h"``, ``"1d"``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text such as 90s, 15m, 2h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(
                f"{value!r} is not a duration: a number of seconds or text such as 90s, 15m, 2h"
            )
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not seconds > 0:
        raise ValueError("a duration must be more than 0 seconds")
    return seconds


class _Distribution(StrictModel):
    when: dict[str, Any] | None = None
    """Sample this parameter only when each of these searched parameters (dotted paths, keys
    of ``space``) has the given value (e.g. ``{optimizer.type: sgd}``); otherwise the base
    spec's value stays."""


class Choice(_Distribution):
    """One of ``values``: numbers, text, or whole mappings (a whole ``optimizer`` section)."""

    type: Literal["choice"] = "choice"
    values: Annotated[list[Any], Field(min_length=1)]


class IntRange(_Distribution):
    """An integer from ``low`` to ``high``, both included, in steps of ``step``; ``log``
    samples uniformly on a log scale (``step`` must then be 1)."""

    type: Literal["int"] = "int"
    low: int
    high: int
    step: Annotated[int, Field(ge=1)] = 1
    log: bool = False


class FloatRange(_Distribution):
    """A float from ``low`` to ``high``; ``step`` makes it discrete (and griddable), ``log``
    samples uniformly on a log scale (no ``step`` with it)."""

    type: Literal["float"] = "float"
    low: float
    high: float
    step: Annotated[float, Field(gt=0)] | None = None
    log: bool = False


Distribution = Annotated[Choice | IntRange | FloatRange, Field(discriminator="type")]

Direction = Literal["maximize", "minimize"]


class Objective(StrictModel):
    """What a trial is scored by: a metric the run records, and which way is better."""

    metric: str = "val_accuracy"
    """``val_<m>`` / ``<m>`` (loss, accuracy, topK_accuracy): the training history's value at
    the monitored (best) epoch; ``test_<m>`` (and ``macro_f1``...): evaluate's metrics.json on
    the test split (each trial is then evaluated); ``params``: the trainable parameter count."""
    direction: Direction | None = None
    """Default: minimize for losses and ``params``, maximize otherwise."""

    def resolved_direction(self) -> Direction:
        if self.direction is not None:
            return self.direction
        lower = "loss" in self.metric or self.metric in (
            "params",
            "ece",
            "mc_ece",
            "mc_mean_spread",
        )
        return "minimize" if lower else "maximize"


SamplerType = Literal["grid", "random", "tpe", "gp", "cmaes", "nsga2"]


class Sampler(StrictModel):
    type: SamplerType = "tpe"
    """grid (every combination; ranges need ``step``), random, tpe (Bayesian, the default),
    gp (Gaussian process), cmaes (CMA-ES, numeric ranges), nsga2 (several objectives)."""
    seed: int | None = 0
    """The sampler's seed: the same file proposes the same trials (null: a new draw each run)."""
    startup_trials: Annotated[int, Field(ge=0)] | None = None
    """Random trials before tpe/gp/cmaes start to model (Optuna's default when null)."""


PrunerType = Literal["none", "median", "halving", "hyperband"]


class Pruner(StrictModel):
    type: PrunerType = "none"
    """none; median (stop a trial whose metric is below the median of earlier trials' at the
    same epoch); halving (successive halving); hyperband."""
    warmup_epochs: Annotated[int, Field(ge=0)] = 1
    """Epochs a trial always runs before it may be pruned."""
    startup_trials: Annotated[int, Field(ge=0)] = 2
    """Trials that finish unpruned before median pruning starts."""


class Budget(StrictModel):
    trials: Annotated[int, Field(ge=1, le=100_000)] | None = None
    """Trials in all (finished, pruned and failed; a trial interrupted and retried counts
    once). With no ``timeout``: required, except for a grid (its size)."""
    timeout: Annotated[
        float | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "number", "exclusiveMinimum": 0},
                    {"type": "string", "pattern": r"^\s*\d+(\.\d*)?\s*(s|m|min|h|d)?\s*$"},
                    {"type": "null"},
                ],
                "description": "Wall time after which no new trial starts: seconds, or 30m, 2h.",
            }
        ),
    ] = None
    """Wall time after which no new trial starts: seconds, or ``30m``, ``2h``."""
    parallel: Annotated[int, Field(ge=1, le=64)] = 1
    """Trials at once on this machine, each in its own process with its share of the cores."""

    _check_timeout = field_validator("timeout", mode="before")(
        lambda v: None if v is None else duration_s(v)
    )


class Search(StrictModel):
    """A hyperparameter search over a base spec's fields."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)] | None = (
        None
    )
    """Names the folder ``runs/<name>/`` and the study; default: the file's name."""
    description: str = ""
    base: str
    """The spec searched over, relative to this file."""
    overrides: list[str] = []
    """``-S``-style ``dotted.path=value`` settings applied to the base for every trial."""
    objective: Objective | Annotated[list[Objective], Field(min_length=1, max_length=4)] = (
        Objective()
    )
    """One objective, or several (a Pareto front instead of one best trial)."""
    space: Annotated[dict[str, Distribution], Field(min_length=1)]
    """Dotted spec paths, as ``-S`` writes them, to the distribution each is drawn from."""
    sampler: Sampler = Sampler()
    pruner: Pruner = Pruner()
    budget: Budget = Budget()
    storage: str | None = None
    """An Optuna storage: a URL (``sqlite:///...``, ``postgresql://...``) or a journal file
    (``journal:path``); default: ``runs/<name>/study.db``. Processes and machines that share it
    share the study."""
    dvc: bool | None = None
    """Record every finished trial as a DVC experiment; default: when in a DVC repository."""

    @model_validator(mode="after")
    def _objectives_unique(self) -> Search:
        metrics = [o.metric for o in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"an objective is named twice: {metrics}")
        return self

    @property
    def objectives(self) -> list[Objective]:
        return list(self.objective) if isinstance(self.objective, list) else [self.objective]

    @property
    def directions(self) -> list[Direction]:
        return [o.resolved_direction() for o in self.objectives]
