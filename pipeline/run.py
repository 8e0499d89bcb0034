"""A run folder, ``runs/<name>/``: the one place that knows its layout.

A :class:`Run` names every file of the folder, writes them atomically (:mod:`pipeline.atomic`),
and keeps the record of what each run used (``run.json``: the resolved spec, the ``-S``
overrides, the code version, library versions, the device). A fresh run removes the outputs
of the earlier one before it trains, so the folder is never a mix of two runs; the earlier
record goes to the append-only ``runs.jsonl``. ``spec.yaml`` (DVC's ``resolve`` stage writes
it before training) and the explorations ``lr_find/`` and ``schedule/`` (made before training,
from the spec alone) stay.

No torch here: the CLI and the flows import this on their light paths. Loading a run's model
needs the model builder, which imports this module for reused checkpoints, so it lives in
:func:`pipeline.train.checkpoint.load_trained` and asks a Run for the file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import atomic, runlock

if TYPE_CHECKING:
    from pipeline.spec.spec import Spec

RUNS_ENV = "PIPELINE_RUNS_DIR"
RECORD_FORMAT = 1
# The libraries whose versions decide what a run computes, recorded with it.
LIBRARIES = ("torch", "torchvision", "numpy", "pydantic", "dvclive", "prefect")

Log = Callable[[str], None]


def runs_root() -> Path:
    """The folder the run folders are in: ``runs``, or ``$PIPELINE_RUNS_DIR``."""
    return Path(os.environ.get(RUNS_ENV) or "runs")


@dataclass(frozen=True)
class Run:
    """The outputs of one spec's run, under ``dir``."""

    dir: Path

    @classmethod
    def named(cls, name: str, root: str | Path | None = None) -> Run:
        """``runs/<name>`` (or ``$PIPELINE_RUNS_DIR/<name>``), relative to the working folder."""
        return cls(Path(root or runs_root()) / name)

    @classmethod
    def of(cls, spec: Spec, root: str | Path | None = None) -> Run:
        return cls.named(spec.name, root)

    # ---- the layout ---------------------------------------------------------------------

    @property
    def resolved_spec(self) -> Path:
        """The resolved spec that DVC's ``resolve`` stage writes (never written here)."""
        return self.dir / "spec.yaml"

    @property
    def record(self) -> Path:
        """This run's record: what it used (see :meth:`start`)."""
        return self.dir / "run.json"

    @property
    def earlier_records(self) -> Path:
        """Records of the runs this folder held before, one JSON object a line, appended."""
        return self.dir / "runs.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    def checkpoint(self, which: str = "best") -> Path:
        """``best`` (the monitored metric's best epoch), ``last`` (what resume needs) or
        ``swa`` (train.swa's average)."""
        return self.checkpoints / f"{which}.pt"

    @property
    def history(self) -> Path:
        """A row per epoch: losses, metrics, learning rate, timing."""
        return self.dir / "history.csv"

    @property
    def summary(self) -> Path:
        """The training's outcome: epochs, best epoch, stopping reason, run id."""
        return self.dir / "train.json"

    @property
    def live(self) -> Path:
        """dvclive's folder (``metrics.json`` of the latest epoch, ``plots/``)."""
        return self.dir / "live"

    @property
    def live_metrics(self) -> Path:
        """dvclive's metrics of the latest epoch (what the train stage declares as metrics)."""
        return self.live / "metrics.json"

    @property
    def diagnostics(self) -> Path:
        return self.dir / "diagnostics.csv"

    @property
    def metrics(self) -> Path:
        """The test-split metrics of ``evaluate``, flat, for ``dvc metrics show``."""
        return self.dir / "metrics.json"

    @property
    def confusion(self) -> Path:
        """``actual,predicted`` rows, for DVC's confusion template."""
        return self.dir / "confusion.csv"

    @property
    def confusion_png(self) -> Path:
        """The confusion matrix for people: counts and row-normalized, class names on the axes."""
        return self.dir / "confusion.png"

    @property
    def roc(self) -> Path:
        """ROC curves (``curve,fpr,tpr``: per class, micro and macro), a DVC plot."""
        return self.dir / "roc.csv"

    @property
    def pr(self) -> Path:
        """Precision-recall curves (``curve,recall,precision``), a DVC plot."""
        return self.dir / "pr.csv"

    @property
    def roc_pr_png(self) -> Path:
        """The ROC and precision-recall curves, with their areas, for people."""
        return self.dir / "roc_pr.png"

    @property
    def curves(self) -> Path:
        return self.dir / "training_curves.png"

    def mc_uncertain(self, suffix: str) -> Path:
        """The most uncertain test samples under MC dropout: ``.json`` and ``.png``."""
        return self.dir / f"mc_uncertain{suffix}"

    @property
    def export(self) -> Path:
        return self.dir / "export"

    @property
    def lr_find(self) -> Path:
        return self.dir / "lr_find"

    @property
    def schedule(self) -> Path:
        return self.dir / "schedule"

    @property
    def lock_file(self) -> Path:
        """Held by the one training in this folder (:mod:`pipeline.runlock`)."""
        return self.dir / runlock.LOCK_NAME

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the folder for a training: ``RunLocked`` (naming the holder) while another
        process trains here."""
        return runlock.hold(self.dir)

    def remove_temps(self) -> list[Path]:
        """Remove the temps that writes of training's files killed outright (``kill -9``,
        a lost machine) left behind; call it only holding :meth:`lock`."""
        top = [p.name for p in (self.record, self.history, self.summary, self.diagnostics)]
        checkpoints = [self.checkpoint(w).name for w in ("best", "last", "swa")]
        return atomic.remove_temps(self.dir, top) + atomic.remove_temps(
            self.checkpoints, checkpoints
        )

    def trained_outputs(self) -> list[Path]:
        """What training writes."""
        return [self.checkpoints, self.history, self.summary, self.live, self.diagnostics]

    def evaluated_outputs(self) -> list[Path]:
        """What evaluating the checkpoints writes: stale as soon as training changes them."""
        return [
            self.metrics,
            self.confusion,
            self.confusion_png,
            self.roc,
            self.pr,
            self.roc_pr_png,
            self.curves,
            self.mc_uncertain(".json"),
            self.mc_uncertain(".png"),
            self.export,
        ]

    # ---- writing ------------------------------------------------------------------------

    def write_json(self, path: Path, data: Any) -> None:
        atomic.write_text(path, json.dumps(data, indent=2) + "\n")

    def write_csv(
        self,
        path: Path,
        rows: Iterable[Mapping[str, Any]],
        *,
        columns: Sequence[str] | None = None,
        append: bool = False,
    ) -> None:
        """Rows under a header of ``columns`` (by default the rows' keys in first-seen order;
        a missing value is left empty); ``append`` keeps the rows already in the file, under
        its header. The whole file is replaced either way."""
        rows = list(rows)
        old = path.read_text() if append and path.is_file() else ""
        if old:
            columns = old.splitlines()[0].split(",")
        elif columns is None:
            columns = list(dict.fromkeys(k for row in rows for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        if not old:
            writer.writeheader()
        writer.writerows(rows)
        atomic.write_text(path, old + buf.getvalue())

    # ---- the record ---------------------------------------------------------------------

    def read_record(self) -> dict[str, Any] | None:
        """This folder's record, or None (no run yet, or one from before records were kept)."""
        if not self.record.is_file():
            return None
        try:
            data = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def start(
        self,
        spec: Spec,
        *,
        resume: bool = False,
        device: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        log: Log = print,
    ) -> dict[str, Any]:
        """Record a run that starts now and clear what it would otherwise leave stale.

        A fresh run (``resume`` False) moves the earlier record to ``runs.jsonl``, removes
        every output of the earlier run and writes a new ``run.json``. A resumed run keeps
        its training outputs, appends this start to its record's ``resumed`` list (``run_id``,
        the checkpoint's, when the record is missing) and removes only the evaluation of the
        checkpoints it is about to change. A resumed part that runs another spec (more epochs,
        say) records it in its entry. Returns the record."""
        with atomic.writing(self.dir):
            return self._start(spec, resume, device, run_id, log)

    def _start(
        self,
        spec: Spec,
        resume: bool,
        device: Mapping[str, Any] | None,
        run_id: str | None,
        log: Log,
    ) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        now = _now()
        entry = {
            "started": now,
            "overrides": list(spec.overrides),
            "code": code_version(),
            "versions": versions(),
            "device": dict(device or {}),
        }
        earlier = self.read_record()
        if resume:
            removed = self._remove(self.evaluated_outputs())
            if removed:
                what = ", ".join(removed)
                log(
                    f"{spec.name}: resuming; removed the evaluation of the earlier "
                    f"checkpoints: {what}"
                )
            if earlier is not None and run_id not in (None, earlier.get("id")):
                self._keep(earlier, now, [])  # the checkpoint is of another run than the record
                earlier = None
            if earlier is not None:
                if spec.resolved() != earlier.get("spec"):
                    entry["spec"] = spec.resolved()
                earlier.setdefault("resumed", []).append(entry)
                self.write_json(self.record, earlier)
                return earlier
            record = self._new_record(spec, entry, run_id)
            record["resumed"] = [entry]
        else:
            removed = self._remove(self.trained_outputs() + self.evaluated_outputs())
            if earlier is not None:
                self._keep(earlier, now, removed)
            if earlier is not None or removed:
                log(_replaced_line(spec.name, earlier, removed, self.earlier_records))
            record = self._new_record(spec, entry, None)
        self.write_json(self.record, record)
        return record

    def _keep(self, record: dict[str, Any], now: str, removed: list[str]) -> None:
        """Append a replaced record to ``runs.jsonl``, with when and what of it went."""
        with self.earlier_records.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record | {"replaced": now, "removed": removed}) + "\n")

    def _new_record(self, spec: Spec, entry: dict[str, Any], run_id: str | None) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "id": run_id or new_run_id(),
            "name": spec.name,
            **entry,
            "spec": spec.resolved(),
        }

    def _remove(self, paths: Iterable[Path]) -> list[str]:
        """Remove those of ``paths`` that exist; their names relative to the folder."""
        removed = []
        for path in paths:
            name = path.relative_to(self.dir).as_posix()
            if path.is_dir():
                shutil.rmtree(path)
                removed.append(name + "/")
            elif path.exists():
                path.unlink()
                removed.append(name)
        return removed


def _replaced_line(
    name: str, earlier: dict[str, Any] | None, removed: list[str], records: Path
) -> str:
    what = ", ".join(removed) if removed else "nothing"
    if earlier is None:
        return f"{name}: replacing an earlier run with no record: removed {what}"
    overrides = " ".join(f"-S {o}" for o in earlier.get("overrides", [])) or "no overrides"
    return (
        f"{name}: replacing the earlier run {earlier.get('id')} (started "
        f"{earlier.get('started')}, {overrides}): removed {what}; its record is kept in {records}"
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_run_id() -> str:
    """When the run started (UTC) and a random suffix: sortable, and unique per start."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def code_version(folder: str | Path | None = None) -> dict[str, Any] | None:
    """The git commit of ``folder`` (by default the pipeline package's source) and whether
    tracked files under ``folder`` differ from it; None outside a git work tree or without
    git. Only ``folder`` counts: ``dvc repro`` rewrites dvc.lock before train runs, and the
    spec is recorded whole beside this."""
    where = Path(folder) if folder is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=where, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return {"commit": commit, "dirty": bool(status)}


def versions() -> dict[str, str | None]:
    """Python's and the libraries' versions (None: not installed), read without importing.
    A library already imported reports its own ``__version__``: torch's names its build
    (``+cu130``), which the package metadata leaves out."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("pipeline", *LIBRARIES):
        loaded = getattr(sys.modules.get(name), "__version__", None)
        try:
            out[name] = str(loaded) if loaded else metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["platform"] = f"{sys.platform}-{platform.machine()}"
    return out
