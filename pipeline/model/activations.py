"""Activation modules, by activation ``type``: used for activation layers and for the
``activation`` field of conv2d, dense and residual layers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from pipeline.model.registry import LayerContext, builder
from pipeline.registry import Registry
from pipeline.spec.activations import ActivationBase, activation_model
from pipeline.spec.layers import Shape

ActivationFactory = Callable[[Any, Shape], nn.Module]
ACTIVATIONS: Registry[ActivationFactory] = Registry("activation")
activation = ACTIVATIONS.register


def _simple(kind: str, cls: type[nn.Module]) -> None:
    activation(kind)(lambda act, shape: cls())


for _kind, _cls in {
    "relu": nn.ReLU,
    "selu": nn.SELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,
}.items():
    _simple(_kind, _cls)


@activation("leaky_relu")
def _leaky_relu(act: Any, shape: Shape) -> nn.Module:
    return nn.LeakyReLU(act.alpha)


@activation("prelu")
def _prelu(act: Any, shape: Shape) -> nn.Module:
    # one slope per channel of (C, H, W) or per unit of (F,): dim 0 without the batch axis
    return nn.PReLU(num_parameters=1 if act.shared else shape[0], init=act.init)


@activation("rrelu")
def _rrelu(act: Any, shape: Shape) -> nn.Module:
    return nn.RReLU(act.lower, act.upper)


@activation("elu")
def _elu(act: Any, shape: Shape) -> nn.Module:
    return nn.ELU(act.alpha)


@activation("gelu")
def _gelu(act: Any, shape: Shape) -> nn.Module:
    return nn.GELU(approximate=act.approximate)


@activation("softmax")
def _softmax(act: Any, shape: Shape) -> nn.Module:
    return nn.Softmax(dim=1)


def activation_module(value: str | ActivationBase | None, shape: Shape) -> nn.Module | None:
    """The module of an ``activation`` field value (name or model) for inputs of ``shape``."""
    act = activation_model(value)
    if act is None:
        return None
    module = ACTIVATIONS[act.type](act, shape)
    if not act.trainable:
        module.requires_grad_(False)
    return module


def _activation_layer(layer: Any, ctx: LayerContext) -> nn.Module:
    return ACTIVATIONS[layer.type](layer, ctx.in_shape)


# every activation kind is also a layer kind
builder(*ACTIVATIONS)(_activation_layer)
