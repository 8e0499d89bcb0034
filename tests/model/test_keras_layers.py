"""The Keras layer kinds users look for by name: their parameter counts are Keras's documented
ones and PyTorch's modules', and each computes what its Keras namesake computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model import build_model, summarize
from pipeline.spec.footprint import footprint


def _one(spec_of, layer: str, shape: list[int]) -> tuple[nn.Module, int]:
    """The built module of a one-layer model, and the parameter count its summary gives."""
    spec = spec_of(f"- {layer}", shape, check=False)
    model = build_model(spec)
    (row,) = summarize(model, spec).rows
    assert footprint(spec.model.layers, tuple(shape)).stored == row.params  # torch-free count
    return model[0], row.params


# (layer on 32 channels, Keras's count, the same thing as PyTorch modules)
KERAS_COUNTS = [
    # SeparableConv2D(64, 3): 3*3*32 depthwise + 32*64 pointwise + 64 bias
    (
        "{type: separable_conv2d, filters: 64, kernel_size: 3}",
        2_400,
        [nn.Conv2d(32, 32, 3, groups=32, bias=False), nn.Conv2d(32, 64, 1)],
    ),
    # DepthwiseConv2D(3, depth_multiplier=2): 3*3*32*2 + 64 bias
    (
        "{type: depthwise_conv2d, kernel_size: 3, depth_multiplier: 2}",
        640,
        [nn.Conv2d(32, 64, 3, groups=32)],
    ),
    # SeparableConv2D(16, 5, depth_multiplier=3, use_bias=False): 5*5*32*3 + 96*16
    (
        "{type: separable_conv2d, filters: 16, kernel_size: 5, depth_multiplier: 3, bias: false}",
        3_936,
        [nn.Conv2d(32, 96, 5, groups=32, bias=False), nn.Conv2d(96, 16, 1, bias=False)],
    ),
    ("{type: group_norm, groups: 8}", 64, [nn.GroupNorm(8, 32)]),
    ("{type: upsample, scale_factor: 2}", 0, [nn.Upsample(scale_factor=2)]),
]


@pytest.mark.parametrize(("layer", "keras", "torch_modules"), KERAS_COUNTS)
def test_parameter_counts_are_keras_s_and_pytorch_s(spec_of, layer, keras, torch_modules):
    _, params = _one(spec_of, layer, [32, 16, 16])
    assert params == keras == sum(p.numel() for m in torch_modules for p in m.parameters())


def test_layer_norm_on_64_channels_has_keras_s_128_parameters(spec_of):
    _, params = _one(spec_of, "{type: layer_norm}", [64, 8, 8])
    assert params == 128 == sum(p.numel() for p in nn.LayerNorm(64).parameters())
    assert _one(spec_of, "{type: layer_norm}", [64])[1] == 128
    assert _one(spec_of, "{type: layer_norm, affine: false}", [64, 8, 8])[1] == 0


def test_layer_norm_normalizes_the_channels_at_each_position_as_keras_on_nhwc(spec_of):
    module, _ = _one(spec_of, "{type: layer_norm}", [6, 5, 4])
    x = torch.randn(3, 6, 5, 4) * 5 + 2
    y = module(x)
    # Keras's LayerNormalization(axis=-1) on the NHWC tensor
    keras = F.layer_norm(x.permute(0, 2, 3, 1), (6,), eps=1e-5).permute(0, 3, 1, 2)
    assert torch.allclose(y, keras, atol=1e-5)
    assert torch.allclose(y.mean(dim=1), torch.zeros(3, 5, 4), atol=1e-5)
    # not PyTorch's nn.LayerNorm([C, H, W]), which mixes positions
    assert not torch.allclose(y, F.layer_norm(x, (6, 5, 4)), atol=1e-2)


def test_group_norm_normalizes_each_group_of_channels(spec_of):
    module, _ = _one(spec_of, "{type: group_norm, groups: 2, eps: 0.001}", [4, 3, 3])
    x = torch.randn(5, 4, 3, 3) * 3 + 1
    y = module(x)
    groups = y.reshape(5, 2, -1)
    assert torch.allclose(groups.mean(-1), torch.zeros(5, 2), atol=1e-5)
    assert torch.allclose(groups.var(-1, unbiased=False), torch.ones(5, 2), atol=1e-3)
    assert torch.allclose(y, F.group_norm(x, 2, eps=1e-3), atol=1e-5)


def test_depthwise_conv_never_mixes_channels(spec_of):
    module, _ = _one(
        spec_of,
        "{type: depthwise_conv2d, kernel_size: 3, depth_multiplier: 2, bias: false, padding: same}",
        [3, 6, 6],
    )
    x = torch.zeros(1, 3, 6, 6)
    x[:, 1] = torch.randn(6, 6)  # only the second input channel
    y = module(x)
    assert y.shape == (1, 6, 6, 6)
    # Keras's order: output channel c * multiplier + m comes from input channel c
    assert y[:, [0, 1, 4, 5]].abs().sum() == 0 and y[:, [2, 3]].abs().sum() > 0


def test_separable_conv_is_depthwise_then_pointwise_with_one_bias(spec_of):
    module, _ = _one(
        spec_of,
        "{type: separable_conv2d, filters: 5, kernel_size: 3, depth_multiplier: 2, stride: 2, "
        "padding: same, bias_init: {type: constant, value: 0.5}}",
        [3, 8, 8],
    )
    depthwise, pointwise = module.depthwise, module.pointwise
    assert depthwise.bias is None and torch.equal(pointwise.bias, torch.full((5,), 0.5))
    # the same as one full convolution whose kernel is the pointwise mix of the depthwise ones
    d = depthwise.weight.reshape(3, 2, 3, 3)  # (input channel, multiplier, kh, kw)
    p = pointwise.weight.reshape(5, 3, 2)  # (filter, input channel, multiplier)
    full = torch.einsum("ocm,cmhw->ochw", p, d)
    x = torch.randn(2, 3, 8, 8)
    pad = (0, 1, 0, 1)  # TF's 'same' for 8 -> 4 with stride 2: the odd pixel bottom/right
    expected = F.conv2d(F.pad(x, pad), full, pointwise.bias, stride=2)
    y = module(x)
    assert y.shape == (2, 5, 4, 4)
    assert torch.allclose(y, expected, atol=1e-5)


def test_separable_conv_initializes_both_kernels_from_kernel_init(spec_of):
    module, _ = _one(
        spec_of,
        "{type: separable_conv2d, filters: 4, kernel_size: 3, kernel_init: ones}",
        [2, 5, 5],
    )
    assert torch.equal(module.depthwise.weight, torch.ones(2, 1, 3, 3))
    assert torch.equal(module.pointwise.weight, torch.ones(4, 2, 1, 1))


def test_upsample_nearest_repeats_pixels_and_bilinear_interpolates_as_keras(spec_of):
    nearest, _ = _one(spec_of, "{type: upsample, scale_factor: [2, 3]}", [2, 3, 4])
    x = torch.randn(1, 2, 3, 4)
    y = nearest(x)
    assert y.shape == (1, 2, 6, 12)
    assert torch.equal(y, x.repeat_interleave(2, dim=2).repeat_interleave(3, dim=3))
    bilinear, _ = _one(spec_of, "{type: upsample, size: [7, 9], mode: bilinear}", [2, 3, 4])
    z = bilinear(x)
    assert z.shape == (1, 2, 7, 9)
    # half-pixel centres (TF2's resize, Keras's UpSampling2D), not corner-aligned
    expected = F.interpolate(x, size=(7, 9), mode="bilinear", align_corners=False)
    assert torch.allclose(z, expected)
    assert not torch.allclose(z, F.interpolate(x, (7, 9), mode="bilinear", align_corners=True))
