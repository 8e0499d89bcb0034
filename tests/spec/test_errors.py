"""Bad input gets located errors (file:line:column, key path) that say what would be valid."""

import pytest

from pipeline.spec import load_spec
from tests.spec.conftest import BASE


def one(problems, code=None):
    errors = [p for p in problems if p.severity == "error" and (code is None or p.code == code)]
    assert len(errors) == 1, [p.format() for p in problems]
    return errors[0]


def test_unknown_key_suggests_closest_name(problems):
    p = one(problems(BASE.replace("units: 10", "unitz: 10")))
    assert (p.mark.line, p.mark.column) == (7, 21)
    assert p.path == ("model", "layers", 2, "unitz")
    assert p.hint == "did you mean 'units'?"
    assert "valid keys here:" in p.message and "units" in p.message


def test_foreign_framework_names_are_translated(problems):
    p = one(problems(BASE.replace("kernel_size: 3,", "kernel_size: 3, strides: 2,")))
    assert "did you mean 'stride'" in p.hint and "other frameworks" in p.hint


@pytest.mark.parametrize(
    ("old", "new", "suggestion"),
    [
        ("type: conv2d", "type: Conv2D", "conv2d"),
        ("type: flatten", "type: flaten", "flatten"),
        ("activation: relu", "activation: rellu", "relu"),
        ("activation: relu", "activation: relu, kernel_init: he_normall", "he_normal"),
        ("type: conv2d", "type: max_pooling2d", "max_pool2d"),
    ],
)
def test_unknown_names_get_did_you_mean(problems, old, new, suggestion):
    p = one(problems(BASE.replace(old, new, 1)))
    assert p.hint and f"'{suggestion}'" in p.hint
    assert p.mark.line == 5 or p.mark.line == 6


@pytest.mark.parametrize(
    ("section", "suggestion"),
    [
        ("optimizer: {type: adamm}", "adam"),
        ("schedule: {type: one_cylce, max_lr: 0.1}", "one_cycle"),
        ("augment: {transforms: [{type: rotaton, degrees: 10}]}", "rotation"),
        ("data: {dataset: fashion-mnist}", "fashion_mnist"),
    ],
)
def test_unknown_kind_in_every_section(problems, section, suggestion):
    text = (
        BASE + section + "\n"
        if not section.startswith("data")
        else BASE.replace("data: {dataset: mnist, validation: {fraction: 0.1}}", section)
    )
    p = one(problems(text))
    assert p.hint and f"'{suggestion}'" in p.hint, p.format()
    assert p.mark.line == 8 or section.startswith("data")


def test_all_errors_of_a_file_are_reported_at_once(problems):
    text = BASE.replace("filters: 8", "filters: -1").replace("units: 10", "units: ten")
    text += "train: {epochs: 0, batsh_size: 3}\n"
    found = problems(text)
    assert len([p for p in found if p.severity == "error"]) == 4
    assert {p.mark.line for p in found} == {5, 7, 8}


def test_a_missing_required_key_points_at_its_mapping(problems):
    p = one(problems(BASE.replace("units: 10", "name: out")))
    assert p.message == "missing required key 'units'" and p.mark.line == 7


def test_misspelt_required_key_is_one_error_not_two(problems):
    p = one(problems(BASE.replace("kernel_size", "kernal_size")))
    assert p.hint == "did you mean 'kernel_size'?"


def test_value_errors_say_what_was_given(problems):
    p = one(problems(BASE.replace("filters: 8", "filters: -1")))
    assert "greater than or equal to 1" in p.message and "-1" in p.message


def test_source_line_and_caret_are_shown(problems):
    text = one(problems(BASE.replace("units: 10", "unitz: 10"))).format()
    assert "    - {type: dense, unitz: 10}" in text
    assert "\n    |                     ^" in text


def test_duplicate_keys_are_errors_not_silently_overwritten(problems):
    p = one(problems(BASE + "seed: 1\nseed: 2\n"))
    assert p.code == "duplicate-key" and p.mark.line == 9 and "line 8" in p.message


def test_python_tags_can_never_run_code(problems, tmp_path):
    marker = tmp_path / "ran"
    p = one(problems(BASE + f'seed: !!python/object/apply:os.system ["touch {marker}"]\n'))
    assert p.code == "yaml-tag" and not marker.exists()


def test_scientific_notation_is_a_number(write):
    spec = load_spec(write(BASE + "optimizer: {type: adam, lr: 1e-3}\n"))
    assert spec.optimizer.lr == pytest.approx(0.001)


def test_folder_fields_on_a_builtin_dataset_are_errors(problems):
    p = one(problems(BASE.replace("validation: {fraction: 0.1}", "validation: {path: v}")))
    assert "for image_folder" in p.message and p.path == ("data",)


def test_explicit_normalization_needs_one_value_per_channel(problems):
    text = BASE.replace(
        "validation:", "normalize: {mean: [0.1, 0.2], std: [0.3, 0.3]}, validation:"
    )
    p = one(problems(text))
    assert "one mean and one std per channel (1)" in p.message
