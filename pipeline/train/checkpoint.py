"""Checkpoints: written atomically, loaded with ``weights_only=True``, tied to the architecture."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import PipelineError
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


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(path: Path, spec: Spec, state: dict[str, Any]) -> None:
    atomic_save({"arch": architecture_hash(spec), "spec_name": spec.name, **state}, path)


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
