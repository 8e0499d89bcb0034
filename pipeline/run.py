"""A run folder, ``runs/<name>/``: the one place that knows its layout.

(A first cut: the folder of a spec's run. The record of what a run used, stale outputs and
loading its model come next.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.spec.spec import Spec

RUNS_ENV = "PIPELINE_RUNS_DIR"


@dataclass(frozen=True)
class Run:
    """The outputs of one spec's run."""

    dir: Path

    @classmethod
    def named(cls, name: str, root: str | Path | None = None) -> Run:
        """``runs/<name>`` (or ``$PIPELINE_RUNS_DIR/<name>``), relative to the working folder."""
        return cls(Path(root or os.environ.get(RUNS_ENV) or "runs") / name)

    @classmethod
    def of(cls, spec: Spec, root: str | Path | None = None) -> Run:
        return cls.named(spec.name, root)
