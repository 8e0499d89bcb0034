"""Prefect's console log, with the pipeline's own errors kept to their one-line message."""

from __future__ import annotations

import logging
from typing import Any

from pipeline.errors import PipelineError


class NoUserTraceback:
    """A failed run logs its exception with a traceback; on the console, the pipeline's own
    errors (a bad spec, missing data, a diverged run: a ``PipelineError``) keep their
    one-line message, as without Prefect. The API's copy of the log, emitted first, keeps it."""

    def filter(self, record: Any) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, PipelineError):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_user_errors() -> None:
    """Add ``NoUserTraceback`` to Prefect's console handlers (once)."""
    import prefect.main  # noqa: F401 - configures Prefect's logging (a later call is incremental)
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, NoUserTraceback) for f in handler.filters
        ):
            handler.addFilter(NoUserTraceback())
