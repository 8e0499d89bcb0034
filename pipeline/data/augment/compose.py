"""The section's transforms as one :class:`Augment`: geometric neighbours merged into one warp."""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.data.augment import color, crop, policies  # noqa: F401 - they register builders
from pipeline.data.augment.base import AUGMENT_BUILDERS, AffinePart, Stage
from pipeline.data.augment.geometry import affine_stage
from pipeline.spec.data import AugmentSection


class Augment:
    """The section's transforms as batched stages, applied in order."""

    def __init__(self, stages: list[Stage], names: list[str]):
        self.stages, self.names = stages, names

    def __call__(self, batch: Tensor, generator: torch.Generator) -> Tensor:
        """Augment a float (B, C, H, W) batch in [0, 1]; shape, dtype and device are kept."""
        if batch.dim() != 4 or not batch.is_floating_point():
            raise ValueError(
                f"expected a float (B, C, H, W) batch, got {batch.dtype} {tuple(batch.shape)}"
            )
        for stage in self.stages:
            batch = stage(batch, generator)
        return batch

    def __repr__(self) -> str:
        return f"Augment({' -> '.join(self.names)})"


def build_augment(section: AugmentSection | None) -> Augment | None:
    """The section's transforms as an :class:`Augment`; None when there is nothing to do."""
    if section is None or not section.transforms:
        return None
    stages: list[Stage] = []
    names: list[str] = []
    group: list[AffinePart] = []
    group_names: list[str] = []

    def close_group() -> None:
        if all(part.warp is None for part in group):  # flips only: no warp, no interpolation
            stages.extend(part.exact for part in group if part.exact)
            names.extend(group_names)
        else:
            stages.append(affine_stage(list(group)))
            names.append("affine[" + "+".join(group_names) + "]")
        group.clear()
        group_names.clear()

    for t in section.transforms:
        built = AUGMENT_BUILDERS[t](t)
        if isinstance(built, AffinePart):
            warps = {part.warp for part in group} - {None}
            if built.warp and warps and built.warp not in warps:
                close_group()  # one grid_sample has one padding mode and interpolation
            group.append(built)
            group_names.append(t.type)
        else:
            close_group()
            stages.append(built)
            names.append(t.type)
    close_group()
    return Augment(stages, names)


# Every transform kind of the schema has a builder by now (geometry, color, crop, policies):
# a kind added to the schema without one fails here, at import, naming it.
AUGMENT_BUILDERS.check_complete()
