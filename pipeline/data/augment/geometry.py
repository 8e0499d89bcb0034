"""Geometric transforms: per-sample affine matrices, one grid + one ``grid_sample`` per warp.

Geometry follows Keras's ImageDataGenerator: matrices map output pixels to input pixels about the
image centre (x right, y down) and compose in list order, so ``rotation, shift, shear, zoom``
gives Keras's ``R @ T @ S @ Z``. Rotation is counter-clockwise for a positive angle; zoom draws
x and y factors independently (as Keras does) and a factor above 1 zooms out; shear is Keras's
``[[1, -sin s], [0, cos s]]`` on (row, col); interpolation is bilinear. A flip next to a warp
joins it as x -> -x; a flip on its own is an exact ``torch.where``.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.data.augment.base import AUGMENT_BUILDERS, AffinePart, Stage, Warp, mask, uniform
from pipeline.spec.data import Geometric, HorizontalFlip, Rotation, Shear, Shift, VerticalFlip, Zoom

GRID_PADDING = {"constant": "zeros", "nearest": "border", "reflect": "reflection"}
DEFAULT_WARP = Warp()  # nearest fill, bilinear


# ---- affine matrices: (B, 3, 3), output pixel -> input pixel, about the centre ----------------


def _matrix(a: Tensor, b: Tensor, c: Tensor, d: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([a, b, tx, c, d, ty, zero, zero, one], -1).view(-1, 3, 3)


def rotation_matrix(degrees: Tensor) -> Tensor:
    """Counter-clockwise rotation of the content by ``degrees`` (per sample)."""
    t = torch.deg2rad(degrees)
    c, s, z = torch.cos(t), torch.sin(t), torch.zeros_like(t)
    return _matrix(c, -s, s, c, z, z)


def shift_matrix(dx: Tensor, dy: Tensor) -> Tensor:
    """Move the content ``dx`` pixels right and ``dy`` pixels down."""
    one, z = torch.ones_like(dx), torch.zeros_like(dx)
    return _matrix(one, z, z, one, -dx, -dy)


def shear_matrix(degrees: Tensor) -> Tensor:
    """Keras's shear: ``[[1, -sin s], [0, cos s]]`` on (row, col), written here for (x, y)."""
    t = torch.deg2rad(degrees)
    one, z = torch.ones_like(t), torch.zeros_like(t)
    return _matrix(torch.cos(t), z, -torch.sin(t), one, z, z)


def zoom_matrix(zx: Tensor, zy: Tensor) -> Tensor:
    """Keras's zoom: output pixel (x, y) reads input (zx x, zy y), so a factor > 1 zooms out."""
    z = torch.zeros_like(zx)
    return _matrix(zx, z, z, zy, z, z)


def to_theta(m: Tensor, height: int, width: int) -> Tensor:
    """Pixel-space (B, 3, 3) matrices -> ``affine_grid``'s normalised (B, 2, 3) thetas.

    With align_corners=False a centred pixel coordinate is ``normalised * size / 2``, so theta is
    ``D^-1 M D`` with ``D = diag(W/2, H/2, 1)``.
    """
    d = m.new_tensor([width / 2, height / 2, 1.0])
    # (D^-1 M D)_ij = M_ij * d_j / d_i
    return (m * d[None, None, :] / d[None, :, None])[:, :2]


# ---- resampling ----------------------------------------------------------------------------


def apply_affine(x: Tensor, m: Tensor, warp: Warp = DEFAULT_WARP) -> Tensor:
    """Warp a batch with per-sample pixel-space matrices: one grid, one ``grid_sample``."""
    _, _, h, w = x.shape
    # The grid is built in at least float32: half-precision coordinates would blur by ~0.1 px.
    theta = to_theta(m.to(x.device, torch.promote_types(x.dtype, torch.float32)), h, w)
    grid = affine_grid(theta, h, w).to(x.dtype)
    shifted = warp.fill == "constant" and warp.fill_value != 0
    out = F.grid_sample(
        x - warp.fill_value if shifted else x,
        grid,
        mode=warp.interpolation,
        padding_mode=GRID_PADDING[warp.fill],
        align_corners=False,
    )
    return out.add_(warp.fill_value) if shifted else out


def affine_grid(theta: Tensor, height: int, width: int) -> Tensor:
    """``F.affine_grid(theta, size, align_corners=False)`` by broadcasting.

    Equal to it within float rounding, and several times faster on CPU, where affine_grid's
    batched matmul over a (B, H*W, 3) base grid costs more than the grid_sample itself.
    """
    xs = (torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1
    t = theta[:, None, None, :, :]  # (B, 1, 1, 2, 3): built straight into the (B, H, W, 2) layout
    per_column = t[..., 0] * xs[:, None]  # (B, 1, W, 2)
    per_row = t[..., 1] * ys[:, None, None] + t[..., 2]  # (B, H, 1, 2)
    return per_row + per_column  # (B, H, W, 2), contiguous


def affine_stage(parts: list[AffinePart]) -> Stage:
    """Consecutive geometric transforms with one warp: one composed matrix, one grid_sample."""
    warp = next(part.warp for part in parts if part.warp)
    always = max(part.p for part in parts) >= 1  # then every sample is warped

    def stage(x: Tensor, g: torch.Generator) -> Tensor:
        n, _, h, w = x.shape
        m = torch.eye(3, device=g.device).expand(n, 3, 3)
        any_active = torch.zeros(n, dtype=torch.bool, device=g.device)
        for part in parts:  # loops over transforms, never over samples
            mi, active = part.sample(g, n, h, w)
            m, any_active = m @ mi, any_active | active
        out = apply_affine(x, m, warp)
        if always:
            return out
        # Untouched samples stay bit-exact (an identity warp is only equal to ~1e-7).
        return torch.where(any_active.to(x.device)[:, None, None, None], out, x)

    return stage


# ---- builders ------------------------------------------------------------------------------


def _warped(t: Geometric, draw: partial[Tensor]) -> AffinePart:
    return AffinePart(t.p, Warp(t.fill, t.fill_value, t.interpolation), draw)


def _draw_rotation(t: Rotation, g: torch.Generator, n: int, h: int, w: int) -> Tensor:
    return rotation_matrix(uniform(g, n, -t.degrees, t.degrees))


def _draw_shift(t: Shift, g: torch.Generator, n: int, h: int, w: int) -> Tensor:
    return shift_matrix(
        uniform(g, n, -t.width, t.width) * w, uniform(g, n, -t.height, t.height) * h
    )


def _draw_shear(t: Shear, g: torch.Generator, n: int, h: int, w: int) -> Tensor:
    return shear_matrix(uniform(g, n, -t.degrees, t.degrees))


def _draw_zoom(t: Zoom, g: torch.Generator, n: int, h: int, w: int) -> Tensor:
    # x and y factors drawn independently, as Keras's ImageDataGenerator does
    return zoom_matrix(*(uniform(g, n, *t.bounds) for _ in "xy"))


@AUGMENT_BUILDERS.register(Rotation)
def _rotation(t: Rotation) -> AffinePart:
    return _warped(t, partial(_draw_rotation, t))


@AUGMENT_BUILDERS.register(Shift)
def _shift(t: Shift) -> AffinePart:
    return _warped(t, partial(_draw_shift, t))


@AUGMENT_BUILDERS.register(Shear)
def _shear(t: Shear) -> AffinePart:
    return _warped(t, partial(_draw_shear, t))


@AUGMENT_BUILDERS.register(Zoom)
def _zoom(t: Zoom) -> AffinePart:
    return _warped(t, partial(_draw_zoom, t))


def _flip(dim: int, p: float) -> Stage:
    def stage(x: Tensor, g: torch.Generator) -> Tensor:
        active = mask(g, x.shape[0], p).to(x.device)
        return torch.where(active[:, None, None, None], x.flip(dim), x)

    return stage


def _flip_part(dim: int, p: float) -> AffinePart:
    """A flip joins a neighbouring warp as x -> -x (exact at pixel centres); alone it is exact."""

    def draw(g: torch.Generator, n: int, h: int, w: int) -> Tensor:
        one = torch.ones(n, device=g.device)
        return zoom_matrix(-one, one) if dim == -1 else zoom_matrix(one, -one)

    return AffinePart(p, None, draw, _flip(dim, p))


@AUGMENT_BUILDERS.register(HorizontalFlip)
def _hflip(t: HorizontalFlip) -> AffinePart:
    return _flip_part(-1, t.p)


@AUGMENT_BUILDERS.register(VerticalFlip)
def _vflip(t: VerticalFlip) -> AffinePart:
    return _flip_part(-2, t.p)
