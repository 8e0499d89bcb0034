"""Optimizers from the spec's ``optimizer`` section: one builder per optimizer kind, over
torch.optim (adding one: its schema class in ``pipeline.spec.optim`` and its builder here)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from pipeline.registry import Builders
from pipeline.spec import optim as spec_optim
from pipeline.spec.base import OPTIMIZERS

Groups = list[dict[str, Any]]
OptimizerBuilder = Callable[[Groups, Any], torch.optim.Optimizer]
OPTIMIZER_BUILDERS: Builders[OptimizerBuilder] = Builders(OPTIMIZERS, "optimizer")
"""Optimizer schema class -> ``(param groups, spec section) -> torch optimizer``."""


def _common(o: spec_optim.OptimizerBase) -> dict[str, Any]:
    return {"lr": o.lr, "weight_decay": o.weight_decay}


@OPTIMIZER_BUILDERS.register(spec_optim.SGD)
def _sgd(groups: Groups, o: spec_optim.SGD) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, momentum=o.momentum, nesterov=o.nesterov, **_common(o))


@OPTIMIZER_BUILDERS.register(spec_optim.Adagrad)
def _adagrad(groups: Groups, o: spec_optim.Adagrad) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(
        groups, initial_accumulator_value=o.initial_accumulator, eps=o.eps, **_common(o)
    )


@OPTIMIZER_BUILDERS.register(spec_optim.RMSprop)
def _rmsprop(groups: Groups, o: spec_optim.RMSprop) -> torch.optim.Optimizer:
    # Keras's rho is PyTorch's alpha.
    return torch.optim.RMSprop(
        groups, alpha=o.rho, eps=o.eps, momentum=o.momentum, centered=o.centered, **_common(o)
    )


@OPTIMIZER_BUILDERS.register(spec_optim.Adam)
def _adam(groups: Groups, o: spec_optim.Adam) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, betas=o.betas, eps=o.eps, amsgrad=o.amsgrad, **_common(o))


@OPTIMIZER_BUILDERS.register(spec_optim.AdamW)
def _adamw(groups: Groups, o: spec_optim.AdamW) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, betas=o.betas, eps=o.eps, amsgrad=o.amsgrad, **_common(o))


@OPTIMIZER_BUILDERS.register(spec_optim.Adamax)
def _adamax(groups: Groups, o: spec_optim.Adamax) -> torch.optim.Optimizer:
    return torch.optim.Adamax(groups, betas=o.betas, eps=o.eps, **_common(o))


@OPTIMIZER_BUILDERS.register(spec_optim.NAdam)
def _nadam(groups: Groups, o: spec_optim.NAdam) -> torch.optim.Optimizer:
    return torch.optim.NAdam(groups, betas=o.betas, eps=o.eps, **_common(o))


@OPTIMIZER_BUILDERS.register(spec_optim.RAdam)
def _radam(groups: Groups, o: spec_optim.RAdam) -> torch.optim.Optimizer:
    return torch.optim.RAdam(groups, betas=o.betas, eps=o.eps, **_common(o))


OPTIMIZER_BUILDERS.check_complete()


def build_optimizer(
    o: spec_optim.OptimizerBase, groups: Groups | Iterable[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """The torch optimizer for a spec's optimizer section; ``groups`` may carry per-group
    ``lr`` / ``lr_scale`` / ``weight_decay`` (discriminative learning rates)."""
    groups = list(groups)
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    resolved = []
    for g in groups:
        g = dict(g)
        scale = g.pop("lr_scale", None)
        if scale is not None:
            g["lr"] = o.lr * scale
        resolved.append(g)
    return OPTIMIZER_BUILDERS[o](resolved, o)


def clip_gradients(o: spec_optim.OptimizerBase, params: Iterable[torch.nn.Parameter]) -> None:
    """Keras's clipvalue then clipnorm, as the spec asks (no-op when neither is set)."""
    if o.clip_value is None and o.clip_norm is None:
        return
    params = [p for p in params if p.grad is not None]
    if o.clip_value is not None:
        torch.nn.utils.clip_grad_value_(params, o.clip_value)
    if o.clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, o.clip_norm)
