"""The timm backbone table that validation reads without torch (``timm_archs.json``).

Validation never imports torch or timm, yet it must know a ``timm/<name>`` backbone's output
shape, smallest input, block names, sizes and preprocessing. This module measures them from
timm itself on the meta device, and ``pipeline docs`` writes the table when timm's version or
``pipeline.spec.timm_table.TABLE_NAMES`` changed (adding an architecture: a line there, then
``pipeline docs``). Every name of ``timm.list_models()`` is kept too, so that an unknown name
gets a did-you-mean and a name timm has but the table lacks says how to add it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from pipeline.model.timm_backbones import block_names, first_convs
from pipeline.spec.timm_table import TABLE_FILE, TABLE_NAMES, TableError

STEPS = {"halve": lambda h: h // 2, "stride2": lambda h: (h - 1) // 2 + 1}
PROBES = (37, 64, 97, 128, 224, 225)  # odd and even sides tell floor from ceil halving
LARGEST_MIN = 256


def _create(name: str, top: bool) -> nn.Module:
    """In eval mode: a batch norm on a 1x1 map of one image is what training mode refuses."""
    with torch.device("meta"):
        if top:
            return timm.create_model(name, pretrained=False).eval()
        return timm.create_model(name, pretrained=False, num_classes=0, global_pool="").eval()


def _out(net: nn.Module, side: int) -> tuple[int, ...] | None:
    """The output shape for a side x side image; None when the image is too small for it."""
    try:
        with torch.no_grad():
            y = net(torch.empty(1, 3, side, side, device="meta"))
    except (RuntimeError, ValueError, AssertionError):
        return None
    shape = tuple(y.shape[1:])
    return shape if all(d > 0 for d in shape) else None


def _min_side(net: nn.Module) -> int:
    """The smallest square side the network accepts (binary search: larger sides all work)."""
    low, high = 1, LARGEST_MIN
    if _out(net, high) is None:
        raise TableError(f"{net.__class__.__name__} rejects {high}x{high} inputs")
    while low < high:
        mid = (low + high) // 2
        if _out(net, mid) is None:
            low = mid + 1
        else:
            high = mid
    return low


def _rule(name: str, net: nn.Module, smallest: int) -> tuple[str, int]:
    """(step, reductions) reproducing the feature map's side on every probe."""
    sides = {s: _out(net, s) for s in (smallest, smallest + 1, *PROBES) if s >= smallest}
    for step, fn in STEPS.items():
        for reductions in range(1, 7):
            if all(
                out is not None and out[1:] == (_apply(fn, s, reductions),) * 2
                for s, out in sides.items()
            ):
                return step, reductions
    raise TableError(f"timm/{name}: no stride rule gives its output sides {sides}")


def _apply(fn: Any, side: int, times: int) -> int:
    for _ in range(times):
        side = fn(side)
    return side


def _sizes(net: nn.Module) -> tuple[int, int]:
    """(parameters, batch-norm statistics) as the summary counts them."""
    stats = sum(
        2 * m.running_mean.numel()
        for m in net.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    )
    return sum(p.numel() for p in net.parameters()), stats


def _activations_per_pixel(net: nn.Module, side: int = 64) -> float:
    """The leaf modules' output sizes per input pixel (as the footprint counts activations)."""
    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: sizes.append(o.numel()))
        for m in net.modules()
        if not list(m.children())
    ]
    _out(net, side)
    for hook in hooks:
        hook.remove()
    return sum(sizes) / (side * side)


def _first_conv_per_channel(net: nn.Module) -> int:
    """Parameters of the first convolution(s) per input channel: what ``in_chans`` other than
    3 adds or takes away."""
    weights = [net.get_submodule(conv).weight for conv in first_convs(net)]
    return sum(w.numel() // w.shape[1] for w in weights)


def entry(name: str) -> dict[str, Any]:
    """What validation needs to know of ``timm/<name>``, measured on the meta device."""
    features, top = _create(name, top=False), _create(name, top=True)
    cfg = top.pretrained_cfg
    stated_min = (cfg.get("min_input_size") or (3, 1, 1))[1:]
    smallest = max(_min_side(features), *stated_min)
    step, reductions = _rule(name, features, smallest)
    params, buffers = _sizes(features)
    top_params, _ = _sizes(top)
    probe = _out(features, 64) or ()
    return {
        "channels": probe[0],
        "top_features": top.num_classes,
        "reductions": reductions,
        "step": step,
        # below its total stride the last stages would see 1x1 maps of mostly padding, which
        # padded convs accept: refused, as the torchvision table does (ResNet18: 32)
        "min_size": max(smallest, 2**reductions),
        "blocks": [n for n, _ in features.named_children()],
        "top_blocks": [n for n, _ in top.named_children()],
        "stages": [n for n in block_names(features) if "." in n],
        "input_size": list(cfg["input_size"]),
        "mean": [round(v, 6) for v in cfg["mean"]],
        "std": [round(v, 6) for v in cfg["std"]],
        "params": params,
        "top_params": top_params,
        "first_conv_per_channel": _first_conv_per_channel(features),
        "buffers": buffers,
        "activations_per_pixel": _activations_per_pixel(features),
    }


def table() -> dict[str, Any]:
    return {
        "timm_version": timm.__version__,
        "archs": {name: entry(name) for name in TABLE_NAMES},
        "names": sorted(timm.list_models()),
    }


def write_table(root: Path) -> str:
    path = root / TABLE_FILE
    path.write_text(json.dumps(table(), indent=1) + "\n")
    return TABLE_FILE
