"""Builders of the plain layer kinds: conv2d, dense, pools, normalization, dropout, reshaping."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn

from pipeline.model import modules as M
from pipeline.model.activations import activation_module
from pipeline.model.init import init_weighted
from pipeline.model.registry import LAYER_BUILDERS, LayerContext
from pipeline.spec.base import pair
from pipeline.spec.layers import (
    AdaptiveAvgPool2D,
    AdaptiveMaxPool2D,
    AlphaDropout,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    ConvWindow,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    GlobalMaxPool2D,
    LPPool2D,
    MaxPool2D,
    Pool2D,
    Scale,
    Shape,
    SpatialDropout2D,
    WeightedLayer,
)

# batch norm by rank of the (batch-less) shape: (F,) or (C, H, W)
BATCH_NORMS: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 3: nn.BatchNorm2d}


def batch_norm(shape: Shape, momentum: float = 0.1, eps: float = 1e-5) -> nn.Module:
    return BATCH_NORMS[len(shape)](shape[0], eps=eps, momentum=momentum)


def weighted_block(
    parts: OrderedDict[str, nn.Module], core: str, layer: WeightedLayer, out: Shape
) -> nn.Module:
    """Append batch norm and activation in the order ``batch_norm`` asks for."""
    act = activation_module(layer.activation, out)
    tail: list[tuple[str, nn.Module | None]] = [("bn", batch_norm(out)), ("act", act)]
    if layer.batch_norm is None:
        tail = tail[1:]
    elif layer.batch_norm == "after":
        tail.reverse()
    parts.update((name, module) for name, module in tail if module is not None)
    return M.WeightedBlock(parts, core)


def window_padding(layer: Conv2D | ConvWindow, parts: OrderedDict[str, nn.Module]) -> Any:
    """The ``padding`` argument of the layer's nn.Conv2d; for a strided 'same' window a
    SamePad2d goes into ``parts`` first (torch's padding='same' refuses strides), padding the
    TF way (the odd pixel at the bottom/right)."""
    if layer.padding == "valid":
        return 0
    kernel, stride, dilation = pair(layer.kernel_size), pair(layer.stride), pair(layer.dilation)
    if layer.padding == "same" and stride != (1, 1):
        parts["pad"] = M.SamePad2d(kernel, stride, dilation)
        return 0
    return layer.padding


@LAYER_BUILDERS.register(Conv2D)
def _conv2d(layer: Conv2D, ctx: LayerContext) -> nn.Module:
    kernel, stride, dilation = pair(layer.kernel_size), pair(layer.stride), pair(layer.dilation)
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    padding = window_padding(layer, parts)
    conv = nn.Conv2d(
        ctx.in_shape[0],
        layer.filters,
        kernel,
        stride,
        padding,
        dilation,
        layer.groups,
        bias=layer.bias,
    )
    init_weighted(conv, layer, ctx.build)
    parts["conv"] = conv
    return weighted_block(parts, "conv", layer, ctx.out_shape)


@LAYER_BUILDERS.register(Dense)
def _dense(layer: Dense, ctx: LayerContext) -> nn.Module:
    linear = nn.Linear(ctx.in_shape[0], layer.units, bias=layer.bias)
    init_weighted(linear, layer, ctx.build)
    return weighted_block(OrderedDict(dense=linear), "dense", layer, ctx.out_shape)


def _window(layer: Pool2D) -> tuple[tuple[int, int], tuple[int, int]]:
    kernel = pair(layer.pool_size)
    return kernel, pair(layer.stride) if layer.stride is not None else kernel


@LAYER_BUILDERS.register(MaxPool2D)
def _max_pool(layer: MaxPool2D, ctx: LayerContext) -> nn.Module:
    kernel, stride = _window(layer)
    if layer.padding == "same":
        # -inf padding: a padded pixel never wins the max (Keras semantics)
        return nn.Sequential(
            M.SamePad2d(kernel, stride, value=float("-inf")), nn.MaxPool2d(kernel, stride)
        )
    return nn.MaxPool2d(kernel, stride, 0 if layer.padding == "valid" else pair(layer.padding))


@LAYER_BUILDERS.register(AvgPool2D)
def _avg_pool(layer: AvgPool2D, ctx: LayerContext) -> nn.Module:
    kernel, stride = _window(layer)
    if layer.padding == "same":
        return M.AvgPoolSame2d(kernel, stride)
    return nn.AvgPool2d(kernel, stride, 0 if layer.padding == "valid" else pair(layer.padding))


@LAYER_BUILDERS.register(LPPool2D)
def _lp_pool(layer: LPPool2D, ctx: LayerContext) -> nn.Module:
    kernel, stride = _window(layer)
    return nn.LPPool2d(layer.norm_type, kernel, stride)


@LAYER_BUILDERS.register(AdaptiveAvgPool2D)
def _adaptive_avg(layer: AdaptiveAvgPool2D, ctx: LayerContext) -> nn.Module:
    return nn.AdaptiveAvgPool2d(pair(layer.output_size))


@LAYER_BUILDERS.register(AdaptiveMaxPool2D)
def _adaptive_max(layer: AdaptiveMaxPool2D, ctx: LayerContext) -> nn.Module:
    return nn.AdaptiveMaxPool2d(pair(layer.output_size))


@LAYER_BUILDERS.register(GlobalAvgPool2D)
def _global_avg(layer: GlobalAvgPool2D, ctx: LayerContext) -> nn.Module:
    return M.GlobalPool2d("avg")


@LAYER_BUILDERS.register(GlobalMaxPool2D)
def _global_max(layer: GlobalMaxPool2D, ctx: LayerContext) -> nn.Module:
    return M.GlobalPool2d("max")


@LAYER_BUILDERS.register(Flatten)
def _flatten(layer: Flatten, ctx: LayerContext) -> nn.Module:
    return nn.Flatten()


@LAYER_BUILDERS.register(Dropout)
def _dropout(layer: Dropout, ctx: LayerContext) -> nn.Module:
    return nn.Dropout(layer.rate)


@LAYER_BUILDERS.register(AlphaDropout)
def _alpha_dropout(layer: AlphaDropout, ctx: LayerContext) -> nn.Module:
    return nn.AlphaDropout(layer.rate)


@LAYER_BUILDERS.register(SpatialDropout2D)
def _spatial_dropout(layer: SpatialDropout2D, ctx: LayerContext) -> nn.Module:
    return nn.Dropout2d(layer.rate)


@LAYER_BUILDERS.register(BatchNorm)
def _batch_norm(layer: BatchNorm, ctx: LayerContext) -> nn.Module:
    return batch_norm(ctx.in_shape, layer.momentum, layer.eps)


@LAYER_BUILDERS.register(Scale)
def _scale(layer: Scale, ctx: LayerContext) -> nn.Module:
    return M.Scale(layer.factor)
