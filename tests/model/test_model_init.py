"""Initializers draw the variances Keras's do, from the right fans."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.model import build_model
from pipeline.model.init import TRUNCATED_STD, fans

# dense 1000 -> 250: fan_in 1000, fan_out 250, fan_avg 625 (fans differ by 4x)
DENSE_IN, DENSE_OUT = 1000, 250
# conv 16 -> 64, 3x3: fan_in 144, fan_out 576, fan_avg 360
CONV_IN, CONV_OUT = 16, 64
FANS = {
    "dense": {"fan_in": 1000, "fan_out": 250, "fan_avg": 625},
    "conv": {"fan_in": 144, "fan_out": 576, "fan_avg": 360},
}
# relative tolerance of the sample variance: ~10 standard errors for the 250k dense weights,
# ~4 for the 9,216 conv weights; the wrong fan is off by 1.6x or more
TOLERANCE = {"dense": 0.03, "conv": 0.06}
PRESETS = {"he": (2.0, "fan_in"), "glorot": (1.0, "fan_avg"), "lecun": (1.0, "fan_in")}


def kernel_of(
    spec_of, kind: str, kernel_init: str, bias_init: str | None = None, extra: str = ""
) -> torch.nn.Module:
    bias = f", bias_init: {bias_init}" if bias_init else ""
    if kind == "dense":
        spec = spec_of(
            f"- {{type: dense, units: {DENSE_OUT}, kernel_init: {kernel_init}{bias}}}",
            [DENSE_IN],
            check=False,
            extra=extra,
        )
    else:
        spec = spec_of(
            f"- {{type: conv2d, filters: {CONV_OUT}, kernel_size: 3, "
            f"kernel_init: {kernel_init}{bias}}}",
            [CONV_IN, 8, 8],
            check=False,
            extra=extra,
        )
    return build_model(spec)[0].core


def test_fans_follow_keras():
    assert fans(torch.empty(DENSE_OUT, DENSE_IN)) == (1000, 250)
    assert fans(torch.empty(CONV_OUT, CONV_IN, 3, 3)) == (144, 576)
    assert fans(torch.empty(32, 4, 3, 3)) == (36, 288)  # groups: in/groups per filter
    assert fans(torch.empty(7)) == (7, 7)


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("dist", ["normal", "truncated_normal", "uniform"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_variance(spec_of, kind, dist, preset):
    scale, mode = PRESETS[preset]
    w = kernel_of(spec_of, kind, f"{preset}_{dist}").weight.detach()
    want = scale / FANS[kind][mode]
    assert w.var().item() == pytest.approx(want, rel=TOLERANCE[kind])
    assert abs(w.mean().item()) < 0.05 * math.sqrt(want)


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("mode", ["fan_out", "fan_avg"])
def test_variance_scaling_modes(spec_of, kind, mode):
    init = f"{{type: variance_scaling, scale: 3.0, mode: {mode}, distribution: normal}}"
    w = kernel_of(spec_of, kind, init).weight.detach()
    assert w.var().item() == pytest.approx(3.0 / FANS[kind][mode], rel=TOLERANCE[kind])


def test_truncated_normal_is_cut_at_two_untruncated_stds(spec_of):
    w = kernel_of(spec_of, "dense", "he_truncated_normal").weight.detach()
    bound = 2 * math.sqrt(2.0 / DENSE_IN) / TRUNCATED_STD
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.99 * bound  # cut there, not a narrower normal
    plain = kernel_of(spec_of, "dense", "he_normal").weight.detach()
    assert (plain.abs() > 2 * math.sqrt(2.0 / DENSE_IN)).any()  # the plain normal is not cut


def test_uniform_bound(spec_of):
    w = kernel_of(spec_of, "dense", "glorot_uniform").weight.detach()
    limit = math.sqrt(3.0 / 625)
    assert w.abs().max().item() <= limit
    assert w.abs().max().item() > 0.99 * limit


def test_orthogonal_gain(spec_of):
    w = kernel_of(spec_of, "dense", "{type: orthogonal, gain: 2.0}").weight.detach()
    assert torch.allclose(w @ w.T, 4.0 * torch.eye(DENSE_OUT), atol=1e-4)


def test_biases_zero_by_default_and_settable(spec_of):
    assert torch.all(kernel_of(spec_of, "dense", "he_normal").bias == 0)
    assert torch.all(
        kernel_of(spec_of, "conv", "he_normal", "{type: constant, value: 0.5}").bias == 0.5
    )
    b = kernel_of(spec_of, "dense", "he_normal", "{type: uniform, low: 1.0, high: 2.0}").bias
    assert b.min() >= 1.0 and b.max() <= 2.0 and b.std() > 0.1


def test_plain_normal_and_uniform(spec_of):
    w = kernel_of(spec_of, "dense", "{type: normal, mean: 1.0, std: 0.1}").weight.detach()
    assert w.mean().item() == pytest.approx(1.0, abs=0.002)
    assert w.std().item() == pytest.approx(0.1, rel=0.02)
    w = kernel_of(spec_of, "dense", "{type: uniform, low: -0.5, high: 0.0}").weight.detach()
    assert w.min().item() >= -0.5 and w.max().item() <= 0.0
    assert w.var().item() == pytest.approx(0.25 / 12, rel=0.03)


def test_torch_default_keeps_pytorchs_init(spec_of):
    extra = "init: {kernel: torch_default, bias: torch_default}"
    core = kernel_of(spec_of, "dense", "torch_default", extra=extra)
    # kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)), variance 1 / (3 fan_in)
    assert core.weight.var().item() == pytest.approx(1 / (3 * DENSE_IN), rel=0.03)
    assert core.bias.abs().max().item() <= 1 / math.sqrt(DENSE_IN)
    assert core.bias.std().item() > 0  # drawn, not zeroed


def test_precedence_layer_then_kind_defaults_then_spec(spec_of):
    spec = spec_of(
        """
        - {type: conv2d, filters: 4, kernel_size: 1}
        - {type: conv2d, filters: 4, kernel_size: 1, kernel_init: ones}
        """,
        [3, 4, 4],
        check=False,
        extra="init: {kernel: {type: constant, value: 0.5}, bias: ones}",
        defaults="{conv2d: {kernel_init: {type: constant, value: -1.0}}}",
    )
    model = build_model(spec)
    assert torch.all(model.conv2d_1.core.weight == -1.0)  # kind default beats init.kernel
    assert torch.all(model.conv2d_2.core.weight == 1.0)  # the layer's own beats the default
    assert torch.all(model.conv2d_1.core.bias == 1.0)  # init.bias
    spec = spec_of(
        """
        - {type: dense, units: 250}
        - {type: dense, units: 250, kernel_init: {type: constant, value: 0.25}}
        """,
        [1000],
        check=False,
        extra="init: {kernel: {type: constant, value: 0.5}}",
    )
    model = build_model(spec)
    assert torch.all(model.dense_1.core.weight == 0.5)  # init.kernel
    assert torch.all(model.dense_1.core.bias == 0.0)  # init.bias default: zeros
    assert torch.all(model.dense_2.core.weight == 0.25)
