"""Weight initialization: one function per initializer kind, fans computed as Keras does.

Only conv2d and dense layers built from the spec (and residual projections) are initialized
here; backbones and reused layers keep the weights they come with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pipeline.model.errors import ModelBuildError
from pipeline.registry import Builders
from pipeline.spec import init as spec_init
from pipeline.spec.base import INITIALIZERS

Initializer = Callable[[Any, torch.Tensor, torch.Generator], None]
INITIALIZER_BUILDERS: Builders[Initializer] = Builders(INITIALIZERS, "initializer")
"""Initializer schema class -> ``(initializer, tensor, generator) -> None``, filling in place."""

# Keras's truncated normal: the std of a unit normal cut at +-2 is this, so dividing by it keeps
# the variance at scale/fan after truncation.
TRUNCATED_STD = 0.87962566103423978


def fans(tensor: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) like Keras: a conv kernel (out, in/groups, kh, kw) has fan_in =
    in/groups * kh * kw and fan_out = out * kh * kw; a dense weight (out, in) has in and out;
    a bias (n,) has n for both."""
    if tensor.dim() < 2:
        return tensor.numel(), tensor.numel()
    receptive = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _normal(t: torch.Tensor, var: float, g: torch.Generator) -> None:
    t.normal_(0.0, math.sqrt(var), generator=g)


def _truncated_normal(t: torch.Tensor, var: float, g: torch.Generator) -> None:
    std = math.sqrt(var) / TRUNCATED_STD
    nn.init.trunc_normal_(t, 0.0, std, -2 * std, 2 * std, generator=g)


def _uniform(t: torch.Tensor, var: float, g: torch.Generator) -> None:
    limit = math.sqrt(3.0 * var)
    t.uniform_(-limit, limit, generator=g)


DISTRIBUTIONS: dict[str, Callable[[torch.Tensor, float, torch.Generator], None]] = {
    "normal": _normal,
    "truncated_normal": _truncated_normal,
    "uniform": _uniform,
}


@INITIALIZER_BUILDERS.register(spec_init.VarianceScaling)
def _variance_scaling(init: spec_init.VarianceScaling, t: torch.Tensor, g: torch.Generator) -> None:
    fan_in, fan_out = fans(t)
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[init.mode]
    DISTRIBUTIONS[init.distribution](t, init.scale / max(1.0, fan), g)


@INITIALIZER_BUILDERS.register(spec_init.Orthogonal)
def _orthogonal(init: spec_init.Orthogonal, t: torch.Tensor, g: torch.Generator) -> None:
    if t.dim() < 2:
        raise ModelBuildError("orthogonal initialization needs a matrix; it cannot init biases")
    nn.init.orthogonal_(t, gain=init.gain, generator=g)


@INITIALIZER_BUILDERS.register(spec_init.Constant)
def _constant(init: spec_init.Constant, t: torch.Tensor, g: torch.Generator) -> None:
    t.fill_(init.value)


@INITIALIZER_BUILDERS.register(spec_init.Normal)
def _plain_normal(init: spec_init.Normal, t: torch.Tensor, g: torch.Generator) -> None:
    t.normal_(init.mean, init.std, generator=g)


@INITIALIZER_BUILDERS.register(spec_init.Uniform)
def _plain_uniform(init: spec_init.Uniform, t: torch.Tensor, g: torch.Generator) -> None:
    t.uniform_(init.low, init.high, generator=g)


@INITIALIZER_BUILDERS.register(spec_init.TorchDefault)
def _torch_default(init: spec_init.TorchDefault, t: torch.Tensor, g: torch.Generator) -> None:
    """Keep what the module's constructor drew."""


INITIALIZER_BUILDERS.check_complete()


def apply_init(
    value: str | spec_init.InitBase, tensor: torch.Tensor, generator: torch.Generator
) -> None:
    """Fill ``tensor`` in place with the initializer given by preset name or model."""
    init = spec_init.init_model(value)
    fn = INITIALIZER_BUILDERS[init]
    if tensor.is_meta:  # shapes only: nothing to fill
        return
    with torch.no_grad():
        fn(init, tensor, generator)


def init_weighted(core: nn.Module, layer: Any, build: Any) -> None:
    """Initialize a conv/linear ``core`` of ``layer``: the layer's own kernel_init/bias_init
    (kind defaults are already merged in by the loader), else the spec's ``init`` section."""
    kernel = layer.kernel_init if layer.kernel_init is not None else build.spec.init.kernel
    apply_init(kernel, core.weight, build.generator)
    if core.bias is not None:
        bias = layer.bias_init if layer.bias_init is not None else build.spec.init.bias
        apply_init(bias, core.bias, build.generator)
