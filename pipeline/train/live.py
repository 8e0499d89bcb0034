"""What a training run shows while it runs: dvclive's files for DVC's tools, a progress bar."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import atomic

# History columns that describe the run rather than the model (dvclive, the epoch log line and
# the flows' report show the others).
RUN_COLUMNS = frozenset({"epoch", "phase", "time_s", "train_images_per_s"})


def open_live(folder: Path, history: list[dict[str, Any]]) -> Any:
    """A dvclive logger writing ``folder``: ``metrics.json`` (the latest epoch) and
    ``plots/metrics/<name>.tsv`` (a row per epoch), which ``dvc exp show``, ``dvc plots`` and
    DVC's VS Code extension read while a stage runs. It never writes a dvc.yaml (the train stage
    declares these files) nor saves an experiment itself, and it starts afresh and replays
    ``history`` (a resumed run's earlier epochs), so the files always match history.csv."""
    from dvclive import Live

    class _Live(Live):
        def _init_dvc(self) -> None:
            # dvclive opens the DVC repo around the working folder here; in a git repo without
            # DVC it runs `dvc init` there, and in one without commits it raises. Only inside
            # `dvc repro` / `dvc exp run` (DVC_ROOT set) is there something to gain from it:
            # experiment bookkeeping and DVC Studio's live updates.
            if os.environ.get("DVC_ROOT"):
                with contextlib.suppress(Exception):
                    super()._init_dvc()

        def make_summary(self) -> None:
            # dvclive's own rewrites metrics.json in place: a full disk would leave half of
            # one (a DVC metrics file, in git) where the last good one was
            from dvclive.plots import NumpyEncoder

            if self._step is not None:
                self.summary["step"] = self.step
            text = json.dumps(self.summary, indent=4, cls=NumpyEncoder) + "\n"
            atomic.write_text(self.metrics_file, text)

    live = _Live(dir=str(folder), dvcyaml=None, save_dvc_exp=False, report=None)
    for row in history:
        log_live(live, row)
    return live


def log_live(live: Any, row: dict[str, Any]) -> None:
    """One epoch: its losses, metrics and learning rate, then the next step."""
    for key, value in row.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and key not in RUN_COLUMNS:
            live.log_metric(key, value)
    live.next_step()


def progress(
    loader: Any,
    label: str,
    status: Callable[[], str] | None = None,
    *,
    every: int = 20,
    console: Any = None,
) -> Any:
    """A rich progress bar on a terminal (or on ``console``), showing ``status()`` (the running
    loss and accuracy) refreshed every ``every`` batches: the one host sync it costs on CUDA
    is paid that seldom, never per batch. The plain iterator (per-epoch log lines only, no
    status computed) when output goes to a file or CI log."""
    if console is None and (not sys.stderr.isatty() or os.environ.get("CI")):
        return loader
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    def bar() -> Any:
        columns = (label, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        shown = (*columns, TextColumn("{task.fields[status]}"))
        with Progress(*shown, transient=True, console=console) as bar:
            task = bar.add_task(label, total=len(loader), status="")
            for step, item in enumerate(loader, 1):
                yield item
                if status is not None and (step % every == 0 or step == len(loader)):
                    bar.update(task, advance=1, status=status())
                else:
                    bar.advance(task)

    return bar()
