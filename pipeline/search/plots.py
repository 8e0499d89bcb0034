"""A search's plots: Optuna's matplotlib figures as PNGs in ``runs/<search>/plots/``.

Which plots a study can support now is :func:`plan`; :func:`draw_all` draws them. Drawing is
the slow part of a report: 0.2-0.6 s a plot, most of it matplotlib laying out text, and a
fresh process first imports what draws them (matplotlib, Optuna's visualization and, for the
fANOVA importances, scikit-learn), 2-3 s more. So :func:`warm`, called as a search starts,
starts a drawing process (``python -m pipeline.search.drawing``) that makes those imports
while the first trials train, and :func:`draw_all` hands it a snapshot of the study's trials:
it forks a process for each share of the plots (as many shares as cores), so the search's last
step waits for the slowest share, not for every plot in turn. The process serves every later
report of this process too, and ends with it. Where it cannot run (one core, no process to be
had, or it died), the plots are drawn here, one after the other.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

HISTORY = "plots/history.png"
PARALLEL = "plots/parallel_coordinates.png"
IMPORTANCES = "plots/importances.png"
INTERMEDIATE = "plots/intermediate.png"
PARETO_FRONT = "plots/pareto_front.png"
PLOTS = (HISTORY, PARALLEL, IMPORTANCES, INTERMEDIATE, PARETO_FRONT)
_SLOWEST_FIRST = (PARALLEL, PARETO_FRONT, INTERMEDIATE, HISTORY, IMPORTANCES)

_DRAWING = "pipeline.search.drawing"
"""The module the drawing processes run, which imports matplotlib and Optuna's plots."""


@dataclass(frozen=True)
class Snapshot:
    """What a drawing process needs of a study: picklable, no storage connection."""

    directions: list[str]
    trials: list[Any]  # optuna.trial.FrozenTrial
    metrics: list[str]
    multi: bool


def snapshot(study: optuna.Study, metrics: Sequence[str]) -> Snapshot:
    return Snapshot(
        directions=[d.name.lower() for d in study.directions],
        trials=list(study.get_trials(deepcopy=False)),
        metrics=list(metrics),
        multi=len(study.directions) > 1 or len(metrics) > 1,
    )


def varying(done: Sequence[optuna.trial.FrozenTrial]) -> list[str]:
    """Parameters drawn with at least two different values among ``done``."""
    seen: dict[str, set[str]] = {}
    for t in done:
        for name, value in t.params.items():
            seen.setdefault(name, set()).add(repr(value))
    return [name for name, values in seen.items() if len(values) > 1]


def plan(study: optuna.Study, multi: bool) -> tuple[list[str], dict[str, str]]:
    """The plots the study can support now, and why each other one is not drawn."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    drawn: list[str] = []
    skipped: dict[str, str] = {}
    if not done:
        for name in (HISTORY, PARALLEL):
            skipped[name] = "no trial has completed yet"
    else:
        drawn += [HISTORY, PARALLEL]
    if len(done) < 2:
        skipped[IMPORTANCES] = (
            f"parameter importances need at least 2 completed trials; {len(done)} so far"
        )
    elif not varying(done):
        skipped[IMPORTANCES] = (
            "parameter importances need a parameter that differs between completed trials; "
            "every completed trial drew the same values"
        )
    else:
        drawn.append(IMPORTANCES)
    if multi:
        skipped[INTERMEDIATE] = "several objectives: trials report no per-epoch values"
    elif any(t.intermediate_values for t in trials):
        drawn.append(INTERMEDIATE)
    else:
        skipped[INTERMEDIATE] = "no trial has reported a per-epoch value yet"
    if multi:
        n = len(study.directions)
        if n > 3:
            skipped[PARETO_FRONT] = f"Optuna draws a Pareto front of 2 or 3 objectives, not {n}"
        elif not done:
            skipped[PARETO_FRONT] = "no trial has completed yet"
        else:
            drawn.append(PARETO_FRONT)
    return drawn, skipped


# ---------------------------------------------------------------------------------------------
# the drawing process


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _in_child() -> None:
    """In the drawing process: Ctrl-C is for the search to handle (it then stops reading),
    and the process ends with the search, however the search ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_server: subprocess.Popen[bytes] | None = None
"""The drawing process of this process, once :func:`warm` started it; it lives as long."""
_asking = threading.Lock()


def warm() -> None:
    """Start the drawing process unless it runs: it makes its imports while the trials
    train, then draws each report's plots (:func:`draw_all`) until this process ends. Nothing
    where plots would not be drawn in parallel (one core): they are then drawn here."""
    global _server
    with _asking:
        if _cores() < 2 or (_server is not None and _server.poll() is None):
            return
        try:
            _server = subprocess.Popen(
                [sys.executable, "-m", _DRAWING],
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
        if _server is not None and _send(_server, (snap, jobs, min(len(jobs), _cores()))):
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
    names = sorted(names, key=_SLOWEST_FIRST.index)
    return Drawing(snap, [(n, os.path.abspath(folder / n)) for n in names])


def draw_all(snap: Snapshot, names: Sequence[str], folder: Path) -> dict[str, str | None]:
    """:func:`begin`, then wait: for each plot, None when written, else why not."""
    return begin(snap, names, folder).wait()


def _send(proc: subprocess.Popen[bytes], request: Any) -> bool:
    """Hand the drawing process a request (its length, then a pickle); False when it is
    gone."""
    assert proc.stdin is not None
    data = pickle.dumps(request)
    try:
        proc.stdin.write(struct.pack("!Q", len(data)) + data)
        proc.stdin.flush()
    except (OSError, ValueError):
        return False
    return True


def _receive(proc: subprocess.Popen[bytes]) -> dict[str, str | None] | None:
    """What the drawing process drew (its length, then a pickle); None when it is gone or
    its answer is no such mapping."""
    assert proc.stdout is not None
    try:
        head = proc.stdout.read(8)
        if len(head) < 8:
            return None
        (size,) = struct.unpack("!Q", head)
        body = proc.stdout.read(size)
        reply = pickle.loads(body) if len(body) == size else None
    except (OSError, ValueError, EOFError, pickle.UnpicklingError):
        return None
    return reply if isinstance(reply, dict) else None


def _draw_here(snap: Snapshot, name: str, path: str) -> str | None:
    import importlib

    drawing = importlib.import_module(_DRAWING)
    return drawing.draw_file(snap, name, Path(path))
