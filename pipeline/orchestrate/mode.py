"""The orchestration mode (``PIPELINE_ORCHESTRATION``), the pipeline's home folder and the
error of this package. Standard library only."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.errors import PipelineError

MODES = ("auto", "server", "ephemeral", "off")
MODE_ENV = "PIPELINE_ORCHESTRATION"


class OrchestrationError(PipelineError):
    """A problem the user can act on (no server, a bad mode): its message says what to do."""


def mode() -> str:
    """The mode ``PIPELINE_ORCHESTRATION`` names (default ``auto``); ``off`` in a rank of a
    torchrun group (``WORLD_SIZE`` > 1): the ranks are one run, not a flow run each."""
    value = os.environ.get(MODE_ENV, "").strip().lower() or "auto"
    if value not in MODES:
        raise OrchestrationError(f"{MODE_ENV}={value!r} is not one of {', '.join(MODES)}")
    if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):
        return "off"
    return value


def home() -> Path:
    """``$PIPELINE_HOME`` (default ``~/.cache/pipeline``): the managed server's state lives here."""
    return Path(os.environ.get("PIPELINE_HOME") or Path.home() / ".cache" / "pipeline")


def telemetry_off() -> None:
    """Prefect's client telemetry and server analytics off, unless the user set them."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def note(message: str) -> None:
    """A line for the user on stderr, prefixed ``pipeline:``."""
    print(f"pipeline: {message}", file=sys.stderr)
