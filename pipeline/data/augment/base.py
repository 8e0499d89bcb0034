"""What an augmentation builder returns, the table of builders, and the per-sample random draws.

A builder turns one transform of the spec into a :data:`Stage` (a batched step) or an
:class:`AffinePart` (a geometric transform that :func:`~pipeline.data.augment.compose.build_augment`
merges with its neighbours into one warp). Builders are registered for the transform's schema
class, never its name::

    @AUGMENT_BUILDERS.register(Rotation)
    def _rotation(t: Rotation) -> AffinePart: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pipeline.registry import Builders
from pipeline.spec.base import TRANSFORMS

Stage = Callable[[Tensor, torch.Generator], Tensor]
"""One batched step: (batch, generator) -> batch."""


# ---- random draws (on the generator's device; moved to the batch's device by the caller) -----


def uniform(g: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    """``n`` draws in [lo, hi)."""
    return torch.rand(n, generator=g, device=g.device) * (hi - lo) + lo


def mask(g: torch.Generator, n: int, p: float) -> Tensor:
    """Which samples get a transform of probability ``p``."""
    return torch.rand(n, generator=g, device=g.device) < p


# ---- what builders return -----------------------------------------------------------------


@dataclass(frozen=True)
class Warp:
    """How one ``grid_sample`` resamples: consecutive transforms that agree share one."""

    fill: str = "nearest"
    fill_value: float = 0.0
    interpolation: str = "bilinear"


@dataclass(frozen=True)
class AffinePart:
    """A geometric transform: per-sample matrices, merged with its neighbours into one warp."""

    p: float
    warp: Warp | None  # None: moves no content off the image (a flip), so any warp will do
    draw: Callable[[torch.Generator, int, int, int], Tensor]  # (g, n, h, w) -> (n, 3, 3)
    exact: Stage | None = None  # how to run it outside a warp, without interpolation

    def sample(self, g: torch.Generator, n: int, h: int, w: int) -> tuple[Tensor, Tensor]:
        m, active = self.draw(g, n, h, w), mask(g, n, self.p)
        eye = torch.eye(3, device=m.device, dtype=m.dtype).expand_as(m)
        return torch.where(active[:, None, None], m, eye), active


Built = Stage | AffinePart
AUGMENT_BUILDERS: Builders[Callable[[Any], Built]] = Builders(TRANSFORMS, "augmentation")
"""Transform schema class -> builder; completed by the modules of this package (checked at
import of :mod:`pipeline.data.augment.compose`)."""


# ---- uint8 <-> float ------------------------------------------------------------------------


def to_uint8(x: Tensor) -> Tensor:
    """[0, 1] float -> uint8, rounded."""
    return (x * 255).round_().clamp_(0, 255).to(torch.uint8)


def to_float(x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 -> [0, 1] float."""
    return x.to(dtype, copy=True).div_(255)  # copy: never scale a float input in place
