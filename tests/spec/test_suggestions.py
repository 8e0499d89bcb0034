"""Did-you-mean: the same name in other case first, then other frameworks' names, then the
closest spelling; and one error per mistake, without the validation library's branch labels."""

from __future__ import annotations

import pytest

from pipeline.spec import load_spec
from pipeline.spec.base import SYNONYMS
from pipeline.spec.checks import CHECKS
from pipeline.spec.errors import did_you_mean
from tests.spec.conftest import BASE


def one(problems):
    errors = [p for p in problems if p.severity == "error"]
    assert len(errors) == 1, [p.format() for p in problems]
    return errors[0]


def test_case_before_spelling():
    names = ["elu", "relu", "selu"]
    assert did_you_mean("Relu", names) == "did you mean 'relu'?"
    assert did_you_mean("RELU", names, SYNONYMS) == "did you mean 'relu'?"
    assert did_you_mean("MaxPool2D", ["max_pool2d", "avg_pool2d"]) == "did you mean 'max_pool2d'?"


@pytest.mark.parametrize(
    ("old", "new", "suggestion"),
    [
        ("activation: relu", "activation: Relu", "relu"),
        ("type: flatten", "type: Flatten", "flatten"),
        ("name: t", "name: t\ntrain: {loss: categorical_crossentropy}", "cross_entropy"),
        ("name: t", "name: t\ntrain: {loss: sparse_categorical_crossentropy}", "cross_entropy"),
        ("name: t", "name: t\ntrain: {loss: binary_crossentropy}", "binary_cross_entropy"),
        ("name: t", "name: t\ntrain: {loss: CategoricalCrossentropy}", "cross_entropy"),
        ("name: t", "name: t\naugment: {transforms: [{type: random_rotation}]}", "rotation"),
        (
            "name: t",
            "name: t\naugment: {transforms: [{type: RandomHorizontalFlip}]}",
            "horizontal_flip",
        ),
        ("name: t", "name: t\naugment: {transforms: [{type: random_translation}]}", "shift"),
        ("name: t", "name: t\nschedule: {type: cosine_annealing}", "cosine"),
        ("name: t", "name: t\nschedule: {type: ReduceLROnPlateau}", "reduce_on_plateau"),
        ("name: t", "name: t\nlr_scheduler: {type: step}", "schedule"),
    ],
)
def test_names_users_bring_get_ours(problems, old, new, suggestion):
    found = problems(BASE.replace(old, new, 1))
    hints = [p.hint for p in found if p.severity == "error"]
    assert hints and hints[0] and f"'{suggestion}'" in hints[0], [p.format() for p in found]


def test_padding_in_capitals_is_one_error_suggesting_lower_case(problems):
    p = one(problems(BASE.replace("kernel_size: 3,", "kernel_size: 3, padding: SAME,")))
    assert p.path == ("model", "layers", 0, "padding") and p.hint == "did you mean 'same'?"
    assert "constrained" not in p.format() and "valid integer" not in p.message


@pytest.mark.parametrize(
    "layer",
    [
        "    - {type: max_pool2d, pool_size: (2, 2)}\n",  # the comma splits it: '(2' and '2)'
        "    - type: max_pool2d\n      pool_size: (2, 2)\n",
    ],
)
def test_a_python_tuple_is_one_error_that_says_write_a_list(problems, layer):
    text = BASE.replace("    - {type: flatten}\n", layer + "    - {type: flatten}\n")
    p = one(problems(text))
    assert p.path == ("model", "layers", 1, "pool_size")
    assert "'(2, 2)'" in p.message and "[2, 2]" in p.message
    assert "constrained" not in p.format() and "unknown key" not in p.message


def test_a_wrong_number_for_padding_gets_the_number_s_error_not_the_names(problems):
    p = one(problems(BASE.replace("kernel_size: 3,", "kernel_size: 3, padding: -1,")))
    assert p.path == ("model", "layers", 0, "padding") and "greater than or equal to 0" in p.message


def test_an_unknown_check_name_is_an_error_with_did_you_mean(problems, write):
    p = one(problems(BASE + "ignore_checks: [shapes, selu-self-normalising]\n"))
    assert p.path == ("ignore_checks", 1) and (p.mark.line, p.mark.column) == (8, 25)
    assert p.hint == "did you mean 'selu-self-normalizing'?"
    assert all(name in p.message for name in CHECKS)
    assert load_spec(write(BASE + "ignore_checks: [selu-self-normalizing]\n")).name == "t"
