"""Builders of depthwise and separable convolutions and upsampling (schemas in
``pipeline.spec.spatial``)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from pipeline.model.init import apply_init, init_weighted
from pipeline.model.layers import weighted_block, window_padding
from pipeline.model.registry import LAYER_BUILDERS, LayerContext
from pipeline.spec.base import pair
from pipeline.spec.spatial import DepthwiseConv2D, SeparableConv2D, Upsample


def _depthwise(
    layer: DepthwiseConv2D | SeparableConv2D, channels: int, bias: bool, parts: OrderedDict
) -> nn.Conv2d:
    """One kernel set per input channel (groups = channels), ``depth_multiplier`` each."""
    return nn.Conv2d(
        channels,
        channels * layer.depth_multiplier,
        pair(layer.kernel_size),
        pair(layer.stride),
        window_padding(layer, parts),
        pair(layer.dilation),
        groups=channels,
        bias=bias,
    )


@LAYER_BUILDERS.register(DepthwiseConv2D)
def _depthwise_conv2d(layer: DepthwiseConv2D, ctx: LayerContext) -> nn.Module:
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    conv = _depthwise(layer, ctx.in_shape[0], layer.bias, parts)
    init_weighted(conv, layer, ctx.build)
    parts["conv"] = conv
    return weighted_block(parts, "conv", layer, ctx.out_shape)


@LAYER_BUILDERS.register(SeparableConv2D)
def _separable_conv2d(layer: SeparableConv2D, ctx: LayerContext) -> nn.Module:
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    depthwise = _depthwise(layer, ctx.in_shape[0], False, parts)
    kernel = layer.kernel_init if layer.kernel_init is not None else ctx.build.spec.init.kernel
    apply_init(kernel, depthwise.weight, ctx.build.generator)
    pointwise = nn.Conv2d(depthwise.out_channels, layer.filters, 1, bias=layer.bias)
    init_weighted(pointwise, layer, ctx.build)
    parts["depthwise"], parts["pointwise"] = depthwise, pointwise
    # the pointwise conv is the core: regularizer and max_norm act on its kernel
    return weighted_block(parts, "pointwise", layer, ctx.out_shape)


@LAYER_BUILDERS.register(Upsample)
def _upsample(layer: Upsample, ctx: LayerContext) -> nn.Module:
    # align_corners=False for bilinear is Keras's (half-pixel centres); nearest takes none
    corners = False if layer.mode == "bilinear" else None
    if layer.size is not None:
        return nn.Upsample(size=pair(layer.size), mode=layer.mode, align_corners=corners)
    factor = tuple(float(f) for f in pair(layer.scale_factor))  # type: ignore[arg-type]
    return nn.Upsample(scale_factor=factor, mode=layer.mode, align_corners=corners)
