"""Batch mixing of the ``augment`` section: Mixup and CutMix, with label mixing.

Unlike the per-sample transforms (:data:`pipeline.spec.base.TRANSFORMS`), these act on a whole
training batch: each sample is blended with another of the batch, and its label with that
sample's label in the same proportion, so the loss sees soft targets. Their builders are in
:mod:`pipeline.train.mix` (registered for these classes in ``MIX_BUILDERS``).
"""

from __future__ import annotations

from typing import Literal

from pipeline.spec.base import Kind, Kinds, PositiveFloat

MIXES = Kinds("batch mix")


@MIXES.register
class Mixup(Kind):
    """Mixup (Zhang et al., 2018): x = lam * x_i + (1 - lam) * x_j, and the labels alike, with
    lam ~ Beta(alpha, alpha) drawn per batch (timm's batch mode)."""

    type: Literal["mixup"] = "mixup"
    alpha: PositiveFloat = 0.2
    """Beta(alpha, alpha): small alpha keeps most mixes close to one image (timm uses 0.8 for
    ImageNet, 0.2 is the paper's CIFAR/ImageNet value)."""


@MIXES.register
class CutMix(Kind):
    """CutMix (Yun et al., 2019): a box of x_j pasted into x_i, the box's area drawn as
    1 - lam with lam ~ Beta(alpha, alpha); the labels are weighted by the areas actually
    shown (after the box is clipped to the image, timm's ``correct_lam``)."""

    type: Literal["cutmix"] = "cutmix"
    alpha: PositiveFloat = 1.0
    """Beta(alpha, alpha): 1.0 (the paper's) draws the pasted area uniformly."""
