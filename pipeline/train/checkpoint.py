"""Checkpoints: written atomically, loaded with ``weights_only=True`` (a pickle's code never runs),
tied to the architecture; a bad one is one line naming the file and what to do."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.atomic import replacing
from pipeline.errors import PipelineError
from pipeline.run import Run
from pipeline.spec.spec import Spec


class CheckpointError(PipelineError):
    """A checkpoint that cannot be used: missing, unreadable (truncated, empty, a pickle, a
    foreign file), of another architecture, or lacking what resuming needs."""


def architecture_hash(spec: Spec) -> str:
    """A hash of what decides the weights' shapes: the model section, and the data's shape and
    classes. Resuming or evaluating with a different one is an error, not a silent mismatch."""
    data = spec.data
    key = {
        "model": spec.model.model_dump(mode="json", exclude={"defaults", "blocks"}),
        "classes": data.classes.model_dump(mode="json") if data.classes else None,
    }
    text = json.dumps(key, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


FORMAT = 2
"""2: every stateful piece of a run (early stopping, RNG states, loader epoch, grad scaler)."""

RESUME_KEYS = (
    "optimizer", "schedule", "phase", "epoch", "history", "early_stopping", "rng",
    "loader_epoch",
)  # fmt: skip
"""What resuming a run exactly needs besides the weights."""

_RESTORE = "(dvc checkout / dvc pull)"


def save(path: Path, spec: Spec, state: dict[str, Any]) -> None:
    """``state`` with the architecture's hash, written atomically: never a half-written file.
    Written through a Python file, so a full disk surfaces as the OSError it is."""
    with replacing(path) as tmp, tmp.open("wb") as f:
        torch.save(
            {"format": FORMAT, "arch": architecture_hash(spec), "spec_name": spec.name, **state},
            f,
        )


def _first_line(err: BaseException) -> str:
    """torch's reason without the paragraph it adds (weights-only advice, a C++ trace)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text.split(". ")[0].rstrip(".") or type(err).__name__


def load(
    path: Path,
    spec: Spec | None = None,
    map_location: str | torch.device = "cpu",
    *,
    resume: bool = False,
) -> dict:
    """Load a checkpoint (tensors and plain containers only: ``weights_only``, so a pickle's
    code never runs); check it fits ``spec``, and with ``resume`` that it holds all a resumed
    run needs. Every failure is one CheckpointError naming the file and what to do."""
    again = "train again without --resume" if resume else "train again"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: {again}")
    try:
        with warnings.catch_warnings():  # torch's notes on a foreign pickle: the error says it
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, empty, corrupt, a pickle with code: any failure
        raise CheckpointError(
            f"cannot read the checkpoint {path} ({_first_line(err)}): {again}, or restore it "
            f"{_RESTORE}"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(
            f"{path} is not a pipeline checkpoint (no 'model' entry): {again}, or restore it "
            f"{_RESTORE}"
        )
    if "arch" not in state:
        raise CheckpointError(
            f"{path} is not a pipeline checkpoint (no 'arch' entry: a bare state dict?): "
            f"{again}, or restore it {_RESTORE}"
        )
    if spec is not None and state["arch"] != architecture_hash(spec):
        raise CheckpointError(
            f"{path} was written for another architecture (spec {state.get('spec_name')!r}); "
            "the model section or the class selection changed since. Train from scratch "
            "(without --resume) or restore the spec."
        )
    missing = [k for k in RESUME_KEYS if k not in state] if resume else []
    if missing:
        raise CheckpointError(
            f"{path} cannot be resumed exactly: it lacks {', '.join(missing)} (written by an "
            f"older pipeline?); {again} (train from scratch)"
        )
    return state


def load_weights(
    model: nn.Module, state: dict[str, Any], path: Path, *, averaged: bool = False
) -> None:
    """``model.load_state_dict`` of a checkpoint's weights, failing with a CheckpointError.
    ``averaged``: the weights to predict with, train.ema's average where the run kept one
    (the checkpoint holds both: the model's own to resume, the average to use)."""
    ema = state.get("ema") if averaged else None
    try:
        model.load_state_dict(ema["weights"] if ema else state["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise CheckpointError(
            f"the weights in {path} do not fit the model ({_first_line(err)}): train again, "
            f"or restore it {_RESTORE}"
        ) from None


def load_trained(
    spec: Spec,
    which: str = "best",
    *,
    run: Run | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """The spec's model with the weights of its run's ``which`` checkpoint (best, last or
    swa; train.ema's average where the run kept one), in eval mode on ``device``, and the
    checkpoint (epoch, run id ...)."""
    from pipeline.model.build import build_model

    path = (run or Run.of(spec)).checkpoint(which)
    state = load(path, spec, map_location=device)
    # the checkpoint supersedes pretrained or reused weights: never fetch or read those
    model = build_model(spec, device=device, load_weights=False)
    load_weights(model, state, path, averaged=True)
    return model.eval(), state
