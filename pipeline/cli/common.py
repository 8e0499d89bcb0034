"""What every command module of the CLI shares: the ``-S`` option and loading the spec."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.spec.spec import Spec

Handler = Callable[[argparse.Namespace], int]
"""A command: the parsed arguments in, the exit code out."""


def add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a spec field, e.g. -S train.epochs=3 (as dvc exp run -S)",
    )


def load(args: argparse.Namespace) -> Spec:
    """The spec ``args.spec`` with ``args.overrides``; its warnings on stderr."""
    from pipeline.spec.load import load_spec

    spec = load_spec(args.spec, args.overrides)
    for p in spec.warnings:
        print(p.format(), file=sys.stderr)
    return spec


def stderr(message: str) -> None:
    """Progress for a person, kept off stdout (which holds the command's result)."""
    print(message, file=sys.stderr)
