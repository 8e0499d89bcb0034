"""The one base for errors a user can act on.

Every such error says in its message what was wrong and what would be valid, so the CLI prints
the message alone (no traceback) and exits 1. ``retryable`` says whether trying again may help
(a download that timed out) or not (a misspelt class, a missing file): the Prefect prepare
task's retry policy reads it instead of the message's text. Anything that is not a
``PipelineError`` is a bug in the pipeline and keeps its traceback.

No torch, no pydantic: the spec package imports this.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A problem the user can fix; its message is the whole story."""

    retryable: bool = False
    """Whether the same call may succeed later unchanged (a network hiccup)."""

    def __init__(self, message: str = "", *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable

    def report(self) -> str:
        """What the CLI prints: the message, as one line where it fits."""
        return f"error: {self}"


class ConfigurationError(PipelineError):
    """A valid spec that does not fit where it runs: a device that is not here, a loss that
    does not fit the model's outputs, a monitored metric the run does not record."""
