"""The search engine end to end: real Optuna, real SQLite storage, real tiny trainings on an
MNIST subset, the real ``pipeline search`` command (killed, interrupted, run in parallel)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from pipeline.search.engine import run_search
from pipeline.search.load import load_search
from pipeline.spec.load import load_spec

ROOT = Path(__file__).resolve().parents[2]

# Two conv layers: a kernel of 13 in the first with one of 9 in the second leaves no pixels.
TINY = """\
name: tiny
seed: 0
data:
  dataset: mnist
  subset: {train_per_class: 40, test_per_class: 10}
  validation: {fraction: 0.25}
  normalize: standardize
model:
  defaults:
    conv2d: {kernel_size: 3, activation: relu}
  layers:
    - {type: conv2d, filters: 8}
    - {type: max_pool2d}
    - {type: conv2d, filters: 8}
    - {type: flatten}
    - {type: dense, units: 32, activation: relu}
    - {type: dense, units: 10, activation: softmax}
optimizer: {type: adam, lr: 3.0e-3}
train: {epochs: 3, batch_size: 32}
"""


@pytest.fixture
def project(tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "tiny.yaml").write_text(TINY)
    (tmp_path / "searches").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PIPELINE_RUNS_DIR", raising=False)
    return tmp_path


def write_search(project: Path, name: str, body: dict) -> Path:
    path = project / "searches" / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"base": "../specs/tiny.yaml", **body}, sort_keys=False))
    return path


def study_of(project: Path, name: str) -> optuna.Study:
    db = project / "runs" / name / "study.db"
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kw,
    )


def polled(db: Path, name: str) -> optuna.Study | None:
    """The study while a search process writes it; None before it exists. Optuna's storage
    makes the tables it finds missing, so it is opened only once the study's row is there:
    before, opening it raced the search making them ('already exists', a UNIQUE failure)."""
    if not db.is_file():
        return None
    import contextlib
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as con:
            row = con.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchone()
    except sqlite3.OperationalError:  # no table yet, or busy
        return None
    return None if row is None else optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def test_pruning_stops_hopeless_trials_after_fewer_epochs(project):
    # half the learning rates learn nothing in 4 epochs: the median pruner stops those
    path = write_search(
        project,
        "prune",
        {
            "overrides": ["train.epochs=4"],
            "space": {
                "optimizer.lr": {"type": "choice", "values": [3e-3, 2e-3, 4e-3, 1e-8, 2e-8, 3e-8]}
            },
            "sampler": {"type": "grid", "seed": 0},
            "pruner": {"type": "median", "warmup_epochs": 1, "startup_trials": 2},
        },
    )
    summary = run_search(load_search(path), log=lambda _m: None)
    study = study_of(project, "prune")
    trials = study.get_trials()
    assert len(trials) == 6 and summary["trials"].get("fail", 0) == 0
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    hopeless = [t for t in trials if t.params["optimizer.lr"] < 1e-6]
    # once two trials have finished, the pruner has a median: every hopeless trial after that
    # is pruned (a good one may be too: the median pruner stops what trails the median)
    late = [t for t in hopeless if t.number >= 2]
    assert late and all(t.state == optuna.trial.TrialState.PRUNED for t in late), trials
    for t in pruned:
        assert t.user_attrs["epochs"] < 4
        assert len(t.intermediate_values) == t.user_attrs["epochs"]
        history = Path(t.user_attrs["run_dir"]) / "history.csv"
        assert len(history.read_text().splitlines()) == 1 + t.user_attrs["epochs"]
    assert all(t.user_attrs["epochs"] == 4 for t in complete)
    assert max(t.value for t in complete) > 0.5


def test_a_combination_the_spec_rejects_is_a_failed_trial_and_the_search_goes_on(project):
    # each value alone is valid; kernel 13 then 9 leaves no pixels: that trial fails, located
    path = write_search(
        project,
        "shapes",
        {
            "overrides": ["train.epochs=1"],
            "space": {
                "model.layers[0].kernel_size": {"type": "choice", "values": [3, 13]},
                "model.layers[2].kernel_size": {"type": "choice", "values": [3, 9]},
            },
            "sampler": {"type": "grid"},
        },
    )
    summary = run_search(load_search(path), log=lambda _m: None)
    trials = study_of(project, "shapes").get_trials()
    assert len(trials) == 4
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.params for t in failed] == [
        {"model.layers[0].kernel_size": 13, "model.layers[2].kernel_size": 9}
    ]
    assert "model.layers[2]" in failed[0].user_attrs["error"]
    assert summary["trials"] == {"complete": 3, "fail": 1}
    assert (project / "runs" / "shapes" / "trials.csv").is_file()


def test_a_search_killed_outright_loses_no_finished_trial_and_retries_the_killed_one(project):
    path = write_search(
        project,
        "killed",
        {
            "overrides": ["train.epochs=2"],
            "space": {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
            "sampler": {"type": "random", "seed": 3},
            "budget": {"trials": 5},
        },
    )
    p = cli("search", str(path))
    db = project / "runs" / "killed" / "study.db"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill it in the middle of a trial after two finished
        study = polled(db, "killed")
        if study is not None:
            states = [t.state.name for t in study.get_trials()]
            if states.count("COMPLETE") >= 2 and states[-1] == "RUNNING":
                break
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    before = study_of(project, "killed").get_trials()
    done = {t.number: (t.params, t.value) for t in before if t.state.name == "COMPLETE"}
    killed = [t for t in before if t.state.name == "RUNNING"]
    assert len(done) >= 2 and len(killed) == 1

    again = cli("search", str(path))
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert f"trial(s) {killed[0].number} did not finish" in out
    after = study_of(project, "killed").get_trials()
    for number, (params, value) in done.items():  # finished trials kept as they were
        assert (after[number].params, after[number].value) == (params, value)
    assert after[killed[0].number].state.name == "FAIL"
    retry = [t for t in after if t.user_attrs.get("retry_of") == killed[0].number]
    assert len(retry) == 1 and retry[0].params == killed[0].params
    assert retry[0].state.name == "COMPLETE"
    # five in the budget: the killed trial counts once, through its retry
    assert len(after) == 6 and len([t for t in after if t.state.name == "COMPLETE"]) == 5


def test_ctrl_c_stops_the_running_trial_cleanly_and_the_next_run_retries_it(project):
    path = write_search(
        project,
        "stopped",
        {
            "overrides": ["train.epochs=30"],
            "space": {"train.batch_size": {"type": "choice", "values": [16, 32]}},
            "sampler": {"type": "random", "seed": 0},
            "budget": {"trials": 2},
        },
    )
    p = cli("search", str(path))
    deadline = time.time() + 120
    while time.time() < deadline:
        if (project / "runs" / "stopped" / "trials" / "0000" / "history.csv").is_file():
            break  # an epoch is done: the trial is in the middle of its training
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130, out
    assert "interrupted by SIGINT" in out and "run again with: " in out
    assert f"-m pipeline search {path}" in out  # the same command goes on
    assert "Traceback" not in out
    trials = study_of(project, "stopped").get_trials()
    assert [t.state.name for t in trials] == ["FAIL"]
    assert trials[0].user_attrs["interrupted"] is True

    # the next run retries it (with fewer epochs here, to be quick)
    loaded = load_search(path)
    search = loaded.search.model_copy(update={"overrides": ["train.epochs=1"]})
    run_search(dataclasses.replace(loaded, search=search), log=lambda _m: None)
    after = study_of(project, "stopped").get_trials()
    assert after[1].user_attrs["retry_of"] == 0 and after[1].params == trials[0].params
    assert [t.state.name for t in after] == ["FAIL", "COMPLETE", "COMPLETE"]


def test_parallel_workers_share_one_study_and_keep_to_the_budget(project):
    path = write_search(
        project,
        "parallel",
        {
            "overrides": ["train.epochs=1"],
            "space": {"model.layers[4].units": {"type": "int", "low": 8, "high": 64, "step": 8}},
            "sampler": {"type": "tpe", "seed": 0},
            "budget": {"trials": 5, "parallel": 2},
        },
    )
    p = cli("search", str(path))
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    trials = study_of(project, "parallel").get_trials()
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" for t in trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2, workers  # two processes ran trials
    assert "2 workers, 1 thread(s) each" in out or "2 workers" in out
    best = project / "runs" / "parallel" / "best.yaml"
    spec = load_spec(best)
    assert (
        spec.model.layers[4].units
        == study_of(project, "parallel").best_params["model.layers[4].units"]
    )


def test_two_objectives_give_a_pareto_front_with_the_parameter_count(project):
    path = write_search(
        project,
        "front",
        {
            "overrides": ["train.epochs=1"],
            "objective": [
                {"metric": "val_accuracy"},
                {"metric": "params", "direction": "minimize"},
            ],
            "space": {"model.layers[4].units": {"type": "choice", "values": [8, 64]}},
            "sampler": {"type": "grid"},
        },
    )
    summary = run_search(load_search(path), log=lambda _m: None)
    study = study_of(project, "front")
    by_units = {t.params["model.layers[4].units"]: t.values for t in study.get_trials()}
    # the dense layer after 8 channels of 11x11: (968 + 1) * units + (units + 1) * 10 more
    assert by_units[64][1] - by_units[8][1] == (968 + 1) * 56 + 56 * 10
    assert summary["best"] and all(len(b["values"]) == 2 for b in summary["best"])
    folder = project / "runs" / "front"
    assert (folder / "pareto.csv").is_file() and (folder / "plots" / "pareto_front.png").is_file()


def test_a_journal_file_storage_holds_the_study(project):
    path = write_search(
        project,
        "journal",
        {
            "overrides": ["train.epochs=1"],
            "space": {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-2}},
            "sampler": {"type": "random", "seed": 0},
            "budget": {"trials": 2},
            "storage": "journal:runs/journal/study.log",
        },
    )
    run_search(load_search(path), log=lambda _m: None)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(project / "runs/journal/study.log"))
    )
    study = optuna.load_study(study_name="journal", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
