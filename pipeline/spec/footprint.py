"""What a model holds in memory, counted torch-free from the spec and its shapes: the numbers it
stores (weights, biases, batch-norm statistics), which of them train, and how many numbers per
sample one forward pass keeps for the backward pass (the layers' outputs).

The parameter counts are exact (a test checks them against the built model's summary); the
activation count is an estimate: each layer's output once (its batch norm's and activation's
too), a flatten none (it is a view), a backbone from its measured outputs per input pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from pipeline.spec.activations import PReLU, activation_model
from pipeline.spec.base import Shape, pair
from pipeline.spec.composite import Backbone, Branch, Residual, Reuse
from pipeline.spec.layers import BatchNorm, Conv2D, Dense, Flatten, WeightedLayer
from pipeline.spec.normalization import GroupNorm, LayerNorm
from pipeline.spec.spatial import DepthwiseConv2D, SeparableConv2D
from pipeline.spec.timm_table import TIMM_ARCHS


@dataclass
class Footprint:
    params: int = 0
    """Learnable numbers (weights, biases, PReLU slopes, batch-norm scales and shifts)."""
    frozen: int = 0
    """Of ``params``, those of layers with ``trainable: false``."""
    buffers: int = 0
    """Stored numbers that never train: batch-norm moving means and variances."""
    activations: int = 0
    """Numbers per sample kept for the backward pass."""

    def __iadd__(self, other: Footprint) -> Footprint:
        self.params += other.params
        self.frozen += other.frozen
        self.buffers += other.buffers
        self.activations += other.activations
        return self

    @property
    def stored(self) -> int:
        """Everything in the state dict, as the summary's "Total params" counts it."""
        return self.params + self.buffers


class BackboneSize(NamedTuple):
    params: int
    """Without the ImageNet head."""
    top_params: int
    """With it (include_top)."""
    buffers: int
    activations_per_pixel: float
    """Sum of the leaf modules' output sizes per input pixel (measured on torchvision)."""


BACKBONES: dict[str, BackboneSize] = {
    "vgg16": BackboneSize(14_714_688, 138_357_544, 0, 570.5),
    "vgg19": BackboneSize(20_024_384, 143_667_240, 0, 622.5),
    "resnet18": BackboneSize(11_176_512, 11_689_512, 9_600, 149.0),
    "resnet34": BackboneSize(21_284_672, 21_797_672, 17_024, 224.0),
    "resnet50": BackboneSize(23_508_032, 25_557_032, 53_120, 638.5),
    "mobilenet_v2": BackboneSize(2_223_872, 3_504_872, 34_112, 387.875),
} | {
    name: BackboneSize(a.params, a.top_params, a.buffers, a.activations_per_pixel)
    for name, a in TIMM_ARCHS.items()  # measured from timm when the table was written
}

Rule = Callable[[Any, Shape, Shape], Footprint]
RULES: dict[type, Rule] = {}
"""Layer kind -> its footprint from (layer, input shape, output shape); kinds without a rule
have no parameters and keep their output."""


def _rule(kind: type) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        RULES[kind] = fn
        return fn

    return register


def _extras(layer: WeightedLayer, out: Shape) -> Footprint:
    """The bias, batch norm and a PReLU activation a conv/dense layer adds."""
    units = out[0]
    fp = Footprint(params=units if layer.bias else 0, activations=math.prod(out))
    if layer.batch_norm is not None:
        fp += Footprint(params=2 * units, buffers=2 * units, activations=math.prod(out))
    act = activation_model(layer.activation)
    if act is not None:
        fp.activations += math.prod(out)
        if isinstance(act, PReLU):
            slopes = 1 if act.shared else units
            fp.params += slopes
            fp.frozen += 0 if act.trainable else slopes
    return fp


@_rule(Conv2D)
def _conv(layer: Conv2D, shape: Shape, out: Shape) -> Footprint:
    kh, kw = pair(layer.kernel_size)
    fp = Footprint(params=layer.filters * (shape[0] // layer.groups) * kh * kw)
    fp += _extras(layer, out)
    return fp


@_rule(Dense)
def _dense(layer: Dense, shape: Shape, out: Shape) -> Footprint:
    fp = Footprint(params=shape[0] * layer.units)
    fp += _extras(layer, out)
    return fp


@_rule(BatchNorm)
def _batch_norm(layer: BatchNorm, shape: Shape, out: Shape) -> Footprint:
    return Footprint(params=2 * shape[0], buffers=2 * shape[0], activations=math.prod(out))


@_rule(PReLU)
def _prelu(layer: PReLU, shape: Shape, out: Shape) -> Footprint:
    return Footprint(params=1 if layer.shared else shape[0], activations=math.prod(out))


@_rule(Flatten)
def _flatten(layer: Flatten, shape: Shape, out: Shape) -> Footprint:
    return Footprint()


@_rule(Residual)
def _residual(layer: Residual, shape: Shape, out: Shape) -> Footprint:
    fp = footprint(layer.layers, shape, inputs=False)
    fp.activations += math.prod(out)  # the sum
    if layer.projects(shape, out):  # 1x1 conv or linear without bias, then batch norm
        c = out[0]
        fp += Footprint(params=shape[0] * c + 2 * c, buffers=2 * c, activations=2 * math.prod(out))
    if layer.activation is not None:
        fp.activations += math.prod(out)
    return fp


@_rule(Branch)
def _branch(layer: Branch, shape: Shape, out: Shape) -> Footprint:
    fp = Footprint()
    for branch in layer.branches:
        fp += footprint(branch, shape, inputs=False)
    fp.activations += math.prod(out)  # the concatenation or sum
    if layer.activation is not None:
        fp.activations += math.prod(out)
    return fp


@_rule(DepthwiseConv2D)
def _depthwise(layer: DepthwiseConv2D, shape: Shape, out: Shape) -> Footprint:
    kh, kw = pair(layer.kernel_size)
    fp = Footprint(params=out[0] * kh * kw)
    fp += _extras(layer, out)
    return fp


@_rule(SeparableConv2D)
def _separable(layer: SeparableConv2D, shape: Shape, out: Shape) -> Footprint:
    kh, kw = pair(layer.kernel_size)
    inner = shape[0] * layer.depth_multiplier
    fp = Footprint(params=inner * kh * kw + inner * layer.filters)
    fp.activations += inner * math.prod(out[1:])  # the depthwise output
    fp += _extras(layer, out)
    return fp


def _affine_norm(layer: LayerNorm | GroupNorm, shape: Shape, out: Shape) -> Footprint:
    return Footprint(params=2 * shape[0] if layer.affine else 0, activations=math.prod(out))


RULES[LayerNorm] = RULES[GroupNorm] = _affine_norm


@_rule(Backbone)
def _backbone(layer: Backbone, shape: Shape, out: Shape) -> Footprint:
    size = BACKBONES[layer.arch]
    arch = TIMM_ARCHS.get(layer.arch)  # timm takes other than 3 channels (in_chans)
    more = (shape[0] - 3) * arch.first_conv_per_channel if arch is not None else 0
    return Footprint(
        params=(size.top_params if layer.include_top else size.params) + more,
        buffers=size.buffers,
        activations=math.ceil(size.activations_per_pixel * shape[1] * shape[2]),
    )


@_rule(Reuse)
def _reuse(layer: Reuse, shape: Shape, out: Shape) -> Footprint:
    fp = footprint(layer.kept_layers(), shape, inputs=False)
    fp.frozen = 0  # the reuse layer's own flag decides, whatever the source froze
    return fp


def footprint(layers: Sequence[Any], shape: Shape, *, inputs: bool = True) -> Footprint:
    """The footprint of a layer list given its input shape (``inputs``: with the input batch
    itself). Raises ShapeError where the shapes do not fit (the shapes check says where)."""
    total = Footprint(activations=math.prod(shape) if inputs else 0)
    for layer in layers:
        out = tuple(layer.output_shape(tuple(shape)))
        rule = RULES.get(type(layer))
        fp = rule(layer, shape, out) if rule else Footprint(activations=math.prod(out))
        if not getattr(layer, "trainable", True):
            fp.frozen = fp.params
        total += fp
        shape = out
    return total


OPTIMIZER_STATE: dict[str, Callable[[Any], int]] = {
    "sgd": lambda o: 1 if o.momentum else 0,
    "adagrad": lambda o: 1,
    "rmsprop": lambda o: 1 + (1 if o.momentum else 0) + (1 if o.centered else 0),
    "adam": lambda o: 3 if o.amsgrad else 2,
    "adamw": lambda o: 3 if o.amsgrad else 2,
    "adamax": lambda o: 2,
    "nadam": lambda o: 2,
    "radam": lambda o: 2,
}
"""Optimizer type -> tensors of state it keeps per parameter (momentum, moment estimates);
a kind not listed is taken to keep two, as Adam does."""


def optimizer_state(optimizer: Any) -> int:
    rule = OPTIMIZER_STATE.get(optimizer.type)
    return rule(optimizer) if rule else 2
