"""Which Prefect API a flow run reports to, as the mode says (the modes: ``pipeline.orchestrate``),
and the Prefect settings a stage's flow run gets. Prefect is imported inside the functions
only: ``off`` never imports it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from pipeline.orchestrate.logs import quiet_user_errors
from pipeline.orchestrate.mode import MODE_ENV, OrchestrationError, mode, note, telemetry_off
from pipeline.orchestrate.server import ensure_server, reachable


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` as Prefect resolves it (environment, profile, prefect.toml, .env)."""
    telemetry_off()
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def api_url(current_mode: str | None = None) -> str | None:
    """The API this process's flow runs report to; None for Prefect's ephemeral mode."""
    current_mode = current_mode or mode()
    if current_mode == "ephemeral":
        return None
    if current_mode == "off":
        raise OrchestrationError(f"{MODE_ENV}=off: no Prefect server is used")
    configured = configured_api_url()
    if configured:
        if reachable(configured):
            return configured
        if current_mode == "server":
            raise OrchestrationError(
                f"the Prefect server at {configured} (PREFECT_API_URL) does not answer"
            )
        note(
            f"the Prefect server at {configured} (PREFECT_API_URL) does not answer; "
            "using the pipeline's local server"
        )
    try:
        server, started = ensure_server()
    except OrchestrationError as err:
        if current_mode == "server":
            raise
        note(f"{err}\npipeline: falling back to Prefect's ephemeral mode")
        return None
    if started:
        note(
            f"started a local Prefect server at {server.url.removesuffix('/api')} "
            f"(pid {server.pid}; `pipeline server stop` stops it)"
        )
    return server.url


@contextlib.contextmanager
def prefect_context(current_mode: str | None = None) -> Iterator[str | None]:
    """Run Prefect code against the mode's API. Per stage process, the flow-run heartbeat is
    off (measured: about 0.5 s a stage; only an automation the user sets up reads it), unless
    ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` is set. Deployment runs (a worker's) keep it."""
    url = api_url(current_mode)
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    quiet_user_errors()
    updates: dict[Any, Any] = {PREFECT_API_URL: url}
    if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" not in os.environ:
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    with temporary_settings(updates=updates):
        yield url
