"""A search's space as Optuna sees it: what each trial draws, and the ``-S`` settings that make
its spec.

A choice of plain values (numbers, text, booleans) is drawn as those values. A choice with a
mapping or list among its values is drawn by label (the value written as one line of YAML,
``{type: sgd, lr: 0.05}``), so the dashboard and trials.csv show what was chosen, and the label
maps back to the value. ``when`` makes a parameter conditional: it is drawn only when every
parameter it names (an earlier key of ``space``) has the given value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import yaml

from pipeline.search.schema import Choice, FloatRange, IntRange, Search

_PLAIN = (str, int, float, bool, type(None))


def as_yaml(value: Any) -> str:
    """``value`` as one line of YAML (flow style), as ``-S`` reads it back."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def override_text(path: str, value: Any) -> str:
    """The ``-S`` setting ``path=value``."""
    return f"{path}={as_yaml(value)}"


def plain(choice: Choice) -> bool:
    """True when Optuna can take the choice's values as they are."""
    return all(isinstance(v, _PLAIN) for v in choice.values)


def labels(choice: Choice) -> list[Any]:
    """What Optuna draws for a choice: its values, or their one-line YAML labels."""
    return list(choice.values) if plain(choice) else [as_yaml(v) for v in choice.values]


def value_of(choice: Choice, drawn: Any) -> Any:
    """The choice's value for what Optuna drew (a value or a label)."""
    if plain(choice):
        return drawn
    return choice.values[labels(choice).index(drawn)]


def active(search: Search, path: str, values: Mapping[str, Any]) -> bool:
    """Whether ``path``'s ``when`` holds for the values drawn so far."""
    when = search.space[path].when or {}
    return all(k in values and values[k] == v for k, v in when.items())


def suggest(trial: Any, search: Search) -> dict[str, Any]:
    """Draw each active parameter of the space with ``trial`` (an ``optuna.Trial``), in the
    space's order; the spec values by dotted path."""
    values: dict[str, Any] = {}
    for path, dist in search.space.items():
        if not active(search, path, values):
            continue
        if isinstance(dist, Choice):
            values[path] = value_of(dist, trial.suggest_categorical(path, labels(dist)))
        elif isinstance(dist, IntRange):
            values[path] = trial.suggest_int(
                path, dist.low, dist.high, step=dist.step, log=dist.log
            )
        else:
            values[path] = trial.suggest_float(
                path, dist.low, dist.high, step=dist.step, log=dist.log
            )
    return values


def from_params(search: Search, params: Mapping[str, Any]) -> dict[str, Any]:
    """The spec values of a finished trial's ``params`` (labels mapped back to values)."""
    out = {}
    for path, drawn in params.items():
        dist = search.space.get(path)
        out[path] = value_of(dist, drawn) if isinstance(dist, Choice) else drawn
    return out


def depth(path: str) -> int:
    """How deep a dotted path goes: ``optimizer`` 0, ``optimizer.lr`` 1, ``a.b[2].c`` 3."""
    return path.count(".") + path.count("[")


def overrides(search: Search, values: Mapping[str, Any]) -> list[str]:
    """The ``-S`` settings of a trial: the search's fixed ones, then the drawn values, a whole
    section before the fields inside it (a drawn ``optimizer`` then its drawn ``lr``: the
    field refines the section, whichever order the space lists them in)."""
    drawn = sorted(values.items(), key=lambda item: depth(item[0]))
    return [*search.overrides, *(override_text(p, v) for p, v in drawn)]


def grid(search: Search) -> dict[str, list[Any]]:
    """The grid sampler's space: every value of each parameter. A range needs a ``step``
    (:mod:`pipeline.search.load` refuses one without)."""
    out: dict[str, list[Any]] = {}
    for path, dist in search.space.items():
        if isinstance(dist, Choice):
            out[path] = labels(dist)
        elif isinstance(dist, IntRange):
            out[path] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatRange) and dist.step is not None:
            n = math.floor((dist.high - dist.low) / dist.step + 1e-9)
            out[path] = [round(dist.low + i * dist.step, 12) for i in range(n + 1)]
    return out


def grid_size(search: Search) -> int:
    return math.prod(len(v) for v in grid(search).values())
