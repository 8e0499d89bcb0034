"""The new layer kinds and the branch composite, torch-free: names, shapes, blocks and defaults
inside branches, and located errors for what does not fit."""

from __future__ import annotations

from pipeline.spec import load_spec
from pipeline.spec.shapes import infer_shapes, named_layers

INCEPTION = """\
name: t
data: {dataset: mnist}
model:
  defaults: {conv2d: {padding: same, activation: relu}}
  blocks:
    tower:
      - {type: conv2d, filters: 4, kernel_size: 1, name: reduce}
      - {type: conv2d, filters: 6, kernel_size: 3}
  layers:
    - {type: conv2d, filters: 8, kernel_size: 3}
    - type: branch
      branches:
        - [{type: conv2d, filters: 2, kernel_size: 1}]
        - [{type: block, block: tower}]
        - [{type: max_pool2d, pool_size: 3, stride: 1, padding: same}]
    - {type: group_norm, groups: 4}
    - {type: separable_conv2d, filters: 8, kernel_size: 3, stride: 2, padding: same}
    - {type: depthwise_conv2d, kernel_size: 3, depth_multiplier: 2}
    - {type: upsample, scale_factor: 2}
    - {type: layer_norm}
    - {type: flatten}
    - {type: dense, units: 10}
"""


def test_branch_layers_are_named_in_order_and_get_blocks_and_defaults(write):
    spec = load_spec(write(INCEPTION))
    named = [(path, name) for path, name, _ in named_layers(spec.model.layers)]
    assert named[:6] == [
        ((0,), "conv2d_1"),
        ((1,), "branch_1"),
        ((1, "branches", 0, 0), "conv2d_2"),
        ((1, "branches", 1, 0), "tower_reduce"),
        ((1, "branches", 1, 1), "conv2d_4"),
        ((1, "branches", 2, 0), "max_pool2d_1"),
    ]
    tower = spec.model.layers[1].branches[1]
    assert [layer.padding for layer in tower] == ["same", "same"]  # defaults reach branches


def test_shapes_through_a_branch_and_the_new_kinds(write):
    spec = load_spec(write(INCEPTION))
    assert infer_shapes(spec.model.layers, (1, 28, 28), ()) == [
        (8, 28, 28),
        (2 + 6 + 8, 28, 28),  # concatenated channels
        (16, 28, 28),
        (8, 14, 14),  # separable, strided 'same'
        (16, 12, 12),  # depthwise x2, valid 3x3
        (16, 24, 24),
        (16, 24, 24),
        (16 * 24 * 24,),
        (10,),
    ]


def test_flat_branches_concatenate_their_features(write):
    text = """\
    name: t
    data: {dataset: mnist}
    model:
      layers:
        - {type: flatten}
        - type: branch
          branches:
            - [{type: dense, units: 3}]
            - [{type: dense, units: 5}, {type: layer_norm}]
        - {type: dense, units: 10}
    """
    spec = load_spec(write(text))
    assert infer_shapes(spec.model.layers, (1, 28, 28), ())[1] == (8,)


def test_a_repeated_block_holding_a_branch_prefixes_the_names_inside_it(write):
    text = INCEPTION.replace(
        "    - {type: group_norm, groups: 4}\n",
        "    - {type: group_norm, groups: 4}\n    - {type: block, block: fork, repeat: 2}\n",
    ).replace(
        "  blocks:\n",
        "  blocks:\n    fork:\n      - type: branch\n        merge: add\n"
        "        branches: [[{type: conv2d, filters: 16, kernel_size: 1, name: a}], []]\n",
    )
    spec = load_spec(write(text))
    names = [name for _, name, _ in named_layers(spec.model.layers)]
    assert {"fork1_a", "fork2_a"} <= set(names)


def _errors(problems, text):
    return [p for p in problems(text) if p.severity == "error"]


def test_group_norm_groups_that_do_not_divide_list_the_divisors(problems):
    text = INCEPTION.replace("{type: group_norm, groups: 4}", "{type: group_norm, groups: 5}")
    (err,) = _errors(problems, text)
    assert err.path == ("model", "layers", 2, "groups")
    assert "groups=5 does not divide the 16 channels" in err.message
    assert err.hint == "use a divisor of 16: 1, 2, 4, 8, 16"
    assert (err.mark.line, err.mark.column) == (16, 34) and "spec.yaml:16:34" in err.format()


def test_concat_of_different_sizes_names_both_shapes_at_the_branch(problems):
    text = INCEPTION.replace(
        "[{type: conv2d, filters: 2, kernel_size: 1}]",
        "[{type: conv2d, filters: 2, kernel_size: 1, stride: 2}]",
    )
    (err,) = _errors(problems, text)
    assert err.path == ("model", "layers", 1, "branches", 1)
    assert "concat needs equal spatial sizes" in err.message
    assert "(2, 14, 14)" in err.message and "(6, 28, 28)" in err.message
    assert err.mark.line == 14


def test_add_of_different_shapes_names_both(problems):
    text = INCEPTION.replace("    - type: branch\n", "    - type: branch\n      merge: add\n")
    (err,) = _errors(problems, text)
    assert err.path == ("model", "layers", 1, "branches", 1)
    assert "add needs equal shapes" in err.message and "(2, 28, 28)" in err.message
    assert "merge: concat" in err.hint


def test_a_shape_error_inside_a_branch_points_at_the_layer(problems):
    text = INCEPTION.replace(
        "[{type: conv2d, filters: 2, kernel_size: 1}]", "[{type: dense, units: 2}]"
    )
    (err,) = _errors(problems, text)
    assert err.path == ("model", "layers", 1, "branches", 0, 0)
    assert "dense needs flat features" in err.message


def test_schema_mistakes_in_the_new_kinds_are_located_with_suggestions(problems):
    text = (
        INCEPTION.replace("kernel_size: 1}]", "kernal_size: 1}]")
        .replace("{type: upsample, scale_factor: 2}", "{type: upsample, scale_factor: 2, size: 9}")
        .replace("{type: layer_norm}", "{type: layer_normalization}")
        .replace("depth_multiplier: 2}", "depth_multiplier: 2, use_bias: false}")
    )
    errs = {p.path: p for p in _errors(problems, text)}
    typo = errs[("model", "layers", 1, "branches", 0, 0, "kernal_size")]
    assert typo.hint == "did you mean 'kernel_size'?" and typo.mark.line == 13
    assert "exactly one of 'scale_factor' or 'size'" in errs[("model", "layers", 5)].message
    assert "'layer_norm'" in errs[("model", "layers", 6, "type")].hint
    assert "'bias'" in errs[("model", "layers", 4, "use_bias")].hint


def test_a_branch_needs_two_lists(problems):
    text = INCEPTION.replace(
        "        - [{type: block, block: tower}]\n"
        "        - [{type: max_pool2d, pool_size: 3, stride: 1, padding: same}]\n",
        "",
    )
    (err,) = _errors(problems, text)
    assert err.path == ("model", "layers", 1, "branches")
    assert "at least 2" in err.message
