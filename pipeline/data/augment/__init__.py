"""Batched, per-sample data augmentation on any device (the spec's ``augment`` section).

Public API::

    augment = build_augment(spec.augment)          # None when there are no transforms
    out = augment(batch, generator)                # float (B, C, H, W) in [0, 1], CPU or CUDA
    stored = offline_augment(x_uint8, spec.augment, seed)   # originals, then `factor` copies

Every random parameter is drawn per sample from ``generator`` (torchvision's v2 transforms draw
one set per call, so a batched call would transform the whole batch alike). Consecutive
geometric transforms (rotation, shift, shear, zoom, and flips next to them) with the same
``fill`` are composed into one 2x3 matrix per sample and applied with one affine grid + one
``grid_sample``, no per-sample loop; a flip on its own is an exact ``torch.where``; colour
jitter, random crop and random erasing are batched tensor ops. The policies (AutoAugment,
RandAugment, TrivialAugment) are torchvision's uint8 per-image code in a Python loop: the slow
path, seeded from ``generator`` so it is reproducible.

Modules: :mod:`.base` (what a builder returns, the ``AUGMENT_BUILDERS`` table, random draws),
:mod:`.geometry` (matrices, grids, the geometric transforms and flips), :mod:`.color`,
:mod:`.crop` (random crop and erasing), :mod:`.policies` (torchvision's), :mod:`.compose`
(``Augment``, ``build_augment``; checks every schema kind has a builder) and :mod:`.offline`.
Adding a transform: its schema class in ``pipeline/spec/data.py``, and a builder registered
with ``@AUGMENT_BUILDERS.register(ThatClass)`` in the module of its family.
"""

from __future__ import annotations

from pipeline.data.augment.base import (
    AUGMENT_BUILDERS,
    AffinePart,
    Stage,
    Warp,
    to_float,
    to_uint8,
)
from pipeline.data.augment.compose import Augment, build_augment
from pipeline.data.augment.geometry import (
    affine_grid,
    apply_affine,
    rotation_matrix,
    shear_matrix,
    shift_matrix,
    to_theta,
    zoom_matrix,
)
from pipeline.data.augment.offline import offline_augment, offline_index

__all__ = [
    "AUGMENT_BUILDERS",
    "AffinePart",
    "Augment",
    "Stage",
    "Warp",
    "affine_grid",
    "apply_affine",
    "build_augment",
    "offline_augment",
    "offline_index",
    "rotation_matrix",
    "shear_matrix",
    "shift_matrix",
    "to_float",
    "to_theta",
    "to_uint8",
    "zoom_matrix",
]
