"""The search's plots drawn in the drawing process (started while trials train, its work split
over forks of it) are the plots drawn in this process, pixel for pixel; where that process is
gone, every plot is still drawn here; a plot Optuna cannot draw comes back with its reason."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import optuna
import pytest

from pipeline.search import plot_server, plots
from pipeline.search.plots import HISTORY, IMPORTANCES, INTERMEDIATE, PARALLEL, PARETO_FRONT

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    """A real study of 8 trials over three parameters, each reporting per-epoch values."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("optimizer.lr", 1e-4, 1e-1, log=True)
        batch = trial.suggest_categorical("train.batch_size", [32, 64, 128])
        units = trial.suggest_int("model.layers[6].units", 16, 128)
        value = 0.9 - abs(np.log10(lr) + 2.5) / 20 - batch / 1e4 + units / 1e4
        for epoch in range(3):
            trial.report(value - 0.01 * (2 - epoch), epoch + 1)
        return value

    study.optimize(objective, n_trials=8)
    return study


def _pixels(path: Path) -> np.ndarray:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] >= 400 and image.shape[1] >= 700
    return image


def test_the_drawing_process_draws_what_this_process_draws(study, tmp_path):
    drawn, skipped = plots.plan(study, multi=False)
    assert drawn == [HISTORY, PARALLEL, IMPORTANCES, INTERMEDIATE] and not skipped
    snap = plots.snapshot(study, ["val_accuracy"])

    plot_server.warm()
    process = plot_server._server
    assert process is not None, "2 or more cores here: the plots are drawn in a process"
    there = plot_server.draw_all(snap, drawn, tmp_path / "there")
    assert plot_server._server is process and process.poll() is None  # it drew them, and waits

    here = {n: plot_server._draw_here(snap, n, str(tmp_path / "here" / n)) for n in drawn}
    assert there == here == dict.fromkeys(drawn)
    for name in drawn:
        assert np.array_equal(_pixels(tmp_path / "there" / name), _pixels(tmp_path / "here" / name))

    plot_server.warm()  # the next search's report: the same process, drawing again
    assert plot_server._server is process
    assert plot_server.draw_all(snap, [HISTORY], tmp_path / "again") == {HISTORY: None}
    _pixels(tmp_path / "again" / HISTORY)


def test_plots_are_drawn_here_when_the_drawing_process_is_gone(study, tmp_path):
    drawn, _ = plots.plan(study, multi=False)
    plot_server.warm()
    process = plot_server._server
    assert process is not None
    process.kill()
    process.wait()
    results = plot_server.draw_all(plots.snapshot(study, ["val_accuracy"]), drawn, tmp_path)
    assert results == dict.fromkeys(drawn)
    for name in drawn:
        _pixels(tmp_path / name)
    assert plot_server._server is None  # given up; the next search starts another
    plot_server.warm()
    assert plot_server._server is not None and plot_server._server.pid != process.pid


def test_a_plot_optuna_cannot_draw_comes_back_with_its_reason(study, tmp_path):
    plot_server.warm()
    results = plot_server.draw_all(
        plots.snapshot(study, ["val_accuracy"]), [HISTORY, PARETO_FRONT], tmp_path
    )
    assert results[HISTORY] is None and (tmp_path / HISTORY).is_file()
    assert results[PARETO_FRONT].startswith("Optuna could not draw it:")
    assert "objective" in results[PARETO_FRONT]
    assert not (tmp_path / PARETO_FRONT).exists()
    assert plot_server._server is not None and plot_server._server.poll() is None
