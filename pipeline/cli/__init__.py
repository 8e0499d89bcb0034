"""The ``pipeline`` command. Subcommands import only what they need: ``validate`` never imports
torch, so it answers in a fraction of a second.

The commands live by kind: ``spec_commands`` (validate, schema, docs, checks), ``stage_commands``
(prepare, train, evaluate, run), ``server_commands`` (server, deploy), ``tool_commands``
(summary, export, predict, lr-find, schedule-preview, diagnose, augment-preview). Each adds its
parsers with a ``handler``; ``main`` parses, calls it and owns the error policy.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import server_commands, spec_commands, stage_commands, tool_commands
from pipeline.errors import PipelineError

_ORDER = (spec_commands, stage_commands, server_commands, tool_commands)


def parser() -> argparse.ArgumentParser:
    """Every command's parser, each with its ``handler`` default."""
    p = argparse.ArgumentParser(prog="pipeline", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _ORDER:
        module.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except PipelineError as err:  # a user's mistake: its message, no traceback
        print(err.report(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


__all__ = ["main", "parser"]
