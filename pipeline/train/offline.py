"""The offline-augmented training set: generated once, stored beside the prepared data."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pipeline.atomic import replacing
from pipeline.spec.spec import Spec


def offline_set(spec: Spec, prepared: Any, log: Callable[[str], None]) -> tuple[Any, torch.Tensor]:
    """Offline augmentation: the training images plus ``factor`` augmented copies of each,
    generated once and stored beside the prepared data (keyed by it and the augment section)."""
    from pipeline.data.augment import offline_augment

    key = hashlib.sha256(
        (prepared.root.name + spec.augment.model_dump_json() + str(spec.seed)).encode()
    ).hexdigest()[:8]
    folder = prepared.root.parent / f"{prepared.root.name}-offline-{key}"
    x, y = prepared.split("train")
    labels = torch.as_tensor(np.asarray(y)).repeat(1 + spec.augment.factor)
    if (folder / "train_x.npy").is_file():
        return np.load(folder / "train_x.npy", mmap_mode="r"), labels
    log(
        f"offline augmentation: {spec.augment.factor} augmented copies of each of {len(x)} "
        f"training images, stored in {folder}"
    )
    images = offline_augment(torch.as_tensor(np.asarray(x)), spec.augment, spec.seed).numpy()
    with replacing(folder / "train_x.npy") as tmp:
        np.save(tmp, images)
    return images, labels
