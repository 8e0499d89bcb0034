"""The backbone builders: one per source library (``BACKBONE_BUILDERS``, keyed by the arch's
``source``); here torchvision's, its architectures renamed to the spec's block names (timm's is
in ``pipeline.model.timm_backbones``).

Every backbone becomes an ``nn.Sequential`` whose children are ``ARCHS[arch].blocks`` (VGG:
``block1_conv1 ... block5_pool``, each conv with its ReLU; ResNet: ``conv1 ... layer4``;
MobileNetV2: ``features_0 ... features_18``), followed with ``include_top`` by the classifier
(``avgpool``, ``flatten``, ``classifier``/``fc``), so ``freeze: [block5_conv1]`` finds the conv.
Weight files may use torchvision's own keys (``features.0.weight``) or the renamed ones.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn

from pipeline.model.errors import ModelBuildError
from pipeline.model.modules import BackboneNet
from pipeline.model.registry import LAYER_BUILDERS, BuildContext, LayerContext
from pipeline.model.weights import load_into, read_state_dict
from pipeline.spec.composite import ARCHS, BACKBONE_ARCHS, Backbone, WeightsFile

Named = list[tuple[str, nn.Module]]
# torchvision module prefix -> ours (None: a part that is not kept)
PrefixMap = dict[str, str | None]


def _vgg_body(tv: Any, names: list[str]) -> tuple[Named, PrefixMap]:
    groups: list[tuple[str, list[nn.Module]]] = []
    for idx, module in tv.features.named_children():
        if isinstance(module, nn.ReLU):  # fold each ReLU into the conv before it
            groups[-1][1].append(module)
        else:
            groups.append((f"features.{idx}", [module]))
    if len(groups) != len(names):
        raise ModelBuildError(f"torchvision's VGG has {len(groups)} blocks, expected {len(names)}")
    body: Named = []
    prefixes: PrefixMap = {}
    for name, (source, modules) in zip(names, groups, strict=True):
        body.append((name, nn.Sequential(*modules) if len(modules) > 1 else modules[0]))
        prefixes[source] = f"{name}.0" if len(modules) > 1 else name
    return body, prefixes


def _vgg_top(tv: Any) -> Named:
    return [("avgpool", tv.avgpool), ("flatten", nn.Flatten()), ("classifier", tv.classifier)]


def _resnet_body(tv: Any, names: list[str]) -> tuple[Named, PrefixMap]:
    return [(name, getattr(tv, name)) for name in names], {name: name for name in names}


def _resnet_top(tv: Any) -> Named:
    return [("avgpool", tv.avgpool), ("flatten", nn.Flatten()), ("fc", tv.fc)]


def _mobilenet_body(tv: Any, names: list[str]) -> tuple[Named, PrefixMap]:
    body = [(name, tv.features[i]) for i, name in enumerate(names)]
    return body, {f"features.{i}": name for i, name in enumerate(names)}


def _mobilenet_top(tv: Any) -> Named:
    # torchvision's forward pools and flattens functionally; here they are modules
    return [
        ("avgpool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("classifier", tv.classifier),
    ]


@dataclass(frozen=True)
class Family:
    body: Callable[[Any, list[str]], tuple[Named, PrefixMap]]
    top: Callable[[Any], Named]


VGG = Family(_vgg_body, _vgg_top)
RESNET = Family(_resnet_body, _resnet_top)
MOBILENET = Family(_mobilenet_body, _mobilenet_top)
FAMILIES: dict[str, Family] = {
    "vgg16": VGG,
    "vgg19": VGG,
    "resnet18": RESNET,
    "resnet34": RESNET,
    "resnet50": RESNET,
    "mobilenet_v2": MOBILENET,
}


BackboneBuilder = Callable[[Backbone, LayerContext], nn.Module]
BACKBONE_BUILDERS: dict[str, BackboneBuilder] = {}
"""Arch source (``Arch.source``: torchvision, timm) -> the builder of its backbones."""


@LAYER_BUILDERS.register(Backbone)
def _backbone(layer: Backbone, ctx: LayerContext) -> nn.Module:
    return BACKBONE_BUILDERS[BACKBONE_ARCHS[layer.arch].source](layer, ctx)


def _torchvision(layer: Backbone, ctx: LayerContext) -> nn.Module:
    build = ctx.build
    family = FAMILIES[layer.arch]
    # Without the top, construct on meta and materialize only the kept part: VGG's classifier
    # alone is 120M parameters that would be drawn and thrown away.
    lazy = not build.meta and not layer.include_top
    with torch.device("meta") if lazy else nullcontext():
        tv = torchvision.models.get_model(layer.arch, weights=None)
    body, prefixes = family.body(tv, ARCHS[layer.arch].blocks)
    top = family.top(tv)
    prefixes |= {name: name if layer.include_top else None for name, _ in top}
    module = BackboneNet(OrderedDict(body + (top if layer.include_top else [])), layer.arch)
    if lazy:
        module.to_empty(device="cpu")
        torchvision_init(module, build.generator)
    if layer.weights is not None and build.load_weights and not build.meta:
        state = _weights(layer, build)
        load_into(
            module, _renamed(state, prefixes, set(module.state_dict())), f"{layer.arch} weights"
        )
    return module


BACKBONE_BUILDERS["torchvision"] = _torchvision


def torchvision_init(module: nn.Module, generator: torch.Generator) -> None:
    """What torchvision's VGG/ResNet/MobileNetV2 constructors do to their convolutional part:
    convs kaiming-normal (fan_out, relu) with zero bias, batch norms weight 1, bias 0 and fresh
    running statistics."""
    with torch.no_grad():
        for m in module.modules():
            if hasattr(m, "reset_parameters"):  # covers every buffer to_empty left undefined
                m.reset_parameters()
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(
                    m.weight, mode="fan_out", nonlinearity="relu", generator=generator
                )
                if m.bias is not None:
                    m.bias.zero_()


def _weights(layer: Backbone, build: BuildContext) -> dict[str, torch.Tensor]:
    if isinstance(layer.weights, WeightsFile):
        path = build.spec.path_of(layer.weights.path)
        return read_state_dict(
            path, f"backbone weights file {path} not found (weights.path: {layer.weights.path})"
        )
    enum = torchvision.models.get_model_weights(layer.arch)
    if layer.weights not in enum.__members__:
        raise ModelBuildError(
            f"{layer.arch} has no weights {layer.weights!r}; valid: {', '.join(enum.__members__)}"
        )
    weights = enum[layer.weights]
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # URLError, OSError, hash mismatch: all mean "no usable download"
        raise ModelBuildError(
            f"could not download the {layer.arch} weights {layer.weights} from {weights.url} "
            f"({type(err).__name__}: {err}). Download the file on a machine with internet and "
            "set weights: {path: <file>.pth} in the spec instead"
        ) from err


def _renamed(
    state: Mapping[str, torch.Tensor], prefixes: PrefixMap, own: set[str]
) -> dict[str, torch.Tensor]:
    """State-dict keys moved from torchvision's names to ours; the dropped top's keys left out.
    A state dict already in our names passes through."""
    if set(state) == own:
        return dict(state)
    out = {}
    for key, value in state.items():
        new = _rename(key, prefixes)
        if new is not None:
            out[new] = value
    return out


def _rename(key: str, prefixes: PrefixMap) -> str | None:
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):  # longest matching module prefix
        head = ".".join(parts[:n])
        if head in prefixes:
            target = prefixes[head]
            return None if target is None else ".".join([target, *parts[n:]])
    return key
