"""How the stage commands run the stages: the orchestration mode, the Prefect API a flow run
reports to, the pipeline-managed server, and the one dispatch.

``PIPELINE_ORCHESTRATION`` picks the mode (``pipeline.orchestrate.mode``):

- ``auto`` (the default): the server ``PREFECT_API_URL`` names (environment or active Prefect
  profile) when it answers; otherwise a local server the pipeline starts once and reuses (state
  in ``$PIPELINE_HOME/prefect-server.json``); should that fail, Prefect's ephemeral mode.
- ``server``: the same, but an unreachable server is an error instead of a fall-back.
- ``ephemeral``: Prefect's own temporary server, started anew in each process.
- ``off``: the plain stage functions; Prefect is not even imported.

Ephemeral mode pays the start of a temporary server in every process, so a ``dvc repro`` of
three stages would pay it three times; one local server started once (a persistent
``PREFECT_HOME``, so its SQLite database is migrated once) costs the first stage a few seconds
and the others nothing. ``pipeline server start|stop|status`` manages it by hand.

The modules: ``mode`` (the mode, ``$PIPELINE_HOME``, ``OrchestrationError``), ``server`` (the
managed server), ``identity`` (which process is that server), ``api`` (which API, the Prefect
settings of a run), ``runs`` (a stage's flow run on that server: crashed runs marked, the
server watched), ``logs`` (the console filter), ``dispatch`` (``call``: a stage here or as its
flow run), ``deployment``. Nothing here
imports Prefect or torch at module level: ``off`` stays fast.
"""

from pipeline.orchestrate.api import api_url, configured_api_url, prefect_context
from pipeline.orchestrate.deployment import DEFAULT_DEPLOYMENT, DEFAULT_POOL, deploy
from pipeline.orchestrate.dispatch import call
from pipeline.orchestrate.mode import MODE_ENV, MODES, OrchestrationError, home, mode
from pipeline.orchestrate.server import (
    Server,
    ensure_server,
    free_port,
    read_state,
    state_file,
    stop_server,
)
from pipeline.proc import pid_alive

__all__ = [
    "DEFAULT_DEPLOYMENT",
    "DEFAULT_POOL",
    "MODES",
    "MODE_ENV",
    "OrchestrationError",
    "Server",
    "api_url",
    "call",
    "configured_api_url",
    "deploy",
    "ensure_server",
    "free_port",
    "home",
    "mode",
    "pid_alive",
    "prefect_context",
    "read_state",
    "state_file",
    "stop_server",
]
