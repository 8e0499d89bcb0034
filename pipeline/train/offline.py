"""The offline-augmented training set: made by ``prepare``, which stores it as the prepared
folder's training split (the originals, then ``factor`` augmented copies of each); training
only reads it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pipeline.spec.spec import Spec


def offline_set(spec: Spec, prepared: Any, log: Callable[[str], None]) -> tuple[Any, torch.Tensor]:
    """The training split of ``prepared``, checked to be the offline-augmented set of this
    spec's augment section (and data section); a DataError naming the folder says to prepare
    it otherwise. Nothing is generated or written here."""
    from pipeline.data.prepare import data_key
    from pipeline.data.raw import DataError

    augmented = prepared.meta.get("offline")
    if not augmented or prepared.meta.get("key") != data_key(spec):
        raise DataError(
            f"{prepared.root} holds no offline-augmented training set for this spec "
            f"(augment.mode: offline, factor {spec.augment.factor}): prepare makes it; run "
            f"'pipeline prepare <spec> --out {prepared.root}' (or 'dvc repro')"
        )
    if getattr(prepared, "written", False):  # prepared just now, for this run: say what it made
        log(
            f"offline augmentation: {augmented['factor']} augmented copies of each of "
            f"{augmented['originals']} training images, stored in {prepared.root}"
        )
    return prepared.split("train")
