"""Activation modules, by activation kind: used for activation layers and for the
``activation`` field of conv2d, dense and residual layers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from pipeline.model.registry import LAYER_BUILDERS, LayerContext
from pipeline.registry import Builders
from pipeline.spec import activations as A
from pipeline.spec.base import ACTIVATIONS, Shape

ActivationBuilder = Callable[[Any, Shape], nn.Module]
ACTIVATION_BUILDERS: Builders[ActivationBuilder] = Builders(ACTIVATIONS, "activation")
"""Activation schema class -> ``(activation, input shape) -> module``."""


def _simple(kind: type[A.ActivationBase], cls: type[nn.Module]) -> None:
    ACTIVATION_BUILDERS.register(kind)(lambda act, shape: cls())


for _kind, _cls in {
    A.ReLU: nn.ReLU,
    A.SELU: nn.SELU,
    A.SiLU: nn.SiLU,
    A.Tanh: nn.Tanh,
    A.Sigmoid: nn.Sigmoid,
    A.Linear: nn.Identity,
}.items():
    _simple(_kind, _cls)


@ACTIVATION_BUILDERS.register(A.LeakyReLU)
def _leaky_relu(act: A.LeakyReLU, shape: Shape) -> nn.Module:
    return nn.LeakyReLU(act.alpha)


@ACTIVATION_BUILDERS.register(A.PReLU)
def _prelu(act: A.PReLU, shape: Shape) -> nn.Module:
    # one slope per channel of (C, H, W) or per unit of (F,): dim 0 without the batch axis
    return nn.PReLU(num_parameters=1 if act.shared else shape[0], init=act.init)


@ACTIVATION_BUILDERS.register(A.RReLU)
def _rrelu(act: A.RReLU, shape: Shape) -> nn.Module:
    return nn.RReLU(act.lower, act.upper)


@ACTIVATION_BUILDERS.register(A.ELU)
def _elu(act: A.ELU, shape: Shape) -> nn.Module:
    return nn.ELU(act.alpha)


@ACTIVATION_BUILDERS.register(A.GELU)
def _gelu(act: A.GELU, shape: Shape) -> nn.Module:
    return nn.GELU(approximate=act.approximate)


@ACTIVATION_BUILDERS.register(A.Softmax)
def _softmax(act: A.Softmax, shape: Shape) -> nn.Module:
    return nn.Softmax(dim=1)


ACTIVATION_BUILDERS.check_complete()


def activation_module(value: str | A.ActivationBase | None, shape: Shape) -> nn.Module | None:
    """The module of an ``activation`` field value (name or model) for inputs of ``shape``."""
    act = A.activation_model(value)
    if act is None:
        return None
    module = ACTIVATION_BUILDERS[act](act, shape)
    if not act.trainable:
        module.requires_grad_(False)
    return module


def _activation_layer(layer: A.ActivationBase, ctx: LayerContext) -> nn.Module:
    return ACTIVATION_BUILDERS[layer](layer, ctx.in_shape)


# every activation kind is also a layer kind
LAYER_BUILDERS.register(*ACTIVATIONS.kinds.values())(_activation_layer)
