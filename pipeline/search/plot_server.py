"""The process that draws a search's plots (``python -m pipeline.search.drawing``).

Drawing is the slow part of a report: 0.2-0.6 s a plot, most of it matplotlib laying out
text, and a fresh process first imports what draws them (matplotlib, Optuna's visualization
and, for the fANOVA importances, scikit-learn), 2-3 s more. So :func:`warm`, called as a search
starts, starts a drawing process that makes those imports while the first trials train, and
:func:`begin` hands it a snapshot of the study's trials: it forks a process for each share of
the plots (as many shares as cores), so the search's last step waits for the slowest share,
not for every plot in turn. The process serves every later report of this process too, and
ends with it. Where it cannot run (one core, no process to be had, or it died), the plots are
drawn here, one after the other.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.proc import cores, end_with_parent
from pipeline.search.plots import Snapshot, read_message, write_message


def _in_child() -> None:
    """In the drawing process: Ctrl-C is for the search to handle (it then stops reading),
    and the process ends with the search, however the search ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    end_with_parent()


_server: subprocess.Popen[bytes] | None = None
"""The drawing process of this process, once :func:`warm` started it; it lives as long."""
_asking = threading.Lock()


def warm() -> None:
    """Start the drawing process unless it runs: it makes its imports while the trials
    train, then draws each report's plots (:func:`draw_all`) until this process ends. Nothing
    where plots would not be drawn in parallel (one core): they are then drawn here."""
    global _server
    with _asking:
        if cores() < 2 or (_server is not None and _server.poll() is None):
            return
        try:
            _server = subprocess.Popen(
                [sys.executable, "-m", "pipeline.search.drawing"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # a problem there shows when drawing here
                preexec_fn=_in_child,
            )
        except OSError:  # no process to be had: the plots are drawn here
            _server = None
            return
        atexit.register(_discard, _server)


def _discard(proc: subprocess.Popen[bytes]) -> None:
    """End the drawing process (this process ends, or the drawing process failed)."""
    for pipe in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            if pipe is not None:
                pipe.close()
    try:
        proc.wait(timeout=5)  # its stdin closed: it ends
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Drawing:
    """Plots being drawn (:func:`begin`); :meth:`wait` gives what came of each."""

    def __init__(self, snap: Snapshot, jobs: list[tuple[str, str]]) -> None:
        self.snap, self.jobs = snap, jobs
        self.server: subprocess.Popen[bytes] | None = None
        if not jobs:
            return
        _asking.acquire()  # one request at a time: released by wait
        if _server is not None and _send(_server, (snap, jobs, min(len(jobs), cores()))):
            self.server = _server
        else:
            self._give_up()
            _asking.release()

    def wait(self) -> dict[str, str | None]:
        """For each plot, None when it was written, else why Optuna could not draw it; those
        the drawing process did not draw (it died) are drawn here."""
        results: dict[str, str | None] = {}
        if self.server is not None:
            try:
                reply = _receive(self.server)
                if reply is None:  # it died or misspoke: no more of it
                    self._give_up()
                else:
                    results = reply
            finally:
                self.server = None
                _asking.release()
        for name, path in self.jobs:
            if name not in results:
                results[name] = _draw_here(self.snap, name, path)
        return results

    @staticmethod
    def _give_up() -> None:
        global _server
        if _server is not None:
            _discard(_server)
            _server = None


def begin(snap: Snapshot, names: Sequence[str], folder: Path) -> Drawing:
    """Start drawing ``names`` (of :data:`PLOTS`) into ``folder``: in the drawing process,
    split over the cores, once :func:`warm` started it (the caller writes its other files
    meanwhile); else, when waited for, here, one after the other."""
    return Drawing(snap, [(n, os.path.abspath(folder / n)) for n in names])


def draw_all(snap: Snapshot, names: Sequence[str], folder: Path) -> dict[str, str | None]:
    """:func:`begin`, then wait: for each plot, None when written, else why not."""
    return begin(snap, names, folder).wait()


def _send(proc: subprocess.Popen[bytes], request: Any) -> bool:
    """Hand the drawing process a request; False when it is gone."""
    try:
        write_message(proc.stdin, request)
    except (OSError, ValueError):
        return False
    return True


def _receive(proc: subprocess.Popen[bytes]) -> dict[str, str | None] | None:
    """What the drawing process drew; None when it is gone or its answer is no such
    mapping."""
    try:
        reply = read_message(proc.stdout)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError):
        return None
    return reply if isinstance(reply, dict) else None


def _draw_here(snap: Snapshot, name: str, path: str) -> str | None:
    from pipeline.search.drawing import draw_file  # matplotlib: only when drawn here

    return draw_file(snap, name, Path(path))
