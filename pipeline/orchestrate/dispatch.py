"""The one way a command runs a stage: the plain function in this process, or its flow run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline.orchestrate.api import prefect_context
from pipeline.orchestrate.mode import mode

if TYPE_CHECKING:
    from pipeline.spec.spec import Spec

T = TypeVar("T")


def call(
    stage: Callable[..., T],
    spec: Spec,
    *,
    source: str | Path,
    overrides: Sequence[str] = (),
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> T:
    """Run the stage function ``stage`` (one of ``pipeline.stages.STAGES``) on ``spec`` as the
    orchestration mode says: called here (``off``), or as its flow run (``pipeline.flows``)
    against the mode's API, the flow loading the spec file ``source`` with ``overrides`` again
    (it runs where only parameters travel: a worker, a server's retry). ``options`` are the
    stage's keyword arguments, paths passed to a flow as strings. ``log`` reaches the call
    here only; a flow run logs to its run logger, which Prefect shows on the console."""
    current = mode()
    if current == "off":
        return stage(spec, **options, **({} if log is None else {"log": log}))
    with prefect_context(current, stage=True):
        from pipeline.flows import flow_of

        plain = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
        return flow_of(stage)(spec=str(source), overrides=list(overrides), **plain)
