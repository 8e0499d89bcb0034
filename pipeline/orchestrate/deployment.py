"""A Prefect deployment of the ``experiment`` flow on a process work pool."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from pipeline.orchestrate.api import prefect_context
from pipeline.orchestrate.mode import MODE_ENV, OrchestrationError, mode

DEFAULT_POOL = "pipeline-local"
DEFAULT_DEPLOYMENT = "local"


def deploy(
    project: str | Path = ".",
    name: str = DEFAULT_DEPLOYMENT,
    pool: str = DEFAULT_POOL,
    parameters: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Create (or update) the ``experiment`` deployment on the process work pool ``pool``
    (created if missing). Its pull step makes ``project`` the working directory, so a run's
    outputs land in ``<project>/runs/<name>/`` where dvc expects them; the flow is imported from
    the installed ``pipeline`` package. Returns (deployment id, API URL)."""
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

        with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
            client.create_work_pool(
                WorkPoolCreate(
                    name=pool,
                    type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
        deployment = experiment_flow.to_deployment(
            name=name,
            work_pool_name=pool,
            parameters=parameters or {},
            entrypoint_type=EntrypointType.MODULE_PATH,
            description="prepare -> train -> evaluate of a spec (parameters: spec, overrides)",
        )
        deployment.storage = LocalStorage(path=str(Path(project).resolve()))
        deployment_id = deployment.apply(work_pool_name=pool)
        return str(deployment_id), str(url)
