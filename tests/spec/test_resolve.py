"""extends, overrides (dvc exp run -S syntax), named blocks and per-kind defaults."""

import pytest

from pipeline.spec import SpecError, load_spec
from pipeline.spec.load import parse_override
from tests.spec.conftest import BASE


def test_override_sets_nested_and_list_fields(write):
    spec = load_spec(
        write(BASE),
        [
            "train.epochs=3",
            "model.layers[0].filters=16",
            "model.layers.2.units=10",
            "optimizer.lr=1e-2",
        ],
    )
    assert spec.train.epochs == 3
    assert spec.model.layers[0].filters == 16
    assert spec.optimizer.lr == pytest.approx(0.01)


def test_override_values_are_yaml(write):
    assert parse_override("augment.apply_to=[train]") == (("augment", "apply_to"), ["train"])
    assert parse_override("+train.epochs=2")[0] == ("train", "epochs")


def test_misspelt_override_key_is_an_error_pointing_at_the_override(write):
    with pytest.raises(SpecError) as err:
        load_spec(write(BASE), ["trian.epochs=1"])
    (p,) = err.value.errors
    assert p.mark.file == "-S trian.epochs=1" and p.hint == "did you mean 'train'?"


def test_override_index_out_of_range(write):
    with pytest.raises(SpecError) as err:
        load_spec(write(BASE), ["model.layers[9].filters=1"])
    assert "out of range (the list has 3 items)" in err.value.errors[0].message


def test_extends_merges_deep_and_replaces_lists(write):
    write(BASE + "train: {epochs: 7, batch_size: 32}\n", "base.yaml")
    child = write("extends: base.yaml\nname: child\ntrain: {epochs: 2}\n", "child.yaml")
    spec = load_spec(child)
    assert (spec.name, spec.train.epochs, spec.train.batch_size) == ("child", 2, 32)
    assert len(spec.model.layers) == 3


def test_error_in_a_base_spec_points_into_the_base_file(write):
    base = write(BASE.replace("units: 10", "unitz: 10"), "base.yaml")
    child = write("extends: base.yaml\nname: child\n", "child.yaml")
    with pytest.raises(SpecError) as err:
        load_spec(child)
    (p,) = err.value.errors
    assert p.mark.file == str(base.resolve()) and p.mark.line == 7


def test_extends_cycle_and_missing_base(write):
    write("extends: b.yaml\nname: a\n", "a.yaml")
    b = write("extends: a.yaml\nname: b\n", "b.yaml")
    with pytest.raises(SpecError, match="round in a circle"):
        load_spec(b)
    with pytest.raises(SpecError, match="not found"):
        load_spec(write("extends: nope.yaml\nname: c\n", "c.yaml"))


def test_blocks_repeat_and_prefix_names(write):
    text = BASE.replace(
        "model:\n  layers:\n",
        "model:\n  blocks:\n    stage:\n"
        "      - {type: conv2d, name: conv, filters: 8, kernel_size: 3, padding: same}\n"
        "      - {type: relu}\n"
        "  layers:\n    - {type: block, block: stage, repeat: 2}\n",
    )
    spec = load_spec(write(text))
    names = spec.model.layer_names()
    assert names[:4] == ["stage1_conv", "relu_1", "stage2_conv", "relu_2"]
    assert len(spec.model.layers) == 7


def test_unknown_block_suggests(problems):
    text = BASE.replace(
        "model:\n  layers:\n",
        "model:\n  blocks: {stage: [{type: relu}]}\n  layers:\n    - {type: block, block: stag}\n",
    )
    (p,) = [p for p in problems(text) if p.severity == "error"]
    assert "unknown block 'stag'" in p.message and p.hint == "did you mean 'stage'?"
    assert (p.mark.line, p.mark.column) == (6, 28)


def test_defaults_apply_per_kind_and_layers_override_them(write):
    text = BASE.replace(
        "model:\n", "model:\n  defaults:\n    dense: {kernel_init: he_normal, activation: elu}\n"
    )
    text = text.replace("units: 10}", "units: 10, activation: softmax}")
    spec = load_spec(write(text))
    dense = spec.model.layers[2]
    assert dense.kernel_init == "he_normal" and dense.activation == "softmax"


def test_unknown_key_in_defaults_is_located_once(problems):
    text = BASE.replace("model:\n", "model:\n  defaults:\n    dense: {kernal_init: he_normal}\n")
    errors = [p for p in problems(text) if p.severity == "error"]
    # one mistake, reported once (not again for the dense layer it reaches), where it is written
    assert [(p.path, p.mark.line, p.mark.column) for p in errors] == [
        (("model", "defaults", "dense", "kernal_init"), 5, 13)
    ]
    assert errors[0].hint == "did you mean 'kernel_init'?"


PARAM_BLOCK = """\
name: t
data: {dataset: mnist}
model:
  blocks:
    group:
      params: {width: 8, act: relu}
      layers:
        - {type: conv2d, name: conv, filters: $width, kernel_size: 3, padding: same}
        - {type: max_pool2d, pool_size: 2}
        - {type: $act, name: "${act}_out"}
  layers:
    - {type: block, block: group, name: g1}
    - {type: block, block: group, name: g2, params: {width: 16, act: gelu}}
    - {type: flatten}
    - {type: dense, units: 10}
"""


def test_parameterised_blocks_substitute_typed_values_per_use(write):
    spec = load_spec(write(PARAM_BLOCK))
    layers = spec.model.layers
    assert [layer.type for layer in layers[:6]] == [
        "conv2d",
        "max_pool2d",
        "relu",
        "conv2d",
        "max_pool2d",
        "gelu",
    ]
    assert (layers[0].filters, layers[3].filters) == (8, 16)  # ints, not the text "16"
    assert spec.model.layer_names()[:3] == ["g1_conv", "max_pool2d_1", "g1_relu_out"]


@pytest.mark.parametrize(
    ("old", "new", "message", "hint", "line"),
    [
        (
            "params: {width: 16, act: gelu}",
            "params: {widht: 16}",
            "block 'group' has no parameter 'widht'",
            "did you mean 'width'?",
            13,
        ),
        (
            "filters: $width",
            "filters: $witdh",
            "block 'group' has no parameter 'witdh'",
            "did you mean 'width'?",
            8,
        ),
        (
            "params: {width: 8, act: relu}",
            "params: {width: null, act: relu}",
            "needs a value for its parameter 'width'",
            None,
            12,
        ),
    ],
)
def test_parameterised_block_mistakes_are_located(problems, old, new, message, hint, line):
    (p,) = [p for p in problems(PARAM_BLOCK.replace(old, new)) if p.severity == "error"]
    assert message in p.message and p.hint == hint
    assert p.mark.line == line, p.format()
