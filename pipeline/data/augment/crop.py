"""Random crop and random erasing: per-sample windows and boxes as batched gathers and masks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.data.augment.base import AUGMENT_BUILDERS, Stage, mask, uniform
from pipeline.spec.data import RandomCrop, RandomErasing

PAD_MODE = {"constant": "constant", "nearest": "replicate", "reflect": "reflect"}


@AUGMENT_BUILDERS.register(RandomCrop)
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
        keep = ~mask(g, n, t.p)
        ox, oy = ox.masked_fill(keep, pad).to(x.device), oy.masked_fill(keep, pad).to(x.device)
        padded = F.pad(x, (pad, pad, pad, pad), mode=PAD_MODE[t.fill])
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        rows = rows.expand(n, c, h, w + 2 * pad)
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        return padded.gather(2, rows).gather(3, cols.expand(n, c, h, w))

    return stage


@AUGMENT_BUILDERS.register(RandomErasing)
def _random_erasing(t: RandomErasing) -> Stage:
    """torchvision's recipe (10 tries for a rectangle that fits, else no erasing), all samples and
    tries at once; the rectangle is a batched coordinate mask."""
    tries = 10

    def stage(x: Tensor, g: torch.Generator) -> Tensor:
        n, _, h, w = x.shape
        area = uniform(g, n * tries, *t.scale).view(n, tries) * (h * w)
        log_r = uniform(g, n * tries, math.log(t.ratio[0]), math.log(t.ratio[1])).view(n, tries)
        eh = torch.sqrt(area * log_r.exp()).round().long()
        ew = torch.sqrt(area / log_r.exp()).round().long()
        fits = (eh < h) & (ew < w)
        first = fits.int().argmax(1, keepdim=True)  # the first try that fits, as torchvision
        eh, ew = eh.gather(1, first)[:, 0], ew.gather(1, first)[:, 0]
        top = (uniform(g, n, 0, 1) * (h - eh + 1)).floor().long()
        left = (uniform(g, n, 0, 1) * (w - ew + 1)).floor().long()
        active = mask(g, n, t.p) & fits.any(1)
        top, left, eh, ew, active = (v.to(x.device) for v in (top, left, eh, ew, active))
        r = torch.arange(h, device=x.device)[None, :, None]
        col = torch.arange(w, device=x.device)[None, None, :]
        box = (r >= top[:, None, None]) & (r < (top + eh)[:, None, None])
        box = box & (col >= left[:, None, None]) & (col < (left + ew)[:, None, None])
        box = box & active[:, None, None]
        return x.masked_fill(box[:, None], t.value)

    return stage
