"""Offline augmentation: ``factor`` augmented copies of every training image, generated once."""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.data.augment.base import to_float, to_uint8
from pipeline.data.augment.compose import build_augment
from pipeline.spec.data import AugmentSection


def offline_augment(
    x_uint8: Tensor, section: AugmentSection, seed: int, batch_size: int = 512
) -> Tensor:
    """Offline mode: uint8 (N * (1 + factor), C, H, W) = the originals, then copy 1 of every
    image, copy 2, ...; row ``k * N + i`` comes from image ``i`` (see :func:`offline_index`), so
    labels are ``y.repeat(1 + factor)``. Runs on ``x_uint8``'s device, ``batch_size`` at a time."""
    augment = build_augment(section)
    if augment is None:
        raise ValueError("offline augmentation needs at least one transform")
    g = torch.Generator(device=x_uint8.device).manual_seed(seed)
    out = [x_uint8]
    for _ in range(section.factor):
        for start in range(0, len(x_uint8), batch_size):
            batch = to_float(x_uint8[start : start + batch_size])
            out.append(to_uint8(augment(batch, g)))
    return torch.cat(out)


def offline_index(n: int, factor: int) -> Tensor:
    """Which original image each row of :func:`offline_augment`'s output came from."""
    return torch.arange(n).repeat(1 + factor)
