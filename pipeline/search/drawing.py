"""Draws one of a search's plots from a :class:`~pipeline.search.plots.Snapshot`; run as
``python -m pipeline.search.drawing``, the drawing process of :mod:`pipeline.search.plot_server`.
Importing it imports matplotlib (Agg), Optuna's matplotlib plots and its importance evaluators:
what that process does while the trials train."""

from __future__ import annotations

import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import optuna
import optuna.importance  # its fANOVA evaluator imports scikit-learn
from optuna.visualization import matplotlib as plots

from pipeline.atomic import replacing
from pipeline.search.plots import (
    HISTORY,
    IMPORTANCES,
    INTERMEDIATE,
    PARALLEL,
    PARETO_FRONT,
    Snapshot,
    read_message,
    signed,
    varying,
    write_message,
)

_COST = {PARALLEL: 3.0, PARETO_FRONT: 2.0, INTERMEDIATE: 1.2, HISTORY: 1.0, IMPORTANCES: 1.0}
"""How long each plot takes to draw, relative to the history (0.24 s for 10 trials on a 2-core
AMD EPYC): a parallel-coordinates plot has an axis a parameter, each laid out and drawn."""

_ERRORS = (ValueError, RuntimeError, ZeroDivisionError, IndexError)
"""What Optuna raises on a study it cannot draw; anything else is a bug, and raised."""


def study_of(snap: Snapshot) -> optuna.Study:
    """The snapshot's trials in an in-memory study (numbered as in the original)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(directions=snap.directions)
    study.add_trials(sorted(snap.trials, key=lambda t: t.number))
    return study


def draw(name: str, study: optuna.Study, snap: Snapshot) -> Any:
    """The Axes of one of Optuna's plots."""
    metrics = snap.metrics
    first: dict[str, Any] = (
        {"target": lambda t: t.values[0], "target_name": metrics[0]}
        if snap.multi
        else {"target_name": metrics[0]}
    )
    if name == HISTORY:
        return plots.plot_optimization_history(study, **first)
    if name == PARALLEL:
        return plots.plot_parallel_coordinate(study, **first)
    if name == IMPORTANCES:
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        params = varying(done)
        if not snap.multi:
            return plots.plot_param_importances(study, params=params, target_name=metrics[0])
        # PED-ANOVA rates what makes a target low: give it the first objective, lower better
        return plots.plot_param_importances(
            study,
            params=params,
            target=signed(study, 0),
            target_name=f"{metrics[0]} (first objective)",
        )
    if name == INTERMEDIATE:
        return plots.plot_intermediate_values(study)
    if name == PARETO_FRONT:
        return plots.plot_pareto_front(study, target_names=metrics)
    raise ValueError(f"no plot {name!r}")


def draw_file(snap: Snapshot, name: str, path: Path) -> str | None:
    """Draw ``name`` into ``path`` (atomically); None when written, else why not."""
    # Optuna's plots but one switch matplotlib to its ggplot style for good, so the look of
    # a plot would depend on the one drawn before it: every plot is drawn in that style
    with warnings.catch_warnings(), plt.style.context("ggplot"):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # matplotlib's note on a flat axis
        warnings.filterwarnings(  # draw gives it a target where lower is better
            "ignore", message="PedAnovaImportanceEvaluator computes the importances of params"
        )
        try:
            axes = draw(name, study_of(snap), snap)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            try:
                width, height = figure.get_size_inches()
                figure.set_size_inches(max(width, 8.0), max(height, 5.0))
                if figure.get_layout_engine() is None:  # else savefig lays it out
                    figure.tight_layout()  # one render: bbox_inches="tight" draws twice
                path.parent.mkdir(parents=True, exist_ok=True)
                with replacing(path) as tmp:
                    figure.savefig(tmp, format="png", dpi=100)
            finally:
                plt.close(figure)
        except _ERRORS as err:
            return f"Optuna could not draw it: {' '.join(str(err).split())}"
    return None


# ---------------------------------------------------------------------------------------------
# the drawing process: ``python -m pipeline.search.drawing`` (started by plot_server.warm)


def _draw_jobs(snap: Snapshot, jobs: list[tuple[str, str]]) -> dict[str, str | None]:
    return {name: draw_file(snap, name, Path(path)) for name, path in jobs}


def draw_forked(snap: Snapshot, jobs: list[tuple[str, str]], procs: int) -> dict[str, str | None]:
    """Draw ``jobs`` (name, path) over ``procs`` forks of this process (which share its
    imports), each a share of the jobs about as long as the others. This process draws
    nothing itself, so it never starts a thread pool (OpenMP, BLAS) that a fork could not
    carry; a share whose fork failed is drawn here."""
    shares: list[list[tuple[str, str]]] = [[] for _ in range(max(1, procs))]
    loads = [0.0] * len(shares)
    for job in sorted(jobs, key=lambda j: -_COST.get(j[0], 1.0)):  # longest first, to the least
        i = loads.index(min(loads))
        shares[i].append(job)
        loads[i] += _COST.get(job[0], 1.0)
    children: list[tuple[int, int, list[tuple[str, str]]]] = []
    for share in (s for s in shares if s):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: draw its share, hand back what it drew, and go
            code = 0
            try:
                os.close(read)
                with os.fdopen(write, "wb") as out:
                    out.write(pickle.dumps(_draw_jobs(snap, share)))
            except BaseException:  # the parent draws what a child did not
                code = 1
            os._exit(code)
        os.close(write)
        children.append((pid, read, share))
    results: dict[str, str | None] = {}
    for pid, read, share in children:
        with os.fdopen(read, "rb") as got:
            data = got.read()
        os.waitpid(pid, 0)
        try:
            results.update(pickle.loads(data))
        except (pickle.UnpicklingError, EOFError, ValueError):
            results.update(_draw_jobs(snap, share))
    return results


def main() -> int:
    """Serve the search process that started this one: read a request from stdin (snapshot,
    jobs, processes), draw it, write what was drawn to stdout; until stdin ends."""
    while True:
        try:
            snap, jobs, procs = read_message(sys.stdin.buffer)  # from the parent's pipe
        except EOFError:  # the search ended
            return 0
        write_message(sys.stdout.buffer, draw_forked(snap, jobs, procs))


if __name__ == "__main__":
    raise SystemExit(main())
