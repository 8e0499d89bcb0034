"""Layer kinds. Each knows its output shape, so shapes are checked without importing torch.

Shapes are channels-first, without the batch axis: ``(C, H, W)`` for feature maps, ``(F,)`` for
flat features. The builders of these kinds are in ``pipeline.model.layers``.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field

from pipeline.spec.activations import ActivationField
from pipeline.spec.base import (
    LAYERS,
    IntPair,
    LayerKind,
    NonNegativeFloat,
    Pixels,
    Shape,
    Size,
    StrictModel,
    pair,
)
from pipeline.spec.init import InitField

Padding = Literal["valid", "same"] | Pixels | tuple[Pixels, Pixels]


class ShapeError(ValueError):
    """A layer cannot take the shape it is given; ``hint`` says what would fit."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def fmt(shape: Shape) -> str:
    """A shape as Python writes a tuple: ``(64, 5, 5)``, ``(576,)``."""
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def need_map(layer: str, shape: Shape) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ShapeError(
            f"{layer} needs a feature map (C, H, W) but gets {fmt(shape)}",
            "put spatial layers before flatten/global pooling, or declare input_shape as "
            "[channels, height, width]",
        )
    return shape  # type: ignore[return-value]


def window_out(size: int, kernel: int, stride: int, pad: int | str, dilation: int = 1) -> int:
    """Output length of a conv/pool window along one axis (Keras semantics for 'same')."""
    if pad == "same":
        return math.ceil(size / stride)
    pad = 0 if pad == "valid" else int(pad)
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


class LayerBase(LayerKind):
    name: str | None = None
    """Layer name; default ``<type>_<n>`` (Keras-style, 1-based per kind)."""
    trainable: bool = True
    """False freezes this layer's parameters (and keeps its batch norm in inference mode)."""


class Regularizer(StrictModel):
    """Penalty added to the loss: l1 * sum|w| + l2 * sum w^2 (Keras's convention, no 1/2)."""

    l1: NonNegativeFloat = 0.0
    l2: NonNegativeFloat = 0.0


class WeightedLayer(LayerBase):
    """Fields shared by conv2d and dense."""

    activation: ActivationField | None = None
    """Activation after the layer (and after its batch norm if ``batch_norm: before``)."""
    bias: bool = True
    """Learn an additive bias (redundant right before batch norm)."""
    batch_norm: Literal["before", "after"] | None = None
    """Insert a batch norm before or after the activation (default momentum/eps)."""
    kernel_init: InitField | None = None
    """Weight initializer; default from ``defaults`` for the kind, then ``init.kernel``."""
    bias_init: InitField | None = None
    """Bias initializer; default from ``defaults`` for the kind, then ``init.bias``."""
    regularizer: Regularizer | None = None
    """L1/L2 penalty on this layer's weights."""
    max_norm: Annotated[float, Field(gt=0)] | None = None
    """After each step, rescale each output unit's incoming weight vector to norm <= this."""


class ConvWindow(WeightedLayer):
    """The sliding window of the depthwise and separable convolutions (conv2d declares the
    same fields itself, after ``filters``, so that its resolved specs keep their key order)."""

    kernel_size: IntPair
    stride: IntPair = 1
    padding: Padding = "valid"
    """'valid' (none), 'same' (output = ceil(input / stride), as Keras), or pixels per side."""
    dilation: IntPair = 1


def conv_window(layer: Conv2D | ConvWindow, h: int, w: int) -> tuple[int, int]:
    """The output height and width of ``layer``'s window on an h x w map; ShapeError when the
    kernel does not fit."""
    (kh, kw), (sh, sw), (dh, dw) = pair(layer.kernel_size), pair(layer.stride), pair(layer.dilation)
    ph, pw = _pads(layer.padding)
    oh, ow = window_out(h, kh, sh, ph, dh), window_out(w, kw, sw, pw, dw)
    if oh < 1 or ow < 1:
        raise ShapeError(
            f"a {kh}x{kw} kernel (dilation {dh}x{dw}) does not fit the {h}x{w} input: the "
            f"output would be {oh}x{ow}",
            "use padding: same, a smaller kernel, or fewer downsampling layers before it",
        )
    return oh, ow


@LAYERS.register
class Conv2D(WeightedLayer):
    """2-D convolution; a 1x1 kernel mixes channels without looking at neighbours."""

    type: Literal["conv2d"] = "conv2d"
    filters: Size
    """Output channels."""
    kernel_size: IntPair
    stride: IntPair = 1
    padding: Padding = "valid"
    """'valid' (none), 'same' (output = ceil(input / stride), as Keras), or pixels per side."""
    dilation: IntPair = 1
    groups: Size = 1
    """Channel groups; filters and input channels must both divide by it."""

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = need_map("conv2d", shape)
        if c % self.groups or self.filters % self.groups:
            raise ShapeError(
                f"groups={self.groups} must divide input channels ({c}) and filters "
                f"({self.filters})"
            )
        return (self.filters, *conv_window(self, h, w))


@LAYERS.register
class Dense(WeightedLayer):
    """Fully connected layer (PyTorch's Linear)."""

    type: Literal["dense"] = "dense"
    units: Size

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) != 1:
            raise ShapeError(
                f"dense needs flat features (F,) but gets {fmt(shape)}",
                "add {type: flatten} or {type: global_avg_pool2d} before it",
            )
        return (self.units,)


def _pads(padding: Padding) -> tuple[int | str, int | str]:
    return padding if isinstance(padding, tuple) else (padding, padding)  # type: ignore[return-value]


class Pool2D(LayerBase):
    pool_size: IntPair = 2
    stride: IntPair | None = None
    """Default: the pool size (non-overlapping windows)."""
    padding: Padding = "valid"

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = need_map(self.type_name, shape)
        (kh, kw) = pair(self.pool_size)
        (sh, sw) = pair(self.stride) if self.stride is not None else (kh, kw)
        ph, pw = _pads(self.padding)
        for p, k in ((ph, kh), (pw, kw)):
            if isinstance(p, int) and p > k // 2:
                raise ShapeError(f"padding {p} is more than half the pool size {k}")
        oh, ow = window_out(h, kh, sh, ph), window_out(w, kw, sw, pw)
        if oh < 1 or ow < 1:
            raise ShapeError(
                f"a {kh}x{kw} pool does not fit the {h}x{w} feature map (it collapses to "
                f"{max(oh, 0)}x{max(ow, 0)})",
                "remove a downsampling layer, use padding: same, or a larger input",
            )
        return (c, oh, ow)


@LAYERS.register
class MaxPool2D(Pool2D):
    """Max over each window: keeps whether a feature is present."""

    type: Literal["max_pool2d"] = "max_pool2d"


@LAYERS.register
class AvgPool2D(Pool2D):
    type: Literal["avg_pool2d"] = "avg_pool2d"


@LAYERS.register
class LPPool2D(Pool2D):
    """Power-average pooling, (sum x^p)^(1/p); p=2 is L2-norm pooling."""

    type: Literal["lp_pool2d"] = "lp_pool2d"
    norm_type: Annotated[float, Field(gt=0)] = 2.0
    padding: Literal["valid"] = "valid"


class AdaptivePool2D(LayerBase):
    output_size: IntPair
    """Fixed output height and width whatever the input size (ROI-pooling style)."""

    def output_shape(self, shape: Shape) -> Shape:
        c, _, _ = need_map(self.type_name, shape)
        return (c, *pair(self.output_size))


@LAYERS.register
class AdaptiveAvgPool2D(AdaptivePool2D):
    type: Literal["adaptive_avg_pool2d"] = "adaptive_avg_pool2d"


@LAYERS.register
class AdaptiveMaxPool2D(AdaptivePool2D):
    type: Literal["adaptive_max_pool2d"] = "adaptive_max_pool2d"


class GlobalPool2D(LayerBase):
    def output_shape(self, shape: Shape) -> Shape:
        c, _, _ = need_map(self.type_name, shape)
        return (c,)


@LAYERS.register
class GlobalAvgPool2D(GlobalPool2D):
    """Average of each channel over the whole map, giving (C,)."""

    type: Literal["global_avg_pool2d"] = "global_avg_pool2d"


@LAYERS.register
class GlobalMaxPool2D(GlobalPool2D):
    type: Literal["global_max_pool2d"] = "global_max_pool2d"


@LAYERS.register
class Flatten(LayerBase):
    type: Literal["flatten"] = "flatten"

    def output_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)


DropRate = Annotated[float, Field(ge=0.0, lt=1.0)]


@LAYERS.register
class Dropout(LayerBase):
    """Zero each input with probability ``rate`` in training, scale the rest by 1/(1-rate)."""

    type: Literal["dropout"] = "dropout"
    rate: DropRate


@LAYERS.register
class SpatialDropout2D(LayerBase):
    """Drop whole channels of a feature map."""

    type: Literal["spatial_dropout2d"] = "spatial_dropout2d"
    rate: DropRate

    def output_shape(self, shape: Shape) -> Shape:
        return need_map("spatial_dropout2d", shape)


@LAYERS.register
class AlphaDropout(LayerBase):
    """Dropout that keeps SELU's self-normalization (mean and variance preserved)."""

    type: Literal["alpha_dropout"] = "alpha_dropout"
    rate: DropRate


@LAYERS.register
class BatchNorm(LayerBase):
    """Batch normalization, 1-D or 2-D from the input's shape.

    Learns gamma and beta (trainable) and tracks the moving mean and variance (non-trainable,
    counted as parameters the way Keras counts them).
    """

    type: Literal["batch_norm"] = "batch_norm"
    momentum: Annotated[float, Field(gt=0, lt=1)] = 0.1
    """Weight of each batch in the moving statistics (PyTorch convention; Keras's 0.99 is 0.01)."""
    eps: Annotated[float, Field(gt=0)] = 1e-5
    """Added to the variance (PyTorch's default; Keras uses 1e-3)."""

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) not in (1, 3):
            raise ShapeError(f"batch_norm needs (F,) or (C, H, W), got {fmt(shape)}")
        return shape


@LAYERS.register
class Scale(LayerBase):
    """Multiply by a constant (e.g. airbench's final 1/9 on the logits)."""

    type: Literal["scale"] = "scale"
    factor: float
