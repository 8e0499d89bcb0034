"""Normalization layer kinds that do not depend on the batch: layer norm and group norm
(batch norm is in ``pipeline.spec.layers``). Their builders are in ``pipeline.model.norms``."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field

from pipeline.spec.base import LAYERS, Shape, Size
from pipeline.spec.layers import LayerBase, ShapeError, fmt
from pipeline.spec.shapes import LayerShapeError

Eps = Annotated[float, Field(gt=0)]


def _flat_or_map(kind: str, shape: Shape) -> int:
    """The channels (or features) of a (C, H, W) or (F,) input."""
    if len(shape) not in (1, 3):
        raise ShapeError(f"{kind} needs (F,) or (C, H, W), got {fmt(shape)}")
    return shape[0]


@LAYERS.register
class LayerNorm(LayerBase):
    """Normalize each sample over its features: on (F,) over F; on a feature map over the
    channels at each position, as Keras's LayerNormalization(axis=-1) does on NHWC images
    (ConvNeXt's channels-last layer norm). Learns a scale and shift per channel."""

    type: Literal["layer_norm"] = "layer_norm"
    eps: Eps = 1e-5
    """Added to the variance (PyTorch's default; Keras uses 1e-3)."""
    affine: bool = True
    """Learn the per-channel scale and shift (Keras's ``center`` and ``scale``)."""

    def output_shape(self, shape: Shape) -> Shape:
        _flat_or_map("layer_norm", shape)
        return shape


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


@LAYERS.register
class GroupNorm(LayerBase):
    """Normalize each sample over groups of channels (and all positions) (Wu & He): batch
    norm's benefit without its dependence on the batch size. groups=1 normalizes over the
    whole sample; groups=channels is instance norm."""

    type: Literal["group_norm"] = "group_norm"
    groups: Size = 32
    """Channel groups (Keras's default 32); must divide the channels."""
    eps: Eps = 1e-5
    """Added to the variance (PyTorch's default; Keras uses 1e-3)."""
    affine: bool = True
    """Learn a scale and shift per channel."""

    def output_shape(self, shape: Shape) -> Shape:
        c = _flat_or_map("group_norm", shape)
        if c % self.groups:
            divisors = _divisors(c)
            shown = ", ".join(map(str, divisors[:24])) + (", ..." if len(divisors) > 24 else "")
            raise LayerShapeError(
                ("groups",),
                f"groups={self.groups} does not divide the {c} channels of {fmt(shape)}",
                f"use a divisor of {c}: {shown}",
            )
        return shape
