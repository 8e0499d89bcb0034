"""The Keras-style summary table."""

from __future__ import annotations

from pipeline.model import build_model, summarize
from tests.model.specs import FASHION_BN_MLP, MNIST_CONVNET


def test_mnist_convnet_table(spec_of):
    spec = spec_of(MNIST_CONVNET, [1, 28, 28])
    summary = summarize(build_model(spec, device="meta", load_weights=False), spec)
    text = summary.table()
    assert 'Model: "t"' in text
    assert "Total params: 93,322" in text
    assert "Trainable params: 93,322" in text
    assert "Non-trainable params: 0" in text
    lines = text.splitlines()
    assert lines[2].split() == ["Layer", "(type)", "Output", "Shape", "Param", "#", "MACs"]
    conv = next(line for line in lines if line.startswith(" conv2d_1 "))
    assert conv.split() == ["conv2d_1", "(Conv2D)", "(None,", "32,", "26,", "26)", "320", "194,688"]
    dense = next(line for line in lines if line.startswith(" dense_2 "))
    assert "(None, 10)" in dense and "650" in dense
    # conv: out_h*out_w*out_ch*in_ch*kh*kw; dense: in*out
    macs = 26 * 26 * 32 * 9 + 11 * 11 * 64 * 32 * 9 + 3 * 3 * 64 * 64 * 9 + 576 * 64 + 64 * 10
    assert summary.total_macs == macs
    assert f"Total MACs per sample: {macs:,}" in text
    assert [r.params for r in summary.rows] == [320, 0, 18_496, 0, 36_928, 0, 36_928, 650]


def test_summarize_builds_from_a_spec_alone(spec_of):
    spec = spec_of(MNIST_CONVNET, [1, 28, 28])
    assert "Total params: 93,322" in summarize(spec).table()


def test_batch_norm_statistics_are_non_trainable(spec_of):
    spec = spec_of(FASHION_BN_MLP, [1, 28, 28], data="{dataset: fashion_mnist}")
    summary = summarize(build_model(spec), spec)
    text = summary.table()
    assert "Total params: 271,346" in text
    assert "Non-trainable params: 2,368" in text
    assert "Trainable params: 268,978" in text
    bn = summary.rows[1]
    assert (bn.name, bn.type, bn.trainable, bn.non_trainable) == (
        "batch_norm_1",
        "BatchNorm",
        2 * 784,
        2 * 784,
    )


def test_frozen_layers_count_as_non_trainable(spec_of):
    spec = spec_of(
        MNIST_CONVNET.replace(
            "filters: 32, kernel_size: 3", "filters: 32, kernel_size: 3, trainable: false"
        ),
        [1, 28, 28],
    )
    summary = summarize(build_model(spec, device="meta"), spec)
    assert summary.non_trainable_params == 320
    assert summary.rows[0].trainable == 0 and summary.rows[0].non_trainable == 320
    assert summary.total_params == 93_322


def test_residual_rows_expand(spec_of):
    spec = spec_of(
        """
        - {type: conv2d, filters: 8, kernel_size: 3, padding: same}
        - type: residual
          layers: [{type: conv2d, filters: 16, kernel_size: 3, stride: 2, padding: same}]
        - {type: global_avg_pool2d}
        - {type: dense, units: 10}
        """,
        [1, 28, 28],
    )
    model = build_model(spec, device="meta")
    rows = {r.name: r for r in summarize(model, spec, expand=True).rows}
    assert rows["residual_1"].output_shape == (16, 14, 14)
    assert rows["residual_1.conv2d_2"].params == 16 * 8 * 9 + 16
    # the projection: 1x1 conv without bias + batch norm (gamma, beta, mean, var)
    assert rows["residual_1.shortcut"].params == 16 * 8 + 4 * 16
    assert rows["residual_1"].params == 16 * 8 * 9 + 16 + 16 * 8 + 4 * 16
    assert model.layer_modules()["conv2d_2"] is model.residual_1.branch.conv2d_2


def test_nested_composites_expand_and_their_layers_are_found_by_name(spec_of):
    spec = spec_of(
        """
        - {type: conv2d, filters: 8, kernel_size: 3, padding: same}
        - type: residual
          layers:
            - type: residual
              layers: [{type: conv2d, filters: 8, kernel_size: 3, padding: same, name: deep}]
            - {type: relu}
        - {type: flatten}
        - {type: dense, units: 10}
        """,
        [1, 28, 28],
    )
    model = build_model(spec, device="meta")
    rows = {r.name: r for r in summarize(model, spec, expand=True).rows}
    assert list(rows) == [
        "conv2d_1",
        "residual_1",
        "residual_1.residual_2",
        "residual_1.relu_1",
        "residual_1.shortcut",
        "flatten_1",
        "dense_1",
    ]
    assert rows["residual_1.residual_2"].output_shape == (8, 28, 28)
    assert rows["residual_1.residual_2"].params == 8 * 8 * 9 + 8
    layers = model.layer_modules()
    assert layers["deep"] is model.residual_1.branch.residual_2.branch.deep
    assert layers["relu_1"] is model.residual_1.branch.relu_1
