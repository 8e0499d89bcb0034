"""Parameter counts and shapes agree with the Keras summaries of the seed notebooks."""

from __future__ import annotations

import pytest
import torch

from pipeline.model import build_model, summarize
from pipeline.model.summary import count_params
from tests.model.specs import (
    CATS_DOGS,
    CATS_DOGS_DATA,
    FASHION_BN_MLP,
    LEAKY_MLP,
    MNIST_CONVNET,
    PRELU_MLP,
    SELU_MLP,
    VGG_BASE,
    VGG_HEAD,
)


def test_mnist_convnet_has_93322_params_on_cpu(spec_of):
    model = build_model(spec_of(MNIST_CONVNET, [1, 28, 28]))
    assert sum(p.numel() for p in model.parameters()) == 93_322
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_cats_dogs_convnet(spec_of):
    spec = spec_of(CATS_DOGS, [3, 150, 150], data=CATS_DOGS_DATA)
    summary = summarize(build_model(spec, device="meta"), spec)
    assert summary.total_params == 3_453_121
    flatten = next(r for r in summary.rows if r.name == "flatten_1")
    assert flatten.output_shape == (6272,)
    assert summary.rows[-1].output_shape == (1,)


def test_fashion_batchnorm_mlp_counts_moving_stats_as_non_trainable(spec_of):
    model = build_model(spec_of(FASHION_BN_MLP, [1, 28, 28], data="{dataset: fashion_mnist}"))
    trainable, frozen = count_params(model)
    assert trainable + frozen == 271_346
    assert frozen == 2_368


@pytest.mark.parametrize(("layers", "total"), [(LEAKY_MLP, 911), (PRELU_MLP, 961), (SELU_MLP, 911)])
def test_small_mlps(spec_of, layers, total):
    model = build_model(spec_of(layers, [8], check=False))
    assert sum(p.numel() for p in model.parameters()) == total
    assert model(torch.zeros(4, 8)).shape == (4, 1)


def test_vgg16_base_on_150px(spec_of):
    spec = spec_of(VGG_BASE, [3, 150, 150], data=CATS_DOGS_DATA, check=False)
    summary = summarize(build_model(spec, device="meta"), spec)
    assert summary.total_params == 14_714_688
    assert summary.rows[0].output_shape == (512, 4, 4)


def test_vgg16_with_dense_head(spec_of):
    spec = spec_of(VGG_HEAD, [3, 150, 150], data=CATS_DOGS_DATA)
    summary = summarize(build_model(spec, device="meta"), spec)
    assert summary.total_params == 16_812_353
    assert summary.trainable_params == 16_812_353
