"""``train.checkpoint.keep_top``: the k best epochs by the monitored metric, a file each.

Which epochs they are follows from the history alone, so a resumed run keeps the same files
as an uninterrupted one, and a file left by an epoch that was not checkpointed is removed.
A new best is written (atomically) before the one it pushes out is deleted: the folder never
holds fewer than the k best so far.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

PREFIX = "top_epoch"


class TopK:
    """The k best epochs of ``monitor`` in ``folder``."""

    def __init__(self, folder: Path, k: int, monitor: str, mode: str) -> None:
        self.folder, self.k, self.monitor, self.mode = folder, k, monitor, mode

    def name(self, epoch: int, value: float) -> str:
        return f"{PREFIX}{epoch:03d}_{self.monitor}_{value:.4f}.pt"

    def ranked(self, history: list[dict[str, Any]]) -> list[tuple[int, float]]:
        """``(epoch, value)`` of the k best epochs, best first (ties: the earlier epoch)."""
        rows = [
            (row["epoch"], float(row[self.monitor]))
            for row in history
            if self.monitor in row and math.isfinite(row[self.monitor])
        ]
        sign = 1.0 if self.mode == "min" else -1.0
        return sorted(rows, key=lambda r: (sign * r[1], r[0]))[: self.k]

    def update(self, history: list[dict[str, Any]], save: Callable[[Path], None]) -> None:
        """After an epoch (the last row of ``history``): write its file if it is among the k
        best, then delete every top file that is not."""
        keep = {self.name(e, v) for e, v in self.ranked(history)}
        latest = history[-1]
        if self.monitor in latest and math.isfinite(latest[self.monitor]):
            name = self.name(latest["epoch"], float(latest[self.monitor]))
            if name in keep:
                save(self.folder / name)
        for path in self.folder.glob(f"{PREFIX}*.pt"):
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def listing(self, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """For train.json: the kept files, best first."""
        return [
            {"epoch": e, self.monitor: v, "file": self.name(e, v)} for e, v in self.ranked(history)
        ]
