"""Feature-map layer kinds Keras users look for by name: depthwise and separable convolutions
(conv2d's ``groups`` can express them, but nobody searches for that) and upsampling.

Their builders are in ``pipeline.model.spatial``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from pipeline.spec.base import LAYERS, MAX_SIZE, IntPair, Shape, Size, pair
from pipeline.spec.layers import ConvWindow, LayerBase, ShapeError, conv_window, need_map


@LAYERS.register
class DepthwiseConv2D(ConvWindow):
    """Keras's DepthwiseConv2D: each input channel convolved on its own with
    ``depth_multiplier`` kernels, giving C * depth_multiplier channels (no channel mixing).

    Initializer fans are those of the kernel PyTorch holds, (C * m, 1, kh, kw): fan_in is
    kh * kw (Keras counts the input channels in too, so its default glorot draws smaller)."""

    type: Literal["depthwise_conv2d"] = "depthwise_conv2d"
    depth_multiplier: Size = 1
    """Output channels per input channel."""

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = need_map("depthwise_conv2d", shape)
        return (c * self.depth_multiplier, *conv_window(self, h, w))


@LAYERS.register
class SeparableConv2D(ConvWindow):
    """Keras's SeparableConv2D: a depthwise convolution (``depth_multiplier`` kernels per input
    channel, no bias), then a 1x1 pointwise convolution to ``filters`` channels with the one
    bias; far fewer weights than conv2d for the same receptive field (Xception, MobileNet).

    ``kernel_init`` initializes both kernels; ``regularizer`` and ``max_norm`` apply to the
    pointwise one."""

    type: Literal["separable_conv2d"] = "separable_conv2d"
    filters: Size
    """Output channels (of the pointwise convolution)."""
    depth_multiplier: Size = 1
    """Channels per input channel after the depthwise step."""

    def output_shape(self, shape: Shape) -> Shape:
        _, h, w = need_map("separable_conv2d", shape)
        return (self.filters, *conv_window(self, h, w))


@LAYERS.register
class Upsample(LayerBase):
    """Enlarge a feature map (Keras's UpSampling2D, PyTorch's Upsample); no parameters."""

    type: Literal["upsample"] = "upsample"
    scale_factor: IntPair | None = None
    """Integer factor for height and width (or [h, w]); give this or ``size``."""
    size: IntPair | None = None
    """The output height and width, whatever the input's."""
    mode: Literal["nearest", "bilinear"] = "nearest"
    """nearest repeats pixels (Keras's default); bilinear interpolates (align_corners false,
    as Keras and PyTorch default)."""

    @model_validator(mode="after")
    def _one_of(self) -> Upsample:
        if (self.scale_factor is None) == (self.size is None):
            raise ValueError("give exactly one of 'scale_factor' or 'size'")
        return self

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = need_map("upsample", shape)
        if self.size is not None:
            return (c, *pair(self.size))
        sh, sw = pair(self.scale_factor)  # type: ignore[arg-type]
        if max(h * sh, w * sw) > MAX_SIZE:
            raise ShapeError(
                f"upsampling {h}x{w} by {sh}x{sw} gives sides over {MAX_SIZE}",
                "use a smaller scale_factor",
            )
        return (c, h * sh, w * sw)
