"""The timm backbone builder: ``arch: timm/<name>`` is ``timm.create_model(name)`` itself.

No renaming: the module is timm's own model (its class given :class:`TimmBlocks`'s two
methods), so its top-level children (``conv1 ... layer4, global_pool, fc`` for a ResNet,
``conv_stem, bn1, blocks, ...`` for an EfficientNet) are the blocks that summaries expand and
``freeze: [<backbone>.<block>]`` names, and weight files saved from a timm model load as they
are. Without ``include_top`` it is ``create_model(name, num_classes=0, global_pool="")``, whose
forward returns the unpooled feature map (timm's own feature model, head convs included).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from pipeline.model.backbones import BACKBONE_BUILDERS
from pipeline.model.errors import ModelBuildError
from pipeline.model.modules import Composite
from pipeline.model.registry import BuildContext, LayerContext
from pipeline.model.weights import load_into, read_state_dict
from pipeline.spec.composite import Backbone, WeightsFile
from pipeline.spec.timm_table import PREFIX


def block_names(model: nn.Module) -> list[str]:
    """The selectable blocks of a timm model, in order: its top-level children, each followed
    by its stages where timm's ``feature_info`` points inside it (``blocks`` of an
    EfficientNet: ``blocks.0 ... blocks.6``; ``stages.0 ... stages.3`` of a ConvNeXt), all of
    them, so that ``{from: blocks.5}`` leaves no stage out."""
    modules = [info["module"] for info in getattr(model, "feature_info", [])]
    parents = {m.rsplit(".", 1)[0] for m in modules if "." in m}
    names = []
    for child_name, child in model.named_children():
        names.append(child_name)
        if child_name in parents:
            names += [f"{child_name}.{stage}" for stage, _ in child.named_children()]
    return names


class TimmBlocks(Composite):
    """Mixed into a timm model's class: its top-level children are its parts (a summary's
    rows), its :func:`block_names` its layers, bare and as ``<backbone>.<block>``, as a
    torchvision backbone's blocks are."""

    def parts(self) -> Iterator[tuple[str, nn.Module]]:
        return self.named_children()

    def inner_layers(self, name: str) -> Iterator[tuple[str, nn.Module]]:
        for block in block_names(self):
            module = self.get_submodule(block)
            yield f"{name}.{block}", module
            yield block, module


@functools.cache
def _with_blocks(cls: type[nn.Module]) -> type[nn.Module]:
    """timm's class with :class:`TimmBlocks` mixed in (copy.deepcopy works; pickling the
    module itself does not, as nothing here pickles modules: state dicts are saved)."""
    return type(cls.__name__, (TimmBlocks, cls), {"__module__": cls.__module__})


def _timm(layer: Backbone, ctx: LayerContext) -> nn.Module:
    build = ctx.build
    name = layer.arch.removeprefix(PREFIX)
    options: dict[str, Any] = {} if layer.include_top else {"num_classes": 0, "global_pool": ""}
    channels = ctx.in_shape[0]
    if channels != 3:  # timm's in_chans: pretrained first convs are adapted by timm itself
        options["in_chans"] = channels
    download = isinstance(layer.weights, str) and build.load_weights and not build.meta
    model = _create(name, layer, build, options, download)
    if isinstance(layer.weights, WeightsFile) and build.load_weights and not build.meta:
        path = build.spec.path_of(layer.weights.path)
        state = read_state_dict(
            path, f"backbone weights file {path} not found (weights.path: {layer.weights.path})"
        )
        own = set(model.state_dict())
        head = _head_prefixes(model)
        kept = {k: v for k, v in state.items() if k in own or not k.startswith(head)}
        load_into(model, _adapt_first_conv(model, kept, channels), f"{layer.arch} weights")
    model.__class__ = _with_blocks(type(model))
    return model


def _create(
    name: str, layer: Backbone, build: BuildContext, options: dict[str, Any], download: bool
) -> nn.Module:
    """timm's model, its random init drawn from the build's generator (timm initializes from
    torch's global generator: seeded here, then restored), or its pretrained weights."""
    import timm  # here: importing it (and the Hugging Face hub) costs 0.7 s; most specs never do

    seed = int(torch.randint(2**62, (1,), generator=build.generator, device="cpu"))
    with torch.random.fork_rng(devices=[]):  # on the meta device when the build is
        torch.manual_seed(seed)
        if not download:
            return timm.create_model(name, pretrained=False, **options)
        tag = None if layer.weights == "DEFAULT" else layer.weights
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{name}.*")]
        if tag is not None and tag not in tags:
            raise ModelBuildError(
                f"{layer.arch} has no weights {tag!r}; valid: DEFAULT, {', '.join(tags)}"
            )
        try:
            full = name if tag is None else f"{name}.{tag}"
            return timm.create_model(full, pretrained=True, **options)
        except Exception as err:  # no network, hub errors, a bad file: no usable download
            raise ModelBuildError(
                f"could not download the {layer.arch} weights {layer.weights} from the "
                f"Hugging Face hub ({type(err).__name__}: {err}). Save the model's state dict "
                "on a machine with internet and set weights: {path: <file>.pth} in the spec"
            ) from err


def first_convs(model: nn.Module) -> list[str]:
    """The names of a timm model's input convolutions (its ``pretrained_cfg["first_conv"]``:
    one, or several)."""
    first = model.pretrained_cfg.get("first_conv")
    return [first] if isinstance(first, str) else list(first or ())


def _adapt_first_conv(
    model: nn.Module, state: dict[str, torch.Tensor], channels: int
) -> dict[str, torch.Tensor]:
    """A weights file saved from an RGB model, for a model of ``channels`` input channels: its
    first convolution adapted as timm adapts pretrained weights (``adapt_input_conv``: summed
    over RGB for one channel, repeated and rescaled for more)."""
    from timm.models import adapt_input_conv

    for conv in first_convs(model):
        key = f"{conv}.weight"
        weight = state.get(key)
        if weight is not None and weight.dim() == 4 and weight.shape[1] != channels:
            state = {**state, key: adapt_input_conv(channels, weight)}
    return state


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The state-dict prefixes of timm's classifier (``fc.``, ``head.fc.``), which a full
    model's weight file has and a backbone without its top does not."""
    head = model.pretrained_cfg.get("classifier") or ()
    return tuple(f"{h}." for h in ([head] if isinstance(head, str) else head))


BACKBONE_BUILDERS["timm"] = _timm
