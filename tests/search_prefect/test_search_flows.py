"""A search as Prefect flows against a real server on loopback: each trial a task run; with a
work pool, two real process workers in two copies of a project sharing one SQLite study."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from tests.orchestration import test_deploy
from tests.orchestration.test_deploy import _run, _stop
from tests.search.test_engine import TINY

server = test_deploy.server  # the fixture: a real Prefect server on loopback

REPO = Path(__file__).resolve().parents[2]
POOL = "search-pool"
PREFECT = [sys.executable, "-m", "prefect"]


def make_project(root: Path, search: dict) -> Path:
    """A tiny project: pyproject.toml (its root), specs/tiny.yaml, searches/tiny.yaml."""
    (root / "specs").mkdir(parents=True)
    (root / "searches").mkdir()
    (root / "pyproject.toml").write_text("")
    (root / "specs" / "tiny.yaml").write_text(TINY)
    body = {"base": "../specs/tiny.yaml", **search}
    (root / "searches" / "tiny.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return root


def environment(server_env: dict[str, str], tmp_path: Path, mirror: Path) -> dict[str, str]:
    return server_env | {
        "PYTHONPATH": str(REPO),
        "PIPELINE_ORCHESTRATION": "server",
        "PIPELINE_HOME": str(tmp_path / "home"),
        "PIPELINE_DATA_MIRROR": str(mirror),
        "PIPELINE_DATA_CACHE": str(tmp_path / "cache"),
        "PIPELINE_SEARCH_THREADS": "1",
    }


def search_cli(project: Path, env: dict[str, str], *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "search", "searches/tiny.yaml", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


@contextlib.contextmanager
def worker_in(folder: Path, env: dict[str, str], *args: str, **more_env: str):
    """A real `prefect worker start --pool POOL` process in ``folder`` (its project), its output
    in ``folder/worker.log``; stopped, with all it started, on leaving."""
    with open(folder / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            [*PREFECT, "worker", "start", "--pool", POOL, *args],
            cwd=folder,
            env=env
            | {"PIPELINE_PROJECT": str(folder), "PREFECT_WORKER_QUERY_SECONDS": "1", **more_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            yield worker
        finally:
            _stop(worker)


@contextlib.contextmanager
def client_of(server_env: dict[str, str]):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: server_env["PREFECT_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        yield client


def runs_of(client, flow_name: str):
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))


def task_runs_of(client, flow_run_ids):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids)))
    )


def test_a_search_run_as_a_flow_shows_each_trial_as_a_task_run_pruned_ones_completed(
    server, tmp_path: Path, mirror: Path
):
    # the engine test's pruning search: the hopeless learning rates are pruned after an epoch
    project = make_project(
        tmp_path / "project",
        {
            "overrides": ["train.epochs=4"],
            "space": {
                "optimizer.lr": {"type": "choice", "values": [3e-3, 2e-3, 4e-3, 1e-8, 2e-8, 3e-8]}
            },
            "sampler": {"type": "grid", "seed": 0},
            "pruner": {"type": "median", "warmup_epochs": 1, "startup_trials": 2},
        },
    )
    search_cli(project, environment(server, tmp_path, mirror))

    db = project / "runs" / "tiny" / "study.db"
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").get_trials()
    assert len(trials) == 6
    states = {t.number: t.state for t in trials}
    assert optuna.trial.TrialState.PRUNED in states.values(), states
    with client_of(server) as client:
        (run,) = runs_of(client, "search")
        tasks = task_runs_of(client, [run.id])
        artifacts = [a for a in client.read_artifacts() if a.flow_run_id == run.id]
    assert run.state.is_completed(), run.state
    assert run.name == "tiny"
    trial_tasks = {t.name: t for t in tasks if t.name.startswith("trial ")}
    assert sorted(trial_tasks) == sorted(f"trial {n}" for n in states)
    for n, state in states.items():  # a pruned trial's training completed: not a crash
        assert trial_tasks[f"trial {n}"].state.is_completed(), (n, state)
    assert any(a.type == "markdown" and "Search `tiny`" in a.data for a in artifacts)


def test_two_process_workers_in_two_folders_share_one_study_through_a_pool(
    server, tmp_path: Path, mirror: Path
):
    shared = tmp_path / "shared"
    shared.mkdir()
    search = {
        # trials long enough (about a second each) that the worker whose flow run starts first
        # (seconds apart: a process each to start) cannot run them all before the other starts
        "overrides": ["train.epochs=6"],
        "space": {"model.layers[4].units": {"type": "int", "low": 8, "high": 64}},
        "sampler": {"type": "random", "seed": 0},
        "budget": {"trials": 8},
        "storage": f"sqlite:///{shared / 'study.db'}",
    }
    a = make_project(tmp_path / "a", search)
    b = make_project(tmp_path / "b", search)
    env = environment(server, tmp_path, mirror)
    _run([sys.executable, "-m", "pipeline", "deploy", "--pool", POOL], env, cwd=a)

    with contextlib.ExitStack() as stack:
        workers = [  # each worker trains in its own copy of the project
            stack.enter_context(
                worker_in(folder, env, "--limit", "1", PREFECT_WORKER_PREFETCH_SECONDS="1")
            )
            for folder in (a, b)
        ]
        with client_of(server) as client:  # both polling before the runs exist: each takes one
            deadline = time.monotonic() + 120
            while len(client.read_workers_for_work_pool(POOL)) < 2:
                assert all(w.poll() is None for w in workers), "a worker stopped"
                assert time.monotonic() < deadline, "the workers did not start in 120 s"
                time.sleep(0.5)
        out = search_cli(a, env, "--pool", POOL, "--parallel", "2")

        # a caller naming a search file outside the worker's project: refused unread
        outside = tmp_path / "elsewhere" / "secret.yaml"
        outside.parent.mkdir()
        outside.write_text("base: x\ntoken: SECRET-7f3a [\n")
        submitted = _run(
            [*PREFECT, "deployment", "run", "search-worker/local", "--param", f"search={outside}"],
            env,
            cwd=tmp_path,
        )
        refused_id = re.search(r"UUID: ([0-9a-f-]{36})", submitted).group(1)
        with client_of(server) as client:
            deadline = time.monotonic() + 120
            while not (refused := client.read_flow_run(refused_id)).state.is_final():
                assert time.monotonic() < deadline, refused.state
                time.sleep(1)
            (coordinator,) = runs_of(client, "search")
            worker_runs = [r for r in runs_of(client, "search-worker") if r.id != refused.id]
            tasks = task_runs_of(client, [r.id for r in worker_runs])
            deployments = {
                n: client.read_deployment_by_name(f"{n}/local")
                for n in ("experiment", "search", "search-worker")
            }

    trials = optuna.load_study(study_name="tiny", storage=search["storage"]).get_trials()
    assert [t.number for t in trials] == list(range(8)), out
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [
        (t.number, t.state, t.user_attrs.get("error")) for t in trials
    ]
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # two worker processes
    # each trial trained in exactly one of the two folders, and both folders trained some
    ran = {
        folder.name: {int(p.name) for p in (folder / "runs" / "tiny" / "trials").glob("*")}
        for folder in (a, b)
        if (folder / "runs" / "tiny" / "trials").is_dir()
    }
    assert set(ran) == {"a", "b"} and all(ran.values()), ran
    assert ran["a"].isdisjoint(ran["b"]) and ran["a"] | ran["b"] == set(range(8)), ran
    assert coordinator.state.is_completed(), coordinator.state
    assert sorted(r.name for r in worker_runs) == ["tiny worker 0", "tiny worker 1"]
    assert all(r.state.is_completed() for r in worker_runs), [r.state for r in worker_runs]
    assert sorted(t.name for t in tasks if t.name.startswith("trial ")) == [
        f"trial {n}" for n in range(8)
    ]
    assert (a / "runs" / "tiny" / "trials.csv").is_file()  # the coordinator's report
    assert refused.state.is_failed(), refused.state
    assert "is outside the folders a spec may name" in refused.state.message
    assert "SECRET" not in refused.state.message
    for name, function in (("search", "search_flow"), ("search-worker", "search_worker_flow")):
        d = deployments[name]
        assert d.work_pool_name == POOL and d.entrypoint == f"pipeline.search.flows.{function}"
        step = d.pull_steps[0]["pipeline.orchestrate.deployment.enter_project"]
        assert Path(step["directory"]) == a.resolve()
    assert deployments["experiment"].work_pool_name == POOL


@pytest.mark.parametrize("mode", ["off", "ephemeral"])
def test_a_pool_without_a_server_is_a_clear_error(tmp_path: Path, mirror: Path, mode: str):
    project = make_project(
        tmp_path / "p",
        {"space": {"optimizer.lr": {"type": "choice", "values": [1e-3]}}, "budget": {"trials": 1}},
    )
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "search", "searches/tiny.yaml", "--pool", POOL],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(REPO), "PIPELINE_ORCHESTRATION": mode},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert f"PIPELINE_ORCHESTRATION={mode}" in done.stderr and "--pool" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (project / "runs").exists()  # nothing ran


def test_a_worker_on_another_study_stops_and_the_search_names_its_run(
    server, tmp_path: Path, mirror: Path
):
    # the coordinator's search file shares a storage; the worker's copy keeps its own default
    shared = tmp_path / "shared"
    shared.mkdir()
    search = {
        "overrides": ["train.epochs=1"],
        "space": {"optimizer.lr": {"type": "choice", "values": [1e-3, 3e-3]}},
        "budget": {"trials": 2},
    }
    a = make_project(tmp_path / "a", {**search, "storage": f"sqlite:///{shared / 'study.db'}"})
    b = make_project(tmp_path / "b", search)
    env = environment(server, tmp_path, mirror)
    _run([sys.executable, "-m", "pipeline", "deploy", "--pool", POOL], env, cwd=a)

    def search_fails(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "search", "searches/tiny.yaml", *args],
            cwd=a,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        return done.stderr

    # a pool no search-worker deployment is on: said before any run is made
    said = search_fails("--pool", "elsewhere")
    assert "the work pool 'elsewhere' has no search-worker deployment" in said
    assert "pipeline deploy --pool elsewhere" in said

    with worker_in(b, env):
        said = search_fails("--pool", POOL)
    assert "worker run(s) tiny worker 0 (Failed" in said, said[-3000:]
    assert "is not the one the search's coordinator uses" in said
    assert not (b / "runs").exists()  # the stray worker trained nothing, made no study
    shared_trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{shared}/study.db")
    assert shared_trials.get_trials() == []


def test_ctrl_c_in_a_pool_search_cancels_its_worker_runs_and_the_next_run_goes_on(
    server, tmp_path: Path, mirror: Path
):
    import signal

    from prefect.client.schemas.objects import StateType

    search = {
        "overrides": ["train.epochs=30"],  # long trials: Ctrl-C lands in the middle of one
        "space": {"train.batch_size": {"type": "choice", "values": [16, 32]}},
        "sampler": {"type": "random", "seed": 0},
        "budget": {"trials": 2},
    }
    a = make_project(tmp_path / "a", search)
    env = environment(server, tmp_path, mirror)
    _run([sys.executable, "-m", "pipeline", "deploy", "--pool", POOL], env, cwd=a)
    with worker_in(a, env):  # in the same folder: the study's SQLite file is there
        coordinator = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "search", "searches/tiny.yaml", "--pool", POOL],
            cwd=a,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        history = a / "runs" / "tiny" / "trials" / "0000" / "history.csv"
        deadline = time.monotonic() + 180
        while not history.is_file():  # the worker's trial is in the middle of its training
            assert coordinator.poll() is None, coordinator.stdout.read()
            assert time.monotonic() < deadline, "no trial trained an epoch in 180 s"
            time.sleep(0.5)
        coordinator.send_signal(signal.SIGINT)
        out, _ = coordinator.communicate(timeout=120)
        assert coordinator.returncode == 130, out
        assert "interrupted by SIGINT" in out and "Traceback" not in out
        assert "-m pipeline search searches/tiny.yaml" in out  # the same command goes on

        with client_of(server) as client:  # the worker's run is stopped, not left training
            deadline = time.monotonic() + 120
            while True:
                (run,) = runs_of(client, "search-worker")
                if run.state.is_final():
                    break
                assert time.monotonic() < deadline, run.state
                time.sleep(1)
        assert run.state.type == StateType.CANCELLED, run.state

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{a / 'runs/tiny/study.db'}")
    (stopped,) = study.get_trials()
    assert stopped.state != optuna.trial.TrialState.COMPLETE
    # the next run (without the pool; 1 epoch a trial, to be quick) retries it, within budget
    make_project(tmp_path / "again", {**search, "overrides": ["train.epochs=1"]})
    (a / "searches" / "tiny.yaml").write_bytes((tmp_path / "again/searches/tiny.yaml").read_bytes())
    search_cli(a, env | {"PIPELINE_ORCHESTRATION": "off"})
    trials = study.get_trials()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and any(t.user_attrs.get("retry_of") == 0 for t in done), [
        (t.number, t.state.name, t.user_attrs) for t in trials
    ]
