"""A search as Prefect flows: ``search`` (the coordinator) and ``search-worker`` (one worker).

The engine (:mod:`pipeline.search.engine`) knows nothing of Prefect; these flows give it two
hooks. Each trial's training is a task run named ``trial <n>`` (its logs, duration and state in
the UI; a pruned trial's training ended early on purpose, so its task run completes and Optuna
records it pruned). With ``pool``, the workers are runs of the ``search-worker`` deployment on
that work pool, one per ``parallel``, each on whichever process worker takes it (another
folder, another machine) and all on the search's one storage; the coordinator waits for them,
then writes the report and publishes it as a markdown artifact.

A process worker runs a deployment's flow run in the folder its ``PIPELINE_PROJECT`` names
(else the folder ``pipeline deploy`` was given: ``pipeline.orchestrate.deployment``), so two
workers started in two copies of a project train there, each writing its own trial folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.search.engine import SearchError

if TYPE_CHECKING:
    from pipeline.search.load import LoadedSearch

WORKER_FLOW = "search-worker"
DEFAULT_WORKER_DEPLOYMENT = f"{WORKER_FLOW}/local"
LAUNCH_ATTR = "launch:"
"""A study user attribute ``launch:<id>`` that a coordinator sets before starting workers: a
worker whose storage lacks it is on another study (another folder's default storage), and stops
instead of running a search of its own."""
POLL_S = 2.0


# ---- logging and trials as task runs -------------------------------------------------------


def _log(message: str) -> None:
    """To the current run's logger (a trial's task run while it trains, else the flow run)."""
    try:
        get_run_logger().info(message)
    except Exception:  # no run context (never expected inside the flows)
        print(message, flush=True)


@task(task_run_name="trial {number}", cache_policy=NO_CACHE, persist_result=False)
def trial_task(number: int, train: Callable[[], Any]) -> Any:
    """Train one trial: ``train()``, its result returned as it is. Pruning is decided outside
    (the engine, after this returns), so a pruned trial's run completes, never crashes."""
    return train()


def _run_trial(number: int, train: Callable[[], Any]) -> Any:
    return trial_task(number, train)


# ---- parameters ------------------------------------------------------------------------


def _from_deployment() -> bool:
    from prefect.runtime import deployment

    return deployment.id is not None


def _load(search: str) -> LoadedSearch:
    """The search file ``search``; a deployment run (parameters from whoever started it) must
    name one inside the worker's project folder (or PIPELINE_ALLOWED_PATHS), as a spec must."""
    from pipeline.search.load import load_search
    from pipeline.spec.errors import SpecError
    from pipeline.spec.paths import Roots

    if _from_deployment():
        problem = Roots.for_folder(Path.cwd()).problem(
            search, Path.cwd(), ("search",), spec_file=True
        )
        if problem is not None:
            raise SpecError([problem], subject="search file")
    loaded = load_search(search)
    for warning in loaded.warnings:
        _log(warning.format())
    return loaded


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise SearchError(f"{name} must be 1 or more, not {value}")


def _shown(search: str) -> str:
    """The search path as the workers get it: relative to this folder when inside it (each
    worker finds it in its own copy of the project), else as given."""
    path = Path(search)
    if path.is_absolute():
        with contextlib.suppress(ValueError):
            return str(path.resolve().relative_to(Path.cwd().resolve()))
    return search


def _run_name() -> str:
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    name = Path(str(parameters.get("search", "search"))).stem
    if "index" in parameters:
        return f"{name} worker {parameters['index']}"
    return f"{name} on {parameters['pool']}" if parameters.get("pool") else name


def _artifact_key(name: str) -> str:
    safe = "".join(c if c.isalnum() else "-" for c in name.lower())
    return f"search-{safe}"[:64] + "-" + hashlib.sha1(name.encode()).hexdigest()[:6]


def _threads() -> None:
    """A worker's torch threads: ``PIPELINE_SEARCH_THREADS`` when the worker's environment sets
    it (several workers on one machine share its cores)."""
    from pipeline.search.engine import THREADS_ENV

    threads = os.environ.get(THREADS_ENV)
    if threads:
        import torch

        torch.set_num_threads(int(threads))


# ---- workers as deployment runs --------------------------------------------------------


def _worker_deployment(client: Any, pool: str, deployment: str) -> str:
    """``deployment`` when it is on ``pool``; else the one ``search-worker`` deployment there."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.exceptions import ObjectNotFound

    named = None
    with contextlib.suppress(ObjectNotFound):
        named = client.read_deployment_by_name(deployment)
    if named is not None and named.work_pool_name == pool:
        return deployment
    found = client.read_deployments(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[WORKER_FLOW])),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
    )
    if len(found) == 1:
        return f"{WORKER_FLOW}/{found[0].name}"
    where = (
        f"the deployment {deployment} is on the work pool {named.work_pool_name!r}"
        if named is not None
        else f"there is no deployment {deployment}"
    )
    if found:
        names = ", ".join(f"{WORKER_FLOW}/{d.name}" for d in found)
        raise SearchError(
            f"{where}, and the work pool {pool!r} has several search-worker deployments "
            f"({names}): name one (deployment=...)"
        )
    raise SearchError(
        f"{where}, and the work pool {pool!r} has no search-worker deployment: create one "
        f"with `pipeline deploy --pool {pool}` in the project folder"
    )


def _mark_study(loaded: LoadedSearch) -> str:
    """Set the study's ``launch:<id>`` attribute (see LAUNCH_ATTR); the id."""
    import optuna

    from pipeline.search.engine import open_storage

    launch = uuid.uuid4().hex[:12]
    study = optuna.load_study(study_name=loaded.name, storage=open_storage(loaded.storage))
    study.set_user_attr(LAUNCH_ATTR + launch, time.time())
    return launch


def _check_study(loaded: LoadedSearch, launch: str) -> None:
    """Stop a worker whose search file gives it another study than its coordinator's."""
    import optuna

    from pipeline.search.engine import open_storage

    url = loaded.storage
    missing = url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file()
    try:  # (a missing SQLite file is not made: no stray study.db in this folder)
        study = (
            None
            if missing
            else optuna.load_study(study_name=loaded.name, storage=open_storage(url))
        )
        ours = study is not None and LAUNCH_ATTR + launch in study.user_attrs
    except KeyError:
        ours = False
    if not ours:
        raise SearchError(
            f"this worker's storage {loaded.storage} is not the one the search's coordinator "
            f"uses (no study {loaded.name!r} marked by it there): workers in other folders or "
            "on other machines share a study through one storage: set storage: in the search "
            "file to a shared one (sqlite:////absolute/path/study.db, postgresql://...)"
        )


def _launcher(loaded: LoadedSearch, search: str, pool: str, deployment: str) -> Any:
    """The engine's ``launch_workers``: ``n`` runs of the worker deployment on ``pool``,
    waited for; one that ends otherwise than Completed is a SearchError naming it."""

    def launch(n: int, trials: int | None, deadline: float | None) -> None:
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment
        from prefect.states import Cancelling

        if loaded.search.storage is None:
            _log(
                f"{loaded.name}: the study is in this folder's {loaded.storage}: only workers "
                "that run in this folder share it (set storage: to a shared one for others)"
            )
        launch_id = _mark_study(loaded)
        with get_client(sync_client=True) as client:
            name = _worker_deployment(client, pool, deployment)
            if not client.read_workers_for_work_pool(pool):
                _log(
                    f"{loaded.name}: no worker polls the work pool {pool!r} yet; the runs wait "
                    f"for one: `PIPELINE_PROJECT=$PWD prefect worker start --pool {pool}` in a "
                    "copy of the project"
                )
            runs = []
            try:
                for i in range(n):
                    runs.append(
                        run_deployment(
                            name,
                            parameters={
                                "search": search,
                                "trials": trials,
                                "deadline": deadline,
                                "index": i,
                                "launch": launch_id,
                            },
                            flow_run_name=f"{loaded.name} worker {i}",
                            timeout=0,
                        )
                    )
                _log(f"{loaded.name}: {n} run(s) of {name} on the work pool {pool!r}")
                ended = _wait(client, [r.id for r in runs])
            except KeyboardInterrupt:
                for r in runs:  # the workers stop too (best effort: the server may be gone)
                    with contextlib.suppress(Exception):
                        client.set_flow_run_state(r.id, Cancelling(message="search stopped"))
                raise
        bad = [r for r in ended if not (r.state and r.state.is_completed())]
        if bad:
            shown = "; ".join(
                f"{r.name} ({r.state.name if r.state else 'no state'}"
                + (f": {r.state.message}" if r.state and r.state.message else "")
                + ")"
                for r in bad
            )
            raise SearchError(
                f"{loaded.name}: worker run(s) {shown}; the study keeps every finished trial: "
                "run the search again to go on"
            )

    return launch


def _wait(client: Any, ids: list[Any]) -> list[Any]:
    """The flow runs ``ids`` once every one is in a final state."""
    while True:
        runs = [client.read_flow_run(i) for i in ids]
        if all(r.state is not None and r.state.is_final() for r in runs):
            return runs
        time.sleep(POLL_S)


# ---- the flows -------------------------------------------------------------------------


@flow(name="search", flow_run_name=_run_name)
def search_flow(
    search: str,
    trials: int | None = None,
    parallel: int | None = None,
    timeout: float | None = None,
    pool: str | None = None,
    deployment: str = DEFAULT_WORKER_DEPLOYMENT,
) -> dict[str, Any]:
    """Run (or continue) the search file ``search`` until its budget (``trials``, ``parallel``,
    ``timeout`` in seconds: each default the file's), each trial a task run ``trial <n>``;
    with ``pool``, its ``parallel`` workers are runs of the search-worker deployment on that
    work pool (``deployment``, or the one on that pool). Publishes the report as a markdown
    artifact; returns the engine's summary."""
    from pipeline.search.engine import run_search

    _positive("trials", trials)
    _positive("parallel", parallel)
    if timeout is not None and timeout <= 0:
        raise SearchError(f"timeout must be more than 0 seconds, not {timeout}")
    loaded = _load(search)
    if _from_deployment():  # the command printed it already
        _log(loaded.describe())
    launch = _launcher(loaded, _shown(search), pool, deployment) if pool else None
    try:
        return run_search(
            loaded,
            trials=trials,
            parallel=parallel,
            timeout=timeout,
            log=_log,
            run_trial=_run_trial,
            launch_workers=launch,
        )
    finally:
        _publish(loaded)


def _publish(loaded: LoadedSearch) -> None:
    """The study as it stands, as a markdown artifact (also after a failed or stopped run)."""
    import optuna

    from pipeline.search import report
    from pipeline.search.engine import open_storage

    try:
        study = optuna.load_study(study_name=loaded.name, storage=open_storage(loaded.storage))
        text = report.markdown(study, loaded)
    except Exception as err:  # no study yet (stopped before it was made): nothing to show
        _log(f"{loaded.name}: no report artifact: {err}")
        return
    create_markdown_artifact(
        text, key=_artifact_key(loaded.name), description=f"search {loaded.name}: trials"
    )


@flow(name=WORKER_FLOW, flow_run_name=_run_name)
def search_worker_flow(
    search: str,
    trials: int | None = None,
    deadline: float | None = None,
    index: int = 0,
    launch: str | None = None,
) -> int:
    """One worker of the search file ``search``: trials (each a task run ``trial <n>``) until
    ``trials`` count in the study or the time ``deadline`` (seconds since the epoch) passes;
    each default the file's budget (a worker started by hand joins a search going on).
    ``index`` offsets the sampler's seed; ``launch`` is the coordinator's mark on the study,
    checked so that a worker on another storage stops. Returns the trials it ran."""
    from pipeline.search.engine import Worker

    _positive("trials", trials)
    loaded = _load(search)
    if launch is not None:
        _check_study(loaded, launch)
    budget = loaded.search.budget
    if trials is None:
        trials = budget.trials
        if loaded.search.sampler.type == "grid" and loaded.grid_size:
            trials = min(trials or loaded.grid_size, loaded.grid_size)
    if deadline is None and budget.timeout:
        deadline = time.time() + budget.timeout
    _threads()
    _log(f"{loaded.name}: worker {index} in {Path.cwd()}, study in {loaded.storage}")
    ran = Worker(
        loaded, trials=trials, deadline=deadline, index=index, log=_log, run_trial=_run_trial
    ).run()
    _log(f"{loaded.name}: worker {index} ran {ran} trial(s)")
    return ran


# ---- the command's way in ----------------------------------------------------------------


def run(
    search: str | Path,
    *,
    trials: int | None = None,
    parallel: int | None = None,
    timeout: float | None = None,
    pool: str | None = None,
    current_mode: str | None = None,
) -> dict[str, Any]:
    """``pipeline search`` as a flow run against the orchestration mode's API (not ``off``);
    ``pool`` needs a server the pool's workers reach (not ephemeral)."""
    from pipeline.orchestrate import prefect_context
    from pipeline.orchestrate.mode import MODE_ENV, OrchestrationError, mode

    current = current_mode or mode()
    if pool and current in ("off", "ephemeral"):
        raise OrchestrationError(
            f"--pool needs a Prefect server its workers reach; {MODE_ENV}={current} has none: "
            f"use {MODE_ENV}=auto or server (with PREFECT_API_URL naming the server)"
        )
    with prefect_context(current, stage=True):
        return search_flow(
            search=str(search), trials=trials, parallel=parallel, timeout=timeout, pool=pool
        )
