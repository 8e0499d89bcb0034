"""How a training run ends, said truly: finished (train.json, the weights it holds), diverged
(which checkpoint is kept, if any), or interrupted (what was kept, whether --resume goes on)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.errors import Interrupted, PipelineError, stop_signal
from pipeline.run import Run
from pipeline.train.state import State


class TrainingDiverged(PipelineError):
    """The loss became NaN/inf. The message says which checkpoint (if any) is kept, and
    train.json records the divergence."""


def diverged(reason: str, epoch: int, s: State, run: Run) -> tuple[TrainingDiverged, dict]:
    """The error to raise for a divergence in (0-based) ``epoch`` and its train.json entry."""
    last = run.checkpoint("last")
    kept = str(last) if s.saved is not None else None
    where = (
        f"the last good checkpoint (epoch {s.saved}) is kept in {last}"
        if kept
        else "no checkpoint was written (no epoch had finished)"
    )
    error = TrainingDiverged(
        f"{reason}. The learning rate may be too high: lower optimizer.lr, add clip_norm, or "
        f"check the data; {where}; {run.summary} records it."
    )
    return error, {"epoch": epoch + 1, "reason": reason, "kept": kept}


@contextlib.contextmanager
def stops(what: Callable[[int], Interrupted]) -> Iterator[None]:
    """A stop request in the block (Ctrl-C, SIGTERM) says what was kept (``what(signum)``):
    raised as that Interrupted, or, for Prefect's TerminationSignal, re-raised as it is (its
    flow engine marks the run by it) carrying the Interrupted as ``pipeline_stop``."""
    try:
        yield
    except BaseException as err:
        signum = stop_signal(err)
        if signum is None:
            raise
        stop = what(signum)
        if isinstance(err, KeyboardInterrupt):
            raise stop from None
        err.pipeline_stop = stop  # type: ignore[attr-defined]
        raise


def interrupted(signum: int, s: State, run: Run) -> Interrupted:
    """Ctrl-C or SIGTERM during a run: what its last checkpoint holds."""
    if s.saved is None:
        return Interrupted(signum, "no epoch had finished, no checkpoint was written")
    return Interrupted(signum, f"kept {run.checkpoint('last')} (epoch {s.saved})", resumable=True)


def interrupted_before(signum: int, run: Run, *, resume: bool) -> Interrupted:
    """Ctrl-C or SIGTERM while the data or the model were being made ready."""
    last = run.checkpoint("last")
    kept = f"{last} is as it was" if last.is_file() else "nothing was written"
    return Interrupted(
        signum, f"training had not started; {kept}", resumable=resume and last.is_file()
    )


def summary(
    run_id: str | None,
    s: State,
    monitor: str,
    *,
    weights: dict[str, Any] | None,
    diverged: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """train.json: the outcome (what it ran on is in run.json, under the same run_id)."""
    out = {
        "run_id": run_id,
        "epochs": s.epoch,
        "best_epoch": s.best_epoch,
        "monitor": monitor,
        "best": s.best,
        "stopped": s.stopped,
        "weights": weights,  # the epoch whose weights the trained model holds
        "diverged": diverged,
    }
    if s.history:
        out["last"] = s.history[-1]
    return out
