"""Test-time augmentation: the test split predicted again on transformed copies.

The copies come from the same path as training's augmented batches: a
:class:`~pipeline.data.loader.BatchLoader` whose ``transform`` is an
:class:`~pipeline.data.augment.Augment` built by ``build_augment`` (the same builders, drawing
per sample on the model's device, before normalization). The mirror is the
``horizontal_flip`` builder at p=1; the augment passes are the spec's own ``augment``
transforms, each pass a new epoch of the loader's seeded transform stream, so a run repeats
exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.data.augment import build_augment
from pipeline.data.loader import BatchLoader
from pipeline.errors import ConfigurationError
from pipeline.spec.data import AugmentSection, HorizontalFlip
from pipeline.spec.spec import Spec


@dataclass(frozen=True)
class Pass:
    """One extra prediction of the test split: its name and the loader that transforms it."""

    name: str
    loader: BatchLoader


def passes(spec: Spec, prepared: Any, **loader_options: Any) -> Iterator[Pass]:
    """The extra passes ``spec.evaluate.tta`` asks for: the mirror, then ``augment`` passes of
    the augment section (``loader_options``: device, memory_format, as for the plain loader)."""
    tta = spec.evaluate.tta
    if tta is None:
        return
    options = {**loader_options, "seed": spec.seed}
    size = spec.evaluate.batch_size
    if tta.flip:
        mirror = build_augment(AugmentSection(transforms=[HorizontalFlip(p=1.0)]))
        yield Pass(
            "flip", BatchLoader.from_prepared(prepared, "test", size, transform=mirror, **options)
        )
    if tta.augment:
        augment = build_augment(spec.augment)
        if augment is None:  # the check tta-augment-needs-transforms refuses such a spec
            raise ConfigurationError("evaluate.tta.augment needs augment.transforms")
        loader = BatchLoader.from_prepared(prepared, "test", size, transform=augment, **options)
        for i in range(tta.augment):  # each iteration of the loader is a new seeded draw
            yield Pass(f"augment {i + 1}", loader)


def average(plain: torch.Tensor, extra: list[torch.Tensor]) -> torch.Tensor:
    """The mean of the plain probabilities and those of every extra pass (in float64, so the
    mean of one pass is the pass itself, bit for bit)."""
    total = plain.double()
    for probs in extra:
        total = total + probs.double()
    return (total / (1 + len(extra))).to(plain.dtype)
