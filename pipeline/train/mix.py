"""Mixup and CutMix on training batches, with their labels mixed into soft targets.

The spec's ``augment.mixup`` / ``augment.cutmix`` (:mod:`pipeline.spec.mix`) are built here,
through ``MIX_BUILDERS`` (keyed by schema class). The trainer calls a :class:`BatchMixer` on
each training batch only; validation and test batches never pass through it.

timm's batch-mode semantics: per batch, ``mix_prob`` decides whether to mix at all, then (with
both kinds) ``switch_prob`` picks cutmix over mixup, then lam ~ Beta(alpha, alpha). Sample i is
mixed with sample i - 1 of the batch (a roll, as torchvision's v2.MixUp/CutMix do). Those v2
transforms are not used: they draw from the global RNG (a resumed run would not replay them)
and have no ``prob``/``switch_prob``. Here every draw comes from a generator seeded by (seed,
epoch, step, rank), so a resumed run mixes exactly as the uninterrupted one did.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from pipeline.registry import Builders
from pipeline.spec.data import AugmentSection
from pipeline.spec.mix import MIXES, CutMix, Mixup

_STREAM = 7  # the mixer's own random stream, apart from the loader's and augmentation's

Paste = Callable[[Tensor, float, np.random.Generator], tuple[Tensor, float]]
"""(batch, lam, generator) -> (mixed batch, the weight of each sample's own label)."""


@dataclass(frozen=True)
class Mix:
    """One kind of batch mix: its Beta parameter and how it blends images."""

    alpha: float
    paste: Paste


MIX_BUILDERS: Builders[Callable[[Any], Mix]] = Builders(MIXES, "batch mix")


def partner(x: Tensor) -> Tensor:
    """The sample each one is mixed with: the previous one in the batch (the first with the
    last)."""
    return x.roll(1, dims=0)


def mixup(x: Tensor, lam: float, _rng: np.random.Generator) -> tuple[Tensor, float]:
    """lam * x + (1 - lam) * partner(x); the labels take the same lam."""
    return x.mul(lam).add_(partner(x), alpha=1.0 - lam), lam


def cut_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box of about (1 - lam) of the image, centred at a
    uniform pixel and clipped to the image (timm's ``rand_bbox``)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    return top, bottom, left, right


def cutmix(x: Tensor, lam: float, rng: np.random.Generator) -> tuple[Tensor, float]:
    """partner(x) pasted into x in a box; the labels weighted by the areas that show (the
    clipped box's, not the drawn lam: timm's ``correct_lam``)."""
    h, w = x.shape[-2:]
    top, bottom, left, right = cut_box(h, w, lam, rng)
    out = x.clone()
    out[..., top:bottom, left:right] = partner(x)[..., top:bottom, left:right]
    return out, 1.0 - (bottom - top) * (right - left) / (h * w)


@MIX_BUILDERS.register(Mixup)
def _mixup(m: Mixup) -> Mix:
    return Mix(m.alpha, mixup)


@MIX_BUILDERS.register(CutMix)
def _cutmix(m: CutMix) -> Mix:
    return Mix(m.alpha, cutmix)


MIX_BUILDERS.check_complete()


class BatchMixer:
    """``(x, y, epoch, step) -> (x, target, dominant)``: the batch to train on, the target of
    the loss (soft when mixed, else ``y`` itself) and the labels training accuracy counts (the
    label with the larger weight; multi-label: each class whose weight is at least 0.5).
    Without mixup or cutmix it returns the batch unchanged."""

    def __init__(
        self, augment: AugmentSection, outputs: int, *, multi_label: bool, seed: int, rank: int
    ) -> None:
        self.mixup = MIX_BUILDERS[augment.mixup](augment.mixup) if augment.mixup else None
        self.cutmix = MIX_BUILDERS[augment.cutmix](augment.cutmix) if augment.cutmix else None
        self.prob, self.switch = augment.mix_prob, augment.switch_prob
        self.outputs, self.multi_label = outputs, multi_label
        self.key = [_STREAM, seed % 2**63, rank]

    def __call__(
        self, x: Tensor, y: Tensor, epoch: int, step: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        if self.mixup is None and self.cutmix is None:
            return x, y, y
        rng = np.random.default_rng([*self.key, epoch, step])
        if rng.random() >= self.prob:
            return x, y, y
        mix = self._pick(rng)
        x, lam = mix.paste(x, float(rng.beta(mix.alpha, mix.alpha)), rng)
        soft = self.soft(y)
        target = soft * lam + partner(soft) * (1.0 - lam)
        return x, target, self.dominant(target)

    def _pick(self, rng: np.random.Generator) -> Mix:
        if self.mixup is None or self.cutmix is None:
            return self.mixup or self.cutmix  # type: ignore[return-value]
        return self.cutmix if rng.random() < self.switch else self.mixup

    def soft(self, y: Tensor) -> Tensor:
        """Labels as float targets shaped like the logits."""
        if self.multi_label:
            return y.float()
        if self.outputs == 1:
            return y.float().view(-1, 1)
        return F.one_hot(y, self.outputs).float()

    def dominant(self, target: Tensor) -> Tensor:
        """Hard labels from soft targets, shaped as the data's labels are."""
        if self.multi_label:
            return (target >= 0.5).long()
        if self.outputs == 1:
            return (target[:, 0] >= 0.5).long()
        return target.argmax(dim=1)
