"""Composite layers say their children (``child_keys``): naming, shapes and block expansion
recurse through any nesting of them without knowing the kind."""

from __future__ import annotations

from typing import ClassVar, Literal

import pytest

from pipeline.spec import load_spec
from pipeline.spec.composite import LayerSpec
from pipeline.spec.layers import Flatten, LayerBase, Shape
from pipeline.spec.shapes import LayerShapeError, infer_shapes, named_layers

NESTED = """\
name: t
data: {dataset: mnist}
model:
  defaults: {conv2d: {activation: relu}}
  blocks:
    inner:
      - type: residual
        layers:
          - {type: conv2d, filters: 8, kernel_size: KERNEL, padding: PADDING, name: deep}
  layers:
    - {type: conv2d, filters: 8, kernel_size: 3, padding: same}
    - type: residual
      layers:
        - {type: block, block: inner}
        - {type: relu}
    - {type: flatten}
    - {type: dense, units: 10}
"""


def _nested(kernel: int = 3, padding: str = "same") -> str:
    return NESTED.replace("KERNEL", str(kernel)).replace("PADDING", padding)


def test_a_residual_in_a_block_in_a_residual_gets_names_paths_and_defaults(write):
    spec = load_spec(write(_nested()))
    named = [(path, name) for path, name, _ in named_layers(spec.model.layers)]
    assert named == [
        ((0,), "conv2d_1"),
        ((1,), "residual_1"),
        ((1, "layers", 0), "residual_2"),
        ((1, "layers", 0, "layers", 0), "inner_deep"),
        ((1, "layers", 1), "relu_1"),
        ((2,), "flatten_1"),
        ((3,), "dense_1"),
    ]
    deep = spec.model.layers[1].layers[0].layers[0]
    assert deep.name == "inner_deep" and deep.activation == "relu"  # defaults reach it
    assert infer_shapes(spec.model.layers, (1, 28, 28), ())[2] == (8 * 28 * 28,)


def test_a_repeated_block_prefixes_the_names_nested_in_its_composites(write):
    text = _nested().replace(
        "{type: block, block: inner}", "{type: block, block: inner, repeat: 2}"
    )
    spec = load_spec(write(text))
    names = [name for _, name, _ in named_layers(spec.model.layers)]
    assert names[2:6] == ["residual_2", "inner1_deep", "residual_3", "inner2_deep"]


def test_a_shape_error_deep_in_nested_composites_has_the_full_key_path(problems):
    errors = [p for p in problems(_nested(kernel=40, padding="valid")) if p.code == "shapes"]
    assert len(errors) == 1, [p.format() for p in errors]
    assert errors[0].path == ("model", "layers", 1, "layers", 0, "layers", 0)
    assert "does not fit the 28x28 input" in errors[0].message


def test_an_unhashable_type_is_a_located_error_not_a_crash(problems):
    text = _nested().replace("{type: flatten}", "{type: [flatten]}")
    errors = [p for p in problems(text) if p.severity == "error"]
    assert len(errors) == 1 and errors[0].path == ("model", "layers", 2, "type")
    assert errors[0].hint == "did you mean 'flatten'?"


class Fork(LayerBase):
    """A composite with two child lists, unknown to every module that walks layers."""

    type: Literal["fork"] = "fork"
    left: list[LayerSpec]  # type: ignore[valid-type]
    right: list[LayerSpec]  # type: ignore[valid-type]
    child_keys: ClassVar[tuple[str, ...]] = ("left", "right")

    def output_shape(self, shape: Shape) -> Shape:
        left = infer_shapes(self.left, shape, ("left",))[-1]
        right = infer_shapes(self.right, shape, ("right",))[-1]
        return (left[0] + right[0],)


def test_a_new_composite_kind_is_named_and_shaped_through_its_child_keys():
    fork = Fork.model_validate(
        {
            "left": [{"type": "flatten"}, {"type": "dense", "units": 4}],
            "right": [{"type": "flatten"}, {"type": "dense", "units": 6}],
        }
    )
    layers = [fork, Flatten()]
    named = [(path, name) for path, name, _ in named_layers(layers)]
    assert named == [
        ((0,), "fork_1"),
        ((0, "left", 0), "flatten_1"),
        ((0, "left", 1), "dense_1"),
        ((0, "right", 0), "flatten_2"),
        ((0, "right", 1), "dense_2"),
        ((1,), "flatten_3"),
    ]
    assert infer_shapes(layers, (3, 2, 2), ()) == [(10,), (10,)]


def test_a_shape_error_inside_a_new_composite_is_located_by_its_child_key():
    bad = Fork.model_validate(
        {"left": [{"type": "flatten"}], "right": [{"type": "dense", "units": 2}]}
    )
    with pytest.raises(LayerShapeError) as err:
        infer_shapes([bad], (3, 2, 2), ("model", "layers"))
    assert err.value.path == ("model", "layers", 0, "right", 0)
    assert "dense needs flat features" in err.value.message
