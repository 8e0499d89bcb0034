"""torchvision's policies (AutoAugment, RandAugment, TrivialAugment): the slow, per-image path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2

from pipeline.data.augment.base import AUGMENT_BUILDERS, Stage, mask, to_float, to_uint8
from pipeline.spec.data import AutoAugment, RandAugment, TrivialAugment


def _policy(make: Callable[[], Any], p: float) -> Stage:
    """torchvision policies: uint8, one image at a time (the slow path), reproducible because the
    global torch RNG they use is seeded from ``generator`` inside ``fork_rng``."""
    policy = make()

    def stage(x: Tensor, g: torch.Generator) -> Tensor:
        active = mask(g, x.shape[0], p)
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


@AUGMENT_BUILDERS.register(AutoAugment)
def _auto_augment(t: AutoAugment) -> Stage:
    return _policy(lambda: v2.AutoAugment(v2.AutoAugmentPolicy(t.policy)), t.p)


@AUGMENT_BUILDERS.register(RandAugment)
def _rand_augment(t: RandAugment) -> Stage:
    return _policy(lambda: v2.RandAugment(num_ops=t.num_ops, magnitude=t.magnitude), t.p)


@AUGMENT_BUILDERS.register(TrivialAugment)
def _trivial_augment(t: TrivialAugment) -> Stage:
    return _policy(v2.TrivialAugmentWide, t.p)
