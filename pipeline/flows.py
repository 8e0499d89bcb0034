"""Prefect flows: one per stage of ``pipeline.stages`` (prepare, train, evaluate, experiment).

Flows only orchestrate: each wraps its stage function, which knows nothing of Prefect, adding
what Prefect gives (prepare's retries and cache key, a task per step, a markdown artifact).
Parameters are typed, so Prefect validates them before a run starts (a deployment's server
rejects bad ones before any run exists). ``flow_of`` gives the dispatch
(``pipeline.orchestrate.call``) a stage's flow; every stage has one (checked at import).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prefect import Flow, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext

from pipeline import stages
from pipeline.errors import PipelineError
from pipeline.spec.spec import Spec

F = TypeVar("F", bound=Callable[..., Any])

FLOWS: dict[Callable[..., Any], Flow[..., Any]] = {}
"""Each stage function's flow."""


def _spec(spec: str | dict[str, Any], overrides: list[str]) -> Spec:
    """A spec file's path, or an inline spec (the parsed YAML as a mapping), validated by the same
    loader: a SpecError locates a problem in the file, or in the inline spec written as YAML."""
    from pipeline.spec.load import load_spec, load_spec_text

    if isinstance(spec, dict):
        import yaml

        return load_spec_text(
            yaml.safe_dump(spec, sort_keys=False), overrides, file="<inline spec>"
        )
    if _from_deployment():
        _check_inside_project(spec)
    return load_spec(spec, overrides)


def _from_deployment() -> bool:
    """A run of a deployment takes its parameters from whoever started it, maybe over the
    network; a stage the CLI runs takes them from the person at the command line."""
    from prefect.runtime import deployment

    return deployment.id is not None


def _check_inside_project(spec: str) -> None:
    """A spec file that a deployment run names must lie in the worker's project folder (or
    PIPELINE_ALLOWED_PATHS), as paths inside a spec must: its errors quote its text."""
    from pipeline.spec.errors import SpecError
    from pipeline.spec.paths import Roots

    problem = Roots.for_folder(Path.cwd()).problem(spec, Path.cwd(), ("spec",), spec_file=True)
    if problem is not None:
        raise SpecError([problem])


def _run_name() -> str:
    """Flow runs are named after the spec and its overrides, not a random pair of words."""
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    spec = parameters.get("spec")
    name = Path(spec).stem if isinstance(spec, str) else str((spec or {}).get("name", "inline"))
    return " ".join([name, *(parameters.get("overrides") or [])])


def _data_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """Prepared data depends on the data section (and seed) only: so does the cache key, with
    the folder it lands in (each project has its own) and the state of that folder's meta.json,
    so a folder prepared again, or removed, is never answered from the cache."""
    from pipeline.data.prepare import data_key, prepared_dir

    s: Spec = parameters["spec"]
    out = parameters.get("out")
    meta = (Path(out) if out else prepared_dir(s)).resolve() / "meta.json"
    try:
        stat = meta.stat()
    except OSError:
        return None  # not prepared: run (and do not cache a key that is about to change)
    folder = hashlib.sha1(f"{meta.parent}|{stat.st_mtime_ns}|{stat.st_size}".encode())
    return f"prepare-{s.data.dataset}-{data_key(s)}-{folder.hexdigest()[:12]}"


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry what may succeed later (a download: ``PipelineError.retryable``) and unexpected
    failures, never a mistake a user must fix (a missing mirror file, a misspelt class)."""
    try:
        state.result()
    except PipelineError as err:
        return err.retryable
    except Exception:
        return True
    return False


@task(
    retries=3,
    retry_delay_seconds=[5, 30, 120],
    retry_condition_fn=_transient,
    cache_key_fn=_data_key,
    persist_result=True,
)
def prepare_task(spec: Spec, force: bool = False, out: str | None = None) -> str:
    """Prepare (or find) the spec's data, in ``out`` when given; retried, since a download can
    fail and succeed later."""
    from pipeline.data.prepare import load_prepared, report

    root = stages.prepare(spec, force=force, out=out, log=get_run_logger().info)
    get_run_logger().info("\n" + report(load_prepared(root, mmap=True)))
    return root


@task
def train_task(spec: Spec, resume: bool = False, data: str | None = None) -> dict[str, Any]:
    return stages.train(spec, resume=resume, data=data, log=get_run_logger().info)


@task
def evaluate_task(spec: Spec, data: str | None = None) -> dict[str, float]:
    return stages.evaluate(spec, data=data, log=get_run_logger().info)


def _report(spec: Spec, *sections: list[str]) -> str:
    """The markdown artifact: the spec's name, description and model summary, then
    ``sections`` (each flow adds what it has: its code is what it imports)."""
    from pipeline.model.summary import summarize

    lines = [
        f"# {spec.name}",
        "",
        spec.description or "",
        "",
        "## Model",
        "",
        "```",
        summarize(spec).table(),
        "```",
        "",
    ]
    for section in sections:
        lines += section
    return "\n".join(lines) + "\n"


def _training(trained: dict[str, Any]) -> list[str]:
    """The training section: epochs, best epoch, why it stopped, the last epoch's metrics."""
    from pipeline.train.live import RUN_COLUMNS

    lines = [
        "## Training",
        "",
        f"{trained['epochs']} epochs, best epoch "
        f"{trained['best_epoch']}" + (f"; {trained['stopped']}" if trained["stopped"] else ""),
        "",
    ]
    last = {
        k: v
        for k, v in (trained.get("last") or {}).items()
        if isinstance(v, float) and k not in RUN_COLUMNS
    }
    if last:
        lines += ["| last epoch | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" for k, v in last.items()] + [""]
    return lines


def _test_metrics(metrics: dict[str, float]) -> list[str]:
    """The test metrics table (per-class entries, ``class/...``, left out)."""
    lines = ["## Test metrics", "", "| metric | value |", "| --- | --- |"]
    return lines + [
        f"| {k} | {v:.4f} |" for k, v in metrics.items() if "/" not in k and isinstance(v, float)
    ]


def _stage_flow(stage: Callable[..., Any]) -> Callable[[F], F]:
    """The flow of the stage function ``stage``: named after it, its runs after the spec."""

    def wrap(fn: F) -> F:
        FLOWS[stage] = flow(name=stage.__name__, flow_run_name=_run_name)(fn)
        return FLOWS[stage]  # type: ignore[return-value]

    return wrap


def flow_of(stage: Callable[..., Any]) -> Flow[..., Any]:
    """The flow that runs the stage function ``stage``."""
    return FLOWS[stage]


def _artifact_key(spec: Spec) -> str:
    # artifact keys allow lowercase letters, digits and dashes only
    safe = "".join(c if c.isalnum() else "-" for c in spec.name.lower())
    return f"experiment-{safe}"[:64] + "-" + hashlib.sha1(spec.name.encode()).hexdigest()[:6]


@_stage_flow(stages.prepare)
def prepare_flow(
    spec: str | dict[str, Any],
    overrides: list[str] | None = None,
    force: bool = False,
    out: str | None = None,
) -> str:
    """Prepare the data of the spec file ``spec`` (with ``-S``-style overrides), in the folder
    ``out`` when given (else ``data/prepared/<dataset>-<hash>``); ``force`` prepares again (and
    bypasses the task cache). Returns the prepared folder."""
    s = _spec(spec, overrides or [])
    task = prepare_task.with_options(refresh_cache=True) if force else prepare_task
    return task(s, force=force, out=out)


@_stage_flow(stages.train)
def train_flow(
    spec: str | dict[str, Any],
    overrides: list[str] | None = None,
    resume: bool = False,
    data: str | None = None,
) -> dict[str, Any]:
    """Train on the prepared folder ``data`` (checked against the data section), or on the
    spec's own prepared data, prepared first when missing."""
    s = _spec(spec, overrides or [])
    trained = train_task(s, resume=resume, data=data or prepare_task(s))
    create_markdown_artifact(
        _report(s, _training(trained)),
        key=_artifact_key(s),
        description=f"{s.name}: summary and training metrics",
    )
    return trained


@_stage_flow(stages.evaluate)
def evaluate_flow(
    spec: str | dict[str, Any], overrides: list[str] | None = None, data: str | None = None
) -> dict[str, float]:
    s = _spec(spec, overrides or [])
    metrics = evaluate_task(s, data=data)
    create_markdown_artifact(
        _report(s, _test_metrics(metrics)),
        key=_artifact_key(s),
        description=f"{s.name}: test metrics",
    )
    return metrics


@_stage_flow(stages.experiment)
def experiment_flow(
    spec: str | dict[str, Any],
    overrides: list[str] | None = None,
    resume: bool = False,
    data: str | None = None,
) -> dict[str, float]:
    """prepare -> train -> evaluate for one spec (a spec file's path, relative to the working
    directory, or an inline spec) with ``-S``-style overrides, preparing into the folder
    ``data`` when given; the same outputs the DVC stages write; publishes a markdown artifact
    with the model summary and the metrics."""
    s = _spec(spec, overrides or [])
    root = prepare_task(s, out=data)
    trained = train_task(s, resume=resume, data=root)
    metrics = evaluate_task(s, data=root)
    create_markdown_artifact(
        _report(s, _training(trained), _test_metrics(metrics)),
        key=_artifact_key(s),
        description=f"{s.name}: summary and test metrics",
    )
    return metrics


if missing := [stage.__name__ for stage in stages.STAGES if stage not in FLOWS]:
    raise TypeError(f"pipeline.flows: no flow for the stage(s) {', '.join(missing)}")
