"""A preview grid of augmented images, to see what a spec's ``augment`` section does."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image

from pipeline.data.augment import Augment, to_float

PADDING = 2  # pixels between grid cells (make_grid's default)


def preview_grid(
    images_uint8: Tensor,
    augment: Augment,
    out_path: str | Path,
    n: int = 8,
    seed: int = 0,
    rows: int = 4,
) -> Path:
    """Write a PNG: the first ``n`` images in the top row, ``rows`` augmented versions below.

    Column j always shows image j, so a column reads as one image's variations. The image is
    ``n * (W + 2) + 2`` pixels wide and ``(rows + 1) * (H + 2) + 2`` high.
    """
    if images_uint8.dim() != 4 or images_uint8.dtype != torch.uint8:
        raise ValueError(f"expected uint8 (N, C, H, W) images, got {images_uint8.dtype}")
    originals = to_float(images_uint8[:n])
    g = torch.Generator(device=originals.device).manual_seed(seed)
    tiles = [originals] + [augment(originals, g) for _ in range(rows)]
    grid = make_grid(torch.cat(tiles).cpu(), nrow=len(originals), padding=PADDING)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, out, format="png")
    return out
