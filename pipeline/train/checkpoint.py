"""Checkpoints: written atomically, loaded with ``weights_only=True``, tied to the architecture."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.atomic import replacing
from pipeline.errors import PipelineError
from pipeline.run import Run
from pipeline.spec.spec import Spec


class CheckpointError(PipelineError):
    """A checkpoint that cannot be used (missing, or of another architecture)."""


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


def save(path: Path, spec: Spec, state: dict[str, Any]) -> None:
    """``state`` with the architecture's hash, written atomically: never a half-written file."""
    with replacing(path) as tmp:
        torch.save({"arch": architecture_hash(spec), "spec_name": spec.name, **state}, tmp)


def load(path: Path, spec: Spec | None = None, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint (tensors and plain containers only); check it fits ``spec``."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, corrupt or not a checkpoint: any unpickling error
        reason = str(err).strip().split(". ")[0] or type(err).__name__  # torch adds a paragraph
        raise CheckpointError(
            f"cannot read the checkpoint {path} ({reason}): train again, or restore it "
            "(dvc checkout / dvc pull)"
        ) from err
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(
            f"{path} is not a pipeline checkpoint (no 'model' entry): train "
            "again, or restore it (dvc checkout / dvc pull)"
        )
    if spec is not None and state.get("arch") != architecture_hash(spec):
        raise CheckpointError(
            f"{path} was written for another architecture (spec {state.get('spec_name')!r}); "
            "the model section or the class selection changed since. Train from scratch "
            "(without --resume) or restore the spec."
        )
    return state


def load_trained(
    spec: Spec,
    which: str = "best",
    *,
    run: Run | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """The spec's model with the weights of its run's ``which`` checkpoint (best or last), in
    eval mode on ``device``, and the checkpoint (epoch, run id ...)."""
    from pipeline.model.build import build_model

    state = load((run or Run.of(spec)).checkpoint(which), spec, map_location=device)
    # the checkpoint supersedes pretrained or reused weights: never fetch or read those
    model = build_model(spec, device=device, load_weights=False)
    model.load_state_dict(state["model"])
    return model.eval(), state
