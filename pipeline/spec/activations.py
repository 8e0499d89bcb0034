"""Activation functions: each is a layer kind and also a value of a layer's ``activation`` field."""

from __future__ import annotations

from typing import Literal

from pipeline.spec.base import ACTIVATIONS, LAYERS, LayerKind, NonNegativeFloat


class ActivationBase(LayerKind):
    name: str | None = None
    """Layer name when used as a layer; default ``<type>_<n>`` (Keras-style, 1-based per kind)."""
    trainable: bool = True
    """Whether this layer's parameters (if any, e.g. PReLU's slopes) are trained."""


def _activation(cls: type[ActivationBase]) -> type[ActivationBase]:
    return LAYERS.register(ACTIVATIONS.register(cls))


@_activation
class ReLU(ActivationBase):
    """max(0, x)."""

    type: Literal["relu"] = "relu"


@_activation
class LeakyReLU(ActivationBase):
    """max(alpha*x, x). Keras calls alpha ``negative_slope`` (Keras default 0.3, PyTorch 0.01)."""

    type: Literal["leaky_relu"] = "leaky_relu"
    alpha: NonNegativeFloat = 0.01
    """Slope for x < 0."""


@_activation
class PReLU(ActivationBase):
    """Leaky ReLU whose slope is learned: one per channel (or unit), or one shared."""

    type: Literal["prelu"] = "prelu"
    shared: bool = False
    """One slope for the whole layer instead of one per channel (dense: per unit, as Keras;
    Keras gives feature maps one per element unless shared_axes is set)."""
    init: float = 0.25
    """Initial slope (PyTorch's default; Keras starts at 0)."""


@_activation
class RReLU(ActivationBase):
    """Randomized leaky ReLU: slope drawn from U(lower, upper) in training, their mean in eval."""

    type: Literal["rrelu"] = "rrelu"
    lower: NonNegativeFloat = 1.0 / 8
    upper: NonNegativeFloat = 1.0 / 3


@_activation
class ELU(ActivationBase):
    """x if x > 0 else alpha*(exp(x) - 1)."""

    type: Literal["elu"] = "elu"
    alpha: NonNegativeFloat = 1.0


@_activation
class SELU(ActivationBase):
    """Scaled ELU; self-normalizing with lecun_normal init, standardized inputs, a plain stack."""

    type: Literal["selu"] = "selu"


@_activation
class GELU(ActivationBase):
    """Gaussian error linear unit."""

    type: Literal["gelu"] = "gelu"
    approximate: Literal["none", "tanh"] = "none"


@_activation
class SiLU(ActivationBase):
    """x * sigmoid(x), also called swish."""

    type: Literal["silu"] = "silu"


@_activation
class Tanh(ActivationBase):
    type: Literal["tanh"] = "tanh"


@_activation
class Sigmoid(ActivationBase):
    """As the last layer with one unit: binary classification (the loss takes logits)."""

    type: Literal["sigmoid"] = "sigmoid"


@_activation
class Softmax(ActivationBase):
    """As the last layer: class probabilities (the loss takes the logits before it)."""

    type: Literal["softmax"] = "softmax"


@_activation
class Linear(ActivationBase):
    """The identity; Keras's ``activation='linear'``."""

    type: Literal["linear"] = "linear"


ActivationName = Literal[tuple(ACTIVATIONS.names())]  # type: ignore[valid-type]
ActivationField = ActivationName | ACTIVATIONS.union()
"""An activation by name (``relu``) or with parameters (``{type: leaky_relu, alpha: 0.2}``)."""


def activation_model(value: str | ActivationBase | None) -> ActivationBase | None:
    """The activation model for a field value given by name or as a model."""
    if value is None or isinstance(value, ActivationBase):
        return value
    return ACTIVATIONS.kinds[value]()
