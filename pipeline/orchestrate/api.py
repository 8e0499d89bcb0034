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
from pipeline.orchestrate.runs import crash_orphans, stage_tag, watch
from pipeline.orchestrate.server import Server, ensure_server, reachable


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` as Prefect resolves it (environment, profile, prefect.toml, .env)."""
    telemetry_off()
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def _resolve(current_mode: str) -> tuple[str | None, Server | None]:
    """The API this process's flow runs report to (None: Prefect's ephemeral mode), and the
    pipeline's server when that is the one."""
    if current_mode == "ephemeral":
        return None, None
    if current_mode == "off":
        raise OrchestrationError(f"{MODE_ENV}=off: no Prefect server is used")
    configured = configured_api_url()
    if configured:
        if reachable(configured):
            return configured, None
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
        return None, None
    if started:
        note(
            f"started a local Prefect server at {server.url.removesuffix('/api')} "
            f"(pid {server.pid}; `pipeline server stop` stops it)"
        )
    return server.url, server


def api_url(current_mode: str | None = None) -> str | None:
    """The API this process's flow runs report to; None for Prefect's ephemeral mode."""
    return _resolve(current_mode or mode())[0]


@contextlib.contextmanager
def prefect_context(
    current_mode: str | None = None, *, stage: bool = False
) -> Iterator[str | None]:
    """Run Prefect code against the mode's API. Per stage process, the flow-run heartbeat is
    off (measured: about 0.5 s a stage; only an automation the user sets up reads it), unless
    ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` is set. Deployment runs (a worker's) keep it.

    ``stage``: the block runs a stage's flow run. On the pipeline's own server, the runs that
    dead stage processes left unfinished are marked Crashed first, the run is tagged with this
    process (``runs``), and the stage ends at once should the server stop under it."""
    url, server = _resolve(current_mode or mode())
    from prefect import tags
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
        if not (stage and server):
            yield url
            return
        try:
            for name in crash_orphans():
                note(f"flow run {name!r} was left unfinished by a stage process that died: Crashed")
        except Exception as err:  # bookkeeping of earlier runs: never a reason to stop this one
            note(f"could not check {url} for flow runs left unfinished: {err}")
        with watch(server), tags(stage_tag()):
            yield url
