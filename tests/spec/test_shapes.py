"""Shape problems are found without torch and point at the layer's line."""

from tests.spec.conftest import BASE


def shape_error(problems, text):
    errors = [p for p in problems(text) if p.severity == "error"]
    assert len(errors) == 1, [p.format() for p in errors]
    return errors[0]


def test_feature_map_collapsing_to_zero_points_at_the_layer(problems):
    layers = "    - {type: max_pool2d, pool_size: 2}\n" * 5
    text = BASE.replace("    - {type: flatten}\n", layers + "    - {type: flatten}\n")
    p = shape_error(problems, text)
    assert p.code == "shapes" and p.path == ("model", "layers", 5) and p.mark.line == 10
    assert "collapses to 0x0" in p.message and "(8, 1, 1)" in p.message


def test_conv_after_flatten_is_an_error_with_a_hint(problems):
    text = BASE.replace(
        "    - {type: dense, units: 10}",
        "    - {type: conv2d, filters: 4, kernel_size: 1}\n    - {type: dense, units: 10}",
    )
    p = shape_error(problems, text)
    assert p.mark.line == 7 and "needs a feature map" in p.message and "(5408,)" in p.message


def test_dense_on_a_feature_map_suggests_flatten(problems):
    p = shape_error(problems, BASE.replace("    - {type: flatten}\n", ""))
    assert p.mark.line == 6 and "flatten" in p.hint


def test_residual_whose_shapes_disagree(problems):
    text = BASE.replace(
        "    - {type: flatten}\n",
        "    - type: residual\n      shortcut: identity\n      layers:\n"
        "        - {type: conv2d, filters: 16, kernel_size: 3, padding: same}\n"
        "    - {type: flatten}\n",
    )
    p = shape_error(problems, text)
    assert p.path == ("model", "layers", 1) and "shapes disagree" in p.message
    assert "projection" in p.hint


def test_residual_projection_and_same_padding_pass(write):
    from pipeline.spec import load_spec

    text = BASE.replace(
        "    - {type: flatten}\n",
        "    - type: residual\n      layers:\n"
        "        - {type: conv2d, filters: 16, kernel_size: 3, padding: same,"
        " stride: 2}\n    - {type: flatten}\n",
    )
    spec = load_spec(write(text))
    from pipeline.spec.shapes import infer_shapes

    assert infer_shapes(spec.model.layers, (1, 28, 28), ())[1] == (16, 13, 13)


def test_vgg16_needs_32_pixels(problems):
    text = (
        "name: v\ndata: {dataset: cifar10, image_size: 24}\nmodel:\n  layers:\n"
        "    - {type: backbone, arch: vgg16}\n    - {type: flatten}\n"
        "    - {type: dense, units: 10}\n"
    )
    p = shape_error(problems, text)
    assert p.mark.line == 5 and "at least 32x32" in p.message


def test_channels_last_input_shape_is_caught(problems):
    text = BASE.replace("model:\n", "model:\n  input_shape: [28, 28, 1]\n")
    errors = [p for p in problems(text) if p.code == "shapes"]
    assert errors and "channels-last" in errors[0].message and "[1, 28, 28]" in errors[0].hint
