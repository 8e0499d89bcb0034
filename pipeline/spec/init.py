"""Weight initializers: one general variance-scaling mechanism with the usual presets on top."""

from __future__ import annotations

from typing import Literal

from pipeline.spec.base import INITIALIZERS, Kind, PositiveFloat, StrictModel

Distribution = Literal["normal", "truncated_normal", "uniform"]
FanMode = Literal["fan_in", "fan_out", "fan_avg"]


class InitBase(Kind):
    pass


@INITIALIZERS.register
class VarianceScaling(InitBase):
    """Draw with variance scale/fan (Keras's VarianceScaling); LeCun, Glorot and He are presets.

    ``truncated_normal`` cuts at two standard deviations and rescales so the variance is still
    scale/fan (what Keras's ``*_normal`` presets draw); ``normal`` is the plain normal PyTorch's
    ``kaiming_normal_``/``xavier_normal_`` draw. Both have the same variance.
    """

    type: Literal["variance_scaling"] = "variance_scaling"
    scale: PositiveFloat = 1.0
    """Target variance times fan: 1 for LeCun and Glorot, 2 for He."""
    mode: FanMode = "fan_in"
    """Which fan divides the scale: inputs, outputs, or their average (Glorot)."""
    distribution: Distribution = "truncated_normal"


@INITIALIZERS.register
class Orthogonal(InitBase):
    """A (semi-)orthogonal matrix times ``gain`` (Saxe et al.)."""

    type: Literal["orthogonal"] = "orthogonal"
    gain: PositiveFloat = 1.0


@INITIALIZERS.register
class Constant(InitBase):
    type: Literal["constant"] = "constant"
    value: float = 0.0


@INITIALIZERS.register
class Normal(InitBase):
    type: Literal["normal"] = "normal"
    mean: float = 0.0
    std: PositiveFloat = 0.05


@INITIALIZERS.register
class Uniform(InitBase):
    type: Literal["uniform"] = "uniform"
    low: float = -0.05
    high: float = 0.05


@INITIALIZERS.register
class TorchDefault(InitBase):
    """Leave the weights as PyTorch's layer constructors draw them (kaiming_uniform, a=sqrt(5))."""

    type: Literal["torch_default"] = "torch_default"


# name -> (scale, mode) of the variance-scaling presets; each comes in the three distributions.
VARIANCE_PRESETS: dict[str, tuple[float, FanMode]] = {
    "lecun": (1.0, "fan_in"),
    "glorot": (1.0, "fan_avg"),
    "xavier": (1.0, "fan_avg"),
    "he": (2.0, "fan_in"),
    "kaiming": (2.0, "fan_in"),
}
PRESETS: dict[str, InitBase] = {
    f"{prefix}_{dist}": VarianceScaling(scale=scale, mode=mode, distribution=dist)
    for prefix, (scale, mode) in VARIANCE_PRESETS.items()
    for dist in ("normal", "truncated_normal", "uniform")
} | {
    "orthogonal": Orthogonal(),
    "zeros": Constant(value=0.0),
    "ones": Constant(value=1.0),
    "torch_default": TorchDefault(),
}

InitName = Literal[tuple(sorted(PRESETS))]  # type: ignore[valid-type]
InitField = InitName | INITIALIZERS.union()
"""An initializer by preset name (``he_normal``) or as a mapping (``{type: ...}``)."""


def init_model(value: str | InitBase) -> InitBase:
    """The initializer model for a field value given by preset name or as a model."""
    return PRESETS[value] if isinstance(value, str) else value


class InitSection(StrictModel):
    """Model-wide initialization; a layer kind's ``defaults`` and a layer's own fields override it.

    The default is Keras's (glorot_uniform weights, zero biases), so specs transcribed from Keras
    train as they did there. ``torch_default`` keeps PyTorch's own initialization instead.
    """

    kernel: InitField = "glorot_uniform"
    """Initializer of conv and dense weights."""
    bias: InitField = "zeros"
    """Initializer of conv and dense biases."""
