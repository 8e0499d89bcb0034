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


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop: Ctrl-C (SIGINT) or SIGTERM (``kill``, a CI runner's
    cancel, ``dvc exp remove --queue``). A KeyboardInterrupt, so that whatever cleans up on
    Ctrl-C cleans up on SIGTERM too. ``kept`` says what a stopped run left (its last
    checkpoint) and ``resumable`` whether ``--resume`` continues it; the CLI prints both and
    exits with ``128 + signum`` (130, 143)."""

    def __init__(self, signum: int, kept: str | None = None, *, resumable: bool = False) -> None:
        super().__init__(signum)
        self.signum, self.kept, self.resumable = signum, kept, resumable

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def stop_signal(err: BaseException) -> int | None:
    """The signal behind ``err`` if it is a request to stop: Ctrl-C, SIGTERM as Interrupted, or
    Prefect's ``TerminationSignal`` (what its own SIGTERM handler raises in a flow run); else
    None."""
    import signal

    if isinstance(err, Interrupted):
        return err.signum
    if isinstance(err, KeyboardInterrupt):
        return signal.SIGINT
    signum = getattr(err, "signal", None)
    if type(err).__name__ == "TerminationSignal" and isinstance(signum, int):
        return signum
    return None


def stop_of(err: BaseException) -> Interrupted | None:
    """The Interrupted that says most about a stop ``err`` came from (one that says what a
    run kept, also where it rides on Prefect's exception as ``pipeline_stop``); None when
    ``err`` is no stop."""
    first: Interrupted | None = None
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = current if isinstance(current, Interrupted) else None
        found = getattr(current, "pipeline_stop", None) or found
        if found is not None and found.kept is not None:
            return found
        signum = stop_signal(current)
        if first is None and signum is not None:
            first = found or Interrupted(signum)
        current = current.__context__ or current.__cause__
    return first
