"""The layer-builder table: one function per spec layer kind turns its schema into a module.

Adding a layer kind is one schema class in ``pipeline.spec`` plus one function registered with
``@LAYER_BUILDERS.register(TheClass)`` in a builder module (``pipeline.model.layers`` for plain
layers); :func:`build_sequence` dispatches by the layer's class, so nothing else changes, and
importing ``pipeline.model`` fails, naming the kind, while one has no builder.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.model.errors import ModelBuildError
from pipeline.registry import Builders
from pipeline.spec.base import LAYERS, Shape
from pipeline.spec.errors import PathPart
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


LayerBuilder = Callable[[Any, LayerContext], nn.Module]
LAYER_BUILDERS: Builders[LayerBuilder] = Builders(LAYERS, "layer")
"""Layer schema class -> its builder; ``@LAYER_BUILDERS.register(Conv2D)``."""


def build_layer(layer: Any, ctx: LayerContext) -> nn.Module:
    """The module of one layer, frozen when the layer says ``trainable: false``."""
    module = LAYER_BUILDERS[layer](layer, ctx)
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
