"""Test-time augmentation, an option of the ``evaluate`` section (kept apart from
:mod:`pipeline.spec.train` so that evaluation options do not grow the training schema)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipeline.spec.base import StrictModel

MAX_TTA_PASSES = 64
"""Each pass predicts the whole test split again: 64 is already 65 times the plain cost."""


class TTA(StrictModel):
    """Test-time augmentation: the test split is also predicted on transformed copies and the
    class probabilities of all passes are averaged. Reported beside the plain metrics, with a
    ``tta_`` prefix (``tta_test_accuracy``, ...); the plain ones stay those of the images."""

    flip: bool = False
    """Add a horizontally mirrored copy of every image (the ``horizontal_flip`` transform at
    p=1). Right for photos; wrong for digits or text, which a mirror changes."""
    augment: Annotated[int, Field(ge=0, le=MAX_TTA_PASSES)] = 0
    """Add this many passes through the spec's ``augment`` transforms (the training loader's
    builders, on the same device), each with its own seeded draws. Needs ``augment.transforms``.
    With neither ``flip`` nor ``augment`` the tta_ metrics equal the plain ones."""
