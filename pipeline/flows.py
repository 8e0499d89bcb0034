"""Prefect flows: one per stage and an ``experiment`` flow running all three.

Flows only orchestrate: every step is a plain library function (``prepare``, ``train``,
``evaluate``) that knows nothing of Prefect. Parameters are typed, so Prefect validates them
before a run starts (a deployment's server rejects bad ones before any run exists).
"""

from __future__ import annotations

import hashlib
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext

from pipeline.spec.spec import Spec


def _spec(spec: str, overrides: list[str]) -> Spec:
    from pipeline.spec.load import load_spec

    return load_spec(spec, overrides)


def _data_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Prepared data depends on the data section (and seed) only: so does the cache key."""
    from pipeline.data.prepare import data_key

    s: Spec = parameters["spec"]
    return f"prepare-{s.data.dataset}-{data_key(s)}"


@task(retries=3, retry_delay_seconds=[5, 30, 120], cache_key_fn=_data_key,
      persist_result=False)
def prepare_task(spec: Spec) -> str:
    """Prepare (or find) the spec's data; retried, since a download can fail and succeed later."""
    from pipeline.data.prepare import prepare, report

    prepared = prepare(spec, progress=get_run_logger().info)
    get_run_logger().info("\n" + report(prepared))
    return str(prepared.root)


@task
def train_task(spec: Spec, resume: bool = False) -> dict[str, Any]:
    from pipeline.train.loop import train

    result = train(spec, resume=resume, log=get_run_logger().info)
    return {"epochs": len(result.history), "best_epoch": result.best_epoch,
            "stopped": result.stopped, "last": result.history[-1] if result.history else {},
            "run_dir": str(result.run_dir)}


@task
def evaluate_task(spec: Spec) -> dict[str, float]:
    from pipeline.evaluate import evaluate

    return evaluate(spec)


def _report(spec: Spec, trained: dict[str, Any] | None, metrics: dict[str, float] | None) -> str:
    from pipeline.model.summary import summarize

    lines = [f"# {spec.name}", "", spec.description or "", "", "## Model", "", "```",
             summarize(spec).table(), "```", ""]
    if trained:
        lines += ["## Training", "", f"{trained['epochs']} epochs, best epoch "
                  f"{trained['best_epoch']}" + (f"; {trained['stopped']}" if trained["stopped"]
                                                else ""), ""]
    if metrics:
        lines += ["## Test metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()
                  if "/" not in k and isinstance(v, float)]
    return "\n".join(lines) + "\n"


def _artifact_key(spec: Spec) -> str:
    # artifact keys allow lowercase letters, digits and dashes only
    safe = "".join(c if c.isalnum() else "-" for c in spec.name.lower())
    return f"experiment-{safe}"[:64] + "-" + hashlib.sha1(spec.name.encode()).hexdigest()[:6]


@flow(name="prepare")
def prepare_flow(spec: str, overrides: list[str] | None = None) -> str:
    """Prepare the data of the spec file ``spec`` (with ``-S``-style overrides)."""
    return prepare_task(_spec(spec, overrides or []))


@flow(name="train")
def train_flow(spec: str, overrides: list[str] | None = None, resume: bool = False
               ) -> dict[str, Any]:
    s = _spec(spec, overrides or [])
    prepare_task(s)
    return train_task(s, resume=resume)


@flow(name="evaluate")
def evaluate_flow(spec: str, overrides: list[str] | None = None) -> dict[str, float]:
    s = _spec(spec, overrides or [])
    metrics = evaluate_task(s)
    create_markdown_artifact(_report(s, None, metrics), key=_artifact_key(s),
                             description=f"{s.name}: test metrics")
    return metrics


@flow(name="experiment")
def experiment_flow(spec: str, overrides: list[str] | None = None, resume: bool = False
                    ) -> dict[str, float]:
    """prepare -> train -> evaluate for one spec, with the same outputs the DVC stages write;
    publishes a markdown artifact with the model summary and the metrics."""
    s = _spec(spec, overrides or [])
    prepare_task(s)
    trained = train_task(s, resume=resume)
    metrics = evaluate_task(s)
    create_markdown_artifact(_report(s, trained, metrics), key=_artifact_key(s),
                             description=f"{s.name}: summary and test metrics")
    return metrics
