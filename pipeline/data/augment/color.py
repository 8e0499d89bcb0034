"""Colour jitter as batched tensor ops: brightness, contrast, saturation, hue per sample."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pipeline.data.augment.base import AUGMENT_BUILDERS, Stage, mask, uniform
from pipeline.spec.data import ColorJitter

_LUMA = (0.299, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    w = x.new_tensor(_LUMA)[None, :, None, None]
    return (x * w).sum(1, keepdim=True)


def _hue_matrix(shift: Tensor) -> Tensor:
    """Per-sample RGB -> RGB matrices rotating the YIQ chroma plane by ``shift`` turns.

    A YIQ rotation is a linear stand-in for an HSV hue shift: one batched matmul instead of a
    piecewise RGB<->HSV conversion; it keeps luma exactly and hue approximately.
    """
    yiq = torch.tensor(_YIQ, device=shift.device)
    t = shift * 2 * math.pi
    c, s, one, z = torch.cos(t), torch.sin(t), torch.ones_like(t), torch.zeros_like(t)
    rot = torch.stack([one, z, z, z, c, -s, z, s, c], -1).view(-1, 3, 3)
    return torch.linalg.inv(yiq) @ rot @ yiq


def _factor(g: torch.Generator, n: int, amount: float, like: Tensor) -> Tensor:
    """Per-sample factors in [max(0, 1 - amount), 1 + amount], shaped to scale a batch."""
    f = uniform(g, n, max(0.0, 1 - amount), 1 + amount)
    return f.to(like.device, like.dtype)[:, None, None, None]


@AUGMENT_BUILDERS.register(ColorJitter)
def _color_jitter(t: ColorJitter) -> Stage:
    """Brightness, contrast, saturation, hue in that fixed order (torchvision shuffles the order);
    grayscale batches skip saturation and hue."""

    def stage(x: Tensor, g: torch.Generator) -> Tensor:
        n, c = x.shape[:2]
        out = x
        if t.brightness:
            out = (out * _factor(g, n, t.brightness, x)).clamp(0, 1)
        if t.contrast:
            f, mean = _factor(g, n, t.contrast, x), _gray(out).mean((1, 2, 3), keepdim=True)
            out = (f * out + (1 - f) * mean).clamp(0, 1)
        if t.saturation and c == 3:
            f = _factor(g, n, t.saturation, x)
            out = (f * out + (1 - f) * _gray(out)).clamp(0, 1)
        if t.hue and c == 3:
            m = _hue_matrix(uniform(g, n, -t.hue, t.hue)).to(x.device, x.dtype)
            out = torch.einsum("bij,bjhw->bihw", m, out).clamp(0, 1)
        active = mask(g, n, t.p).to(x.device)
        return torch.where(active[:, None, None, None], out, x)

    return stage
