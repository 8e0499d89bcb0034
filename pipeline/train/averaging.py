"""Averages of the weights over training: an exponential moving average updated every optimizer
step (``train.ema``), and stochastic weight averaging of epoch-end weights (``train.swa``).

Both are kept beside the trained model, never instead of it: the optimizer goes on from the
model's own weights, and every checkpoint holds the average's state too, so a resumed run
continues bit for bit.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from pipeline.spec.train import EMA, SWA


class WeightEMA:
    """``ema = decay * ema + (1 - decay) * weights`` after each optimizer step, over every
    floating-point parameter and buffer (batch-norm statistics too, as timm's ModelEmaV3);
    integer buffers (batch counts) are copied. A copy of the model holds the average, so
    validation runs it as it is."""

    def __init__(self, model: nn.Module, cfg: EMA) -> None:
        self.decay, self.warmup = cfg.decay, cfg.warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.steps = 0
        self._pair(model)

    def _pair(self, model: nn.Module) -> None:
        """The average's tensors against the model's, matched by name (state_dict tensors share
        the modules' storage, so updating them updates the modules)."""
        mine, theirs = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in mine.items() if v.is_floating_point()]
        self._avg = [mine[k] for k in floats]
        self._src = [theirs[k] for k in floats]
        self._copied = [(mine[k], theirs[k]) for k in mine if k not in set(floats)]

    def rate(self) -> float:
        """The decay of the next update: with warmup, min(decay, (1 + t) / (10 + t))."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.steps) / (10 + self.steps))

    @torch.no_grad()
    def update(self) -> None:
        """One step: no host sync (a fused in-place lerp on the device)."""
        torch._foreach_lerp_(self._avg, self._src, 1.0 - self.rate())
        for mine, theirs in self._copied:
            mine.copy_(theirs)
        self.steps += 1

    def weights(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["weights"])
        self.steps = int(state["steps"])


class WeightSWA:
    """Stochastic weight averaging with PyTorch's own pieces: from epoch ``start_epoch`` (1-based,
    over all phases) on, SWALR anneals each phase's optimizer to ``lr`` and replaces the
    schedule, and each epoch's final weights join an equal-weight :class:`AveragedModel`. A
    phase entered during averaging starts its own annealing from its own rate."""

    def __init__(self, model: nn.Module, cfg: SWA) -> None:
        self.cfg = cfg
        self.average = AveragedModel(model, use_buffers=False)
        self.average.requires_grad_(False)
        self.swalr: SWALR | None = None

    def active(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` is one of the averaged ones (its schedule is SWALR's)."""
        return epoch + 1 >= self.cfg.start_epoch

    def begin(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        """Before an epoch: a new SWALR for an optimizer that has none yet (building one leaves
        the rate as it is; its steps at the epoch ends move it)."""
        if self.active(epoch) and (self.swalr is None or self.swalr.optimizer is not optimizer):
            c = self.cfg
            self.swalr = SWALR(
                optimizer, swa_lr=c.lr, anneal_epochs=c.anneal_epochs,
                anneal_strategy=c.anneal_strategy,
            )  # fmt: skip

    @torch.no_grad()
    def end_epoch(self, model: nn.Module) -> None:
        """After an averaged epoch: its weights into the average (its buffers taken as they
        are), the next epoch's rate."""
        self.average.update_parameters(model)
        for mine, theirs in zip(self.average.module.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)
        assert self.swalr is not None  # begin() made it
        self.swalr.step()

    @property
    def averaged(self) -> int:
        return int(self.average.n_averaged.item())

    def finish(self, loader: Any) -> nn.Module:
        """The average with its batch-norm statistics recomputed over one pass of ``loader``
        (update_bn)."""
        update_bn(loader, self.average)
        return self.average.module.eval()

    def state_dict(self) -> dict[str, Any]:
        return {
            "average": self.average.state_dict(),
            "swalr": self.swalr.state_dict() if self.swalr is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
        """The average, and the annealing of ``optimizer`` (that of the phase resumed in, its
        state already loaded) where it had begun."""
        self.average.load_state_dict(state["average"])
        if state["swalr"] is not None:
            c = self.cfg
            self.swalr = SWALR(
                optimizer, swa_lr=c.lr, anneal_epochs=c.anneal_epochs,
                anneal_strategy=c.anneal_strategy,
            )  # fmt: skip
            self.swalr.load_state_dict(state["swalr"])
