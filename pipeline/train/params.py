"""Which parameters train and how: freezing by selector, parameter groups, L1/L2, max-norm."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.spec.layers import WeightedLayer
from pipeline.spec.shapes import named_layers
from pipeline.spec.spec import Spec
from pipeline.spec.train import LayerRange


def select(model: Any, selectors: Sequence[Any]) -> list[nn.Module]:
    """Modules named by selectors: names or globs, top-level indices, ``{from: x}`` (x and
    everything after it in model order) or ``{before: x}``."""
    layers = model.layer_modules()
    order = list(layers)
    top = [name for name, _ in model.named_children()]
    chosen: dict[int, nn.Module] = {}

    def position(target: str | int) -> int:
        name = top[target] if isinstance(target, int) else target
        return order.index(name)

    for sel in selectors:
        if isinstance(sel, LayerRange):
            if sel.from_ is not None:
                names = order[position(sel.from_) :]
            else:
                names = order[: position(sel.before)]  # type: ignore[arg-type]
        elif isinstance(sel, int):
            names = [top[sel]]
        else:
            names = fnmatch.filter(order, sel)
        for name in names:
            chosen[id(layers[name])] = layers[name]
    return list(chosen.values())


def set_trainable(modules: Iterable[nn.Module], trainable: bool) -> None:
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(trainable)


def param_groups(model: Any, optimizer: Any) -> list[dict[str, Any]]:
    """Trainable parameters grouped by the optimizer's ``param_groups`` (first match wins);
    the rest form the default group."""
    taken: set[int] = set()
    groups: list[dict[str, Any]] = []
    for group in optimizer.param_groups:
        params = [
            p
            for m in select(model, group.layers)
            for p in m.parameters()
            if p.requires_grad and id(p) not in taken
        ]
        taken.update(id(p) for p in params)
        if params:
            extra = {
                k: v
                for k, v in (
                    ("lr", group.lr),
                    ("lr_scale", group.lr_scale),
                    ("weight_decay", group.weight_decay),
                )
                if v is not None
            }
            groups.append({"params": params, **extra})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    if rest:
        groups.insert(0, {"params": rest})
    return groups


@dataclass
class Constraint:
    weight: torch.Tensor
    l1: float
    l2: float
    max_norm: float | None


def constraints(model: Any, spec: Spec) -> list[Constraint]:
    """Per-layer penalties and max-norm limits declared in the spec (regularizer, max_norm)."""
    layers = model.layer_modules()
    out = []
    for _, name, layer in named_layers(spec.model.layers):
        if not isinstance(layer, WeightedLayer) or name not in layers:
            continue
        reg, limit = layer.regularizer, layer.max_norm
        if (reg is None or not (reg.l1 or reg.l2)) and limit is None:
            continue
        core = layers[name].core  # the conv/linear inside the built block
        out.append(Constraint(core.weight, reg.l1 if reg else 0.0, reg.l2 if reg else 0.0, limit))
    return out


def penalty(items: list[Constraint]) -> torch.Tensor | None:
    """l1 * sum|w| + l2 * sum w^2 over the declared layers (Keras's convention)."""
    terms = []
    for c in items:
        if c.l1:
            terms.append(c.l1 * c.weight.abs().sum())
        if c.l2:
            terms.append(c.l2 * c.weight.square().sum())
    return torch.stack(terms).sum() if terms else None


@torch.no_grad()
def apply_max_norm(items: list[Constraint]) -> None:
    """Rescale each output unit's incoming weights to norm <= max_norm (conv: per filter,
    over in_channels x kh x kw; dense: per unit, over its inputs)."""
    for c in items:
        if c.max_norm is None:
            continue
        norms = c.weight.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = (c.max_norm / norms).clamp(max=1.0)
        c.weight.mul_(scale.view(-1, *([1] * (c.weight.dim() - 1))))
