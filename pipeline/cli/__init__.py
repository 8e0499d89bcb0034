"""The ``pipeline`` command. Subcommands import only what they need: ``validate`` never imports
torch, so it answers in a fraction of a second.

The commands live by kind: ``spec_commands`` (validate, schema, docs, checks), ``stage_commands``
(prepare, train, evaluate, run), ``search_commands`` (search), ``server_commands`` (server,
deploy), ``tool_commands`` (summary, export, predict, lr-find, schedule-preview, diagnose,
augment-preview). Each adds its parsers with a ``handler``; ``main`` parses, calls it and owns
the error policy.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.cli import (
    search_commands,
    server_commands,
    spec_commands,
    stage_commands,
    tool_commands,
)
from pipeline.errors import Interrupted, PipelineError, stop_of

_ORDER = (spec_commands, stage_commands, search_commands, server_commands, tool_commands)


def parser() -> argparse.ArgumentParser:
    """Every command's parser, each with its ``handler`` default."""
    p = argparse.ArgumentParser(prog="pipeline", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _ORDER:
        module.add_commands(sub)
    return p


def _terminate(signum: int, _frame: Any) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Interrupted(signum)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises Interrupted (a KeyboardInterrupt) as Ctrl-C does: a run stops the same
    way, its temps removed and what it kept said, whichever stopped it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _command(argv: Sequence[str], *, resume: bool) -> str:
    """The command line that ran, as one can type it again (with ``--resume``)."""
    prog = (
        ["pipeline"] if Path(sys.argv[0]).name == "pipeline" else [sys.executable, "-m", "pipeline"]
    )
    args = list(argv)
    if resume and "--resume" not in args:
        args.append("--resume")
    return shlex.join(prog + args)


def _stopped(stop: Interrupted, argv: Sequence[str]) -> int:
    """Say why the command ended, what a run kept and how to go on; the exit code."""
    name = signal.Signals(stop.signum).name
    print(f"interrupted by {name}" + (f": {stop.kept}" if stop.kept else ""), file=sys.stderr)
    if stop.resumable:
        print(f"resume with: {_command(argv, resume=True)}", file=sys.stderr)
    elif stop.kept is not None:
        print(f"run again with: {_command(argv, resume=False)}", file=sys.stderr)
    return stop.exit_code


def _rank_error(message: str) -> None:
    """In a rank of a distributed run started by ``pipeline train``, leave the message for
    the launcher to report (pipeline.train.distributed)."""
    import os

    folder = os.environ.get("PIPELINE_RANK_ERRORS")
    if folder:
        with contextlib.suppress(OSError):
            Path(folder, f"rank{os.environ.get('RANK', '0')}.txt").write_text(message)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    try:
        with _sigterm_interrupts():
            return args.handler(args)
    except PipelineError as err:  # a user's mistake: its message, no traceback
        print(err.report(), file=sys.stderr)
        _rank_error(err.report())
        return 1
    except OSError as err:
        if err.filename is None:
            raise  # not about a file the user named: a bug, with its traceback
        where = err.filename + (f" -> {err.filename2}" if err.filename2 else "")
        print(f"error: {where}: {err.strerror or err}", file=sys.stderr)
        return 1
    except BaseException as err:  # Ctrl-C, SIGTERM (ours or Prefect's): say what was kept
        stop = stop_of(err)
        if stop is None:
            raise
        return _stopped(stop, argv)


__all__ = ["main", "parser"]
