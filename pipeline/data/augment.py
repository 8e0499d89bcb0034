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

Geometry follows Keras's ImageDataGenerator: matrices map output pixels to input pixels about the
image centre (x right, y down) and compose in list order, so ``rotation, shift, shear, zoom``
gives Keras's ``R @ T @ S @ Z``. Rotation is counter-clockwise for a positive angle; zoom draws
x and y factors independently (as Keras does) and a factor above 1 zooms out; shear is Keras's
``[[1, -sin s], [0, cos s]]`` on (row, col); interpolation is bilinear.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from pipeline.registry import Registry
from pipeline.spec.data import (
    AugmentSection,
    ColorJitter,
    HorizontalFlip,
    RandomCrop,
    RandomErasing,
    Rotation,
    Shear,
    Shift,
    VerticalFlip,
    Zoom,
)

Stage = Callable[[Tensor, torch.Generator], Tensor]
"""One batched step: (batch, generator) -> batch."""

GRID_PADDING = {"constant": "zeros", "nearest": "border", "reflect": "reflection"}
PAD_MODE = {"constant": "constant", "nearest": "replicate", "reflect": "reflect"}


# ---- random draws (on the generator's device; moved to the batch's device by the caller) -----


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    return torch.rand(n, generator=g, device=g.device) * (hi - lo) + lo


def _mask(g: torch.Generator, n: int, p: float) -> Tensor:
    """Which samples get a transform of probability ``p``."""
    return torch.rand(n, generator=g, device=g.device) < p


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


@dataclass(frozen=True)
class Warp:
    """How one ``grid_sample`` resamples: consecutive transforms that agree share one."""

    fill: str = "nearest"
    fill_value: float = 0.0
    interpolation: str = "bilinear"


def apply_affine(x: Tensor, m: Tensor, warp: Warp = Warp()) -> Tensor:
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


# ---- the registry: transform type -> builder --------------------------------------------------


@dataclass(frozen=True)
class AffinePart:
    """A geometric transform: per-sample matrices, merged with its neighbours into one warp."""

    p: float
    warp: Warp | None  # None: moves no content off the image (a flip), so any warp will do
    draw: Callable[[torch.Generator, int, int, int], Tensor]  # (g, n, h, w) -> (n, 3, 3)
    exact: Stage | None = None  # how to run it outside a warp, without interpolation

    def sample(self, g: torch.Generator, n: int, h: int, w: int) -> tuple[Tensor, Tensor]:
        m, active = self.draw(g, n, h, w), _mask(g, n, self.p)
        eye = torch.eye(3, device=m.device, dtype=m.dtype).expand_as(m)
        return torch.where(active[:, None, None], m, eye), active


Built = Stage | AffinePart
BUILDERS: Registry[Callable[[Any], Built]] = Registry("augmentation")


register = BUILDERS.register


def _draw_rotation(t: Rotation, g: torch.Generator, n: int, h: int, w: int) -> Tensor:
    return rotation_matrix(_uniform(g, n, -t.degrees, t.degrees))


def _draw_shift(t: Shift, g: torch.Generator, n: int, h: int, w: int) -> Tensor:
    return shift_matrix(
        _uniform(g, n, -t.width, t.width) * w, _uniform(g, n, -t.height, t.height) * h
    )


def _draw_shear(t: Shear, g: torch.Generator, n: int, h: int, w: int) -> Tensor:
    return shear_matrix(_uniform(g, n, -t.degrees, t.degrees))


def _draw_zoom(t: Zoom, g: torch.Generator, n: int, h: int, w: int) -> Tensor:
    # x and y factors drawn independently, as Keras's ImageDataGenerator does
    return zoom_matrix(*(_uniform(g, n, *t.bounds) for _ in "xy"))


def _geometric(draw: Callable[..., Tensor]) -> Callable[[Any], AffinePart]:
    return lambda t: AffinePart(t.p, Warp(t.fill, t.fill_value, t.interpolation), partial(draw, t))


GEOMETRIC = {
    "rotation": _draw_rotation,
    "shift": _draw_shift,
    "shear": _draw_shear,
    "zoom": _draw_zoom,
}
for _name, _draw in GEOMETRIC.items():
    register(_name)(_geometric(_draw))


def _affine_stage(parts: list[AffinePart]) -> Stage:
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


def _flip(dim: int, p: float) -> Stage:
    def stage(x: Tensor, g: torch.Generator) -> Tensor:
        active = _mask(g, x.shape[0], p).to(x.device)
        return torch.where(active[:, None, None, None], x.flip(dim), x)

    return stage


def _flip_part(dim: int, p: float) -> AffinePart:
    """A flip joins a neighbouring warp as x -> -x (exact at pixel centres); alone it is exact."""

    def draw(g: torch.Generator, n: int, h: int, w: int) -> Tensor:
        one = torch.ones(n, device=g.device)
        return zoom_matrix(-one, one) if dim == -1 else zoom_matrix(one, -one)

    return AffinePart(p, None, draw, _flip(dim, p))


@register("horizontal_flip")
def _hflip(t: HorizontalFlip) -> AffinePart:
    return _flip_part(-1, t.p)


@register("vertical_flip")
def _vflip(t: VerticalFlip) -> AffinePart:
    return _flip_part(-2, t.p)


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
    f = _uniform(g, n, max(0.0, 1 - amount), 1 + amount)
    return f.to(like.device, like.dtype)[:, None, None, None]


@register("color_jitter")
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
            m = _hue_matrix(_uniform(g, n, -t.hue, t.hue)).to(x.device, x.dtype)
            out = torch.einsum("bij,bjhw->bihw", m, out).clamp(0, 1)
        active = _mask(g, n, t.p).to(x.device)
        return torch.where(active[:, None, None, None], out, x)

    return stage


@register("random_crop")
def _random_crop(t: RandomCrop) -> Stage:
    """Pad once, then take every sample's window with two batched gathers (rows, then columns).

    fill: constant pads zeros, nearest repeats the edge, reflect is ``F.pad``'s reflect, which
    mirrors about the edge pixel (d c b | a b c d), unlike the warp's edge-inclusive reflection.
    """
    pad = t.padding

    def stage(x: Tensor, g: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=g, device=g.device)
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=g, device=g.device)
        keep = ~_mask(g, n, t.p)
        ox, oy = ox.masked_fill(keep, pad).to(x.device), oy.masked_fill(keep, pad).to(x.device)
        padded = F.pad(x, (pad, pad, pad, pad), mode=PAD_MODE[t.fill])
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        rows = rows.expand(n, c, h, w + 2 * pad)
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        return padded.gather(2, rows).gather(3, cols.expand(n, c, h, w))

    return stage


@register("random_erasing")
def _random_erasing(t: RandomErasing) -> Stage:
    """torchvision's recipe (10 tries for a rectangle that fits, else no erasing), all samples and
    tries at once; the rectangle is a batched coordinate mask."""
    tries = 10

    def stage(x: Tensor, g: torch.Generator) -> Tensor:
        n, _, h, w = x.shape
        area = _uniform(g, n * tries, *t.scale).view(n, tries) * (h * w)
        log_r = _uniform(g, n * tries, math.log(t.ratio[0]), math.log(t.ratio[1])).view(n, tries)
        eh = torch.sqrt(area * log_r.exp()).round().long()
        ew = torch.sqrt(area / log_r.exp()).round().long()
        fits = (eh < h) & (ew < w)
        first = fits.int().argmax(1, keepdim=True)  # the first try that fits, as torchvision
        eh, ew = eh.gather(1, first)[:, 0], ew.gather(1, first)[:, 0]
        top = (_uniform(g, n, 0, 1) * (h - eh + 1)).floor().long()
        left = (_uniform(g, n, 0, 1) * (w - ew + 1)).floor().long()
        active = _mask(g, n, t.p) & fits.any(1)
        top, left, eh, ew, active = (v.to(x.device) for v in (top, left, eh, ew, active))
        r = torch.arange(h, device=x.device)[None, :, None]
        col = torch.arange(w, device=x.device)[None, None, :]
        box = (r >= top[:, None, None]) & (r < (top + eh)[:, None, None])
        box = box & (col >= left[:, None, None]) & (col < (left + ew)[:, None, None])
        box = box & active[:, None, None]
        return x.masked_fill(box[:, None], t.value)

    return stage


def _policy(make: Callable[[], Any], p: float) -> Stage:
    """torchvision policies: uint8, one image at a time (the slow path), reproducible because the
    global torch RNG they use is seeded from ``generator`` inside ``fork_rng``."""
    policy = make()

    def stage(x: Tensor, g: torch.Generator) -> Tensor:
        active = _mask(g, x.shape[0], p)
        seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item())
        idx = active.nonzero()[:, 0].tolist()
        if not idx:
            return x
        out = x.clone()
        u8 = to_uint8(x[idx])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            done = torch.stack([policy(img) for img in u8])
        out[idx] = to_float(done, x.dtype)
        return out

    return stage


@register("auto_augment")
def _auto_augment(t: Any) -> Stage:
    return _policy(lambda: v2.AutoAugment(v2.AutoAugmentPolicy(t.policy)), t.p)


@register("rand_augment")
def _rand_augment(t: Any) -> Stage:
    return _policy(lambda: v2.RandAugment(num_ops=t.num_ops, magnitude=t.magnitude), t.p)


@register("trivial_augment")
def _trivial_augment(t: Any) -> Stage:
    return _policy(v2.TrivialAugmentWide, t.p)


# ---- the pipeline -------------------------------------------------------------------------


def to_uint8(x: Tensor) -> Tensor:
    """[0, 1] float -> uint8, rounded."""
    return (x * 255).round_().clamp_(0, 255).to(torch.uint8)


def to_float(x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 -> [0, 1] float."""
    return x.to(dtype, copy=True).div_(255)  # copy: never scale a float input in place


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
            stages.append(_affine_stage(list(group)))
            names.append("affine[" + "+".join(group_names) + "]")
        group.clear()
        group_names.clear()

    for t in section.transforms:
        if t.type not in BUILDERS:
            raise NotImplementedError(
                f"augmentation '{t.type}' has no implementation; known: {sorted(BUILDERS)}"
            )
        built = BUILDERS[t.type](t)
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
