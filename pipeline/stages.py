"""The pipeline's stages as plain functions: prepare, train, evaluate, and experiment (the three
in a row).

Each takes a validated ``Spec`` and plain options and returns plain data (a folder's path, a
dict), so the same call runs in this process or as a Prefect flow run (``pipeline.flows`` wraps
each of them; ``pipeline.orchestrate.call`` chooses how to run one). No Prefect, no DVC, no
CLI here, and nothing heavy at module level: each stage imports the library it runs, so a
stage's code is what its function imports (the stage-deps test reads it that way).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.data.prepare import Prepared
    from pipeline.spec.spec import Spec

Log = Callable[[str], None]


def _quiet(_message: str) -> None:
    """No progress messages (the library's default for prepare)."""


def prepare(
    spec: Spec, *, force: bool = False, out: str | Path | None = None, log: Log = _quiet
) -> str:
    """Prepare (or find) the spec's data, in the folder ``out`` when given (a DVC stage's
    output), else ``data/prepared/<dataset>-<hash>``; ``force`` prepares again. A folder that
    prepare did not write (not empty, without its marker) is refused, even with ``force``: a
    DataError names it and nothing in it is touched. ``log`` gets a line per step. Returns the
    prepared folder."""
    from pipeline.data.prepare import prepare as prepare_data

    return str(prepare_data(spec, force=force, progress=log, target=out).root)


def _prepared_for(spec: Spec, data: str | Path | None) -> Prepared | None:
    """The ``prepared=`` for train/evaluate: the folder ``data`` (what ``prepare --out`` wrote),
    checked to hold this spec's data section; None leaves them to their own default (the spec's
    folder, prepared when missing)."""
    from pipeline.data.prepare import load_prepared_for

    return None if data is None else load_prepared_for(spec, data)


def train(
    spec: Spec,
    *,
    resume: bool = False,
    data: str | Path | None = None,
    out: str | Path | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Train on the prepared folder ``data`` (or the spec's own prepared data); writes
    ``runs/<name>/`` (or ``out``). Returns the summary: epochs, best_epoch, stopped, last (the
    last epoch's row of history) and run_dir. ``train.nproc`` > 1 runs it in that many
    processes (:mod:`pipeline.train.distributed`)."""
    from pipeline.train.loop import train as train_model

    result = train_model(
        spec,
        prepared=_prepared_for(spec, data),
        out=Path(out) if out else None,
        resume=resume,
        log=log,
    )
    return {
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped": result.stopped,
        "last": result.history[-1] if result.history else {},
        "run_dir": str(result.run_dir),
    }


def evaluate(spec: Spec, *, data: str | Path | None = None, log: Log = print) -> dict[str, Any]:
    """Test-split metrics of the trained model, on the prepared folder ``data`` (or the spec's
    own); writes metrics.json and the plots beside the run."""
    from pipeline.evaluate import evaluate as evaluate_model

    return evaluate_model(spec, prepared=_prepared_for(spec, data), log=log)


def experiment(
    spec: Spec, *, resume: bool = False, data: str | Path | None = None, log: Log = print
) -> dict[str, Any]:
    """prepare -> train -> evaluate, preparing into the folder ``data`` when given (refused,
    as by ``prepare``, when it is someone else's); returns the test metrics. The
    ``experiment`` flow runs the same three, each as a task."""
    root = prepare(spec, out=data, log=log)
    train(spec, resume=resume, data=root, log=log)
    return evaluate(spec, data=root, log=log)


STAGES: tuple[Callable[..., Any], ...] = (prepare, train, evaluate, experiment)
"""Every stage, in pipeline order; ``pipeline.flows`` has a flow for each (checked at import)."""
