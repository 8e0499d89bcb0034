"""The stage commands (dvc.yaml's cmds): prepare, train, evaluate, and run (the three as one
experiment). Each loads the spec first, so a spec error is reported located, without a
traceback, before any flow run exists; then ``pipeline.orchestrate.call`` runs the stage
function here or as its Prefect flow run (``PIPELINE_ORCHESTRATION=auto|server|ephemeral|off``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import stages
from pipeline.cli.common import add_overrides, load, stderr
from pipeline.orchestrate import call

if TYPE_CHECKING:
    from pipeline.spec.spec import Spec

_DATA_HELP = (
    "the prepared data folder to use (what 'prepare --out DIR' wrote), "
    "checked to match the spec's data section"
)


def add_commands(sub: Any) -> None:
    p = sub.add_parser("prepare", help="prepare the spec's data (a no-op when already prepared)")
    p.add_argument("spec", type=Path)
    add_overrides(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--force", action="store_true", help="prepare again even if present")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="prepare into exactly this folder (a DVC stage's output) instead of "
        "data/prepared/<dataset>-<hash>",
    )
    p.set_defaults(handler=prepare)

    p = sub.add_parser("train", help="train the spec's model (writes runs/<name>/)")
    p.add_argument("spec", type=Path)
    add_overrides(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue exactly from the run's last checkpoint (a fresh start, said, when "
        "there is none)",
    )
    p.add_argument("--data", type=Path, metavar="DIR", help=_DATA_HELP)
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train in N processes (DistributedDataParallel; the same as -S train.nproc=N, "
        "recorded as that override)",
    )
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)  # a distributed run's ranks
    p.set_defaults(handler=train)

    p = sub.add_parser("run", help="prepare, train and evaluate as one Prefect flow run")
    p.add_argument("spec", type=Path)
    add_overrides(p)
    p.add_argument("--resume", action="store_true")
    p.add_argument(
        "--data", type=Path, metavar="DIR", help="prepare into (or use) exactly this folder"
    )
    p.set_defaults(handler=run)

    p = sub.add_parser("evaluate", help="test-split metrics of the trained model (metrics.json)")
    p.add_argument("spec", type=Path)
    add_overrides(p)
    p.add_argument("--data", type=Path, metavar="DIR", help=_DATA_HELP)
    p.set_defaults(handler=evaluate)


def _run(stage: Any, spec: Spec, args: argparse.Namespace, **options: Any) -> Any:
    """The stage on ``spec`` as the orchestration mode says (a flow reloads the spec file
    with the same overrides)."""
    return call(stage, spec, source=args.spec, overrides=args.overrides, **options)


def _device_here(spec: Spec) -> None:
    """A training device that is not here is an error now, before any flow run or data work
    (the train stage checks again where it runs)."""
    from pipeline.runtime import pick_device

    pick_device(spec.train.device)


def prepare(args: argparse.Namespace) -> int:
    from pipeline.data.prepare import load_prepared, report

    spec = load(args)
    root = _run(stages.prepare, spec, args, force=args.force, out=args.out, log=stderr)
    print(report(load_prepared(root, mmap=True), as_json=args.json))
    return 0


def train(args: argparse.Namespace) -> int:
    if args.nproc is not None:
        args.overrides.append(f"train.nproc={args.nproc}")
    spec = load(args)
    _device_here(spec)
    options = {"out": args.out} if args.out else {}
    trained = _run(stages.train, spec, args, resume=args.resume, data=args.data, **options)
    if os.environ.get("RANK", "0") != "0":
        return 0  # a distributed run's other ranks: rank 0 speaks for it
    print(
        f"trained {trained['epochs']} epochs; best epoch {trained['best_epoch']}; "
        f"outputs in {trained['run_dir']}"
    )
    return 0


def evaluate(args: argparse.Namespace) -> int:
    spec = load(args)
    metrics = _run(stages.evaluate, spec, args, data=args.data)
    for key, value in metrics.items():
        if "/" not in key:
            print(f"{key:24} {value:.4f}" if isinstance(value, float) else f"{key:24} {value}")
    return 0


def run(args: argparse.Namespace) -> int:
    spec = load(args)
    _device_here(spec)
    metrics = _run(stages.experiment, spec, args, resume=args.resume, data=args.data, log=stderr)
    print(f"test_accuracy {metrics['test_accuracy']:.4f}")
    return 0
