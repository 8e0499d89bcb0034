"""What a run carries from one epoch to the next besides weights, optimizer and schedule: the
epoch, history, the best checkpoint's metric, early stopping's best and count, the random
number generators. All of it goes into every checkpoint, so a resumed run continues exactly
where the stopped one was: the same weights bit for bit, the same history, the same stop.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.spec.train import EarlyStopping


def better(value: float, best: float | None, mode: str, delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value < best - delta if mode == "min" else value > best + delta


def direction(monitor: str, mode: str) -> str:
    higher_better = "accuracy" in monitor or "f1" in monitor
    return mode if mode != "auto" else ("max" if higher_better else "min")


@dataclass
class State:
    """Everything a resumed run needs besides the weights, optimizer and schedule."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None
    """The checkpoint monitor's best value, at ``best_epoch``."""
    best_epoch: int | None = None
    es_best: float | None = None
    """Early stopping's best value of its monitor (which may differ from the checkpoint's)."""
    stale: int = 0
    """Epochs since early stopping's monitor last improved, this epoch counted."""
    stopped: str | None = None
    saved: int | None = None
    """The epoch that ``last.pt`` holds (None: none written or resumed from yet)."""

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "history": json.dumps(self.history),
            "best": self.best,
            "best_epoch": self.best_epoch,
            "early_stopping": {"best": self.es_best, "stale": self.stale},
        }

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> State:
        es = state["early_stopping"]
        return cls(
            epoch=state["epoch"],
            history=json.loads(state["history"]),
            best=state["best"],
            best_epoch=state["best_epoch"],
            es_best=es["best"],
            stale=es["stale"],
            saved=state["epoch"],
        )


class Stopper:
    """Early stopping: counts the epochs without improvement in the state itself."""

    def __init__(self, es: EarlyStopping) -> None:
        self.es, self.mode = es, direction(es.monitor, es.mode)

    def update(self, row: dict[str, Any], s: State) -> None:
        """Count epoch ``row`` and set ``s.stopped`` when patience has run out."""
        es = self.es
        if es.monitor in row:
            if better(row[es.monitor], s.es_best, self.mode, es.min_delta):
                s.es_best, s.stale = row[es.monitor], 0
            else:
                s.stale += 1
        self.check(s)

    def check(self, s: State) -> None:
        if self.es.patience < s.stale:
            s.stopped = (
                f"early stopping: {self.es.monitor} did not improve for {self.es.patience} epochs"
            )


def rng_state() -> dict[str, Any]:
    """Every random number generator a training step may draw from (the loader's own
    streams are seeded per epoch and need nothing)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    cuda = [t.cpu() for t in state["cuda"]]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
