"""The balanced sampler (``train.sampler: balanced``): an epoch of as many samples as the split
has, drawn with replacement so that each class is equally likely, the semantics of PyTorch's
``WeightedRandomSampler(1 / count[y], len(y), replacement=True)``; the loader draws it from its
per-epoch generator, so an epoch's draw depends only on (seed, epoch) and a resumed run
replays it."""

from __future__ import annotations

import torch


def balanced_sample_weights(y: torch.Tensor) -> torch.Tensor:
    """1 / (samples of its class) for each sample (float64): every class sums to 1."""
    y = y.cpu()
    counts = torch.bincount(y).to(torch.float64)
    return 1.0 / counts[y]


def balanced_order(weights: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` sample indices drawn with replacement in proportion to ``weights``."""
    return torch.multinomial(weights, n, replacement=True, generator=generator)
