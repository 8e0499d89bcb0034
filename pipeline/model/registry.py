"""The layer-builder registry: one function per spec layer kind turns its schema into a module.

Adding a layer kind is one schema class in ``pipeline.spec`` plus one ``@builder`` function here;
:func:`build_sequence` dispatches through :data:`BUILDERS`, so nothing else changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.model.errors import ModelBuildError
from pipeline.registry import Registry
from pipeline.spec.errors import PathPart
from pipeline.spec.layers import Shape
from pipeline.spec.shapes import infer_shapes
from pipeline.spec.spec import Spec


@dataclass
class BuildContext:
    """What every builder of one model shares."""

    spec: Spec
    meta: bool
    """Building on the meta device: shapes only, no data, so no init and no weight loading."""
    load_weights: bool
    """Load checkpoints and pretrained weights (False: random weights, nothing read or fetched)."""
    generator: torch.Generator
    """Seeded from ``spec.seed``; every initializer draws from it in build order."""
    names: dict[tuple[PathPart, ...], str]
    """Key path of each layer (nested ones too) -> its name, from ``named_layers``."""


@dataclass(frozen=True)
class LayerContext:
    """Where one layer sits: its name, path and the shapes around it (no batch axis)."""

    build: BuildContext
    path: tuple[PathPart, ...]
    name: str
    in_shape: Shape
    out_shape: Shape


Builder = Callable[[Any, LayerContext], nn.Module]
BUILDERS: Registry[Builder] = Registry("layer kind")
builder = BUILDERS.register
"""``@builder("conv2d", ...)``: the builder of the given layer kinds (``type`` names)."""


def build_layer(layer: Any, ctx: LayerContext) -> nn.Module:
    """The module of one layer, frozen when the layer says ``trainable: false``."""
    fn = BUILDERS.get(layer.type)
    if fn is None:
        raise ModelBuildError(f"no builder for layer kind {layer.type!r}")
    module = fn(layer, ctx)
    if not layer.trainable:
        module.requires_grad_(False)
    return module


def build_sequence(
    layers: Sequence[Any], shape: Shape, build: BuildContext, prefix: tuple[PathPart, ...] = ()
) -> tuple[OrderedDict[str, nn.Module], Shape]:
    """Modules of a layer list keyed by layer name, and the shape it outputs.

    Shapes come from the schema (raises ``LayerShapeError`` where a layer does not fit), so
    every builder knows its input and output shape without running torch.
    """
    shapes = infer_shapes(layers, tuple(shape), path=prefix)
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    for i, (layer, out) in enumerate(zip(layers, shapes, strict=True)):
        path = (*prefix, i)
        name = build.names[path]
        if name in modules:  # the unique-layer-names check does this for checked specs
            raise ModelBuildError(f"layer name {name!r} is used twice")
        modules[name] = build_layer(layer, LayerContext(build, path, name, tuple(shape), out))
        shape = out
    return modules, tuple(shape)
