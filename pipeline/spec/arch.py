"""What validation knows of a backbone architecture without importing torch: its output shape,
smallest input and block names (torchvision's in ``composite.ARCHS``, timm's in
``timm_table.TIMM_ARCHS``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

from pipeline.spec.base import StrictModel


def _halve(h: int) -> int:
    return h // 2


def _stride2(h: int) -> int:
    # a 3x3 (or 7x7 padded 3) stride-2 conv/pool with padding: floor((h - 1) / 2) + 1
    return (h - 1) // 2 + 1


class Arch(StrictModel):
    """A torchvision architecture."""

    source: ClassVar[str] = "torchvision"
    """Which library builds it (the key of the model side's backbone builders)."""

    channels: int
    top_features: int = 1000
    reductions: int
    step: Literal["halve", "stride2"]
    min_size: int
    blocks: list[str]
    """Names of the backbone's layers, in order, as freeze/unfreeze may name them."""
    top: list[str] = ["avgpool", "flatten", "classifier"]
    """The ImageNet head's names, after the blocks with include_top."""

    def out_hw(self, h: int) -> int:
        fn: Callable[[int], int] = _halve if self.step == "halve" else _stride2
        for _ in range(self.reductions):
            h = fn(h)
        return h

    def children(self, include_top: bool) -> list[str]:
        """Its selectable blocks in model order: the built backbone's children (and timm's
        stages)."""
        return self.blocks + (self.top if include_top else [])
