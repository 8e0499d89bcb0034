"""``pipeline search``: run (or continue) a hyperparameter search from a search file."""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path
from typing import Any

from pipeline.cli.common import stderr


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _duration(text: str) -> float:
    from pipeline.search.schema import duration_s

    try:
        return duration_s(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "search",
        help="hyperparameter search over spec fields (Optuna): runs or continues the study",
        description="Run the search file's trials until its budget; the same command again "
        "continues the same study (finished trials kept, an interrupted one run again). "
        "Writes runs/<search>/: trials.csv, best.yaml, plots/.",
    )
    p.add_argument("search", type=Path, help="the search file (YAML)")
    p.add_argument("--check", action="store_true", help="check the search file and stop")
    p.add_argument("--trials", type=_positive, help="trials in all (default: the file's budget)")
    p.add_argument("--parallel", type=_positive, help="trials at once (default: the file's)")
    p.add_argument("--timeout", type=_duration, help="no new trial after this (90s, 15m, 2h)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--pool",
        help="run the workers on this Prefect work pool (runs of its search-worker deployment: "
        "`pipeline deploy`), the study on the search file's storage",
    )
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # a coordinator's worker
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    p.set_defaults(handler=search)


def search(args: argparse.Namespace) -> int:
    from pipeline.search.load import load_search

    loaded = load_search(args.search)
    for warning in loaded.warnings:
        stderr(warning.format())
    if args.worker is not None:
        return _worker(loaded, args)
    if args.check:
        print(loaded.describe())
        return 0
    print(loaded.describe(), flush=True)
    summary = _run(loaded, args)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(_summary_text(loaded, summary))
    return 0


def _run(loaded: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The search here (PIPELINE_ORCHESTRATION=off), or as the ``search`` flow run: each trial
    a task run, with ``--pool`` each worker a run of the search-worker deployment."""
    from pipeline.orchestrate.mode import mode

    current = mode()
    if current == "off" and not args.pool:
        from pipeline.search.engine import run_search

        return run_search(loaded, trials=args.trials, parallel=args.parallel, timeout=args.timeout)
    from pipeline.search import flows

    return flows.run(
        args.search,
        trials=args.trials,
        parallel=args.parallel,
        timeout=args.timeout,
        pool=args.pool,
        current_mode=current,
    )


def _worker(loaded: Any, args: argparse.Namespace) -> int:
    """A worker process of a parallel search: trials until the budget, nothing else."""
    from pipeline.search.engine import THREADS_ENV, Worker

    threads = os.environ.get(THREADS_ENV)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    try:
        Worker(loaded, trials=args.trials, deadline=args.deadline, index=args.worker).run()
    except KeyboardInterrupt as err:  # the coordinator says what the study kept
        from pipeline.errors import Interrupted, stop_signal

        raise Interrupted(stop_signal(err) or signal.SIGINT) from None
    return 0


def _summary_text(loaded: Any, summary: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(summary["trials"].items()))
    lines = [f"{loaded.name}: {counts}"]
    for t in summary["best"]:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in t["values"].items())
        lines.append(f"  best: trial {t['number']}: {shown}; {t['params']}")
    for name, path in summary["files"].items():
        lines.append(f"  {name}: {path}")
    lines.append(f"live view: optuna-dashboard {loaded.storage}")
    return "\n".join(lines)
