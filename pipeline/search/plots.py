"""A search's plots: Optuna's matplotlib figures as PNGs in ``runs/<search>/plots/``.

Their names, which ones a study can support now (:func:`plan`), and the :class:`Snapshot` of a
study they are drawn from. No heavy imports: :mod:`pipeline.search.drawing` draws them (with
matplotlib), :mod:`pipeline.search.plot_server` in a process of its own.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

HISTORY = "plots/history.png"
PARALLEL = "plots/parallel_coordinates.png"
IMPORTANCES = "plots/importances.png"
INTERMEDIATE = "plots/intermediate.png"
PARETO_FRONT = "plots/pareto_front.png"
PLOTS = (HISTORY, PARALLEL, IMPORTANCES, INTERMEDIATE, PARETO_FRONT)


@dataclass(frozen=True)
class Snapshot:
    """What a drawing process needs of a study: picklable, no storage connection."""

    directions: list[str]
    trials: list[Any]  # optuna.trial.FrozenTrial
    metrics: list[str]

    @property
    def multi(self) -> bool:
        return len(self.directions) > 1 or len(self.metrics) > 1


def snapshot(study: optuna.Study, metrics: Sequence[str]) -> Snapshot:
    return Snapshot(
        directions=[d.name.lower() for d in study.directions],
        trials=list(study.get_trials(deepcopy=False)),
        metrics=list(metrics),
    )


def signed(study: optuna.Study, i: int) -> Callable[[Any], float]:
    """Objective ``i`` of a trial, negated when it is maximized: lower is better."""
    from optuna.study import StudyDirection

    sign = -1.0 if study.directions[i] == StudyDirection.MAXIMIZE else 1.0
    return lambda t: sign * t.values[i]


def varying(done: Sequence[optuna.trial.FrozenTrial]) -> list[str]:
    """Parameters drawn with at least two different values among ``done``."""
    seen: dict[str, set[str]] = {}
    for t in done:
        for name, value in t.params.items():
            seen.setdefault(name, set()).add(repr(value))
    return [name for name, values in seen.items() if len(values) > 1]


def plan(study: optuna.Study, multi: bool) -> tuple[list[str], dict[str, str]]:
    """The plots the study can support now, and why each other one is not drawn."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    drawn: list[str] = []
    skipped: dict[str, str] = {}
    if not done:
        for name in (HISTORY, PARALLEL):
            skipped[name] = "no trial has completed yet"
    else:
        drawn += [HISTORY, PARALLEL]
    if len(done) < 2:
        skipped[IMPORTANCES] = (
            f"parameter importances need at least 2 completed trials; {len(done)} so far"
        )
    elif not varying(done):
        skipped[IMPORTANCES] = (
            "parameter importances need a parameter that differs between completed trials; "
            "every completed trial drew the same values"
        )
    else:
        drawn.append(IMPORTANCES)
    if multi:
        skipped[INTERMEDIATE] = "several objectives: trials report no per-epoch values"
    elif any(t.intermediate_values for t in trials):
        drawn.append(INTERMEDIATE)
    else:
        skipped[INTERMEDIATE] = "no trial has reported a per-epoch value yet"
    if multi:
        n = len(study.directions)
        if n > 3:
            skipped[PARETO_FRONT] = f"Optuna draws a Pareto front of 2 or 3 objectives, not {n}"
        elif not done:
            skipped[PARETO_FRONT] = "no trial has completed yet"
        else:
            drawn.append(PARETO_FRONT)
    return drawn, skipped


# ---- the drawing process's messages: a length, then a pickle (over a private pipe) ---------


def write_message(stream: Any, value: Any) -> None:
    data = pickle.dumps(value)
    stream.write(struct.pack("!Q", len(data)) + data)
    stream.flush()


def read_message(stream: Any) -> Any:
    """The next message on ``stream``; raises EOFError when it ends before one is whole."""
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError
    (size,) = struct.unpack("!Q", head)
    body = stream.read(size)
    if len(body) < size:
        raise EOFError
    return pickle.loads(body)
