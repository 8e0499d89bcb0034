"""The example specs reproduce the seeds' Keras summary tables to the parameter."""

from pathlib import Path

import pytest

from pipeline.model.summary import summarize
from pipeline.spec import load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"

# spec -> (total, non-trainable, output shape of the first layer or None)
FIGURES = {
    "mnist_convnet": (93_322, 0),
    "cats_dogs_convnet": (3_453_121, 0),
    "cats_dogs_dropout_augment": (3_453_121, 0),
    "fashion_bn_mlp": (271_346, 2_368),
    "fashion_bn_before_activation": (270_946, 2_368),
    "fashion_dropout_mlp": (266_610, 0),
    "leaky_relu_mlp": (911, 0),
    "prelu_mlp": (961, 0),
    "selu_mlp": (911, 0),
    # the conv base is frozen in the first phase, so it counts as non-trainable (as in Keras)
    "vgg16_transfer": (16_812_353, 14_714_688),
}


@pytest.mark.parametrize(("name", "figures"), FIGURES.items(), ids=list(FIGURES))
def test_summary_matches_the_seeds(name, figures):
    summary = summarize(load_spec(SPECS / f"{name}.yaml"))
    assert (summary.total_params, summary.non_trainable_params) == figures
    assert f"Total params: {figures[0]:,}" in summary.table()


def test_mnist_convnet_shapes_follow_the_keras_table():
    rows = summarize(load_spec(SPECS / "mnist_convnet.yaml")).rows
    assert [r.output_shape for r in rows] == [
        (32, 26, 26),
        (32, 13, 13),
        (64, 11, 11),
        (64, 5, 5),
        (64, 3, 3),
        (576,),
        (64,),
        (10,),
    ]
    assert [r.params for r in rows] == [320, 0, 18_496, 0, 36_928, 0, 36_928, 650]


def test_vgg16_conv_base_on_150_pixels():
    rows = summarize(load_spec(SPECS / "vgg16_transfer.yaml")).rows
    assert (rows[0].output_shape, rows[0].params) == ((512, 4, 4), 14_714_688)
    assert rows[1].output_shape == (8192,) and rows[2].params == 2_097_408
