"""Which parameters train and how: freezing by selector, parameter groups, L1/L2, max-norm."""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.errors import ConfigurationError
from pipeline.model.modules import Composite, inner_layers
from pipeline.spec.layers import WeightedLayer
from pipeline.spec.shapes import named_layers
from pipeline.spec.spec import Spec
from pipeline.spec.train import LayerRange


def layer_table(model: Any) -> OrderedDict[str, nn.Module]:
    """Every name a layer selector may use, in model order: each top-level layer, the layers
    nested in it (``Composite.inner_layers``), and the names ``pipeline summary --expand``
    gives a composite's parts (``<residual>.<layer>``, ``<residual>.shortcut``). A name given
    twice means its first layer, except that a top-level layer's own name always means that
    layer. :func:`pipeline.spec.selectors.selectable` is this table without torch (what the
    layer-selectors check knows)."""
    top = OrderedDict(model.named_children())
    out: OrderedDict[str, nn.Module] = OrderedDict()
    for name, module in top.items():
        out[name] = module
        parts = (
            {id(m): (f"{name}.{kid}", m) for kid, m in module.parts()}
            if isinstance(module, Composite)
            else {}
        )
        for inner, nested in inner_layers(name, module):
            if inner not in top:
                out.setdefault(inner, nested)
            alias = parts.pop(id(nested), None)
            if alias is not None:
                out.setdefault(*alias)
        for alias in parts.values():
            out.setdefault(*alias)
    return out


def select(model: Any, selectors: Sequence[Any]) -> list[nn.Module]:
    """Modules named by selectors: names or globs, top-level indices, ``{from: x}`` (x and
    everything after it in model order) or ``{before: x}``. A selector that names nothing is a
    ConfigurationError (validate's layer-selectors check says so first)."""
    layers = layer_table(model)
    order = list(layers)
    top = [name for name, _ in model.named_children()]
    chosen: dict[int, nn.Module] = {}

    def position(target: str | int) -> int:
        if isinstance(target, int):
            if not -len(top) <= target < len(top):
                raise ConfigurationError(
                    f"layer index {target} is out of range (the model has {len(top)} layers)"
                )
            target = top[target]
        if target not in layers:
            raise ConfigurationError(f"no layer is named {target!r} (layers: {', '.join(order)})")
        return order.index(target)

    for sel in selectors:
        if isinstance(sel, LayerRange):
            if sel.from_ is not None:
                names = order[position(sel.from_) :]
            else:
                names = order[: position(sel.before)]  # type: ignore[arg-type]
        elif isinstance(sel, int):
            names = [order[position(sel)]]
        else:
            names = [n for n in order if fnmatch.fnmatchcase(n, sel)]
            if not names:
                raise ConfigurationError(f"no layer matches {sel!r} (layers: {', '.join(order)})")
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
