"""Prefect deployments on a process work pool: ``experiment`` (prepare -> train -> evaluate of
a spec), and a search's two flows, ``search`` (the coordinator) and ``search-worker`` (one of
its workers: ``pipeline.search.flows``)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from pipeline.orchestrate.api import prefect_context
from pipeline.orchestrate.mode import MODE_ENV, OrchestrationError, mode

DEFAULT_POOL = "pipeline-local"
DEFAULT_DEPLOYMENT = "local"
PROJECT_ENV = "PIPELINE_PROJECT"
"""The project folder a process worker runs a search's flow runs in (the worker's environment
reaches its flow runs): workers started in several copies of a project each train in their own;
unset, the folder the deployment was made for."""
PROJECT_STEP = "pipeline.orchestrate.deployment.enter_project"


def enter_project(directory: str) -> dict[str, str]:
    """A deployment's pull step: work in ``$PIPELINE_PROJECT`` when the worker sets it, else in
    ``directory``; returns ``{"directory": the folder}``, as Prefect's set_working_directory."""
    chosen = os.environ.get(PROJECT_ENV) or directory
    try:
        os.chdir(chosen)
    except OSError as err:
        source = f"{PROJECT_ENV}={chosen}" if os.environ.get(PROJECT_ENV) else chosen
        raise OrchestrationError(f"cannot work in the project folder {source}: {err}") from None
    return {"directory": chosen}


def deploy(
    project: str | Path = ".",
    name: str = DEFAULT_DEPLOYMENT,
    pool: str = DEFAULT_POOL,
    parameters: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Create (or update) the ``experiment`` deployment, and the search's ``search`` and
    ``search-worker`` deployments (each named ``name``), on the process work pool ``pool``
    (created if missing). The experiment's pull step makes ``project`` the working directory,
    so a run's outputs land in ``<project>/runs/<name>/`` where dvc expects them; a search's
    runs work in the worker's ``$PIPELINE_PROJECT``, else in ``project``. The flows are imported
    from the installed ``pipeline`` package. Returns (the experiment deployment's id, API URL)."""
    current = mode()
    if current in ("off", "ephemeral"):
        raise OrchestrationError(
            f"{MODE_ENV}={current}: a deployment needs a Prefect server (auto or server)"
        )
    with prefect_context(current) as url:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.deployments.runner import EntrypointType
        from prefect.exceptions import ObjectAlreadyExists
        from prefect.runner.storage import LocalStorage
        from prefect.workers.process import ProcessWorker

        from pipeline.flows import experiment_flow
        from pipeline.search.flows import search_flow, search_worker_flow

        class ProjectStorage(LocalStorage):
            """The flow's code is the installed package; the pull step enters the project."""

            def to_pull_step(self) -> dict[str, Any]:
                return {PROJECT_STEP: {"directory": str(self._path)}}

        folder = str(Path(project).resolve())
        with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
            client.create_work_pool(
                WorkPoolCreate(
                    name=pool,
                    type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
        made = []
        for flow_, storage, description, defaults in (
            (
                experiment_flow,
                LocalStorage(path=folder),
                "prepare -> train -> evaluate of a spec (parameters: spec, overrides)",
                parameters or {},
            ),
            (
                search_flow,
                ProjectStorage(path=folder),
                "a hyperparameter search (parameters: search, trials, parallel, timeout, pool)",
                {},
            ),
            (
                search_worker_flow,
                ProjectStorage(path=folder),
                "one worker of a search, started by the search flow (parameters: search, "
                "trials, deadline, index)",
                {},
            ),
        ):
            deployment = flow_.to_deployment(
                name=name,
                work_pool_name=pool,
                parameters=defaults,
                entrypoint_type=EntrypointType.MODULE_PATH,
                description=description,
            )
            deployment.storage = storage
            made.append(deployment.apply(work_pool_name=pool))
        return str(made[0]), str(url)
